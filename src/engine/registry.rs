//! The loaded models, by name and alias, and how a request's `model=` picks one.
//!
//! `model=auto` picks the highest-ranked loaded model that fits the request (prompt-guided models
//! only when a prompt is given). A family with several scales (realesr-animevideov3 x2/x3/x4) is
//! several entries with one name: the one whose scale equals the request wins, else the smallest
//! larger one, else the largest (the plan resizes the rest of the way).

use std::sync::Arc;

use super::Engine;
use crate::error::{Classify, ErrorClass};
use crate::params::ModelChoice;

/// One loaded model.
#[derive(Clone)]
pub struct ModelEntry {
    /// Name used in URLs, e.g. `realesrgan-x4plus` (file stem without a `-xN` suffix).
    pub name: String,
    /// Short names, e.g. `realesrgan`.
    pub aliases: Vec<String>,
    /// Preference for `model=auto`; higher wins.
    pub rank: u32,
    pub engine: Arc<dyn Engine>,
    /// One line for `/api/v1/model-info`.
    pub description: String,
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum ModelError {
    #[error("model `{requested}` is not available; available models: {available}")]
    Unavailable { requested: String, available: String },
}

impl Classify for ModelError {
    fn class(&self) -> ErrorClass {
        ErrorClass::BadRequest
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    entries: Vec<ModelEntry>,
}

impl Registry {
    pub fn new(entries: Vec<ModelEntry>) -> Self {
        Self { entries }
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// Distinct model names, in rank order (for error messages and model-info).
    pub fn names(&self) -> Vec<String> {
        let mut sorted: Vec<&ModelEntry> = self.entries.iter().collect();
        sorted.sort_by(|a, b| b.rank.cmp(&a.rank).then(a.name.cmp(&b.name)));
        let mut names: Vec<String> = Vec::new();
        for e in sorted {
            if !names.contains(&e.name) {
                names.push(e.name.clone());
            }
        }
        names
    }

    /// Picks the engine for a request.
    pub fn resolve(&self, choice: &ModelChoice, scale: u32, has_prompt: bool) -> Result<Arc<dyn Engine>, ModelError> {
        let candidates: Vec<&ModelEntry> = match choice {
            ModelChoice::Named(n) => {
                self.entries.iter().filter(|e| &e.name == n || e.aliases.iter().any(|a| a == n)).collect()
            }
            ModelChoice::Auto => {
                let fitting: Vec<&ModelEntry> =
                    self.entries.iter().filter(|e| has_prompt || !e.engine.prompt_guided()).collect();
                let best = fitting.iter().map(|e| e.rank).max();
                fitting.into_iter().filter(|e| Some(e.rank) == best).collect()
            }
        };
        pick_scale(&candidates, scale).map(|e| e.engine.clone()).ok_or_else(|| ModelError::Unavailable {
            requested: match choice {
                ModelChoice::Auto => "auto".into(),
                ModelChoice::Named(n) => n.clone(),
            },
            available: self.names().join(", "),
        })
    }
}

fn pick_scale<'a>(candidates: &[&'a ModelEntry], scale: u32) -> Option<&'a ModelEntry> {
    let exact = candidates.iter().find(|e| e.engine.scale() == scale);
    let larger = candidates.iter().filter(|e| e.engine.scale() > scale).min_by_key(|e| e.engine.scale());
    let largest = candidates.iter().max_by_key(|e| e.engine.scale());
    exact.or(larger).or(largest).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineId, GenParams, InferError, RunContext, Tile, Tiling};

    struct Fake {
        id: EngineId,
        scale: u32,
        prompt: bool,
    }

    impl Engine for Fake {
        fn id(&self) -> &EngineId {
            &self.id
        }
        fn scale(&self) -> u32 {
            self.scale
        }
        fn tiling(&self) -> Option<Tiling> {
            None
        }
        fn prompt_guided(&self) -> bool {
            self.prompt
        }
        fn upscale(&self, _: &[Tile], _: &[GenParams], _: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
            Err(InferError::Model("fake".into()))
        }
    }

    fn entry(name: &str, alias: &str, rank: u32, scale: u32, prompt: bool) -> ModelEntry {
        ModelEntry {
            name: name.into(),
            aliases: vec![alias.into()],
            rank,
            engine: Arc::new(Fake { id: EngineId::new(format!("{name}-x{scale}"), "0"), scale, prompt }),
            description: String::new(),
        }
    }

    fn registry() -> Registry {
        Registry::new(vec![
            entry("lanczos", "lz", 0, 2, false),
            entry("lanczos", "lz", 0, 4, false),
            entry("realesr-animevideov3", "animevideo", 5, 2, false),
            entry("realesr-animevideov3", "animevideo", 5, 4, false),
            entry("realesrgan-x4plus", "realesrgan", 10, 4, false),
            entry("sd-x4", "sd", 20, 4, true),
        ])
    }

    #[test]
    fn auto_prefers_rank_and_skips_prompt_models_without_prompt() {
        let r = registry();
        assert_eq!(r.resolve(&ModelChoice::Auto, 4, false).unwrap().id().name, "realesrgan-x4plus-x4");
        assert_eq!(r.resolve(&ModelChoice::Auto, 4, true).unwrap().id().name, "sd-x4-x4");
    }

    #[test]
    fn scale_picks_exact_then_larger() {
        let r = registry();
        let n = |s: &str| ModelChoice::Named(s.into());
        assert_eq!(r.resolve(&n("animevideo"), 2, false).unwrap().scale(), 2);
        assert_eq!(r.resolve(&n("animevideo"), 3, false).unwrap().scale(), 4);
        assert_eq!(r.resolve(&n("realesrgan"), 2, false).unwrap().scale(), 4);
    }

    #[test]
    fn unavailable_model_lists_the_available_ones() {
        let e = registry().resolve(&ModelChoice::Named("nope".into()), 4, false).err().unwrap();
        let msg = e.to_string();
        assert!(msg.contains("nope") && msg.contains("realesrgan-x4plus") && msg.contains("lanczos"), "{msg}");
    }
}
