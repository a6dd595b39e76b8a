//! A job's task: the upload miss path with progress recorded, then the callback.
//!
//! Runs detached from any connection (spawned by `api/jobs.rs`), with no cancellation: a job is
//! work someone asked for and will come back for. It is bounded by the same queue as requests
//! (`POST` refuses a job when the queue is full; a job that finds it full later fails with
//! `overloaded`).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{callback, now_ms, Job, JobFailure, JobProgress, JobResult, JobState};
use crate::api::upscale::stored_url;
use crate::app::App;
use crate::cache::CachedResult;
use crate::engine::batcher::{self, ProgressFn};
use crate::error::ErrorClass;
use crate::key::RequestKey;
use crate::miss::{self, Planned};
use crate::respond::Timings;

/// Runs `job` for `planned` in its own task.
pub fn spawn(app: &Arc<App>, planned: Planned, job: Job) {
    let app = app.clone();
    tokio::spawn(async move { run(app, planned, job).await });
}

async fn run(app: Arc<App>, planned: Planned, mut job: Job) {
    job.state = JobState::Running;
    save(&app, &job).await;
    let memo = RequestKey::for_upload(&planned.key);
    let value = match app.memory.get(&memo).await {
        Some(hit) => Ok(hit),
        None => compute(&app, planned, &mut job).await,
    };
    match value {
        Ok(result) => {
            app.memory.insert(memo, result.clone()).await;
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
    save(&app, &job).await;
    app.metrics.jobs.with_label_values(&[if job.state == JobState::Done { "done" } else { "failed" }]).inc();
    if job.callback_url.is_some() {
        let delivered = callback::deliver(&app, &job).await;
        let outcome = if delivered { "delivered" } else { "failed" };
        app.metrics.callbacks.with_label_values(&[outcome]).inc();
        job.callback = Some(outcome.to_string());
        save(&app, &job).await;
    }
}

/// The store tier and the model run, writing tile progress into the record as it comes.
async fn compute(app: &Arc<App>, planned: Planned, job: &mut Job) -> Result<Arc<CachedResult>, crate::error::ProxyError> {
    let (tx, mut rx) = watch::channel(None::<JobProgress>);
    let progress: ProgressFn = Arc::new(move |p| {
        if let batcher::JobProgress::Tiles(t) = p {
            tx.send_replace(Some(JobProgress { done: t.done, total: t.total }));
        }
    });
    let never = CancellationToken::new();
    let work = miss::produce_planned(app, planned, Timings::default(), &never, Some(progress));
    tokio::pin!(work);
    loop {
        tokio::select! {
            value = &mut work => {
                // The last report may not have been saved yet.
                job.progress = *rx.borrow();
                return value.map(|c| c.result.clone());
            }
            Ok(()) = rx.changed() => {
                job.progress = *rx.borrow_and_update();
                save(app, job).await;
            }
        }
    }
}

async fn save(app: &App, job: &Job) {
    if let Err(e) = app.jobs.put(job.clone()).await {
        warn!(job = %job.id, error = %e, "job record not saved");
    }
}
