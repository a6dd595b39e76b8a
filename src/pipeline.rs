//! The request path, top to bottom. `handle` routes; `transform` is the image path and reads as
//! the design's stage list; `uploaded` is the same for bytes that came in a request body (the
//! REST API in `api/`); `produce` is the URL miss path a flight leader runs in its own task.
//!
//! ```text
//! handle ─ guards (CORS preflight, body, rate limit, API key) → route:
//!                 ┌─ /healthz /readyz /metrics /api/v1/{health,model-info,openapi.json}
//!                 ├─ /api/v1/upscale /api/v1/batch-upscale   multipart → api/ → uploaded
//!                 ├─ /api/v1/purge              memory-tier entries of named sources
//!                 ├─ /api/v1/jobs[/<id>]        multipart → plan_bytes → jobs::run (202), state
//!                 ├─ /r/<hash>.<ext>            stored result by key
//!                 ├─ / /docs /playground/* /api/v1/{samples,sign,progress}   playground/
//!                 └─ transform:
//!                      verify (signature) → parse → negotiate → request key → memory tier
//!                      → fly(request key) ─ leader: spawn(preview::produce) ─┐
//!                                         └ follower ────────────────────────┴→ wait (deadline)
//!                        → the final, or the flight's preview if it has one → respond
//! uploaded: plan_bytes → memory tier (upload key) → fly(result key) ─ leader: spawn(produce_planned)
//! preview::produce: fetch_and_plan → the model fits serve.first_hit_budget? produce_planned
//!                  : else store tier → preview (Lanczos) to the waiters → produce_planned
//!                    detached (survives the clients) → stored, in memory for later hits
//! produce:  fetch_and_plan → produce_planned                            (budget 0)
//! plan_bytes:      probe header → plan → result key                    (shared by both paths)
//! produce_planned: store tier → shed if the queue is full → claim (or wait for the replica
//!                  holding it) → decode → tile → batcher → stitch → resize/alpha → encode
//!                  → store put → release claim                          (shared by both paths)
//! ```
//! A request with a playground progress id (`X-Upres-Progress`) has it attached to the flight it
//! joins; the flight's leader reports tiles and steps done to `app.progress` (`fly`).
//! Stages own their details; decisions are enums matched here.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admission::{self, AdmitError, MemoryPermit};
use crate::api::{self, RequestBody};
use crate::app::App;
use crate::cache::claim::{self, Turn};
use crate::cache::store::Lookup;
use crate::cache::{CachedResult, SourceMeta};
use crate::coalesce::{FlightHandle, Join, Outcome};
use crate::engine::batcher::{JobProgress, ProgressFn};
use crate::engine::tiling::Grid;
use crate::engine::Tile;
use crate::error::{ErrorClass, ProxyError};
use crate::imaging::encode::OutputFormat;
use crate::imaging::{decode, encode, resize, resize_only};
use crate::key::{RequestKey, ResultKey, SourceHash, SourceTag};
use crate::params::imgproxy::Disposition;
use crate::params::{self, TransformPath, TransformSpec};
use crate::plan::{Caller, Plan, Variant};
use crate::playground;
use crate::preview;
use crate::respond::{self, Body, CacheOutcome, ImageReply, Timings};

/// What a flight delivers to every waiter.
pub type FlightValue = Result<Arc<Computed>, ProxyError>;

/// A produced (or store-found) result and how it was obtained.
#[derive(Debug)]
pub struct Computed {
    pub result: Arc<CachedResult>,
    /// `Miss` or `HitStore`, for the leader's own response.
    pub outcome: CacheOutcome,
    pub timings: Timings,
}

impl Computed {
    /// The same, with the result stamped with its URL's source (tag, `Last-Modified`).
    pub fn for_source(&self, source: SourceMeta) -> Computed {
        Computed { result: Arc::new(self.result.for_source(source)), outcome: self.outcome, timings: self.timings.clone() }
    }
}

