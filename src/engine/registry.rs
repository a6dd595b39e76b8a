//! The loaded models, by name and alias, and how a request's `model=` picks one.
//!
//! `model=auto` is decided by the request and the config only, never by one replica's speed or
//! load, so every replica with the same config picks the same model for the same URL: with a
//! prompt, the highest-ranked prompt-guided model; otherwise the first `engine.auto` rule whose
//! `max_input_pixels` covers the source and whose `content`, if any, is the source's (photo or
//! illustration, `imaging::content`, decided from its pixels) (a rule naming a model that is not loaded here goes on
//! to the next rule, or is refused with 503 under `engine.auto_unavailable = "refuse"`); no rule
//! left: the highest rank. A named model is always honoured. A family with several scales
//! (realesr-animevideov3 x2/x3/x4) is several entries with one name: the one whose scale
//! equals the wanted scale wins, else the smallest larger one, else the largest (the plan
//! resizes the rest of the way). A family with denoise levels (Real-CUGAN) names one entry per
//! level, `<name>-<level suffix>`: `denoise=` picks among them ([`with_denoise`]).

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Engine;
use crate::config::{AutoRule, AutoUnavailable, Content};
use crate::error::{Classify, ErrorClass};
use crate::params::{Denoise, ModelChoice};

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
    #[error("model=auto chose `{model}`, which this replica has not loaded; retry on another replica")]
    AutoNotLoaded { model: String },
    #[error("denoise= needs a named model with denoise levels, e.g. model=cugan")]
    DenoiseNeedsModel,
}

/// The model a request names once `denoise=` is applied: `model=cugan/denoise=2` is the entry
/// `cugan-denoise2x` (an alias of `realcugan-denoise2x`); a model without that level is then
/// unavailable (400, listing the models).
pub fn with_denoise(model: &ModelChoice, denoise: Option<Denoise>) -> Result<ModelChoice, ModelError> {
    match (model, denoise) {
        (m, None) => Ok(m.clone()),
        (ModelChoice::Auto, Some(_)) => Err(ModelError::DenoiseNeedsModel),
        (ModelChoice::Named(n), Some(d)) => Ok(ModelChoice::Named(format!("{n}-{}", d.suffix()))),
    }
}

