//! Runs a convolution: validates the buffers, offsets and residuals of a forward, builds the
//! raw job, cuts it into work items on rayon's pool and calls the kernel the conv was packed
//! for (direct fp32/bf16, Winograd F(4×4,3×3), AMX direct or AMX Winograd).
//!
//! This is the unsafe boundary of fastconv: [`Conv3x3::forward`] and
//! [`Conv3x3::forward_in_place`] are safe because they check everything the job contract of
//! [`RawJob`] needs before their one `unsafe` block turns borrows into raw pointers; every
//! function below them that takes raw pointers is an `unsafe fn`.
// Unsafe is needed to turn the validated borrows into raw pointers and to call the kernels
// (see job.rs); the crate root denies it elsewhere.
#![allow(unsafe_code)]

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(target_arch = "x86_64")]
use super::amx_wino;
#[cfg(target_arch = "x86_64")]
use super::avx512;
#[cfg(target_arch = "x86_64")]
use super::wino_bf16;
#[cfg(target_arch = "x86_64")]
use super::select::AMX_WINOGRAD_MIN_TILES;
use super::select::{Backend, Winograd, WINOGRAD_MIN_TILES};
use super::conv::{Conv3x3, Epilogue};
#[cfg(target_arch = "x86_64")]
use super::job::{AmxWeights, WinoGeom};
use super::job::{f32_to_bf16, RawBlock, RawJob, RawRes, SendPtr, WinoJob};
use super::layout::{Nhwc, SLACK_PX};
use super::{pack, pool, portable, winograd};
use super::error::{shape_err, FastConvError};

/// Output positions per parallel work item (a multiple of every tile width P).
const CHUNK: usize = 144;

/// The raw operands of one validated forward: pointers at pixel 0 (padded) of their buffers,
/// already offset to the channel slice.
#[derive(Clone, Copy)]
struct Operands {
    n: usize,
    h: usize,
    w: usize,
    inp: *const f32,
    cs_in: usize,
    /// The input's bf16 shadow, when a plain AMX conv reads it instead of converting.
    shadow_in: Option<*const u16>,
    /// Null when the conv writes only the output's shadow (`Epilogue::bf16_only`).
    out: *mut f32,
    cs_out: usize,
    /// The output's bf16 shadow, which a plain AMX conv writes next to `out`.
    shadow_out: Option<*mut u16>,
    res: [RawRes; 2],
    nres: usize,
    scale: f32,
}

impl Conv3x3 {
    /// Convolves channels `in_off..in_off+in_c` of `input` into channels
    /// `out_off..out_off+out_c` of `out` (same n, h, w), with the fused epilogue.
    pub fn forward(&self, input: &Nhwc, in_off: usize, out: &mut Nhwc, out_off: usize, ep: &Epilogue) -> Result<(), FastConvError> {
        self.check_in(input, in_off)?;
        self.check_out(out, out_off, input)?;
        let (res, nres) = self.check_res(ep, input)?;
        let shadow_in = if self.plain_amx() { input.bf16_if_valid(in_off, self.in_c) } else { None };
        self.check_f32_in(input, in_off, shadow_in.is_some())?;
        let shadow_out = self.plain_amx().then(|| out.bf16_mut_ptr());
        let bf16_only = ep.bf16_only && shadow_out.is_some();
        let (n, h, w, cs_in) = input.shape();
        let cs_out = out.c;
        let out_base = out.data_mut_ptr_for(out_off, self.out_c);
        // SAFETY: checked above: `in_off + in_c <= input.c` and `out_off + out_c <= out.c`, so
        // the offsets stay inside pixel 0 of buffers that hold every pixel of `n×h×w` (plus
        // slack, and the shadows theirs); `out` has the input's n, h, w; the residuals have it
        // too and hold `out_c` current f32 channels from their offset; a conv that reads f32
        // input has current f32 values. `input` (shared) and `out` (exclusive) are distinct
        // buffers borrowed for the whole call, and `run` returns only when every kernel
        // thread has finished.
        unsafe {
            let op = Operands {
                n,
                h,
                w,
                inp: input.data().as_ptr().add(in_off),
                cs_in,
                shadow_in: shadow_in.map(|p| p.add(in_off)),
                out: if bf16_only { std::ptr::null_mut() } else { out_base.add(out_off) },
                cs_out,
                shadow_out: shadow_out.map(|p| p.add(out_off)),
                res,
                nres,
                scale: ep.scale,
            };
            self.run(&op);
        }
        self.mark_written(out, out_off, shadow_out.is_some(), bf16_only);
        Ok(())
    }

