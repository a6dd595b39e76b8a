//! Portable direct-convolution kernel: plain Rust over the same packed weights, compiled
//! twice — for the baseline target (SSE2 on x86-64, NEON with FMA on aarch64) and with
//! `avx2,fma` enabled — where LLVM vectorises the 16-lane multiply-adds (`fma16`). Each
//! 16-lane block of output channels is computed for a tile of P pixels over every tap and
//! input channel before the next block, so the P × 16 accumulators stay in registers. Same
//! packed weights, tiling and epilogue as the AVX-512 kernel.
// Unsafe is needed for the raw-pointer job (see job.rs) and for calling the
// `#[target_feature]` instantiation; the crate root denies it elsewhere.
#![allow(unsafe_code)]

use super::job::{RawBlock, RawJob};

/// Output pixels per tile.
const P: usize = 4;

/// `w · x + a` on 16 lanes. On whole arrays by value LLVM vectorises it (two 8-lane FMAs under
/// AVX2+FMA); indexed in place inside the tile loop it stayed scalar.
#[inline(always)]
fn fma16<const FMA: bool>(w: &[f32; 16], x: f32, a: &[f32; 16]) -> [f32; 16] {
    let mut o = [0f32; 16];
    for l in 0..16 {
        o[l] = if FMA { w[l].mul_add(x, a[l]) } else { w[l] * x + a[l] };
    }
    o
}

/// Bias, leaky ReLU, scale, residuals and the store for the accumulators `acc` of lane block
/// `v` at pixel `qq` (skipped for the padding columns).
///
/// # Safety
/// As [`run_range`]; `qq` is a position of the job's range and `v < b.nv`.
#[inline(always)]
unsafe fn store(j: &RawJob, b: &RawBlock, qq: usize, v: usize, lanes: usize, acc: &[f32; 16]) {
    let col = qq % j.row_px;
    if col == 0 || col > j.w {
        return;
    }
    for (l, &a) in acc.iter().enumerate().take(lanes) {
        let ch = v * 16 + l;
        // SAFETY: bias/slope hold NV*16 entries for this block.
        let (bias, slope) = unsafe { (*b.bias.add(ch), *b.slope.add(ch)) };
        let mut y = a + bias;
        if y < 0.0 {
            y *= slope;
        }
        y *= j.scale;
        let oc = b.oc0 + ch;
        for r in &j.res[..j.nres] {
            // SAFETY: residual buffers have the output's geometry (checked).
            y += r.weight * unsafe { *r.ptr.add(qq * r.cs + oc) };
        }
        // SAFETY: qq is an interior pixel, oc < out channel slice length.
        unsafe { *j.out.add(qq * j.cs_out + oc) = y };
    }
}

