//! Portable direct-convolution kernel: plain Rust over the same packed weights, compiled
//! twice — for the baseline target (scalar/SSE2, any CPU) and with `avx2,fma` enabled, where
//! LLVM vectorises the 16-lane inner loops. Same tiling and epilogue as the AVX-512 kernel.
// Unsafe is needed for the raw-pointer job (see job.rs) and for calling the
// `#[target_feature]` instantiation; the crate root denies it elsewhere.
#![allow(unsafe_code)]

use super::job::{RawBlock, RawJob};

/// Output pixels per tile.
const P: usize = 4;

/// # Safety
/// As [`run_range`], with `NV == b.nv` (at most 4).
#[inline(always)]
unsafe fn tiles<const NV: usize, const FMA: bool>(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    let c_in = j.c_in;
    let mut q = q0;
    while q < q1 {
        let np = P.min(q1 - q);
        let mut acc = [[[0f32; 16]; NV]; P];
        for t in 0..9 {
            // SAFETY: q and the tap offset address a pixel of the padded input (validated in
            // mod.rs: every interior position ± one row/column stays in the buffer, and the
            // buffer has slack for the tile overrun past the last interior pixel).
            let ip = unsafe { j.inp.offset((q * j.cs_in) as isize + j.tap_off[t]) };
            // SAFETY: the block holds 9 * c_in * NV * 16 packed weights.
            let wp = unsafe { b.w.add(t * c_in * NV * 16) };
            for ic in 0..c_in {
                // SAFETY: in range as above.
                let wrow: &[f32] = unsafe { std::slice::from_raw_parts(wp.add(ic * NV * 16), NV * 16) };
                for p in 0..P {
                    // SAFETY: pixel q+p (+ tap) is inside the padded buffer or its slack.
                    let x = unsafe { *ip.add(p * j.cs_in + ic) };
                    for v in 0..NV {
                        for l in 0..16 {
                            let wv = wrow[v * 16 + l];
                            acc[p][v][l] = if FMA { wv.mul_add(x, acc[p][v][l]) } else { wv * x + acc[p][v][l] };
                        }
                    }
                }
            }
        }
        for (p, accp) in acc.iter().enumerate().take(np) {
            let qq = q + p;
            let col = qq % j.row_px;
            if col == 0 || col > j.w {
                continue;
            }
            for (v, accv) in accp.iter().enumerate() {
                let lanes = if v + 1 == NV { b.lanes } else { 16 };
                for (l, &a) in accv.iter().enumerate().take(lanes) {
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
        }
        q += P;
    }
}

/// # Safety
/// As [`run_range`] (and, with `FMA`, as [`run_range_avx2`]).
unsafe fn dispatch<const FMA: bool>(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded contract of `run_range`.
    unsafe {
        match b.nv {
            1 => tiles::<1, FMA>(j, b, q0, q1),
            2 => tiles::<2, FMA>(j, b, q0, q1),
            3 => tiles::<3, FMA>(j, b, q0, q1),
            _ => tiles::<4, FMA>(j, b, q0, q1),
        }
    }
}

/// Baseline instantiation (no CPU feature needed).
///
/// # Safety
/// `j` and `b` satisfy the job contract of [`RawJob`] for positions `q0..q1` on the interior
/// rows of one image.
pub(super) unsafe fn run_range(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded.
    unsafe { dispatch::<false>(j, b, q0, q1) }
}

/// AVX2+FMA instantiation.
///
/// # Safety
/// As [`run_range`]; the CPU supports avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_range_avx2(j: &RawJob, b: &RawBlock, q0: usize, q1: usize) {
    // SAFETY: forwarded.
    unsafe { dispatch::<true>(j, b, q0, q1) }
}
