//! `StableDiffusionUpscalePipeline.__call__` for a batch of items that share the image shape and
//! the step count: prompt encoding with classifier-free guidance, low-res noise augmentation,
//! DDIM or DPM-Solver++ v-prediction denoising (the batch shares one scheduler) with one UNet
//! pass per step for the whole batch (CFG halves included), VAE decode (scaling factor 0.08333, always f32), post-processing to [0, 1].
//!
//! Each item has its own prompt, negative prompt, noise level, guidance and seed. Its noise (the
//! low-res noise first, then the initial latents) comes from `NormalRng(seed)`, so the result does
//! not depend on what else shares the batch. Tests inject diffusers' noise through `Noise::Given`.

use candle_core::{DType, Device, Tensor};

use super::clip::ClipTextModel;
use super::rng::NormalRng;
use super::dpm::DpmSolver;
use super::scheduler::{Ddim, LowResNoiser};
use super::tokenizer::ClipTokenizer;
use super::unet::Unet;
use super::vae::{VaeDecoder, VaeTiling};
use crate::engine::{GenParams, InferError, Progress, RunContext, SchedulerKind};

/// The x4 pipeline forces this VAE scaling factor whatever `vae/config.json` says.
pub const VAE_SCALING: f64 = 0.08333;

/// Where an item's noise comes from.
#[derive(Clone, Debug)]
pub enum Noise {
    /// `NormalRng(seed)`: low-res noise (3·H·W values) then initial latents (4·H·W).
    Seeded(u64),
    /// Explicit low-res noise (1,3,H,W) and initial latents (1,4,H,W), f32.
    Given { lowres: Tensor, latents: Tensor },
}

/// One image to upscale.
pub struct Item<'a> {
    /// (3, H, W) f32 RGB in [0, 1].
    pub image: &'a Tensor,
    pub params: &'a GenParams,
    pub noise: Noise,
}

/// All loaded components.
pub struct Pipeline {
    pub tokenizer: ClipTokenizer,
    pub text: ClipTextModel,
    pub unet: Unet,
    pub vae: VaeDecoder,
    pub ddim: Ddim,
    /// DPM-Solver++ on the same noise schedule as `ddim`.
    pub dpm: DpmSolver,
    pub low_res: LowResNoiser,
    /// dtype of the UNet and text encoder (f32 on CPU, f16 on CUDA); the VAE is always f32.
    pub dtype: DType,
    /// Tiled VAE decoding of large latents (`sd.vae_tile`); `None` decodes whole.
    pub vae_tiling: Option<VaeTiling>,
    pub device: Device,
}

/// Intermediate results, for parity tests.
#[derive(Default)]
pub struct Trace {
    pub text_embeddings: Option<Tensor>,
    pub lowres_noised: Option<Tensor>,
    pub unet0_out: Option<Tensor>,
    /// The latents after every denoising step.
    pub step_latents: Vec<Tensor>,
    pub final_latents: Option<Tensor>,
    pub decoded: Option<Tensor>,
}

impl Pipeline {
    /// Encodes prompts: (2B, 77, D) ordered [negatives…, prompts…], like diffusers.
    pub fn encode_prompts(&self, items: &[Item]) -> candle_core::Result<Tensor> {
        let n = self.tokenizer.max_len();
        let mut ids: Vec<u32> = Vec::with_capacity(2 * items.len() * n);
        for it in items {
            ids.extend(self.tokenizer.encode(&it.params.negative_prompt));
        }
        for it in items {
            ids.extend(self.tokenizer.encode(&it.params.prompt));
        }
        let ids = Tensor::from_vec(ids, (2 * items.len(), n), &self.device)?;
        self.text.forward(&ids)
    }

