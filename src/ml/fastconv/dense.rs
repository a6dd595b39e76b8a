//! Dense layer `y = x·Wᵀ + b` (torch's `Linear`) on the AVX-512 register-blocked microkernel of
//! the direct convolution with one tap instead of nine: `P` rows × `NV`·16 output columns in
//! `P·NV ≤ 24` zmm accumulators, broadcast input, FMA, bias fused into the store.
//!
//! candle's CPU matmul (the `gemm` crate) runs its AVX2/FMA kernel on stable Rust; the SD
//! UNet's transformer layers (projections and the feed-forward, about a third of its FLOPs)
//! run here instead where AVX-512 is the fp32 backend. Weights are packed once, at load, into
//! blocks of up to 64 output columns, `[k][NV·16]`, zero-padded.
// Unsafe is needed for SIMD intrinsics and `#[target_feature]` functions; the crate root
// denies it elsewhere.
#![allow(unsafe_code)]

use rayon::prelude::*;

use super::error::{shape_err, FastConvError};
use super::select::Backend;

/// Output columns per packed block (4 zmm vectors).
const BLOCK: usize = 64;
/// Rows per parallel work item (a multiple of every `P` below).
const ROWS: usize = 48;

/// A packed dense layer: `k` inputs, `n` outputs.
pub struct Dense {
    k: usize,
    n: usize,
    /// Per block of up to 64 columns: `[k][nv·16]`, columns past `n` zero.
    packed: Vec<Vec<f32>>,
    /// `n` rounded up to whole vectors per block, zero-padded.
    bias: Vec<Vec<f32>>,
}

impl Dense {
    /// Whether [`Dense::forward`] runs the AVX-512 kernel: the fp32 backend ([`Backend::detect`],
    /// which honours the operator's override) is AVX-512.
    pub fn available() -> bool {
        Backend::detect() == Backend::Avx512
    }

    /// `weight`: `n` rows of `k` (row-major, torch's `Linear.weight`); `bias`: `n` or none.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, k: usize, n: usize) -> Result<Self, FastConvError> {
        if k == 0 || n == 0 || weight.len() != k * n {
            return shape_err(format!("dense: {} weights for {n}x{k}", weight.len()));
        }
        if bias.is_some_and(|b| b.len() != n) {
            return shape_err("dense: bias length != n");
        }
        let mut packed = Vec::new();
        let mut biases = Vec::new();
        for n0 in (0..n).step_by(BLOCK) {
            let width = BLOCK.min(n - n0);
            let cols = width.div_ceil(16) * 16;
            let mut p = vec![0f32; k * cols];
            for j in 0..width {
                for kk in 0..k {
                    p[kk * cols + j] = weight[(n0 + j) * k + kk];
                }
            }
            let mut b = vec![0f32; cols];
            if let Some(bias) = bias {
                b[..width].copy_from_slice(&bias[n0..n0 + width]);
            }
            packed.push(p);
            biases.push(b);
        }
        Ok(Dense { k, n, packed, bias: biases })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `x`: `m` rows of `k` (row-major); returns `m` rows of `n`. Falls back to a scalar loop
    /// where AVX-512 is not available (callers check [`Dense::available`] and use their own
    /// GEMM then; the fallback keeps the function total).
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>, FastConvError> {
        let (k, n) = (self.k, self.n);
        if x.len() != m * k {
            return shape_err(format!("dense: {} inputs for {m}x{k}", x.len()));
        }
        let mut out = vec![0f32; m * n];
        if m == 0 {
            return Ok(out);
        }
        let avx512 = avx512_usable();
        out.par_chunks_mut(ROWS * n).zip(x.par_chunks(ROWS * k)).for_each(|(o, xs)| {
            let rows = xs.len() / k;
            for (bi, (w, b)) in self.packed.iter().zip(&self.bias).enumerate() {
                let n0 = bi * BLOCK;
                let width = BLOCK.min(n - n0);
                if avx512 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `xs` holds `rows` rows of `k`, `o` rows of `n`; the block holds
                    // `k·cols` packed weights and `cols` biases with `cols ≥ width`; avx512f was
                    // detected.
                    unsafe {
                        kernel::block(xs.as_ptr(), rows, k, w.as_ptr(), b.as_ptr(), o.as_mut_ptr().add(n0), n, width)
                    };
                } else {
                    let cols = w.len() / k;
                    for r in 0..rows {
                        for j in 0..width {
                            let mut acc = b[j];
                            for kk in 0..k {
                                acc += xs[r * k + kk] * w[kk * cols + j];
                            }
                            o[r * n + n0 + j] = acc;
                        }
                    }
                }
            }
        });
        Ok(out)
    }
}

