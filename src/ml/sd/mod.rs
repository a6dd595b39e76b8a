//! sd-x4: the prompt-guided Stable Diffusion x4 upscaler (diffusers
//! `StableDiffusionUpscalePipeline`) on candle, as an `Engine`.
//!
//! Loads a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
//! `scheduler/`, `low_res_scheduler/`), reading every config file. CPU runs f32; with the `cuda`
//! feature and a CUDA device the UNet and text encoder run f16 (the VAE stays f32). Requests with
//! the same tile shape, step count and scheduler share one UNet pass per denoising step.

pub mod blocks;
pub mod clip;
pub mod conv;
pub mod dpm;
pub mod layout;
pub mod linear;
pub mod loader;
pub mod pipeline;
pub mod rng;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::engine::{Engine, EngineId, GenParams, InferError, RunContext, SchedulerKind, Tile, Tiling};
use pipeline::{Item, Noise, Pipeline};

/// The model name in URLs.
pub const NAME: &str = "sd-x4";
/// Folder name under the models directory.
pub const DIR_NAME: &str = "stable-diffusion-x4-upscaler";

/// Limits of the request parameters (the proxy validates; the engine re-checks).
pub const MAX_NOISE_LEVEL: u32 = 350;
pub const MAX_STEPS: u32 = 200;
pub const MAX_GUIDANCE: f32 = 30.0;

#[derive(thiserror::Error, Debug)]
pub enum SdError {
    #[error("{0}")]
    Load(String),
    #[error("{dir}: tokenizer: {source}")]
    Tokenizer { dir: std::path::PathBuf, source: tokenizer::TokenizerError },
    #[error("{which}: {source}")]
    Scheduler { which: &'static str, source: scheduler::SchedulerError },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// What `model_index.json` tells us.
#[derive(serde::Deserialize, Default)]
struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    class_name: String,
    #[serde(default)]
    max_noise_level: Option<u32>,
}

/// Loads the whole pipeline from a diffusers folder; `dtype` applies to the UNet and the text
/// encoder (the VAE always loads f32). The VAE decodes whole until `vae_tiling` is set.
pub fn load_pipeline(dir: &Path, device: &Device, dtype: DType) -> Result<(Pipeline, String, u32), SdError> {
    let index: ModelIndex = loader::read_json(&dir.join("model_index.json"))?;
    if !index.class_name.is_empty() && index.class_name != "StableDiffusionUpscalePipeline" {
        return Err(SdError::Load(format!("{}: _class_name is {}, not StableDiffusionUpscalePipeline", dir.display(), index.class_name)));
    }
    let max_noise = index.max_noise_level.unwrap_or(MAX_NOISE_LEVEL).min(MAX_NOISE_LEVEL);
    let cfg_path = |c: &str, f: &str| dir.join(c).join(f);
    let unet_cfg: unet::UnetConfig = loader::read_json(&cfg_path("unet", "config.json"))?;
    let vae_cfg: vae::VaeConfig = loader::read_json(&cfg_path("vae", "config.json"))?;
    let clip_cfg: clip::ClipTextConfig = loader::read_json(&cfg_path("text_encoder", "config.json"))?;
    let ddim_cfg: scheduler::SchedulerConfig = loader::read_json(&cfg_path("scheduler", "scheduler_config.json"))?;
    let low_cfg: scheduler::SchedulerConfig = loader::read_json(&cfg_path("low_res_scheduler", "scheduler_config.json"))?;
    let unet_w = loader::weight_file(&dir.join("unet"), "diffusion_pytorch_model", dtype)?;
    let vae_w = loader::weight_file(&dir.join("vae"), "diffusion_pytorch_model", DType::F32)?;
    let clip_w = loader::weight_file(&dir.join("text_encoder"), "model", dtype)?;
    let digest = loader::weights_digest(
        &[unet_w.clone(), vae_w.clone(), clip_w.clone()],
        &[cfg_path("unet", "config.json"), cfg_path("vae", "config.json"), cfg_path("text_encoder", "config.json")],
    )?;
    let ctx = |what: &str, e: candle_core::Error| SdError::Load(format!("{}: {what}: {e}", dir.display()));
    let unet = unet::Unet::new(&unet_cfg, loader::file_var_builder(&unet_w, dtype, device)?).map_err(|e| ctx("unet", e))?;
    let vae = vae::VaeDecoder::new(&vae_cfg, loader::file_var_builder(&vae_w, DType::F32, device)?).map_err(|e| ctx("vae", e))?;
    let text = clip::ClipTextModel::new(&clip_cfg, loader::file_var_builder(&clip_w, dtype, device)?)
        .map_err(|e| ctx("text_encoder", e))?;
    let tokenizer = tokenizer::ClipTokenizer::from_dir(&dir.join("tokenizer")).map_err(|source| SdError::Tokenizer { dir: dir.into(), source })?;
    let ddim = scheduler::Ddim::new(&ddim_cfg).map_err(|source| SdError::Scheduler { which: "scheduler", source })?;
    let dpm = dpm::DpmSolver::new(&ddim_cfg).map_err(|source| SdError::Scheduler { which: "scheduler", source })?;
    let low_res = scheduler::LowResNoiser::new(&low_cfg).map_err(|source| SdError::Scheduler { which: "low_res_scheduler", source })?;
    Ok((Pipeline { tokenizer, text, unet, vae, ddim, dpm, low_res, dtype, vae_tiling: None, device: device.clone() }, digest, max_noise))
}

/// The sd-x4 engine.
pub struct SdEngine {
    id: EngineId,
    pipe: Pipeline,
    tiling: Tiling,
    max_noise: u32,
}

impl SdEngine {
    /// Loads from `dir` on `device`; `tiling` is how the proxy cuts inputs (tile 128 matches the
    /// model's training crops), `vae_tiling` how the VAE cuts large latents (`sd.vae_tile`).
    pub fn load(dir: &Path, device: &Device, tiling: Tiling, vae_tiling: Option<vae::VaeTiling>) -> Result<Self, SdError> {
        let dtype = if device.is_cuda() { DType::F16 } else { DType::F32 };
        let (mut pipe, digest, max_noise) = load_pipeline(dir, device, dtype)?;
        pipe.vae_tiling = vae_tiling;
        let id = EngineId::new(NAME, format!("{digest}r{}", rng::RNG_VERSION));
        Ok(Self { id, pipe, tiling, max_noise })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipe
    }

