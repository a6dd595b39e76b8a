//! Runs a convolution: validates the buffers, offsets and residuals of a forward, builds the
//! raw job, cuts it into work items on rayon's pool and calls the kernel the conv was packed
//! for (direct fp32/bf16, Winograd F(4×4,3×3), AMX direct or AMX Winograd).
// Unsafe is needed to call the kernels, which take raw pointers (see job.rs); the crate root
// denies it elsewhere.
#![allow(unsafe_code)]

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::amx;
#[cfg(target_arch = "x86_64")]
use super::amx_wino;
#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::backend::{Backend, Winograd, WINOGRAD_MIN_TILES};
#[cfg(target_arch = "x86_64")]
use super::backend::AMX_WINOGRAD_MIN_TILES;
use super::conv::{Conv3x3, Epilogue};
use super::job::{f32_to_bf16, RawBlock, RawJob, RawRes, SendPtr, WinoJob};
#[cfg(target_arch = "x86_64")]
use super::job::{AmxWeights, WinoGeom};
use super::layout::{Nhwc, SLACK_PX};
use super::{pack, pool, portable, winograd};
use super::{shape_err, FastConvError};

/// Output positions per parallel work item (a multiple of every tile width P).
const CHUNK: usize = 144;

impl Conv3x3 {
    /// Convolves channels `in_off..in_off+in_c` of `input` into channels
    /// `out_off..out_off+out_c` of `out` (same n, h, w), with the fused epilogue.
    pub fn forward(&self, input: &Nhwc, in_off: usize, out: &mut Nhwc, out_off: usize, ep: &Epilogue) -> Result<(), FastConvError> {
        self.check_in(input, in_off)?;
        self.check_out(out, out_off, input)?;
        let res = self.check_res(ep, input)?;
        let geom = (input.n, input.h, input.w);
        let inp = input.data()[in_off..].as_ptr();
        let cs_out = out.c;
        let shadow_in = self.shadow_in(input, in_off);
        self.check_f32_in(input, in_off, shadow_in)?;
        let shadow_out = self.shadow_out(out, out_off);
        let bf16_only = ep.bf16_only && shadow_out.is_some();
        let out_ptr = out.data_mut_ptr_for(out_off, self.out_c).wrapping_add(out_off);
        let out_ptr = if bf16_only { std::ptr::null_mut() } else { out_ptr };
        self.run(geom, inp, input.c, out_ptr, cs_out, &res, ep.scale, shadow_in, shadow_out);
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
        let res = self.check_res(ep, buf)?;
        let geom = (buf.n, buf.h, buf.w);
        let cs = buf.c;
        // Complete the buffer's shadow rather than convert into a copy: later convs on the
        // same buffer reuse it, and a dense block's input mixes channels that only f32 holds
        // (the block input) with channels that only the shadow holds (bf16_only growth).
        if self.plain_amx() && buf.bf16_if_valid(in_off, self.in_c).is_none() {
            buf.fill_shadow(in_off, self.in_c);
        }
        let shadow_in = self.shadow_in(buf, in_off);
        self.check_f32_in(buf, in_off, shadow_in)?;
        let shadow_out = self.shadow_out(buf, out_off);
        let bf16_only = ep.bf16_only && shadow_out.is_some();
        // Both pointers derive from one mutable borrow; reads and writes touch disjoint
        // channels.
        let base = buf.data_mut_ptr_for(out_off, self.out_c);
        let out_ptr = if bf16_only { std::ptr::null_mut() } else { base.wrapping_add(out_off) };
        self.run(geom, base.wrapping_add(in_off), cs, out_ptr, cs, &res, ep.scale, shadow_in, shadow_out);
        self.mark_written(buf, out_off, shadow_out.is_some(), bf16_only);
        Ok(())
    }

