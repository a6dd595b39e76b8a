//! Winograd F(4×4, 3×3) for the fp32 AVX-512 path (Lavin & Gray, points 0, ±1, ±2, ∞).
//!
//! The output is cut into 4×4 tiles (6×6 input tiles, overlapping by 2). Per tile and channel:
//! `V = Bᵀ d B` (input transform), per transform point `ξ` (36 of them) a GEMM over channels
//! `M[ξ] = V[ξ] · U[ξ]` with `U = G g Gᵀ` packed once at construction, then `Y = Aᵀ M A`
//! (output transform) with the epilogue (bias, LeakyReLU/PReLU slope, scale, ≤ 2 residuals)
//! fused before the masked store of the valid pixels. 36 multiply-adds per 16 outputs instead
//! of 144: 4× fewer FLOPs than the direct convolution, plus the transforms.
//!
//! Tiles (over all images, row-major) are processed in groups of at most [`MAX_GROUP`]; a
//! group's `V` (`[36][tiles][c_in↑16]`) and `M` (`[36][tiles][out vectors·16]`) live in a
//! per-thread scratch buffer that is reused across calls (a thread-local; rayon's workers
//! keep theirs). The GEMM microkernel has the direct kernel's register tile: `P` tiles ×
//! `NV`·16 output channels in 24 zmm accumulators, broadcast `V`, FMA with `U`.
//!
//! Tiles at the right/bottom edge read zeros past the padded input (never the next row or
//! image) and store only the pixels inside the map; channel tails are masked on every load
//! and store, so neighbouring channel slices (including the output slice of an in-place dense
//! block, written by other threads) are never read or written.
// Unsafe is needed for SIMD intrinsics, `#[target_feature]` functions and the raw-pointer job
// (see job.rs); the crate root denies it elsewhere.
#![allow(unsafe_code)]

use super::job::{RawBlock, WinoJob};

/// Transform points per tile (6×6).
pub(super) const XI: usize = 36;
/// Most tiles per group (scratch: `36 · MAX_GROUP · (c_in + c_out) · 4` bytes).
const MAX_GROUP: usize = 48;
/// Scratch rows per group: a multiple of every microkernel width `P` (6, 8, 12, 16) ≥ MAX_GROUP,
/// so a partial last step of `P` tiles stays inside the buffer.
const GROUP_ROWS: usize = 48;

/// `G` (6×3) for the points 0, 1, -1, 2, -2, ∞ (weight transform `U = G g Gᵀ`).
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `U = G g Gᵀ` (in f64, rounded once) for one 3×3 filter `g` (row-major `[ky][kx]`); `U[r·6+k]`.
fn transform_filter(g: &[f32]) -> [f32; XI] {
    let mut t = [[0f64; 3]; 6]; // G g
    for (r, gr) in G.iter().enumerate() {
        for b in 0..3 {
            t[r][b] = (0..3).map(|a| gr[a] * g[a * 3 + b] as f64).sum();
        }
    }
    let mut u = [0f32; XI];
    for r in 0..6 {
        for k in 0..6 {
            u[r * 6 + k] = (0..3).map(|b| t[r][b] * G[k][b]).sum::<f64>() as f32;
        }
    }
    u
}

/// Packs the transformed weights of output channels `oc0..oc0+valid` (of OIHW `weight`, `in_c`
/// inputs) for one block of `width` channels: `[ξ 36][c_in][width]`, padding channels zero.
pub(super) fn pack(weight: &[f32], in_c: usize, oc0: usize, width: usize, valid: usize) -> Vec<f32> {
    let mut u = vec![0f32; XI * in_c * width];
    for j in 0..valid {
        let o = oc0 + j;
        for i in 0..in_c {
            let t = transform_filter(&weight[(o * in_c + i) * 9..(o * in_c + i + 1) * 9]);
            for (xi, v) in t.iter().enumerate() {
                u[(xi * in_c + i) * width + j] = *v;
            }
        }
    }
    u
}

