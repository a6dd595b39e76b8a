//! Intel AMX (Advanced Matrix Extensions) bf16 tile kernel: the convolution as an implicit
//! GEMM on the tile unit, `tdpbf16ps` (16×16 f32 += 16×32 bf16 · 32×16 bf16 per instruction,
//! ~16× the FMA throughput of AVX-512 on this machine).
//!
//! No im2col: in the padded NHWC layout 16 consecutive output positions read 16 consecutive
//! input pixels per tap, so an A tile (16 rows × 32 channels) is one `tileloadd` from the bf16
//! input copy with the pixel stride as row stride. Weights are packed once per 16-channel
//! output tile in the VNNI pair layout `[tap][k-block][16 channel pairs][16 out][2]`.
//! Register blocking: [`run_band`] (the default on maps ≥ 16 wide) holds 4 output rows ×
//! 16 positions × 1 output tile in tmm0–3, the three row taps' weights of one tap column in
//! tmm4–6 and one input row in tmm7, so each A load feeds up to three products (0.75 loads
//! per `tdpbf16ps`); [`run_range`] (leftover rows, narrow maps) holds 2 position tiles × 2
//! output tiles of flat positions in tmm0–3, A in tmm4–5, B in tmm6–7 (one load per
//! product). The accumulators go through a 4 KB stack scratch into the same fused epilogue
//! as the AVX-512 kernel, which runs a few rows at a time inside the next block's tile loop.
//!
//! Precision: a list of passes over the k-blocks, each `(input half, weight half)` of the
//! split `x = hi + lo` (both bf16). `[hi·hi]` is plain bf16 ([`super::Backend::AmxBf16`]);
//! `[hi·hi, lo·hi]` keeps the activations to ~16 mantissa bits with bf16 weights (`AmxBf16x2`);
//! `[hi·hi, lo·hi, hi·lo]` drops only the ~2⁻¹⁸-relative `lo·lo` term (`AmxBf16x3`). The passes
//! are just more k-blocks: the input (shadow or copy) holds `[hi | lo]` channels per pixel and
//! the weights are packed once per pass. Activation rounding dominates the error (see
//! docs/fastconv.md), which is why the x2 mode splits the input, not the weights.
//!
//! Linux only hands out the tile register state after `arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`; [`available`](super::amx_tile::available) asks once and reports AMX unavailable if refused.
// Unsafe is needed for inline assembly (the AMX intrinsics are not stable in Rust), the raw
// pointer job (see job.rs) and `#[target_feature]` calls; the crate root denies it elsewhere.
#![allow(unsafe_code)]
#![cfg(target_arch = "x86_64")]

use std::arch::asm;

use super::amx_tile::{finish, k_step, store_accumulators, tile_consts, with_b_load, TileConfig, TileConsts};
use super::job::{AmxWeights, RawJob, SendPtr};

/// Output positions per parallel work item (a multiple of the 32-position register block;
/// 256 measured best of 128/256/512).
pub(super) const CHUNK: usize = 256;
/// Positions the kernel may read past the last interior position (one 32-position block, plus
/// the largest tap offset, which the padded border already covers).
pub(super) const SLACK_PX: usize = 32;

/// One register block's accumulators (in the scratch) whose fused epilogue is still running:
/// 64 rows, row `i` = position `i / 2` of the block × output tile `i % 2`.
struct Pending {
    q: usize,
    /// Bit `p`: position `q + p` is an interior pixel below `q1` (the others are skipped).
    live: u32,
    next_row: usize,
    /// Per output tile of the pair, `None` past the last output channel.
    tiles: [Option<TileConsts>; 2],
}

impl Pending {
    /// # Safety
    /// The CPU supports avx512f (as [`tile_consts`]).
    #[target_feature(enable = "avx512f")]
    fn new(j: &RawJob, wts: &AmxWeights, pair: usize, q: usize, q1: usize) -> Self {
        // The column of each position in the padded image, stepped instead of divided.
        let mut col = q % j.row_px;
        let mut live = 0u32;
        for p in 0..32 {
            if q + p < q1 && col != 0 && col <= j.w {
                live |= 1 << p;
            }
            col = if col + 1 == j.row_px { 0 } else { col + 1 };
        }
        Pending { q, live, next_row: 0, tiles: tile_consts(wts, pair) }
    }
}