    /// Convolves channels `in_off..in_off+in_c` of `buf` into its channels
    /// `out_off..out_off+out_c` (the ranges must not overlap): a dense block's conv writes its
    /// growth channels right after the ones it read.
    pub fn forward_in_place(&self, buf: &mut Nhwc, in_off: usize, out_off: usize, ep: &Epilogue) -> Result<(), FastConvError> {
        self.check_in(buf, in_off)?;
        self.check_out(buf, out_off, buf)?;
        if in_off < out_off + self.out_c && out_off < in_off + self.in_c {
            return shape_err("forward_in_place: input and output channel ranges overlap");
        }
        let (res, nres) = self.check_res(ep, buf)?;
        // Complete the buffer's shadow rather than convert into a copy: later convs on the
        // same buffer reuse it, and a dense block's input mixes channels that only f32 holds
        // (the block input) with channels that only the shadow holds (bf16_only growth).
        if self.plain_amx() && buf.bf16_if_valid(in_off, self.in_c).is_none() {
            buf.fill_shadow(in_off, self.in_c);
        }
        let reads_shadow = self.plain_amx() && buf.bf16_if_valid(in_off, self.in_c).is_some();
        self.check_f32_in(buf, in_off, reads_shadow)?;
        // One mutable pointer per array, from which both the read and the written slice derive.
        let shadow = self.plain_amx().then(|| buf.bf16_mut_ptr());
        let bf16_only = ep.bf16_only && shadow.is_some();
        let (n, h, w, cs) = buf.shape();
        let base = buf.data_mut_ptr_for(out_off, self.out_c);
        // SAFETY: as in `forward` for the offsets, the residuals and the f32 input; input and
        // output are disjoint channel slices (checked above) of the one exclusively borrowed
        // buffer, so the kernels' reads never see their own writes.
        unsafe {
            let op = Operands {
                n,
                h,
                w,
                inp: base.add(in_off),
                cs_in: cs,
                shadow_in: shadow.filter(|_| reads_shadow).map(|p| p.add(in_off).cast_const()),
                out: if bf16_only { std::ptr::null_mut() } else { base.add(out_off) },
                cs_out: cs,
                shadow_out: shadow.map(|p| p.add(out_off)),
                res,
                nres,
                scale: ep.scale,
            };
            self.run(&op);
        }
        self.mark_written(buf, out_off, shadow.is_some(), bf16_only);
        Ok(())
    }

    /// A conv that does not read the shadow needs current f32 input values.
    fn check_f32_in(&self, input: &Nhwc, in_off: usize, reads_shadow: bool) -> Result<(), FastConvError> {
        if !reads_shadow && !input.f32_current(in_off, self.in_c) {
            return shape_err(format!(
                "input channels {in_off}..{} hold only bf16 values (Epilogue::bf16_only) and this {:?} conv reads f32",
                in_off + self.in_c,
                self.backend
            ));
        }
        Ok(())
    }

    /// Records what the kernel wrote into `out`'s channels: the shadow (plain AMX), and the
    /// f32 values unless `bf16_only`.
    fn mark_written(&self, out: &mut Nhwc, out_off: usize, shadow: bool, bf16_only: bool) {
        if shadow {
            out.mark_bf16_valid(out_off, self.out_c);
        }
        if bf16_only {
            out.mark_f32_stale(out_off, self.out_c);
        }
    }

