//! The request path, top to bottom. `handle` routes; `transform` is the image path and reads as
//! the design's stage list; `produce` is the miss path a flight leader runs in its own task.
//!
//! ```text
//! handle ─ guards (CORS preflight, body, rate limit, API key) ─ route ─┬─ /healthz /readyz /metrics /api/v1/health /api/v1/model-info
//!                 ├─ /r/<hash>.<ext>            stored result by key
//!                 └─ transform:
//!                      verify (signature) → parse → negotiate → request key → memory tier
//!                      → coalesce ─ leader: spawn(produce) ─┐
//!                                └ follower ────────────────┴→ wait (deadline) → respond
//! produce: fetch → probe header → plan → result key → store tier → decode → tile → batcher
//!          → stitch → resize/alpha → encode → store put → (memory insert) → finish flight
//! ```
//! Stages own their details; decisions are enums matched here.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::App;
use crate::cache::store::Lookup;
use crate::cache::CachedResult;
use crate::coalesce::{Join, Outcome};
use crate::engine::tiling::Grid;
use crate::engine::Tile;
use crate::error::{ErrorClass, ProxyError};
use crate::imaging::encode::OutputFormat;
use crate::imaging::{decode, encode, resize};
use crate::key::{RequestKey, ResultKey, SourceHash};
use crate::params::{self, TransformPath};
use crate::plan::{Caller, Plan, Variant};
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

