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

use super::layout::{nchw_from_rows, rows_from_nchw, Map};
use crate::ml::fastconv::{Activation, Backend, Conv3x3, Epilogue, Nhwc, Winograd};
use crate::ml::realesrgan::fastconv_enabled_by_env;

const CONV3: Conv2dConfig = Conv2dConfig { padding: 1, stride: 1, dilation: 1, groups: 1, cudnn_fwd_algo: None };

/// The Winograd mode of the SD convolutions: [`Winograd::Auto`] (F(4×4, 3×3) on AVX-512 where
/// it pays) unless `[kernels] winograd` / `UPRES_FASTCONV_WINOGRAD` says otherwise. Its error
/// (≤ 5e-5 of Σ|w·x|) stays inside the diffusers parity bounds (docs/sd-x4.md).
fn sd_winograd() -> Winograd {
    Winograd::from_env_or(Winograd::Auto)
}

/// The kernels the SD convolutions run on this machine, for benchmark headers.
pub fn kernel_family() -> String {
    if !fastconv_enabled_by_env() {
        return "candle conv2d (UPRES_FASTCONV=off)".into();
    }
    let dense = if crate::ml::fastconv::dense::Dense::available() { "fastconv dense (AVX-512)" } else { "candle's GEMM" };
    format!("3x3 on fastconv {} (Winograd {:?}); transformer linears on {dense}; 1x1, attention and stride-2 on candle", Backend::detect(), sd_winograd())
}

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

    /// `group_norm(x)` of NCHW `x` as `(N, H·W, C)` tokens (the transformer's layout), the
    /// transposition fused into the normalising pass on the CPU.
    pub fn forward_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if !self.fast(x) {
            return self.candle.forward(x)?.permute((0, 2, 3, 1))?.reshape((n, h * w, c));
        }
        let out = with_f32_slice(x, |data| {
            let ab = self.affine(data, n, c, h * w);
            let mut out = vec![0f32; data.len()];
            let rows = out.par_chunks_mut(w * c).enumerate().map(|(r, row)| (r / h, r % h, row));
            rows_from_nchw(data, (n, c, h, w), Map { affine: Some(&ab), silu: false, up: 1 }, c, rows);
            Ok(out)
        })?;
        Tensor::from_vec(out, (n, h * w, c), x.device())
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
pub(super) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
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
            let w = conv.weight().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let b = conv.bias().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
            let fast = Conv3x3::with_options(&w, b.as_deref(), cin, cout, Activation::None, Backend::detect(), sd_winograd())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
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
        self.forward_fused(x, pre, None, residual)
    }

    /// [`Conv3::forward_pre`] plus `add`, a per-channel term: `(N, out_c)` (one row per image,
    /// the resnet's time embedding) or `(out_c)` (the 1×1 shortcut's bias), fused into the
    /// output pass on the fast path.
    pub fn forward_fused(&self, x: Tensor, pre: Pre, add: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
        let conv = match self {
            Conv3::Fast(c) if x.device().is_cpu() => c,
            _ => return self.forward_candle(x, pre, add, residual),
        };
        let dev = x.device().clone();
        let (n, c, h, w) = x.dims4()?;
        let up = if matches!(pre, Pre::Up2) { 2 } else { 1 };
        let (oh, ow) = (h * up, w * up);
        let input = with_f32_slice(&x, |data| {
            let ab = match pre {
                Pre::NormSilu(norm) if norm.fast(&x) => Some(norm.affine(data, n, c, h * w)),
                Pre::NormSilu(_) => candle_core::bail!("fast conv: group norm weights are not on the CPU"),
                _ => None,
            };
            let mut t = Nhwc::zeros(n, oh, ow, c);
            let map = Map { affine: ab.as_deref(), silu: ab.is_some(), up };
            rows_from_nchw(data, (n, c, h, w), map, c, t.interior_rows_mut());
            Ok(t)
        })?;
        drop(x);
        let co = conv.out_c();
        let mut out = Nhwc::zeros(n, oh, ow, co);
        conv.forward(&input, 0, &mut out, 0, &Epilogue::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        drop(input);
        let add = match add {
            Some(a) => {
                let v = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != co && v.len() != n * co {
                    candle_core::bail!("fast conv: {} channel terms for {n} images of {co} channels", v.len());
                }
                Some(v)
            }
            None => None,
        };
        let shape = (n, co, oh, ow);
        let y = match residual {
            Some(r) => {
                if r.dims4()? != shape {
                    candle_core::bail!("fast conv: residual {:?} for an output {shape:?}", r.dims());
                }
                with_f32_slice(r, |r| Ok(nchw_from_rows(shape, co, |ni, yy| out.interior_row(ni, yy), add.as_deref(), Some(r))))?
            }
            None => nchw_from_rows(shape, co, |ni, yy| out.interior_row(ni, yy), add.as_deref(), None),
        };
        drop(out);
        Tensor::from_vec(y, shape, &dev)
    }

    fn forward_candle(&self, x: Tensor, pre: Pre, add: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
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
        let y = match add {
            Some(a) if a.rank() == 1 => y.broadcast_add(&a.reshape((1, (), 1, 1))?)?,
            Some(a) => y.broadcast_add(&a.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?)?,
            None => y,
        };
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
    /// released once `conv1` has read it. The time embedding is added in `conv1`'s output pass
    /// and, on the fast path, the shortcut's bias in `conv2`'s.
    pub fn forward(&self, x: Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let (shortcut, sc_bias) = match &self.conv_shortcut {
            Some(c) if self.conv2.is_fast() && x.device().is_cpu() => (pointwise_no_bias(c, &x)?, c.bias().cloned()),
            Some(c) => (c.forward(&x)?, None),
            None => (x.clone(), None),
        };
        let t = match (temb, &self.time_emb_proj) {
            (Some(t), Some(proj)) => Some(proj.forward(&candle_nn::ops::silu(t)?)?),
            _ => None,
        };
        let h = self.conv1.forward_fused(x, Pre::NormSilu(&self.norm1), t.as_ref(), None)?;
        self.conv2.forward_fused(h, Pre::NormSilu(&self.norm2), sc_bias.as_ref(), Some(&shortcut))
    }
}

/// A 1×1 convolution without its bias as one GEMM per image on the NCHW data
/// (`W (out, in) · X (in, H·W)`): no im2col copy, no layout change.
fn pointwise_no_bias(c: &Conv2d, x: &Tensor) -> Result<Tensor> {
    let (n, ci, h, w) = x.dims4()?;
    let wt = c.weight();
    let co = wt.dim(0)?;
    let wt = wt.reshape((co, ci))?;
    let x = x.contiguous()?;
    let ys = (0..n).map(|i| wt.matmul(&x.get(i)?.reshape((ci, h * w))?)?.reshape((1, co, h, w))).collect::<Result<Vec<_>>>()?;
    Tensor::cat(&ys, 0)
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Random values for every variable created so far (the constructors' inits are too regular:
    /// unit norms, zero biases).
    fn randomise(vm: &VarMap) {
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), v.device()).unwrap()).unwrap();
        }
    }

    /// The fused resnet (group norm + SiLU into the input pass, time embedding and the 1×1
    /// shortcut's bias into the output pass, the shortcut as one GEMM per image, Winograd where
    /// it pays) against the same block written with candle's ops: within 1e-4.
    #[test]
    fn fused_resnet_matches_candle_ops() {
        let dev = Device::Cpu;
        for (cin, cout, h, w) in [(48, 64, 9, 11), (32, 32, 8, 8)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("r");
            let (groups, eps, temb) = (8, 1e-5, 24);
            let n1 = candle_nn::group_norm(groups, cin, eps, vb.pp("norm1")).unwrap();
            let c1 = conv2d(cin, cout, 3, CONV3, vb.pp("conv1")).unwrap();
            let n2 = candle_nn::group_norm(groups, cout, eps, vb.pp("norm2")).unwrap();
            let c2 = conv2d(cout, cout, 3, CONV3, vb.pp("conv2")).unwrap();
            let tp = linear(temb, cout, vb.pp("time_emb_proj")).unwrap();
            let sc = (cin != cout).then(|| conv2d(cin, cout, 1, Conv2dConfig::default(), vb.pp("conv_shortcut")).unwrap());
            randomise(&vm);
            let r = Resnet::new(vb.clone(), cin, cout, groups, eps, Some(temb)).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev).unwrap();
            let t = Tensor::randn(0f32, 1.0, (2, temb), &dev).unwrap();
            let want = {
                let hh = c1.forward(&n1.forward(&x).unwrap().silu().unwrap()).unwrap();
                let te = tp.forward(&t.silu().unwrap()).unwrap().unsqueeze(2).unwrap().unsqueeze(3).unwrap();
                let hh = hh.broadcast_add(&te).unwrap();
                let hh = c2.forward(&n2.forward(&hh).unwrap().silu().unwrap()).unwrap();
                let short = match &sc {
                    Some(sc) => sc.forward(&x).unwrap(),
                    None => x.clone(),
                };
                (short + hh).unwrap()
            };
            let got = r.forward(x, Some(&t)).unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "{cin}->{cout} {h}x{w}: max diff {d}");
        }
    }

    /// Nearest ×2 upsampling fused into the input pass equals upsampling, then convolving.
    #[test]
    fn fused_upsampling_conv_matches_candle() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let candle = conv2d(24, 16, 3, CONV3, vb.pp("c")).unwrap();
        randomise(&vm);
        let fast = Conv3::new(24, 16, vb.pp("c")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 24, 5, 7), &dev).unwrap();
        let want = candle.forward(&x.upsample_nearest2d(10, 14).unwrap()).unwrap();
        let got = fast.forward_pre(x, Pre::Up2, None).unwrap();
        let d = max_diff(&got, &want);
        assert!(d < 1e-4, "max diff {d}");
    }

    /// The group norm written straight into `(N, H·W, C)` tokens equals candle's group norm
    /// followed by the permutation (same statistics in f64: within 1e-5).
    #[test]
    fn norm_to_tokens_matches_candle() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let candle = candle_nn::group_norm(8, 40, 1e-6, vb.pp("n")).unwrap();
        randomise(&vm);
        let norm = Norm::new(8, 40, 1e-6, vb.pp("n")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 40, 6, 9), &dev).unwrap();
        let want = candle.forward(&x).unwrap().permute((0, 2, 3, 1)).unwrap().reshape((2, 54, 40)).unwrap();
        let d = max_diff(&norm.forward_tokens(&x).unwrap(), &want);
        assert!(d < 1e-5, "max diff {d}");
    }
}
