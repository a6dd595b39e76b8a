//! The first-hit budget: a transform URL's miss answers within `serve.first_hit_budget` even when
//! the requested model takes far longer (x4plus on a 450×300 photo: tens of seconds on two CPU
//! cores), which a CDN's origin timeout and a shopper's patience do not allow.
//!
//! This is the URL leader's work (`pipeline::fly` runs it in its own task):
//! ```text
//! fetch_and_plan → estimate (measured speed × input pixels × (1 + jobs queued)) fits the budget,
//!                  or nothing measured, or the engine is Lanczos anyway → produce_planned (wait)
//!                : else store tier (a stored final is served as it is, no preview)
//!                  → preview: the cheapest other loaded model whose estimate fits the budget
//!                    (`preview_model`), through the batcher like any run, then resized to the
//!                    output; none fits, the queue is full or it fails: decode → one Lanczos
//!                    resize straight to the output size → encode (on the blocking pool, never
//!                    through the batcher, so overload cannot stop it)
//!                  → queue full? publish the preview, count the run `dropped`, end the flight
//!                  → else detach the flight (its waiters leaving no longer cancel it), publish
//!                    the preview, run produce_planned: stored, published to the memory tier
//! ```
//! Waiters take the preview as soon as it is published (`coalesce::Waiter::wait_or_interim`),
//! so every request during the run gets the same preview from memory; once the flight ends the
//! final is in the memory tier and the preview is gone with the flight. A preview never enters
//! either cache tier; its `ResultKey` (the `ETag`) is derived from the final's, so a 304 for a
//! preview never validates the final.
//!
//! The preview's model is chosen by measured speed (`Registry::estimate`), unlike `model=auto`:
//! a preview lives only in its flight and never in a cache tier, so replicas may differ in it;
//! the final they store is the same everywhere.
//!
//! Judged from the estimate, not a timer: a run estimated to fit that then overruns is waited
//! for as before (the request deadline still bounds it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::admission;
use crate::app::App;
use crate::cache::CachedResult;
use crate::coalesce::FlightHandle;
use crate::engine::Engine;
use crate::engine::batcher::ProgressFn;
use crate::error::{ErrorClass, ProxyError};
use crate::imaging::{decode, encode, resize};
use crate::key::ResultKey;
use crate::params::TransformPath;
use crate::flight::{Computed, FlightValue};
use crate::miss::{self, Planned};
use crate::plan::{Caller, Plan, Variant};
use crate::respond::{CacheOutcome, Timings};

/// `X-Upres-Model` of a preview.
pub const PREVIEW_MODEL: &str = "lanczos3-preview";

/// The URL miss path under the first-hit budget (see the module docs).
pub async fn produce(
    app: &Arc<App>,
    request: &TransformPath,
    variant: Variant,
    cancel: &CancellationToken,
    progress: Option<ProgressFn>,
    flight: FlightHandle<FlightValue>,
) -> FlightValue {
    let budget = app.cfg.serve.first_hit_budget;
    if budget.is_zero() {
        return miss::produce(app, request, variant, Caller::Url, cancel, progress).await;
    }
    let mut t = Timings::default();
    let (planned, meta) = miss::fetch_and_plan(app, request, variant, Caller::Url, &mut t).await?;
    if fits(app, &planned.plan, budget) {
        let value = miss::produce_planned(app, planned, t, cancel, progress).await?;
        return Ok(Arc::new(value.for_source(meta)));
    }
    if let Some(found) = miss::lookup_store(app, &planned.key).await {
        let c = Computed { result: Arc::new(found), outcome: CacheOutcome::HitStore, timings: t };
        return Ok(Arc::new(c.for_source(meta)));
    }

    let clock = Instant::now();
    let by_model = match preview_model(app, &planned.plan, budget) {
        Some(engine) => model_preview(app, &planned, engine, cancel).await.map_err(|e| tracing::warn!(error = %e.message, "model preview failed; Lanczos instead")).ok(),
        None => None,
    };
    let preview = match by_model {
        Some(p) => p,
        None => render(app, &planned).await?,
    };
    let mut preview_timings = t.clone();
    preview_timings.push("preview", clock.elapsed());
    let preview = Computed { result: Arc::new(preview), outcome: CacheOutcome::Preview, timings: preview_timings };
    let preview = Ok(Arc::new(preview.for_source(meta)));

    // Bounded by the same queue as every run: under overload the preview still answers, and the
    // model's run is not queued without bound but dropped (a later request tries again).
    if let Err(e) = app.batcher.check_room() {
        app.metrics.background_runs.with_label_values(&["dropped"]).inc();
        flight.publish_interim(preview);
        return Err(ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after));
    }
    flight.detach();
    flight.publish_interim(preview);
    let value = miss::produce_planned(app, planned, t, &CancellationToken::new(), progress).await;
    let outcome = match &value {
        Ok(_) => "done",
        Err(e) if e.class == ErrorClass::Overloaded => "dropped",
        Err(_) => "failed",
    };
    app.metrics.background_runs.with_label_values(&[outcome]).inc();
    Ok(Arc::new(value?.for_source(meta)))
}