    /// Runs the whole pipeline with `steps` steps of `scheduler`; returns (B, 3, 4H, 4W) f32 in [0, 1].
    pub fn run(
        &self,
        items: &[Item],
        steps: usize,
        scheduler: SchedulerKind,
        ctx: &dyn RunContext,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor, InferError> {
        let b = items.len();
        if b == 0 {
            return Err(InferError::Input("empty batch".into()));
        }
        let (_, h, w) = items[0].image.dims3()?;
        let dev = &self.device;
        let text = self.encode_prompts(items)?.to_dtype(self.dtype)?;
        if let Some(t) = trace.as_deref_mut() {
            t.text_embeddings = Some(text.clone());
        }
        // low-res noise augmentation and initial latents, per item
        let mut imgs = Vec::with_capacity(b);
        let mut lats = Vec::with_capacity(b);
        for it in items {
            let img = ((it.image.to_device(dev)?.to_dtype(DType::F32)? * 2.0)? - 1.0)?.unsqueeze(0)?;
            let (noise, lat) = match &it.noise {
                Noise::Seeded(seed) => {
                    let mut rng = NormalRng::new(*seed);
                    let n = Tensor::from_vec(rng.normals(3 * h * w), (1, 3, h, w), dev)?;
                    let l = Tensor::from_vec(rng.normals(4 * h * w), (1, 4, h, w), dev)?;
                    (n, l)
                }
                Noise::Given { lowres, latents } => (lowres.to_device(dev)?, latents.to_device(dev)?),
            };
            let (sa, sb) = self.low_res.coefficients(it.params.noise_level as usize);
            imgs.push(((img * sa as f64)? + (noise * sb as f64)?)?);
            lats.push(lat);
        }
        let img = Tensor::cat(&imgs, 0)?;
        if let Some(t) = trace.as_deref_mut() {
            t.lowres_noised = Some(img.clone());
        }
        let img_in = Tensor::cat(&[&img, &img], 0)?.to_dtype(self.dtype)?;
        let mut latents = Tensor::cat(&lats, 0)?; // DDIM init_noise_sigma = 1
        let labels: Vec<u32> = items.iter().chain(items.iter()).map(|it| it.params.noise_level).collect();
        let labels = Tensor::from_vec(labels, (2 * b,), dev)?;
        // diffusers skips CFG when guidance <= 1, i.e. uses the conditional prediction alone
        let g: Vec<f32> = items.iter().map(|it| if it.params.guidance > 1.0 { it.params.guidance } else { 1.0 }).collect();
        let g = Tensor::from_vec(g, (b, 1, 1, 1), dev)?;
        let mut dpm = self.dpm.start(steps);
        let timesteps = match scheduler {
            SchedulerKind::Ddim => self.ddim.timesteps(steps),
            SchedulerKind::Dpm => dpm.timesteps.clone(),
        };
        let total = timesteps.len() as u32;
        for (i, &t) in timesteps.iter().enumerate() {
            if ctx.cancelled() {
                return Err(InferError::Cancelled);
            }
            let z = Tensor::cat(&[&latents, &latents], 0)?.to_dtype(self.dtype)?;
            let z = Tensor::cat(&[&z, &img_in], 1)?;
            let v = self.unet.forward(&z, t as f64, &text, &labels)?.to_dtype(DType::F32)?;
            if i == 0 {
                if let Some(tr) = trace.as_deref_mut() {
                    tr.unet0_out = Some(v.clone());
                }
            }
            let (vu, vc) = (v.narrow(0, 0, b)?, v.narrow(0, b, b)?);
            let v = (&vu + (vc - &vu)?.broadcast_mul(&g)?)?;
            latents = match scheduler {
                SchedulerKind::Ddim => self.ddim.step(&v, t, timesteps.len(), &latents)?,
                SchedulerKind::Dpm => dpm.step(&v, &latents)?,
            };
            if let Some(tr) = trace.as_deref_mut() {
                tr.step_latents.push(latents.clone());
            }
            ctx.progress(Progress { done: i as u32 + 1, total });
        }
        if let Some(t) = trace.as_deref_mut() {
            t.final_latents = Some(latents.clone());
        }
        let y = self.vae.decode_tiled(&(latents / VAE_SCALING)?, self.vae_tiling)?;
        if let Some(t) = trace {
            t.decoded = Some(y.clone());
        }
        Ok(((y / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }
}
