//! A job's task: the upload miss path with progress recorded, then the callback.
//!
//! Runs detached from any connection (spawned by `api/jobs.rs`, or by `takeover` on the replica
//! that took an orphaned job over), with no cancellation: a job is work someone asked for and
//! will come back for. It is bounded by the same queue as requests (`POST` refuses a job when the
//! queue is full; a job that finds it full later fails with `overloaded`).
//!
//! Every record write renews this replica's lease on the job, and the task writes at least every
//! `jobs.lease`/3 (a heartbeat) until the callback is settled. A write refused as `Lost` means
//! another replica took the job over (this one stalled past its lease): the task stops there and
//! never finishes the record or sends the callback, so a job ends once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{callback, now_ms, Job, JobFailure, JobInput, JobProgress, JobResult, JobState, JobStoreError};
use crate::api::upscale::stored_url;
use crate::app::App;
use crate::cache::CachedResult;
use crate::engine::batcher::{self, ProgressFn};
use crate::error::{ErrorClass, ProxyError};
use crate::key::RequestKey;
use crate::params::TransformSpec;
use crate::plan::{Caller, Variant};
use crate::miss::{self, Planned};
use crate::respond::Timings;

/// The job's plan from its kept fields and image: the `POST` and a takeover both come here, so
/// they reach the same result key.
pub async fn plan(app: &App, input: &JobInput, image: Bytes) -> Result<Planned, ProxyError> {
    let pairs = input.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let spec = crate::api::fields::spec(&TransformSpec::default(), pairs, &app.param_limits)?;
    let variant = Variant::negotiate(spec.format, input.accept.as_deref(), app.cfg.output.auto_avif);
    miss::plan_bytes(app, image, &spec, variant, Caller::Api).await
}

/// Runs `job` for `planned` in its own task.
pub fn spawn(app: &Arc<App>, planned: Planned, job: Job) {
    let app = app.clone();
    // Under the creating request's span and trace: its logs and its callback carry them.
    crate::trace_context::spawn(async move { run(app, planned, job).await });
}

async fn run(app: Arc<App>, planned: Planned, mut job: Job) {
    job.state = JobState::Running;
    if !save(&app, &job).await {
        return;
    }
    let memo = RequestKey::for_upload(&planned.key);
    let value = match app.memory.get(&memo).await {
        Some(hit) => Ok(hit),
        None => match compute(&app, planned, &mut job).await {
            Some(value) => value,
            None => return, // taken over
        },
    };
    if let Ok(result) = &value {
        app.memory.insert(memo, result.clone()).await;
    }
    finish(&app, job, value).await;
}

/// Records how the job ended, then settles its callback.
pub async fn finish(app: &Arc<App>, mut job: Job, value: Result<Arc<CachedResult>, ProxyError>) {
    match value {
        Ok(result) => {
            job.state = JobState::Done;
            job.result = Some(JobResult {
                url: stored_url(&result),
                content_type: result.format.content_type().to_string(),
                width: result.width,
                height: result.height,
                model: result.model.clone(),
            });
        }
        Err(e) => {
            let message = if e.class.is_client_visible() { e.message.clone() } else { format!("internal error (job {})", job.id) };
            if e.class == ErrorClass::Internal {
                warn!(job = %job.id, error = %e.message, "job failed");
            }
            job.state = JobState::Failed;
            job.error = Some(JobFailure { code: e.class.code().to_string(), message });
        }
    }
    job.finished_unix_ms = Some(now_ms());
    if !save(app, &job).await {
        return;
    }
    app.metrics.jobs.with_label_values(&[if job.state == JobState::Done { "done" } else { "failed" }]).inc();
    settle_callback(app, job).await;
}

/// Sends a pending callback (under the heartbeat: three tries may outlast a lease), records the
/// outcome, then drops the job's kept image: from here the job needs no owner.
pub async fn settle_callback(app: &Arc<App>, mut job: Job) {
    if job.callback.as_deref() == Some("pending") {
        let snapshot = job.clone();
        let Some(delivered) = with_heartbeat(app, &mut job, callback::deliver(app, &snapshot)).await else {
            return;
        };
        let outcome = if delivered { "delivered" } else { "failed" };
        app.metrics.callbacks.with_label_values(&[outcome]).inc();
        job.callback = Some(outcome.to_string());
        if !save(app, &job).await {
            return;
        }
    }
    app.jobs.drop_input(&job.id).await;
}

/// The store tier and the model run, writing tile progress into the record as it comes and
/// renewing the lease; `None` when another replica took the job over meanwhile.
async fn compute(app: &Arc<App>, planned: Planned, job: &mut Job) -> Option<Result<Arc<CachedResult>, ProxyError>> {
    let (tx, mut rx) = watch::channel(None::<JobProgress>);
    let progress: ProgressFn = Arc::new(move |p| {
        if let batcher::JobProgress::Tiles(t) = p {
            tx.send_replace(Some(JobProgress { done: t.done, total: t.total }));
        }
    });
    let never = CancellationToken::new();
    let work = miss::produce_planned(app, planned, Timings::default(), &never, Some(progress));
    tokio::pin!(work);
    let mut beat = heartbeat(app);
    loop {
        tokio::select! {
            value = &mut work => {
                // The last report may not have been saved yet.
                job.progress = *rx.borrow();
                return Some(value.map(|c| c.result.clone()));
            }
            Ok(()) = rx.changed() => {
                job.progress = *rx.borrow_and_update();
                if !save(app, job).await {
                    return None;
                }
            }
            _ = beat.tick() => if !save(app, job).await {
                return None;
            },
        }
    }
}

/// `work`, with the record rewritten every lease/3 meanwhile; `None` once the job was lost.
async fn with_heartbeat<F: Future>(app: &App, job: &mut Job, work: F) -> Option<F::Output> {
    tokio::pin!(work);
    let mut beat = heartbeat(app);
    loop {
        tokio::select! {
            out = &mut work => return Some(out),
            _ = beat.tick() => if !save(app, job).await {
                return None;
            },
        }
    }
}

fn heartbeat(app: &App) -> tokio::time::Interval {
    let period = (app.cfg.jobs.lease / 3).max(Duration::from_millis(10));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat
}

/// Writes the record; false only when the job was taken over (other errors are logged and the
/// job goes on: its result still reaches the store).
async fn save(app: &App, job: &Job) -> bool {
    match app.jobs.put(job.clone()).await {
        Ok(()) => true,
        Err(JobStoreError::Lost) => {
            warn!(job = %job.id, "job taken over by another replica; this one stops");
            false
        }
        Err(e) => {
            warn!(job = %job.id, error = %e, "job record not saved");
            true
        }
    }
}