/// 64-byte aligned accumulator scratch: four 16×16 f32 tiles.
#[repr(C, align(64))]
struct Scratch([f32; 1024]);

/// Runs output positions `q0..q1` (one image, interior rows) for every output tile.
///
/// The epilogue of a register block runs interleaved with the next block's tile loop, a few
/// rows per k-step: the tile unit works asynchronously, so the vector epilogue fills its
/// `tdpbf16ps` latency instead of leaving the tiles idle while 64 rows are finished.
///
/// # Safety
/// `j` and `wts` satisfy the job contract of [`RawJob`] for positions `q0..q1` on the interior
/// rows of one image, with `j.inp` pointing at a bf16 copy (or shadow) laid out as
/// [`AmxWeights::copy_channels`] channels per pixel (`j.cs_in` equal to that), readable for
/// [`SLACK_PX`] positions past the last interior one; AMX is available
/// ([`available`](super::amx_tile::available)).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn run_range(j: &RawJob, wts: &AmxWeights, q0: usize, q1: usize) {
    let stride = j.cs_in * 2;
    let kk = wts.passes * wts.kb;
    // Epilogue rows per k-step, so a block's 64 rows finish within the next block's loop.
    let rows_per_step = 64usize.div_ceil(9 * kk);
    // With two or more output-tile pairs every block streams all the weights through L1 and
    // evicts the input rows the next pair reuses; the non-temporal load keeps them out of L1
    // (measured ~7 % on 192→64; with one pair the weights partly stay in L1, and it loses).
    let stream_b = wts.tiles >= 4;
    let inp = j.inp as *const u8;
    let mut scratch = Scratch([0f32; 1024]);
    let mut pending: Option<Pending> = None;
    let cfg = TileConfig::full();
    // SAFETY: loads a valid palette-1 configuration (permission granted in `available`).
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    // Position blocks outer, output-tile pairs inner: a block's input rows stay in L1 while
    // every pair's weights stream past (measured ~5–15 % faster than the other order).
    let mut q = q0;
    while q < q1 {
        for pair in 0..wts.tiles / 2 {
            // SAFETY: tile instructions on the configured tiles; every address is inside the
            // input copy (positions q..q+32 of interior rows plus tap offsets stay in the padded
            // buffer and its slack) or the packed weights (k < kk, tile < tiles). The pending
            // epilogue reads the scratch, which the tile stores below rewrite only after it
            // finished.
            unsafe {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for t in 0..9 {
                    let a0 = inp.offset((q * stride) as isize + j.tap_off[t] * 2);
                    let a1 = a0.add(16 * stride);
                    let b0 = wts.w.as_ptr().add(((2 * pair) * 9 + t) * kk * 512) as *const u8;
                    let b1 = wts.w.as_ptr().add(((2 * pair + 1) * 9 + t) * kk * 512) as *const u8;
                    for k in 0..kk {
                        let off = wts.a_offset(j, k);
                        let (a0, a1) = (a0.add(off), a1.add(off));
                        let (b0, b1) = (b0.add(k * 1024), b1.add(k * 1024));
                        if stream_b {
                            k_step::<true>(a0, a1, b0, b1, stride);
                        } else {
                            k_step::<false>(a0, a1, b0, b1, stride);
                        }
                        if let Some(p) = pending.as_mut() {
                            epilogue_rows(j, &scratch, p, rows_per_step);
                        }
                    }
                }
                if let Some(mut p) = pending.take() {
                    epilogue_rows(j, &scratch, &mut p, 64);
                }
                store_accumulators(scratch.0.as_mut_ptr());
            }
            pending = Some(Pending::new(j, wts, pair, q, q1));
        }
        q += 32;
    }
    if let Some(mut p) = pending.take() {
        // SAFETY: as in the loop.
        unsafe { epilogue_rows(j, &scratch, &mut p, 64) };
    }
    // SAFETY: releases the tile state configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Output rows per band of [`run_band`].