    fn check(&self, p: &GenParams) -> Result<(), InferError> {
        if p.noise_level > self.max_noise {
            return Err(InferError::Input(format!("noise level {} exceeds {}", p.noise_level, self.max_noise)));
        }
        if !(1..=MAX_STEPS).contains(&p.steps) {
            return Err(InferError::Input(format!("steps {} outside 1..={MAX_STEPS}", p.steps)));
        }
        if !(0.0..=MAX_GUIDANCE).contains(&p.guidance) {
            return Err(InferError::Input(format!("guidance {} outside 0..={MAX_GUIDANCE}", p.guidance)));
        }
        Ok(())
    }
}

impl Engine for SdEngine {
    fn id(&self) -> &EngineId {
        &self.id
    }
    fn scale(&self) -> u32 {
        4
    }
    fn tiling(&self) -> Option<Tiling> {
        Some(self.tiling)
    }
    fn batch_class(&self, params: &GenParams) -> u64 {
        params.steps as u64 | (params.scheduler as u64) << 32
    }
    fn prompt_guided(&self) -> bool {
        true
    }
    fn device(&self) -> String {
        crate::ml::device::name(&self.pipe.device)
    }

    fn upscale(&self, tiles: &[Tile], params: &[GenParams], ctx: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        if tiles.len() != params.len() {
            return Err(InferError::Input(format!("{} tiles but {} parameter sets", tiles.len(), params.len())));
        }
        let Some(first) = tiles.first() else { return Ok(Vec::new()) };
        let (w, h) = first.shape();
        if tiles.iter().any(|t| t.shape() != (w, h)) {
            return Err(InferError::Input("tiles in one batch differ in shape".into()));
        }
        params.iter().try_for_each(|p| self.check(p))?;
        let imgs = tiles
            .iter()
            .map(|t| Tensor::from_slice(&t.data, (3, h as usize, w as usize), &candle_core::Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut out: Vec<Option<Tile>> = vec![None; tiles.len()];
        // the batcher groups by step count and scheduler already; stay correct if a mixed batch
        // arrives anyway
        let mut groups: Vec<(u32, SchedulerKind)> = params.iter().map(|p| (p.steps, p.scheduler)).collect();
        groups.sort_unstable_by_key(|&(s, k)| (s, k as u8));
        groups.dedup();
        for (s, kind) in groups {
            let idx: Vec<usize> = (0..tiles.len()).filter(|&i| (params[i].steps, params[i].scheduler) == (s, kind)).collect();
            let items: Vec<Item> =
                idx.iter().map(|&i| Item { image: &imgs[i], params: &params[i], noise: Noise::Seeded(params[i].seed) }).collect();
            let y = self.pipe.run(&items, s as usize, kind, ctx, None)?.to_device(&candle_core::Device::Cpu)?;
            for (k, &i) in idx.iter().enumerate() {
                let data = y.get(k)?.flatten_all()?.to_vec1::<f32>()?;
                out[i] = Some(Tile::new(4 * w, 4 * h, data));
            }
        }
        Ok(out.into_iter().map(|t| t.expect("every tile belongs to one step group")).collect())
    }

    fn warm_up(&self) -> Result<(), InferError> {
        let tile = Tile::new(8, 8, vec![0.5; 3 * 64]);
        let p = GenParams { steps: 1, ..GenParams::default() };
        let out = self.upscale(&[tile], &[p], &crate::engine::Unattended)?;
        match out.first() {
            Some(t) if t.shape() == (32, 32) => Ok(()),
            _ => Err(InferError::Model("warm-up produced a wrong shape".into())),
        }
    }
}

/// The VAE tiling that `[sd]` asks for (`None` when `vae_tile` is 0).
pub fn vae_tiling(cfg: &crate::config::SdConfig) -> Option<vae::VaeTiling> {
    (cfg.vae_tile > 0).then_some(vae::VaeTiling { tile: cfg.vae_tile as usize, overlap: cfg.vae_tile_overlap as usize })
}

/// The sd-x4 folder to load: `sd.path`, else `<models_dir>/stable-diffusion-x4-upscaler`.
pub fn model_dir(models_dir: &Path, configured: Option<&Path>) -> PathBuf {
    configured.map(Path::to_path_buf).unwrap_or_else(|| models_dir.join(DIR_NAME))
}

#[cfg(test)]
mod tests;
