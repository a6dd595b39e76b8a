//! The loaded models, by name and alias, and how a request's `model=` picks one.
//!
//! `model=auto` picks the highest-ranked loaded model that fits the request (prompt-guided models
//! only when a prompt is given) and that can finish in time: the warm-up measures each engine's
//! speed (`record_speed`), and a model whose estimate for the request's pixels exceeds the budget
//! (half the request deadline) yields to the next rank, down to the fastest one. A 451×300 photo
//! takes realesrgan-x4plus minutes on two CPU cores; `auto` must not answer 504 for it when a
//! model that fits exists. A named model is always honoured. A family with several scales (realesr-animevideov3 x2/x3/x4) is
//! several entries with one name: the one whose scale equals the request wins, else the smallest
//! larger one, else the largest (the plan resizes the rest of the way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Measured nanoseconds per input pixel (f64 bits), one per entry; 0 = not measured.
    speeds: Arc<Vec<AtomicU64>>,
}

impl Registry {
    pub fn new(entries: Vec<ModelEntry>) -> Self {
        let speeds = Arc::new(entries.iter().map(|_| AtomicU64::new(0)).collect());
        Self { entries, speeds }
    }

    /// Records entry `index`'s speed: `elapsed` for one pass over `pixels` input pixels.
    pub fn record_speed(&self, index: usize, elapsed: Duration, pixels: u64) {
        let ns_per_px = elapsed.as_nanos() as f64 / pixels.max(1) as f64;
        self.speeds[index].store(ns_per_px.to_bits(), Ordering::Relaxed);
    }

    /// Estimated time of entry `index` for `pixels` input pixels, if its speed was measured.
    pub fn estimate(&self, index: usize, pixels: u64) -> Option<Duration> {
        let ns_per_px = f64::from_bits(self.speeds[index].load(Ordering::Relaxed));
        (ns_per_px > 0.0).then(|| Duration::from_nanos((ns_per_px * pixels as f64) as u64))
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

    /// Picks the engine for a request, ignoring time (see `resolve_within`).
    pub fn resolve(&self, choice: &ModelChoice, scale: u32, has_prompt: bool) -> Result<Arc<dyn Engine>, ModelError> {
        self.resolve_within(choice, scale, has_prompt, 0, Duration::MAX)
    }

    /// Picks the engine for a request of `pixels` input pixels: a named model as asked; `auto`
    /// the highest rank whose estimate fits `budget` (unmeasured engines are assumed to fit),
    /// else the fastest measured candidate.
    pub fn resolve_within(
        &self,
        choice: &ModelChoice,
        scale: u32,
        has_prompt: bool,
        pixels: u64,
        budget: Duration,
    ) -> Result<Arc<dyn Engine>, ModelError> {
        let indexed: Vec<(usize, &ModelEntry)> = self.entries.iter().enumerate().collect();
        let picked = match choice {
            ModelChoice::Named(n) => {
                let named: Vec<_> =
                    indexed.into_iter().filter(|(_, e)| &e.name == n || e.aliases.iter().any(|a| a == n)).collect();
                pick_scale(&named, scale)
            }
            ModelChoice::Auto => {
                let fitting: Vec<_> = indexed.into_iter().filter(|(_, e)| has_prompt || !e.engine.prompt_guided()).collect();
                let mut ranks: Vec<u32> = fitting.iter().map(|(_, e)| e.rank).collect();
                ranks.sort_unstable_by(|a, b| b.cmp(a));
                ranks.dedup();
                let per_rank = ranks.iter().filter_map(|&r| {
                    let group: Vec<_> = fitting.iter().copied().filter(|(_, e)| e.rank == r).collect();
                    pick_scale(&group, scale)
                });
                let choices: Vec<_> = per_rank.collect();
                let in_time = |&&(i, _): &&(usize, &ModelEntry)| self.estimate(i, pixels).is_none_or(|t| t <= budget);
                choices.iter().find(in_time).or_else(|| choices.iter().min_by_key(|(i, _)| self.estimate(*i, pixels))).copied()
            }
        };
        picked.map(|(_, e)| e.engine.clone()).ok_or_else(|| ModelError::Unavailable {
            requested: match choice {
                ModelChoice::Auto => "auto".into(),
                ModelChoice::Named(n) => n.clone(),
            },
            available: self.names().join(", "),
        })
    }
}

fn pick_scale<'a>(candidates: &[(usize, &'a ModelEntry)], scale: u32) -> Option<(usize, &'a ModelEntry)> {
    let exact = candidates.iter().find(|(_, e)| e.engine.scale() == scale);
    let larger = candidates.iter().filter(|(_, e)| e.engine.scale() > scale).min_by_key(|(_, e)| e.engine.scale());
    let largest = candidates.iter().max_by_key(|(_, e)| e.engine.scale());
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
    fn auto_yields_to_a_faster_rank_when_the_estimate_misses_the_budget() {
        let r = registry();
        // ns per pixel: lanczos 10, animevideov3 1_000, x4plus 100_000 (entry order of registry()).
        for (i, ns) in [(0, 10), (1, 10), (2, 1_000), (3, 1_000), (4, 100_000)] {
            r.record_speed(i, Duration::from_nanos(ns * 100), 100);
        }
        let pick = |px: u64, budget_s: u64| {
            r.resolve_within(&ModelChoice::Auto, 4, false, px, Duration::from_secs(budget_s)).unwrap().id().name.clone()
        };
        assert_eq!(pick(100 * 100, 10), "realesrgan-x4plus-x4", "1 s estimated: fits");
        assert_eq!(pick(450 * 300, 10), "realesr-animevideov3-x4", "13.5 s for x4plus: too slow");
        assert_eq!(pick(20_000 * 20_000, 10), "lanczos-x4", "only lanczos fits (4 s)");
        assert_eq!(pick(20_000 * 20_000, 1), "lanczos-x4", "nothing fits: the fastest");
        // A named model is honoured whatever its estimate.
        let named = r.resolve_within(&ModelChoice::Named("realesrgan".into()), 4, false, 20_000 * 20_000, Duration::from_secs(1));
        assert_eq!(named.unwrap().id().name, "realesrgan-x4plus-x4");
        // Unmeasured engines are assumed to fit.
        assert_eq!(registry().resolve_within(&ModelChoice::Auto, 4, false, u64::MAX, Duration::ZERO).unwrap().id().name, "realesrgan-x4plus-x4");
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