/// Routes one request. Never fails: errors become responses here.
pub async fn handle<B: RequestBody>(app: &Arc<App>, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let rid = app.next_request_id();
    let (head, body) = req.into_parts();
    let path = head.uri.path();
    let refusal = app.guards.admit(&head).await;
    let (route, result) = match path {
        _ if refusal.is_some() => ("guard", refusal.expect("checked").map(|r| (r, CacheOutcome::None))),
        "/healthz" => ("healthz", healthz(&head)),
        "/readyz" => ("readyz", readyz(app, &head).await),
        "/metrics" => ("metrics", metrics(app, &head)),
        "/api/v1/health" => ("api_health", api::info::health(app, &head)),
        "/api/v1/model-info" => ("api_model_info", api::info::model_info(app, &head)),
        "/api/v1/openapi.json" => ("api_openapi", api::openapi::serve(&head)),
        "/api/v1/upscale" => ("api_upscale", api::upscale::handle(app, &head, body).await),
        "/api/v1/batch-upscale" => ("api_batch", api::batch::handle(app, &head, body).await),
        "/api/v1/purge" => ("api_purge", api::purge::handle(app, &head, body).await),
        "/api/v1/jobs" => ("api_jobs", api::jobs::create(app, &head, body).await),
        p if p.starts_with("/api/v1/jobs/") => ("api_jobs", api::jobs::get(app, &head).await),
        p if p.starts_with("/r/") => ("stored", stored(app, &head).await),
        // One arm per playground route: api::openapi's test reads these arms.
        "/" => ("playground", playground(app, &head).await),
        "/docs" => ("playground", playground(app, &head).await),
        "/api/v1/samples" => ("playground", playground(app, &head).await),
        "/api/v1/sign" => ("playground", playground(app, &head).await),
        p if p.starts_with("/api/v1/samples/") => ("playground", playground(app, &head).await),
        p if p.starts_with("/api/v1/progress/") => ("playground", playground(app, &head).await),
        p if p.starts_with("/playground/") => ("playground", playground(app, &head).await),
        _ => ("transform", transform(app, &head).await),
    };
    let (mut response, outcome) = match result {
        Ok(ok) => ok,
        Err(e) => {
            if e.class == ErrorClass::Internal {
                warn!(rid = %rid, error = %e.message, "internal error");
            }
            (respond::error(&e, &rid, &app.cfg.output), CacheOutcome::None)
        }
    };
    app.guards.decorate(&head.headers, &mut response);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    app.metrics.requests.with_label_values(&[&status.to_string(), outcome.as_str()]).inc();
    if matches!(route, "transform" | "stored" | "api_upscale" | "api_batch") {
        app.metrics.request_seconds.observe(elapsed.as_secs_f64());
    }
    info!(
        rid = %rid,
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

pub type Answer = Result<(Response<Body>, CacheOutcome), ProxyError>;

async fn playground(app: &Arc<App>, head: &Parts) -> Answer {
    playground::serve(app, head).await.map(|r| (r, CacheOutcome::None))
}

/// The image path: one call per stage, in order.
async fn transform(app: &Arc<App>, head: &Parts) -> Answer {
    // First, so the progress stream of a request that fails early ends at once too.
    let mut watcher = Watcher::for_request(app, head);
    get_or_head(head)?;
    let raw_path = head.uri.path();
    if raw_path.len() > app.param_limits.max_path_bytes {
        return Err(params::ParamError::TooLong(app.param_limits.max_path_bytes).into());
    }
    let path = match &app.signer {
        Some(signer) => signer.verify(raw_path)?,
        None => raw_path,
    };
    let (request, disposition) = parse_either(app, path)?;
    let accept = head.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let variant = Variant::negotiate(request.spec.format, accept);
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
    let planned = plan_bytes(app, bytes, spec, variant, Caller::Api).await?;
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
        produce_planned(&app, planned, Timings::default(), &cancel, Some(progress)).await
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
            tokio::spawn(async move {
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

/// The URL miss path: fetch the source, then the shared path. `progress` hears tiles and steps
/// done.
pub async fn produce(
    app: &Arc<App>,
    request: &TransformPath,
    variant: Variant,
    caller: Caller,
    cancel: &CancellationToken,
    progress: Option<ProgressFn>,
) -> FlightValue {
    let mut t = Timings::default();
    let (planned, meta) = fetch_and_plan(app, request, variant, caller, &mut t).await?;
    let value = produce_planned(app, planned, t, cancel, progress).await?;
    Ok(Arc::new(value.for_source(meta)))
}

/// Fetch the source → plan it; the source's tag and `Last-Modified` for the result's headers.
pub async fn fetch_and_plan(
    app: &Arc<App>,
    request: &TransformPath,
    variant: Variant,
    caller: Caller,
    t: &mut Timings,
) -> Result<(Planned, SourceMeta), ProxyError> {
    let clock = Instant::now();
    let origin = request.spec.origin.as_deref();
    let source = app.origins.fetch(origin, &request.source, app.cfg.limits.max_source_bytes).await?;
    stage(app, t, "fetch", clock);
    let meta = SourceMeta { tag: SourceTag::of(origin.unwrap_or("default"), &request.source), modified: source.modified };
    Ok((plan_bytes(app, source.bytes, &request.spec, variant, caller).await?, meta))
}

/// Source bytes with everything decided before any pixel is decoded.
pub struct Planned {
    pub bytes: Bytes,
    pub plan: Plan,
    pub key: ResultKey,
}

/// Probe the header (magic number, pixel limit) → plan (engine, sizes, limits) → result key.
/// The key hashes the bytes, so a URL and an upload of the same bytes and plan share a result.
/// Probing and hashing read the whole source (PNG metadata, up to `max_source_bytes`), so they
/// run on the blocking pool.
pub async fn plan_bytes(app: &App, bytes: Bytes, spec: &TransformSpec, variant: Variant, caller: Caller) -> Result<Planned, ProxyError> {
    let max_pixels = app.cfg.limits.max_source_pixels;
    let read = bytes.clone();
    let (header, hash) = blocking(move || Ok((decode::probe(&read, max_pixels)?, SourceHash::of(&read)))).await?;
    let plan = Plan::resolve(spec, variant, &header, &app.registry, &app.cfg, caller).map_err(|e| {
        // `auto` refused here: another replica may have the model.
        let e = ProxyError::from(e);
        if e.class == ErrorClass::Overloaded { e.with_retry_after(app.cfg.engine.retry_after) } else { e }
    })?;
    let key = ResultKey::for_result(&hash, &plan.canonical(), &plan.model());
    Ok(Planned { bytes, plan, key })
}

/// The store tier, then the computation: where every miss ends, whatever brought the bytes.
pub async fn produce_planned(
    app: &Arc<App>,
    planned: Planned,
    t: Timings,
    cancel: &CancellationToken,
    progress: Option<ProgressFn>,
) -> FlightValue {
    if let Some(found) = lookup_store(app, &planned.key).await {
        return Ok(Arc::new(Computed { result: Arc::new(found), outcome: CacheOutcome::HitStore, timings: t }));
    }
    // Shed before claiming and decoding: under overload a refused request costs next to nothing.
    app.batcher.check_room().map_err(|e| ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after))?;
    // Admit by memory, estimated from the header: over the budget, refuse before any decoding.
    let memory = app.memory_budget.admit(admission::job_bytes(&planned.plan)).map_err(|e| match e {
        AdmitError::Busy { .. } => ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after),
        AdmitError::TooLarge { .. } => ProxyError::from(e),
    })?;
    // Another replica may be computing this result: wait for it rather than compute it twice.
    let held = match claim::wait_or_claim(app.claims.as_ref(), &planned.key, app.cfg.server.request_deadline).await {
        Turn::Found(found) => return Ok(Arc::new(Computed { result: Arc::new(found), outcome: CacheOutcome::HitStore, timings: t })),
        Turn::Compute(held) => held,
    };
    let value = compute(app, planned.bytes, planned.plan, planned.key, t, cancel, progress, memory).await;
    match &value {
        // Stored after the response; the claim goes once the result is in the store.
        Ok(c) => app.store_writes.write_behind(c.result.clone(), held.release()),
        Err(_) => held.release().await,
    }
    value
}

/// Decode → infer → finish, for a planned result that no tier holds. `memory` is the job's share
/// of the memory budget; every stage holding its buffers holds a clone. Blocking stages stop
/// between steps once `cancel` fires (no client is waiting any more).
#[allow(clippy::too_many_arguments)]
pub async fn compute(
    app: &Arc<App>,
    bytes: Bytes,
    plan: Plan,
    result_key: ResultKey,
    mut t: Timings,
    cancel: &CancellationToken,
    progress: Option<ProgressFn>,
    memory: MemoryPermit,
) -> FlightValue {
    let clock = Instant::now();
    let max_pixels = app.cfg.limits.max_source_pixels;
    if let Some(target) = plan.resize_only() {
        // No model: decode (shrunk on load), resize and encode in 8 bits, one blocking call.
        let (header, format, model) = (plan.source, plan.format, plan.model());
        let (stop, hold) = (cancel.clone(), memory);
        let encoded = blocking(move || {
            let _hold = hold;
            abandoned(&stop)?;
            Ok(resize_only::render(&bytes, &header, &target, max_pixels)?)
        })
        .await?;
        stage(app, &mut t, "resize", clock);
        let result = CachedResult { key: result_key, bytes: encoded.into(), format, model, width: target.width, height: target.height, source: None };
        return Ok(Arc::new(Computed { result: Arc::new(result), outcome: CacheOutcome::Miss, timings: t }));
    }
    let tiling = plan.engine.as_ref().map(|e| e.tiling());
    let (stop, hold) = (cancel.clone(), memory.clone());
    // Without an engine the decoded source is what `finish` resizes; with one, only its tiles.
    let (decoded, source) = blocking(move || {
        let _hold = hold;
        let decoded = decode::decode(&bytes, max_pixels)?;
        abandoned(&stop)?;
        let source = match tiling {
            Some(tiling) => {
                let grid = Grid::new(decoded.rgb.width, decoded.rgb.height, tiling);
                let tiles = grid.cut(&decoded.rgb);
                Pixels::Tiles(grid, tiles)
            }
            None => Pixels::Whole(decoded.rgb),
        };
        Ok::<_, ProxyError>((decoded.alpha, source))
    })
    .await?;
    stage(app, &mut t, "decode", clock);

    let upscaled = match source {
        Pixels::Whole(rgb) => rgb,
        Pixels::Tiles(grid, tiles) => {
            let clock = Instant::now();
            let upscaled = infer(app, &plan, grid, tiles, cancel, progress, &memory).await?;
            stage(app, &mut t, "infer", clock);
            upscaled
        }
    };

    let clock = Instant::now();
    let (out_w, out_h, format, model) = (plan.out_w, plan.out_h, plan.format, plan.model());
    let (stop, hold) = (cancel.clone(), memory);
    let encoded = blocking(move || {
        let _hold = hold;
        finish(&plan, upscaled, decoded, &stop)
    })
    .await?;
    stage(app, &mut t, "encode", clock);

    let result =
        Arc::new(CachedResult { key: result_key, bytes: encoded.into(), format, model, width: out_w, height: out_h, source: None });

    Ok(Arc::new(Computed { result, outcome: CacheOutcome::Miss, timings: t }))
}

/// The decoded source as `compute` needs it: whole (no engine) or cut for the engine.
enum Pixels {
    Whole(Tile),
    Tiles(Grid, Vec<Tile>),
}

/// Tiles → batcher → stitched engine output.
async fn infer(
    app: &Arc<App>,
    plan: &Plan,
    grid: Grid,
    tiles: Vec<Tile>,
    cancel: &CancellationToken,
    progress: Option<ProgressFn>,
    memory: &MemoryPermit,
) -> Result<Tile, ProxyError> {
    if let Some(report) = &progress {
        report(JobProgress::Tiles(crate::engine::Progress { done: 0, total: tiles.len() as u32 }));
    }
    let engine = plan.engine.as_ref().expect("infer runs only for plans with an engine");
    let rx = app
        .batcher
        .submit(&**engine, tiles, plan.gen.clone(), cancel.clone(), progress)
        .map_err(|e| ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after))?;
    let tiles = rx
        .await
        .map_err(|_| ProxyError::new(ErrorClass::Internal, "the inference worker dropped the job"))??;
    let scale = engine.scale();
    let (stop, hold) = (cancel.clone(), memory.clone());
    blocking(move || {
        let _hold = hold;
        abandoned(&stop)?;
        Ok(grid.stitch(&tiles, scale))
    })
    .await
}

/// Final resize (box, fit, crop), alpha (Lanczos, separately), encode.
fn finish(plan: &Plan, upscaled: Tile, alpha: Option<Vec<f32>>, stop: &CancellationToken) -> Result<Vec<u8>, ProxyError> {
    abandoned(stop)?;
    let crop = plan.crop_px();
    let rgb = if upscaled.shape() == (plan.out_w, plan.out_h) && crop.is_none() {
        upscaled
    } else {
        resize::resize_rgb(&upscaled, plan.out_w, plan.out_h, crop)
    };
    let alpha = alpha.map(|a| {
        let crop = plan.crop.map(|(l, t, w, h)| resize::Crop {
            left: l * plan.src_w as f64,
            top: t * plan.src_h as f64,
            width: w * plan.src_w as f64,
            height: h * plan.src_h as f64,
        });
        resize::resize_plane(&a, plan.src_w, plan.src_h, plan.out_w, plan.out_h, crop)
    });
    abandoned(stop)?;
    Ok(encode::encode(&rgb, alpha.as_deref(), plan.format, plan.quality)?)
}

pub(crate) async fn lookup_store(app: &App, key: &ResultKey) -> Option<CachedResult> {
    let store = app.store.as_ref()?;
    if let Some(writing) = app.store_writes.pending(key) {
        app.metrics.cache_event("store", "hit");
        return Some(writing);
    }
    match store.get(key).await {
        Ok(Lookup::Hit(r)) => {
            app.metrics.cache_event("store", "hit");
            Some(r)
        }
        Ok(Lookup::Miss) => {
            app.metrics.cache_event("store", "miss");
            None
        }
        Ok(Lookup::Corrupt(reason)) => {
            app.metrics.cache_event("store", "corrupt");
            warn!(key = %key.short(), reason, "stored result failed verification; recomputing");
            None
        }
        Err(e) => {
            app.metrics.cache_event("store", "error");
            warn!(key = %key.short(), error = %e, "result store read failed; computing uncached");
            None
        }
    }
}

/// `GET /r/<result key hex>.<ext>`: a stored result by its key.
async fn stored(app: &Arc<App>, head: &Parts) -> Answer {
    get_or_head(head)?;
    let not_found = || ProxyError::new(ErrorClass::NotFound, "no stored result with that key");
    let name = head.uri.path().trim_start_matches("/r/");
    let (hex, ext) = name.rsplit_once('.').ok_or_else(not_found)?;
    let key = ResultKey::from_hex(hex).ok_or_else(not_found)?;
    let format = OutputFormat::from_extension(ext).ok_or_else(not_found)?;
    let found = lookup_store(app, &key).await.ok_or_else(not_found)?;
    if found.format != format {
        return Err(not_found());
    }
    let variant = Variant::Explicit(format);
    let r = reply(app, head, &found, CacheOutcome::HitStore, &Timings::default(), variant, &app.cfg.output.stored_cache_control);
    Ok((r, CacheOutcome::HitStore))
}

pub(crate) fn reply(
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

/// Every route but the uploads answers GET and HEAD only (405 with `Allow: GET, HEAD`).
pub fn get_or_head(head: &Parts) -> Result<(), ProxyError> {
    if head.method == Method::GET || head.method == Method::HEAD {
        Ok(())
    } else {
        Err(ProxyError::method_not_allowed("GET, HEAD"))
    }
}

fn healthz(head: &Parts) -> Answer {
    get_or_head(head)?;
    Ok((respond::text(StatusCode::OK, "text/plain", "ok\n"), CacheOutcome::None))
}

fn metrics(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    Ok((respond::text(StatusCode::OK, "text/plain; version=0.0.4", app.metrics.render()), CacheOutcome::None))
}

/// `/readyz` probes the store in the background when no store call finished for this long.
const READYZ_STORE_STALE: std::time::Duration = std::time::Duration::from_secs(5);

async fn readyz(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    let models: Vec<String> = app.registry.entries().iter().map(|e| e.engine.id().to_string()).collect();
    // The store's state as its recent calls left it: never awaited here (probes have short
    // timeouts), and never a reason to leave rotation, since a replica computes without it.
    let (store, failures) = match &app.store {
        None => ("disabled".to_string(), 0),
        Some(s) => {
            s.refresh_health(READYZ_STORE_STALE);
            let h = s.health();
            let state = match (&h.last_seen, h.failures_in_a_row, &h.last_error) {
                (None, _, _) => "unknown".to_string(),
                (Some(_), 0, _) => "ok".to_string(),
                (Some(_), _, e) => format!("error: {}", e.as_deref().unwrap_or("unknown")),
            };
            (state, h.failures_in_a_row)
        }
    };
    let ready = app.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": ready, "models": models, "store": store, "store_failures_in_a_row": failures });
    Ok((respond::json(status, &body), CacheOutcome::None))
}

pub(crate) fn stage(app: &App, t: &mut Timings, name: &'static str, since: Instant) {
    let d = since.elapsed();
    app.metrics.stage_seconds.with_label_values(&[name]).observe(d.as_secs_f64());
    t.push(name, d);
}

/// Between the steps of a blocking stage: stop when no client waits for the result any more.
fn abandoned(cancel: &CancellationToken) -> Result<(), ProxyError> {
    if cancel.is_cancelled() {
        return Err(ProxyError::new(ErrorClass::Timeout, "abandoned: no client is waiting"));
    }
    Ok(())
}

/// Runs CPU-bound work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ProxyError> + Send + 'static) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::new(ErrorClass::Internal, format!("image work panicked: {e}")))?
}
