//! The playground: a page at `/` to try upres without reading docs, interactive API docs at
//! `/docs`, and the small endpoints behind them (sample list and bytes, URL signing, progress
//! streams). The pages are plain HTML, CSS and JavaScript compiled into the binary
//! (`assets/playground/`): no build step, nothing fetched from elsewhere, so they work offline.
//!
//! Who gets them is `[playground] enabled`: `local` (the default) serves only clients whose TCP
//! peer is a loopback address, `on` everyone, `off` nobody; everyone else gets `404`, as for any
//! unknown path. Signing a path for the page is loopback-only whatever the mode, or signing
//! would protect nothing. Does not own the transform path or the REST API it calls.

pub mod progress;

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use http::{header, Method, Response, StatusCode};

use crate::app::App;
use crate::config::PlaygroundAccess;
use crate::error::{ErrorClass, ProxyError};
use crate::imaging::decode;
use crate::params;
use crate::respond::{self, Body};
use crate::guard::Peer;

/// Samples listed at most.
const MAX_SAMPLES: usize = 200;

/// Compiled-in pages and assets: path, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("/", "text/html; charset=utf-8", include_bytes!("../../assets/playground/index.html")),
    ("/docs", "text/html; charset=utf-8", include_bytes!("../../assets/playground/docs.html")),
    ("/playground/app.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/playground/app.js")),
    ("/playground/docs.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/playground/docs.js")),
    ("/playground/style.css", "text/css; charset=utf-8", include_bytes!("../../assets/playground/style.css")),
];

/// Only our own origin: the pages load nothing from elsewhere, and this makes sure of it.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Whether this request may use the playground.
pub fn allowed(app: &App, head: &Parts) -> bool {
    match app.cfg.playground.enabled {
        PlaygroundAccess::On => true,
        PlaygroundAccess::Off => false,
        PlaygroundAccess::Local => from_loopback(head),
    }
}

/// The progress id an image request asks to report to, when the playground serves it.
pub fn progress_id(app: &App, head: &Parts) -> Option<String> {
    let id = head.headers.get(progress::HEADER)?.to_str().ok()?;
    (progress::valid_id(id) && allowed(app, head)).then(|| id.to_string())
}

fn from_loopback(head: &Parts) -> bool {
    head.extensions.get::<Peer>().is_some_and(|Peer(peer)| match peer.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    })
}

/// Answers a playground path (`pipeline::handle` routes them here).
pub async fn serve(app: &Arc<App>, head: &Parts) -> Result<Response<Body>, ProxyError> {
    let path = head.uri.path();
    if !allowed(app, head) {
        return Err(ProxyError::new(ErrorClass::NotFound, format!("no route for {path}")));
    }
    if head.method != Method::GET && head.method != Method::HEAD {
        return Err(ProxyError::new(ErrorClass::MethodNotAllowed, "use GET or HEAD"));
    }
    if let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, ..)| *p == path) {
        return Ok(asset(content_type, bytes));
    }
    if path == "/api/v1/samples" {
        return samples(app).await;
    }
    if let Some(key) = path.strip_prefix("/api/v1/samples/") {
        return sample_bytes(app, key).await;
    }
    if path == "/api/v1/sign" {
        return sign(app, head);
    }
    let id = path.trim_start_matches("/api/v1/progress/");
    let rx = app.progress.subscribe(id)?;
    let ttl = progress::ID_TTL.min(app.cfg.server.request_deadline * 2);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-accel-buffering", "no")
        .body(progress::event_stream(rx, ttl))
        .expect("valid response"))
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(respond::full(bytes))
        .expect("valid response")
}

/// `GET /api/v1/samples`: image keys of the default origin.
async fn samples(app: &App) -> Result<Response<Body>, ProxyError> {
    let listed = app.origins.list_images(None, MAX_SAMPLES).await?;
    let samples: Vec<_> = listed.iter().map(|l| serde_json::json!({ "key": l.key, "bytes": l.size })).collect();
    Ok(respond::json(StatusCode::OK, &serde_json::json!({ "origin": "default", "samples": samples })))
}

/// `GET /api/v1/samples/<key>`: a sample's original bytes, so the page can show the original.
async fn sample_bytes(app: &App, raw_key: &str) -> Result<Response<Body>, ProxyError> {
    // The same key rules as transform URLs (no `..`, no encoded separators).
    let key = params::parse(&format!("/-/{raw_key}"), &app.param_limits)?.source;
    let fetched = app.origins.fetch(None, &key, app.cfg.limits.max_source_bytes).await?;
    let media_type = decode::sniff_media_type(&fetched.bytes)
        .ok_or_else(|| ProxyError::new(ErrorClass::Unsupported, "the sample is not an image upres reads"))?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, fetched.bytes.len())
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-content-type-options", "nosniff")
        .body(respond::full(fetched.bytes))
        .expect("valid response"))
}

/// `GET /api/v1/sign?path=<percent-encoded transform path>`: the path to request, signed when
/// signing is on (loopback clients only), as-is otherwise.
fn sign(app: &App, head: &Parts) -> Result<Response<Body>, ProxyError> {
    let query = head.uri.query().unwrap_or("");
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .ok_or_else(|| ProxyError::new(ErrorClass::BadRequest, "give the transform path as `?path=`"))?;
    let path = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ProxyError::new(ErrorClass::BadRequest, "`path` is not percent-encoded UTF-8"))?;
    if !path.starts_with('/') {
        return Err(ProxyError::new(ErrorClass::BadRequest, "`path` must start with `/`"));
    }
    params::parse(&path, &app.param_limits)?;
    let (signed_path, signed) = match &app.signer {
        None => (path.to_string(), false),
        Some(_) if !from_loopback(head) => {
            return Err(ProxyError::new(ErrorClass::Forbidden, "paths are signed only for loopback clients"))
        }
        Some(signer) => (format!("/{}{path}", signer.sign(&path)), true),
    };
    Ok(respond::json(StatusCode::OK, &serde_json::json!({ "path": signed_path, "signed": signed })))
}
