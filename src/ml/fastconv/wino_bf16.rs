//! Winograd F(m×4, 3×3) with the tile GEMMs on AVX-512 BF16 dot products (`vdpbf16ps`), for
//! CPUs with AVX-512 BF16 and no AMX (AMD Zen 4).
//!
//! As `winograd.rs` (same tiling, groups, scratch and epilogue), with two differences: the
//! output tile is `m` rows × 4 columns (`m` = 2 or 4: points 0, ±1, ∞ along y, 0, ±1, ±2, ∞
//! along x), and the transformed input `V` and weights `U` are rounded to bf16, so that one
//! `vdpbf16ps` does 32 multiply-adds where an fp32 FMA does 16. The transforms run in f32 on
//! the f32 activations; only `V` and `U` are rounded (once each), and `M = Σ V·U` accumulates
//! in f32. F(2×4) does 24 products per 8 outputs (3 per output, against F(4×4)'s 2.25 in
//! fp32), i.e. 1.5 fp32-FMA-equivalents per output; F(4×4) in bf16 would be 1.125 but
//! its rounding error is too large for the parity bound (docs/fastconv.md, "Winograd in bf16
//! without AMX").
//!
//! Layouts: `V` is `[ξ][tile][c_in↑16]` bf16 (channels in natural order, so a channel pair
//! is one 32-bit word to broadcast), `U` is `[ξ][c_in/2][block channels][2]` bf16 (the pair
//! layout of the direct bf16 kernel), `M` is `[ξ][tile][out vectors·16]` f32.
// Unsafe is needed for SIMD intrinsics, `#[target_feature]` functions and the raw-pointer job
// (see job.rs); the crate root denies it elsewhere.
#![allow(unsafe_code)]
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::job::{f32_to_bf16, RawBlock, WinoJob};

/// Most tiles per group.
const MAX_GROUP: usize = 48;
/// Scratch rows per group: a multiple of every microkernel width `P` (6, 8, 12, 16) ≥
/// MAX_GROUP, so a partial last step of `P` tiles stays inside the buffer.
const GROUP_ROWS: usize = 48;

/// `G` along x (6×3), points 0, 1, −1, 2, −2, ∞ (as `winograd.rs`).
const G6: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `G` along y for 2-row tiles (4×3), points 0, 1, −1, ∞ (as `amx_wino.rs`).
const G4: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// Transform points of an `m`×4 tile: `(m+2)·6`.
pub(super) const fn points(m: usize) -> usize {
    (m + 2) * 6
}

/// `G` along y for `m`-row tiles.
fn g_rows(m: usize) -> &'static [[f64; 3]] {
    if m == 2 {
        &G4
    } else {
        &G6
    }
}

/// Packs the transformed weights of output channels `oc0..oc0+valid` (of OIHW `weight`,
/// `in_c` inputs) for one block of `width` channels and `m`-row tiles:
/// `[ξ][c_in/2][width][2]` bf16, `U = G_y g G_xᵀ` computed in f64 and rounded once; padding
/// channels (outputs past `valid`, the odd input of the last pair) are zero.
pub(super) fn pack(weight: &[f32], in_c: usize, oc0: usize, width: usize, valid: usize, m: usize) -> Vec<u16> {
    let gy = g_rows(m);
    let pairs = in_c.div_ceil(2);
    let mut u = vec![0u16; points(m) * pairs * width * 2];
    for j in 0..valid {
        let o = oc0 + j;
        for i in 0..in_c {
            let g = &weight[(o * in_c + i) * 9..(o * in_c + i + 1) * 9];
            for (r, gr) in gy.iter().enumerate() {
                // (G_y g)[r][b]
                let t: [f64; 3] = std::array::from_fn(|b| (0..3).map(|a| gr[a] * f64::from(g[a * 3 + b])).sum());
                for (k, gk) in G6.iter().enumerate() {
                    let v: f64 = (0..3).map(|b| t[b] * gk[b]).sum();
                    let xi = r * 6 + k;
                    u[((xi * pairs + i / 2) * width + j) * 2 + i % 2] = f32_to_bf16(v as f32);
                }
            }
        }
    }
    u
}

