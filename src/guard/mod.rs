//! Request guards that run before routing: CORS preflight, request-body policy, per-client rate
//! limits and REST API keys; and the CORS headers added to every response afterwards.
//!
//! `pipeline::handle` calls `admit` once (an answer here ends the request) and `decorate` once.
//! Order matters: a preflight carries no credentials, so it is answered first; rate limits come
//! before the key check so keys cannot be guessed at full speed. URL signatures are not here:
//! they belong to the transform path (`verify.rs`). Origin-side SSRF rules are in `ssrf.rs`.

pub mod auth;
pub mod client_ip;
pub mod cors;
pub mod limiter;
pub mod ratelimit;
pub mod shared_limit;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderMap, Method, Response};

use crate::config::Config;
use crate::error::{ErrorClass, ProxyError};
use crate::respond::Body;

use auth::ApiKeys;
use client_ip::TrustedProxies;
use cors::Cors;
use limiter::Limiter;
use shared_limit::RedisLink;

/// The TCP peer of a request; `server.rs` puts it into the request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

pub struct Guards {
    keys: ApiKeys,
    cors: Option<Cors>,
    uploads: Option<Limiter>,
    transforms: Option<Limiter>,
    proxies: TrustedProxies,
    ipv6_prefix: u8,
    redis: Option<Arc<RedisLink>>,
}

/// Checks the guard settings of `cfg` without keeping the guards (`App::build` builds them and
/// fails the start on the same errors; `config.rs` does not reach up into the guards).
pub fn validate(cfg: &Config) -> Result<(), String> {
    Guards::from_config(cfg).map(|_| ())
}

impl Guards {
    /// As `build`, with a fallback counter of its own (for checks and tests).
    pub fn from_config(cfg: &Config) -> Result<Guards, String> {
        Guards::build(cfg, crate::telemetry::rate_limit_fallbacks())
    }

    /// `fallbacks` counts the requests decided without Redis (`shared_limit.rs`).
    pub fn build(cfg: &Config, fallbacks: prometheus::IntCounterVec) -> Result<Guards, String> {
        let rl = &cfg.rate_limit;
        let redis = match rl.backend.as_str() {
            "memory" => None,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(Arc::new(RedisLink::new(url, rl.redis_timeout, rl.redis_unavailable, fallbacks)?))
            }
            other => return Err(format!("rate_limit.backend must be \"memory\" or a redis:// URL, not {other:?}")),
        };
        Ok(Guards {
            keys: ApiKeys::parse(&cfg.api.keys)?,
            cors: Cors::from_config(&cfg.cors)?,
            uploads: Limiter::from_config(rl, &rl.uploads, "uploads", "uploads", redis.as_ref()),
            transforms: Limiter::from_config(rl, &rl.transforms, "transforms", "image requests", redis.as_ref()),
            proxies: TrustedProxies::parse(&cfg.server.trusted_proxies, &cfg.server.client_ip_header)?,
            ipv6_prefix: match rl.ipv6_prefix {
                p @ 16..=128 => p,
                p => return Err(format!("rate_limit.ipv6_prefix must be in 16..=128, not {p}")),
            },
            redis,
        })
    }

    /// `None`: go on to routing. `Some`: the request ends here, with a preflight answer or a
    /// refusal (413 body on a route that takes none, 429, 401, 403).
    pub async fn admit(&self, head: &Parts) -> Option<Result<Response<Body>, ProxyError>> {
        if let Some(preflight) = self.cors.as_ref().and_then(|c| c.preflight(&head.method, &head.headers)) {
            return Some(Ok(preflight));
        }
        self.refusal(head).await.err().map(Err)
    }

    async fn refusal(&self, head: &Parts) -> Result<(), ProxyError> {
        let path = head.uri.path();
        let upload = head.method == Method::POST && path.starts_with("/api/");
        if !upload && declares_body(&head.headers) {
            return Err(ProxyError::new(ErrorClass::TooLarge, "this route takes no request body"));
        }
        let bucket = if upload {
            self.uploads.as_ref()
        } else if is_image_route(path) {
            self.transforms.as_ref()
        } else {
            None
        };
        if let Some(bucket) = bucket {
            bucket.check(ratelimit::bucket_key(self.client_ip(head), self.ipv6_prefix)).await?;
        }
        if self.keys.enabled() && auth::protects(path) {
            self.keys.check(&head.headers)?;
        }
        Ok(())
    }

    /// The Redis connection of `rate_limit.backend`, when one is configured (purges share it).
    pub fn redis(&self) -> Option<&Arc<RedisLink>> {
        self.redis.as_ref()
    }

    /// Adds CORS headers (when CORS is on) to any response, errors included, so a page can read
    /// our error JSON.
    pub fn decorate(&self, req: &HeaderMap, resp: &mut Response<Body>) {
        if let Some(cors) = &self.cors {
            cors.decorate(req, resp.headers_mut());
        }
    }

    /// The rate-limit key: the peer, or the forwarded client behind a trusted proxy.
    pub fn client_ip(&self, head: &Parts) -> IpAddr {
        let peer = head.extensions.get::<Peer>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
        self.proxies.client_ip(peer, &head.headers)
    }
}

/// A body is declared by a non-zero `Content-Length` or any `Transfer-Encoding`. (An HTTP/2 body
/// without a length is never read on these routes: ignored, not buffered.)
fn declares_body(h: &HeaderMap) -> bool {
    let length = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).map(|v| v.trim() != "0");
    length.unwrap_or(false) || h.contains_key(header::TRANSFER_ENCODING)
}

/// Transform paths and `/r/` results: everything but the API and the operator endpoints.
fn is_image_route(path: &str) -> bool {
    !(path.starts_with("/api/") || matches!(path, "/healthz" | "/readyz" | "/metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (mut p, _) = b.body(()).unwrap().into_parts();
        p.extensions.insert(Peer("198.51.100.4:5555".parse().unwrap()));
        p
    }

    #[tokio::test]
    async fn bodies_only_on_upload_routes() {
        let g = Guards::from_config(&Config::default()).unwrap();
        let e = g.admit(&parts("GET", "/x2/a.png", &[("content-length", "5")])).await.unwrap().unwrap_err();
        assert_eq!(e.class, ErrorClass::TooLarge);
        assert!(g.admit(&parts("GET", "/x2/a.png", &[("transfer-encoding", "chunked")])).await.is_some());
        assert!(g.admit(&parts("GET", "/x2/a.png", &[("content-length", "0")])).await.is_none());
        assert!(g.admit(&parts("POST", "/api/v1/upscale", &[("content-length", "5")])).await.is_none());
    }

    #[tokio::test]
    async fn default_config_limits_uploads_not_images_and_needs_no_key() {
        let g = Guards::from_config(&Config::default()).unwrap();
        for _ in 0..50 {
            assert!(g.admit(&parts("GET", "/x2/a.png", &[])).await.is_none());
        }
        for _ in 0..10 {
            assert!(g.admit(&parts("POST", "/api/v1/upscale", &[])).await.is_none());
        }
        let e = g.admit(&parts("POST", "/api/v1/upscale", &[])).await.unwrap().unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert!(e.retry_after.is_some());
    }
}