/// Routes one request. Never fails: errors become responses here.
pub async fn handle<B>(app: &Arc<App>, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let rid = app.next_request_id();
    let (head, _body) = req.into_parts();
    let path = head.uri.path();
    let refusal = app.guards.admit(&head);
    let (route, result) = match path {
        _ if refusal.is_some() => ("guard", refusal.expect("checked").map(|r| (r, CacheOutcome::None))),
        "/healthz" => ("healthz", Ok((respond::text(StatusCode::OK, "text/plain", "ok\n"), CacheOutcome::None))),
        "/readyz" => ("readyz", Ok((readyz(app).await, CacheOutcome::None))),
        "/metrics" => (
            "metrics",
            Ok((respond::text(StatusCode::OK, "text/plain; version=0.0.4", app.metrics.render()), CacheOutcome::None)),
        ),
        "/api/v1/health" => ("api_health", Ok((api_health(app), CacheOutcome::None))),
        "/api/v1/model-info" => ("api_model_info", Ok((model_info(app), CacheOutcome::None))),
        p if p.starts_with("/r/") => ("stored", stored(app, &head).await),
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
    if route == "transform" || route == "stored" {
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

type Answer = Result<(Response<Body>, CacheOutcome), ProxyError>;

/// The image path: one call per stage, in order.
async fn transform(app: &Arc<App>, head: &Parts) -> Answer {
    if head.method != Method::GET && head.method != Method::HEAD {
        return Err(ProxyError::new(ErrorClass::MethodNotAllowed, "use GET or HEAD"));
    }
    let raw_path = head.uri.path();
    if raw_path.len() > app.param_limits.max_path_bytes {
        return Err(params::ParamError::TooLong(app.param_limits.max_path_bytes).into());
    }
    let path = match &app.signer {
        Some(signer) => signer.verify(raw_path)?,
        None => raw_path,
    };
    let request = params::parse(path, &app.param_limits)?;
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
        return Ok((reply(app, head, &hit, CacheOutcome::HitMemory, &Timings::default(), variant), CacheOutcome::HitMemory));
    }
    app.metrics.cache_event("memory", "miss");

    let (waiter, led) = match app.flights.join(key.as_bytes()) {
        Join::Leader(permit, waiter) => {
            let cancel = permit.cancellation();
            let app = app.clone();
            tokio::spawn(async move {
                let value = tokio::select! {
                    v = produce(&app, &request, variant, Caller::Url, &cancel) => v,
                    _ = cancel.cancelled() => Err(ProxyError::new(ErrorClass::Timeout, "abandoned: no client is waiting")),
                };
                // Publish before releasing the flight, so late arrivals hit memory.
                if let Ok(c) = &value {
                    app.memory.insert(key, c.result.clone()).await;
                }
                permit.finish(value);
            });
            (waiter, true)
        }
        Join::Follower(waiter) => (waiter, false),
    };

    let deadline = app.cfg.server.request_deadline;
    let outcome = tokio::time::timeout(deadline, waiter.wait())
        .await
        .map_err(|_| ProxyError::new(ErrorClass::Timeout, format!("the result was not ready within {deadline:?}")))?;
    match outcome {
        Outcome::Done(Ok(c)) => {
            let cache = if led { c.outcome } else { CacheOutcome::Coalesced };
            Ok((reply(app, head, &c.result, cache, &c.timings, variant), cache))
        }
        Outcome::Done(Err(e)) => Err(e),
        Outcome::Dangling => Err(ProxyError::new(ErrorClass::Internal, "the computation ended without a result")),
    }
}

/// The miss path: from source bytes to a stored, encoded result.
pub async fn produce(
    app: &Arc<App>,
    request: &TransformPath,
    variant: Variant,
    caller: Caller,
    cancel: &CancellationToken,
) -> FlightValue {
    let mut t = Timings::default();
    let limits = &app.cfg.limits;

    let clock = Instant::now();
    let source = app.origins.fetch(request.spec.origin.as_deref(), &request.source, limits.max_source_bytes).await?;
    stage(app, &mut t, "fetch", clock);

    let header = decode::probe(&source.bytes, limits.max_source_pixels)?;
    let plan = Plan::resolve(&request.spec, variant, &header, &app.registry, &app.cfg, caller)?;
    let result_key =
        ResultKey::for_result(&SourceHash::of(&source.bytes), &plan.canonical(), &plan.engine.id().to_string());

    if let Some(found) = lookup_store(app, &result_key).await {
        return Ok(Arc::new(Computed { result: Arc::new(found), outcome: CacheOutcome::HitStore, timings: t }));
    }
    compute(app, source.bytes, plan, result_key, t, cancel).await
}

/// Decode → infer → finish → store, for a planned result that no tier holds.
pub async fn compute(
    app: &Arc<App>,
    bytes: Bytes,
    plan: Plan,
    result_key: ResultKey,
    mut t: Timings,
    cancel: &CancellationToken,
) -> FlightValue {
    let clock = Instant::now();
    let max_pixels = app.cfg.limits.max_source_pixels;
    let tiling = plan.engine.tiling();
    let (decoded, grid, tiles) = blocking(move || {
        let decoded = decode::decode(&bytes, max_pixels)?;
        let grid = Grid::new(decoded.rgb.width, decoded.rgb.height, tiling);
        let tiles = grid.cut(&decoded.rgb);
        Ok::<_, ProxyError>((decoded.alpha, grid, tiles))
    })
    .await?;
    stage(app, &mut t, "decode", clock);

    let clock = Instant::now();
    let upscaled = infer(app, &plan, grid, tiles, cancel).await?;
    stage(app, &mut t, "infer", clock);

    let clock = Instant::now();
    let (out_w, out_h, format, model) = (plan.out_w, plan.out_h, plan.format, plan.engine.id().to_string());
    let encoded = blocking(move || finish(&plan, upscaled, decoded)).await?;
    stage(app, &mut t, "encode", clock);

    let result =
        Arc::new(CachedResult { key: result_key, bytes: encoded.into(), format, model, width: out_w, height: out_h });

    if let Some(store) = &app.store {
        let clock = Instant::now();
        match store.put(&result).await {
            Ok(()) => app.metrics.cache_event("store", "write"),
            Err(e) => {
                app.metrics.cache_event("store", "error");
                warn!(key = %result_key.short(), error = %e, "result store write failed; serving uncached");
            }
        }
        stage(app, &mut t, "store", clock);
    }
    Ok(Arc::new(Computed { result, outcome: CacheOutcome::Miss, timings: t }))
}

/// Tiles → batcher → stitched engine output.
async fn infer(app: &Arc<App>, plan: &Plan, grid: Grid, tiles: Vec<Tile>, cancel: &CancellationToken) -> Result<Tile, ProxyError> {
    let rx = app
        .batcher
        .submit(&*plan.engine, tiles, plan.gen.clone(), cancel.clone(), None)
        .map_err(|e| ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after))?;
    let tiles = rx
        .await
        .map_err(|_| ProxyError::new(ErrorClass::Internal, "the inference worker dropped the job"))??;
    let scale = plan.engine.scale();
    blocking(move || Ok(grid.stitch(&tiles, scale))).await
}

/// Final resize (box, fit, crop), alpha (Lanczos, separately), encode.
fn finish(plan: &Plan, upscaled: Tile, alpha: Option<Vec<f32>>) -> Result<Vec<u8>, ProxyError> {
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
    Ok(encode::encode(&rgb, alpha.as_deref(), plan.format, plan.quality)?)
}

async fn lookup_store(app: &App, key: &ResultKey) -> Option<CachedResult> {
    let store = app.store.as_ref()?;
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
    if head.method != Method::GET && head.method != Method::HEAD {
        return Err(ProxyError::new(ErrorClass::MethodNotAllowed, "use GET or HEAD"));
    }
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
    Ok((reply(app, head, &found, CacheOutcome::HitStore, &Timings::default(), variant), CacheOutcome::HitStore))
}

fn reply(app: &App, head: &Parts, result: &CachedResult, outcome: CacheOutcome, timings: &Timings, variant: Variant) -> Response<Body> {
    respond::image(ImageReply {
        result,
        outcome,
        timings,
        varies: variant.varies(),
        method: &head.method,
        if_none_match: head.headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()),
        cfg: &app.cfg.output,
    })
}

