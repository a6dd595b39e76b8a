//! The VAE decoder of the x4 upscaler (`AutoencoderKL` with 3 blocks, decode path only: the
//! upscale pipeline never encodes), configured from `vae/config.json`.
//!
//! The mid-block attention runs over H×W tokens of the latent (one head). A naive score matrix
//! is (HW)² floats: 1 GiB at a 128² latent, 16 GiB at 256². `chunked_attention` processes the
//! queries in chunks so at most `ATTN_CHUNK_ELEMS` scores exist at once.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{conv2d, group_norm, linear, Conv2d, GroupNorm, Linear, VarBuilder};

use super::conv::{Conv3, Resnet};

/// Most attention scores materialised at once (16 Mi floats = 64 MiB in f32).
pub const ATTN_CHUNK_ELEMS: usize = 16 << 20;

/// The fields of `vae/config.json` the decoder reads. `scaling_factor` is deliberately absent:
/// the x4 pipeline forces 0.08333 whatever the file says.
#[derive(serde::Deserialize, Clone, Debug)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "groups32")]
    pub norm_num_groups: usize,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn groups32() -> usize {
    32
}
fn yes() -> bool {
    true
}

/// softmax(q kᵀ · scale) v, with the queries processed in chunks. `q`: (B, N, D), `k`/`v`: (B, M, D).
pub fn chunked_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, n, _) = q.dims3()?;
    let (b, m, _) = k.dims3()?;
    let chunk = (ATTN_CHUNK_ELEMS / (b * m).max(1)).clamp(1, n);
    let kt = (k.t()?.contiguous()? * scale)?;
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let s = q.narrow(1, start, len)?.contiguous()?.matmul(&kt)?;
        let s = candle_nn::ops::softmax(&s, D::Minus1)?;
        outs.push(s.matmul(v)?);
        start += len;
    }
    Tensor::cat(&outs, 1)
}

/// The VAE's single-head self-attention block (diffusers `Attention` with group norm and residual).
struct AttnBlock {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl AttnBlock {
    fn new(vb: VarBuilder, ch: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, ch, 1e-6, vb.pp("group_norm"))?,
            q: linear(ch, ch, vb.pp("to_q"))?,
            k: linear(ch, ch, vb.pp("to_k"))?,
            v: linear(ch, ch, vb.pp("to_v"))?,
            out: linear(ch, ch, vb.pp("to_out.0"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.q.forward(&t)?, self.k.forward(&t)?, self.v.forward(&t)?);
        let o = chunked_attention(&q, &k, &v, 1.0 / (c as f64).sqrt())?;
        let o = self.out.forward(&o)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        o + x
    }
}

fn resnet(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Resnet> {
    Resnet::new(vb, cin, cout, groups, 1e-6, None)
}

struct UpDecoderBlock {
    resnets: Vec<Resnet>,
    up: Option<Conv3>,
}

/// `post_quant_conv` + `Decoder`.
pub struct VaeDecoder {
    post_quant: Option<Conv2d>,
    conv_in: Conv3,
    mid_r0: Resnet,
    mid_attn: Option<AttnBlock>,
    mid_r1: Resnet,
    ups: Vec<UpDecoderBlock>,
    norm_out: GroupNorm,
    conv_out: Conv3,
}

impl VaeDecoder {
    /// `vb` is the root of `vae/diffusion_pytorch_model.safetensors`; encoder weights are ignored.
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let ch = &cfg.block_out_channels;
        let top = *ch.last().unwrap_or(&0);
        let post_quant = if cfg.use_post_quant_conv {
            Some(conv2d(cfg.latent_channels, cfg.latent_channels, 1, Default::default(), vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        let d = vb.pp("decoder");
        let conv_in = Conv3::new(cfg.latent_channels, top, d.pp("conv_in"))?;
        let mid = d.pp("mid_block");
        let mid_r0 = resnet(mid.pp("resnets.0"), top, top, g)?;
        let mid_attn = if cfg.mid_block_add_attention { Some(AttnBlock::new(mid.pp("attentions.0"), top, g)?) } else { None };
        let mid_r1 = resnet(mid.pp("resnets.1"), top, top, g)?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut ups = Vec::new();
        let mut out = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev = out;
            out = c;
            let vb = d.pp("up_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| resnet(vb.pp("resnets").pp(j), if j == 0 { prev } else { out }, out, g))
                .collect::<Result<_>>()?;
            let up = if i + 1 < rev.len() { Some(Conv3::new(out, out, vb.pp("upsamplers.0.conv"))?) } else { None };
            ups.push(UpDecoderBlock { resnets, up });
        }
        let norm_out = group_norm(g, ch[0], 1e-6, d.pp("conv_norm_out"))?;
        let conv_out = Conv3::new(ch[0], cfg.out_channels, d.pp("conv_out"))?;
        Ok(Self { post_quant, conv_in, mid_r0, mid_attn, mid_r1, ups, norm_out, conv_out })
    }

    /// `z`: (B, 4, h, w) latents already divided by the scaling factor → (B, 3, 4h, 4w) in ~[-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut x = match &self.post_quant {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        x = self.conv_in.forward(&x)?;
        x = self.mid_r0.forward(&x, None)?;
        if let Some(a) = &self.mid_attn {
            x = a.forward(&x)?;
        }
        x = self.mid_r1.forward(&x, None)?;
        for u in &self.ups {
            for r in &u.resnets {
                x = r.forward(&x, None)?;
            }
            if let Some(c) = &u.up {
                let (_, _, h, w) = x.dims4()?;
                x = c.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
            }
        }
        let x = candle_nn::ops::silu(&self.norm_out.forward(&x)?)?;
        self.conv_out.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn chunked_attention_equals_full_attention() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 37, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 37, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 37, 8), &dev).unwrap();
        let full = candle_nn::ops::softmax(&(q.matmul(&k.t().unwrap()).unwrap() * 0.3).unwrap(), D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap();
        // force several chunks by calling the loop with a tiny budget through narrow pieces
        let mut parts = Vec::new();
        for s in (0..37).step_by(10) {
            let len = 10.min(37 - s);
            parts.push(chunked_attention(&q.narrow(1, s, len).unwrap(), &k, &v, 0.3).unwrap());
        }
        let chunked = Tensor::cat(&parts, 1).unwrap();
        let d = (full - chunked).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "max diff {d}");
    }
}
