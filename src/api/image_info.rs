//! `GET /info/<signature>/<options…>/<source>`: what a transform URL would do, without doing it
//! (imgproxy's `/info` endpoint, answered with upres's plan).
//!
//! The path after `/info` is a transform path in either syntax, checked like one: the signature
//! covers the path after the signature segment (imgproxy signs `/info` URLs the same way, without
//! the `/info` prefix), then the options are parsed. The source is fetched and its header probed
//! (no pixel is decoded), and `miss::fetch_and_plan` plans it as a real request would: the
//! same model choice, sizes, format and result key. No model runs and nothing is stored. The
//! answer says whether the result is cached now, so it is `no-store`.

use std::sync::Arc;

use http::request::Parts;
use http::{header, StatusCode};
use image::ImageFormat;
use serde_json::json;

use crate::app::App;
use crate::key::RequestKey;
use crate::miss;
use crate::params;
use crate::pipeline;
use crate::plan::{Caller, Variant};
use crate::preview;
use crate::respond::{self, get_or_head, Answer, CacheOutcome, Timings};

/// The route's prefix; the rest of the path is a transform path.
pub const PREFIX: &str = "/info";

pub async fn handle(app: &Arc<App>, head: &Parts) -> Answer {
    get_or_head(head)?;
    let path = &head.uri.path()[PREFIX.len()..];
    let (request, _disposition) = pipeline::parse_transform_path(app, path)?;
    let accept = head.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let variant = Variant::negotiate(request.spec.format, accept, app.cfg.output.auto_avif);
    let request_key = RequestKey::for_request(
        &params::canonical(&request.spec),
        variant.as_str(),
        request.spec.origin.as_deref().unwrap_or("default"),
        &request.source,
    );
    let (planned, meta) = miss::fetch_and_plan(app, &request, variant, Caller::Url, &mut Timings::default()).await?;
    let plan = &planned.plan;
    let in_memory = app.memory.contains(&request_key);
    let in_store = match &app.store {
        _ if app.store_writes.pending(&planned.key).is_some() => true,
        Some(store) => store.contains(&planned.key).await.unwrap_or(false),
        None => false,
    };
    let key = planned.key.hex();
    let body = json!({
        "source": {
            "width": plan.src_w,
            "height": plan.src_h,
            "format": format_name(plan.source.format),
            "bytes": planned.bytes.len(),
            "has_alpha": plan.source.has_alpha,
            "tag": meta.tag.header(),
        },
        "transform": {
            "canonical": params::canonical(&request.spec),
            "model": plan.model(),
            "runs_model": plan.engine.is_some(),
            "model_scale": plan.engine.as_ref().map(|e| e.scale()),
            "width": plan.out_w,
            "height": plan.out_h,
            "format": plan.format.as_str(),
            "quality": plan.quality,
            // Fractions of the source; a smart crop's place is chosen from the pixels, so only
            // its size is known here.
            "crop": plan.crop.map(|(left, top, width, height)| {
                let place = |v: f64| (!plan.smart).then_some(v);
                json!({ "left": place(left), "top": place(top), "width": width, "height": height })
            }),
            "smart_crop": plan.smart,
            "varies_by_accept": variant.varies(),
            "estimated_model_seconds": preview::estimate(app, plan).map(|d| d.as_secs_f64()),
        },
        "result": {
            "key": key,
            "etag": planned.key.etag(),
            "url": format!("/r/{key}.{}", plan.format.extension()),
            "cached": { "memory": in_memory, "store": in_store },
        },
    });
    Ok((respond::json(StatusCode::OK, &body), CacheOutcome::None))
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        _ => "other",
    }
}