/// How the tile loop is ordered. `BLOCK_OUTER`: one 16-lane block of output channels at a time
/// over every tap and input channel, so its P × 16 accumulators stay in registers (8 of AVX2's
/// 16 ymm, 16 of NEON's 32 q registers): 13–33× faster under AVX2+FMA than the other order on
/// AMD EPYC. Otherwise all NV blocks per input channel, which reloads each input value once
/// instead of NV times and measured 1.2–1.3× faster with SSE2's 16 four-lane registers, where
/// P × 16 accumulators would take every register (docs/fastconv.md).
///
/// # Safety
/// As [`run_range`], with `NV == b.nv` (at most 4).
#[inline(always)]
unsafe fn tiles<const NV: usize, const FMA: bool, const BLOCK_OUTER: bool>(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    let c_in = j.c_in;
    let mut q = q0;
    while q < q1 {
        let np = P.min(q1 - q);
        if BLOCK_OUTER {
            for v in 0..NV {
                let mut acc = [[0f32; 16]; P];
                for t in 0..9 {
                    // SAFETY: q and the tap offset address a pixel of the padded input
                    // (validated in dispatch.rs: every interior position ± one row/column stays
                    // in the buffer, and the buffer has slack for the tile overrun past the last
                    // interior pixel).
                    let ip = unsafe { j.inp.offset((q * j.cs_in) as isize + j.tap_off[t]) };
                    // SAFETY: the block holds 9 * c_in * NV * 16 packed weights; v < NV.
                    let wp = unsafe { b.w.add(t * c_in * NV * 16 + v * 16) };
                    for ic in 0..c_in {
                        // SAFETY: the 16 weights of lane block v for tap t and input channel
                        // ic, in range as above; f32 arrays have f32 alignment.
                        let w16: &[f32; 16] = unsafe { &*(wp.add(ic * NV * 16) as *const [f32; 16]) };
                        for (p, accp) in acc.iter_mut().enumerate() {
                            // SAFETY: pixel q+p (+ tap) is inside the padded buffer or its slack.
                            let x = unsafe { *ip.add(p * j.cs_in + ic) };
                            *accp = fma16::<FMA>(w16, x, accp);
                        }
                    }
                }
                let lanes = if v + 1 == NV { b.lanes } else { 16 };
                for (p, accp) in acc.iter().enumerate().take(np) {
                    // SAFETY: q + p < q1 is a position of the range; v < NV.
                    unsafe { store(j, b, q + p, v, lanes, accp) };
                }
            }
        } else {
            let mut acc = [[[0f32; 16]; NV]; P];
            for t in 0..9 {
                // SAFETY: as above.
                let ip = unsafe { j.inp.offset((q * j.cs_in) as isize + j.tap_off[t]) };
                // SAFETY: the block holds 9 * c_in * NV * 16 packed weights.
                let wp = unsafe { b.w.add(t * c_in * NV * 16) };
                for ic in 0..c_in {
                    // SAFETY: in range as above.
                    let wrow: &[f32] = unsafe { std::slice::from_raw_parts(wp.add(ic * NV * 16), NV * 16) };
                    for (p, accp) in acc.iter_mut().enumerate() {
                        // SAFETY: pixel q+p (+ tap) is inside the padded buffer or its slack.
                        let x = unsafe { *ip.add(p * j.cs_in + ic) };
                        for (v, accv) in accp.iter_mut().enumerate() {
                            let w16: &[f32; 16] = wrow[v * 16..v * 16 + 16].try_into().expect("16 lanes");
                            *accv = fma16::<FMA>(w16, x, accv);
                        }
                    }
                }
            }
            for (p, accp) in acc.iter().enumerate().take(np) {
                for (v, accv) in accp.iter().enumerate() {
                    let lanes = if v + 1 == NV { b.lanes } else { 16 };
                    // SAFETY: q + p < q1 is a position of the range; v < NV.
                    unsafe { store(j, b, q + p, v, lanes, accv) };
                }
            }
        }
        q += P;
    }
}

/// The kernel for `b.nv` lane blocks. Inlined into each instantiation below: called out of
/// line, the AVX2+FMA entry point would run this baseline-compiled copy, whose `mul_add` is a
/// libm call per lane.
///
/// # Safety
/// As [`run_range`].
#[inline(always)]
unsafe fn dispatch<const FMA: bool, const BLOCK_OUTER: bool>(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded contract of `run_range`.
    unsafe {
        match b.nv {
            1 => tiles::<1, FMA, BLOCK_OUTER>(j, b, q0, q1),
            2 => tiles::<2, FMA, BLOCK_OUTER>(j, b, q0, q1),
            3 => tiles::<3, FMA, BLOCK_OUTER>(j, b, q0, q1),
            _ => tiles::<4, FMA, BLOCK_OUTER>(j, b, q0, q1),
        }
    }
}

/// Fused multiply-add in the baseline instantiation only where the baseline target has it in
/// hardware (aarch64's NEON `fmla`); elsewhere `mul_add` would be a libm call per lane. The same
/// targets have the registers for the block-outer loop order (`tiles`).
const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

/// Baseline instantiation (no CPU feature needed).
///
/// # Safety
/// `j` and `b` satisfy the job contract of [`RawJob`] for positions `q0..q1` on the interior
/// rows of one image.
pub(super) unsafe fn run_range(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded.
    unsafe { dispatch::<BASELINE_FMA, BASELINE_FMA>(j, b, q0, q1) }
}

/// AVX2+FMA instantiation.
///
/// # Safety
/// As [`run_range`]; the CPU supports avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_range_avx2(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded.
    unsafe { dispatch::<true, true>(j, b, q0, q1) }
}
