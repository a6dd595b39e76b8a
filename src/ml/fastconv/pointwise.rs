//! Per-pixel operations on [`Nhwc`] that no 3×3 epilogue fuses: the 1×1 convolution (one matrix
//! product on candle's CPU GEMM, which dispatches to AVX-512/AVX2 at run time) and a sigmoid that
//! vectorises (SPAN's Swish and attention passes call it ~15 M times per 128² forward, where
//! libm's `expf` alone would cost about as much as three of its convolutions).

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::error::{shape_err, FastConvError};
use super::layout::Nhwc;

/// `e^x` to ~1 ulp of f32 for `x` in `[-87, 88]` (clamped outside): range reduction by `ln 2`,
/// a degree-6 polynomial, and the power of two built in the exponent bits. Branch-free, so
/// loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let pow2 = f32::from_bits((t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127)) << 23);
    p * pow2
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x · sigmoid(x)` (SiLU).
#[inline(always)]
pub fn swish(x: f32) -> f32 {
    x * sigmoid(x)
}

/// A 1×1 convolution with bias: `out[o] = bias[o] + Σ_i w[o][i] · in[i]` per pixel.
pub struct Conv1x1 {
    in_c: usize,
    out_c: usize,
    /// `(in_c, out_c)`, so one matmul maps `(pixels, in_c)` to `(pixels, out_c)`.
    weight: Tensor,
    bias: Vec<f32>,
}

fn candle_err(e: candle_core::Error) -> FastConvError {
    FastConvError::Shape(e.to_string())
}

impl Conv1x1 {
    /// `weight` is OIHW with 1×1 kernels (`out_c·in_c` values), `bias` has `out_c` (or none).
    pub fn new(weight: &[f32], bias: Option<&[f32]>, in_c: usize, out_c: usize) -> Result<Self, FastConvError> {
        if in_c == 0 || out_c == 0 || weight.len() != in_c * out_c {
            return shape_err(format!("1×1 weight: {} values for {out_c}x{in_c}", weight.len()));
        }
        if bias.is_some_and(|b| b.len() != out_c) {
            return shape_err("bias length != out_c");
        }
        let mut t = vec![0f32; in_c * out_c];
        for o in 0..out_c {
            for i in 0..in_c {
                t[i * out_c + o] = weight[o * in_c + i];
            }
        }
        let weight = Tensor::from_vec(t, (in_c, out_c), &Device::Cpu).map_err(candle_err)?;
        Ok(Conv1x1 { in_c, out_c, weight, bias: bias.map_or_else(|| vec![0.0; out_c], <[f32]>::to_vec) })
    }

    pub fn in_c(&self) -> usize {
        self.in_c
    }

    pub fn out_c(&self) -> usize {
        self.out_c
    }

    /// Convolves channels `in_off..in_off+in_c` of `input` into channels
    /// `out_off..out_off+out_c` of `out` (same n, h, w).
    pub fn forward(&self, input: &Nhwc, in_off: usize, out: &mut Nhwc, out_off: usize) -> Result<(), FastConvError> {
        let (n, h, w, cs) = input.shape();
        if in_off + self.in_c > cs || out_off + self.out_c > out.c || (out.n, out.h, out.w) != (n, h, w) {
            return shape_err(format!("1×1 conv: {:?} ch {in_off}+{} into {:?} ch {out_off}+{}", input.shape(), self.in_c, out.shape(), self.out_c));
        }
        input.expect_f32(in_off, self.in_c);
        let (ic, oc) = (self.in_c, self.out_c);
        // Gather the interior pixels' input channels into one (pixels, in_c) matrix.
        let mut a = vec![0f32; n * h * w * ic];
        a.par_chunks_mut((w * ic).max(1)).enumerate().for_each(|(r, dst)| {
            let src = input.row(r / h, r % h);
            for (x, d) in dst.chunks_exact_mut(ic).enumerate() {
                d.copy_from_slice(&src[x * cs + in_off..x * cs + in_off + ic]);
            }
        });
        let y = Tensor::from_vec(a, (n * h * w, ic), &Device::Cpu)
            .and_then(|a| a.matmul(&self.weight))
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1::<f32>())
            .map_err(candle_err)?;
        let cso = out.c;
        let bias = &self.bias;
        out.par_rows_mut().for_each(|(ni, yy, dst)| {
            let src = &y[(ni * h + yy) * w * oc..];
            for (x, d) in dst.chunks_exact_mut(cso).enumerate() {
                for ((d, &s), &b) in d[out_off..out_off + oc].iter_mut().zip(&src[x * oc..(x + 1) * oc]).zip(bias) {
                    *d = s + b;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_sigmoid_match_libm() {
        let mut worst = 0f32;
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6, "sigmoid({x})");
        }
        assert!(worst < 4e-7, "exp: worst relative error {worst:e}");
        assert!((0.0..1e-30).contains(&sigmoid(-1000.0)));
        assert!(sigmoid(1000.0) == 1.0 && swish(0.0) == 0.0);
    }

    #[test]
    fn conv1x1_matches_the_definition() {
        let (n, h, w, ic, oc) = (2, 3, 5, 7, 4);
        let weight: Vec<f32> = (0..oc * ic).map(|i| (i as f32 * 0.37).sin()).collect();
        let bias: Vec<f32> = (0..oc).map(|o| o as f32 * 0.1).collect();
        let data: Vec<f32> = (0..n * ic * h * w).map(|i| (i as f32 * 0.11).cos()).collect();
        // Input channels at offset 2 of a wider buffer, output at offset 1.
        let mut input = Nhwc::zeros(n, h, w, ic + 3);
        let src = Nhwc::from_nchw(&data, n, ic, h, w, 0).unwrap();
        input.copy_channels(2, &src, 0, ic);
        let mut out = Nhwc::zeros(n, h, w, oc + 2);
        Conv1x1::new(&weight, Some(&bias), ic, oc).unwrap().forward(&input, 2, &mut out, 1).unwrap();
        for ni in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for o in 0..oc {
                        let want: f32 = bias[o] + (0..ic).map(|i| weight[o * ic + i] * data[((ni * ic + i) * h + y) * w + x]).sum::<f32>();
                        let got = out.pixel(ni, y, x)[1 + o];
                        assert!((got - want).abs() < 1e-5, "({ni},{y},{x},{o}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