    /// Whether this conv runs the single-pass AMX kernel (the one that reads and writes the
    /// bf16 shadow). The split modes need the `lo` half, which the shadow does not keep, so
    /// they convert.
    fn plain_amx(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.amx.as_ref().is_some_and(|w| !w.split()) {
            return true;
        }
        false
    }

    fn check_in(&self, input: &Nhwc, in_off: usize) -> Result<(), FastConvError> {
        if in_off + self.in_c > input.c {
            return shape_err(format!("input channels {in_off}+{} > stride {}", self.in_c, input.c));
        }
        Ok(())
    }

    fn check_out(&self, out: &Nhwc, out_off: usize, input: &Nhwc) -> Result<(), FastConvError> {
        if (out.n, out.h, out.w) != (input.n, input.h, input.w) {
            return shape_err("output n/h/w differ from input");
        }
        if out_off + self.out_c > out.c {
            return shape_err(format!("output channels {out_off}+{} > stride {}", self.out_c, out.c));
        }
        Ok(())
    }

    fn check_res(&self, ep: &Epilogue, input: &Nhwc) -> Result<([RawRes; 2], usize), FastConvError> {
        if ep.residuals.len() > 2 {
            return shape_err("at most two residuals");
        }
        let mut v = [RawRes::NONE; 2];
        for (slot, r) in v.iter_mut().zip(ep.residuals) {
            if (r.src.n, r.src.h, r.src.w) != (input.n, input.h, input.w) || r.c_off + self.out_c > r.src.c {
                return shape_err("residual shape or channel slice mismatch");
            }
            if !r.src.f32_current(r.c_off, self.out_c) {
                return shape_err("residual channels hold only bf16 values (Epilogue::bf16_only)");
            }
            *slot = RawRes { ptr: r.src.data()[r.c_off..].as_ptr(), cs: r.src.c, weight: r.weight };
        }
        Ok((v, ep.residuals.len()))
    }

    fn raw_blocks(&self) -> Vec<RawBlock> {
        self.blocks.iter().map(pack::Block::raw).collect()
    }

