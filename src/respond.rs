//! Building responses: images with CDN-correct headers, 304s, and the one error response.
//!
//! Header policy for results: `ETag` = quoted result key; `Cache-Control` chosen by the caller
//! (transform URLs are not content-addressed, so `output.cache_control` is not `immutable`;
//! `/r/` URLs are, `output.stored_cache_control`); `Last-Modified` from the source object and
//! `Surrogate-Key`/`Cache-Tag` (the source tag, for CDN purges) on URL results; 304 on a
//! matching `If-None-Match`, or, without one, on an `If-Modified-Since` not older than the
//! source; `Vary: Accept` only when the format was negotiated; `X-Upres-Cache`,
//! `X-Upres-Model`, `X-Upres-Consistency` (when a model ran) and `Server-Timing` when debug
//! headers are on. Errors carry a JSON body with a
//! stable `code` and `no-store` (404s a short lifetime) so a CDN does not pin a failure.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::cache::CachedResult;
use crate::config::OutputConfig;
use crate::error::{ErrorClass, ProxyError};

/// Response bodies: whole buffers almost everywhere, a stream for server-sent events.
pub type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A body of one buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Where a result came from, as `X-Upres-Cache` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    HitMemory,
    HitStore,
    Miss,
    Coalesced,
    /// A preview standing in for a model run that goes on in the background.
    Preview,
    /// Not a cacheable request (errors, health, metrics).
    None,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::HitMemory => "hit-memory",
            CacheOutcome::HitStore => "hit-store",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Preview => "preview",
            CacheOutcome::None => "none",
        }
    }
}

/// Stage durations of the computation that produced a result (`Server-Timing`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    pub stages: Vec<(&'static str, Duration)>,
}

impl Timings {
    pub fn push(&mut self, stage: &'static str, d: Duration) {
        self.stages.push((stage, d));
    }

    pub fn header(&self) -> String {
        self.stages.iter().map(|(n, d)| format!("{n};dur={:.1}", d.as_secs_f64() * 1000.0)).collect::<Vec<_>>().join(", ")
    }
}

/// How the image response should be shaped.
pub struct ImageReply<'a> {
    pub result: &'a CachedResult,
    pub outcome: CacheOutcome,
    pub timings: &'a Timings,
    pub varies: bool,
    pub method: &'a Method,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    /// `Cache-Control`: `output.cache_control` for transform URLs, `stored_cache_control` for
    /// content-addressed ones.
    pub cache_control: &'a str,
    pub cfg: &'a OutputConfig,
}

pub fn image(r: ImageReply<'_>) -> Response<Body> {
    let etag = r.result.key.etag();
    let modified = r.result.source.and_then(|s| s.modified);
    // RFC 9110 13.2.2: `If-Modified-Since` counts only without `If-None-Match`.
    let not_modified = match (r.if_none_match, r.if_modified_since, modified) {
        (Some(inm), _, _) => etag_matches(inm, &etag),
        (None, Some(ims), Some(modified)) => not_modified_since(ims, modified),
        _ => false,
    };
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if r.method == Method::HEAD {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, r.result.bytes.clone())
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, r.cache_control);
    if let Some(modified) = modified {
        b = b.header(header::LAST_MODIFIED, httpdate::fmt_http_date(modified));
    }
    if let Some(source) = r.result.source {
        // Fastly purges by `Surrogate-Key`, Cloudflare by `Cache-Tag`; both strip them.
        let tag = source.tag.header();
        b = b.header("surrogate-key", &tag).header("cache-tag", &tag);
    }
    if r.varies {
        b = b.header(header::VARY, "Accept");
    }
    b = b.header("x-upres-result", if r.outcome == CacheOutcome::Preview { "preview" } else { "final" });
    if status == StatusCode::OK {
        b = b
            .header(header::CONTENT_TYPE, r.result.format.content_type())
            .header(header::CONTENT_LENGTH, r.result.bytes.len())
            .header("x-content-type-options", "nosniff");
    }
    if r.cfg.debug_headers {
        b = b.header("x-upres-cache", r.outcome.as_str()).header("x-upres-model", header_safe(&r.result.model));
        if let Some(score) = r.result.consistency {
            b = b.header("x-upres-consistency", score.header_value());
        }
        let timing = match r.outcome {
            CacheOutcome::HitMemory | CacheOutcome::HitStore => format!("cache;desc=\"{}\"", r.outcome.as_str()),
            _ => r.timings.header(),
        };
        if !timing.is_empty() {
            b = b.header("server-timing", timing);
        }
    }
    b.body(full(body)).expect("valid response")
}

