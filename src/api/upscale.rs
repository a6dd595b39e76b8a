//! `POST /api/v1/upscale`: one uploaded image (multipart part `image`) plus optional parameter
//! fields → the image, with its metadata in headers and `Location` of the stored result.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Method;

use super::form::{self, FormError, FormLimits};
use super::{fields, RequestBody};
use crate::app::App;
use crate::cache::CachedResult;
use crate::error::{ErrorClass, ProxyError};
use crate::pipeline;
use crate::respond::Answer;
use crate::plan::Variant;
use crate::respond::{self, ImageReply};

pub async fn handle<B: RequestBody>(app: &Arc<App>, head: &Parts, body: B) -> Answer {
    if head.method != Method::POST {
        return Err(ProxyError::method_not_allowed("POST"));
    }
    // The playground's progress id, if any: its stream ends however this request ends.
    let mut watcher = pipeline::Watcher::for_request(app, head);
    let limits = FormLimits { body_bytes: app.cfg.api.max_upload_bytes, image_bytes: app.cfg.api.max_upload_bytes, max_images: 1, read_timeout: app.cfg.server.request_deadline };
    let form = form::read(head, body, limits).await.map_err(|e| match e {
        FormError::TooManyImages(_) => {
            ProxyError::new(ErrorClass::BadRequest, "send one `image` part; /api/v1/batch-upscale takes several")
        }
        e => e.into(),
    })?;
    let image = form.images.into_iter().next().ok_or_else(|| ProxyError::new(ErrorClass::BadRequest, "the `image` part is missing"))?;
    let pairs = form.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let spec = fields::spec(&fields::api_base(), pairs, &app.param_limits)?;
    let accept = head.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let variant = Variant::negotiate(spec.format, accept, app.cfg.output.auto_avif);

    let (computed, cache, plan) = pipeline::uploaded(app, image, &spec, variant, &watcher).await?;
    watcher.answered();
    let mut response = respond::image(ImageReply {
        result: &computed.result,
        outcome: cache,
        timings: &computed.timings,
        varies: variant.varies(),
        method: &head.method,
        if_none_match: None,
        if_modified_since: None,
        cache_control: &app.cfg.output.stored_cache_control,
        cfg: &app.cfg.output,
    });
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, header_value(&stored_url(&computed.result)));
    headers.insert("x-upres-params", header_value(&plan.canonical()));
    Ok((response, cache))
}

/// `/r/<result key>.<ext>`: where `GET` serves this result from the store.
pub fn stored_url(result: &CachedResult) -> String {
    format!("/r/{}.{}", result.key.hex(), result.format.extension())
}

fn header_value(s: &str) -> HeaderValue {
    // Both values are ASCII by construction (hex, numbers, option names).
    HeaderValue::from_str(s).expect("ASCII header value")
}
