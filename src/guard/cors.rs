//! CORS: which browser origins may read our responses, and preflight answers.
//!
//! Off while `cors.allowed_origins` is empty: no CORS header is ever sent and `OPTIONS` is an
//! ordinary (405) request. On: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) from an allowed origin asking for allowed methods and headers
//! gets `204` with the `Access-Control-Allow-*` headers; any other preflight gets `204` with none
//! of them, so the browser refuses. Other responses to an allowed origin carry
//! `Access-Control-Allow-Origin` and `-Expose-Headers`. `Vary: Origin` is on every response
//! whose headers depend on `Origin` (everything, unless the list is exactly `*`).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::CorsConfig;
use crate::respond::Body;

#[derive(Clone, Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<String>,
    headers: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

impl Cors {
    /// `None` when CORS is off.
    pub fn from_config(cfg: &CorsConfig) -> Result<Option<Cors>, String> {
        if cfg.allowed_origins.is_empty() {
            return Ok(None);
        }
        let value = |list: &[String], what: &str| {
            HeaderValue::from_str(&list.join(", ")).map_err(|_| format!("cors.{what}: not a valid header value"))
        };
        let methods: Vec<String> = cfg.allowed_methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        let headers: Vec<String> = cfg.allowed_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(Some(Cors {
            any_origin: cfg.allowed_origins.iter().any(|o| o == "*"),
            origins: cfg.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
            allow_methods: value(&methods, "allowed_methods")?,
            allow_headers: value(&headers, "allowed_headers")?,
            expose_headers: (!cfg.expose_headers.is_empty())
                .then(|| value(&cfg.expose_headers, "expose_headers"))
                .transpose()?,
            max_age: HeaderValue::from(cfg.max_age.as_secs()),
            methods,
            headers,
        }))
    }

    fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// `*` for any origin, else the origin itself (a response names one origin at most).
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn vary(&self, headers: &mut HeaderMap) {
        if !(self.any_origin && self.origins.len() == 1) {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    /// The answer to a preflight request, or `None` when `req` is not one.
    pub fn preflight(&self, method: &Method, req: &HeaderMap) -> Option<Response<Body>> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = req.get(header::ORIGIN)?;
        let asked_method = req.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut resp = Response::builder().status(StatusCode::NO_CONTENT).body(crate::respond::full(Bytes::new())).expect("valid response");
        let h = resp.headers_mut();
        self.vary(h);
        let asked_headers = req
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        let ok = origin.to_str().is_ok_and(|o| self.allows(o))
            && asked_method.to_str().is_ok_and(|m| self.methods.iter().any(|a| a == m))
            && asked_headers.into_iter().all(|a| self.headers.contains(&a));
        if ok {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
            h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        Some(resp)
    }

    /// Adds the CORS headers for a non-preflight response.
    pub fn decorate(&self, req: &HeaderMap, resp: &mut HeaderMap) {
        self.vary(resp);
        let Some(origin) = req.get(header::ORIGIN) else { return };
        if !origin.to_str().is_ok_and(|o| self.allows(o)) {
            return;
        }
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if let Some(expose) = &self.expose_headers {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        let cfg = CorsConfig { allowed_origins: origins.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        Cors::from_config(&cfg).unwrap().unwrap()
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn off_by_default() {
        assert!(Cors::from_config(&CorsConfig::default()).unwrap().is_none());
    }

    #[test]
    fn preflight_allowed_and_refused() {
        let c = cors(&["https://shop.example"]);
        let asks = |origin: &str, method: &str, headers: &str| {
            c.preflight(
                &Method::OPTIONS,
                &req(&[("origin", origin), ("access-control-request-method", method), ("access-control-request-headers", headers)]),
            )
            .unwrap()
        };
        let ok = asks("https://shop.example", "POST", "Authorization, content-type");
        assert_eq!(ok.status(), 204);
        assert_eq!(ok.headers()["access-control-allow-origin"], "https://shop.example");
        assert_eq!(ok.headers()["access-control-max-age"], "600");
        assert!(ok.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
        assert_eq!(ok.headers()["vary"], "Origin");
        for refused in [
            asks("https://evil.example", "POST", ""),
            asks("https://shop.example", "DELETE", ""),
            asks("https://shop.example", "GET", "x-custom"),
        ] {
            assert_eq!(refused.status(), 204);
            assert!(refused.headers().get("access-control-allow-origin").is_none());
            assert!(refused.headers().get("access-control-allow-methods").is_none());
        }
        // not a preflight: no Access-Control-Request-Method, or not OPTIONS
        assert!(c.preflight(&Method::OPTIONS, &req(&[("origin", "https://shop.example")])).is_none());
        assert!(c.preflight(&Method::GET, &req(&[("origin", "https://shop.example"), ("access-control-request-method", "GET")])).is_none());
    }

    #[test]
    fn simple_responses_name_the_allowed_origin_only() {
        let c = cors(&["https://shop.example"]);
        let mut h = HeaderMap::new();
        h.insert(header::VARY, "Accept".parse().unwrap());
        c.decorate(&req(&[("origin", "https://shop.example")]), &mut h);
        assert_eq!(h["access-control-allow-origin"], "https://shop.example");
        assert!(h.contains_key("access-control-expose-headers"));
        assert_eq!(h.get_all(header::VARY).iter().collect::<Vec<_>>(), ["Accept", "Origin"]);
        let mut h = HeaderMap::new();
        c.decorate(&req(&[("origin", "https://evil.example")]), &mut h);
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(h["vary"], "Origin");
        let mut h = HeaderMap::new();
        cors(&["*"]).decorate(&req(&[("origin", "https://any.example")]), &mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(h.get("vary").is_none(), "`*` alone does not vary by Origin");
    }
}