    /// A conv that does not read the shadow needs current f32 input values.
    fn check_f32_in(&self, input: &Nhwc, in_off: usize, shadow_in: Option<*const u16>) -> Result<(), FastConvError> {
        if shadow_in.is_none() && !input.f32_current(in_off, self.in_c) {
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

    /// The input's bf16 shadow (offset to `in_off`) when this is a plain (single-pass) AMX
    /// conv and the shadow holds the channels it reads. The split modes need the `lo` half,
    /// which the shadow does not keep, so they convert.
    fn shadow_in(&self, input: &Nhwc, in_off: usize) -> Option<*const u16> {
        if self.plain_amx() {
            return input.bf16_if_valid(in_off, self.in_c).map(|p| p.wrapping_add(in_off));
        }
        None
    }

    /// Whether this conv runs the single-pass AMX kernel (the one that reads and writes the
    /// bf16 shadow).
    fn plain_amx(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.amx.as_ref().is_some_and(|w| !w.split()) {
            return true;
        }
        false
    }

    /// For a plain AMX conv, the output's bf16 shadow (offset to `out_off`), which the kernel
    /// writes next to the f32 values.
    fn shadow_out(&self, out: &mut Nhwc, out_off: usize) -> Option<*mut u16> {
        if self.plain_amx() {
            return Some(out.bf16_mut_ptr().wrapping_add(out_off));
        }
        None
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

    fn check_res(&self, ep: &Epilogue, input: &Nhwc) -> Result<Vec<RawRes>, FastConvError> {
        if ep.residuals.len() > 2 {
            return shape_err("at most two residuals");
        }
        let mut v = Vec::new();
        for r in ep.residuals {
            if (r.src.n, r.src.h, r.src.w) != (input.n, input.h, input.w) || r.c_off + self.out_c > r.src.c {
                return shape_err("residual shape or channel slice mismatch");
            }
            if !r.src.f32_current(r.c_off, self.out_c) {
                return shape_err("residual channels hold only bf16 values (Epilogue::bf16_only)");
            }
            v.push(RawRes { ptr: r.src.data()[r.c_off..].as_ptr(), cs: r.src.c, weight: r.weight });
        }
        Ok(v)
    }

    fn raw_blocks(&self) -> Vec<RawBlock> {
        self.blocks.iter().map(pack::Block::raw).collect()
    }

    /// Runs a validated convolution. `inp`/`out_ptr` point at pixel 0 (padded) of their
    /// buffers, already offset to the channel slice.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        geom: (usize, usize, usize),
        inp: *const f32,
        cs_in: usize,
        out_ptr: *mut f32,
        cs_out: usize,
        res: &[RawRes],
        scale: f32,
        shadow_in: Option<*const u16>,
        shadow_out: Option<*mut u16>,
    ) {
        let (n, h, w) = geom;
        if n == 0 || h == 0 || w == 0 {
            return;
        }
        let row_px = w + 2;
        let mut rr = [RawRes::NONE; 2];
        rr[..res.len()].copy_from_slice(res);
        #[cfg(target_arch = "x86_64")]
        if let Some(wts) = &self.amx {
            return self.run_amx(wts, geom, (inp, cs_in, shadow_in), out_ptr, cs_out, rr, res.len(), scale, shadow_out);
        }
        // Per image, so that a batch runs the kernel each of its images would run alone.
        let tiles = h.div_ceil(4) * w.div_ceil(4);
        if self.winograd && (self.wino_mode == Winograd::Always || tiles >= WINOGRAD_MIN_TILES) {
            let job = WinoJob {
                inp,
                cs_in,
                c_in: self.in_c,
                out: out_ptr,
                cs_out,
                res: rr,
                nres: res.len(),
                scale,
                n,
                h,
                w,
            };
            winograd::run(&job, &self.raw_blocks());
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
            to_bf16(inp, cs_in, self.in_c, pixels, &mut scratch, csb);
            (scratch.as_ptr() as *const f32, csb, csb)
        } else {
            (inp, cs_in, self.in_c)
        };
        let rs = (row_px * cs) as isize;
        let c = cs as isize;
        let mut tap_off = [0isize; 9];
        for ky in 0..3 {
            for kx in 0..3 {
                tap_off[ky * 3 + kx] = (ky as isize - 1) * rs + (kx as isize - 1) * c;
            }
        }
        let _ = (shadow_in, shadow_out);
        let job = RawJob {
            inp,
            cs_in: cs,
            c_in,
            tap_off,
            out: out_ptr,
            cs_out,
            out_bf: std::ptr::null_mut(),
            in_lo: 0,
            res: rr,
            nres: res.len(),
            scale,
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
                run_range(backend, &job, b, q0, q1);
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
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn run_amx(
        &self,
        wts: &AmxWeights,
        geom: (usize, usize, usize),
        (inp, cs_in, shadow_in): (*const f32, usize, Option<*const u16>),
        out_ptr: *mut f32,
        cs_out: usize,
        res: [RawRes; 2],
        nres: usize,
        scale: f32,
        shadow_out: Option<*mut u16>,
    ) {
        let (n, h, w) = geom;
        let row_px = w + 2;
        let pixels = n * (h + 2) * row_px;
        let mut scratch = Vec::new();
        // Read the input's bf16 shadow in place when it is current (channels past `in_c` in a
        // k-block meet zero weights); otherwise convert into a pooled copy.
        let (src, csb, in_lo) = match shadow_in {
            Some(p) => (p, cs_in, 0),
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
                amx::to_bf16_split(inp, cs_in, self.in_c, pixels, copy, wts);
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
            inp: src as *const f32,
            cs_in: csb,
            c_in: csb,
            tap_off,
            out: out_ptr,
            cs_out,
            out_bf: shadow_out.unwrap_or(std::ptr::null_mut()),
            in_lo,
            res,
            nres,
            scale,
            row_px,
            w,
        };
        // Per image, as in `run`.
        let wino_tiles = h.div_ceil(2) * w.div_ceil(2);
        if let Some(wino) = wts.winograd().filter(|_| self.wino_mode == Winograd::Always || wino_tiles >= AMX_WINOGRAD_MIN_TILES) {
            amx_wino::run(&job, wts, wino, &WinoGeom { n, h, w, c_in: self.in_c });
        } else {
            self.run_amx_direct(&job, wts, geom);
        }
        if !scratch.is_empty() {
            pool::give_bf16_scratch(scratch);
        }
    }

    /// The direct AMX kernel over every interior position: 256-position chunks × images.
    #[cfg(target_arch = "x86_64")]
    fn run_amx_direct(&self, job: &RawJob, wts: &AmxWeights, (n, h, w): (usize, usize, usize)) {
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
                run_amx_band(job, wts, base, i * amx::BAND_ROWS);
            } else {
                let q0 = base + first + (i - bands) * amx::CHUNK;
                let q1 = (q0 + amx::CHUNK).min(base + end);
                run_amx(job, wts, q0, q1);
            }
        };
        (0..n * per_img).into_par_iter().for_each(work);
    }
}

/// Whether the AMX band kernel suits maps `w` wide: its 16-column tiles waste at most 1/9.
fn amx_bands_pay(w: usize) -> bool {
    w.div_ceil(16) * 16 * 8 <= w * 9
}

/// Runs output positions `q0..q1` (padded flat coordinates of one image, all on interior
/// rows) of one block on the chosen backend.
///
/// Contract (not checked here; this is module-private): `job` and `blk` come from
/// `Conv3x3::run`, which validated every buffer, offset and length; `q0..q1` lies in the
/// interior rows of one image; the backend was checked with `Backend::supported`.
pub(super) fn run_range(backend: Backend, job: &RawJob, blk: &RawBlock, q0: usize, q1: usize) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => {
            // SAFETY: contract above; the caller checked avx512f support (Backend::resolve).
            unsafe { avx512::run_range(job, blk, q0, q1) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Bf16 => {
            // SAFETY: contract above; the caller checked avx512f + avx512bf16 support.
            unsafe { avx512::run_range_bf16(job, blk, q0, q1) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            // SAFETY: contract above; the caller checked avx2 + fma support.
            unsafe { portable::run_range_avx2(job, blk, q0, q1) }
        }
        _ => {
            // SAFETY: the contract above; no CPU feature needed.
            unsafe { portable::run_range(job, blk, q0, q1) }
        }
    }
}

/// Runs output positions `q0..q1` of every output tile on the AMX kernel.
///
/// Contract (module-private): as [`run_range`], with `job` describing the bf16 input copy
/// built by `Conv3x3::run_amx` and AMX available (the backend was checked).
#[cfg(target_arch = "x86_64")]
pub(super) fn run_amx(job: &RawJob, wts: &AmxWeights, q0: usize, q1: usize) {
    // SAFETY: contract above.
    unsafe { amx::run_range(job, wts, q0, q1) }
}

/// Runs the [`amx::BAND_ROWS`] interior rows from `y0` of the image at padded position
/// `img_base`, every output tile, on the AMX band kernel.
///
/// Contract (module-private): as [`run_amx`] for those rows' positions.
#[cfg(target_arch = "x86_64")]
pub(super) fn run_amx_band(job: &RawJob, wts: &AmxWeights, img_base: usize, y0: usize) {
    // SAFETY: contract above.
    unsafe { amx::run_band(job, wts, img_base, y0) }
}

/// Converts `pixels` pixels of `c_in` f32 channels at `src` (pixel stride `cs_in`) into
/// `dst` as bf16 with pixel stride `csb >= c_in` (extra channels and slack left zero).
///
/// Contract (module-private): `src` addresses `pixels * cs_in` readable floats (minus the
/// channel offset it already includes, with `c_in` channels in range per pixel), and
/// `dst.len() >= pixels * csb`.
pub(super) fn to_bf16(src: *const f32, cs_in: usize, c_in: usize, pixels: usize, dst: &mut [u16], csb: usize) {
    use rayon::prelude::*;
    assert!(dst.len() >= pixels * csb && c_in <= csb);
    let src = SendPtr(src);
    dst[..pixels * csb].par_chunks_mut(256 * csb).enumerate().for_each(|(ci, chunk)| {
        let s = src;
        for (i, px) in chunk.chunks_mut(csb).enumerate() {
            let p = ci * 256 + i;
            // SAFETY: p < pixels and c_in channels per pixel are readable (contract).
            let v = unsafe { std::slice::from_raw_parts(s.0.add(p * cs_in), c_in) };
            for (d, x) in px.iter_mut().zip(v) {
                *d = f32_to_bf16(*x);
            }
        }
    });
}