impl Classify for ModelError {
    fn class(&self) -> ErrorClass {
        match self {
            ModelError::Unavailable { .. } | ModelError::DenoiseNeedsModel => ErrorClass::BadRequest,
            ModelError::AutoNotLoaded { .. } => ErrorClass::Overloaded,
        }
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    entries: Vec<ModelEntry>,
    /// Measured nanoseconds per input pixel (f64 bits), one per entry; 0 = not measured. Read
    /// by the first-hit budget (`preview`) to decide whether to wait, never to choose a model.
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

    /// Picks the engine for a request without `auto` rules (the highest rank).
    pub fn resolve(&self, choice: &ModelChoice, scale: u32, has_prompt: bool) -> Result<Arc<dyn Engine>, ModelError> {
        self.pick(choice, scale, has_prompt, 0, &[], AutoUnavailable::Next)
    }

    /// Picks the engine for a request: a named model as asked, at the scale nearest `scale`
    /// from above; `auto` by `rules` on the source's `input_pixels` (module docs), skipping
    /// rules that name a content kind.
    pub fn pick(
        &self,
        choice: &ModelChoice,
        scale: u32,
        has_prompt: bool,
        input_pixels: u64,
        rules: &[AutoRule],
        unavailable: AutoUnavailable,
    ) -> Result<Arc<dyn Engine>, ModelError> {
        self.pick_for(choice, scale, has_prompt, input_pixels, None, rules, unavailable)
    }

    /// As `pick`, with the source's content kind when it is known (rules naming another kind,
    /// or any kind when it is not known, are skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn pick_for(
        &self,
        choice: &ModelChoice,
        scale: u32,
        has_prompt: bool,
        input_pixels: u64,
        content: Option<Content>,
        rules: &[AutoRule],
        unavailable: AutoUnavailable,
    ) -> Result<Arc<dyn Engine>, ModelError> {
        let indexed: Vec<(usize, &ModelEntry)> = self.entries.iter().enumerate().collect();
        let named = |n: &str| -> Vec<(usize, &ModelEntry)> {
            indexed.iter().copied().filter(|(_, e)| e.name == n || e.aliases.iter().any(|a| a == n)).collect()
        };
        let picked = match choice {
            ModelChoice::Named(n) => pick_scale(&named(n), scale),
            ModelChoice::Auto => {
                let guided: Vec<_> = indexed.iter().copied().filter(|(_, e)| e.engine.prompt_guided()).collect();
                let by_rule = rules
                    .iter()
                    .filter(|r| r.max_input_pixels.is_none_or(|max| input_pixels <= max))
                    .filter(|r| r.content.is_none_or(|c| Some(c) == content));
                let mut from_rules = None;
                if !has_prompt || guided.is_empty() {
                    for rule in by_rule {
                        match pick_scale(&named(&rule.model), scale) {
                            Some(p) => {
                                from_rules = Some(p);
                                break;
                            }
                            None if unavailable == AutoUnavailable::Refuse => {
                                return Err(ModelError::AutoNotLoaded { model: rule.model.clone() });
                            }
                            None => {}
                        }
                    }
                }
                from_rules.or_else(|| self.highest_rank(&indexed, scale, has_prompt))
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

    /// Where an output of `engine` that the quality gate refused falls back to: the
    /// highest-ranked model ranked below it (never a prompt-guided one), at the scale nearest
    /// `scale` from above; Lanczos (rank 0) last. `None` when nothing ranks below it.
    pub fn below(&self, engine: &dyn Engine, scale: u32) -> Option<Arc<dyn Engine>> {
        let rank = self.entries.iter().find(|e| e.engine.id() == engine.id())?.rank;
        let indexed: Vec<(usize, &ModelEntry)> =
            self.entries.iter().enumerate().filter(|(_, e)| e.rank < rank && !e.engine.prompt_guided()).collect();
        let top = indexed.iter().map(|(_, e)| e.rank).max()?;
        // One model of that rank (the first loaded), at its nearest scale.
        let name = &indexed.iter().find(|(_, e)| e.rank == top)?.1.name;
        let group: Vec<_> = indexed.iter().copied().filter(|(_, e)| &e.name == name).collect();
        pick_scale(&group, scale).map(|(_, e)| e.engine.clone())
    }

    /// The highest-ranked model (prompt-guided ones only with a prompt), at its nearest scale.
    fn highest_rank<'a>(
        &self,
        indexed: &[(usize, &'a ModelEntry)],
        scale: u32,
        has_prompt: bool,
    ) -> Option<(usize, &'a ModelEntry)> {
        let fitting: Vec<_> = indexed.iter().copied().filter(|(_, e)| has_prompt || !e.engine.prompt_guided()).collect();
        let top = fitting.iter().map(|(_, e)| e.rank).max()?;
        let group: Vec<_> = fitting.into_iter().filter(|(_, e)| e.rank == top).collect();
        pick_scale(&group, scale)
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
    fn auto_follows_the_rules_on_input_pixels_never_measured_speed() {
        let r = registry();
        // A measured speed (as warm-up records it) must not change the choice.
        for i in 0..6 {
            r.record_speed(i, Duration::from_secs(1000), 1);
        }
        let rules = vec![
            AutoRule { max_input_pixels: Some(100_000), content: None, model: "realesrgan".into() },
            AutoRule { max_input_pixels: Some(1_000_000), content: None, model: "not-loaded".into() },
            AutoRule { max_input_pixels: None, content: None, model: "animevideo".into() },
        ];
        let pick = |px: u64, scale: u32, how| r.pick(&ModelChoice::Auto, scale, false, px, &rules, how).map(|e| e.id().name.clone());
        assert_eq!(pick(100_000, 4, AutoUnavailable::Next).unwrap(), "realesrgan-x4plus-x4");
        assert_eq!(pick(100_001, 4, AutoUnavailable::Next).unwrap(), "realesr-animevideov3-x4", "skips the unloaded model");
        assert_eq!(pick(100_001, 2, AutoUnavailable::Next).unwrap(), "realesr-animevideov3-x2");
        let refused = pick(100_001, 4, AutoUnavailable::Refuse).unwrap_err();
        assert_eq!(refused.class(), ErrorClass::Overloaded, "{refused}");
        assert_eq!(pick(5_000_000, 4, AutoUnavailable::Refuse).unwrap(), "realesr-animevideov3-x4");
        // A prompt goes to the prompt-guided model whatever the rules say.
        assert_eq!(r.pick(&ModelChoice::Auto, 4, true, 10, &rules, AutoUnavailable::Next).unwrap().id().name, "sd-x4-x4");
        // No rule: the highest rank.
        assert_eq!(r.pick(&ModelChoice::Auto, 4, false, 10, &[], AutoUnavailable::Next).unwrap().id().name, "realesrgan-x4plus-x4");
        // A named model is honoured whatever the rules say.
        let named = r.pick(&ModelChoice::Named("lz".into()), 4, false, 10, &rules, AutoUnavailable::Refuse);
        assert_eq!(named.unwrap().id().name, "lanczos-x4");
    }

    #[test]
    fn below_walks_down_the_ranks_to_lanczos() {
        let r = registry();
        let top = r.resolve(&ModelChoice::Named("realesrgan".into()), 4, false).unwrap();
        let next = r.below(&*top, 4).unwrap();
        assert_eq!(next.id().name, "realesr-animevideov3-x4");
        let last = r.below(&*next, 2).unwrap();
        assert_eq!(last.id().name, "lanczos-x2");
        assert!(r.below(&*last, 2).is_none(), "nothing ranks below Lanczos");
        let sd = r.resolve(&ModelChoice::Auto, 4, true).unwrap();
        assert_eq!(r.below(&*sd, 4).unwrap().id().name, "realesrgan-x4plus-x4", "prompt-guided models are skipped");
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
