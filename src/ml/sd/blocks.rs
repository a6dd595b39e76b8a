//! UNet building blocks that candle-transformers 0.11 lacks or gets numerically different:
//! the transformer block with `only_cross_attention` and exact-GELU GEGLU, the linear-projection
//! `Transformer2DModel`, and the down/up blocks built on them.
//!
//! Reused from candle-transformers: `CrossAttention` (q/k/v/out projections and f32 softmax
//! attention). The resnet blocks and 3×3 convolutions are [`super::conv`]'s (fastconv on the CPU).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{conv2d, layer_norm, Conv2d, Conv2dConfig, LayerNorm, VarBuilder};
use rayon::prelude::*;
use candle_transformers::models::stable_diffusion::attention::CrossAttention;

use super::conv::{Conv3, Norm, Pre, Resnet};
use super::layout::nchw_from_rows;
use super::linear::Lin;

/// Shape-independent settings shared by every block of one UNet.
#[derive(Clone, Copy, Debug)]
pub struct BlockCtx {
    pub groups: usize,
    pub eps: f64,
    pub temb: usize,
    pub cross_dim: usize,
}

pub fn resnet(vb: VarBuilder, cin: usize, cout: usize, c: BlockCtx) -> Result<Resnet> {
    Resnet::new(vb, cin, cout, c.groups, c.eps, Some(c.temb))
}

const CONV3: Conv2dConfig = Conv2dConfig { padding: 1, stride: 1, dilation: 1, groups: 1, cudnn_fwd_algo: None };

/// Tokens per feed-forward chunk (all batch items together). The GEGLU's 8·C-wide intermediate
/// of a 256² input at the 512-channel level is 512 MiB whole; in chunks of this many tokens it
/// is 64 MiB. Tokens are independent, so chunking (diffusers' "forward chunking") is exact.
const FF_CHUNK_TOKENS: usize = 4096;

/// GEGLU feed-forward with the exact (erf) GELU, as diffusers' `FeedForward(activation_fn="geglu")`.
struct FeedForward {
    proj: Lin,
    out: Lin,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self { proj: Lin::new(dim, 2 * inner, vb.pp("net.0.proj"))?, out: Lin::new(inner, dim, vb.pp("net.2"))? })
    }
    /// `x`: (B, N, C).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let per = (FF_CHUNK_TOKENS / b).max(1);
        if n <= per {
            return self.forward_chunk(x);
        }
        let outs = (0..n).step_by(per).map(|s| self.forward_chunk(&x.narrow(1, s, per.min(n - s))?)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outs, 1)
    }

    fn forward_chunk(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
            return self.out.forward(&self.geglu_cpu(x)?);
        }
        let h = self.proj.forward(x)?;
        let half = h.dim(D::Minus1)? / 2;
        let (a, g) = (h.narrow(D::Minus1, 0, half)?, h.narrow(D::Minus1, half, half)?);
        self.out.forward(&(a * g.gelu_erf()?)?)
    }

    /// `a · gelu_erf(g)` where `[a | g] = proj(x)`: the split, the GELU and the product in one
    /// parallel pass over the projection's output (candle runs them as single-threaded passes
    /// over 8·C-wide rows).
    fn geglu_cpu(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let two = h.dim(D::Minus1)?;
        let half = two / 2;
        let rows = h.elem_count() / two.max(1);
        let out = super::conv::with_f32_slice(&h, |h| {
            let mut out = vec![0f32; rows * half];
            out.par_chunks_mut(half).zip(h.par_chunks(two)).for_each(|(o, row)| {
                let (a, g) = row.split_at(half);
                for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                    // candle's gelu_erf, term for term
                    *o = a * ((candle_core::cpu::erf::erf_f32(g * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * g);
                }
            });
            Ok(out)
        })?;
        let mut dims = h.dims().to_vec();
        *dims.last_mut().expect("a rank-3 input") = half;
        Tensor::from_vec(out, dims, x.device())
    }
}