/// Geometry of one call's tiling and scratch.
#[derive(Clone, Copy)]
struct Geo {
    tiles_x: usize,
    per_img: usize,
    /// Input channels rounded up to 16 (row stride of V).
    cinp: usize,
    /// Output channels of all blocks (row stride of M), a multiple of 16.
    coutp: usize,
    /// Floats between consecutive ξ planes of V and M (padded by a cache line so the 36 planes
    /// do not share an L1 set).
    xs_v: usize,
    xs_m: usize,
}

thread_local! {
    /// Per-thread V and M scratch, grown to the largest call seen and reused.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs the convolution described by `job` with the blocks' Winograd weights (`RawBlock::wino`).
///
/// Panics if the CPU lacks avx512f.
///
/// # Safety
/// `job` and `blocks` satisfy the job contract of [`RawJob`](super::job::RawJob) (f32 input
/// and output, every interior position of the `n` images), and every block's `wino` was built
/// with [`pack`] for `job.c_in` inputs.
pub(super) unsafe fn run(job: &WinoJob, blocks: &[RawBlock]) {
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        assert!(is_x86_feature_detected!("avx512f"), "winograd needs avx512f");
        let (n, h, w) = (job.n, job.h, job.w);
        if n == 0 || h == 0 || w == 0 {
            return;
        }
        let tiles_x = w.div_ceil(4);
        let per_img = h.div_ceil(4) * tiles_x;
        let tiles = n * per_img;
        let coutp = blocks.iter().map(|b| b.nv * 16).sum::<usize>();
        let cinp = job.c_in.div_ceil(16) * 16;
        let geo = Geo { tiles_x, per_img, cinp, coutp, xs_v: GROUP_ROWS * cinp + 16, xs_m: GROUP_ROWS * coutp + 16 };
        // Groups: at most MAX_GROUP tiles, as many as the threads (when there are enough tiles
        // for that), equal sizes.
        let threads = rayon::current_num_threads().max(1);
        let mut groups = tiles.div_ceil(MAX_GROUP);
        if tiles >= 8 * threads {
            groups = groups.div_ceil(threads) * threads;
        }
        let size = tiles.div_ceil(groups);
        let groups = tiles.div_ceil(size);
        let need = XI * (geo.xs_v + geo.xs_m) + 16;
        let work = |g: usize| {
            let t0 = g * size;
            let t1 = (t0 + size).min(tiles);
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < need {
                    s.resize(need, 0.0);
                }
                let base = s.as_ptr().align_offset(64).min(15);
                let (v, m) = s[base..].split_at_mut(XI * geo.xs_v);
                // SAFETY: contract above; v and m hold 36 planes of GROUP_ROWS rows each, and
                // avx512f was checked.
                unsafe { group(job, blocks, &geo, t0, t1, v.as_mut_ptr(), m.as_mut_ptr()) };
            });
        };
        if groups == 1 {
            work(0);
        } else {
            (0..groups).into_par_iter().for_each(work);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (job, blocks);
        panic!("winograd needs avx512f");
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One group of tiles `t0..t1`: input transform into `v`, 36 GEMMs into `m`, output transform.
///
/// # Safety
/// As [`run`] for tiles `t0..t1`; `v` and `m` address the per-thread scratch planes of
/// `geo` (`XI·geo.xs_v` and `XI·geo.xs_m` writable f32); the CPU supports avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn group(j: &WinoJob, blocks: &[RawBlock], geo: &Geo, t0: usize, t1: usize, v: *mut f32, m: *mut f32) {
    let nt = t1 - t0;
    // SAFETY: (whole body) see `run`; every tile index is < n·per_img, every row < GROUP_ROWS.
    unsafe {
        for t in 0..nt {
            input_tile(j, geo, t0 + t, v.add(t * geo.cinp));
        }
        for xi in 0..XI {
            let vp = v.add(xi * geo.xs_v);
            let mp = m.add(xi * geo.xs_m);
            let mut oc = 0;
            for b in blocks {
                let width = b.nv * 16;
                let u = b.wino.add(xi * j.c_in * width);
                match b.nv {
                    1 => gemm::<1, 16>(u, j.c_in, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                    2 => gemm::<2, 12>(u, j.c_in, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                    3 => gemm::<3, 8>(u, j.c_in, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                    _ => gemm::<4, 6>(u, j.c_in, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                }
                oc += width;
            }
        }
        for t in 0..nt {
            let mut oc = 0;
            for b in blocks {
                for vi in 0..b.nv {
                    output_tile(j, geo, b, vi, t0 + t, m.add(t * geo.coutp + oc + vi * 16));
                }
                oc += b.nv * 16;
            }
        }
    }
}

/// 1-D input transform `Bᵀ d` (6 → 6).
///
/// # Safety
/// The CPU supports avx512f.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bt6(d: [__m512; 6]) -> [__m512; 6] {
    // SAFETY: register arithmetic only; avx512f is the caller's contract.
    unsafe {
        let (m4, m5, m2) = (_mm512_set1_ps(-4.0), _mm512_set1_ps(-5.0), _mm512_set1_ps(2.0));
        let f4 = _mm512_set1_ps(4.0);
        let t1 = _mm512_fmadd_ps(m4, d[2], d[4]); // d4 - 4 d2
        let t2 = _mm512_fmadd_ps(m4, d[1], d[3]); // d3 - 4 d1
        let t3 = _mm512_sub_ps(d[4], d[2]);
        let t4 = _mm512_sub_ps(d[3], d[1]);
        [
            _mm512_fmadd_ps(f4, d[0], _mm512_fmadd_ps(m5, d[2], d[4])),
            _mm512_add_ps(t1, t2),
            _mm512_sub_ps(t1, t2),
            _mm512_fmadd_ps(m2, t4, t3),
            _mm512_fnmadd_ps(m2, t4, t3),
            _mm512_fmadd_ps(f4, d[1], _mm512_fmadd_ps(m5, d[3], d[5])),
        ]
    }
}

/// 1-D output transform `Aᵀ m` (6 → 4).
///
/// # Safety
/// The CPU supports avx512f.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn at4(m: [__m512; 6]) -> [__m512; 4] {
    // SAFETY: register arithmetic only; avx512f is the caller's contract.
    unsafe {
        let a = _mm512_add_ps(m[1], m[2]);
        let b = _mm512_sub_ps(m[1], m[2]);
        let c = _mm512_add_ps(m[3], m[4]);
        let d = _mm512_sub_ps(m[3], m[4]);
        [
            _mm512_add_ps(_mm512_add_ps(m[0], a), c),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), d, b),
            _mm512_fmadd_ps(_mm512_set1_ps(4.0), c, a),
            _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), d, b), m[5]),
        ]
    }
}