/// Geometry of one call's tiling and scratch.
#[derive(Clone, Copy)]
struct Geo {
    /// Output rows per tile (2 or 4).
    m: usize,
    tiles_x: usize,
    per_img: usize,
    /// Input channels rounded up to 16: the row stride of V in bf16 elements.
    cinp: usize,
    /// Output channels of all blocks (row stride of M), a multiple of 16.
    coutp: usize,
    /// bf16 elements between consecutive ξ planes of V, f32 between those of M (each padded
    /// by a cache line so that the planes do not share an L1 set).
    xs_v: usize,
    xs_m: usize,
}

thread_local! {
    /// Per-thread V and M scratch (f32 units; V is stored as bf16 at its start), grown to the
    /// largest call seen and reused.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs the convolution described by `job` with the blocks' bf16 Winograd weights
/// (`RawBlock::wino_bf`, packed by [`pack`] for `m`-row tiles).
///
/// Panics unless the CPU has avx512f and avx512bf16, or if `m` is not 2 or 4.
///
/// # Safety
/// `job` and `blocks` satisfy the job contract of [`RawJob`](super::job::RawJob) (f32 input
/// and output, every interior position of the `n` images), and every block's `wino_bf` was
/// built with [`pack`] for `job.c_in` inputs and `m`.
pub(super) unsafe fn run(job: &WinoJob, blocks: &[RawBlock], m: usize) {
    use rayon::prelude::*;
    assert!(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"), "bf16 Winograd needs avx512bf16");
    assert!(m == 2 || m == 4, "bf16 Winograd tiles are 2×4 or 4×4");
    let (n, h, w) = (job.n, job.h, job.w);
    if n == 0 || h == 0 || w == 0 {
        return;
    }
    let tiles_x = w.div_ceil(4);
    let per_img = h.div_ceil(m) * tiles_x;
    let tiles = n * per_img;
    let coutp = blocks.iter().map(|b| b.nv * 16).sum::<usize>();
    let cinp = job.c_in.div_ceil(16) * 16;
    let geo = Geo { m, tiles_x, per_img, cinp, coutp, xs_v: GROUP_ROWS * cinp + 32, xs_m: GROUP_ROWS * coutp + 16 };
    let xi_n = points(m);
    // Groups: at most MAX_GROUP tiles, a multiple of the threads when there are enough tiles,
    // equal sizes.
    let threads = rayon::current_num_threads().max(1);
    let mut groups = tiles.div_ceil(MAX_GROUP);
    if tiles >= 8 * threads {
        groups = groups.div_ceil(threads) * threads;
    }
    let size = tiles.div_ceil(groups);
    let groups = tiles.div_ceil(size);
    // V in f32 units (two bf16 per f32; xs_v is even), then M.
    let v_f32 = xi_n * geo.xs_v / 2;
    let need = v_f32 + xi_n * geo.xs_m + 16;
    let work = |g: usize| {
        let t0 = g * size;
        let t1 = (t0 + size).min(tiles);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let base = s.as_ptr().align_offset(64).min(15);
            let (v, mm) = s[base..].split_at_mut(v_f32);
            // SAFETY: contract above; v holds the ξ planes of GROUP_ROWS bf16 rows each, mm
            // those of M; the CPU features were checked.
            unsafe { group(job, blocks, &geo, t0, t1, v.as_mut_ptr().cast::<u16>(), mm.as_mut_ptr()) };
        });
    };
    if groups == 1 {
        work(0);
    } else {
        (0..groups).into_par_iter().for_each(work);
    }
}

