//! `POST /api/v1/batch-upscale`: several `image` parts, each with its own parameters, through
//! the same miss path and batcher concurrently (their tiles can share forward passes).
//!
//! Parameters: plain fields (as for `/api/v1/upscale`) are defaults for every image; an optional
//! `params` part holds a JSON array aligned with the images, each entry `null` or an object of
//! the same fields overriding the defaults for that image. `format=auto` means WebP here (no
//! image `Accept` to negotiate). The answer is JSON, 200 with per-image errors: one bad image
//! never fails the others; a malformed request (bad defaults, bad `params` JSON, too many images
//! or bytes) is a 4xx for the whole.

use std::sync::Arc;

use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tracing::warn;

use super::form::{self, FormLimits};
use super::{fields, RequestBody};
use crate::app::App;
use crate::error::{ErrorClass, ProxyError};
use crate::params::{Format, TransformSpec};
use crate::pipeline;
use crate::respond::Answer;
use crate::plan::Variant;
use crate::respond::{self, CacheOutcome};

/// The part holding per-image parameters.
pub const PARAMS: &str = "params";

pub async fn handle<B: RequestBody>(app: &Arc<App>, head: &Parts, body: B) -> Answer {
    if head.method != Method::POST {
        return Err(ProxyError::method_not_allowed("POST"));
    }
    let api = &app.cfg.api;
    let limits = FormLimits { body_bytes: api.max_batch_bytes, image_bytes: api.max_upload_bytes, max_images: api.max_batch_images, read_timeout: app.cfg.server.request_deadline };
    let form = form::read(head, body, limits).await?;
    if form.images.is_empty() {
        return Err(bad("the request has no `image` part"));
    }
    let mut per_image: Option<&str> = None;
    let mut shared = Vec::new();
    for (name, value) in &form.fields {
        if name == PARAMS {
            if per_image.replace(value).is_some() {
                return Err(bad("field `params` is given more than once"));
            }
        } else {
            shared.push((name.as_str(), value.as_str()));
        }
    }
    let defaults = fields::spec(&fields::api_base(), shared, &app.param_limits)?;
    let overrides = parse_params(per_image, form.images.len())?;

    let items = form.images.into_iter().zip(overrides).enumerate().map(|(index, (bytes, over))| {
        let spec = item_spec(&defaults, &over, &app.param_limits);
        async move {
            let outcome = match spec {
                Ok(spec) => {
                    let variant = match spec.format {
                        Format::Auto => Variant::AutoWebp,
                        f => Variant::negotiate(f, None, false),
                    };
                    pipeline::uploaded(app, bytes, &spec, variant, &pipeline::Watcher::none(app)).await
                }
                Err(e) => Err(e),
            };
            item_json(index, outcome)
        }
    });
    let results = futures::future::join_all(items).await;
    Ok((respond::json(StatusCode::OK, &json!({ "results": results })), CacheOutcome::None))
}

fn bad(message: &str) -> ProxyError {
    ProxyError::new(ErrorClass::BadRequest, message)
}

/// The `params` JSON: an array no longer than the images; missing entries are empty.
fn parse_params(text: Option<&str>, images: usize) -> Result<Vec<serde_json::Map<String, Value>>, ProxyError> {
    let mut out = vec![serde_json::Map::new(); images];
    let Some(text) = text else { return Ok(out) };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(&format!("field `params` is not valid JSON: {e}")))?;
    let Value::Array(entries) = value else { return Err(bad("field `params` must be a JSON array, one entry per image")) };
    if entries.len() > images {
        return Err(bad(&format!("field `params` has {} entries for {images} images", entries.len())));
    }
    for (slot, entry) in out.iter_mut().zip(entries) {
        match entry {
            Value::Null => {}
            Value::Object(map) => *slot = map,
            _ => return Err(bad("each entry of `params` must be an object or null")),
        }
    }
    Ok(out)
}

fn item_spec(
    defaults: &TransformSpec,
    over: &serde_json::Map<String, Value>,
    limits: &crate::params::ParamLimits,
) -> Result<TransformSpec, ProxyError> {
    let mut pairs = Vec::with_capacity(over.len());
    for (name, value) in over {
        if let Some(text) = fields::json_text(name, value)? {
            pairs.push((name.as_str(), text));
        }
    }
    Ok(fields::spec(defaults, pairs.iter().map(|(n, v)| (*n, v.as_str())), limits)?)
}

fn item_json(index: usize, outcome: Result<(Arc<crate::flight::Computed>, CacheOutcome, crate::plan::Plan), ProxyError>) -> Value {
    match outcome {
        Ok((c, cache, _plan)) => {
            let r = &c.result;
            json!({
                "index": index,
                "url": super::upscale::stored_url(r),
                "hash": r.key.hex(),
                "width": r.width,
                "height": r.height,
                "bytes": r.bytes.len(),
                "format": r.format.as_str(),
                "model": r.model,
                "cache": cache.as_str(),
                "error": null,
            })
        }
        Err(e) => {
            let message = if e.class.is_client_visible() {
                e.message
            } else {
                warn!(index, error = %e.message, "batch item failed");
                "internal error".to_string()
            };
            json!({
                "index": index,
                "url": null, "hash": null, "width": null, "height": null, "bytes": null,
                "format": null, "model": null, "cache": null,
                "error": { "code": e.class.code(), "message": message },
            })
        }
    }
}