/// Input transform of tile `t` (global index) into V rows at `v` (row of the tile in plane 0).
///
/// # Safety
/// As [`group`]: `t < n·per_img`, and `v` is the tile's row in plane 0 of V.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn input_tile(j: &WinoJob, geo: &Geo, t: usize, v: *mut f32) {
    let img = t / geo.per_img;
    let r = t % geo.per_img;
    let (ty, tx) = (r / geo.tiles_x, r % geo.tiles_x);
    let row_px = j.w + 2;
    // Padded origin (4ty, 4tx); rows ≤ h+1 and columns ≤ w+1 exist.
    let (y0, x0) = (4 * ty, 4 * tx);
    let rows = (j.h + 2 - y0).min(6);
    let cols = (j.w + 2 - x0).min(6);
    // SAFETY: every read is a pixel of the padded image (row < h+2, col < w+2) with the
    // channel mask keeping it inside the slice; writes stay in V (contract of `group`).
    unsafe {
        let p0 = j.inp.add(((img * (j.h + 2) + y0) * row_px + x0) * j.cs_in);
        let mut c = 0;
        while c < j.c_in {
            let lanes = (j.c_in - c).min(16);
            let mask: __mmask16 = if lanes == 16 { 0xffff } else { ((1u32 << lanes) - 1) as u16 };
            // The next tile along the row starts 4 pixels right: prefetch its 4 new columns of
            // this channel chunk while this one is transformed (the input streams from memory,
            // and Winograd does 4× less arithmetic per input byte than the direct kernel).
            for i in 0..6 {
                let rp = p0.wrapping_add((i * row_px + 6) * j.cs_in + c);
                for k in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(rp.wrapping_add(k * j.cs_in) as *const i8);
                }
            }
            let mut e = [[_mm512_setzero_ps(); 6]; 6];
            for (i, er) in e.iter_mut().enumerate() {
                let mut d = [_mm512_setzero_ps(); 6];
                if i < rows {
                    let rp = p0.add(i * row_px * j.cs_in + c);
                    for (k, dk) in d.iter_mut().enumerate().take(cols) {
                        *dk = _mm512_maskz_loadu_ps(mask, rp.add(k * j.cs_in));
                    }
                }
                *er = bt6(d);
            }
            #[allow(clippy::needless_range_loop)] // gathers column k across the six rows
            for k in 0..6 {
                let col = bt6([e[0][k], e[1][k], e[2][k], e[3][k], e[4][k], e[5][k]]);
                for (ri, x) in col.iter().enumerate() {
                    _mm512_storeu_ps(v.add((ri * 6 + k) * geo.xs_v + c), *x);
                }
            }
            c += 16;
        }
    }
}

