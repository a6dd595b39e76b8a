//! AVX-512 direct-convolution microkernels (fp32 FMA, and bf16 dot products with f32
//! accumulation).
//!
//! A tile is `P` consecutive output positions (padded flat coordinates, so the 9 taps are
//! constant offsets and no bounds checks are needed) × `NV` vectors of 16 output channels,
//! held in `P*NV <= 24` zmm accumulators. Per input channel and tap: `NV` weight loads, `P`
//! broadcasts, `P*NV` FMAs. The epilogue (bias, LeakyReLU/PReLU as a per-channel slope,
//! scale, up to two weighted residuals) runs on the accumulators before the single store.
// Unsafe is needed for SIMD intrinsics, `#[target_feature]` functions and the raw-pointer
// job (see job.rs); the crate root denies it elsewhere.
#![allow(unsafe_code)]
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::job::{RawBlock, RawJob};

/// Epilogue for one accumulator vector `a` of channels `v*16..` at position `qq`; returns
/// the stored values.
///
/// # Safety
/// As [`epilogue_vec`], and `qq` is an interior position of the job's output.
#[inline(always)]
pub(super) unsafe fn store_vec(j: &RawJob, b: &RawBlock, qq: usize, v: usize, nv: usize, a: __m512) -> __m512 {
    // SAFETY: forwarded (epilogue_vec's contract); the out pointer addresses interior pixel
    // qq of a buffer whose channel slice holds the block's channels (validated in mod.rs).
    unsafe {
        let y = epilogue_vec(j, b, qq, v, nv, a);
        let oc = b.oc0 + v * 16;
        let mask: __mmask16 = if v + 1 == nv { ((1u32 << b.lanes) - 1) as u16 } else { 0xffff };
        _mm512_mask_storeu_ps(j.out.add(qq * j.cs_out + oc), mask, y);
        y
    }
}

/// Bias, activation, scale and residuals for one accumulator vector, without the store.
///
/// # Safety
/// `j` and `b` satisfy the job contract of [`RawJob`], `v < nv` is a vector of `b`, `qq` a
/// position inside the padded buffers; the CPU supports avx512f.
#[inline(always)]
pub(super) unsafe fn epilogue_vec(j: &RawJob, b: &RawBlock, qq: usize, v: usize, nv: usize, a: __m512) -> __m512 {
    // SAFETY: bias/slope hold nv*16 entries; residual pointers address interior pixel qq
    // of buffers whose channel slices hold the block's channels (validated in mod.rs).
    unsafe {
        let bias = _mm512_loadu_ps(b.bias.add(v * 16));
        let slope = _mm512_loadu_ps(b.slope.add(v * 16));
        let mut y = _mm512_add_ps(a, bias);
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, _mm512_setzero_ps());
        y = _mm512_mask_mul_ps(y, neg, y, slope);
        y = _mm512_mul_ps(y, _mm512_set1_ps(j.scale));
        let oc = b.oc0 + v * 16;
        let mask: __mmask16 = if v + 1 == nv { ((1u32 << b.lanes) - 1) as u16 } else { 0xffff };
        for r in &j.res[..j.nres] {
            let rv = _mm512_maskz_loadu_ps(mask, r.ptr.add(qq * r.cs + oc));
            y = _mm512_fmadd_ps(rv, _mm512_set1_ps(r.weight), y);
        }
        y
    }
}

/// # Safety
/// As [`store_vec`] for positions `q..q+np` (the interior ones are stored).
#[inline(always)]
unsafe fn epilogue<const NV: usize, const P: usize>(
    j: &RawJob,
    b: &RawBlock,
    q: usize,
    np: usize,
    acc: &[[__m512; NV]; P],
) {
    for (p, accp) in acc.iter().enumerate().take(np) {
        let qq = q + p;
        let col = qq % j.row_px;
        if col == 0 || col > j.w {
            continue;
        }
        for (v, &a) in accp.iter().enumerate() {
            // SAFETY: forwarded from the tile loop.
            unsafe { store_vec(j, b, qq, v, NV, a) };
        }
    }
}

