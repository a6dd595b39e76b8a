//! The image path, top to bottom: `transform` (a transform URL) reads as the design's stage
//! list; `uploaded` is the same for bytes that came in a request body (the REST API in `api/`).
//! Both end in one flight per result (`fly`); the work behind a flight is the miss path
//! (`miss.rs`), behind the first-hit budget for URLs (`preview.rs`). Routing is `routes.rs`.
//!
//! ```text
//! transform: verify (signature) → parse (upres or imgproxy syntax) → negotiate → request key
//!            → memory tier → fly(request key) ─ leader: spawn(preview::produce) ─┐
//!                                              └ follower ───────────────────────┴→ wait (deadline)
//!            → the final, or the flight's preview if it has one → respond
//! uploaded:  miss::plan_bytes → memory tier (upload key) → fly(result key)
//!            ─ leader: spawn(miss::produce_planned)
//! preview::produce: miss::fetch_and_plan → the model fits serve.first_hit_budget?
//!                   miss::produce_planned : else store tier → preview (Lanczos) to the waiters
//!                   → miss::produce_planned detached (survives the clients)
//! ```
//! A request with a playground progress id (`X-Upres-Progress`) has it attached to the flight it
//! joins; the flight's leader reports tiles and steps done to `app.progress` (`fly`).
//! Stages own their details; decisions are enums matched here.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{header, Response};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cache::CachedResult;
use crate::coalesce::{FlightHandle, Join, Outcome};
use crate::engine::batcher::ProgressFn;
use crate::error::{ErrorClass, ProxyError};
use crate::flight::{Computed, FlightValue};
use crate::key::RequestKey;
use crate::miss;
use crate::params::imgproxy::Disposition;
use crate::params::{self, TransformPath, TransformSpec};
use crate::plan::{Caller, Plan, Variant};
use crate::playground;
use crate::preview;
use crate::respond::{self, get_or_head, Answer, Body, CacheOutcome, ImageReply, Timings};

/// The image path: one call per stage, in order.
pub async fn transform(app: &Arc<App>, head: &Parts) -> Answer {
    // First, so the progress stream of a request that fails early ends at once too.
    let mut watcher = Watcher::for_request(app, head);
    get_or_head(head)?;
    let (request, disposition) = parse_transform_path(app, head.uri.path())?;
    let accept = head.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let variant = Variant::negotiate(request.spec.format, accept, app.cfg.output.auto_avif);
    let key = RequestKey::for_request(
        &params::canonical(&request.spec),
        variant.as_str(),
        request.spec.origin.as_deref().unwrap_or("default"),
        &request.source,
    );

    if let Some(hit) = app.memory.get(&key).await {
        app.metrics.cache_event("memory", "hit");
        watcher.answered();
        let r = reply(app, head, &hit, CacheOutcome::HitMemory, &Timings::default(), variant, &app.cfg.output.cache_control);
        return Ok((disposed(r, disposition.as_ref(), &request.source, &hit), CacheOutcome::HitMemory));
    }
    app.metrics.cache_event("memory", "miss");

    let source = request.source.clone();
    let (c, cache) = fly(app, key.as_bytes(), key, &watcher, move |app, cancel, progress, flight| async move {
        preview::produce(&app, &request, variant, &cancel, Some(progress), flight).await
    })
    .await?;
    watcher.answered();
    let cache_control = match cache {
        CacheOutcome::Preview => {
            app.metrics.previews.inc();
            &app.cfg.serve.preview_cache_control
        }
        _ => &app.cfg.output.cache_control,
    };
    let response = reply(app, head, &c.result, cache, &c.timings, variant, cache_control);
    Ok((disposed(response, disposition.as_ref(), &source, &c.result), cache))
}

/// A transform path as sent (the `/info` route's, after its prefix): length, signature, then
/// either syntax.
pub fn parse_transform_path(app: &App, raw_path: &str) -> Result<(TransformPath, Option<Disposition>), ProxyError> {
    if raw_path.len() > app.param_limits.max_path_bytes {
        return Err(params::ParamError::TooLong(app.param_limits.max_path_bytes).into());
    }
    let path = match &app.signer {
        Some(signer) => signer.verify(raw_path)?,
        None => raw_path,
    };
    parse_either(app, path)
}

/// upres's URL syntax, or imgproxy's when the path is in it (`params::imgproxy::recognise`).
fn parse_either(app: &App, path: &str) -> Result<(TransformPath, Option<Disposition>), ProxyError> {
    if let Some(syntax) = &app.imgproxy {
        if let Some(rest) = params::imgproxy::recognise(path, app.signer.is_some()) {
            let r = params::imgproxy::parse(rest, syntax, &app.param_limits)?;
            return Ok((r.path, r.disposition));
        }
    }
    Ok((params::parse(path, &app.param_limits)?, None))
}