/// `M[t][oc..] = Σ_ic V[t][ic] · U[ic][oc..]` for one ξ plane and one block: `P` tiles ×
/// `NV` vectors per register tile; rows past `nt` (up to the next multiple of `P`) are
/// computed on stale scratch and never read.
///
/// # Safety
/// `u` addresses a block's Winograd weights of one plane (`c_in·NV·16` f32), `v` and `m`
/// rows `0..nt` rounded up to `P` of one plane of V and M; the CPU supports avx512f.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gemm<const NV: usize, const P: usize>(
    u: *const f32,
    c_in: usize,
    v: *const f32,
    cinp: usize,
    m: *mut f32,
    coutp: usize,
    nt: usize,
) {
    let mut t = 0;
    while t < nt {
        // SAFETY: rows t..t+P < GROUP_ROWS of the plane; U holds c_in·NV·16 floats.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; P];
            let vp = v.add(t * cinp);
            let mut wp = u;
            for ic in 0..c_in {
                let mut wv = [_mm512_setzero_ps(); NV];
                for (k, w) in wv.iter_mut().enumerate() {
                    *w = _mm512_loadu_ps(wp.add(k * 16));
                }
                wp = wp.add(NV * 16);
                for (p, accp) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*vp.add(p * cinp + ic));
                    for k in 0..NV {
                        accp[k] = _mm512_fmadd_ps(wv[k], x, accp[k]);
                    }
                }
            }
            for (p, accp) in acc.iter().enumerate() {
                for (k, a) in accp.iter().enumerate() {
                    _mm512_storeu_ps(m.add((t + p) * coutp + k * 16), *a);
                }
            }
        }
        t += P;
    }
}