fn avx512_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    /// One column block (`width ≤ 64` columns at `out`) for `rows` rows.
    ///
    /// # Safety
    /// `x` addresses `rows·k` floats, `w` `k·cols` and `bias` `cols` floats with
    /// `cols = ceil(width/16)·16`, `out` is writable at `r·ldo + j` for `r < rows`, `j < width`;
    /// the CPU supports avx512f.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(x: *const f32, rows: usize, k: usize, w: *const f32, bias: *const f32, out: *mut f32, ldo: usize, width: usize) {
        // SAFETY: forwarded.
        unsafe {
            match width.div_ceil(16) {
                1 => tiles::<1, 16>(x, rows, k, w, bias, out, ldo, width),
                2 => tiles::<2, 12>(x, rows, k, w, bias, out, ldo, width),
                3 => tiles::<3, 8>(x, rows, k, w, bias, out, ldo, width),
                _ => tiles::<4, 6>(x, rows, k, w, bias, out, ldo, width),
            }
        }
    }

    /// # Safety
    /// As [`block`], with `NV == ceil(width/16)`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles<const NV: usize, const P: usize>(x: *const f32, rows: usize, k: usize, w: *const f32, bias: *const f32, out: *mut f32, ldo: usize, width: usize) {
        let last_lanes = width - (NV - 1) * 16;
        let last_mask: __mmask16 = if last_lanes >= 16 { 0xffff } else { ((1u32 << last_lanes) - 1) as u16 };
        let mut r0 = 0;
        while r0 < rows {
            let np = P.min(rows - r0);
            // Rows past the end read the last valid row (results dropped).
            let mut xp = [x; P];
            for (p, xp) in xp.iter_mut().enumerate() {
                // SAFETY: row r0 + min(p, np-1) < rows.
                *xp = unsafe { x.add((r0 + p.min(np - 1)) * k) };
            }
            let mut acc = [[_mm512_setzero_ps(); NV]; P];
            for kk in 0..k {
                // SAFETY: kk < k; the packed rows hold NV·16 floats each.
                unsafe {
                    let wp = w.add(kk * NV * 16);
                    let mut wv = [_mm512_setzero_ps(); NV];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_ps(wp.add(v * 16));
                    }
                    for p in 0..P {
                        let xv = _mm512_set1_ps(*xp[p].add(kk));
                        for v in 0..NV {
                            acc[p][v] = _mm512_fmadd_ps(wv[v], xv, acc[p][v]);
                        }
                    }
                }
            }
            for (p, accp) in acc.iter().enumerate().take(np) {
                for (v, &a) in accp.iter().enumerate() {
                    // SAFETY: bias holds NV·16 floats; the store covers columns < width of row
                    // r0 + p < rows.
                    unsafe {
                        let y = _mm512_add_ps(a, _mm512_loadu_ps(bias.add(v * 16)));
                        let mask = if v + 1 == NV { last_mask } else { 0xffff };
                        _mm512_mask_storeu_ps(out.add((r0 + p) * ldo + v * 16), mask, y);
                    }
                }
            }
            r0 += P;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 reference, on widths that exercise every `NV` and a partial last vector,
    /// and row counts that leave partial tiles and partial work items.
    #[test]
    fn dense_matches_an_f64_reference() {
        for (m, k, n) in [(1, 3, 1), (7, 16, 20), (50, 33, 64), (97, 40, 150), (130, 64, 37)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.2).collect();
            let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.11).cos()).collect();
            let y = Dense::new(&w, Some(&b), k, n).unwrap().forward(&x, m).unwrap();
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = b[j] as f64 + (0..k).map(|kk| x[r * k + kk] as f64 * w[j * k + kk] as f64).sum::<f64>();
                    let got = y[r * n + j] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{m}x{k}x{n} ({r},{j}): {got} vs {want}");
                }
            }
        }
        assert!(Dense::new(&[0.0; 5], None, 2, 3).is_err());
    }
}
