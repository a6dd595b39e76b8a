//! The UNet's and VAE's 3×3 stride-1 convolutions and the resnet block built on them, with the
//! CPU path on [`fastconv`](crate::ml::fastconv) (issue #7: "and by the SD x4 UNet/VAE where it helps").
//!
//! The 3×3 convolutions hold nearly all of both networks' FLOPs and candle's CPU `conv2d` runs
//! them at a small fraction of the machine's speed. On the CPU (unless `UPRES_FASTCONV=off`) each
//! one is packed once at load into a [`Conv3x3`] and the candle weights are dropped, so memory is
//! not doubled; each call converts NCHW → padded NHWC and back around the fast kernel, which is
//! cheap next to a 3×3 convolution over 128–512 channels. Elsewhere (CUDA, or fastconv off) the
//! candle `Conv2d` runs. The stride-2 downsamplers and the 1×1 shortcuts stay on candle.
//!
//! [`Resnet`] is candle-transformers' `ResnetBlock2D` (same weights, same op order) with its two
//! convolutions swapped for [`Conv3`].

use candle_core::{DType, Module, Result, Storage, Tensor, D};
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};
use rayon::prelude::*;

use crate::ml::fastconv::{Activation, Conv3x3, Epilogue, Nhwc};
use crate::ml::realesrgan::fastconv_enabled_by_env;

const CONV3: Conv2dConfig = Conv2dConfig { padding: 1, stride: 1, dilation: 1, groups: 1, cudnn_fwd_algo: None };

/// What runs on a [`Conv3`]'s input before the convolution. On the fast path it is fused into
/// the NCHW → NHWC conversion, so no intermediate map is materialised.
#[derive(Clone, Copy)]
pub enum Pre<'a> {
    None,
    /// `silu(group_norm(x))`.
    NormSilu(&'a Norm),
    /// Nearest-neighbour ×2 upsampling.
    Up2,
}

/// Group normalisation (diffusers `GroupNorm`, per-channel affine), optionally followed by SiLU.
///
/// On the CPU with f32 input it computes each group's statistics in one parallel pass (f64
/// sums) and writes a single output: candle's `GroupNorm` keeps four full-size intermediates
/// alive at once, which at a 1024² VAE map of 128 channels is 2 GiB. Elsewhere it is candle's.
pub struct Norm {
    candle: GroupNorm,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    eps: f64,
}

impl Norm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        let (gamma, beta) = if weight.device().is_cpu() {
            (weight.to_dtype(DType::F32)?.to_vec1()?, bias.to_dtype(DType::F32)?.to_vec1()?)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Self { candle: GroupNorm::new(weight, bias, channels, groups, eps)?, gamma, beta, groups, eps })
    }

    /// Per-(image, channel) `(a, b)` with `norm(x) = a·x + b`, from NCHW data of `n` images of
    /// `c` channels and `hw` pixels.
    fn affine(&self, data: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f32, f32)> {
        let cg = c / self.groups;
        let len = cg * hw;
        let stats: Vec<(f64, f64)> = (0..n * self.groups)
            .into_par_iter()
            .map(|i| {
                let g = &data[i * len..(i + 1) * len];
                let mean = g.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
                let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
                (mean, 1.0 / (var + self.eps).sqrt())
            })
            .collect();
        let mut ab = Vec::with_capacity(n * c);
        for ni in 0..n {
            for k in 0..c {
                let (mean, rstd) = stats[ni * self.groups + k / cg];
                let a = self.gamma[k] as f64 * rstd;
                ab.push((a as f32, (self.beta[k] as f64 - mean * a) as f32));
            }
        }
        ab
    }

    fn fast(&self, x: &Tensor) -> bool {
        !self.gamma.is_empty() && x.device().is_cpu() && x.dtype() == DType::F32
    }

    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if !self.fast(x) {
            let y = self.candle.forward(x)?;
            return if silu { y.silu() } else { Ok(y) };
        }
        let (n, c, h, w) = x.dims4()?;
        let out = with_f32_slice(x, |data| {
            let ab = self.affine(data, n, c, h * w);
            let mut out = vec![0f32; data.len()];
            out.par_chunks_mut(h * w).zip(data.par_chunks(h * w)).zip(ab.par_iter()).for_each(|((o, i), &(a, b))| {
                for (o, &v) in o.iter_mut().zip(i) {
                    let y = a * v + b;
                    *o = if silu { silu32(y) } else { y };
                }
            });
            Ok(out)
        })?;
        Tensor::from_vec(out, (n, c, h, w), x.device())
    }
}

