//! The layers Real-ESRGAN's networks are made of, on candle tensors (NCHW, f32).
//!
//! [`Conv`] is the one place a convolution is computed: the models call only `Conv::forward`, so
//! a faster kernel (issue #7's NHWC convolution) can replace candle's `conv2d` here without
//! touching the model code. Activations are fused into `Conv` for the same reason.

use candle_core::{DType, Device, Result, Tensor};

use super::error::ModelError;
use super::graph::Fused;
use crate::ml::fastconv;
use crate::ml::ncnn::LayerData;

/// The activation applied after a convolution.
#[derive(Clone, Debug)]
pub enum Activation {
    Identity,
    /// `max(x, slope·x)` for `0 ≤ slope ≤ 1`.
    LeakyRelu(f64),
    /// Per-channel slope for negative inputs, shaped `(1, C, 1, 1)`.
    PRelu(Tensor),
}

/// A same-padded, stride-1 2-D convolution with bias and activation.
#[derive(Clone, Debug)]
pub struct Conv {
    /// `(cout, cin, k, k)`.
    weight: Tensor,
    /// `(1, cout, 1, 1)`.
    bias: Option<Tensor>,
    act: Activation,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
}

impl Conv {
    /// Builds a convolution from ncnn weights (`weight` is OIHW).
    pub fn from_ncnn(
        data: LayerData,
        (cin, cout, k): (usize, usize, usize),
        fused: Fused,
        device: &Device,
    ) -> std::result::Result<Conv, ModelError> {
        let LayerData::Convolution { weight, bias } = data else {
            return Err(ModelError::Graph("convolution without weights".into()));
        };
        let weight = Tensor::from_vec(weight, (cout, cin, k, k), device)?;
        let bias = match bias {
            Some(b) => Some(Tensor::from_vec(b, (1, cout, 1, 1), device)?),
            None => None,
        };
        let act = match fused {
            Fused::None => Activation::Identity,
            Fused::LeakyRelu(s) => Activation::LeakyRelu(s as f64),
        };
        Ok(Conv { weight, bias, act, cin, cout, k })
    }

    /// Replaces the activation with a per-channel PReLU from ncnn slopes.
    pub fn with_prelu(mut self, data: LayerData, device: &Device) -> std::result::Result<Conv, ModelError> {
        let LayerData::PRelu { slope } = data else {
            return Err(ModelError::Graph("PReLU without slopes".into()));
        };
        let slope = if slope.len() == 1 { vec![slope[0]; self.cout] } else { slope };
        if slope.len() != self.cout {
            return Err(ModelError::Graph(format!("PReLU has {} slopes for {} channels", slope.len(), self.cout)));
        }
        let t = Tensor::from_vec(slope, (1, self.cout, 1, 1), device)?;
        self.act = Activation::PRelu(t);
        Ok(self)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("conv", cin = self.cin, cout = self.cout).entered();
        let mut y = conv_gemm(x, &self.weight)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        match &self.act {
            Activation::Identity => Ok(y),
            Activation::LeakyRelu(s) => y.maximum(&(&y * *s)?),
            Activation::PRelu(slope) => {
                let neg = y.minimum(0f32)?.broadcast_mul(slope)?;
                y.maximum(0f32)? + neg
            }
        }
    }