pub(super) const BAND_ROWS: usize = 4;

/// A band block's accumulators (4 rows × 16 positions × one output tile) whose epilogue is
/// still running: 64 rows, row `i` = image row `i / 16` × position `i % 16`.
struct BandPending {
    /// Position of row 0, column 0 of the block.
    q: usize,
    /// Bit `p`: column `p` of the block is inside the image.
    live: u16,
    next_row: usize,
    tile: TileConsts,
}

/// Runs the [`BAND_ROWS`] output rows from interior row `y0` of the image whose padded
/// pixel 0 is position `img_base`, every output tile, in register blocks of 4 rows × 16
/// positions × 1 output tile.
///
/// Why: a 16×32 A tile of input row `r` is the tap-`(dy, ·)` operand of output row `r − dy`
/// for all three `dy`, so with the four rows of a band in tmm0–3 and the three `dy` weight
/// tiles of one tap column in tmm4–6, one load into tmm7 feeds up to three `tdpbf16ps`: per
/// (tap column, k-block) 6 A and 3 B loads for 12 products, where the 2×2 block of
/// [`run_range`] loads once per product. On this machine a tile load next to the products
/// costs more than the product itself (docs/fastconv.md, AMX section), so loads per product
/// set the speed.
///
/// # Safety
/// As [`run_range`] for the positions of rows `y0..y0+BAND_ROWS` (all interior).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn run_band(j: &RawJob, wts: &AmxWeights, img_base: usize, y0: usize) {
    let stride = j.cs_in * 2;
    let kk = wts.passes * wts.kb;
    let rows_per_step = 64usize.div_ceil(3 * kk);
    let stream_b = wts.tiles >= 4;
    let row_bytes = j.row_px * stride;
    let inp = j.inp as *const u8;
    let mut scratch = Scratch([0f32; 1024]);
    let mut pending: Option<BandPending> = None;
    let cfg = TileConfig::full();
    // SAFETY: loads a valid palette-1 configuration (permission granted in `available`).
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    for x0 in (0..j.w).step_by(16) {
        let live = ((1u32 << (j.w - x0).min(16)) - 1) as u16;
        // Output row 0, column x0 of the band.
        let q = img_base + (y0 + 1) * j.row_px + x0 + 1;
        for (o, tile) in (0..wts.tiles / 2).flat_map(|pair| tile_consts(wts, pair)).enumerate() {
            let Some(tile) = tile else { continue };
            // SAFETY: tile instructions on the configured tiles. A tiles read input rows
            // y0..y0+6 (padded) from column x0, 16 positions of `stride` bytes: inside the
            // padded buffer except past the last row's end, which the slack covers; B tiles
            // are inside the packed weights (tile o, taps, k < kk). The pending epilogue reads
            // the scratch, rewritten below only after it finished.
            unsafe {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for dx in 0..3 {
                    // Input row y0 (padded), column x0 + dx.
                    let a_base = inp.add((img_base + y0 * j.row_px + x0 + dx) * stride);
                    let b_base = wts.w.as_ptr().add((o * 9 + dx) * kk * 512) as *const u8;
                    for k in 0..kk {
                        let a = a_base.add(wts.a_offset(j, k));
                        let b = b_base.add(k * 1024);
                        if stream_b {
                            band_step::<true>(a, b, stride, row_bytes, 3 * kk * 1024);
                        } else {
                            band_step::<false>(a, b, stride, row_bytes, 3 * kk * 1024);
                        }
                        if let Some(p) = pending.as_mut() {
                            band_epilogue_rows(j, &scratch, p, rows_per_step);
                        }
                    }
                }
                if let Some(mut p) = pending.take() {
                    band_epilogue_rows(j, &scratch, &mut p, 64);
                }
                store_accumulators(scratch.0.as_mut_ptr());
            }
            pending = Some(BandPending { q, live, next_row: 0, tile });
        }
    }
    if let Some(mut p) = pending.take() {
        // SAFETY: as in the loop.
        unsafe { band_epilogue_rows(j, &scratch, &mut p, 64) };
    }
    // SAFETY: releases the tile state configured above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One (tap column, k-block) of a band block: the three `dy` weight tiles (`b`, `b_dy` bytes