#[inline]
fn silu32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Calls `f` with the contiguous f32 data of a CPU tensor (converting or copying only when the
/// tensor is not already contiguous f32).
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = if t.dtype() == DType::F32 && t.is_contiguous() { t.clone() } else { t.to_dtype(DType::F32)?.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("with_f32_slice: not a CPU tensor") };
    let (a, b) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    f(&cpu.as_slice::<f32>()?[a..b])
}

/// A 3×3, stride 1, padding 1 convolution with bias.
pub enum Conv3 {
    Fast(Conv3x3),
    Candle(Conv2d),
}

impl Conv3 {
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let conv = conv2d(cin, cout, 3, CONV3, vb.clone())?;
        if vb.device().is_cpu() && fastconv_enabled_by_env() {
            let fast = Conv3x3::from_tensors(conv.weight(), conv.bias(), Activation::None)?;
            return Ok(Conv3::Fast(fast));
        }
        Ok(Conv3::Candle(conv))
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Conv3::Fast(_))
    }

    /// `conv(pre(x)) + residual`. Takes `x` by value so that its memory can be released as soon
    /// as it has been read (when the caller holds no other handle to it).
    ///
    /// On the fast path the pre-op is fused into the NCHW → padded NHWC conversion and the
    /// residual into the NHWC → NCHW one, and each buffer is dropped as soon as it is consumed:
    /// at most the input, the NHWC input and output and the NCHW output exist at once, where the
    /// unfused candle ops held up to eight maps (group norm's four, SiLU, the upsampled copy,
    /// the NHWC copies, the sum).
    pub fn forward_pre(&self, x: Tensor, pre: Pre, residual: Option<&Tensor>) -> Result<Tensor> {
        let conv = match self {
            Conv3::Fast(c) if x.device().is_cpu() => c,
            _ => return self.forward_candle(x, pre, residual),
        };
        let dev = x.device().clone();
        let (n, c, h, w) = x.dims4()?;
        let (oh, ow) = if matches!(pre, Pre::Up2) { (2 * h, 2 * w) } else { (h, w) };
        let input = with_f32_slice(&x, |data| {
            let ab = match pre {
                Pre::NormSilu(norm) if norm.fast(&x) => Some(norm.affine(data, n, c, h * w)),
                Pre::NormSilu(_) => candle_core::bail!("fast conv: group norm weights are not on the CPU"),
                _ => None,
            };
            let mut t = Nhwc::zeros(n, oh, ow, c);
            let up = if matches!(pre, Pre::Up2) { 2 } else { 1 };
            for ni in 0..n {
                for y in 0..oh {
                    for xx in 0..ow {
                        let src = ((ni * c) * h + y / up) * w + xx / up;
                        let px = t.pixel_mut(ni, y, xx);
                        match &ab {
                            Some(ab) => {
                                for (k, v) in px.iter_mut().enumerate() {
                                    let (a, b) = ab[ni * c + k];
                                    *v = silu32(a * data[src + k * h * w] + b);
                                }
                            }
                            None => {
                                for (k, v) in px.iter_mut().enumerate() {
                                    *v = data[src + k * h * w];
                                }
                            }
                        }
                    }
                }
            }
            Ok(t)
        })?;
        drop(x);
        let co = conv.out_c();
        let mut out = Nhwc::zeros(n, oh, ow, co);
        conv.forward(&input, 0, &mut out, 0, &Epilogue::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        drop(input);
        let plane = oh * ow;
        let mut y = vec![0f32; n * co * plane];
        let mut write = |res: Option<&[f32]>| {
            for ni in 0..n {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let px = out.pixel(ni, yy, xx);
                        let base = ni * co * plane + yy * ow + xx;
                        for (k, &v) in px.iter().enumerate() {
                            let i = base + k * plane;
                            y[i] = match res {
                                Some(r) => v + r[i],
                                None => v,
                            };
                        }
                    }
                }
            }
        };
        match residual {
            Some(r) => {
                if r.dims4()? != (n, co, oh, ow) {
                    candle_core::bail!("fast conv: residual {:?} for an output ({n}, {co}, {oh}, {ow})", r.dims());
                }
                with_f32_slice(r, |r| {
                    write(Some(r));
                    Ok(())
                })?
            }
            None => write(None),
        }
        drop(out);
        Tensor::from_vec(y, (n, co, oh, ow), &dev)
    }

    fn forward_candle(&self, x: Tensor, pre: Pre, residual: Option<&Tensor>) -> Result<Tensor> {
        let x = match pre {
            Pre::None => x,
            Pre::NormSilu(norm) => norm.forward(&x, true)?,
            Pre::Up2 => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(2 * h, 2 * w)?
            }
        };
        let y = match self {
            Conv3::Fast(c) => c.forward_tensor(&x)?,
            Conv3::Candle(c) => c.forward(&x)?,
        };
        drop(x);
        match residual {
            Some(r) => r + y,
            None => Ok(y),
        }
    }
}

