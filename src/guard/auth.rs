//! REST API keys: `Authorization: Bearer <key>`, checked against blake3 hashes from `api.keys`.
//!
//! The config never holds a key, only `blake3:<hex>` of it (`upres hash-key` prints the line), so
//! a leaked config file does not leak a key. Keys are random tokens, not passwords, so a fast
//! unsalted hash is enough. `blake3::Hash` compares in constant time, and every configured hash
//! is compared (no early exit), so timing says nothing about which key or how much matched.

use http::{header, HeaderMap};

use crate::error::{ErrorClass, ProxyError};

const PREFIX: &str = "blake3:";

/// The accepted key hashes; empty means the API is open.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys(Vec<blake3::Hash>);

impl ApiKeys {
    pub fn parse(entries: &[String]) -> Result<ApiKeys, String> {
        entries
            .iter()
            .map(|e| {
                e.strip_prefix(PREFIX)
                    .and_then(|hex| blake3::Hash::from_hex(hex).ok())
                    .ok_or_else(|| "api.keys: each entry must be `blake3:<64 hex digits>` (see `upres hash-key`)".to_string())
            })
            .collect::<Result<_, _>>()
            .map(ApiKeys)
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// 401 without a bearer key, 403 with a wrong one.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| ProxyError::new(ErrorClass::Unauthorized, "this endpoint needs `Authorization: Bearer <api key>`"))?;
        let presented = blake3::hash(given.as_bytes());
        let matched = self.0.iter().fold(false, |found, h| found | (*h == presented));
        if matched {
            Ok(())
        } else {
            Err(ProxyError::new(ErrorClass::Forbidden, "the API key is not accepted"))
        }
    }
}

/// The `api.keys` entry for `key` (surrounding whitespace, e.g. a trailing newline, is dropped).
pub fn hash_key(key: &str) -> String {
    format!("{PREFIX}{}", blake3::hash(key.trim().as_bytes()).to_hex())
}

/// Whether `path` is an API route that needs a key (when keys are configured). Health, model
/// info and the OpenAPI document stay open for probes and client generators.
pub fn protects(path: &str) -> bool {
    match path.strip_prefix("/api/v1/") {
        // The playground's helpers are gated by `playground.enabled` instead (the page sends a key
        // only with uploads and /docs calls).
        Some(rest) => {
            !matches!(rest, "health" | "model-info" | "openapi.json" | "samples" | "sign")
                && !rest.starts_with("samples/")
                && !rest.starts_with("progress/")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn keys_are_checked_by_hash() {
        let keys = ApiKeys::parse(&[hash_key("s3cret\n"), hash_key("other")]).unwrap();
        assert!(keys.check(&auth("Bearer s3cret")).is_ok());
        assert!(keys.check(&auth("bearer other")).is_ok());
        assert_eq!(keys.check(&HeaderMap::new()).unwrap_err().class, ErrorClass::Unauthorized);
        assert_eq!(keys.check(&auth("Basic czNjcmV0")).unwrap_err().class, ErrorClass::Unauthorized);
        assert_eq!(keys.check(&auth("Bearer ")).unwrap_err().class, ErrorClass::Unauthorized);
        assert_eq!(keys.check(&auth("Bearer s3cre")).unwrap_err().class, ErrorClass::Forbidden);
        assert_eq!(keys.check(&auth("Bearer blake3:00")).unwrap_err().class, ErrorClass::Forbidden);
    }

    #[test]
    fn config_entries_must_be_prefixed_hashes() {
        assert!(ApiKeys::parse(&["s3cret".into()]).is_err());
        assert!(ApiKeys::parse(&["blake3:abcd".into()]).is_err());
        assert!(ApiKeys::parse(&[hash_key("k")]).unwrap().enabled());
        assert!(!ApiKeys::parse(&[]).unwrap().enabled());
    }

    #[test]
    fn open_and_protected_routes() {
        for open in ["/api/v1/health", "/api/v1/model-info", "/api/v1/openapi.json", "/x4/api/v1/a.png", "/healthz"] {
            assert!(!protects(open), "{open}");
        }
        for closed in ["/api/v1/upscale", "/api/v1/batch-upscale", "/api/v1/anything", "/api/v1/health/x"] {
            assert!(protects(closed), "{closed}");
        }
    }
}
