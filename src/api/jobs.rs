//! `POST /api/v1/jobs` and `GET /api/v1/jobs/{id}`: the upscale API without holding the
//! connection. The POST takes the same multipart form as `/api/v1/upscale` plus an optional
//! `callback_url` field; it probes and plans the image at once (so a bad request is a 4xx now,
//! not a failed job later), refuses with 503 when the inference queue or the job store is full,
//! and answers 202 with the job's record and `Location: /api/v1/jobs/<id>`. The job runs in
//! `jobs::run`.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};

use super::form::{self, FormError, FormLimits};
use super::RequestBody;
use crate::app::App;
use crate::error::{ErrorClass, ProxyError};
use crate::jobs::{self, Job, JobInput};
use crate::respond::{get_or_head, Answer};
use crate::respond::{self, CacheOutcome};

/// The form field naming the callback; every other field is an upscale field.
const CALLBACK_FIELD: &str = "callback_url";

pub async fn create<B: RequestBody>(app: &Arc<App>, head: &Parts, body: B) -> Answer {
    if head.method != Method::POST {
        return Err(ProxyError::method_not_allowed("POST"));
    }
    if app.store.is_none() {
        return Err(ProxyError::new(ErrorClass::Overloaded, "jobs need a result store (cache.store.url) to keep their results"));
    }
    let limits = FormLimits {
        body_bytes: app.cfg.api.max_upload_bytes,
        image_bytes: app.cfg.api.max_upload_bytes,
        max_images: 1,
        read_timeout: app.cfg.server.request_deadline,
    };
    let form = form::read(head, body, limits).await.map_err(|e| match e {
        FormError::TooManyImages(_) => ProxyError::new(ErrorClass::BadRequest, "send one `image` part per job"),
        e => e.into(),
    })?;
    let image = form.images.into_iter().next().ok_or_else(|| ProxyError::new(ErrorClass::BadRequest, "the `image` part is missing"))?;
    let callback = form.fields.iter().find(|(n, _)| n == CALLBACK_FIELD).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(url) = &callback {
        check_callback(app, url)?;
    }
    let pairs = form.fields.into_iter().filter(|(n, _)| n != CALLBACK_FIELD).collect();
    let accept = head.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string);
    // Kept with the job, so a replica taking it over plans it again the same way.
    let input = JobInput::new(pairs, accept, &image);
    let planned = jobs::run::plan(app, &input, image.clone()).await?;
    app.batcher.check_room().map_err(|e| ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after))?;

    let mut job = Job::new(jobs::new_id(), callback);
    job.input = Some(input);
    // The image first: a record never names an input that is not there (a stray image without a
    // record is dropped by the next sweep).
    app.jobs.save_input(&job.id, image).await?;
    app.jobs.insert(job.clone()).await.map_err(|e| ProxyError::from(e).with_retry_after(app.cfg.engine.retry_after))?;
    jobs::run::spawn(app, planned, job.clone());
    let mut response = respond::json(StatusCode::ACCEPTED, &serde_json::to_value(&job).expect("a job serialises"));
    let location = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)).expect("hex id");
    response.headers_mut().insert(header::LOCATION, location);
    Ok((response, CacheOutcome::None))
}

pub async fn get(app: &Arc<App>, head: &Parts) -> Answer {
    get_or_head(head)?;
    let not_found = || ProxyError::new(ErrorClass::NotFound, "no such job (unknown, or finished longer than jobs.ttl ago)");
    let id = head.uri.path().trim_start_matches("/api/v1/jobs/");
    if !jobs::is_id(id) {
        return Err(not_found());
    }
    let job = app.jobs.get(id).await?.ok_or_else(not_found)?;
    if job.orphaned(jobs::now_ms()) {
        // Its replica died: take it over now rather than at the next sweep (the answer is the
        // record as read; the next GET shows the new run).
        let (app, id) = (app.clone(), id.to_string());
        tokio::spawn(async move { jobs::takeover::adopt(&app, &id).await });
    }
    let mut response = respond::json(StatusCode::OK, &serde_json::to_value(&job).expect("a job serialises"));
    if let Some(result) = &job.result {
        let location = HeaderValue::from_str(&result.url).expect("hex key and extension");
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok((response, CacheOutcome::None))
}

/// A callback needs a secret to sign with and a URL the SSRF guard allows.
fn check_callback(app: &App, url: &str) -> Result<(), ProxyError> {
    if app.cfg.jobs.callback_secret.is_none() {
        return Err(ProxyError::new(ErrorClass::BadRequest, "callbacks are off on this server (no jobs.callback_secret to sign them)"));
    }
    let parsed = url::Url::parse(url).map_err(|e| ProxyError::new(ErrorClass::BadRequest, format!("`callback_url`: {e}")))?;
    crate::ssrf::check_callback_url(&parsed, app.cfg.jobs.callback_allow_private)
        .map_err(|e| ProxyError::new(ErrorClass::BadRequest, format!("`callback_url` {e}")))
}