async fn readyz(app: &App) -> Response<Body> {
    let models: Vec<String> = app.registry.entries().iter().map(|e| e.engine.id().to_string()).collect();
    let store = match &app.store {
        None => "disabled".to_string(),
        Some(s) => match s.probe().await {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        },
    };
    let ready = app.is_ready() && !store.starts_with("error");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    respond::json(status, &serde_json::json!({ "ready": ready, "models": models, "store": store }))
}

fn api_health(app: &App) -> Response<Body> {
    respond::json(
        StatusCode::OK,
        &serde_json::json!({
            "status": if app.is_ready() { "ok" } else { "starting" },
            "ready": app.is_ready(),
            "queue_depth": app.batcher.depth(),
            "queue_capacity": app.cfg.engine.queue_capacity,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

fn model_info(app: &App) -> Response<Body> {
    let models: Vec<serde_json::Value> = app
        .registry
        .entries()
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "aliases": e.aliases,
                "id": e.engine.id().to_string(),
                "weights": e.engine.id().weights,
                "scale": e.engine.scale(),
                "prompt_guided": e.engine.prompt_guided(),
                "tile": e.engine.tiling().map(|t| t.tile),
                "description": e.description,
            })
        })
        .collect();
    let l = &app.cfg.limits;
    respond::json(
        StatusCode::OK,
        &serde_json::json!({
            "models": models,
            "device": "cpu",
            "limits": {
                "max_source_bytes": l.max_source_bytes,
                "max_source_pixels": l.max_source_pixels,
                "max_output_pixels": l.max_output_pixels,
                "max_prompt_bytes": l.max_prompt_bytes,
                "sd_max_input_side": app.cfg.sd.max_input_side,
            },
        }),
    )
}

fn stage(app: &App, t: &mut Timings, name: &'static str, since: Instant) {
    let d = since.elapsed();
    app.metrics.stage_seconds.with_label_values(&[name]).observe(d.as_secs_f64());
    t.push(name, d);
}

/// Runs CPU-bound work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ProxyError> + Send + 'static) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::new(ErrorClass::Internal, format!("image work panicked: {e}")))?
}
