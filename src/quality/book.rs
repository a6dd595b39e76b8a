//! The shadow runs' summary per (served model, candidate) pair: counts, and the spread of the
//! last [`KEPT`] runs' time ratios and scores (`GET /api/v1/shadow`).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::ShadowOutcome;
use crate::config::ShadowConfig;
use crate::imaging::consistency::Score;

/// Runs kept per pair for the spreads.
pub const KEPT: usize = 1024;

/// One finished shadow run.
#[derive(Clone, Copy, Debug)]
pub struct ShadowSample {
    /// Candidate forward-pass time over the served model's.
    pub time_ratio: f64,
    pub served: Score,
    pub candidate: Score,
    /// PSNR (dB, luma) between the two outputs at the smaller output's size.
    pub difference_psnr: f64,
}

#[derive(Default)]
pub struct ShadowBook {
    pairs: BTreeMap<(String, String), Pair>,
}

#[derive(Default)]
struct Pair {
    runs: u64,
    dropped: u64,
    failed: u64,
    recent: VecDeque<ShadowSample>,
}

/// The answer of `GET /api/v1/shadow`.
#[derive(Serialize, Debug)]
pub struct ShadowSummary {
    /// The configured candidate (empty: shadowing is off) and its sample share.
    pub candidate: String,
    pub sample: f64,
    pub pairs: Vec<PairSummary>,
}

#[derive(Serialize, Debug)]
pub struct PairSummary {
    pub served: String,
    pub candidate: String,
    /// Shadow runs finished, dropped (no room), failed.
    pub runs: u64,
    pub dropped: u64,
    pub failed: u64,
    /// Spreads over the last runs (at most `KEPT`).
    pub time_ratio: Spread,
    pub served_psnr: Spread,
    pub served_ssim: Spread,
    pub candidate_psnr: Spread,
    pub candidate_ssim: Spread,
    pub difference_psnr: Spread,
}

/// min / median / p90 / max / mean of a set of values; all null when it is empty.
#[derive(Serialize, Debug, Default, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub min: Option<f64>,
    pub median: Option<f64>,
    pub p90: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Spread {
    pub fn of(values: impl Iterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Spread {
            n: v.len(),
            min: Some(v[0]),
            median: Some(at(0.5)),
            p90: Some(at(0.9)),
            max: Some(v[v.len() - 1]),
            mean: Some(v.iter().sum::<f64>() / v.len() as f64),
        }
    }
}

impl ShadowBook {
    pub fn record(&mut self, served: &str, candidate: &str, outcome: ShadowOutcome) {
        let pair = self.pairs.entry((served.to_string(), candidate.to_string())).or_default();
        match outcome {
            ShadowOutcome::Done(sample) => {
                pair.runs += 1;
                if pair.recent.len() == KEPT {
                    pair.recent.pop_front();
                }
                pair.recent.push_back(sample);
            }
            ShadowOutcome::Dropped => pair.dropped += 1,
            ShadowOutcome::Failed => pair.failed += 1,
        }
    }

    pub fn summary(&self, cfg: &ShadowConfig) -> ShadowSummary {
        let pairs = self
            .pairs
            .iter()
            .map(|((served, candidate), p)| {
                let spread = |f: fn(&ShadowSample) -> f64| Spread::of(p.recent.iter().map(f));
                PairSummary {
                    served: served.clone(),
                    candidate: candidate.clone(),
                    runs: p.runs,
                    dropped: p.dropped,
                    failed: p.failed,
                    time_ratio: spread(|s| s.time_ratio),
                    served_psnr: spread(|s| s.served.psnr),
                    served_ssim: spread(|s| s.served.ssim),
                    candidate_psnr: spread(|s| s.candidate.psnr),
                    candidate_ssim: spread(|s| s.candidate.ssim),
                    difference_psnr: spread(|s| s.difference_psnr),
                }
            })
            .collect();
        ShadowSummary { candidate: cfg.model.clone(), sample: cfg.sample, pairs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_counts() {
        let mut book = ShadowBook::default();
        let score = |p: f64| Score { psnr: p, ssim: 0.9 };
        for (i, r) in [1.0, 2.0, 3.0, 4.0].into_iter().enumerate() {
            let sample = ShadowSample { time_ratio: r, served: score(30.0), candidate: score(20.0 + i as f64), difference_psnr: 25.0 };
            book.record("lanczos-x4", "cand", ShadowOutcome::Done(sample));
        }
        book.record("lanczos-x4", "cand", ShadowOutcome::Dropped);
        let s = book.summary(&ShadowConfig { model: "cand".into(), sample: 0.5, max_in_flight: 1 });
        let p = &s.pairs[0];
        assert_eq!((p.runs, p.dropped, p.failed), (4, 1, 0));
        assert_eq!(p.time_ratio.min, Some(1.0));
        assert_eq!(p.time_ratio.max, Some(4.0));
        assert_eq!(p.time_ratio.mean, Some(2.5));
        assert_eq!(p.candidate_psnr.median, Some(22.0));
        assert_eq!(Spread::of(std::iter::empty()), Spread::default());
    }
}