/// One group of tiles `t0..t1`: input transform into `v`, the GEMM of every point into `m`,
/// output transform and epilogue.
///
/// # Safety
/// As [`run`] for tiles `t0..t1`; `v` and `m` address the per-thread scratch planes of
/// `geo`; the CPU supports avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn group(j: &WinoJob, blocks: &[RawBlock], geo: &Geo, t0: usize, t1: usize, v: *mut u16, m: *mut f32) {
    let nt = t1 - t0;
    let pairs = j.c_in.div_ceil(2);
    // SAFETY: (whole body) see `run`; every tile index is < n·per_img, every row < GROUP_ROWS.
    unsafe {
        for t in 0..nt {
            if geo.m == 2 {
                input_tile::<2>(j, geo, t0 + t, v.add(t * geo.cinp));
            } else {
                input_tile::<4>(j, geo, t0 + t, v.add(t * geo.cinp));
            }
        }
        for xi in 0..points(geo.m) {
            let vp = v.add(xi * geo.xs_v);
            let mp = m.add(xi * geo.xs_m);
            let mut oc = 0;
            for b in blocks {
                let width = b.nv * 16;
                let u = b.wino_bf.add(xi * pairs * width * 2);
                match b.nv {
                    1 => gemm::<1, 16>(u, pairs, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                    2 => gemm::<2, 12>(u, pairs, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                    3 => gemm::<3, 8>(u, pairs, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                    _ => gemm::<4, 6>(u, pairs, vp, geo.cinp, mp.add(oc), geo.coutp, nt),
                }
                oc += width;
            }
        }
        for t in 0..nt {
            let mut oc = 0;
            for b in blocks {
                for vi in 0..b.nv {
                    let mt = m.add(t * geo.coutp + oc + vi * 16);
                    if geo.m == 2 {
                        output_tile::<2>(j, geo, b, vi, t0 + t, mt);
                    } else {
                        output_tile::<4>(j, geo, b, vi, t0 + t, mt);
                    }
                }
                oc += b.nv * 16;
            }
        }
    }
}

/// 1-D input transform `Bᵀ d` for 4 outputs (6 → 6; points 0, ±1, ±2, ∞).
///
/// # Safety
/// The CPU supports avx512f (register arithmetic only).
#[target_feature(enable = "avx512f")]
#[inline]
fn bt6(d: [__m512; 6]) -> [__m512; 6] {
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

/// 1-D input transform `Bᵀ d` for 2 outputs (4 → 4; points 0, ±1, ∞), in the first four
/// places.
///
/// # Safety
/// The CPU supports avx512f (register arithmetic only).
#[target_feature(enable = "avx512f")]
#[inline]
fn bt4(d: [__m512; 6]) -> [__m512; 6] {
    let z = _mm512_setzero_ps();
    [_mm512_sub_ps(d[0], d[2]), _mm512_add_ps(d[1], d[2]), _mm512_sub_ps(d[2], d[1]), _mm512_sub_ps(d[1], d[3]), z, z]
}

/// 1-D output transform `Aᵀ m` for 4 outputs (6 → 4).
///
/// # Safety
/// The CPU supports avx512f (register arithmetic only).
#[target_feature(enable = "avx512f")]
#[inline]
fn at4(m: [__m512; 6]) -> [__m512; 4] {
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

/// 1-D output transform `Aᵀ m` for 2 outputs (4 → 2), in the first two places.
///
/// # Safety
/// The CPU supports avx512f (register arithmetic only).
#[target_feature(enable = "avx512f")]
#[inline]
fn at2(m: [__m512; 6]) -> [__m512; 4] {
    let z = _mm512_setzero_ps();
    [_mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]), _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]), z, z]
}

