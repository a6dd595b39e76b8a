//! The x4 upscaler's `UNet2DConditionModel`: 7 input channels (latents + noised low-res RGB), a
//! class embedding of the noise level added to the time embedding, per-level
//! `only_cross_attention`, linear projections. Configured from `unet/config.json`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::conv::{Conv3, Norm, Pre};
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};

use super::blocks::{BlockCtx, DownBlock, LevelCfg, MidBlock, UpBlock};

/// A value that the config gives either once for all levels or per level.
#[derive(serde::Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum PerLevel<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerLevel<T> {
    fn at(&self, i: usize) -> T {
        match self {
            PerLevel::One(v) => v.clone(),
            PerLevel::Each(v) => v[i.min(v.len() - 1)].clone(),
        }
    }
}

/// The fields of `unet/config.json` this UNet reads.
#[derive(serde::Deserialize, Clone, Debug)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// diffusers' legacy name for the number of heads.
    pub attention_head_dim: PerLevel<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel<usize>>,
    #[serde(default = "no")]
    pub only_cross_attention: PerLevel<bool>,
    #[serde(default)]
    pub use_linear_projection: bool,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default = "groups32")]
    pub norm_num_groups: usize,
    #[serde(default = "eps5")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "one_depth")]
    pub transformer_layers_per_block: PerLevel<usize>,
}

fn two() -> usize {
    2
}
fn no() -> PerLevel<bool> {
    PerLevel::One(false)
}
fn yes() -> bool {
    true
}
fn groups32() -> usize {
    32
}
fn eps5() -> f64 {
    1e-5
}
fn one_depth() -> PerLevel<usize> {
    PerLevel::One(1)
}

/// The UNet.
pub struct Unet {
    conv_in: Conv3,
    time_proj: Timesteps,
    time_emb: TimestepEmbedding,
    class_emb: Option<Embedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: Norm,
    conv_out: Conv3,
}

impl Unet {
    pub fn new(cfg: &UnetConfig, vb: VarBuilder) -> Result<Self> {
        if !cfg.use_linear_projection {
            candle_core::bail!("unet: only use_linear_projection=true is implemented");
        }
        if cfg.class_embed_type.is_some() {
            candle_core::bail!("unet: class_embed_type {:?} is not supported", cfg.class_embed_type);
        }
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb = 4 * ch[0];
        let heads = cfg.num_attention_heads.clone().unwrap_or_else(|| cfg.attention_head_dim.clone());
        let c = BlockCtx { groups: cfg.norm_num_groups, eps: cfg.norm_eps, temb, cross_dim: cfg.cross_attention_dim };
        let conv_in = Conv3::new(cfg.in_channels, ch[0], vb.pp("conv_in"))?;
        let time_proj = Timesteps::new(ch[0], cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_emb = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?;
        let class_emb = match cfg.num_class_embeds {
            Some(k) => Some(embedding(k, temb, vb.pp("class_embedding"))?),
            None => None,
        };
        let level = |kind: &str, i: usize| -> Result<LevelCfg> {
            let attn = match kind {
                "DownBlock2D" | "UpBlock2D" => None,
                "CrossAttnDownBlock2D" | "CrossAttnUpBlock2D" => Some((heads.at(i), cfg.transformer_layers_per_block.at(i))),
                other => candle_core::bail!("unet: block type {other} is not supported"),
            };
            Ok(LevelCfg { attn, only_cross: cfg.only_cross_attention.at(i) })
        };
        let mut down = Vec::new();
        let mut cout = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let cin = cout;
            cout = ch[i];
            let lv = level(kind, i)?;
            down.push(DownBlock::new(vb.pp("down_blocks").pp(i), cin, cout, cfg.layers_per_block, lv, c, i + 1 < n)?);
        }
        let mid = MidBlock::new(vb.pp("mid_block"), ch[n - 1], heads.at(n - 1), cfg.transformer_layers_per_block.at(n - 1), c)?;
        let mut up = Vec::new();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut out = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev = out;
            out = rev[i];
            let cin = rev[(i + 1).min(n - 1)];
            // per-level values of the up path are the down path's, reversed
            let mut lv = level(kind, n - 1 - i)?;
            lv.only_cross = cfg.only_cross_attention.at(n - 1 - i);
            up.push(UpBlock::new(vb.pp("up_blocks").pp(i), cin, prev, out, cfg.layers_per_block + 1, lv, c, i + 1 < n)?);
        }
        let norm_out = Norm::new(cfg.norm_num_groups, ch[0], cfg.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = Conv3::new(ch[0], cfg.out_channels, vb.pp("conv_out"))?;
        Ok(Self { conv_in, time_proj, time_emb, class_emb, down, mid, up, norm_out, conv_out })
    }

    /// `x`: (B, in, H, W); `t`: the timestep; `ctx`: (B, 77, cross_dim); `class_labels`: (B,) u32
    /// noise levels. Returns (B, out, H, W).
    pub fn forward(&self, x: &Tensor, t: f64, ctx: &Tensor, class_labels: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let ts = Tensor::full(t as f32, (b,), x.device())?;
        let mut emb = self.time_emb.forward(&self.time_proj.forward(&ts)?.to_dtype(x.dtype())?)?;
        if let Some(ce) = &self.class_emb {
            emb = (emb + ce.forward(class_labels)?.to_dtype(x.dtype())?)?;
        }
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for d in &self.down {
            h = d.forward(&h, &emb, ctx, &mut skips)?;
        }
        h = self.mid.forward(&h, &emb, ctx)?;
        for (i, u) in self.up.iter().enumerate() {
            let k = u.layers();
            let mine = skips.split_off(skips.len() - k);
            let up_to = if i + 1 < self.up.len() {
                skips.last().map(|s| -> Result<(usize, usize)> { Ok((s.dim(2)?, s.dim(3)?)) }).transpose()?
            } else {
                None
            };
            h = u.forward(&h, &mine, &emb, ctx, up_to)?;
        }
        self.conv_out.forward_pre(h, Pre::NormSilu(&self.norm_out), None)
    }
}
