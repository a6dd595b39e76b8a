//! Neural engines on candle: model definitions, weight loading, and discovery in the models folder.
//!
//! Only this module (and its children) imports candle. `discover` turns the files found in
//! `ml.models_dir` into registry entries; each model family lives in its own child module
//! (`realesrgan`), reading weights through `ncnn` where they ship in that format.

use std::path::Path;
use std::sync::Arc;

pub mod fastconv;

use crate::config::{Config, MlConfig};
use crate::engine::registry::ModelEntry;
use crate::engine::Tiling;

pub mod device;
pub mod ncnn;
pub mod realesrgan;
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
    let mut entries = discover_ncnn(&cfg.ml)?;
    let sd_dir = sd::model_dir(&cfg.ml.models_dir, cfg.sd.path.as_deref());
    if cfg.sd.path.is_some() || sd_dir.is_dir() {
        let device = device::select(cfg.ml.device)?;
        let tiling = Tiling::squares(cfg.ml.tile, cfg.ml.tile_overlap);
        let engine = sd::SdEngine::load(&sd_dir, &device, tiling, sd::vae_tiling(&cfg.sd))
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

/// The alias of the best real-world photo model loaded (`ml.photo_model`).
pub const PHOTO_ALIAS: &str = "photo";

/// The ncnn models (Real-ESRGAN, SPAN): every known `.param`/`.bin` pair in `ml.models_dir`;
/// the entries named `ml.photo_model` also answer to [`PHOTO_ALIAS`].
pub(crate) fn discover_ncnn(cfg: &MlConfig) -> Result<Vec<ModelEntry>, MlError> {
    let dir = cfg.models_dir.as_path();
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "no models folder: neural models are off");
        return Ok(Vec::new());
    }
    let stems = param_stems(dir)?;
    if stems.is_empty() {
        return Ok(Vec::new());
    }
    let device = device::select(cfg.device)?;
    let mut entries = Vec::new();
    for stem in stems {
        let Some(known) = realesrgan::Known::by_stem(&stem) else {
            tracing::warn!(file = %dir.join(format!("{stem}.param")).display(), "unknown ncnn model, ignored");
            continue;
        };
        let tiling = Some(gan_tiling(cfg, &(known.arch)()));
        let engine = realesrgan::RealEsrgan::load(dir, known, &device, tiling).map_err(|e| MlError::Load {
            path: dir.join(format!("{stem}.param")).display().to_string(),
            reason: e.to_string(),
        })?;
        tracing::info!(model = %crate::engine::Engine::id(&engine), "loaded");
        entries.push(ModelEntry {
            name: known.name.to_string(),
            aliases: known.aliases.iter().map(|a| a.to_string()).collect(),
            rank: known.rank,
            engine: Arc::new(engine),
            description: known.description.to_string(),
        });
    }
    let mut photo = entries.iter_mut().filter(|e| e.name == cfg.photo_model).peekable();
    if photo.peek().is_none() {
        tracing::info!(model = %cfg.photo_model, "ml.photo_model is not loaded: model={PHOTO_ALIAS} is unavailable");
    }
    photo.for_each(|e| e.aliases.push(PHOTO_ALIAS.into()));
    Ok(entries)
}

/// A GAN's tiling: whole images up to `ml.activation_budget` worth of input pixels for this
/// network, `ml.tile`² squares beyond (never below one square).
pub(crate) fn gan_tiling(cfg: &MlConfig, arch: &realesrgan::Arch) -> Tiling {
    let square = Tiling::squares(cfg.tile.max(1), cfg.tile_overlap);
    let budget_pixels = cfg.activation_budget / arch.activation_bytes_per_pixel().max(1);
    Tiling { max_pixels: budget_pixels.max(square.max_pixels), ..square }
}

/// Stems of the `.param` files directly in `dir`, sorted.
fn param_stems(dir: &Path) -> Result<Vec<String>, MlError> {
    let io = |e: std::io::Error| MlError::Load { path: dir.display().to_string(), reason: e.to_string() };
    let mut stems = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "param") && path.is_file() {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                stems.push(stem.to_string());
            }
        }
    }
    stems.sort();
    Ok(stems)

}