/// diffusers' `BasicTransformerBlock` (layer norms, no attention bias). With `only_cross`,
/// `attn1` attends to the text context too (its k/v project from `cross_dim`).
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross: bool,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize, c: BlockCtx, only_cross: bool) -> Result<Self> {
        let d = dim / heads;
        let ctx1 = only_cross.then_some(c.cross_dim);
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: CrossAttention::new(vb.pp("attn1"), dim, ctx1, heads, d, None, false)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, Some(c.cross_dim), heads, d, None, false)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            only_cross,
        })
    }
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let c1 = self.only_cross.then_some(ctx);
        let x = (self.attn1.forward(&self.norm1.forward(x)?, c1)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(ctx))? + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// `Transformer2DModel` with `use_linear_projection=True` and one transformer block per layer.
pub struct SpatialTransformer {
    norm: Norm,
    proj_in: Lin,
    blocks: Vec<TransformerBlock>,
    proj_out: Lin,
}

impl SpatialTransformer {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, depth: usize, c: BlockCtx, only_cross: bool) -> Result<Self> {
        Ok(Self {
            norm: Norm::new(c.groups, dim, 1e-6, vb.pp("norm"))?,
            proj_in: Lin::new(dim, dim, vb.pp("proj_in"))?,
            blocks: (0..depth)
                .map(|i| TransformerBlock::new(vb.pp("transformer_blocks").pp(i), dim, heads, c, only_cross))
                .collect::<Result<_>>()?,
            proj_out: Lin::new(dim, dim, vb.pp("proj_out"))?,
        })
    }
    pub fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let (b, ch, h, w) = x.dims4()?;
        let mut t = self.norm.forward_tokens(x)?;
        t = self.proj_in.forward(&t)?;
        for blk in &self.blocks {
            t = blk.forward(&t, ctx)?;
        }
        let t = self.proj_out.forward(&t)?;
        if !(x.device().is_cpu() && x.dtype() == DType::F32) {
            return t.reshape((b, h, w, ch))?.permute((0, 3, 1, 2))? + x;
        }
        // back to NCHW with the residual in one parallel pass
        let shape = (b, ch, h, w);
        let y = super::conv::with_f32_slice(&t, |t| {
            super::conv::with_f32_slice(x, |xs| Ok(nchw_from_rows(shape, ch, |ni, y| &t[(ni * h + y) * w * ch..][..w * ch], None, Some(xs))))
        })?;
        Tensor::from_vec(y, shape, x.device())
    }
}

/// What a down or up block looks like (from the UNet config).
#[derive(Clone, Copy, Debug)]
pub struct LevelCfg {
    /// Heads and transformer depth when the block has attention.
    pub attn: Option<(usize, usize)>,
    pub only_cross: bool,
}

/// `DownBlock2D` / `CrossAttnDownBlock2D`.
pub struct DownBlock {
    resnets: Vec<Resnet>,
    attns: Vec<SpatialTransformer>,
    down: Option<Conv2d>,
}

