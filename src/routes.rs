//! Routing: the table of every route the server answers, and `handle`, which runs the guards,
//! picks the route, calls its handler and logs the answer. The top of the request path: it
//! imports `api/`, `pipeline`, `playground`, `health` and `stored`, and none of them imports it.
//!
//! ```text
//! handle ─ guards (CORS preflight, body, rate limit, API key) → Route::resolve(path):
//!            ┌─ /healthz /readyz /metrics                        health
//!            ├─ /api/v1/{health,model-info,shadow,openapi.json}   api::info, api::openapi
//!            ├─ /api/v1/upscale /api/v1/batch-upscale             api::upscale, api::batch
//!            ├─ /api/v1/purge  /api/v1/jobs[/<id>]                api::purge, api::jobs
//!            ├─ /r/<hash>.<ext>                                   stored
//!            ├─ /info/<transform path>   the plan, keys, cache state  api::image_info
//!            ├─ / /docs /playground/* /api/v1/{samples,sign,progress}   playground
//!            └─ anything else: a transform URL                    pipeline::transform
//!        → guards.decorate (CORS) → metrics, one log line, X-Request-Id
//! (all inside the request's span and trace: `trace_context`)
//! ```

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{header, HeaderValue, Request, Response};
use tracing::{info, info_span, warn, Instrument};

use crate::api::{self, RequestBody};
use crate::app::App;
use crate::error::ErrorClass;
use crate::respond::{self, Answer, Body, CacheOutcome};
use crate::trace_context::{self, TraceParent};
use crate::{health, pipeline, playground, stored};

/// Every kind of request the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    ApiHealth,
    ApiModelInfo,
    /// `[ml.shadow]`'s runs, summarised per (served, candidate) pair.
    ApiShadow,
    ApiOpenapi,
    ApiUpscale,
    ApiBatch,
    ApiPurge,
    ApiJobCreate,
    ApiJobGet,
    Stored,
    /// `/info/<transform path>`: what the transform would do, as JSON.
    Info,
    Playground,
    /// The fallback: any path no other route matches is a transform URL.
    Transform,
}

/// How a route's path is matched.
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    Exact(&'static str),
    /// The path starts with this (the rest is the route's argument).
    Prefix(&'static str),
}

impl Pattern {
    fn matches(self, path: &str) -> bool {
        match self {
            Pattern::Exact(p) => path == p,
            Pattern::Prefix(p) => path.starts_with(p),
        }
    }
}

/// One row of the route table: the path pattern, the methods the route answers (GET includes
/// HEAD; each handler checks its own method and answers `405` with `Allow`), and the route.
#[derive(Clone, Copy, Debug)]
pub struct RouteDef {
    pub pattern: Pattern,
    pub methods: &'static [&'static str],
    pub route: Route,
}

const GET: &[&str] = &["GET", "HEAD"];
const POST: &[&str] = &["POST"];

const fn def(pattern: Pattern, methods: &'static [&'static str], route: Route) -> RouteDef {
    RouteDef { pattern, methods, route }
}

use Pattern::{Exact, Prefix};

/// The route table, tried in order; no row matching means `Route::Transform`. The OpenAPI
/// document's test reads this table (`api::openapi`).
pub const ROUTES: &[RouteDef] = &[
    def(Exact("/healthz"), GET, Route::Healthz),
    def(Exact("/readyz"), GET, Route::Readyz),
    def(Exact("/metrics"), GET, Route::Metrics),
    def(Exact("/api/v1/health"), GET, Route::ApiHealth),
    def(Exact("/api/v1/model-info"), GET, Route::ApiModelInfo),
    def(Exact("/api/v1/shadow"), GET, Route::ApiShadow),
    def(Exact("/api/v1/openapi.json"), GET, Route::ApiOpenapi),
    def(Exact("/api/v1/upscale"), POST, Route::ApiUpscale),
    def(Exact("/api/v1/batch-upscale"), POST, Route::ApiBatch),
    def(Exact("/api/v1/purge"), POST, Route::ApiPurge),
    def(Exact("/api/v1/jobs"), POST, Route::ApiJobCreate),
    def(Prefix("/api/v1/jobs/"), GET, Route::ApiJobGet),
    def(Prefix("/r/"), GET, Route::Stored),
    def(Prefix("/info/"), GET, Route::Info),
    def(Exact("/"), GET, Route::Playground),
    def(Exact("/docs"), GET, Route::Playground),
    def(Exact("/api/v1/samples"), GET, Route::Playground),
    def(Exact("/api/v1/sign"), GET, Route::Playground),
    def(Prefix("/api/v1/samples/"), GET, Route::Playground),
    def(Prefix("/api/v1/progress/"), GET, Route::Playground),
    def(Prefix("/playground/"), GET, Route::Playground),
];

impl Route {
    /// The route for a request path.
    pub fn resolve(path: &str) -> Route {
        ROUTES.iter().find(|d| d.pattern.matches(path)).map_or(Route::Transform, |d| d.route)
    }

    /// The name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::ApiHealth => "api_health",
            Route::ApiModelInfo => "api_model_info",
            Route::ApiShadow => "api_shadow",
            Route::ApiOpenapi => "api_openapi",
            Route::ApiUpscale => "api_upscale",
            Route::ApiBatch => "api_batch",
            Route::ApiPurge => "api_purge",
            Route::ApiJobCreate | Route::ApiJobGet => "api_jobs",
            Route::Stored => "stored",
            Route::Info => "info",
            Route::Playground => "playground",
            Route::Transform => "transform",
        }
    }

}

