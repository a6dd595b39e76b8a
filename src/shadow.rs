//! Shadow runs (`[ml.shadow]`): on a sampled miss, the candidate model runs on the same input
//! in the background after the served output is made; its output is scored, compared with the
//! served one and dropped. Recorded in `upres_shadow_*`, `upres_output_consistency{role=
//! "shadow"}` and `GET /api/v1/shadow` (`quality::book`).
//!
//! Served work comes first: a shadow starts only with a free `max_in_flight` place and the
//! served queue under half full; in the batcher it is a background job (run only when nothing
//! served is queued or running, dropped when the queue fills). It holds no share of the memory
//! budget (that would refuse served work); `max_in_flight` bounds what it holds (the input, the
//! served output, its own output).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::engine::batcher::SubmitError;
use crate::engine::tiling::Grid;
use crate::engine::{Engine, InferError, Tile};
use crate::imaging::consistency::{self, Luma, Score};
use crate::params::ModelChoice;
use crate::plan::Plan;
use crate::quality::book::ShadowSample;
use crate::quality::{label, Role, ShadowOutcome};

/// The served run a shadow is compared with.
pub struct Served<'a> {
    pub plan: &'a Plan,
    pub output: &'a Tile,
    pub score: Score,
    /// Its forward passes' time.
    pub busy: Duration,
}

/// Starts the candidate `candidate` (a model name) on `input` in the background, if there is
/// room (else counts it `dropped`). Nothing happens when the candidate is not loaded or is the
/// served model itself.
pub fn start(app: &Arc<App>, candidate: &str, served: Served<'_>, input: Arc<Tile>) {
    let Some(served_engine) = served.plan.engine.clone() else { return };
    let Ok(engine) = app.registry.resolve(&ModelChoice::Named(candidate.to_string()), served_engine.scale(), false) else {
        tracing::debug!(model = candidate, "ml.shadow names a model this replica has not loaded");
        return;
    };
    if engine.id() == served_engine.id() || engine.prompt_guided() {
        return;
    }
    let (served_name, candidate_name) = (label(&*served_engine).to_string(), label(&*engine).to_string());
    let slot = match app.quality.reserve_shadow() {
        Some(slot) if !app.batcher.under_load() => slot,
        _ => return app.quality.record_shadow(&served_name, &candidate_name, ShadowOutcome::Dropped),
    };
    let (app, output, score, busy) = (app.clone(), Arc::new(served.output.clone()), served.score, served.busy);
    let gen = served.plan.gen.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let outcome = run(&app, &engine, gen, input, output, score, busy).await;
        if let ShadowOutcome::Done(sample) = &outcome {
            app.quality.observe(&*engine, Role::Shadow, sample.candidate);
        }
        app.quality.record_shadow(&served_name, &candidate_name, outcome);
    });
}

async fn run(
    app: &App,
    engine: &Arc<dyn Engine>,
    gen: crate::engine::GenParams,
    input: Arc<Tile>,
    served: Arc<Tile>,
    served_score: Score,
    served_busy: Duration,
) -> ShadowOutcome {
    let tiling = engine.tiling();
    let cut = {
        let input = input.clone();
        tokio::task::spawn_blocking(move || {
            let grid = Grid::new(input.width, input.height, tiling);
            let tiles = grid.cut(&input);
            (grid, tiles)
        })
    };
    let Ok((grid, tiles)) = cut.await else { return ShadowOutcome::Failed };
    let rx = match app.batcher.submit_background(&**engine, tiles, gen, CancellationToken::new()) {
        Ok(rx) => rx,
        Err(SubmitError::Overloaded(_)) => return ShadowOutcome::Dropped,
        Err(_) => return ShadowOutcome::Failed,
    };
    let ran = match rx.await {
        Ok(Ok(ran)) => ran,
        Ok(Err(InferError::Cancelled)) => return ShadowOutcome::Dropped,
        _ => return ShadowOutcome::Failed,
    };
    let scale = engine.scale();
    let busy = ran.busy;
    let compared = tokio::task::spawn_blocking(move || {
        let output = grid.stitch(&ran.tiles, scale);
        let score = consistency::score(&input, &output);
        // The two outputs at the smaller one's size (the scales may differ).
        let (a, b) = (Luma::of(&output), Luma::of(&served));
        let (w, h) = (a.width.min(b.width), a.height.min(b.height));
        let difference = consistency::compare(&a.area_down(w, h), &b.area_down(w, h)).psnr;
        (score, difference)
    });
    let Ok((candidate, difference_psnr)) = compared.await else { return ShadowOutcome::Failed };
    let time_ratio = busy.as_secs_f64() / served_busy.as_secs_f64().max(1e-6);
    ShadowOutcome::Done(ShadowSample { time_ratio, served: served_score, candidate, difference_psnr })
}
