//! The quality metrics (README "Operating quality" lists them with the alerts over them).
//! Labels are closed sets: model names are the loaded models' ids, `metric` is `psnr`|`ssim`,
//! `role` is `stable`|`canary`|`shadow`, outcomes are listed on each metric.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Registered by `telemetry::Metrics::new` (so `series_names` lists them); clones share state.
#[derive(Clone)]
pub struct QualityMetrics {
    /// `upres_output_consistency{model,metric,role}`: every model output's score (PSNR in dB,
    /// SSIM 0..1, one histogram with buckets for both).
    pub consistency: HistogramVec,
    /// `upres_quality_gate_total{model,outcome,role}`: `pass` (served), `fallback` (below the
    /// minimum: the next model down ran), `served_below` (below, but no model is left below).
    pub gate: IntCounterVec,
    /// `upres_shadow_runs_total{served,candidate,outcome}`: `done`, `dropped` (no room: the
    /// queue was busy or `max_in_flight` shadows were running), `failed`.
    pub shadow_runs: IntCounterVec,
    /// `upres_shadow_time_ratio{served,candidate}`: the candidate's forward-pass time over the
    /// served model's, per shadowed miss.
    pub shadow_time_ratio: HistogramVec,
    /// `upres_shadow_difference_psnr{served,candidate}`: PSNR (dB, luma) between the two outputs.
    pub shadow_difference: HistogramVec,
}

impl QualityMetrics {
    /// The metrics, not yet registered (`collectors`).
    pub fn new() -> Self {
        let score_buckets = vec![
            0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0, 10.0, 15.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0,
            36.0, 38.0, 40.0, 45.0, 50.0, 60.0, 100.0,
        ];
        let consistency = HistogramVec::new(
            HistogramOpts::new("upres_output_consistency", "Model output consistency with its input (PSNR dB / SSIM on luma)")
                .buckets(score_buckets),
            &["model", "metric", "role"],
        )
        .expect("valid metric");
        let gate = IntCounterVec::new(
            Opts::new("upres_quality_gate_total", "Quality-gate decisions on model outputs"),
            &["model", "outcome", "role"],
        )
        .expect("valid metric");
        let shadow_runs = IntCounterVec::new(
            Opts::new("upres_shadow_runs_total", "Shadow runs of a candidate model, by outcome"),
            &["served", "candidate", "outcome"],
        )
        .expect("valid metric");
        let shadow_time_ratio = HistogramVec::new(
            HistogramOpts::new("upres_shadow_time_ratio", "Candidate forward-pass time over the served model's")
                .buckets(vec![0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 64.0]),
            &["served", "candidate"],
        )
        .expect("valid metric");
        let shadow_difference = HistogramVec::new(
            HistogramOpts::new("upres_shadow_difference_psnr", "PSNR (dB, luma) between the candidate's and the served output")
                .buckets(vec![10.0, 15.0, 20.0, 25.0, 28.0, 30.0, 32.0, 35.0, 40.0, 50.0, 100.0]),
            &["served", "candidate"],
        )
        .expect("valid metric");
        Self { consistency, gate, shadow_runs, shadow_time_ratio, shadow_difference }
    }

    /// Each metric, for a registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.consistency.clone()),
            Box::new(self.gate.clone()),
            Box::new(self.shadow_runs.clone()),
            Box::new(self.shadow_time_ratio.clone()),
            Box::new(self.shadow_difference.clone()),
        ]
    }
}

impl Default for QualityMetrics {
    fn default() -> Self {
        Self::new()
    }
}