    /// Runs a validated convolution.
    ///
    /// # Safety
    /// `op` points into live buffers that satisfy the job contract of [`RawJob`] for this
    /// conv: `op.inp` reads `in_c` channels and `op.out` (unless null) writes `out_c` channels
    /// of every pixel of `n` padded `(h+2)×(w+2)` images plus [`SLACK_PX`] pixels, at pixel
    /// strides `cs_in`/`cs_out`; the shadows, when given, likewise in bf16 with the shadow's
    /// slack; the `nres` residuals read `out_c` channels of the output's geometry. Nothing
    /// else accesses the written memory, or writes the read memory, until this returns.
    unsafe fn run(&self, op: &Operands) {
        let Operands { n, h, w, .. } = *op;
        if n == 0 || h == 0 || w == 0 {
            return;
        }
        let row_px = w + 2;
        #[cfg(target_arch = "x86_64")]
        if let Some(wts) = &self.amx {
            // SAFETY: the caller's contract; `wts` is this conv's own packing.
            return unsafe { self.run_amx(wts, op) };
        }
        // Per image, so that a batch runs the kernel each of its images would run alone.
        let tiles = h.div_ceil(4) * w.div_ceil(4);
        if self.winograd && (self.wino_mode == Winograd::Always || tiles >= WINOGRAD_MIN_TILES) {
            let job = WinoJob {
                inp: op.inp,
                cs_in: op.cs_in,
                c_in: self.in_c,
                out: op.out,
                cs_out: op.cs_out,
                res: op.res,
                nres: op.nres,
                scale: op.scale,
                n,
                h,
                w,
            };
            #[cfg(target_arch = "x86_64")]
            if self.backend == Backend::Avx512Bf16 {
                // SAFETY: the caller's contract; on this backend `self.winograd` means every
                // block's bf16 Winograd weights were packed for `in_c` inputs and
                // `wino_rows`, and `with_options` checked that avx512bf16 is usable.
                unsafe { wino_bf16::run(&job, &self.raw_blocks(), self.wino_rows) };
                return;
            }
            // SAFETY: the caller's contract; `self.winograd` means every block's Winograd
            // weights were packed for `in_c` inputs, and only on the AVX-512 backend
            // (`Winograd::pays`), which `with_options` checked is supported.
            unsafe { winograd::run(&job, &self.raw_blocks()) };
            return;
        }
        let bf16 = self.backend == Backend::Avx512Bf16;
        // The bf16 backend reads a bf16 copy of the input slice (same geometry, even stride),
        // taken from a pool so the buffer is reused across calls.
        let mut scratch = Vec::new();
        let (inp, cs, c_in) = if bf16 {
            let csb = self.in_c.div_ceil(2) * 2;
            scratch = pool::take_bf16_scratch();
            scratch.clear();
            let pixels = n * (h + 2) * row_px;
            scratch.resize((pixels + SLACK_PX) * csb, 0);
            // SAFETY: the caller's contract: `op.inp` reads `in_c` channels of `pixels` pixels.
            unsafe { to_bf16(op.inp, op.cs_in, self.in_c, pixels, &mut scratch, csb) };
            (scratch.as_ptr().cast::<f32>(), csb, csb)
        } else {
            (op.inp, op.cs_in, self.in_c)
        };
        let rs = (row_px * cs) as isize;
        let c = cs as isize;
        let mut tap_off = [0isize; 9];
        for ky in 0..3 {
            for kx in 0..3 {
                tap_off[ky * 3 + kx] = (ky as isize - 1) * rs + (kx as isize - 1) * c;
            }
        }
        let job = RawJob {
            inp,
            cs_in: cs,
            c_in,
            tap_off,
            out: op.out,
            cs_out: op.cs_out,
            out_bf: std::ptr::null_mut(),
            in_lo: 0,
            res: op.res,
            nres: op.nres,
            scale: op.scale,
            row_px,
            w,
        };
        let blocks = self.raw_blocks();
        // Interior positions of one image: first interior pixel .. one past the last.
        let first = row_px + 1;
        let end = (h + 1) * row_px - 1;
        let per_img = (end - first).div_ceil(CHUNK);
        let backend = self.backend;
        let work = |item: usize| {
            let img = item / per_img;
            let base = img * (h + 2) * row_px;
            let q0 = base + first + (item % per_img) * CHUNK;
            let q1 = (q0 + CHUNK).min(base + end);
            for b in &blocks {
                // SAFETY: `job` holds the caller's operands (or the bf16 copy of the input,
                // same geometry, with slack); `b` was packed by `with_options` for `in_c`
                // inputs and this backend, which it checked is supported; `q0..q1` lies on
                // the interior rows of image `img`; work items cover disjoint positions.
                unsafe { run_range(backend, &job, b, q0, q1) };
            }
        };
        let items = n * per_img;
        if items == 1 {
            work(0);
        } else {
            (0..items).into_par_iter().for_each(work);
        }
        if bf16 {
            pool::give_bf16_scratch(scratch);
        }
    }
}