/// Input transform of tile `t` (global index, `M` rows × 4 columns of output) into V rows at
/// `v` (row of the tile in plane 0), rounded to bf16.
///
/// # Safety
/// As [`group`]: `t < n·per_img`, and `v` is the tile's row in plane 0 of V.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[inline]
unsafe fn input_tile<const M: usize>(j: &WinoJob, geo: &Geo, t: usize, v: *mut u16) {
    let img = t / geo.per_img;
    let r = t % geo.per_img;
    let (ty, tx) = (r / geo.tiles_x, r % geo.tiles_x);
    let row_px = j.w + 2;
    // Padded origin (M·ty, 4tx); rows ≤ h+1 and columns ≤ w+1 exist.
    let (y0, x0) = (M * ty, 4 * tx);
    let rows = (j.h + 2 - y0).min(M + 2);
    let cols = (j.w + 2 - x0).min(6);
    // SAFETY: every read is a pixel of the padded image (row < h+2, col < w+2) with the
    // channel mask keeping it inside the slice; writes stay in V (contract of `group`).
    unsafe {
        let p0 = j.inp.add(((img * (j.h + 2) + y0) * row_px + x0) * j.cs_in);
        let mut c = 0;
        while c < j.c_in {
            let lanes = (j.c_in - c).min(16);
            let mask: __mmask16 = if lanes == 16 { 0xffff } else { ((1u32 << lanes) - 1) as u16 };
            // The next tile along the row starts 4 pixels right: prefetch its 4 new columns.
            for i in 0..M + 2 {
                let rp = p0.wrapping_add((i * row_px + 6) * j.cs_in + c);
                for k in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(rp.wrapping_add(k * j.cs_in) as *const i8);
                }
            }
            let mut e = [[_mm512_setzero_ps(); 6]; 6];
            for (i, er) in e.iter_mut().enumerate().take(M + 2) {
                let mut d = [_mm512_setzero_ps(); 6];
                if i < rows {
                    let rp = p0.add(i * row_px * j.cs_in + c);
                    for (k, dk) in d.iter_mut().enumerate().take(cols) {
                        *dk = _mm512_maskz_loadu_ps(mask, rp.add(k * j.cs_in));
                    }
                }
                *er = bt6(d);
            }
            #[allow(clippy::needless_range_loop)] // gathers column k across the rows
            for k in 0..6 {
                let col = [e[0][k], e[1][k], e[2][k], e[3][k], e[4][k], e[5][k]];
                let col = if M == 2 { bt4(col) } else { bt6(col) };
                for (ri, x) in col.iter().enumerate().take(M + 2) {
                    let h: __m256i = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(*x));
                    _mm256_storeu_si256(v.add((ri * 6 + k) * geo.xs_v + c) as *mut __m256i, h);
                }
            }
            c += 16;
        }
    }
}

