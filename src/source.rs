//! Fetching source images from the configured origins, with limits enforced while streaming.
//!
//! Owns: origin lookup by name, the per-origin deadline, the byte cap (checked against the
//! object's declared size first, then counted chunk by chunk, so an origin that lies about its
//! size is still cut off). Does not own decoding or caching.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::{GetOptions, ObjectStore};
use tracing::{info, warn};

use crate::config::OriginConfig;
use crate::error::{Classify, ErrorClass};
use crate::objects::{Bucket, OpenError};

/// The configured origins, by name.
pub struct Origins {
    origins: HashMap<String, Origin>,
}

struct Origin {
    bucket: Bucket,
    timeout: Duration,
}

/// A fetched source.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    /// The origin's validator, kept for revalidation and logs.
    pub etag: Option<String>,
    /// The origin's `Last-Modified` (object stores: the object's modification time).
    pub modified: Option<std::time::SystemTime>,
}

#[derive(thiserror::Error, Debug)]
pub enum SourceError {
    #[error("unknown origin `{0}`")]
    UnknownOrigin(String),
    #[error("invalid source key: {0}")]
    BadKey(String),
    #[error("source image not found")]
    NotFound,
    #[error("source is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("origin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("origin error: {0}")]
    Upstream(String),
    /// The SSRF guard refused the address or redirect (see `ssrf.rs`).
    #[error("origin {0}")]
    Refused(crate::ssrf::Refused),
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::UnknownOrigin(_) | SourceError::BadKey(_) => ErrorClass::BadRequest,
            SourceError::NotFound => ErrorClass::NotFound,
            SourceError::TooLarge(_) => ErrorClass::TooLarge,
            SourceError::Timeout(_) => ErrorClass::Timeout,
            SourceError::Upstream(_) | SourceError::Refused(_) => ErrorClass::Upstream,
        }
    }
}

impl Origins {
    pub fn open(configs: &BTreeMap<String, OriginConfig>) -> Result<Origins, OpenError> {
        let mut origins = HashMap::new();
        for (name, cfg) in configs {
            let bucket = Bucket::open_origin(cfg)?;
            origins.insert(name.clone(), Origin { bucket, timeout: cfg.timeout });
        }
        Ok(Origins { origins })
    }

    /// Fetches `key` from origin `name` (`None` = `default`), at most `max_bytes`.
    pub async fn fetch(&self, name: Option<&str>, key: &str, max_bytes: u64) -> Result<Fetched, SourceError> {
        let name = name.unwrap_or("default");
        let origin = self.origins.get(name).ok_or_else(|| SourceError::UnknownOrigin(name.to_string()))?;
        let path = origin.bucket.path(key).map_err(|e| SourceError::BadKey(e.to_string()))?;
        // `http(s)` origins send the request's `traceparent` (`ssrf::GuardedClient` reads it
        // from the request's extensions); other stores ignore extensions.
        let mut options = GetOptions::default();
        if let Some(trace) = crate::trace_context::current() {
            options.extensions.insert(trace);
        }
        let fetch = async {
            let res = origin.bucket.store.get_opts(&path, options).await.map_err(map_store_error)?;
            if res.meta.size > max_bytes {
                return Err(SourceError::TooLarge(max_bytes));
            }
            let etag = res.meta.e_tag.clone();
            let modified = Some(std::time::SystemTime::from(res.meta.last_modified));
            let mut buf = BytesMut::with_capacity(res.meta.size as usize);
            let mut stream = res.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(map_store_error)?;
                if (buf.len() + chunk.len()) as u64 > max_bytes {
                    return Err(SourceError::TooLarge(max_bytes));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Fetched { bytes: buf.freeze(), etag, modified })
        };
        let fetched = tokio::time::timeout(origin.timeout, fetch).await.map_err(|_| SourceError::Timeout(origin.timeout))?;
        if let Err(e) = &fetched {
            log_failure(name, e);
        }
        fetched
    }
}

/// One object of an origin listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The source key, as a transform URL names it.
    pub key: String,
    pub size: u64,
}

