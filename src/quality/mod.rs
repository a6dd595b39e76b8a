//! Knowing what is served: the consistency score's bookkeeping, the quality gate's verdicts,
//! which sources a canary model serves and which misses a candidate model shadows, and the
//! shadow runs' summary (`GET /api/v1/shadow`). The score itself is `imaging::consistency`; the
//! image path acts on the decisions made here (`miss::compute`, `shadow.rs`).
//!
//! Canary and shadow choose sources by a keyed hash of the source bytes' hash
//! ([`position`]), so the choice is stable, the same on every replica, and independent between
//! the two.

pub mod book;
pub mod metrics;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{CanaryConfig, Minimum, QualityConfig, ShadowConfig};
use crate::engine::registry::Registry;
use crate::engine::Engine;
use crate::imaging::consistency::Score;
use crate::key::SourceHash;
use book::{ShadowBook, ShadowSample, ShadowSummary};
use metrics::QualityMetrics;

/// Who a model output is for: `stable` (the model `model=auto` or the URL picked), `canary`
/// (`[ml.canary]`, serving its share of sources), `shadow` (`[ml.shadow]`, never served).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    #[default]
    Stable,
    Canary,
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::Canary => "canary",
            Role::Shadow => "shadow",
        }
    }
}

/// What the quality gate says about one output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At or above the model's minimum: serve it.
    Pass,
    /// Below: run the next model down instead.
    Fallback,
    /// Below, and no model is left below it: serve it anyway (counted).
    ServedBelow,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fallback => "fallback",
            Verdict::ServedBelow => "served_below",
        }
    }
}