/// Whether the plan's model run is expected within `budget`: Lanczos always is; an engine whose
/// speed was never measured is assumed to be (as `model=auto` does).
pub fn fits(app: &App, plan: &Plan, budget: Duration) -> bool {
    plan.engine.as_ref().is_none_or(|e| e.id().name.starts_with("lanczos")) || estimate(app, plan).is_none_or(|t| t <= budget)
}

/// Measured speed × the request's input pixels, times the jobs ahead of it plus its own (queued
/// jobs are assumed to be of similar size: a rough bound, which is all a budget needs).
pub fn estimate(app: &App, plan: &Plan) -> Option<Duration> {
    let engine = plan.engine.as_ref()?;
    let index = app.registry.entries().iter().position(|e| Arc::ptr_eq(&e.engine, engine))?;
    let one = app.registry.estimate(index, u64::from(plan.src_w) * u64::from(plan.src_h))?;
    let queued = u32::try_from(app.batcher.depth()).unwrap_or(u32::MAX);
    Some(one.saturating_mul(queued.saturating_add(1)))
}

/// The cheapest loaded model other than the plan's own (measured, not prompt-guided, not
/// Lanczos) whose estimate for this source, with the queue ahead, fits `budget`.
pub fn preview_model(app: &App, plan: &Plan, budget: Duration) -> Option<Arc<dyn Engine>> {
    let own = plan.engine.as_ref()?;
    let pixels = u64::from(plan.src_w) * u64::from(plan.src_h);
    let queued = u32::try_from(app.batcher.depth()).unwrap_or(u32::MAX).saturating_add(1);
    app.registry
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| !Arc::ptr_eq(&e.engine, own) && !e.engine.prompt_guided() && !e.engine.id().name.starts_with("lanczos"))
        .filter_map(|(i, e)| Some((app.registry.estimate(i, pixels)?.saturating_mul(queued), e)))
        .filter(|(t, _)| *t <= budget)
        .min_by_key(|(t, _)| *t)
        .map(|(_, e)| e.engine.clone())
}

/// The plan's output made by `engine` instead of the plan's model (the same crop, size and
/// format): the miss path's `compute` without the store tier or claims, admitted by the queue
/// and the memory budget like any run. `X-Upres-Model` names the preview's model.
async fn model_preview(app: &Arc<App>, planned: &Planned, engine: Arc<dyn Engine>, cancel: &CancellationToken) -> Result<CachedResult, ProxyError> {
    let mut plan = planned.plan.clone();
    let scale = engine.scale();
    (plan.engine_w, plan.engine_h) = (plan.src_w * scale, plan.src_h * scale);
    plan.engine = Some(engine);
    app.batcher.check_room()?;
    let memory = app.memory_budget.admit(admission::job_bytes(&plan))?;
    let key = ResultKey::derive(&[b"preview", planned.key.as_bytes()]);
    let preview = Planned { bytes: planned.bytes.clone(), plan, key, source: planned.source, shadowed: false };
    let computed = miss::compute(app, preview, memory, Timings::default(), miss::Watch { cancel, progress: None }).await?;
    Ok(CachedResult::clone(&computed.result))
}

/// The plan's output by one Lanczos resize from the source (what `model=lanczos` would give,
/// without the batcher): decode, resize RGB and alpha (with `fit=cover`'s crop), encode.
async fn render(app: &App, planned: &Planned) -> Result<CachedResult, ProxyError> {
    let (bytes, mut plan, max_pixels) = (planned.bytes.clone(), planned.plan.clone(), app.cfg.limits.max_source_pixels);
    let key = ResultKey::derive(&[b"preview", planned.key.as_bytes()]);
    let encoded = tokio::task::spawn_blocking(move || {
        let decoded = decode::decode(&bytes, max_pixels)?;
        plan.place_smart_crop(&decoded.rgb);
        let crop = plan.crop.map(|(l, t, w, h)| resize::Crop {
            left: l * f64::from(plan.src_w),
            top: t * f64::from(plan.src_h),
            width: w * f64::from(plan.src_w),
            height: h * f64::from(plan.src_h),
        });
        let rgb = resize::resize_rgb(&decoded.rgb, plan.out_w, plan.out_h, crop);
        let alpha = decoded.alpha.map(|a| resize::resize_plane(&a, plan.src_w, plan.src_h, plan.out_w, plan.out_h, crop));
        Ok::<_, ProxyError>(encode::encode(&rgb, alpha.as_deref(), &plan.encoding())?)
    })
    .await
    .map_err(|e| ProxyError::new(ErrorClass::Internal, format!("preview panicked: {e}")))??;
    let plan = &planned.plan;
    Ok(CachedResult {
        key,
        bytes: encoded.into(),
        format: plan.format,
        model: PREVIEW_MODEL.into(),
        width: plan.out_w,
        height: plan.out_h,
        source: None,
        consistency: None,
    })
}