impl Conv3x3 {
    /// The AMX path of [`Conv3x3::run`]: a pooled bf16 copy of the input (`[hi | lo]` for
    /// bf16x3), then 256-position chunks × images on rayon's pool.
    ///
    /// # Safety
    /// As [`Conv3x3::run`], with `wts` this conv's AMX packing.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run_amx(&self, wts: &AmxWeights, op: &Operands) {
        let Operands { n, h, w, .. } = *op;
        let row_px = w + 2;
        let pixels = n * (h + 2) * row_px;
        let mut scratch = Vec::new();
        // Read the input's bf16 shadow in place when it is current (channels past `in_c` in a
        // k-block meet zero weights); otherwise convert into a pooled copy.
        let (src, csb, in_lo) = match op.shadow_in {
            Some(p) => (p, op.cs_in, 0),
            None => {
                let csb = wts.copy_channels();
                scratch = pool::take_bf16_scratch();
                // Every value up to `pixels·csb` is rewritten below; only the slack is zeroed.
                // The copy starts 64-byte aligned, like the shadow (see `Nhwc::bf16_base`).
                let need = (pixels + amx::SLACK_PX) * csb + 32;
                scratch.truncate(need);
                scratch.resize(need, 0);
                let off = scratch.as_ptr().align_offset(64).min(31);
                let copy = &mut scratch[off..];
                copy[pixels * csb..].fill(0);
                // SAFETY: the caller's contract: `op.inp` reads `in_c` channels of `pixels`
                // pixels; a conv packed for AMX runs only where `amx_tile::available` (its
                // backend was checked supported in `with_options`).
                unsafe { amx::to_bf16_split(op.inp, op.cs_in, self.in_c, pixels, copy, wts) };
                (copy.as_ptr(), csb, wts.lo_offset())
            }
        };
        let rs = (row_px * csb) as isize;
        let mut tap_off = [0isize; 9];
        for ky in 0..3 {
            for kx in 0..3 {
                tap_off[ky * 3 + kx] = (ky as isize - 1) * rs + (kx as isize - 1) * csb as isize;
            }
        }
        let job = RawJob {
            inp: src.cast::<f32>(),
            cs_in: csb,
            c_in: csb,
            tap_off,
            out: op.out,
            cs_out: op.cs_out,
            out_bf: op.shadow_out.unwrap_or(std::ptr::null_mut()),
            in_lo,
            res: op.res,
            nres: op.nres,
            scale: op.scale,
            row_px,
            w,
        };
        // Per image, as in `run`.
        let wino_tiles = h.div_ceil(2) * w.div_ceil(2);
        if let Some(wino) = wts.winograd().filter(|_| self.wino_mode == Winograd::Always || wino_tiles >= AMX_WINOGRAD_MIN_TILES) {
            // SAFETY: `job` reads the shadow or the fresh copy (both with the AMX slack) and
            // writes the caller's output; `wino` was packed with `wts`'s tiles and k-blocks;
            // AMX is available (as above).
            unsafe { amx_wino::run(&job, wts, wino, &WinoGeom { n, h, w, c_in: self.in_c }) };
        } else {
            // SAFETY: as for the Winograd kernel.
            unsafe { run_amx_direct(&job, wts, (n, h, w)) };
        }
        if !scratch.is_empty() {
            pool::give_bf16_scratch(scratch);
        }
    }
}

/// The direct AMX kernels over every interior position of `n` images: bands of rows on the
/// band kernel, the rest in 256-position chunks on the flat kernel, × images on rayon's pool.
///
/// # Safety
/// `job` satisfies the job contract of [`RawJob`] for the AMX kernels (`amx::run_range`):
/// its input is a bf16 copy or shadow of [`AmxWeights::copy_channels`] channels per pixel
/// with `amx::SLACK_PX` pixels of slack; `wts` is the packing it was built for; AMX is
/// available.
#[cfg(target_arch = "x86_64")]
unsafe fn run_amx_direct(job: &RawJob, wts: &AmxWeights, (n, h, w): (usize, usize, usize)) {
    let row_px = w + 2;
    // Bands of rows on the band kernel where whole 16-column tiles waste ≤ 1/9 of the
    // width; the rows left over (and narrow maps) on the flat 2×2 kernel, which wraps
    // across rows.
    let bands = if amx_bands_pay(w) { h / amx::BAND_ROWS } else { 0 };
    let first = (bands * amx::BAND_ROWS + 1) * row_px + 1;
    let end = (h + 1) * row_px - 1;
    let chunks = if first < end { (end - first).div_ceil(amx::CHUNK) } else { 0 };
    let per_img = bands + chunks;
    let work = |item: usize| {
        let base = (item / per_img) * (h + 2) * row_px;
        let i = item % per_img;
        if i < bands {
            // SAFETY: the caller's contract; rows `i·BAND_ROWS..` + BAND_ROWS are interior
            // rows of this image (i < h / BAND_ROWS); work items cover disjoint positions.
            unsafe { amx::run_band(job, wts, base, i * amx::BAND_ROWS) };
        } else {
            let q0 = base + first + (i - bands) * amx::CHUNK;
            let q1 = (q0 + amx::CHUNK).min(base + end);
            // SAFETY: the caller's contract; `q0..q1` lies on the interior rows of this image
            // below the bands; work items cover disjoint positions.
            unsafe { amx::run_range(job, wts, q0, q1) };
        }
    };
    (0..n * per_img).into_par_iter().for_each(work);
}

