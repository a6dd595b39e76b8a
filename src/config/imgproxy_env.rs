//! imgproxy's environment variables as aliases of upres keys, so an imgproxy deployment's
//! environment carries over (the README's "Migrating from imgproxy" table lists them). They sit
//! between the config file and `UPRES_*`: an `UPRES_*` variable for the same key wins.

use figment::providers::Serialized;
use figment::Figment;

/// The upres settings the `IMGPROXY_*` variables among `vars` stand for.
pub(super) fn aliases(vars: impl Iterator<Item = (String, String)>) -> Result<Figment, String> {
    let mut fig = Figment::new();
    let mut allowed = 0;
    for (name, value) in vars {
        let Some(short) = name.strip_prefix("IMGPROXY_") else { continue };
        let value = value.trim().to_string();
        let number = |what: &str| value.parse::<f64>().map_err(|_| format!("{name}: expected {what}, got `{value}`"));
        fig = match short {
            "KEY" => fig.merge(Serialized::default("signing.key", value)),
            "SALT" => fig.merge(Serialized::default("signing.salt", value)),
            "SIGNATURE_SIZE" => fig.merge(Serialized::default("signing.size", number("a byte count")? as u64)),
            // imgproxy's `:8080` means every interface.
            "BIND" => {
                let listen = if value.starts_with(':') { format!("0.0.0.0{value}") } else { value };
                fig.merge(Serialized::default("server.listen", listen))
            }
            "QUALITY" => {
                let q = number("a quality 1..100")? as u64;
                fig.merge(Serialized::default("output.jpeg_quality", q)).merge(Serialized::default("output.webp_quality", q))
            }
            // Megapixels.
            "MAX_SRC_RESOLUTION" => {
                fig.merge(Serialized::default("limits.max_source_pixels", (number("megapixels")? * 1e6).round() as u64))
            }
            "MAX_SRC_FILE_SIZE" => match number("a byte count")? as u64 {
                0 => fig, // imgproxy's "no limit": keep upres's
                n => fig.merge(Serialized::default("limits.max_source_bytes", n)),
            },
            "TTL" => {
                let secs = number("seconds")? as u64;
                fig.merge(Serialized::default("output.cache_control", format!("public, max-age={secs}")))
            }
            // Each allowed prefix becomes an origin; imgproxy URLs under it map onto it.
            "ALLOWED_SOURCES" => {
                for prefix in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    if prefix.contains('*') {
                        return Err(format!("{name}: wildcards are not supported; list each prefix"));
                    }
                    allowed += 1;
                    let url = prefix.trim_end_matches('/').to_string();
                    fig = fig.merge(Serialized::default(&format!("origins.allowed-{allowed}.url"), url));
                }
                fig
            }
            _ => fig,
        };
    }
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    #[test]
    fn imgproxy_variables_set_the_matching_upres_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("IMGPROXY_KEY", "736563726574");
            jail.set_env("IMGPROXY_SALT", "68656c6c6f");
            jail.set_env("IMGPROXY_SIGNATURE_SIZE", "8");
            jail.set_env("IMGPROXY_BIND", ":9090");
            jail.set_env("IMGPROXY_QUALITY", "70");
            jail.set_env("IMGPROXY_MAX_SRC_RESOLUTION", "12.5");
            jail.set_env("IMGPROXY_MAX_SRC_FILE_SIZE", "2048");
            jail.set_env("IMGPROXY_TTL", "3600");
            jail.set_env("IMGPROXY_ALLOWED_SOURCES", "s3://bucket/images/,https://cdn.example.com/");
            let cfg = Config::load(None, &Overrides::default()).expect("loads");
            assert_eq!(cfg.signing.key.as_deref(), Some("736563726574"));
            assert_eq!(cfg.signing.salt.as_deref(), Some("68656c6c6f"));
            assert_eq!(cfg.signing.size, 8);
            assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:9090");
            assert_eq!((cfg.output.jpeg_quality, cfg.output.webp_quality), (70, 70));
            assert_eq!(cfg.limits.max_source_pixels, 12_500_000);
            assert_eq!(cfg.limits.max_source_bytes, 2048);
            assert_eq!(cfg.output.cache_control, "public, max-age=3600");
            assert_eq!(cfg.origins["allowed-1"].url, "s3://bucket/images");
            assert_eq!(cfg.origins["allowed-2"].url, "https://cdn.example.com");
            assert!(cfg.origins.contains_key("default"));
            // upres's own names win over the aliases.
            jail.set_env("UPRES_OUTPUT__JPEG_QUALITY", "90");
            let cfg = Config::load(None, &Overrides::default()).expect("loads");
            assert_eq!((cfg.output.jpeg_quality, cfg.output.webp_quality), (90, 70));
            jail.set_env("IMGPROXY_QUALITY", "high");
            assert!(Config::load(None, &Overrides::default()).unwrap_err().to_string().contains("IMGPROXY_QUALITY"));
            Ok(())
        });
    }
}
