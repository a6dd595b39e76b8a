//! The two schedulers of the x4 pipeline, read from their `scheduler_config.json`:
//! DDIM (denoising; v-prediction for x4, eta = 0) and DDPM (only `add_noise`, for the low-res
//! noise augmentation). The noise schedule is computed in f32 like torch so coefficients match
//! diffusers bit for bit or nearly.

use candle_core::{Result, Tensor};

/// Why a scheduler config could not be read or used.
#[derive(thiserror::Error, Debug)]
pub enum SchedulerError {
    #[error("{path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: std::path::PathBuf, source: serde_json::Error },
    /// A setting these schedulers do not implement.
    #[error("{0} is not supported")]
    Unsupported(String),
}

/// The fields of a diffusers scheduler config that these schedulers read.
#[derive(serde::Deserialize, Clone, Debug)]
pub struct SchedulerConfig {
    #[serde(default = "n_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "b0")]
    pub beta_start: f64,
    #[serde(default = "b1")]
    pub beta_end: f64,
    #[serde(default = "linear")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "eps")]
    pub prediction_type: String,
    #[serde(default = "leading")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub thresholding: bool,
}

fn n_train() -> usize {
    1000
}
fn b0() -> f64 {
    1e-4
}
fn b1() -> f64 {
    0.02
}
fn linear() -> String {
    "linear".into()
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn eps() -> String {
    "epsilon".into()
}
fn leading() -> String {
    "leading".into()
}

/// torch.linspace in f32 (first half from the start, second half from the end).
fn linspace_f32(a: f32, b: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f32;
    (0..n).map(|i| if i < n / 2 { a + step * i as f32 } else { b - step * (n - 1 - i) as f32 }).collect()
}

impl SchedulerConfig {
    pub fn from_file(path: &std::path::Path) -> std::result::Result<Self, SchedulerError> {
        let s = std::fs::read_to_string(path).map_err(|source| SchedulerError::Read { path: path.into(), source })?;
        serde_json::from_str(&s).map_err(|source| SchedulerError::Json { path: path.into(), source })
    }

    /// ᾱ_t for t in 0..num_train_timesteps, in f32 as diffusers computes it.
    pub fn alphas_cumprod(&self) -> std::result::Result<Vec<f32>, SchedulerError> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match (&self.trained_betas, self.beta_schedule.as_str()) {
            (Some(b), _) => b.iter().map(|&x| x as f32).collect(),
            (None, "linear") => linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
            (None, "scaled_linear") => {
                linspace_f32((self.beta_start as f32).sqrt(), (self.beta_end as f32).sqrt(), n).iter().map(|x| x * x).collect()
            }
            (None, other) => return Err(SchedulerError::Unsupported(format!("beta_schedule {other:?}"))),
        };
        let mut acc = 1f32;
        Ok(betas.iter().map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prediction {
    Epsilon,
    V,
    Sample,
}

/// DDIM with eta = 0.
#[derive(Clone, Debug)]
pub struct Ddim {
    ac: Vec<f32>,
    final_ac: f32,
    pred: Prediction,
    clip: Option<f64>,
    cfg: SchedulerConfig,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig) -> std::result::Result<Self, SchedulerError> {
        if cfg.thresholding {
            return Err(SchedulerError::Unsupported("DDIM thresholding".into()));
        }
        let ac = cfg.alphas_cumprod()?;
        let pred = match cfg.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            "sample" => Prediction::Sample,
            o => return Err(SchedulerError::Unsupported(format!("prediction_type {o:?}"))),
        };
        let final_ac = if cfg.set_alpha_to_one { 1.0 } else { ac[0] };
        Ok(Self { ac, final_ac, pred, clip: cfg.clip_sample.then_some(cfg.clip_sample_range), cfg: cfg.clone() })
    }

    /// The timesteps for `steps` inference steps, high to low.
    pub fn timesteps(&self, steps: usize) -> Vec<usize> {
        let n = self.cfg.num_train_timesteps;
        let steps = steps.clamp(1, n);
        match self.cfg.timestep_spacing.as_str() {
            "trailing" => {
                let r = n as f64 / steps as f64;
                (0..steps).map(|i| ((n as f64 - i as f64 * r).round() as usize).saturating_sub(1)).collect()
            }
            "linspace" => (0..steps)
                .rev()
                .map(|i| (i as f64 * (n - 1) as f64 / (steps - 1).max(1) as f64).round() as usize)
                .collect(),
            _ => (0..steps).rev().map(|i| (i * (n / steps) + self.cfg.steps_offset).min(n - 1)).collect(),
        }
    }

    /// One DDIM step from `t` with `steps` total inference steps: returns x_{t-Δ}.
    pub fn step(&self, model_out: &Tensor, t: usize, steps: usize, sample: &Tensor) -> Result<Tensor> {
        let prev = t as i64 - (self.cfg.num_train_timesteps / steps.max(1)) as i64;
        let a_t = self.ac[t];
        let a_p = if prev >= 0 { self.ac[prev as usize] } else { self.final_ac };
        let (sa, sb) = (a_t.sqrt() as f64, (1.0 - a_t).sqrt() as f64);
        let (mut x0, eps) = match self.pred {
            Prediction::V => ((sample * sa)? - (model_out * sb)?, ((model_out * sa)? + (sample * sb)?)?),
            Prediction::Epsilon => {
                let x0 = ((sample - (model_out * sb)?)? / sa)?;
                (Ok(x0), model_out.clone())
            }
            Prediction::Sample => {
                let eps = ((sample - (model_out * sa)?)? / sb)?;
                (Ok(model_out.clone()), eps)
            }
        };
        if let Some(r) = self.clip {
            x0 = x0?.clamp(-r, r);
        }
        (x0? * a_p.sqrt() as f64)? + (eps * (1.0 - a_p).sqrt() as f64)?
    }
}

/// The low-res noise augmentation: `sqrt(ᾱ_l)·x + sqrt(1-ᾱ_l)·noise`.
#[derive(Clone, Debug)]
pub struct LowResNoiser {
    ac: Vec<f32>,
}

impl LowResNoiser {
    pub fn new(cfg: &SchedulerConfig) -> std::result::Result<Self, SchedulerError> {
        Ok(Self { ac: cfg.alphas_cumprod()? })
    }
    /// The two coefficients for `level` (clamped to the schedule).
    pub fn coefficients(&self, level: usize) -> (f32, f32) {
        let a = self.ac[level.min(self.ac.len() - 1)];
        (a.sqrt(), (1.0 - a).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x4_ddim() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"beta_schedule":"scaled_linear","beta_start":0.0001,"beta_end":0.02,"clip_sample":false,
                "set_alpha_to_one":false,"steps_offset":1,"prediction_type":"v_prediction"}"#,
        )
        .unwrap()
    }

    #[test]
    fn leading_timesteps_match_diffusers() {
        let d = Ddim::new(&x4_ddim()).unwrap();
        let ts = d.timesteps(75);
        assert_eq!(ts.len(), 75);
        assert_eq!(&ts[..3], &[963, 950, 937]);
        assert_eq!(&ts[72..], &[27, 14, 1]);
    }

    #[test]
    fn unsupported_settings_and_unreadable_files_are_typed_errors() {
        let mut cfg = x4_ddim();
        cfg.prediction_type = "flow".into();
        assert!(matches!(Ddim::new(&cfg), Err(SchedulerError::Unsupported(s)) if s.contains("flow")));
        let missing = SchedulerConfig::from_file(std::path::Path::new("/nonexistent/scheduler_config.json")).expect_err("no such file");
        assert!(matches!(&missing, SchedulerError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{missing:?}");
    }

    #[test]
    fn low_res_coefficients_at_20_match_diffusers() {
        let n = LowResNoiser::new(&x4_ddim()).unwrap();
        let (a, b) = n.coefficients(20);
        assert!((a - 0.998_649_7).abs() < 1e-6 && (b - 0.051_949_2).abs() < 1e-5, "{a} {b}");
    }
}