/// Adds imgproxy's `Content-Disposition` when the URL asked for one (`filename`, `return_attachment`).
fn disposed(mut response: Response<Body>, disposition: Option<&Disposition>, source: &str, result: &CachedResult) -> Response<Body> {
    if let Some(d) = disposition {
        let file = source.rsplit('/').next().unwrap_or(source);
        let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
        if let Ok(v) = header::HeaderValue::from_str(&d.header_value(stem, result.format.extension())) {
            response.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    response
}

/// An uploaded image through the shared miss path: plan it, then the memory tier, then one flight
/// per result key, so concurrent identical uploads compute once. Returns the plan for headers.
/// `watcher` is the request's progress id, if any (`Watcher::for_request`).
pub async fn uploaded(
    app: &Arc<App>,
    bytes: Bytes,
    spec: &TransformSpec,
    variant: Variant,
    watcher: &Watcher,
) -> Result<(Arc<Computed>, CacheOutcome, Plan), ProxyError> {
    let planned = miss::plan_bytes(app, bytes, spec, variant, Caller::Api).await?;
    let plan = planned.plan.clone();
    let memo = RequestKey::for_upload(&planned.key);
    if let Some(hit) = app.memory.get(&memo).await {
        app.metrics.cache_event("memory", "hit");
        let c = Computed { result: hit, outcome: CacheOutcome::HitMemory, timings: Timings::default() };
        return Ok((Arc::new(c), CacheOutcome::HitMemory, plan));
    }
    app.metrics.cache_event("memory", "miss");
    let key = planned.key;
    let (c, cache) = fly(app, key.as_bytes(), memo, watcher, move |app, cancel, progress, _flight| async move {
        miss::produce_planned(&app, planned, Timings::default(), &cancel, Some(progress)).await
    })
    .await?;
    Ok((c, cache, plan))
}

/// Single flight around `work`: the leader runs it in its own task (so it survives the leader's
/// client leaving), publishes to the memory tier under `memo`, then releases the flight; every
/// waiter waits with the request deadline. Returns the value and this request's cache outcome.
/// The flight's progress goes to the playground's board, where `watcher`'s id (if any) follows it.
async fn fly<F, Fut>(
    app: &Arc<App>,
    key: &[u8; 32],
    memo: RequestKey,
    watcher: &Watcher,
    work: F,
) -> Result<(Arc<Computed>, CacheOutcome), ProxyError>
where
    F: FnOnce(Arc<App>, CancellationToken, ProgressFn, FlightHandle<FlightValue>) -> Fut,
    Fut: Future<Output = FlightValue> + Send + 'static,
{
    let (waiter, led) = match app.flights.join(key) {
        Join::Leader(permit, waiter) => {
            let cancel = permit.cancellation();
            let tracking = app.progress.track(*key);
            let task = work(app.clone(), cancel.clone(), tracking.sink(), permit.handle());
            let app = app.clone();
            // The leader's request span and trace go with it (logs, origin `traceparent`).
            crate::trace_context::spawn(async move {
                let _tracking = tracking;
                let value = tokio::select! {
                    v = task => v,
                    _ = cancel.cancelled() => Err(ProxyError::new(ErrorClass::Timeout, "abandoned: no client is waiting")),
                };
                // Publish before releasing the flight, so late arrivals hit memory.
                if let Ok(c) = &value {
                    app.memory.insert(memo, c.result.clone()).await;
                }
                permit.finish(value);
            });
            (waiter, true)
        }
        Join::Follower(waiter) => (waiter, false),
    };
    if let Some(id) = &watcher.id {
        app.progress.attach(id, key);
    }

    let deadline = app.cfg.server.request_deadline;
    let seen = tokio::time::timeout(deadline, waiter.wait_or_interim())
        .await
        .map_err(|_| ProxyError::new(ErrorClass::Timeout, format!("the result was not ready within {deadline:?}")))?;
    // A good outcome wins over a preview (never served once the final exists); a preview wins
    // over a failed or dropped background run.
    match (seen.outcome, seen.interim) {
        (Some(Outcome::Done(Ok(c))), _) => {
            let cache = if led { c.outcome } else { CacheOutcome::Coalesced };
            Ok((c, cache))
        }
        (_, Some(Ok(preview))) => Ok((preview, CacheOutcome::Preview)),
        (Some(Outcome::Done(Err(e))), _) => Err(e),
        _ => Err(ProxyError::new(ErrorClass::Internal, "the computation ended without a result")),
    }
}

/// A request's playground progress id; dropping it ends the id's stream with `done` (after
/// `answered`) or `failed` (errors, cancel, client gone). Without an id it does nothing.
pub struct Watcher {
    app: Arc<App>,
    id: Option<String>,
    ok: bool,
}

impl Watcher {
    /// The progress id the request asks for, when the playground serves this client.
    pub fn for_request(app: &Arc<App>, head: &Parts) -> Watcher {
        Watcher { app: app.clone(), id: playground::progress_id(app, head), ok: false }
    }

    /// No progress id (batch items report nowhere).
    pub fn none(app: &Arc<App>) -> Watcher {
        Watcher { app: app.clone(), id: None, ok: false }
    }

    pub fn answered(&mut self) {
        self.ok = true;
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            self.app.progress.finish(id, self.ok);
        }
    }
}

pub fn reply(
    app: &App,
    head: &Parts,
    result: &CachedResult,
    outcome: CacheOutcome,
    timings: &Timings,
    variant: Variant,
    cache_control: &str,
) -> Response<Body> {
    respond::image(ImageReply {
        result,
        outcome,
        timings,
        varies: variant.varies(),
        method: &head.method,
        if_none_match: head.headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()),
        if_modified_since: head.headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()),
        cache_control,
        cfg: &app.cfg.output,
    })
}