    /// The same convolution as a pre-packed [`fastconv::Conv3x3`] (NHWC, CPU): weights, bias
    /// and activation copied from this layer, for `backend` with the given Winograd mode
    /// (Winograd applies to the fp32 AVX-512 backend only). Only 3×3 kernels (every Real-ESRGAN conv).
    pub fn to_fast(&self, backend: fastconv::Backend, winograd: fastconv::Winograd) -> std::result::Result<fastconv::Conv3x3, ModelError> {
        if self.k != 3 {
            return Err(ModelError::Unsupported(format!("fastconv has no {0}x{0} kernel", self.k)));
        }
        let host = |t: &Tensor| -> std::result::Result<Vec<f32>, ModelError> {
            Ok(t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>())?)
        };
        let weight = host(&self.weight)?;
        let bias = match &self.bias {
            Some(b) => Some(host(b)?),
            None => None,
        };
        let act = match &self.act {
            Activation::Identity => fastconv::Activation::None,
            Activation::LeakyRelu(s) => fastconv::Activation::LeakyRelu(*s as f32),
            Activation::PRelu(slope) => fastconv::Activation::PRelu(host(slope)?),
        };
        Ok(fastconv::Conv3x3::with_options(&weight, bias.as_deref(), self.cin, self.cout, act, backend, winograd)?)
    }

    /// A 1×1 layer as a [`fastconv::pointwise::Conv1x1`] (NHWC, CPU, fp32; no activation).
    pub fn to_fast_1x1(&self) -> std::result::Result<fastconv::pointwise::Conv1x1, ModelError> {
        if self.k != 1 || !matches!(self.act, Activation::Identity) {
            return Err(ModelError::Unsupported(format!("not a plain 1x1 conv ({0}x{0}, {1:?})", self.k, self.act)));
        }
        let host = |t: &Tensor| -> std::result::Result<Vec<f32>, ModelError> {
            Ok(t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>())?)
        };
        let bias = self.bias.as_ref().map(host).transpose()?;
        Ok(fastconv::pointwise::Conv1x1::new(&host(&self.weight)?, bias.as_deref(), self.cin, self.cout)?)
    }

    /// Floating-point operations (multiply and add counted separately) on an `h`×`w` input.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        2 * (self.cin * self.cout * self.k * self.k * h * w) as u64
    }
}

/// Same-padded stride-1 convolution as one im2col + matrix product: the `k²` shifted copies of the
/// zero-padded input are stacked to `(N, cin·k², H·W)` (row order matching OIHW weights) and
/// multiplied by the `(cout, cin·k²)` weight. On the CPU this is several times faster than candle
/// 0.11's tiled `conv2d` (whose per-tile matmuls nest inside rayon tasks) and matches it to float
/// rounding.
fn conv_gemm(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, _, k, _) = weight.dims4()?;
    if k == 1 {
        let y = weight.reshape((cout, cin))?.broadcast_matmul(&x.reshape((n, cin, h * w))?)?;
        return y.reshape((n, cout, h, w));
    }
    let p = k / 2;
    let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut shifted = Vec::with_capacity(k * k);
    for dy in 0..k {
        for dx in 0..k {
            shifted.push(padded.narrow(2, dy, h)?.narrow(3, dx, w)?);
        }
    }
    let cols = Tensor::stack(&shifted, 2)?.reshape((n, cin * k * k, h * w))?;
    let y = weight.reshape((cout, cin * k * k))?.broadcast_matmul(&cols)?;
    y.reshape((n, cout, h, w))
}

/// Depth-to-space: `(N, C·r², H, W)` → `(N, C, H·r, W·r)`, channel `c·r² + i·r + j` going to
/// row offset `i`, column offset `j` (PyTorch's and ncnn's mode 0).
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let oc = c / (r * r);
    x.reshape((n, oc, r, r, h, w))?.permute((0, 1, 4, 2, 5, 3))?.contiguous()?.reshape((n, oc, h * r, w * r))
}

/// Nearest-neighbour upsampling by an integer factor.
pub fn nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(h * factor, w * factor)
}

/// ncnn's bicubic resize (Keys kernel with A = -0.75, half-pixel centres, edges replicated) to
/// `factor` times the size, as two matrix products. Output size is `floor(size · factor)`.
pub fn bicubic(x: &Tensor, factor: f32) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let oh = (h as f32 * factor) as usize;
    let ow = (w as f32 * factor) as usize;
    let rx = resize_matrix(w, ow, x.device())?; // (w, ow)
    let ry = resize_matrix(h, oh, x.device())?; // (h, oh)
    let t = x.reshape((n * c * h, w))?.matmul(&rx)?; // rows resized
    let t = t.reshape((n * c, h, ow))?.transpose(1, 2)?.contiguous()?; // (nc, ow, h)
    let t = t.reshape((n * c * ow, h))?.matmul(&ry)?; // (nc·ow, oh)
    t.reshape((n * c, ow, oh))?.transpose(1, 2)?.contiguous()?.reshape((n, c, oh, ow))
}