/// Whether the AMX band kernel suits maps `w` wide: its 16-column tiles waste at most 1/9.
#[cfg(target_arch = "x86_64")]
fn amx_bands_pay(w: usize) -> bool {
    w.div_ceil(16) * 16 * 8 <= w * 9
}

/// Runs output positions `q0..q1` (padded flat coordinates of one image, all on interior
/// rows) of one block on the chosen backend.
///
/// # Safety
/// `job` and `blk` satisfy the job contract of [`RawJob`]: `blk` packed for `job.c_in`
/// inputs (with its bf16 pairs, and `job.inp` the bf16 copy, on [`Backend::Avx512Bf16`]);
/// `q0..q1` lies on the interior rows of one image; `backend` is supported
/// ([`Backend::supported`]: the CPU has the features it needs); no other thread writes the
/// positions `q0..q1` of this block's channels meanwhile.
unsafe fn run_range(backend: Backend, job: &RawJob, blk: &RawBlock, q0: usize, q1: usize) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => {
            // SAFETY: the contract above; `Avx512` supported means avx512f is present.
            unsafe { avx512::run_range(job, blk, q0, q1) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Bf16 => {
            // SAFETY: the contract above; `Avx512Bf16` supported means avx512f and
            // avx512bf16 are present.
            unsafe { avx512::run_range_bf16(job, blk, q0, q1) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            // SAFETY: the contract above; `Avx2` supported means avx2 and fma are present.
            unsafe { portable::run_range_avx2(job, blk, q0, q1) }
        }
        _ => {
            // SAFETY: the contract above; no CPU feature needed.
            unsafe { portable::run_range(job, blk, q0, q1) }
        }
    }
}

/// Converts `pixels` pixels of `c_in` f32 channels at `src` (pixel stride `cs_in`) into
/// `dst` as bf16 with pixel stride `csb >= c_in` (extra channels and slack left zero).
/// Panics unless `dst` holds `pixels·csb` values and `c_in <= csb`.
///
/// # Safety
/// For every `p < pixels`, the `c_in` floats at `src + p·cs_in` are readable and not written
/// until this returns.
unsafe fn to_bf16(src: *const f32, cs_in: usize, c_in: usize, pixels: usize, dst: &mut [u16], csb: usize) {
    assert!(dst.len() >= pixels * csb && c_in <= csb);
    let src = SendPtr(src);
    dst[..pixels * csb].par_chunks_mut(256 * csb).enumerate().for_each(|(ci, chunk)| {
        let s = src;
        for (i, px) in chunk.chunks_mut(csb).enumerate() {
            let p = ci * 256 + i;
            // SAFETY: p < pixels, whose first c_in floats are readable (the contract).
            let v = unsafe { std::slice::from_raw_parts(s.0.add(p * cs_in), c_in) };
            for (d, x) in px.iter_mut().zip(v) {
                *d = f32_to_bf16(*x);
            }
        }
    });
}
