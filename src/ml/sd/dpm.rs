//! DPM-Solver++ (multistep, order 2, midpoint), as diffusers' `DPMSolverMultistepScheduler` with
//! its defaults (`algorithm_type="dpmsolver++"`, `solver_order=2`, `lower_order_final=True`,
//! `final_sigmas_type="zero"`) built `from_config` of the pipeline's DDIM config: same noise
//! schedule, timestep spacing and steps offset. The model's v-prediction is turned into x0, then
//! each step follows the exponential integrator in λ = log(α/σ). Coefficients are computed in f32
//! like torch so every step matches diffusers to float rounding.

use candle_core::{Result, Tensor};

use super::scheduler::{SchedulerConfig, SchedulerError};

/// The schedule; `DpmRun` holds the per-run state (the previous x0 prediction).
#[derive(Clone, Debug)]
pub struct DpmSolver {
    /// σ_t = sqrt((1-ᾱ_t)/ᾱ_t) for every training timestep, f32.
    sigmas: Vec<f32>,
    cfg: SchedulerConfig,
}

/// (α_t, σ_t) of the VP process for the EDM-style σ: α = 1/sqrt(σ²+1), σ_t = σ·α.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let a = 1.0 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

/// λ = log α - log σ (+∞ at σ = 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolver {
    pub fn new(cfg: &SchedulerConfig) -> std::result::Result<Self, SchedulerError> {
        if cfg.prediction_type != "v_prediction" && cfg.prediction_type != "epsilon" {
            return Err(SchedulerError::Unsupported(format!("DPM-Solver++ with prediction_type {:?}", cfg.prediction_type)));
        }
        let sigmas = cfg.alphas_cumprod()?.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        Ok(Self { sigmas, cfg: cfg.clone() })
    }

    /// The timesteps for `steps` inference steps, high to low (diffusers' `set_timesteps`).
    pub fn timesteps(&self, steps: usize) -> Vec<usize> {
        let n = self.cfg.num_train_timesteps;
        let steps = steps.clamp(1, n);
        match self.cfg.timestep_spacing.as_str() {
            // np.linspace(0, n-1, steps+1).round()[::-1][:-1]
            "linspace" => (1..=steps).rev().map(|i| (i as f64 * (n - 1) as f64 / steps as f64).round() as usize).collect(),
            // np.arange(n, 0, -n/steps).round() - 1
            "trailing" => {
                let r = n as f64 / steps as f64;
                (0..steps).map(|i| ((n as f64 - i as f64 * r).round() as usize).saturating_sub(1)).collect()
            }
            // leading: arange(steps+1) * (n // (steps+1)), reversed, last dropped, + offset
            _ => {
                let ratio = n / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + self.cfg.steps_offset).min(n - 1)).collect()
            }
        }
    }

    /// A fresh run over `steps` inference steps.
    pub fn start(&self, steps: usize) -> DpmRun {
        let timesteps = self.timesteps(steps);
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| self.sigmas[t]).collect();
        sigmas.push(0.0); // final_sigmas_type = "zero"
        DpmRun { timesteps, sigmas, v_pred: self.cfg.prediction_type == "v_prediction", prev_x0: None, index: 0 }
    }
}

/// One denoising run: call `step` once per timestep, in order.
#[derive(Debug)]
pub struct DpmRun {
    pub timesteps: Vec<usize>,
    /// σ at each timestep, then 0.
    sigmas: Vec<f32>,
    v_pred: bool,
    /// The previous step's x0 prediction (the multistep memory).
    prev_x0: Option<Tensor>,
    index: usize,
}

impl DpmRun {
    /// Advances `sample` by one step given the model output at the current timestep.
    pub fn step(&mut self, model_out: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let i = self.index;
        let n = self.timesteps.len();
        if i >= n {
            candle_core::bail!("DPM-Solver++: step {i} past the {n} timesteps");
        }
        let (a_s0, s_s0) = alpha_sigma(self.sigmas[i]);
        let x0 = if self.v_pred {
            ((sample * a_s0 as f64)? - (model_out * s_s0 as f64)?)?
        } else {
            ((sample - (model_out * s_s0 as f64)?)? / a_s0 as f64)?
        };
        let (a_t, s_t) = alpha_sigma(self.sigmas[i + 1]);
        let h = lambda(a_t, s_t) - lambda(a_s0, s_s0);
        let c_sample = (s_t / s_s0) as f64;
        let c_x0 = a_t * ((-h).exp() - 1.0);
        // first order on the first step and (lower_order_final, σ_final = 0) on the last
        let out = match (&self.prev_x0, i + 1 < n) {
            (Some(m1), true) => {
                let (a_s1, s_s1) = alpha_sigma(self.sigmas[i - 1]);
                let h0 = lambda(a_s0, s_s0) - lambda(a_s1, s_s1);
                let r0 = h0 / h;
                let d1 = ((&x0 - m1)? * (1.0 / r0) as f64)?;
                (((sample * c_sample)? - (&x0 * c_x0 as f64)?)? - (d1 * (0.5 * c_x0) as f64)?)?
            }
            _ => ((sample * c_sample)? - (&x0 * c_x0 as f64)?)?,
        };
        self.prev_x0 = Some(x0);
        self.index += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x4() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"beta_schedule":"scaled_linear","beta_start":0.0001,"beta_end":0.02,"clip_sample":false,
                "set_alpha_to_one":false,"steps_offset":1,"prediction_type":"v_prediction"}"#,
        )
        .unwrap()
    }

    #[test]
    fn leading_timesteps_follow_diffusers_formula() {
        let d = DpmSolver::new(&x4()).unwrap();
        assert_eq!(d.timesteps(5), vec![831, 665, 499, 333, 167]);
        assert_eq!(d.timesteps(1), vec![501]);
    }
}