/// `M[t][oc..] = Σ_pairs V[t][pair] · U[pair][oc..]` for one ξ plane and one block: `P` tiles
/// × `NV` vectors per register tile, one `vdpbf16ps` per (tile, vector, channel pair); rows
/// past `nt` (up to the next multiple of `P`) are computed on stale scratch and never read.
///
/// # Safety
/// `u` addresses a block's bf16 Winograd weights of one plane (`pairs·NV·32` u16), `v` and `m`
/// rows `0..nt` rounded up to `P` of one plane of V (`2·pairs ≤ cinp` bf16 per row) and M; the
/// CPU supports avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[inline]
unsafe fn gemm<const NV: usize, const P: usize>(u: *const u16, pairs: usize, v: *const u16, cinp: usize, m: *mut f32, coutp: usize, nt: usize) {
    let mut t = 0;
    while t < nt {
        // SAFETY: rows t..t+P < GROUP_ROWS of the plane; U holds pairs·NV·32 bf16.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; P];
            let vp = v.add(t * cinp);
            let mut wp = u;
            for ic in 0..pairs {
                let mut wv = [_mm512_setzero_si512(); NV];
                for (k, w) in wv.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(wp.add(k * 32) as *const __m512i);
                }
                wp = wp.add(NV * 32);
                for (p, accp) in acc.iter_mut().enumerate() {
                    let pair = (vp.add(p * cinp + 2 * ic) as *const i32).read_unaligned();
                    let x: __m512bh = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                    for k in 0..NV {
                        accp[k] = _mm512_dpbf16_ps(accp[k], std::mem::transmute::<__m512i, __m512bh>(wv[k]), x);
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
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[inline]
unsafe fn output_tile<const M: usize>(j: &WinoJob, geo: &Geo, b: &RawBlock, vi: usize, t: usize, m: *const f32) {
    let img = t / geo.per_img;
    let r = t % geo.per_img;
    let (ty, tx) = (r / geo.tiles_x, r % geo.tiles_x);
    let rows = (j.h - M * ty).min(M);
    let cols = (j.w - 4 * tx).min(4);
    let row_px = j.w + 2;
    // SAFETY: M planes hold this tile's row; bias/slope hold nv·16 floats; stores and residual
    // reads address interior pixels (y < h, x < w) with the channel mask of the block.
    unsafe {
        let mut f = [[_mm512_setzero_ps(); 4]; 6];
        for (ri, fr) in f.iter_mut().enumerate().take(M + 2) {
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
        #[allow(clippy::needless_range_loop)] // gathers column jx across the rows
        for jx in 0..cols {
            let col = [f[0][jx], f[1][jx], f[2][jx], f[3][jx], f[4][jx], f[5][jx]];
            let y = if M == 2 { at2(col) } else { at4(col) };
            for (iy, &yv) in y.iter().enumerate().take(rows) {
                let qq = (img * (j.h + 2) + M * ty + iy + 1) * row_px + 4 * tx + jx + 1;
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

    /// The transforms in f64: `A_yᵀ[(G_y g G_xᵀ) ⊙ (B_yᵀ d B_x)]A_x` equals the m×4
    /// correlation exactly, for both tile heights.
    #[test]
    fn transforms_compute_a_correlation() {
        const BT6: [[f64; 6]; 6] = [
            [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
            [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ];
        const AT6: [[f64; 6]; 4] =
            [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 2.0, -2.0, 0.0], [0.0, 1.0, 1.0, 4.0, 4.0, 0.0], [0.0, 1.0, -1.0, 8.0, -8.0, 1.0]];
        const BT4: [[f64; 6]; 6] = [
            [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, -1.0, 0.0, 0.0],
            [0.0; 6],
            [0.0; 6],
        ];
        const AT4: [[f64; 6]; 4] = [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 1.0, -1.0, -1.0, 0.0, 0.0], [0.0; 6], [0.0; 6]];
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 0.37).sin()).collect();
        let d: Vec<f64> = (0..36).map(|i| (i as f64 * 0.61).cos()).collect();
        for m in [2usize, 4] {
            let (bty, aty) = if m == 2 { (&BT4, &AT4) } else { (&BT6, &AT6) };
            let n = m + 2;
            // U in f64 (the packing rounds it to bf16; here the exact value is wanted).
            let gy = g_rows(m);
            let u = |r: usize, k: usize| -> f64 {
                (0..3).map(|b| (0..3).map(|a| gy[r][a] * f64::from(g[a * 3 + b])).sum::<f64>() * G6[k][b]).sum()
            };
            let vv = |r: usize, k: usize| -> f64 { (0..n).map(|i| (0..6).map(|jj| bty[r][i] * d[i * 6 + jj] * BT6[k][jj]).sum::<f64>()).sum() };
            for i in 0..m {
                for jx in 0..4 {
                    let y: f64 = (0..n).map(|r| (0..6).map(|k| aty[i][r] * u(r, k) * vv(r, k) * AT6[jx][k]).sum::<f64>()).sum();
                    let want: f64 = (0..3).map(|a| (0..3).map(|bb| f64::from(g[a * 3 + bb]) * d[(i + a) * 6 + jx + bb]).sum::<f64>()).sum();
                    assert!((y - want).abs() < 1e-9, "m={m} ({i},{jx}): {y} vs {want}");
                }
            }
            // The packed U is that value rounded to bf16.
            let packed = pack(&g, 1, 0, 16, 1, m);
            for r in 0..n {
                for k in 0..6 {
                    assert_eq!(packed[(r * 6 + k) * 32], f32_to_bf16(u(r, k) as f32), "m={m} ξ=({r},{k})");
                }
            }
        }
    }
}
