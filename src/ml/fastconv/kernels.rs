//! Raw job description shared by the kernels, and the dispatch to them.
//!
//! The kernels read the input and write the output through raw pointers because one
//! convolution may read and write disjoint channel slices of the *same* buffer (RRDBNet's
//! dense-block concatenation) and because two threads write disjoint pixels of one output.
//! `mod.rs` validates every shape, offset and length before it builds a [`RawJob`]; the
//! kernels then only touch memory inside the ranges checked there.
// Unsafe is allowed here (and in the kernel files) only: raw pointers across threads and
// calls into `#[target_feature]` functions need it. The crate root denies it elsewhere.
#![allow(unsafe_code)]

use super::Backend;

/// One residual term of the epilogue: `out += weight * res[pixel][channel]`.
#[derive(Clone, Copy)]
pub(super) struct RawRes {
    /// Points at channel 0 of the residual's slice, pixel 0 of the padded buffer.
    pub ptr: *const f32,
    /// Pixel stride (allocated channels) of the residual buffer.
    pub cs: usize,
    pub weight: f32,
}

/// A validated convolution: all pointers point at pixel 0 (padded coordinates) of their
/// buffer, already offset by the channel slice start.
#[derive(Clone, Copy)]
pub(super) struct RawJob {
    pub inp: *const f32,
    pub cs_in: usize,
    pub c_in: usize,
    /// Offset in floats from an output position to the input pixel of tap `t` (ky*3+kx).
    pub tap_off: [isize; 9],
    pub out: *mut f32,
    pub cs_out: usize,
    /// bf16 shadow of the output, or null: per pixel `[hi | lo]`, pixel stride `2·cs_out`,
    /// offset like `out` (lo values `cs_out` after their hi values).
    pub out_bf: *mut u16,
    /// AMX inputs: offset in elements from a pixel's bf16 `hi` channels to its `lo` channels.
    pub in_lo: usize,
    pub res: [RawRes; 2],
    pub nres: usize,
    pub scale: f32,
    /// Padded row length in pixels (w + 2) and the logical width.
    pub row_px: usize,
    pub w: usize,
}

// SAFETY: a RawJob is only built by `Conv3x3::run`, which holds the borrows of every buffer
// it points into for the whole parallel section; threads write disjoint output pixels.
unsafe impl Send for RawJob {}
// SAFETY: as above; the job itself is read-only once built.
unsafe impl Sync for RawJob {}

/// One output-channel block of packed weights: `nv` vectors of 16 channels, `lanes` valid
/// lanes in the last vector. Weights are laid out `[tap 9][c_in][nv*16]`.
#[derive(Clone, Copy)]
pub(super) struct RawBlock {
    pub w: *const f32,
    /// Same layout in bf16 (pairs of input channels interleaved), when built.
    pub wbf: *const u16,
    /// Winograd-transformed weights `[36][c_in][nv*16]`, when built (`winograd.rs`).
    pub wino: *const f32,
    pub bias: *const f32,
    pub slope: *const f32,
    /// First output channel of the block.
    pub oc0: usize,
    pub nv: usize,
    pub lanes: usize,
}
// SAFETY: points into the owning Conv3x3's packed vectors, which outlive every call.
unsafe impl Send for RawBlock {}
// SAFETY: read-only.
unsafe impl Sync for RawBlock {}

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
            unsafe { super::avx512::run_range(job, blk, q0, q1) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Bf16 => {
            // SAFETY: contract above; the caller checked avx512f + avx512bf16 support.
            unsafe { super::avx512::run_range_bf16(job, blk, q0, q1) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            // SAFETY: contract above; the caller checked avx2 + fma support.
            unsafe { super::portable::run_range_avx2(job, blk, q0, q1) }
        }
        _ => {
            // SAFETY: the contract above; no CPU feature needed.
            unsafe { super::portable::run_range(job, blk, q0, q1) }
        }
    }
}

/// Runs output positions `q0..q1` of every output tile on the AMX kernel.
///
/// Contract (module-private): as [`run_range`], with `job` describing the bf16 input copy
/// built by `Conv3x3::run_amx` and AMX available (the backend was checked).
#[cfg(target_arch = "x86_64")]
pub(super) fn run_amx(job: &RawJob, wts: &super::amx::AmxWeights, q0: usize, q1: usize) {
    // SAFETY: contract above.
    unsafe { super::amx::run_range(job, wts, q0, q1) }
}

/// Runs the [`super::amx::BAND_ROWS`] interior rows from `y0` of the image at padded position
/// `img_base`, every output tile, on the AMX band kernel.
///
/// Contract (module-private): as [`run_amx`] for those rows' positions.
#[cfg(target_arch = "x86_64")]
pub(super) fn run_amx_band(job: &RawJob, wts: &super::amx::AmxWeights, img_base: usize, y0: usize) {
    // SAFETY: contract above.
    unsafe { super::amx::run_band(job, wts, img_base, y0) }
}

/// A read-only f32 pointer that may cross threads (the caller holds the borrow).
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub *const f32);
// SAFETY: only read, while the owning buffer is borrowed by the caller.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

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
                *d = super::f32_to_bf16(*x);
            }
        }
    });
}
