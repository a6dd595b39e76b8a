//! The raw job types every kernel reads, and the bf16 rounding they share: the bottom of the
//! fastconv module graph. It imports no other fastconv module; every kernel file imports it
//! (and, for the AMX kernels, `amx_tile.rs`), and no kernel file imports another.
//!
//! The kernels read the input and write the output through raw pointers because one
//! convolution may read and write disjoint channel slices of the *same* buffer (RRDBNet's
//! dense-block concatenation) and because two threads write disjoint pixels of one output.
//! `dispatch.rs` validates every shape, offset and length before it builds a [`RawJob`]; the
//! kernels then only touch memory inside the ranges checked there.
// Unsafe is needed for the `Send`/`Sync` impls of the raw-pointer jobs; the crate root denies
// it elsewhere.
#![allow(unsafe_code)]

/// One residual term of the epilogue: `out += weight * res[pixel][channel]`.
#[derive(Clone, Copy)]
pub(super) struct RawRes {
    /// Points at channel 0 of the residual's slice, pixel 0 of the padded buffer.
    pub ptr: *const f32,
    /// Pixel stride (allocated channels) of the residual buffer.
    pub cs: usize,
    pub weight: f32,
}

impl RawRes {
    /// An unused residual slot (the job's `nres` says how many slots are live).
    pub(super) const NONE: RawRes = RawRes { ptr: std::ptr::null(), cs: 0, weight: 0.0 };
}

/// A validated convolution: all pointers point at pixel 0 (padded coordinates) of their
/// buffer, already offset by the channel slice start.
///
/// # The job contract
/// Every kernel entry point is an `unsafe fn` whose `# Safety` section refers to this. A job
/// (with its packed weights) satisfies it when, for the whole kernel call:
/// * `inp` reads `c_in` elements (f32, or bf16 for the bf16 and AMX kernels) at each of
///   `n·(h+2)·row_px` padded pixels of pixel stride `cs_in`, plus the kernel's slack pixels
///   after the last (`layout::SLACK_PX` for f32 buffers, `amx::SLACK_PX` for bf16 copies and
///   shadows), and `tap_off[t]` is the offset of tap `t`'s neighbour in that stride;
/// * `out` (unless null) and `out_bf` (unless null) write the packed weights' output
///   channels at each interior pixel, pixel stride `cs_out`, with the input's geometry;
/// * each of the `nres` residuals reads those channels, with the output's geometry;
/// * the weights (a [`RawBlock`] or [`AmxWeights`]) were packed for `c_in` inputs, and are
///   live and unchanged;
/// * nothing else writes the memory read, or touches the memory written, except other calls
///   of the same job on disjoint output positions.
///
/// `dispatch.rs` builds jobs only from buffers whose shapes, offsets and residuals it
/// checked, held borrowed until every kernel thread has finished.
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

// SAFETY: a RawJob is only built by `dispatch.rs`, which holds the borrows of every buffer it
// points into for the whole parallel section; threads write disjoint output pixels.
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
    /// Winograd-transformed weights `[36][c_in][nv*16]`, when built (`pack.rs`).
    pub wino: *const f32,
    /// bf16 Winograd weights `[ξ][c_in/2][nv*16][2]` (`wino_bf16.rs`), when built.
    pub wino_bf: *const u16,
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

/// A validated convolution for the Winograd F(4×4, 3×3) path: pointers at pixel 0 (padded)
/// of their buffers, already offset to the channel slice (as [`RawJob`]).
#[derive(Clone, Copy)]
pub(super) struct WinoJob {
    pub inp: *const f32,
    pub cs_in: usize,
    pub c_in: usize,
    pub out: *mut f32,
    pub cs_out: usize,
    pub res: [RawRes; 2],
    pub nres: usize,
    pub scale: f32,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}
// SAFETY: built by `dispatch.rs`, which holds the borrows of every buffer it points into for
// the whole parallel section; threads write disjoint output pixels.
unsafe impl Send for WinoJob {}
// SAFETY: as above; read-only once built.
unsafe impl Sync for WinoJob {}

/// Geometry of one AMX Winograd call.
pub(super) struct WinoGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Input channels the weights use (the rest of each k-block is read as zero).
    pub c_in: usize,
}

#[cfg(target_arch = "x86_64")]
/// Weights packed for the AMX tile kernels (`pack.rs` builds them; `amx.rs` and `amx_wino.rs`
/// read them).
pub(super) struct AmxWeights {
    /// 16-channel output tiles, rounded up to an even count (the kernel runs them in pairs).
    pub tiles: usize,
    /// 32-channel input blocks per pass.
    pub kb: usize,
    /// Number of passes over the k-blocks (1 bf16, 2 or 3 split).
    pub passes: usize,
    /// Whether any pass reads the input's `lo` half.
    pub a_lo: bool,
    /// Per pass: (reads the input's lo half, uses the weights' lo half).
    pub plan: Vec<(bool, bool)>,
    /// `[tile][tap][passes·kb][16][32]` bf16.
    pub w: Vec<u16>,
    /// Padded to `tiles·16`.
    pub bias: Vec<f32>,
    pub slope: Vec<f32>,
    pub out_c: usize,
    /// Winograd F(2×2, 3×3) weights (`pack::amx_winograd`), when the conv may run that path.
    pub wino: Vec<u16>,
}

#[cfg(target_arch = "x86_64")]
impl AmxWeights {
    /// Channels per pixel of the bf16 input copy: `[hi | lo]` blocks of 32.
    pub(super) fn copy_channels(&self) -> usize {
        self.kb * 32 * if self.a_lo { 2 } else { 1 }
    }

    /// Offset in elements of the `lo` half in the conversion copy.
    pub(super) fn lo_offset(&self) -> usize {
        self.kb * 32
    }

    /// Whether the input is split into `hi | lo` halves (the split precision modes).
    pub(super) fn split(&self) -> bool {
        self.a_lo
    }

    /// The Winograd weights, if packed.
    pub(super) fn winograd(&self) -> Option<&[u16]> {
        (!self.wino.is_empty()).then_some(&self.wino[..])
    }

    /// Byte offset of k-block `k` (over all passes) in a pixel of the bf16 input copy: a
    /// pass that reads the split input's `lo` half starts `j.in_lo` elements on.
    pub(super) fn a_offset(&self, j: &RawJob, k: usize) -> usize {
        let (pass, kb) = (k / self.kb, k % self.kb);
        kb * 64 + if self.plan[pass].0 { j.in_lo * 2 } else { 0 }
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// A read-only f32 pointer that may cross threads (the caller holds the borrow).
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub *const f32);
// SAFETY: only read, while the owning buffer is borrowed by the caller.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Rounds to the nearest bf16 (ties to even).
pub(super) fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Widens a bf16 to f32 (exact).
pub(super) fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}
