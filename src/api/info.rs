//! `GET /api/v1/health` and `GET /api/v1/model-info`: what runs and within which limits;
//! `GET /api/v1/shadow`: how a shadowed candidate model compares (`quality::book`).

use http::request::Parts;
use http::StatusCode;

use crate::app::App;
use crate::respond::{get_or_head, Answer};
use crate::respond::{self, CacheOutcome};

pub fn health(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    let body = serde_json::json!({
        "status": if app.is_ready() { "ok" } else { "starting" },
        "ready": app.is_ready(),
        "queue_depth": app.batcher.depth(),
        "queue_capacity": app.cfg.engine.queue_capacity,
        "version": env!("CARGO_PKG_VERSION"),
    });
    Ok((respond::json(StatusCode::OK, &body), CacheOutcome::None))
}

/// `GET /api/v1/shadow`: the shadow runs' summary per (served model, candidate) pair.
pub fn shadow(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    let body = serde_json::to_value(app.quality.shadow_summary()).expect("the summary serialises");
    Ok((respond::json(StatusCode::OK, &body), CacheOutcome::None))
}

pub fn model_info(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    let models: Vec<serde_json::Value> = app
        .registry
        .entries()
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "aliases": e.aliases,
                "id": e.engine.id().to_string(),
                "weights": e.engine.id().weights,
                "scale": e.engine.scale(),
                "device": e.engine.device(),
                "prompt_guided": e.engine.prompt_guided(),
                "tile": e.engine.tiling().map(|t| t.tile),
                "description": e.description,
            })
        })
        .collect();
    let mut devices: Vec<String> = app.registry.entries().iter().map(|e| e.engine.device()).collect();
    devices.sort();
    devices.dedup();
    let mut scales: Vec<u32> = app.registry.entries().iter().map(|e| e.engine.scale()).collect();
    scales.sort();
    scales.dedup();
    let (l, api) = (&app.cfg.limits, &app.cfg.api);
    let body = serde_json::json!({
        "models": models,
        "names": app.registry.names(),
        "devices": devices,
        // The first device, for clients that show one.
        "device": devices.first(),
        "scales": scales,
        "defaults": {
            "scale": 4,
            "model": "auto",
            "noise_level": 20,
            "guidance_scale": 9.0,
            "seed": 0,
            "num_inference_steps": { "api": crate::engine::GenParams::default().steps, "url": app.cfg.sd.url_default_steps },
            "scheduler": { "api": crate::engine::GenParams::default().scheduler, "url": app.cfg.sd.url_default_scheduler },
        },
        "limits": {
            "max_source_bytes": l.max_source_bytes,
            "max_source_pixels": l.max_source_pixels,
            "max_output_pixels": l.max_output_pixels,
            "max_prompt_bytes": l.max_prompt_bytes,
            "sd_max_input_side": app.cfg.sd.max_input_side,
            "max_upload_bytes": api.max_upload_bytes,
            "max_batch_bytes": api.max_batch_bytes,
            "max_batch_images": api.max_batch_images,
            "noise_level": [0, 350],
            "num_inference_steps": [1, 200],
            "guidance_scale": [0.0, 30.0],
            "quality": [1, 100],
        },
    });
    Ok((respond::json(StatusCode::OK, &body), CacheOutcome::None))
}
