//! Winograd F(2×2, 3×3) on the AMX tile unit, for the plain bf16 backend.
//!
//! Why: on this machine a `tileloadd` mixed with products costs more than a `tdpbf16ps`
//! (~17 ns against ~11 ns per instruction on one core, docs/fastconv.md), and the direct
//! kernels need 0.75–1 tile load per `tdpbf16ps`, so they are bound by tile loads. Winograd F(2×2, 3×3) does 16
//! multiply-adds per 4 outputs instead of 36: 2.25× fewer tile loads and `tdpbf16ps`, plus
//! input and output transforms on the (otherwise idle) AVX-512 units.
//!
//! Per 2×2 output tile and channel: `V = Bᵀ d B` of the 4×4 input patch `d` (f32 from the bf16
//! input, rounded to bf16 once), per transform point `ξ` (16) a GEMM over channels
//! `M[ξ] = V[ξ] · U[ξ]` on the tiles (`U = G g Gᵀ`, packed once in bf16 in the direct kernel's
//! VNNI layout with `ξ` in place of the tap), then `Y = Aᵀ M A` and the same fused epilogue as
//! the direct kernel (`amx::finish`). F(2×2) because its transforms only add and subtract (and
//! halve the weights): rounding `V` and `U` to bf16 measures ~3× the direct kernel's error per
//! conv (the tests), which SRVGG's 16 body convs absorb (52 dB against fp32) but RRDBNet's 345
//! chained convs do not (42.7 dB), so that network keeps the direct kernel. Larger tiles amplify the
//! rounding further: emulated in bf16, F(4×4) measures 43 dB on the parity test card and every
//! tile from F(2×3) on falls under 45 dB on noise (`scripts/winograd_bf16_emulation.py`).
//!
//! Work items are segments of at most [`SEG_TILES`] tiles of one tile row of one image. A
//! segment's `V` (`[tile][ξ][channels]`, so the transform's stores are contiguous) lives in a
//! per-thread scratch; neighbouring tiles share two input columns, so each column's `Bᵀ d` is
//! computed once and slid along (measured 2× faster than transforming every 4×4 patch), 32
//! channels per pass: one load, split into even and odd lanes by a shift and a mask, and one
//! `vcvtne2ps2bf16` store per point, with the weights packed in that channel order
//! ([`k_position`]; 0.91–0.95× the time of 16-channel passes per conv, 0.87–0.93× over 16
//! chained 64→64 convs, in-process A/B). The
//! GEMM runs in register blocks of 32 tiles × 32 output channels (2×2 tiles of 16, like the
//! direct kernel), `tilestored` into one `M` buffer, and the block's output transform runs
//! right after its 16 GEMMs. The transforms do not overlap the tile unit's work here:
//! spreading the previous block's output transform over the next block's `ξ` steps (two `M`
//! buffers, as the direct kernel pipelines its epilogue) measured 2–3 % slower than running
//! it after the block, and running the next segment's input transform inside the tile loop
//! (double-buffered `V`) 1.1–2× slower (in-process A/B).
// Unsafe is needed for inline assembly (the AMX intrinsics are not stable in Rust), SIMD
// intrinsics on raw pointers and `#[target_feature]` calls; the crate root denies it elsewhere.
#![allow(unsafe_code)]
#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;

use super::amx_tile::{finish, k_step, store_accumulators, tile_consts, TileConfig, TileConsts};
use super::job::{f32_to_bf16, AmxWeights, RawJob, WinoGeom};

/// Transform points per tile (4×4).
const XI: usize = 16;
/// Most tiles per work item (two 32-tile register blocks).
const SEG_TILES: usize = 64;
/// How many padded columns ahead the input transform prefetches its input rows.
const PREFETCH_COLS: usize = 16;
/// Floats between the `M` planes of consecutive points: four 16×16 accumulator tiles plus a
/// cache line, so that the output transform's 16 loads of one row (one per point) do not all
/// fall into one L1 set, as a 4 KB stride would.
const M_PLANE: usize = 1024 + 16;
/// Floats per `M` buffer.
const M_FLOATS: usize = XI * M_PLANE;

