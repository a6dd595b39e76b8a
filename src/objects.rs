//! Opening `object_store` buckets from configured URLs; the one place that knows URL schemes.
//!
//! `file://` URLs may be relative (`file://samples` is `./samples`): they are resolved against
//! the working directory and served by `LocalFileSystem` rooted at that folder, which (with the
//! key validation in `params`) keeps every read inside the root. Other schemes (`s3://`,
//! `gs://`, `az://`, `http(s)://`) go through `object_store::parse_url_opts` with the configured
//! options (credentials, region, endpoint…). `http(s)://` *origins* (`open_origin`) get the
//! client from `ssrf.rs` instead, which enforces the address and redirect policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::ClientConfigKey;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::config::OriginConfig;
use crate::ssrf::OriginConnector;

/// A store plus the prefix every key lives under.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL it was opened from, for logs (never contains credentials: those are options).
    pub url: String,
}

#[derive(thiserror::Error, Debug)]
pub enum OpenError {
    #[error("`{url}`: {reason}")]
    Invalid { url: String, reason: String },
}

impl Bucket {
    /// Opens `url`. With `create`, a missing local folder is created (result tier); without, it
    /// must exist (origins).
    pub fn open(url: &str, options: &BTreeMap<String, String>, create: bool) -> Result<Bucket, OpenError> {
        let invalid = |reason: String| OpenError::Invalid { url: url.to_string(), reason };
        if let Some(rest) = url.strip_prefix("file://") {
            let dir = std::path::PathBuf::from(if rest.is_empty() { "." } else { rest });
            if create {
                std::fs::create_dir_all(&dir).map_err(|e| invalid(format!("cannot create folder: {e}")))?;
            }
            let dir = dir.canonicalize().map_err(|e| invalid(format!("folder {}: {e}", dir.display())))?;
            let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| invalid(e.to_string()))?;
            return Ok(Bucket { store: Arc::new(store), prefix: Path::default(), url: url.to_string() });
        }
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "http" | "https") {
            return Err(invalid(format!("unsupported scheme `{}`", parsed.scheme())));
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, options.iter()).map_err(|e| invalid(e.to_string()))?;
        Ok(Bucket { store: Arc::from(store), prefix, url: url.to_string() })
    }

    /// The folder of a `file://` bucket (claims lock a file there); `None` for other schemes.
    pub fn local_folder(&self) -> Option<std::path::PathBuf> {
        let rest = self.url.strip_prefix("file://")?;
        std::path::PathBuf::from(if rest.is_empty() { "." } else { rest }).canonicalize().ok()
    }

    /// Opens an origin: as `open`, except that `http(s)` origins go through the SSRF guard.
    pub fn open_origin(cfg: &OriginConfig) -> Result<Bucket, OpenError> {
        let url = cfg.url.as_str();
        let invalid = |reason: String| OpenError::Invalid { url: url.to_string(), reason };
        let parsed = match url::Url::parse(url) {
            Ok(p) if matches!(p.scheme(), "http" | "https") => p,
            _ => return Bucket::open(url, &cfg.options, false),
        };
        let connector = OriginConnector::new(&parsed, &cfg.options, cfg.allow_private, &cfg.redirect_hosts).map_err(invalid)?;
        let store = HttpBuilder::new()
            .with_url(&parsed[..url::Position::BeforePath])
            .with_config(ClientConfigKey::AllowHttp, if parsed.scheme() == "http" { "true" } else { "false" })
            .with_http_connector(connector)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let prefix = Path::parse(parsed.path()).map_err(|e| invalid(e.to_string()))?;
        Ok(Bucket { store: Arc::new(store), prefix, url: url.to_string() })
    }

    /// The full object path for `key` (a `/`-separated relative key).
    pub fn path(&self, key: &str) -> Result<Path, object_store::path::Error> {
        let rel = Path::parse(key)?;
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_file_urls_resolve_and_keys_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let b = Bucket::open(&url, &BTreeMap::new(), false).unwrap();
        assert_eq!(b.path("a/b.jpg").unwrap().as_ref(), "a/b.jpg");
        assert!(b.path("../etc/passwd").is_err());
        assert!(b.path("a//b").is_err());
    }

    #[test]
    fn missing_origin_folder_is_an_error_but_store_folder_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("file://{}/nope", dir.path().display());
        assert!(Bucket::open(&missing, &BTreeMap::new(), false).is_err());
        assert!(Bucket::open(&missing, &BTreeMap::new(), true).is_ok());
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(Bucket::open("ftp://x/y", &BTreeMap::new(), false).is_err());
    }
}