/// # Safety
/// As [`run_range`], with `NV == b.nv`.
#[target_feature(enable = "avx512f")]
unsafe fn tiles<const NV: usize, const P: usize>(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    let c_in = j.c_in;
    let cs = j.cs_in;
    let mut q = q0;
    while q < q1 {
        let np = P.min(q1 - q);
        let mut acc = [[_mm512_setzero_ps(); NV]; P];
        for t in 0..9 {
            // SAFETY: position q (+ up to P-1, + tap offset) lies in the padded input or in
            // its trailing slack (validated in mod.rs); weights hold 9*c_in*NV*16 floats.
            unsafe {
                let ip = j.inp.offset((q * cs) as isize + j.tap_off[t]);
                let mut wp = b.w.add(t * c_in * NV * 16);
                for ic in 0..c_in {
                    let mut wv = [_mm512_setzero_ps(); NV];
                    for (v, w) in wv.iter_mut().enumerate() {
                        *w = _mm512_loadu_ps(wp.add(v * 16));
                    }
                    wp = wp.add(NV * 16);
                    for (p, accp) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*ip.add(p * cs + ic));
                        for v in 0..NV {
                            accp[v] = _mm512_fmadd_ps(wv[v], x, accp[v]);
                        }
                    }
                }
            }
        }
        // SAFETY: as above.
        unsafe { epilogue::<NV, P>(j, b, q, np, &acc) };
        q += P;
    }
}

/// fp32 AVX-512 kernel over positions `q0..q1` for one block.
///
/// # Safety
/// `j` and `b` satisfy the job contract of [`RawJob`] for positions `q0..q1` on the interior
/// rows of one image; the CPU supports avx512f.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn run_range(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded.
    unsafe {
        match b.nv {
            1 => tiles::<1, 16>(j, b, q0, q1),
            2 => tiles::<2, 12>(j, b, q0, q1),
            3 => tiles::<3, 8>(j, b, q0, q1),
            _ => tiles::<4, 6>(j, b, q0, q1),
        }
    }
}

/// bf16 tiles: the input is a bf16 copy (`j.inp` really points at u16 data, `cs_in` and
/// `c_in` counted in bf16 elements, `c_in` even), weights interleave input-channel pairs:
/// `[tap][c_in/2][NV*16][2]`. `vdpbf16ps` adds both products of a pair into f32 lanes.
///
/// # Safety
/// As [`run_range_bf16`], with `NV == b.nv`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tiles_bf16<const NV: usize, const P: usize>(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    let pairs = j.c_in / 2;
    let cs = j.cs_in;
    let inp = j.inp as *const u16;
    let mut q = q0;
    while q < q1 {
        let np = P.min(q1 - q);
        let mut acc = [[_mm512_setzero_ps(); NV]; P];
        for t in 0..9 {
            // SAFETY: as in `tiles`, with u16 elements; input pairs are 4-byte aligned
            // reads of two adjacent bf16 channels (read unaligned to be safe).
            unsafe {
                let ip = inp.offset((q * cs) as isize + j.tap_off[t]);
                let mut wp = b.wbf.add(t * pairs * NV * 32);
                for k in 0..pairs {
                    let mut wv = [_mm512_setzero_si512(); NV];
                    for (v, w) in wv.iter_mut().enumerate() {
                        *w = _mm512_loadu_si512(wp.add(v * 32) as *const _);
                    }
                    wp = wp.add(NV * 32);
                    for (p, accp) in acc.iter_mut().enumerate() {
                        let pair = (ip.add(p * cs + 2 * k) as *const u32).read_unaligned();
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                        for v in 0..NV {
                            let wb: __m512bh = std::mem::transmute(wv[v]);
                            accp[v] = _mm512_dpbf16_ps(accp[v], wb, x);
                        }
                    }
                }
            }
        }
        // SAFETY: as above (epilogue reads/writes f32 buffers).
        unsafe { epilogue::<NV, P>(j, b, q, np, &acc) };
        q += P;
    }
}

/// bf16 AVX-512 kernel over positions `q0..q1` for one block.
///
/// # Safety
/// As [`run_range`], with `j.inp` the bf16 copy of the input (channel pairs, even `cs_in`) and
/// `b`'s bf16 weights packed; the CPU supports avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn run_range_bf16(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded.
    unsafe {
        match b.nv {
            1 => tiles_bf16::<1, 16>(j, b, q0, q1),
            2 => tiles_bf16::<2, 12>(j, b, q0, q1),
            3 => tiles_bf16::<3, 8>(j, b, q0, q1),
            _ => tiles_bf16::<4, 6>(j, b, q0, q1),
        }
    }
}

/// A register-only FMA loop: 24 independent chains of `iters` FMAs each (the bench's
/// ceiling for these kernels). `None` without avx512f.
pub(super) fn fma_chains(iters: usize) -> Option<f32> {
    /// # Safety
    /// The CPU supports avx512f.
    #[target_feature(enable = "avx512f")]
    fn chains(iters: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 24];
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }
    if !is_x86_feature_detected!("avx512f") {
        return None;
    }
    // SAFETY: avx512f checked above.
    Some(unsafe { chains(iters) })
}