/// `G` (4×3) for the points 0, 1, −1, ∞ (weight transform `U = G g Gᵀ`).
const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// Packs OIHW weights as `[output tile][ξ 16][k-block][16 channel pairs][16 out][2]` bf16:
/// `U = G g Gᵀ` computed in f64 and rounded once.
pub(super) fn pack(weight: &[f32], in_c: usize, out_c: usize, tiles: usize, kb: usize) -> Vec<u16> {
    let mut w = vec![0u16; tiles * XI * kb * 512];
    for o in 0..out_c {
        let (tile, oo) = (o / 16, o % 16);
        for i in 0..in_c {
            let g = &weight[(o * in_c + i) * 9..(o * in_c + i + 1) * 9];
            for (r, gr) in G.iter().enumerate() {
                for (c, gc) in G.iter().enumerate() {
                    // U[r][c] = Σ_a Σ_b G[r][a] g[a][b] G[c][b]
                    let mut u = 0f64;
                    for a in 0..3 {
                        for b in 0..3 {
                            u += gr[a] * f64::from(g[a * 3 + b]) * gc[b];
                        }
                    }
                    let xi = r * 4 + c;
                    let (k, ii) = (i / 32, k_position(i % 32));
                    w[(((tile * XI + xi) * kb + k) * 16 + ii / 2) * 32 + oo * 2 + ii % 2] = f32_to_bf16(u as f32);
                }
            }
        }
    }
    w
}

/// Where channel `i` (< 32) of a k-block sits in a row of `V` and in `U`'s VNNI pairs: even
/// channels first, then odd ones. The input transform splits each 32-channel bf16 load into
/// its even and odd lanes with one shift and one mask (no reordering), and the two halves go
/// back as one `vcvtne2ps2bf16` store; the dot product does not care about the order of `k`.
fn k_position(i: usize) -> usize {
    if i.is_multiple_of(2) {
        i / 2
    } else {
        16 + i / 2
    }
}

thread_local! {
    /// Per-thread `V` and `M` scratch (u16 units), grown to the largest call seen and reused.
    static SCRATCH: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs the convolution: `j` as for the direct AMX kernel (`j.inp` the bf16 input, `j.cs_in`
/// its pixel stride in elements), `wino` from [`pack`] with `wts`'s tiles and k-blocks.
///
/// # Safety
/// `j` and `wts` satisfy the job contract of [`RawJob`] for every interior position of the
/// `g.n` images of `g.h×g.w` (`j.inp` a bf16 copy or shadow as for the direct AMX kernel, with
/// its slack); `wino` was packed for `wts`; AMX is available
/// ([`super::amx_tile::available`]).
pub(super) unsafe fn run(j: &RawJob, wts: &AmxWeights, wino: &[u16], g: &WinoGeom) {
    use rayon::prelude::*;
    let tiles_x = g.w.div_ceil(2);
    let segs = tiles_x.div_ceil(SEG_TILES);
    let rows = g.h.div_ceil(2);
    let kc = wts.kb * 32;
    // V: SEG_TILES rows of `tile_stride` bf16; then the M buffer of f32, 64-byte aligned.
    let v_len = SEG_TILES * tile_stride(kc);
    let need = v_len + 2 * M_FLOATS + 64;
    let work = |item: usize| {
        let (img, rest) = (item / (rows * segs), item % (rows * segs));
        let (ty, seg) = (rest / segs, rest % segs);
        let tx0 = seg * SEG_TILES;
        let nt = (tiles_x - tx0).min(SEG_TILES);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < need {
                s.resize(need, 0);
            }
            let base = s.as_ptr().align_offset(64).min(31);
            let v = s[base..].as_mut_ptr();
            // SAFETY: v_len u16 of V then M_FLOATS f32 (2·M_FLOATS u16) fit in `need − 64`
            // after the alignment offset; the contract covers the rest.
            unsafe {
                let m = v.add(v_len) as *mut f32;
                segment(j, wts, wino, g, img, ty, tx0, nt, v, m);
            }
        });
    };
    (0..g.n * rows * segs).into_par_iter().for_each(work);
}

/// A register block whose `M` is complete: where its tiles go and its epilogue constants.
struct Block {
    tx0: usize,
    /// Valid tiles of the block (≤ 32).
    nt: usize,
    tiles: [Option<TileConsts>; 2],
}

