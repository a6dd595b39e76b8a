//! The miss path: everything between "no tier holds this result" and the encoded bytes.
//! Shared by the URL path (`pipeline::transform` through `preview::produce`), uploads
//! (`pipeline::uploaded`), jobs (`jobs::run`) and `upres upscale`.
//!
//! ```text
//! produce:         fetch_and_plan → produce_planned                    (URL, no preview)
//! fetch_and_plan:  origin fetch (cap, timeout) → plan_bytes
//! plan_bytes:      probe header → plan → result key                    (shared by every caller)
//! produce_planned: store tier → shed if the queue is full → memory budget → claim (or wait for
//!                  the replica holding it) → compute → store put (write-behind) → release claim
//! compute:         resize only (no model) | decode → tile → batcher → stitch → score → gate
//!                  (below the minimum: the next model down, Lanczos last) → [shadow, sampled]
//!                  → resize/alpha → encode
//! ```
//!
//! `plan_bytes` puts `[ml.canary]`'s model in place of `auto`'s pick for the sources in its
//! share; `compute` scores every model output (`imaging::consistency`), gates it
//! (`quality::Quality::judge`) and starts the shadow run for sampled sources (`shadow.rs`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::admission::{self, AdmitError, MemoryPermit};
use crate::app::App;
use crate::cache::claim::{self, Turn};
use crate::cache::store::Lookup;
use crate::cache::{CachedResult, SourceMeta};
use crate::engine::batcher::{JobProgress, ProgressFn};
use crate::engine::tiling::Grid;
use crate::engine::Tile;
use crate::error::{ErrorClass, ProxyError};
use crate::flight::{Computed, FlightValue};
use crate::imaging::metadata::Tags;
use crate::imaging::consistency::{self, Score};
use crate::imaging::{content, decode, encode, resize, resize_only};
use crate::key::{ResultKey, SourceHash, SourceTag};
use crate::params::{ModelChoice, TransformPath, TransformSpec};
use crate::plan::{Caller, Plan, PlanError, Variant};
use crate::quality::{Role, Verdict};
use crate::respond::{CacheOutcome, Timings};

/// How a computation is watched: `cancel` fires when no client waits for it any more, and
/// `progress` hears tiles and steps done.
pub struct Watch<'a> {
    pub cancel: &'a CancellationToken,
    pub progress: Option<ProgressFn>,
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
    /// The bytes' hash: canary and shadow shares, and the key of a quality-gate fallback.
    pub source: SourceHash,
    /// Whether a sampled shadow run may follow the computation (not for previews).
    pub shadowed: bool,
}

/// Probe the header (magic number, pixel limit) → plan (engine, sizes, limits) → result key.
/// The key hashes the bytes, so a URL and an upload of the same bytes and plan share a result.
/// Probing and hashing read the whole source (PNG metadata, up to `max_source_bytes`), so they
/// run on the blocking pool.
pub async fn plan_bytes(app: &App, bytes: Bytes, spec: &TransformSpec, variant: Variant, caller: Caller) -> Result<Planned, ProxyError> {
    let max_pixels = app.cfg.limits.max_source_pixels;
    let read = bytes.clone();
    let (header, hash) = blocking(move || Ok((decode::probe(&read, max_pixels)?, SourceHash::of(&read)))).await?;
    let refused = |e: PlanError| {
        // `auto` refused here: another replica may have the model.
        let e = ProxyError::from(e);
        if e.class == ErrorClass::Overloaded { e.with_retry_after(app.cfg.engine.retry_after) } else { e }
    };
    let mut plan = Plan::resolve(spec, variant, &header, &app.registry, &app.cfg, caller).map_err(refused)?;
    // `auto` with rules by content and a model to run: decode once more and look (the kind
    // depends on the bytes only, which the result key hashes).
    let by_content = app.cfg.engine.auto.iter().any(|r| r.content.is_some());
    if by_content && spec.model == ModelChoice::Auto && plan.engine.is_some() {
        let read = bytes.clone();
        let content = blocking(move || Ok(content::classify(&decode::decode_rgb8(&read, max_pixels, None)?))).await?;
        plan = Plan::resolve_with_content(spec, variant, &header, Some(content), &app.registry, &app.cfg, caller).map_err(refused)?;
    }
    if spec.model == ModelChoice::Auto {
        plan = canary(app, plan, &hash)?;
    }
    let key = ResultKey::for_result(&hash, &plan.canonical(), &plan.model());
    Ok(Planned { bytes, plan, key, source: hash, shadowed: true })
}

