//! Jobs whose owner died: found by a sweep over the kept inputs (`JobStore::unfinished`, every
//! `jobs.sweep_interval`) or by a `GET` that reads an expired lease, taken over by one conditional
//! write (`JobStore::take_over`: of racing replicas one wins), then planned again from the stored
//! fields and image (`run::plan`, as the `POST`: the same result key) and run to the end once.
//!
//! A job that loses its owner more than `MAX_TAKEOVERS` times fails instead of being run again:
//! an input that kills every replica taking it must not walk through the fleet.

use std::sync::Arc;

use tracing::{info, warn};

use super::{run, Job};
use crate::app::App;
use crate::error::{ErrorClass, ProxyError};

const MAX_TAKEOVERS: u32 = 3;

/// Sweeps every `jobs.sweep_interval` for as long as the server runs (`server::run` holds it).
pub async fn sweep_forever(app: Arc<App>) {
    let period = app.cfg.jobs.sweep_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(&app).await;
    }
}

/// One look at the jobs that may need an owner; how many this replica took over.
pub async fn sweep(app: &Arc<App>) -> usize {
    let ids = match app.jobs.unfinished().await {
        Ok(ids) => ids,
        Err(e) => {
            warn!(error = %e, "job sweep: listing failed");
            return 0;
        }
    };
    let mut adopted = 0;
    for id in ids {
        adopted += usize::from(adopt(app, &id).await);
    }
    adopted
}

/// Takes job `id` over if its lease ran out and this replica wins the write, and runs it; true if
/// this replica now owns it.
pub async fn adopt(app: &Arc<App>, id: &str) -> bool {
    // No room in the queue: leave the job to a replica with room (or the next sweep).
    if app.batcher.check_room().is_err() {
        return false;
    }
    let job = match app.jobs.take_over(id).await {
        Ok(Some(job)) => job,
        Ok(None) => return false,
        Err(e) => {
            warn!(job = id, error = %e, "job takeover failed");
            return false;
        }
    };
    app.metrics.job_takeovers.inc();
    info!(job = id, takeovers = job.takeovers, state = ?job.state, "took over a job whose owner's lease ran out");
    let app = app.clone();
    tokio::spawn(async move { resume(&app, job).await });
    true
}

async fn resume(app: &Arc<App>, job: Job) {
    if job.state.finished() {
        // It ended, but its owner died before the callback was settled.
        return run::settle_callback(app, job).await;
    }
    let failed = |message: String| Err(ProxyError::new(ErrorClass::Internal, message));
    if job.takeovers > MAX_TAKEOVERS {
        let message = format!("the job lost its replica {} times; not run again", job.takeovers);
        return run::finish(app, job, failed(message)).await;
    }
    let Some(input) = job.input.clone() else {
        return run::finish(app, job, failed("the job's request was not kept".into())).await;
    };
    let image = match app.jobs.input(&job.id, &input).await {
        Ok(Some(image)) => image,
        Ok(None) => return run::finish(app, job, failed("the job's image was lost from the store".into())).await,
        Err(e) => {
            // Not this replica's to decide: the lease runs out and the next sweep tries again.
            warn!(job = %job.id, error = %e, "reading a taken-over job's image failed");
            return;
        }
    };
    match run::plan(app, &input, image).await {
        Ok(planned) => run::spawn(app, planned, job),
        Err(e) => run::finish(app, job, Err(e)).await,
    }
}