/// One segment: input transform of `nt` tiles from `tx0` in tile row `ty`, then per register
/// block and output-tile pair the 16 GEMMs and the output transform.
///
/// # Safety
/// As [`run`] for the tiles of this segment; `v` addresses `SEG_TILES·tile_stride(kb·32)`
/// writable u16 and `m` `2·M_FLOATS` writable f32 (64-byte aligned), used by nobody else.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn segment(j: &RawJob, wts: &AmxWeights, wino: &[u16], g: &WinoGeom, img: usize, ty: usize, tx0: usize, nt: usize, v: *mut u16, m: *mut f32) {
    let kb = wts.kb;
    let kc = kb * 32;
    let ntp = nt.div_ceil(32) * 32;
    let row_px = g.w + 2;
    let img_base = img * (g.h + 2) * row_px;
    // SAFETY: (whole body) every V row written or read is < ntp ≤ SEG_TILES; the weights hold
    // tiles·16·kb·512 values; the M buffer holds M_FLOATS; input pixels are checked against
    // the padded image in `input_tiles`.
    unsafe {
        let ts = tile_stride(kc);
        // One instance per channel count, so that the transform's offsets are constants.
        match kb {
            1 => input_tiles::<32>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
            2 => input_tiles::<64>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
            3 => input_tiles::<96>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
            4 => input_tiles::<128>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
            5 => input_tiles::<160>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
            6 => input_tiles::<192>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
            _ => input_tiles::<0>(j, g, kc, img_base, ty, tx0, nt, ntp, v),
        }
        let cfg = TileConfig::full();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let stride = ts * 2;
        for blk in 0..ntp / 32 {
            for pair in 0..wts.tiles / 2 {
                for xi in 0..XI {
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                    let a0 = v.add(blk * 32 * ts + xi * kc) as *const u8;
                    let a1 = a0.add(16 * stride);
                    let b0 = wino.as_ptr().add((2 * pair) * XI * kb * 512 + xi * kb * 512) as *const u8;
                    let b1 = wino.as_ptr().add((2 * pair + 1) * XI * kb * 512 + xi * kb * 512) as *const u8;
                    for k in 0..kb {
                        k_step::<false>(a0.add(k * 64), a1.add(k * 64), b0.add(k * 1024), b1.add(k * 1024), stride);
                    }
                    store_accumulators(m.add(xi * M_PLANE));
                }
                let block = Block { tx0: tx0 + blk * 32, nt: (nt - blk * 32).min(32), tiles: tile_consts(wts, pair) };
                output_block(j, g, img_base, ty, m, &block);
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// u16 between consecutive tiles' `V` rows: 16 points × `kc` channels, plus a cache line so
/// that the 16 rows of an A tile do not all fall into the same two L1 sets.
fn tile_stride(kc: usize) -> usize {
    XI * kc + 32
}

/// `V = Bᵀ d B` for tiles `tx0..tx0+nt` of tile row `ty` into rows `0..nt` of `v` (`[tile][ξ][kc]`,
/// [`tile_stride`] apart, channels of each k-block in [`k_position`] order); rows `nt..ntp`
/// get zeros. Input pixels outside the padded image read as zero, as do channels past `c_in`
/// in the last k-block. Neighbouring tiles share two input columns, so each column's `Bᵀ d`
/// is computed once and slid along. `KC` is `kc` as a constant (0: run-time only), so that
/// the 16 row offsets are immediates.
///
/// # Safety
/// As [`segment`]: `j` satisfies the job contract, `nt <= ntp <= SEG_TILES` rows of `v`
/// are writable, `kc` is the bf16 copy's channels per k-block row.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_tiles<const KC: usize>(j: &RawJob, g: &WinoGeom, kc: usize, img_base: usize, ty: usize, tx0: usize, nt: usize, ntp: usize, v: *mut u16) {
    // KC: the channel count as a constant (0: only known at run time, `kc`).
    let kc = if KC == 0 { kc } else { KC };
    let row_px = g.w + 2;
    let ts = tile_stride(kc);
    // SAFETY: (whole body) loads are of padded-image pixels (row ≤ h+1, column ≤ w+1) of the
    // input, whose pixel holds `kc` readable channels (the direct kernel's k-block reads);
    // stores stay in rows < ntp ≤ SEG_TILES of `v`.
    unsafe {
        for t in nt..ntp {
            std::ptr::write_bytes(v.add(t * ts), 0, XI * kc);
        }
        let src = j.inp as *const u16;
        // Padded rows of the tile row; rows past the image read as zero.
        let rows: [Option<*const u16>; 4] =
            std::array::from_fn(|r| (2 * ty + r <= g.h + 1).then(|| src.add((img_base + (2 * ty + r) * row_px) * j.cs_in)));
        let odd_lanes = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        for c0 in (0..kc).step_by(32) {
            let live = g.c_in.saturating_sub(c0).min(32);
            let mask = ((1u64 << live) - 1) as u32;
            // Bᵀ d of padded column x, even channels then odd ones: one vector per
            // transformed row. A bf16 is the top half of its f32, so the even lanes widen by
            // a shift and the odd ones by clearing the low half.
            let column = |x: usize| -> [[__m512; 4]; 2] {
                let mut d = [[_mm512_setzero_ps(); 4]; 2];
                if x <= g.w + 1 && mask != 0 {
                    for (r, row) in rows.iter().enumerate() {
                        if let Some(row) = row {
                            let b = _mm512_maskz_loadu_epi16(mask, row.add(x * j.cs_in + c0) as *const i16);
                            d[0][r] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(b));
                            d[1][r] = _mm512_castsi512_ps(_mm512_and_si512(b, odd_lanes));
                        }
                    }
                }
                d.map(|d| [_mm512_sub_ps(d[0], d[2]), _mm512_add_ps(d[1], d[2]), _mm512_sub_ps(d[2], d[1]), _mm512_sub_ps(d[1], d[3])])
            };
            let (mut a, mut b) = (column(2 * tx0), column(2 * tx0 + 1));
            for t in 0..nt {
                let x = 2 * (tx0 + t);
                // The two columns this tile step will read PREFETCH_COLS later (in-process
                // A/B over SRVGG's forward at 128²: 0.98× the time; 8 or 32 ahead gain less).
                if x + PREFETCH_COLS <= g.w {
                    for row in rows.iter().flatten() {
                        _mm_prefetch::<_MM_HINT_T0>(row.add((x + PREFETCH_COLS) * j.cs_in + c0) as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(row.add((x + PREFETCH_COLS + 1) * j.cs_in + c0) as *const i8);
                    }
                }
                let (c, d) = (column(x + 2), column(x + 3));
                let out = v.add(t * ts + c0);
                for r in 0..4 {
                    // V = t B, columns as the rows above; per half (even, odd) lanes.
                    let vr = |h: usize| [_mm512_sub_ps(a[h][r], c[h][r]), _mm512_add_ps(b[h][r], c[h][r]), _mm512_sub_ps(c[h][r], b[h][r]), _mm512_sub_ps(b[h][r], d[h][r])];
                    let (even, odd) = (vr(0), vr(1));
                    for cc in 0..4 {
                        let h = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd[cc], even[cc]));
                        _mm512_storeu_si512(out.add((r * 4 + cc) * kc) as *mut __m512i, h);
                    }
                }
                (a, b) = (c, d);
            }
        }
    }
}