/// `[ml.canary]`: for a source in the canary's share, its model in place of the one `auto`
/// picked (at the nearest scale from above), so the result key names it and every replica
/// agrees. Prompt-guided runs, plain resizes and an unloaded canary keep the plan.
fn canary(app: &App, plan: Plan, source: &SourceHash) -> Result<Plan, ProxyError> {
    let (Some(name), Some(stable)) = (app.quality.canary_for(source), plan.engine.as_ref()) else { return Ok(plan) };
    if stable.prompt_guided() {
        return Ok(plan);
    }
    match app.registry.resolve(&ModelChoice::Named(name.to_string()), stable.scale(), false) {
        Ok(engine) if !engine.prompt_guided() => Ok(plan.with_engine(engine, Role::Canary, &app.cfg)?),
        _ => {
            debug!(model = name, "ml.canary names a model this replica has not loaded; serving the stable pick");
            Ok(plan)
        }
    }
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
    let value = compute(app, planned, memory, t, Watch { cancel, progress }).await;
    match &value {
        // Stored after the response; the claim goes once the result is in the store.
        Ok(c) => app.store_writes.write_behind(c.result.clone(), held.release()),
        Err(_) => held.release().await,
    }
    value
}

/// Source pixels kept around a smart crop's window when it is cut out before the model: context
/// for the model's edge pixels and the final Lanczos filter.
const SMART_CROP_MARGIN: u32 = 8;

/// Decode → infer → finish, for a planned result that no tier holds. `memory` is the job's share
/// of the memory budget; every stage holding its buffers holds a clone. Blocking stages stop
/// between steps once `watch.cancel` fires (no client is waiting any more).
pub async fn compute(app: &Arc<App>, planned: Planned, memory: MemoryPermit, mut t: Timings, watch: Watch<'_>) -> FlightValue {
    let Planned { bytes, plan, key: result_key, source: source_hash, shadowed } = planned;
    let Watch { cancel, progress } = watch;
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
        let result = CachedResult {
            key: result_key,
            bytes: encoded.into(),
            format,
            model,
            width: target.width,
            height: target.height,
            source: None,
            consistency: None,
        };
        return Ok(Arc::new(Computed { result: Arc::new(result), outcome: CacheOutcome::Miss, timings: t }));
    }
    let has_engine = plan.engine.is_some();
    let (stop, hold) = (cancel.clone(), memory.clone());
    // Without an engine the decoded source is what `finish` resizes; with one, the model's input.
    let (decoded, input, plan) = blocking(move || {
        let _hold = hold;
        let mut decoded = decode::decode_keeping(&bytes, max_pixels, plan.encoding().keep)?;
        abandoned(&stop)?;
        let mut plan = plan;
        plan.place_smart_crop(&decoded.rgb);
        // A smart crop is placed on the source and cut before the model: it upscales only the
        // window (and a margin of context), and the window does not depend on the model.
        if let (true, Some(region)) = (has_engine, plan.smart_region(SMART_CROP_MARGIN)) {
            decoded.alpha = decoded.alpha.map(|a| resize::cut_plane(&a, plan.src_w, region));
            decoded.rgb = resize::cut_rgb(&decoded.rgb, region);
            plan = plan.narrowed_to(region);
        }
        Ok::<_, ProxyError>(((decoded.alpha, decoded.tags), decoded.rgb, plan))
    })
    .await?;
    stage(app, &mut t, "decode", clock);

    let (upscaled, plan, result_key, consistency) = if has_engine {
        let input = Arc::new(input);
        let run = Run { source: source_hash, input: input.clone(), memory: &memory };
        let gated = infer_gated(app, plan, result_key, &run, Watch { cancel, progress }, &mut t).await?;
        if shadowed {
            if let Some(candidate) = app.quality.shadow_for(&source_hash) {
                let served = crate::shadow::Served { plan: &gated.plan, output: &gated.output, score: gated.score, busy: gated.busy };
                crate::shadow::start(app, candidate, served, input);
            }
        }
        (gated.output, gated.plan, gated.key, Some(gated.score))
    } else {
        (input, plan, result_key, None)
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

    let result = Arc::new(CachedResult {
        key: result_key,
        bytes: encoded.into(),
        format,
        model,
        width: out_w,
        height: out_h,
        source: None,
        consistency,
    });

    Ok(Arc::new(Computed { result, outcome: CacheOutcome::Miss, timings: t }))
}

/// What every model run of one computation shares.
struct Run<'a> {
    source: SourceHash,
    /// The model's input (the decoded source, or its smart-crop window).
    input: Arc<Tile>,
    memory: &'a MemoryPermit,
}