/// apart) into tmm4–6, then input rows 0..6 (`row_bytes` apart from `a`) one at a time into
/// tmm7, each multiplied into the output rows it is a tap row of (row `r` → outputs
/// `r − dy`).
///
/// # Safety
/// Tiles configured by the caller; `a + r·row_bytes` (r < 6) addresses 16 rows of `stride`
/// bytes and `b + d·b_dy` (d < 3) 16 rows of 64 bytes of readable memory.
#[inline(always)]
unsafe fn band_step<const STREAM_B: bool>(a: *const u8, b: *const u8, stride: usize, row_bytes: usize, b_dy: usize) {
    macro_rules! step {
        ($b_load:literal) => {
            asm!(
                concat!($b_load, " tmm4, [{b0} + {s64}]"),
                "tileloadd tmm7, [{a0} + {s}]",
                "tdpbf16ps tmm0, tmm7, tmm4",
                concat!($b_load, " tmm5, [{b1} + {s64}]"),
                "tileloadd tmm7, [{a1} + {s}]",
                "tdpbf16ps tmm0, tmm7, tmm5",
                "tdpbf16ps tmm1, tmm7, tmm4",
                concat!($b_load, " tmm6, [{b2} + {s64}]"),
                "tileloadd tmm7, [{a2} + {s}]",
                "tdpbf16ps tmm0, tmm7, tmm6",
                "tdpbf16ps tmm1, tmm7, tmm5",
                "tdpbf16ps tmm2, tmm7, tmm4",
                "tileloadd tmm7, [{a3} + {s}]",
                "tdpbf16ps tmm1, tmm7, tmm6",
                "tdpbf16ps tmm2, tmm7, tmm5",
                "tdpbf16ps tmm3, tmm7, tmm4",
                "tileloadd tmm7, [{a4} + {s}]",
                "tdpbf16ps tmm2, tmm7, tmm6",
                "tdpbf16ps tmm3, tmm7, tmm5",
                "tileloadd tmm7, [{a5} + {s}]",
                "tdpbf16ps tmm3, tmm7, tmm6",
                a0 = in(reg) a, a1 = in(reg) a.add(row_bytes), a2 = in(reg) a.add(2 * row_bytes),
                a3 = in(reg) a.add(3 * row_bytes), a4 = in(reg) a.add(4 * row_bytes), a5 = in(reg) a.add(5 * row_bytes),
                b0 = in(reg) b, b1 = in(reg) b.add(b_dy), b2 = in(reg) b.add(2 * b_dy),
                s = in(reg) stride, s64 = in(reg) 64usize,
                options(nostack, readonly),
            )
        };
    }
    // SAFETY: the caller's contract.
    unsafe { with_b_load!(STREAM_B, step) }
}

/// The fused output pass for up to `rows` more rows of a pending band block.
///
/// # Safety
/// Called inside [`run_band`] under its contract: `p` is a block of that band, whose rows
/// `scratch` holds.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn band_epilogue_rows(j: &RawJob, scratch: &Scratch, p: &mut BandPending, rows: usize) {
    use std::arch::x86_64::*;
    let end = (p.next_row + rows).min(64);
    for i in p.next_row..end {
        let (r, x) = (i / 16, i % 16);
        if p.live & (1 << x) == 0 {
            continue;
        }
        // SAFETY: the row lies in the scratch; position q + r·row_px + x is interior.
        unsafe { finish(j, &p.tile, p.q + r * j.row_px + x, _mm512_load_ps(scratch.0.as_ptr().add(i * 16))) };
    }
    p.next_row = end;
}