/// Answers one request. Never fails: errors become responses here. Runs inside the request's
/// span (`request_id`, `trace_id`: on every log line the request causes) and trace
/// (`trace_context`), and answers with `X-Request-Id`.
pub async fn handle<B: RequestBody>(app: &Arc<App>, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let rid = trace_context::request_id(req.headers().get(trace_context::REQUEST_ID), || app.next_request_id());
    let incoming = req.headers().get(trace_context::TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let span = info_span!("request", request_id = %rid, trace_id = tracing::field::Empty);
    let trace = trace_context::start(&span, incoming);
    span.record("trace_id", trace.trace_id_hex());
    let mut response = trace_context::within(trace, answer(app, req, &rid, started)).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&rid) {
        response.headers_mut().insert(trace_context::REQUEST_ID, value);
    }
    response
}

async fn answer<B: RequestBody>(app: &Arc<App>, req: Request<B>, rid: &str, started: Instant) -> Response<Body> {
    let (head, body) = req.into_parts();
    // `None`: a guard answered before routing.
    let (route, result) = match app.guards.admit(&head).await {
        Some(refusal) => (None, refusal.map(|r| (r, CacheOutcome::None))),
        None => {
            let route = Route::resolve(head.uri.path());
            (Some(route), dispatch(app, route, &head, body).await)
        }
    };
    let (mut response, outcome) = match result {
        Ok(ok) => ok,
        Err(e) => {
            if e.class == ErrorClass::Internal {
                warn!(error = %e.message, "internal error");
            }
            (respond::error(&e, rid, &app.cfg.output), CacheOutcome::None)
        }
    };
    app.guards.decorate(&head.headers, &mut response);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let route = route.map_or("guard", Route::name);
    // The model that made the image served (a closed set: the loaded models); `none` otherwise.
    let model = response.headers().get("x-upres-model").and_then(|v| v.to_str().ok()).unwrap_or("none");
    app.metrics.requests.with_label_values(&[&status.to_string(), outcome.as_str()]).inc();
    app.metrics.request_seconds.with_label_values(&[route, outcome.as_str(), model]).observe(elapsed.as_secs_f64());
    info!(
        method = %head.method,
        route,
        status,
        cache = outcome.as_str(),
        ms = elapsed.as_secs_f64() * 1000.0,
        bytes = response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0"),
        "request"
    );
    response
}

/// Calls the route's handler.
async fn dispatch<B: RequestBody>(app: &Arc<App>, route: Route, head: &Parts, body: B) -> Answer {
    match route {
        Route::Healthz => health::healthz(head),
        Route::Readyz => health::readyz(app, head).await,
        Route::Metrics => health::metrics(app, head),
        Route::ApiHealth => api::info::health(app, head),
        Route::ApiModelInfo => api::info::model_info(app, head),
        Route::ApiShadow => api::info::shadow(app, head),
        Route::ApiOpenapi => api::openapi::serve(head),
        Route::ApiUpscale => api::upscale::handle(app, head, body).await,
        Route::ApiBatch => api::batch::handle(app, head, body).await,
        Route::ApiPurge => api::purge::handle(app, head, body).await,
        Route::ApiJobCreate => api::jobs::create(app, head, body).await,
        Route::ApiJobGet => api::jobs::get(app, head).await,
        Route::Stored => stored::serve(app, head).await,
        Route::Info => api::image_info::handle(app, head).await,
        Route::Playground => playground::serve(app, head).await.map(|r| (r, CacheOutcome::None)),
        Route::Transform => pipeline::transform(app, head).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_their_routes_and_everything_else_is_a_transform() {
        assert_eq!(Route::resolve("/healthz"), Route::Healthz);
        assert_eq!(Route::resolve("/api/v1/jobs"), Route::ApiJobCreate);
        assert_eq!(Route::resolve("/api/v1/jobs/3f9a"), Route::ApiJobGet);
        assert_eq!(Route::resolve("/r/abc.webp"), Route::Stored);
        assert_eq!(Route::resolve("/info/sig/w:60/plain/cat.png"), Route::Info);
        assert_eq!(Route::resolve("/"), Route::Playground);
        assert_eq!(Route::resolve("/playground/app.js"), Route::Playground);
        assert_eq!(Route::resolve("/x4/shop/cat.png"), Route::Transform);
        // Only the exact path or the prefix with its slash: `/healthzz` and `/docsx` are sources.
        assert_eq!(Route::resolve("/healthzz"), Route::Transform);
        assert_eq!(Route::resolve("/docsx/cat.png"), Route::Transform);
    }

    #[test]
    fn every_route_but_the_fallback_has_a_row_and_rows_do_not_shadow_each_other() {
        for (i, a) in ROUTES.iter().enumerate() {
            // A later row must stay reachable: no earlier row may match its pattern's own path.
            let own = match a.pattern {
                Pattern::Exact(p) => p.to_string(),
                Pattern::Prefix(p) => format!("{p}x"),
            };
            let first = ROUTES.iter().position(|d| d.pattern.matches(&own)).expect("a row matches its own path");
            assert_eq!(first, i, "row {i} ({:?}) is shadowed by row {first}", a.pattern);
        }
    }
}