/// A model output the quality gate let through, with the plan and result key of the model
/// that made it (a fallback's when the planned model's output was refused).
struct Gated {
    output: Tile,
    plan: Plan,
    key: ResultKey,
    score: Score,
    /// The forward passes' time (`batcher::Ran::busy`).
    busy: std::time::Duration,
}

/// Infer → score → gate: an output below its model's minimum (`[ml.quality]`) is not served;
/// the next model down (`Registry::below`, Lanczos last) runs instead, under its own result
/// key, and is gated in turn. The last model's output is served whatever it scores (counted
/// `served_below`). Scores go to `upres_output_consistency`; the log names the result key,
/// never the image.
async fn infer_gated(app: &Arc<App>, mut plan: Plan, mut key: ResultKey, run: &Run<'_>, watch: Watch<'_>, t: &mut Timings) -> Result<Gated, ProxyError> {
    let Watch { cancel, progress } = watch;
    loop {
        let engine = plan.engine.clone().expect("infer runs only for plans with an engine");
        let clock = Instant::now();
        let ran = infer(app, &plan, run.input.clone(), Watch { cancel, progress: progress.clone() }, run.memory).await?;
        stage(app, t, "infer", clock);
        let clock = Instant::now();
        let input = run.input.clone();
        let (output, busy) = ran;
        let (output, score) = blocking(move || {
            let score = consistency::score(&input, &output);
            Ok((output, score))
        })
        .await?;
        stage(app, t, "score", clock);
        app.quality.observe(&*engine, plan.role, score);
        let below = app.registry.below(&*engine, engine.scale());
        let verdict = app.quality.judge(&app.registry, &*engine, plan.role, score, below.is_some());
        let (model, psnr, ssim) = (engine.id().to_string(), score.psnr, score.ssim);
        match (verdict, below) {
            (Verdict::Fallback, Some(next)) => {
                warn!(key = %key.short(), model, fallback = %next.id(), psnr, ssim, "quality gate: output below the model's minimum; running the next model down");
                plan = plan.with_engine(next, plan.role, &app.cfg)?;
                key = ResultKey::for_result(&run.source, &plan.canonical(), &plan.model());
            }
            (verdict, _) => {
                if verdict == Verdict::ServedBelow {
                    warn!(key = %key.short(), model, psnr, ssim, "quality gate: output below the model's minimum and no model below it; serving it");
                }
                return Ok(Gated { output, plan, key, score, busy });
            }
        }
    }
}

/// Tile → batcher → stitched engine output, and the forward passes' time.
async fn infer(app: &Arc<App>, plan: &Plan, input: Arc<Tile>, watch: Watch<'_>, memory: &MemoryPermit) -> Result<(Tile, std::time::Duration), ProxyError> {
    let Watch { cancel, progress } = watch;
    let engine = plan.engine.as_ref().expect("infer runs only for plans with an engine");
    let tiling = engine.tiling();
    let (stop, hold) = (cancel.clone(), memory.clone());
    let (grid, tiles) = blocking(move || {
        let _hold = hold;
        abandoned(&stop)?;
        let grid = Grid::new(input.width, input.height, tiling);
        let tiles = grid.cut(&input);
        Ok((grid, tiles))
    })
    .await?;
    if let Some(report) = &progress {
        report(JobProgress::Tiles(crate::engine::Progress { done: 0, total: tiles.len() as u32 }));
    }
    let rx = app
        .batcher
        .submit(&**engine, tiles, plan.gen.clone(), cancel.clone(), progress)
        .map_err(|e| ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after))?;
    let ran = rx
        .await
        .map_err(|_| ProxyError::new(ErrorClass::Internal, "the inference worker dropped the job"))??;
    let scale = engine.scale();
    let (stop, hold) = (cancel.clone(), memory.clone());
    blocking(move || {
        let _hold = hold;
        abandoned(&stop)?;
        Ok((grid.stitch(&ran.tiles, scale), ran.busy))
    })
    .await
}

/// Final resize (box, fit, crop), alpha (Lanczos, separately), encode.
/// `kept` is the decoded alpha and the source's metadata the output carries.
fn finish(plan: &Plan, upscaled: Tile, kept: (Option<Vec<f32>>, Tags), stop: &CancellationToken) -> Result<Vec<u8>, ProxyError> {
    let (alpha, tags) = kept;
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
    Ok(encode::encode_tagged(&rgb, alpha.as_deref(), &plan.encoding(), &tags)?)
}
/// The store tier: a result being written counts as stored; a corrupt object is a miss.
pub async fn lookup_store(app: &App, key: &ResultKey) -> Option<CachedResult> {
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
pub fn stage(app: &App, t: &mut Timings, name: &'static str, since: Instant) {
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
