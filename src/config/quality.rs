//! `[ml.quality]`, `[ml.shadow]`, `[ml.canary]`: which outputs are served (a minimum consistency
//! score per model), which candidate model runs beside the served one, and which model serves a
//! fixed share of sources. What the score is: `imaging::consistency`; what is done with these:
//! `quality`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The quality gate: an output scoring below its model's minimum is not served; the request
/// falls back to the next model down (Lanczos last).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Least PSNR (dB, luma, output area-averaged back to the input) for every model; 0 = none.
    pub min_psnr: f64,
    /// Least SSIM (luma, as above) for every model; 0 = none.
    pub min_ssim: f64,
    /// Per-model minimums by model name (as in `model=`), replacing the two above for it.
    pub models: BTreeMap<String, Minimum>,
}

/// One model's minimum score; 0 = no minimum on that measure.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Minimum {
    pub min_psnr: f64,
    pub min_ssim: f64,
}

impl QualityConfig {
    /// The minimum for a model known by `names` (its name and aliases).
    pub fn minimum<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> Minimum {
        names
            .find_map(|n| self.models.get(n).copied())
            .unwrap_or(Minimum { min_psnr: self.min_psnr, min_ssim: self.min_ssim })
    }
}

/// A candidate model run in the background on a sample of misses; its output is never served.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// The candidate (a model name as in `model=`); empty = no shadow runs.
    pub model: String,
    /// Share of sources (by a hash of their bytes, so the same ones every time) shadowed, 0..1.
    pub sample: f64,
    /// Shadow runs queued or running at once; more are dropped (counted).
    pub max_in_flight: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self { model: String::new(), sample: 0.05, max_in_flight: 1 }
    }
}

/// A model serving a fixed share of sources in place of the one `model=auto` picks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// The canary (a model name as in `model=`); empty = no canary.
    pub model: String,
    /// Share of sources (by a hash of their bytes, the same on every replica) it serves, 0..1.
    pub fraction: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self { model: String::new(), fraction: 0.1 }
    }
}

/// Range checks for `Config::validate`.
pub(super) fn validate(q: &QualityConfig, s: &ShadowConfig, c: &CanaryConfig) -> Result<(), String> {
    let all = std::iter::once(Minimum { min_psnr: q.min_psnr, min_ssim: q.min_ssim }).chain(q.models.values().copied());
    for m in all {
        if !(0.0..=100.0).contains(&m.min_psnr) || !(0.0..=1.0).contains(&m.min_ssim) {
            return Err("ml.quality: min_psnr must be within 0..100 dB and min_ssim within 0..1".into());
        }
    }
    if !(0.0..=1.0).contains(&s.sample) || !(0.0..=1.0).contains(&c.fraction) {
        return Err("ml.shadow.sample and ml.canary.fraction must be within 0..1".into());
    }
    Ok(())
}