/// The `(src, dst)` matrix `M` with `out = in · M` along one axis.
fn resize_matrix(src: usize, dst: usize, device: &Device) -> Result<Tensor> {
    const A: f32 = -0.75;
    let mut m = vec![0f32; src * dst];
    let scale = src as f64 / dst as f64;
    for d in 0..dst {
        let fx = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let sx = fx.floor();
        let t = fx - sx;
        let (x0, x1, x2) = (t + 1.0, t, 1.0 - t);
        let c0 = A * x0 * x0 * x0 - 5.0 * A * x0 * x0 + 8.0 * A * x0 - 4.0 * A;
        let c1 = (A + 2.0) * x1 * x1 * x1 - (A + 3.0) * x1 * x1 + 1.0;
        let c2 = (A + 2.0) * x2 * x2 * x2 - (A + 3.0) * x2 * x2 + 1.0;
        let coeffs = [c0, c1, c2, 1.0 - c0 - c1 - c2];
        for (j, c) in coeffs.iter().enumerate() {
            let s = (sx as i64 - 1 + j as i64).clamp(0, src as i64 - 1) as usize;
            m[s * dst + d] += c;
        }
    }
    Tensor::from_vec(m, (src, dst), device)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_shuffle_matches_the_definition() {
        let d = Device::Cpu;
        let (c, r, h, w) = (2, 2, 2, 3);
        let x = Tensor::arange(0f32, (c * r * r * h * w) as f32, &d).unwrap().reshape((1, c * r * r, h, w)).unwrap();
        let y = pixel_shuffle(&x, r).unwrap();
        assert_eq!(y.dims(), &[1, c, h * r, w * r]);
        let y: Vec<Vec<Vec<f32>>> = y.squeeze(0).unwrap().to_vec3().unwrap();
        let xv: Vec<Vec<Vec<f32>>> = x.squeeze(0).unwrap().to_vec3().unwrap();
        for oc in 0..c {
            for oy in 0..h * r {
                for ox in 0..w * r {
                    let (i, j) = (oy % r, ox % r);
                    assert_eq!(y[oc][oy][ox], xv[oc * r * r + i * r + j][oy / r][ox / r]);
                }
            }
        }
    }

    #[test]
    fn bicubic_rows_sum_to_one_and_keep_constants() {
        let d = Device::Cpu;
        let x = Tensor::full(0.3f32, (2, 3, 8, 12), &d).unwrap();
        for f in [0.5f32, 0.75] {
            let y = bicubic(&x, f).unwrap();
            assert_eq!(y.dims(), &[2, 3, (8.0 * f) as usize, (12.0 * f) as usize]);
            let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|p| (p - 0.3).abs() < 1e-6));
        }
    }

    #[test]
    fn conv_gemm_matches_candle_conv2d() {
        let d = Device::Cpu;
        for (n, cin, cout, h, w, k) in [(2, 5, 7, 9, 6, 3), (1, 3, 4, 1, 1, 3), (3, 4, 2, 5, 4, 1)] {
            let x = Tensor::randn(0f32, 1.0, (n, cin, h, w), &d).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &d).unwrap();
            let want = x.conv2d(&wt, k / 2, 1, 1, 1).unwrap();
            let got = conv_gemm(&x, &wt).unwrap();
            let diff: f32 = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(diff < 1e-4, "{n}x{cin}x{h}x{w} k{k}: {diff}");
        }
    }

    #[test]
    fn conv_activations() {
        let d = Device::Cpu;
        // 1×1 identity conv on 2 channels, bias 0, then leaky / prelu.
        let data = || LayerData::Convolution { weight: vec![1.0, 0.0, 0.0, 1.0], bias: Some(vec![0.0, 0.0]) };
        let x = Tensor::from_vec(vec![-1f32, 2.0, -4.0, 8.0], (1, 2, 1, 2), &d).unwrap();
        let leaky = Conv::from_ncnn(data(), (2, 2, 1), Fused::LeakyRelu(0.2), &d).unwrap();
        let v: Vec<f32> = leaky.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![-0.2, 2.0, -0.8, 8.0]);
        let prelu = Conv::from_ncnn(data(), (2, 2, 1), Fused::None, &d)
            .unwrap()
            .with_prelu(LayerData::PRelu { slope: vec![0.5, 0.25] }, &d)
            .unwrap();
        let v: Vec<f32> = prelu.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![-0.5, 2.0, -1.0, 8.0]);
    }
}