/// Output transform of tile `t` (global index) for vector `vi` of block `b`, `m` pointing at
/// its 16 channels in plane 0 of M; epilogue and masked store of the valid pixels.
///
/// # Safety
/// As [`group`]: `t < n·per_img`, `vi < b.nv`, and `m` points at the block vector's channels
/// in plane 0 of M.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn output_tile(j: &WinoJob, geo: &Geo, b: &RawBlock, vi: usize, t: usize, m: *const f32) {
    let img = t / geo.per_img;
    let r = t % geo.per_img;
    let (ty, tx) = (r / geo.tiles_x, r % geo.tiles_x);
    let rows = (j.h - 4 * ty).min(4);
    let cols = (j.w - 4 * tx).min(4);
    let row_px = j.w + 2;
    // SAFETY: M planes hold this tile's row; bias/slope hold nv·16 floats; stores and residual
    // reads address interior pixels (y < h, x < w) with the channel mask of the block.
    unsafe {
        let mut f = [[_mm512_setzero_ps(); 4]; 6];
        for (ri, fr) in f.iter_mut().enumerate() {
            let mut row = [_mm512_setzero_ps(); 6];
            for (k, x) in row.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(m.add((ri * 6 + k) * geo.xs_m));
            }
            *fr = at4(row);
        }
        let bias = _mm512_loadu_ps(b.bias.add(vi * 16));
        let slope = _mm512_loadu_ps(b.slope.add(vi * 16));
        let scale = _mm512_set1_ps(j.scale);
        let oc = b.oc0 + vi * 16;
        let mask: __mmask16 = if vi + 1 == b.nv { ((1u32 << b.lanes) - 1) as u16 } else { 0xffff };
        #[allow(clippy::needless_range_loop)] // gathers column jx across the six rows
        for jx in 0..cols {
            let y = at4([f[0][jx], f[1][jx], f[2][jx], f[3][jx], f[4][jx], f[5][jx]]);
            for (iy, &yv) in y.iter().enumerate().take(rows) {
                let qq = (img * (j.h + 2) + 4 * ty + iy + 1) * row_px + 4 * tx + jx + 1;
                let mut o = _mm512_add_ps(yv, bias);
                let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(o, _mm512_setzero_ps());
                o = _mm512_mask_mul_ps(o, neg, o, slope);
                o = _mm512_mul_ps(o, scale);
                for rr in &j.res[..j.nres] {
                    let rv = _mm512_maskz_loadu_ps(mask, rr.ptr.add(qq * rr.cs + oc));
                    o = _mm512_fmadd_ps(rv, _mm512_set1_ps(rr.weight), o);
                }
                _mm512_mask_storeu_ps(j.out.add(qq * j.cs_out + oc), mask, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms in f64: `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` equals the 4×4 correlation exactly.
    #[test]
    fn transforms_compute_a_correlation() {
        const BT: [[f64; 6]; 6] = [
            [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
            [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ];
        const AT: [[f64; 6]; 4] =
            [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 2.0, -2.0, 0.0], [0.0, 1.0, 1.0, 4.0, 4.0, 0.0], [0.0, 1.0, -1.0, 8.0, -8.0, 1.0]];
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 0.37).sin()).collect();
        let d: Vec<f64> = (0..36).map(|i| (i as f64 * 0.61).cos()).collect();
        let u = transform_filter(&g);
        let mut vv = [0f64; 36];
        for r in 0..6 {
            for k in 0..6 {
                vv[r * 6 + k] = (0..6).map(|i| (0..6).map(|jj| BT[r][i] * d[i * 6 + jj] * BT[k][jj]).sum::<f64>()).sum();
            }
        }
        for i in 0..4 {
            for jx in 0..4 {
                let y: f64 = (0..6)
                    .map(|r| (0..6).map(|k| AT[i][r] * u[r * 6 + k] as f64 * vv[r * 6 + k] * AT[jx][k]).sum::<f64>())
                    .sum();
                let want: f64 = (0..3).map(|a| (0..3).map(|bb| g[a * 3 + bb] as f64 * d[(i + a) * 6 + jx + bb]).sum::<f64>()).sum();
                assert!((y - want).abs() < 1e-5, "({i},{jx}): {y} vs {want}");
            }
        }
    }
}