/// `If-Modified-Since` at or after the source's modification time (HTTP dates have whole
/// seconds). An unparsable date is ignored, as RFC 9110 says.
fn not_modified_since(ims: &str, modified: SystemTime) -> bool {
    let Ok(since) = httpdate::parse_http_date(ims) else { return false };
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    secs(modified) <= secs(since)
}

/// `If-None-Match: "a", W/"b"` or `*`.
fn etag_matches(inm: &str, etag: &str) -> bool {
    inm.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

fn header_safe(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The only place an error becomes a response.
pub fn error(e: &ProxyError, request_id: &str, cfg: &OutputConfig) -> Response<Body> {
    let message = if e.class.is_client_visible() { e.message.clone() } else { format!("internal error (request {request_id})") };
    let body = serde_json::json!({ "error": { "code": e.class.code(), "message": message, "request_id": request_id } });
    let mut b = Response::builder()
        .status(e.class.status())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, if e.class == ErrorClass::NotFound { &cfg.not_found_cache_control } else { &cfg.error_cache_control });
    if let Some(after) = e.retry_after {
        b = b.header(header::RETRY_AFTER, after.as_secs().max(1));
    }
    if e.class == ErrorClass::MethodNotAllowed {
        b = b.header(header::ALLOW, e.allow.unwrap_or("GET, HEAD"));
    }
    if e.class == ErrorClass::Unauthorized {
        b = b.header(header::WWW_AUTHENTICATE, "Bearer");
    }
    b.body(full(body.to_string())).expect("valid response")
}

pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("valid response")
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

/// What a route handler answers: the response and its cache outcome (for logs and metrics), or
/// an error that `routes::handle` turns into the JSON error response.
pub type Answer = Result<(Response<Body>, CacheOutcome), ProxyError>;

/// Every route but the uploads answers GET and HEAD only (405 with `Allow: GET, HEAD`).
pub fn get_or_head(head: &http::request::Parts) -> Result<(), ProxyError> {
    if head.method == Method::GET || head.method == Method::HEAD {
        Ok(())
    } else {
        Err(ProxyError::method_not_allowed("GET, HEAD"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching_handles_lists_weak_and_star() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"x\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let modified = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        assert!(not_modified_since(&httpdate::fmt_http_date(modified), modified));
        assert!(not_modified_since("Wed, 01 Jan 2031 00:00:00 GMT", modified));
        assert!(!not_modified_since("Thu, 01 Jan 2015 00:00:00 GMT", modified));
        assert!(!not_modified_since("yesterday", modified));
    }

    #[tokio::test]
    async fn not_found_gets_a_short_lifetime_other_errors_none() {
        let cfg = OutputConfig::default();
        let r = error(&ProxyError::new(ErrorClass::NotFound, "gone"), "r1", &cfg);
        assert_eq!(r.headers()[header::CACHE_CONTROL], cfg.not_found_cache_control.as_str());
        let r = error(&ProxyError::new(ErrorClass::BadRequest, "bad"), "r1", &cfg);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn internal_errors_hide_details_and_overload_says_retry_after() {
        let cfg = OutputConfig::default();
        let r = error(&ProxyError::new(ErrorClass::Internal, "secret path /x"), "r1", &cfg);
        assert_eq!(r.status(), 500);
        let body = String::from_utf8(r.into_body().collect().await.expect("full body").to_bytes().to_vec()).unwrap();
        assert!(!body.contains("secret") && body.contains("r1"));
        let e = ProxyError::new(ErrorClass::Overloaded, "full").with_retry_after(Duration::from_secs(2));
        let r = error(&e, "r2", &cfg);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}