/// The fused output pass for up to `rows` more rows of a pending register block.
///
/// # Safety
/// Called inside [`run_range`] under its contract: `p` is a block of that range, whose rows
/// `scratch` holds.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn epilogue_rows(j: &RawJob, scratch: &Scratch, p: &mut Pending, rows: usize) {
    use std::arch::x86_64::*;
    let end = (p.next_row + rows).min(64);
    for i in p.next_row..end {
        let (pos, ot) = (i / 2, i % 2);
        let Some(t) = p.tiles[ot] else { continue };
        if p.live & (1 << pos) == 0 {
            continue;
        }
        // Tile (position half, output tile), row within it.
        let ct = (pos / 16) * 2 + ot;
        // SAFETY: the row lies in the scratch; p.q + pos is a live (interior) position.
        unsafe { finish(j, &t, p.q + pos, _mm512_load_ps(scratch.0.as_ptr().add(ct * 256 + (pos % 16) * 16))) };
    }
    p.next_row = end;
}

/// Fills `dst[..pixels·copy_channels]` from `pixels` f32 pixels at `src` (pixel stride
/// `cs_in`, `c_in` channels): bf16 `hi` in the first half and, for bf16x3, `lo = x − hi` in
/// the second; padding channels are written as zeros, so `dst` need not be cleared.
///
/// Panics unless `dst` holds `pixels·copy_channels` values and `c_in <= kb·32`.
///
/// # Safety
/// For every `p < pixels`, the `c_in` floats at `src + p·cs_in` are readable and not written
/// until this returns; AMX is available (its AVX-512 BF16 conversions are part of
/// [`available`](super::amx_tile::available)).
pub(super) unsafe fn to_bf16_split(src: *const f32, cs_in: usize, c_in: usize, pixels: usize, dst: &mut [u16], wts: &AmxWeights) {
    use rayon::prelude::*;
    let csb = wts.copy_channels();
    assert!(dst.len() >= pixels * csb && c_in <= wts.kb * 32);
    let src = SendPtr(src);
    let (kb, split) = (wts.kb, wts.split());
    dst[..pixels * csb].par_chunks_mut(256 * csb).enumerate().for_each(|(ci, chunk)| {
        let s = src;
        // SAFETY: the chunk's pixels are < `pixels`, whose c_in channels are readable
        // (contract); AVX-512 BF16 is part of `available`.
        unsafe { convert_pixels(s.0.add(ci * 256 * cs_in), cs_in, c_in, chunk, csb, kb, split) };
    });
}

/// # Safety
/// For every pixel `p` of `dst` (`csb` values each, `csb >= kb·32·(1 + split)`), the `c_in`
/// floats at `src + p·cs_in` are readable, `c_in <= kb·32`; the CPU supports avx512f,
/// avx512bf16 and avx512bw.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn convert_pixels(src: *const f32, cs_in: usize, c_in: usize, dst: &mut [u16], csb: usize, kb: usize, split: bool) {
    use std::arch::x86_64::*;
    let groups = kb * 2;
    for (p, px) in dst.chunks_exact_mut(csb).enumerate() {
        let d = px.as_mut_ptr();
        for g in 0..groups {
            let c0 = g * 16;
            let live = c_in.saturating_sub(c0).min(16);
            let mask = ((1u32 << live) - 1) as u16;
            // SAFETY: masked load of the pixel's live channels; stores stay inside `px`
            // (c0 + 16 <= kb·32, and the lo half starts at kb·32).
            unsafe {
                let x = _mm512_maskz_loadu_ps(mask, src.add(p * cs_in + c0));
                let hi = _mm512_cvtneps_pbh(x);
                _mm256_storeu_si256(d.add(c0) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(hi));
                if split {
                    let hi32 = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi)));
                    let lo = _mm512_cvtneps_pbh(_mm512_sub_ps(x, _mm512_castsi512_ps(hi32)));
                    _mm256_storeu_si256(d.add(kb * 32 + c0) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(lo));
                }
            }
        }
    }
}