/// Where a source falls in `[0, 1)` for the purpose `salt` (`canary`, `shadow`).
pub fn position(source: &SourceHash, salt: &str) -> f64 {
    let h = blake3::Hasher::new_derive_key(&format!("upres quality sample {salt}")).update(&source.0).finalize();
    let n = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// The model label for metrics and the shadow summary: the engine id's name (`lanczos-x4`,
/// `realesrgan-x4plus`), without the weights digest.
pub fn label(engine: &dyn Engine) -> &str {
    &engine.id().name
}

pub struct Quality {
    gate: QualityConfig,
    shadow: ShadowConfig,
    canary: CanaryConfig,
    pub metrics: QualityMetrics,
    book: parking_lot::Mutex<ShadowBook>,
    shadows_in_flight: Arc<AtomicUsize>,
}

impl Quality {
    /// `metrics`: `telemetry::Metrics::quality`, registered with the server's other metrics.
    pub fn new(gate: QualityConfig, shadow: ShadowConfig, canary: CanaryConfig, metrics: QualityMetrics) -> Self {
        Self {
            gate,
            shadow,
            canary,
            metrics,
            book: parking_lot::Mutex::new(ShadowBook::default()),
            shadows_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Records an output's score in `upres_output_consistency`.
    pub fn observe(&self, engine: &dyn Engine, role: Role, score: Score) {
        let m = &self.metrics.consistency;
        m.with_label_values(&[label(engine), "psnr", role.as_str()]).observe(score.psnr);
        m.with_label_values(&[label(engine), "ssim", role.as_str()]).observe(score.ssim);
    }

    /// The minimum `engine` must score: its entry in `[ml.quality.models]` (by name, alias or
    /// id name), else the global one.
    pub fn minimum(&self, registry: &Registry, engine: &dyn Engine) -> Minimum {
        let entry = registry.entries().iter().find(|e| e.engine.id() == engine.id());
        let names = entry.into_iter().flat_map(|e| std::iter::once(e.name.as_str()).chain(e.aliases.iter().map(String::as_str)));
        self.gate.minimum(names.chain(std::iter::once(label(engine))))
    }

    /// The gate's verdict on `engine`'s output (counted in `upres_quality_gate_total`);
    /// `below_exists`: a model is left to fall back to.
    pub fn judge(&self, registry: &Registry, engine: &dyn Engine, role: Role, score: Score, below_exists: bool) -> Verdict {
        let min = self.minimum(registry, engine);
        let verdict = if score.psnr >= min.min_psnr && score.ssim >= min.min_ssim {
            Verdict::Pass
        } else if below_exists {
            Verdict::Fallback
        } else {
            Verdict::ServedBelow
        };
        self.metrics.gate.with_label_values(&[label(engine), verdict.as_str(), role.as_str()]).inc();
        verdict
    }

    /// The canary model's name when `source` is in its share.
    pub fn canary_for(&self, source: &SourceHash) -> Option<&str> {
        let c = &self.canary;
        (!c.model.is_empty() && position(source, "canary") < c.fraction).then_some(c.model.as_str())
    }

    /// The candidate model's name when `source` is in the shadow sample.
    pub fn shadow_for(&self, source: &SourceHash) -> Option<&str> {
        let s = &self.shadow;
        (!s.model.is_empty() && position(source, "shadow") < s.sample).then_some(s.model.as_str())
    }

    /// A place for one shadow run, if fewer than `max_in_flight` are running.
    pub fn reserve_shadow(&self) -> Option<ShadowSlot> {
        let max = self.shadow.max_in_flight;
        self.shadows_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ShadowSlot(self.shadows_in_flight.clone()))
    }

    /// A shadow run ended: in the summary and the metrics.
    pub fn record_shadow(&self, served: &str, candidate: &str, outcome: ShadowOutcome) {
        self.metrics.shadow_runs.with_label_values(&[served, candidate, outcome.as_str()]).inc();
        if let ShadowOutcome::Done(sample) = &outcome {
            self.metrics.shadow_time_ratio.with_label_values(&[served, candidate]).observe(sample.time_ratio);
            self.metrics.shadow_difference.with_label_values(&[served, candidate]).observe(sample.difference_psnr);
        }
        self.book.lock().record(served, candidate, outcome);
    }

    /// `GET /api/v1/shadow`.
    pub fn shadow_summary(&self) -> ShadowSummary {
        self.book.lock().summary(&self.shadow)
    }
}

/// How a shadow run ended.
#[derive(Clone, Debug)]
pub enum ShadowOutcome {
    Done(ShadowSample),
    /// Not run: no room (served work first) or `max_in_flight` reached.
    Dropped,
    Failed,
}

impl ShadowOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ShadowOutcome::Done(_) => "done",
            ShadowOutcome::Dropped => "dropped",
            ShadowOutcome::Failed => "failed",
        }
    }
}

/// One of the `max_in_flight` shadow places, given back on drop.
pub struct ShadowSlot(Arc<AtomicUsize>);

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_stable_uniform_and_independent_per_purpose() {
        let hashes: Vec<SourceHash> = (0..2000u32).map(|i| SourceHash::of(&i.to_le_bytes())).collect();
        let share = |salt: &str, f: f64| hashes.iter().filter(|h| position(h, salt) < f).count();
        assert_eq!(position(&hashes[0], "canary"), position(&hashes[0], "canary"));
        let canary = share("canary", 0.1);
        assert!((150..250).contains(&canary), "{canary} of 2000 in a 10% share");
        let both = hashes.iter().filter(|h| position(h, "canary") < 0.1 && position(h, "shadow") < 0.1).count();
        assert!(both < 50, "canary and shadow samples overlap like independent draws: {both}");
    }

    #[test]
    fn shadow_places_are_bounded() {
        let q = Quality::new(
            QualityConfig::default(),
            ShadowConfig { model: "x".into(), sample: 1.0, max_in_flight: 1 },
            CanaryConfig::default(),
            QualityMetrics::new(),
        );
        let first = q.reserve_shadow().expect("one place");
        assert!(q.reserve_shadow().is_none());
        drop(first);
        assert!(q.reserve_shadow().is_some());
    }
}