impl DownBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, layers: usize, lv: LevelCfg, c: BlockCtx, add_down: bool) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attns = Vec::new();
        for i in 0..layers {
            resnets.push(resnet(vb.pp("resnets").pp(i), if i == 0 { cin } else { cout }, cout, c)?);
            if let Some((heads, depth)) = lv.attn {
                attns.push(SpatialTransformer::new(vb.pp("attentions").pp(i), cout, heads, depth, c, lv.only_cross)?);
            }
        }
        let down = if add_down {
            let cfg = Conv2dConfig { stride: 2, ..CONV3 };
            Some(conv2d(cout, cout, 3, cfg, vb.pp("downsamplers.0.conv"))?)
        } else {
            None
        };
        Ok(Self { resnets, attns, down })
    }

    /// Returns the output and pushes every intermediate state onto `skips`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, ctx: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            x = r.forward(x, Some(temb))?;
            if let Some(a) = self.attns.get(i) {
                x = a.forward(&x, ctx)?;
            }
            skips.push(x.clone());
        }
        if let Some(d) = &self.down {
            x = d.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// `UpBlock2D` / `CrossAttnUpBlock2D`.
pub struct UpBlock {
    resnets: Vec<Resnet>,
    attns: Vec<SpatialTransformer>,
    up: Option<Conv3>,
}

impl UpBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        prev: usize,
        cout: usize,
        layers: usize,
        lv: LevelCfg,
        c: BlockCtx,
        add_up: bool,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attns = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { cin } else { cout };
            let rin = if i == 0 { prev } else { cout };
            resnets.push(resnet(vb.pp("resnets").pp(i), rin + skip, cout, c)?);
            if let Some((heads, depth)) = lv.attn {
                attns.push(SpatialTransformer::new(vb.pp("attentions").pp(i), cout, heads, depth, c, lv.only_cross)?);
            }
        }
        let up = if add_up { Some(Conv3::new(cout, cout, vb.pp("upsamplers.0.conv"))?) } else { None };
        Ok(Self { resnets, attns, up })
    }

    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` holds exactly this block's skip tensors, oldest first; `up_to` is the size to
    /// upsample to (the next block's skip size).
    pub fn forward(&self, x: &Tensor, skips: &[Tensor], temb: &Tensor, ctx: &Tensor, up_to: Option<(usize, usize)>) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, r) in self.resnets.iter().enumerate() {
            let s = &skips[skips.len() - 1 - i];
            x = r.forward(Tensor::cat(&[&x, s], 1)?, Some(temb))?;
            if let Some(a) = self.attns.get(i) {
                x = a.forward(&x, ctx)?;
            }
        }
        if let Some(conv) = &self.up {
            let (_, _, h, w) = x.dims4()?;
            let (th, tw) = up_to.unwrap_or((2 * h, 2 * w));
            x = if (th, tw) == (2 * h, 2 * w) {
                conv.forward_pre(x, Pre::Up2, None)?
            } else {
                conv.forward(&x.upsample_nearest2d(th, tw)?)?
            };
        }
        Ok(x)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, transformer (self + cross attention), resnet.
pub struct MidBlock {
    r0: Resnet,
    attn: SpatialTransformer,
    r1: Resnet,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, ch: usize, heads: usize, depth: usize, c: BlockCtx) -> Result<Self> {
        Ok(Self {
            r0: resnet(vb.pp("resnets.0"), ch, ch, c)?,
            attn: SpatialTransformer::new(vb.pp("attentions.0"), ch, heads, depth, c, false)?,
            r1: resnet(vb.pp("resnets.1"), ch, ch, c)?,
        })
    }
    pub fn forward(&self, x: &Tensor, temb: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let x = self.r0.forward(x.clone(), Some(temb))?;
        let x = self.attn.forward(&x, ctx)?;
        self.r1.forward(x, Some(temb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The feed-forward in token chunks equals the whole-sequence computation.
    #[test]
    fn chunked_feed_forward_equals_whole() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let ff = FeedForward::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 8).unwrap();
        // 2 × 5000 tokens: chunks of 2048, 2048 and 904 tokens per item
        let x = Tensor::randn(0f32, 1.0, (2, 5000, 8), &dev).unwrap();
        let chunked = ff.forward(&x).unwrap();
        let whole = ff.forward_chunk(&x).unwrap();
        let d = (chunked - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "max diff {d}");
    }

    /// The fused GEGLU pass equals candle's ops (projection, split, erf GELU, product): same
    /// GEMM and the same erf, so within 1e-5.
    #[test]
    fn fused_geglu_matches_candle_ops() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let _created = FeedForward::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 16).unwrap();
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &dev).unwrap()).unwrap();
        }
        let ff = FeedForward::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 16).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 37, 16), &dev).unwrap();
        let h = ff.proj.forward(&x).unwrap();
        let (a, g) = (h.narrow(D::Minus1, 0, 64).unwrap(), h.narrow(D::Minus1, 64, 64).unwrap());
        let want = ff.out.forward(&(a * g.gelu_erf().unwrap()).unwrap()).unwrap();
        let got = ff.forward(&x).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "max diff {d}");
    }
}
