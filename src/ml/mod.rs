//! Neural engines on candle: model definitions, weight loading, and discovery in the models folder.
//!
//! Only this module (and its children) imports candle. `discover` turns the files found in
//! `ml.models_dir` into registry entries; each model family lives in its own child module.

use std::sync::Arc;

use crate::config::Config;
use crate::engine::registry::ModelEntry;
use crate::engine::Tiling;

pub mod sd;

/// Why a model could not be loaded. Startup fails with this message.
#[derive(thiserror::Error, Debug)]
pub enum MlError {
    #[error("model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("device: {0}")]
    Device(String),
}

/// Loads every model found in the models folder. A missing folder means no neural models; a
/// present but broken model file is an error (it would otherwise vanish silently).
///
/// sd-x4 loads from `sd.path` when set (it must then exist), else from
/// `<ml.models_dir>/stable-diffusion-x4-upscaler/` when that folder exists.
pub fn discover(cfg: &Config) -> Result<Vec<ModelEntry>, MlError> {
    let mut entries = Vec::new();
    let sd_dir = sd::model_dir(&cfg.ml.models_dir, cfg.sd.path.as_deref());
    if cfg.sd.path.is_some() || sd_dir.is_dir() {
        let device = sd::select_device(&cfg.ml.device).map_err(|e| MlError::Device(e.to_string()))?;
        let tiling = Tiling { tile: cfg.ml.tile, overlap: cfg.ml.tile_overlap };
        let engine = sd::SdEngine::load(&sd_dir, &device, tiling)
            .map_err(|e| MlError::Load { path: sd_dir.display().to_string(), reason: e.to_string() })?;
        tracing::info!(model = sd::NAME, id = %crate::engine::Engine::id(&engine), dir = %sd_dir.display(), "loaded");
        entries.push(ModelEntry {
            name: sd::NAME.into(),
            aliases: vec!["sd".into(), sd::DIR_NAME.into()],
            rank: 50,
            engine: Arc::new(engine),
            description: "Stable Diffusion x4 upscaler (prompt-guided, 4x)".into(),
        });
    }
    Ok(entries)
}
