//! `POST /api/v1/purge`: drop every memory-tier entry made from the named sources on this
//! replica, so the next request for any of their variants reads the origin again.
//!
//! Body: `{"origin": "default", "keys": ["shop/cat.jpg", …]}` (`origin` optional). Answers each
//! key's source tag, the value CDNs purge by (`Surrogate-Key`, `Cache-Tag`). The store tier needs
//! no purge: it is keyed by the source's bytes, so a replaced source maps to new results. With a
//! Redis `rate_limit.backend`, the purge is published to every replica (`purge_bus.rs`, answer
//! `"scope": "fleet"`); without, a fleet calls this on every replica (`"scope": "replica"`). The
//! memory TTL (`cache.memory.ttl`) bounds a missed one.

use std::sync::Arc;

use http::request::Parts;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::RequestBody;
use crate::app::App;
use crate::error::{ErrorClass, ProxyError};
use crate::key::SourceTag;
use crate::respond::Answer;
use crate::respond::{self, CacheOutcome};

/// Largest purge body; a few thousand keys.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Keys in one purge at most.
pub const MAX_KEYS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    origin: Option<String>,
    keys: Vec<String>,
}

pub async fn handle<B: RequestBody>(app: &Arc<App>, head: &Parts, body: B) -> Answer {
    if head.method != Method::POST {
        return Err(ProxyError::method_not_allowed("POST"));
    }
    let bytes = read_json_body(body, MAX_BODY_BYTES, app.cfg.server.request_deadline).await?;
    let request: PurgeRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::new(ErrorClass::BadRequest, format!("expected {{\"origin\"?: string, \"keys\": [string]}}: {e}")))?;
    if request.keys.is_empty() || request.keys.len() > MAX_KEYS {
        return Err(ProxyError::new(ErrorClass::BadRequest, format!("give 1 to {MAX_KEYS} source keys")));
    }
    let origin = request.origin.as_deref().unwrap_or("default");
    if !app.cfg.origins.contains_key(origin) {
        return Err(ProxyError::new(ErrorClass::BadRequest, format!("unknown origin `{origin}`")));
    }
    let purged = apply(app, origin, &request.keys);
    // With Redis, every other replica applies it too; without (or when Redis is unreachable),
    // this replica only, and the answer says so.
    let scope = match &app.purge_bus {
        Some(bus) => match bus.publish(origin, &request.keys).await {
            Ok(_) => "fleet",
            Err(e) => {
                tracing::warn!(error = %e, "purge fan-out: publishing failed; purged on this replica only");
                "replica"
            }
        },
        None => "replica",
    };
    let body = serde_json::json!({ "origin": origin, "purged": purged, "scope": scope });
    Ok((respond::json(StatusCode::OK, &body), CacheOutcome::None))
}

/// Drops the memory-tier entries of `keys` on this replica; each key with its source tag.
pub fn apply(app: &App, origin: &str, keys: &[String]) -> Vec<serde_json::Value> {
    let purged: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| {
            let tag = SourceTag::of(origin, key);
            app.memory.purge_source(tag);
            serde_json::json!({ "key": key, "tag": tag.header() })
        })
        .collect();
    app.metrics.purged_sources.inc_by(purged.len() as u64);
    purged
}

/// A small request body, whole, within `limit` bytes and `timeout`.
pub async fn read_json_body<B: RequestBody>(body: B, limit: usize, timeout: std::time::Duration) -> Result<bytes::Bytes, ProxyError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ProxyError::new(ErrorClass::RequestTimeout, format!("the request body did not arrive within {timeout:?}"))),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ProxyError::new(ErrorClass::TooLarge, format!("the request body is larger than {limit} bytes")))
        }
        Ok(Err(e)) => Err(ProxyError::new(ErrorClass::BadRequest, format!("reading the request body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