/// Output transform `Y = Aᵀ M A` and the fused epilogue of a block's (tile, output tile)
/// rows: row `i` = tile `i / 2` × output tile `i % 2`.
///
/// # Safety
/// As [`segment`]: `m` holds the block's `M` (`M_FLOATS` f32) and `blk`'s tiles are
/// inside image row `ty` of image `img_base`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn output_block(j: &RawJob, g: &WinoGeom, img_base: usize, ty: usize, m: *const f32, blk: &Block) {
    let row_px = g.w + 2;
    for i in 0..2 * blk.nt {
        let (t, ot) = (i / 2, i % 2);
        let Some(tc) = blk.tiles[ot] else { continue };
        // Accumulator tile (tile half, output tile), row within it.
        let ct = (t / 16) * 2 + ot;
        // SAFETY: the M buffer holds 16 planes of four 16×16 tiles; the stores go to interior
        // pixels (y < h, x < w) of the validated output (finish's contract).
        unsafe {
            let mb = m.add(ct * 256 + (t % 16) * 16);
            let mx = |xi: usize| _mm512_load_ps(mb.add(xi * M_PLANE));
            // Rows: s = Aᵀ M (2×4), Aᵀ = [1 1 1 0; 0 1 −1 −1].
            let (mut s0, mut s1) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
            for (c, (a, b)) in s0.iter_mut().zip(&mut s1).enumerate() {
                let (m0, m1, m2, m3) = (mx(c), mx(4 + c), mx(8 + c), mx(12 + c));
                *a = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                *b = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            }
            let s = [s0, s1];
            let tx = blk.tx0 + t;
            for (r, sr) in s.iter().enumerate() {
                let y = 2 * ty + r;
                if y >= g.h {
                    continue;
                }
                let ys = [_mm512_add_ps(_mm512_add_ps(sr[0], sr[1]), sr[2]), _mm512_sub_ps(_mm512_sub_ps(sr[1], sr[2]), sr[3])];
                for (c, acc) in ys.iter().enumerate() {
                    let x = 2 * tx + c;
                    if x >= g.w {
                        continue;
                    }
                    finish(j, &tc, img_base + (y + 1) * row_px + x + 1, *acc);
                }
            }
        }
    }
}