impl Origins {
    /// Up to `max` keys of origin `name` whose names end in an image extension, sorted; for the
    /// playground's sample picker. Origins that cannot list (plain HTTP) answer `Upstream`.
    pub async fn list_images(&self, name: Option<&str>, max: usize) -> Result<Vec<Listed>, SourceError> {
        const IMAGE_EXTENSIONS: [&str; 5] = [".png", ".jpg", ".jpeg", ".webp", ".gif"];
        let name = name.unwrap_or("default");
        let origin = self.origins.get(name).ok_or_else(|| SourceError::UnknownOrigin(name.to_string()))?;
        let prefix = &origin.bucket.prefix;
        let list = async {
            let mut found = Vec::new();
            let mut stream = origin.bucket.store.list(Some(prefix));
            // Bounded: an origin with millions of objects is not walked to the end.
            let mut seen = 0usize;
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(map_store_error)?;
                seen += 1;
                let key = meta.location.prefix_match(prefix).map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"));
                if let Some(key) = key {
                    let lower = key.to_ascii_lowercase();
                    if IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(e)) {
                        found.push(Listed { key, size: meta.size });
                    }
                }
                if found.len() >= max || seen >= 100 * max {
                    break;
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        };
        tokio::time::timeout(origin.timeout, list).await.map_err(|_| SourceError::Timeout(origin.timeout))?
    }
}

/// One line per failed fetch, with the origin's name and the reason (the request span adds the
/// request and trace ids). Never the image bytes, and never the transform URL (it may be signed).
fn log_failure(origin: &str, e: &SourceError) {
    match e {
        SourceError::NotFound => info!(origin, reason = "not_found", "origin fetch failed"),
        SourceError::TooLarge(_) => info!(origin, reason = "too_large", error = %e, "origin fetch failed"),
        SourceError::Timeout(_) => warn!(origin, reason = "timeout", error = %e, "origin fetch failed"),
        SourceError::Upstream(_) => warn!(origin, reason = "upstream", error = %e, "origin fetch failed"),
        SourceError::Refused(_) => warn!(origin, reason = "refused", error = %e, "origin fetch failed"),
        // The request's own mistakes, answered 400; not an origin failure.
        SourceError::UnknownOrigin(_) | SourceError::BadKey(_) => {}
    }
}

fn map_store_error(e: object_store::Error) -> SourceError {
    match e {
        object_store::Error::NotFound { .. } => SourceError::NotFound,
        object_store::Error::InvalidPath { source } => SourceError::BadKey(source.to_string()),
        other if crate::ssrf::refusal_in(&other).is_some() => {
            SourceError::Refused(crate::ssrf::refusal_in(&other).cloned().expect("checked"))
        }
        // A local "not found" can surface as a generic IO error on a directory path.
        other => {
            let msg = other.to_string();
            if msg.contains("Is a directory") || msg.contains("is a directory") {
                SourceError::NotFound
            } else {
                SourceError::Upstream(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(dir: &std::path::Path) -> Origins {
        let mut map = BTreeMap::new();
        map.insert(
            "default".to_string(),
            OriginConfig { url: format!("file://{}", dir.display()), ..OriginConfig::default() },
        );
        Origins::open(&map).unwrap()
    }

    #[tokio::test]
    async fn fetches_and_enforces_the_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shop")).unwrap();
        std::fs::write(dir.path().join("shop/a.bin"), vec![7u8; 1000]).unwrap();
        let o = origins(dir.path());
        assert_eq!(o.fetch(None, "shop/a.bin", 1000).await.unwrap().bytes.len(), 1000);
        assert!(matches!(o.fetch(None, "shop/a.bin", 999).await, Err(SourceError::TooLarge(999))));
        assert!(matches!(o.fetch(None, "shop/missing.bin", 10).await, Err(SourceError::NotFound)));
        assert!(matches!(o.fetch(None, "shop", 10).await, Err(SourceError::NotFound)));
        assert!(matches!(o.fetch(Some("other"), "a", 10).await, Err(SourceError::UnknownOrigin(_))));
    }

    #[tokio::test]
    async fn lists_image_keys_only_sorted_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shop")).unwrap();
        for name in ["shop/b.png", "a.JPG", "notes.txt", "shop/c.webp"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let o = origins(dir.path());
        let keys: Vec<String> = o.list_images(None, 10).await.unwrap().into_iter().map(|l| l.key).collect();
        assert_eq!(keys, ["a.JPG", "shop/b.png", "shop/c.webp"]);
        assert_eq!(o.list_images(None, 1).await.unwrap().len(), 1);
    }
}