impl Module for Conv3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_pre(x.clone(), Pre::None, None)
    }
}

/// A resnet block: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`.
pub struct Resnet {
    norm1: Norm,
    conv1: Conv3,
    norm2: Norm,
    conv2: Conv3,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
}

impl Resnet {
    /// `temb`: the time-embedding width, or `None` for the VAE's blocks.
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize, eps: f64, temb: Option<usize>) -> Result<Self> {
        let conv_shortcut = if cin != cout {
            Some(conv2d(cin, cout, 1, Conv2dConfig::default(), vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: Norm::new(groups, cin, eps, vb.pp("norm1"))?,
            conv1: Conv3::new(cin, cout, vb.pp("conv1"))?,
            norm2: Norm::new(groups, cout, eps, vb.pp("norm2"))?,
            conv2: Conv3::new(cout, cout, vb.pp("conv2"))?,
            time_emb_proj: temb.map(|t| linear(t, cout, vb.pp("time_emb_proj"))).transpose()?,
            conv_shortcut,
        })
    }

    /// Takes `x` by value: with a 1×1 shortcut (the up blocks' concatenated skips) the input is
    /// released once `conv1` has read it.
    pub fn forward(&self, x: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(&x)?,
            None => x.clone(),
        };
        let mut h = self.conv1.forward_pre(x, Pre::NormSilu(&self.norm1), None)?;
        if let (Some(t), Some(proj)) = (temb, &self.time_emb_proj) {
            let t = proj.forward(&candle_nn::ops::silu(t)?)?.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?;
            h = t.broadcast_add(&h)?;
        }
        self.conv2.forward_pre(h, Pre::NormSilu(&self.norm2), Some(&shortcut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The fast path and candle's conv2d agree on SD-like shapes (odd channel counts included).
    #[test]
    fn fast_conv3_matches_candle() {
        let dev = Device::Cpu;
        for (cin, cout, h, w) in [(7, 32, 9, 11), (64, 64, 8, 8), (96, 40, 5, 13)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let candle = conv2d(cin, cout, 3, CONV3, vb.pp("c")).unwrap();
            let fast = Conv3::new(cin, cout, vb.pp("c")).unwrap();
            assert!(fast.is_fast() || !fastconv_enabled_by_env());
            let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev).unwrap();
            let a = candle.forward(&x).unwrap();
            let b = fast.forward(&x).unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{cin}->{cout} {h}x{w}: max diff {diff}");
        }
    }
}
