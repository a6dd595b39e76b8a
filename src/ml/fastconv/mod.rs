//! Fast CPU 3×3 convolution for the Real-ESRGAN family (issue #7).
//!
//! candle's CPU `conv2d` (im2col + GEMM on NCHW) reaches 18–29 GFLOP/s on Real-ESRGAN's
//! shapes. This module is a direct convolution on a CPU-friendly layout:
//!
//! * **Layout** — [`Nhwc`]: f32, NHWC, with a one-pixel zero border stored in the buffer
//!   (so the kernels need no bounds checks: in padded flat coordinates the 9 taps are
//!   constant offsets) and a *channel stride* larger than the channels a conv uses, so a
//!   conv can read a channel slice and write its output into a channel slice of a wider
//!   buffer (RRDBNet's dense-block concatenation without copies, see
//!   [`Conv3x3::forward_in_place`]).
//! * **Weights** — [`Conv3x3::new`] packs OIHW weights once into blocks of up to 64 output
//!   channels, `[tap][c_in][block channels]`.
//! * **Kernel** — register-blocked AVX-512 microkernel: `P` output pixels × `NV`·16 output
//!   channels held in 24 zmm accumulators (NV=4,P=6 / 3,8 / 2,12 / 1,16), broadcast input,
//!   FMA. An optional bf16 kernel (`vdpbf16ps`, f32 accumulation) and a portable kernel
//!   (compiled for the baseline target and for AVX2+FMA) share the packing and epilogue.
//! * **Epilogue** — fused into the single store: `out = scale · act(conv + bias) + Σ wᵢ·resᵢ`
//!   with `act` = none / LeakyReLU / PReLU (a per-channel negative slope), at most two
//!   residuals ([`Epilogue`]).
//! * **Threads** — output rows are cut into chunks of 144 positions per image, run on
//!   rayon's pool (both cores); batches (N>1) go through the same path.
//! * **Backend** — detected at run time: [`Backend::detect`] (fp32; `Conv3x3::new`, SD x4)
//!   or [`Backend::for_gan`] (the Real-ESRGAN trunk: plain AMX bf16 where available, with
//!   [`Backend::edge`] keeping the image-facing convs fp32). The env var
//!   `UPRES_FASTCONV=portable|avx2|avx512|bf16|amx|amx2|amx3` overrides both (an unsupported
//!   request falls back to the best supported fp32 backend).
//! * **AMX** — Intel AMX bf16 tile kernel (`amx.rs`, [`Backend::AmxBf16`] and the opt-in split
//!   precision modes), with an aligned bf16 shadow kept on [`Nhwc`] so chained AMX convs skip
//!   conversion, and [`Epilogue::bf16_only`] for activations only AMX convs read.
//! * **Winograd** — F(4×4, 3×3) path for the fp32 AVX-512 backend (`winograd.rs`,
//!   [`Winograd`]): 4× fewer multiply-adds, same API and epilogue; and F(2×2, 3×3) on the AMX
//!   tiles for the plain bf16 backend (`amx_wino.rs`): 2.25× fewer tile loads and
//!   `tdpbf16ps`. The Real-ESRGAN engine runs them where they pay ([`Winograd::Auto`]);
//!   [`Conv3x3::new`] only with `UPRES_FASTCONV_WINOGRAD=on`, or via [`Conv3x3::with_options`].
//!
//! Tolerances (see the tests): fp32 backends within `1e-5·Σ|w·x| + 1e-6` of an f64
//! reference per output; bf16 within `1.6e-2·Σ|w·x| + 1e-6`; AMX bf16x2 `4e-3`, bf16x3 `2e-5`;
//! Winograd `5e-5`, AMX Winograd `1.6e-2`.

#[cfg(target_arch = "x86_64")]
mod amx;
mod amx_wino;
mod avx512;
mod kernels;
pub mod pointwise;
mod portable;
mod select;
mod winograd;

pub use select::{cpu_model, kernel_summary, overrides, set_overrides, CpuFeature, KernelOverrides};

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use kernels::{RawBlock, RawJob, RawRes};

/// Extra pixels allocated after the last padded pixel: a tile may run up to 15 positions past
/// the last interior pixel (its results are discarded, its reads must stay in the buffer).
const SLACK_PX: usize = 24;
/// Widest output-channel block, in 16-channel vectors (4: 64 channels × 6 pixels per tile).
/// `UPRES_FASTCONV_MAXNV` overrides it (tuning).
const MAX_NV: usize = 4;
/// Output positions per parallel work item (a multiple of every tile width P).
const CHUNK: usize = 144;

/// Errors from shape or slice mismatches.
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum FastConvError {
    #[error("fastconv: {0}")]
    Shape(String),
}

fn shape_err<T>(msg: impl Into<String>) -> Result<T, FastConvError> {
    Err(FastConvError::Shape(msg.into()))
}

/// Which kernel runs the convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Plain Rust, any CPU.
    Portable,
    /// The portable kernel compiled with AVX2+FMA.
    Avx2,
    /// AVX-512F fp32 FMA microkernel.
    Avx512,
    /// AVX-512 BF16 dot products (`vdpbf16ps`), bf16 inputs and weights, f32 accumulation.
    Avx512Bf16,
    /// Intel AMX tiles (`tdpbf16ps`), bf16 inputs and weights, f32 accumulation.
    AmxBf16,
    /// AMX with each input split into two bf16 halves (`hi·w + lo·w`, weights bf16): the
    /// activations keep ~16 mantissa bits, twice the tile work of [`Backend::AmxBf16`].
    AmxBf16x2,
    /// AMX with each input and weight split into two bf16 halves (`hi·hi + lo·hi + hi·lo`):
    /// about 16 mantissa bits, three times the tile work of [`Backend::AmxBf16`].
    AmxBf16x3,
    /// AMX with bf16 inputs and each weight split into two bf16 halves (`hi·hi + hi·lo`):
    /// weights to ~16 mantissa bits, twice the tile work of [`Backend::AmxBf16`]; reads and
    /// writes the bf16 shadow like it (RRDBNet's first dense-block conv, see [`Backend::dense_in`]).
    AmxBf16W2,
}

impl Backend {
    /// The backend [`Conv3x3::new`] uses: `UPRES_FASTCONV` if set and supported, else
    /// [`Backend::best_fp32`] (the SD x4 UNet/VAE convolutions, whose parity tests are fp32).
    pub fn detect() -> Backend {
        Backend::from_env().unwrap_or_else(Backend::best_fp32)
    }

    /// The backend of a GAN's trunk convolutions: `UPRES_FASTCONV` if set and supported,
    /// else plain AMX bf16 where the CPU has it, else [`Backend::best_fp32`]. Paired with
    /// [`Backend::edge`] for the image-facing convolutions this holds the 45 dB parity bound
    /// (docs/fastconv.md has the per-model numbers).
    pub fn for_gan() -> Backend {
        Backend::from_env().unwrap_or_else(|| {
            if Backend::AmxBf16.supported() {
                Backend::AmxBf16
            } else {
                Backend::best_fp32()
            }
        })
    }

    /// The backend of RRDBNet's first conv in each dense block when its trunk runs on `self`:
    /// on plain AMX bf16, [`Backend::AmxBf16W2`]. Rounding that conv's weights to bf16 costs
    /// the most per multiply-add of all the trunk's convs (x4plus-anime on the bench image:
    /// 44.8 dB against fp32 with it plain, 45.3 dB with it split, for 2× the tile work of
    /// 8 % of the trunk's multiply-adds).
    pub fn dense_in(self) -> Backend {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::AmxBf16 => Backend::AmxBf16W2,
            b => b,
        }
    }

    /// The backend for a network's image-facing convolutions (the first, which reads the
    /// image, and those that close the trunk and upsample) when its trunk runs on `self`: plain bf16
    /// rounds activations to 8 mantissa bits, which costs 6–10 dB at the image ends on
    /// high-contrast input but little inside the residual trunk, so those layers stay fp32.
    pub fn edge(self) -> Backend {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::AmxBf16 | Backend::AmxBf16W2 | Backend::Avx512Bf16 => Backend::best_fp32(),
            b => b,
        }
    }
}

/// Whether a convolution uses a Winograd path: F(4×4, 3×3) on the fp32 AVX-512 backend,
/// F(2×2, 3×3) on the plain AMX bf16 backend; any other backend ignores it and runs its direct
/// kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Winograd {
    /// Direct convolution only.
    Off,
    /// Winograd where it pays ([`Winograd::pays`]: fp32 from [`WINOGRAD_MIN_IN_C`] input
    /// channels, AMX from [`AMX_WINOGRAD_MIN_IN_C`] in and [`AMX_WINOGRAD_MIN_OUT_C`] out; at
    /// run time from [`WINOGRAD_MIN_TILES`] / [`AMX_WINOGRAD_MIN_TILES`] tiles per image),
    /// direct elsewhere.
    Auto,
    /// Winograd for every shape (tests, measurements).
    Always,
}

/// Smallest input channel count for which [`Winograd::Auto`] picks Winograd. Measured on the
/// 128×128 bench shapes (2 cores, AVX-512): 3→64 runs at 0.6× the direct kernel, 8→64 at 1.3×,
/// 16→64 at 1.8×, 64→3 at 2.6× (the output channel count does not matter much).
pub const WINOGRAD_MIN_IN_C: usize = 8;

/// Smallest number of 4×4 output tiles per image for which [`Winograd::Auto`] runs
/// Winograd: the GEMM computes `P` (6–16) tiles at a time, so a map of one or two tiles wastes
/// most of it (4×4 maps measured 0.5–0.9× the direct kernel, 8×8 1.1–3×).
pub const WINOGRAD_MIN_TILES: usize = 4;

/// Smallest input channel count for which [`Winograd::Auto`] runs the AMX bf16 backend's
/// Winograd F(2×2, 3×3): one full 32-channel k-block.
pub const AMX_WINOGRAD_MIN_IN_C: usize = 32;

/// Smallest output channel count for which [`Winograd::Auto`] runs the AMX Winograd kernel.
/// Its input transform costs the same whatever the output width, so it pays from two output
/// tile pairs on (in-process A/B at 128²: 64→64 and 192→64 run in 0.65–0.85× the direct
/// kernel's time, 64→32 and 128→32 in 1.0–1.6×).
pub const AMX_WINOGRAD_MIN_OUT_C: usize = 64;

/// Smallest number of 2×2 output tiles per image for which [`Winograd::Auto`] runs the
/// AMX Winograd kernel: its register block computes 32 tiles at a time.
pub const AMX_WINOGRAD_MIN_TILES: usize = 32;

impl Winograd {
    /// `UPRES_FASTCONV_WINOGRAD`: `on`/`auto`/`1` → [`Winograd::Auto`], `always` →
    /// [`Winograd::Always`], anything else or unset → [`Winograd::Off`] (the default of
    /// [`Conv3x3::new`], i.e. the SD x4 convolutions).
    pub fn from_env() -> Winograd {
        Winograd::from_env_or(Winograd::Off)
    }

    /// As [`Winograd::from_env`], with `default` when the variable is unset or unknown and
    /// `off`/`0` forcing [`Winograd::Off`] (the Real-ESRGAN engine defaults to `Auto`).
    pub fn from_env_or(default: Winograd) -> Winograd {
        select::overrides().winograd.unwrap_or(default)
    }

    /// Whether a conv with `in_c → out_c` channels on `backend` runs Winograd under this mode.
    pub fn pays(self, backend: Backend, in_c: usize, out_c: usize) -> bool {
        let auto = match backend {
            Backend::Avx512 => in_c >= WINOGRAD_MIN_IN_C,
            #[cfg(target_arch = "x86_64")]
            Backend::AmxBf16 => in_c >= AMX_WINOGRAD_MIN_IN_C && out_c >= AMX_WINOGRAD_MIN_OUT_C,
            _ => return false,
        };
        match self {
            Winograd::Off => false,
            Winograd::Auto => auto,
            Winograd::Always => true,
        }
    }
}

/// An f32 NHWC activation with a stored one-pixel zero border and a channel stride `c`.
///
/// Pixel `(n, y, x)` (logical coordinates, `0 <= y < h`) lives at padded flat index
/// `n·(h+2)·(w+2) + (y+1)·(w+2) + (x+1)`; channel `k` of it at `index·c + k`. The border is
/// never written by the ops here and stays zero.
#[derive(Clone, Debug)]
pub struct Nhwc {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    buf: Vec<f32>,
    /// Start of the data inside `buf` (aligned to 64 bytes).
    base: usize,
    /// bf16 shadow of the same pixels and channel stride, written by the AMX bf16 kernel next
    /// to its f32 output so the next convolution reads bf16 without a conversion pass (empty
    /// until an AMX convolution writes this buffer). Plus slack for the tile overrun.
    bf16: Vec<u16>,
    /// Start of the shadow inside `bf16`, aligned to 64 bytes: with a pixel stride of a
    /// multiple of 32 channels every tile row is then one cache line, not two (measured up to
    /// 4× on L1-resident shapes, ~25 % on 64→64 at 128²).
    bf16_base: usize,
    /// Per channel: whether `bf16` holds the rounded f32 values. Any other write clears it.
    bf16_valid: Vec<bool>,
    /// Per channel: whether only the shadow is current because a plain AMX conv wrote it
    /// with [`Epilogue::bf16_only`] (empty: every channel's f32 values are current).
    f32_stale: Vec<bool>,
}

impl Nhwc {
    /// A zeroed activation of `n` images, `h×w` pixels, `c` channels (channel stride).
    pub fn zeros(n: usize, h: usize, w: usize, c: usize) -> Self {
        let len = (n * (h + 2) * (w + 2) + SLACK_PX) * c;
        let buf = vec![0f32; len + 16];
        let base = buf.as_ptr().align_offset(64).min(15);
        Nhwc { n, h, w, c, buf, base, bf16: Vec::new(), bf16_base: 0, bf16_valid: Vec::new(), f32_stale: Vec::new() }
    }

    /// Forgets what the buffer's shadow and f32 values held, for reuse by [`BufferPool`]: the
    /// interior is then arbitrary until written; the zero border and slack stay zero (no
    /// operation here writes them).
    fn reset_for_reuse(&mut self) {
        self.bf16_valid.clear();
        self.f32_stale.clear();
    }

    /// Bytes held (f32 data and bf16 shadow).
    fn bytes(&self) -> usize {
        self.buf.len() * 4 + self.bf16.len() * 2
    }

    /// `(n, h, w, c)`.
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.h, self.w, self.c)
    }

    fn row_px(&self) -> usize {
        self.w + 2
    }

    fn img_px(&self) -> usize {
        (self.h + 2) * (self.w + 2)
    }

    fn index(&self, n: usize, y: usize, x: usize) -> usize {
        n * self.img_px() + (y + 1) * self.row_px() + (x + 1)
    }

    fn data(&self) -> &[f32] {
        &self.buf[self.base..]
    }

    /// Mutable data; the bf16 shadow no longer matches it. Channels that only the shadow
    /// held are first widened back to f32 (exact), so no value is lost.
    fn data_mut(&mut self) -> &mut [f32] {
        self.widen_stale();
        if !self.bf16_valid.is_empty() {
            self.bf16_valid.clear();
        }
        &mut self.buf[self.base..]
    }

    /// Mutable data pointer for a kernel that writes channels `off..off+len` only; the shadow
    /// of those channels is marked stale (a kernel that also writes the shadow revalidates it)
    /// and their f32 values current (a `bf16_only` kernel marks them stale again).
    fn data_mut_ptr_for(&mut self, off: usize, len: usize) -> *mut f32 {
        if let Some(v) = self.bf16_valid.get_mut(off..off + len) {
            v.fill(false);
        }
        if let Some(v) = self.f32_stale.get_mut(off..off + len) {
            v.fill(false);
        }
        self.buf[self.base..].as_mut_ptr()
    }

    /// Whether the f32 values of channels `off..off+len` are current.
    fn f32_current(&self, off: usize, len: usize) -> bool {
        self.f32_stale.get(off..off + len).is_none_or(|v| !v.iter().any(|&s| s))
    }

    /// Panics unless the f32 values of channels `off..off+len` are current: a reader of f32
    /// data after a `bf16_only` write is a bug in the network code, not bad input.
    fn expect_f32(&self, off: usize, len: usize) {
        assert!(
            self.f32_current(off, len),
            "Nhwc channels {off}..{} hold only bf16 values (written with Epilogue::bf16_only)",
            off + len
        );
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn mark_f32_stale(&mut self, off: usize, len: usize) {
        if self.f32_stale.is_empty() {
            self.f32_stale = vec![false; self.c];
        }
        self.f32_stale[off..off + len].fill(true);
    }

    /// Writes the shadow's values of the stale channels back into the f32 data.
    fn widen_stale(&mut self) {
        if self.f32_current(0, self.c) {
            self.f32_stale.clear();
            return;
        }
        let c = self.c;
        let stale = std::mem::take(&mut self.f32_stale);
        let data = &mut self.buf[self.base..];
        for (px, bf) in data.chunks_exact_mut(c).zip(self.bf16[self.bf16_base..].chunks_exact(c)) {
            for k in (0..c).filter(|&k| stale[k]) {
                px[k] = f32::from_bits(u32::from(bf[k]) << 16);
            }
        }
    }

    /// The bf16 shadow, if it holds channels `off..off+len`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn bf16_if_valid(&self, off: usize, len: usize) -> Option<*const u16> {
        let valid = self.bf16_valid.get(off..off + len)?;
        valid.iter().all(|&v| v).then(|| self.bf16[self.bf16_base..].as_ptr())
    }

    /// The bf16 shadow: per pixel the `c` channels rounded to bf16, pixel stride `c`.
    /// Allocated zeroed on first use; its slack covers a 32-position tile overrun plus a
    /// 32-channel block read past the end.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn bf16_mut_ptr(&mut self) -> *mut u16 {
        if self.bf16.is_empty() {
            self.bf16 = vec![0u16; (self.n * self.img_px() + 64) * self.c + 64 + 32];
            self.bf16_base = self.bf16.as_ptr().align_offset(64).min(31);
        }
        if self.bf16_valid.is_empty() {
            self.bf16_valid = vec![false; self.c];
        }
        self.bf16[self.bf16_base..].as_mut_ptr()
    }

    /// Rounds the f32 values of the channels in `off..off+len` whose shadow is not current
    /// into the shadow (all pixels, so the zero border carries over).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn fill_shadow(&mut self, off: usize, len: usize) {
        self.bf16_mut_ptr();
        let c = self.c;
        let todo: Vec<usize> = (off..off + len).filter(|&k| !self.bf16_valid[k]).collect();
        if todo.is_empty() {
            return;
        }
        let data = &self.buf[self.base..];
        for (px, bf) in data.chunks_exact(c).zip(self.bf16[self.bf16_base..].chunks_exact_mut(c)) {
            for &k in &todo {
                bf[k] = f32_to_bf16(px[k]);
            }
        }
        self.mark_bf16_valid(off, len);
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn mark_bf16_valid(&mut self, off: usize, len: usize) {
        if let Some(v) = self.bf16_valid.get_mut(off..off + len) {
            v.fill(true);
        }
    }

    /// The channels of pixel `(n, y, x)`.
    pub fn pixel(&self, n: usize, y: usize, x: usize) -> &[f32] {
        self.expect_f32(0, self.c);
        self.px(n, y, x)
    }

    /// [`Nhwc::pixel`] for callers that checked the channels they read.
    fn px(&self, n: usize, y: usize, x: usize) -> &[f32] {
        let i = self.index(n, y, x) * self.c;
        &self.data()[i..i + self.c]
    }

    /// Mutable channels of pixel `(n, y, x)`.
    pub fn pixel_mut(&mut self, n: usize, y: usize, x: usize) -> &mut [f32] {
        let i = self.index(n, y, x) * self.c;
        let c = self.c;
        &mut self.data_mut()[i..i + c]
    }

    /// Interior pixels of row `y` of image `n`: `w` pixels of `c` channels.
    fn row(&self, n: usize, y: usize) -> &[f32] {
        let i = self.index(n, y, 0) * self.c;
        &self.data()[i..i + self.w * self.c]
    }

    /// The interior rows of every image as `(image, y, w·c values)`, on rayon's pool: the
    /// layout passes between convolutions (resizes, residuals, format changes) run on both
    /// cores like the convolutions, instead of leaving one idle.
    fn par_rows_mut(&mut self) -> impl ParallelIterator<Item = (usize, usize, &mut [f32])> {
        let (h, w, c, row_px) = (self.h, self.w, self.c, self.row_px());
        let len = self.n * self.img_px() * c;
        self.data_mut()[..len].par_chunks_mut((row_px * c).max(1)).enumerate().filter_map(move |(r, px)| {
            let (ni, yy) = (r / (h + 2), r % (h + 2));
            (yy >= 1 && yy <= h).then(|| (ni, yy - 1, &mut px[c..(w + 1) * c]))
        })
    }

    /// Builds from NCHW data (`data.len() == n·c·h·w`); the channel stride is `c + extra_c`.
    pub fn from_nchw(data: &[f32], n: usize, c: usize, h: usize, w: usize, extra_c: usize) -> Result<Self, FastConvError> {
        if data.len() != n * c * h * w {
            return shape_err(format!("from_nchw: {} values for {n}x{c}x{h}x{w}", data.len()));
        }
        let mut t = Nhwc::zeros(n, h, w, c + extra_c);
        let cs = t.c;
        t.par_rows_mut().for_each(|(ni, y, row)| {
            for (x, px) in row.chunks_exact_mut(cs).enumerate() {
                for (k, v) in px[..c].iter_mut().enumerate() {
                    *v = data[((ni * c + k) * h + y) * w + x];
                }
            }
        });
        Ok(t)
    }

    /// Channels `c_off..c_off+c_len` as NCHW data.
    pub fn to_nchw(&self, c_off: usize, c_len: usize) -> Vec<f32> {
        assert!(c_off + c_len <= self.c, "channel slice out of range");
        self.expect_f32(c_off, c_len);
        let (h, w, c) = (self.h, self.w, self.c);
        let mut out = vec![0f32; self.n * c_len * h * w];
        // One output row (image, channel, y) per item.
        out.par_chunks_mut(w.max(1)).enumerate().for_each(|(r, dst)| {
            let (ni, k, y) = (r / (c_len * h), (r / h) % c_len, r % h);
            let src = self.row(ni, y);
            for (x, d) in dst.iter_mut().enumerate() {
                *d = src[x * c + c_off + k];
            }
        });
        out
    }

    /// From a candle NCHW tensor (any float dtype); channel stride `c + extra_c`.
    pub fn from_tensor(t: &Tensor, extra_c: usize) -> candle_core::Result<Self> {
        let (n, c, h, w) = t.dims4()?;
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Nhwc::from_nchw(&v, n, c, h, w, extra_c).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Channels `c_off..c_off+c_len` as a candle NCHW f32 tensor.
    pub fn to_tensor(&self, c_off: usize, c_len: usize, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.to_nchw(c_off, c_len), (self.n, c_len, self.h, self.w), device)
    }

    /// Nearest-neighbour upsampling by an integer `factor` of channels `c_off..c_off+c_len`.
    pub fn upsample_nearest(&self, c_off: usize, c_len: usize, factor: usize) -> Nhwc {
        let mut out = Nhwc::zeros(self.n, self.h * factor, self.w * factor, c_len);
        self.upsample_nearest_into(c_off, c_len, factor, &mut out);
        out
    }

    /// [`Nhwc::upsample_nearest`] into `out` (`factor`× this size, `c_len` channels), every
    /// interior value overwritten.
    pub fn upsample_nearest_into(&self, c_off: usize, c_len: usize, factor: usize, out: &mut Nhwc) {
        assert!(c_off + c_len <= self.c, "channel slice out of range");
        assert!(out.shape() == (self.n, self.h * factor, self.w * factor, c_len), "upsample_nearest_into: shape mismatch");
        self.expect_f32(c_off, c_len);
        let c = self.c;
        out.par_rows_mut().for_each(|(ni, y, dst)| {
            let src = self.row(ni, y / factor);
            for (x, d) in dst.chunks_exact_mut(c_len).enumerate() {
                let s = (x / factor) * c + c_off;
                d.copy_from_slice(&src[s..s + c_len]);
            }
        });
    }

    /// PyTorch `pixel_shuffle(r)` of channels `c_off..c_off+c_len` (`c_len = C·r²`): output
    /// channel `k`, sub-pixel `(i, j)` comes from input channel `k·r² + i·r + j`.
    pub fn pixel_shuffle(&self, c_off: usize, c_len: usize, r: usize) -> Nhwc {
        assert!(c_off + c_len <= self.c && c_len.is_multiple_of(r * r), "bad pixel_shuffle slice");
        self.expect_f32(c_off, c_len);
        let co = c_len / (r * r);
        let mut out = Nhwc::zeros(self.n, self.h * r, self.w * r, co);
        let c = self.c;
        out.par_rows_mut().for_each(|(ni, y, dst)| {
            let src = self.row(ni, y / r);
            for (x, d) in dst.chunks_exact_mut(co).enumerate() {
                let s = (x / r) * c + c_off + (y % r) * r + (x % r);
                for (k, v) in d.iter_mut().enumerate() {
                    *v = src[s + k * r * r];
                }
            }
        });
        out
    }

    /// NCHW data of `pixel_shuffle(r)` of channels `c_off..c_off+c_len`, plus, when given,
    /// the nearest-upsampled `skip` (its first `c_len / r²` channels, `skip` at this buffer's
    /// size): SRVGGNetCompact's tail in one pass, not three over fresh buffers.
    pub fn pixel_shuffle_nchw(&self, c_off: usize, c_len: usize, r: usize, skip: Option<&Nhwc>) -> Vec<f32> {
        assert!(c_off + c_len <= self.c && r >= 1 && c_len.is_multiple_of(r * r), "bad pixel_shuffle slice");
        self.expect_f32(c_off, c_len);
        let co = c_len / (r * r);
        if let Some(s) = skip {
            assert!((s.n, s.h, s.w) == (self.n, self.h, self.w) && s.c >= co, "pixel_shuffle_nchw: skip shape mismatch");
            s.expect_f32(0, co);
        }
        let (oh, ow, c) = (self.h * r, self.w * r, self.c);
        let mut out = vec![0f32; self.n * co * oh * ow];
        // One output row (image, channel, y) per item.
        out.par_chunks_mut(ow.max(1)).enumerate().for_each(|(i, dst)| {
            let (ni, k, y) = (i / (co * oh), (i / oh) % co, i % oh);
            // Each input pixel fills `r` consecutive outputs: channels base..base+r.
            let base = c_off + k * r * r + (y % r) * r;
            let src = self.row(ni, y / r);
            let skip = skip.map(|s| (s.row(ni, y / r), s.c, k));
            // The usual factors as constants: a runtime-length copy of `r` floats per pixel
            // compiles to a `memcpy` call each, which cost ~2.5 % of SRVGG's forward at 128².
            match r {
                4 => shuffle_row::<4>(dst, src, c, base, skip),
                2 => shuffle_row::<2>(dst, src, c, base, skip),
                3 => shuffle_row::<3>(dst, src, c, base, skip),
                _ => shuffle_row_dyn(dst, src, c, base, r, skip),
            }
        });
        out
    }

    /// `f` on channels `c_off..c_off+len` in place, row-parallel: activations that no conv
    /// epilogue fuses (SPAN's Swish, with [`pointwise::swish`]).
    pub fn map_channels(&mut self, c_off: usize, len: usize, f: impl Fn(f32) -> f32 + Sync) {
        assert!(c_off + len <= self.c, "map_channels: channel slice out of range");
        let c = self.c;
        self.par_rows_mut().for_each(|(_, _, row)| {
            for px in row.chunks_exact_mut(c) {
                px[c_off..c_off + len].iter_mut().for_each(|v| *v = f(*v));
            }
        });
    }

    /// `op(self value, other value)` over channel slices of the same n, h, w, row-parallel
    /// (SPAN's attention product in one pass).
    pub fn combine(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize, op: impl Fn(&mut f32, f32) + Sync) {
        self.combine_nearest(c_off, other, o_off, len, 1, op);
    }

    /// `self[.., c_off..c_off+len] += other[.., o_off..o_off+len]` (same n, h, w).
    pub fn add_assign(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize) {
        assert!((self.n, self.h, self.w) == (other.n, other.h, other.w), "add_assign: shape mismatch");
        self.combine_nearest(c_off, other, o_off, len, 1, |d, s| *d += s);
    }

    /// `self[.., c_off..c_off+len] = other[.., o_off..o_off+len]` (same n, h, w).
    pub fn copy_channels(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize) {
        assert!((self.n, self.h, self.w) == (other.n, other.h, other.w), "copy_channels: shape mismatch");
        self.combine_nearest(c_off, other, o_off, len, 1, |d, s| *d = s);
    }

    /// `self[.., c_off..c_off+len] += upsample_nearest(other, factor)[.., o_off..o_off+len]`
    /// without building the upsampled copy (`self` is `factor`× `other`'s height and width).
    pub fn add_nearest(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize, factor: usize) {
        self.combine_nearest(c_off, other, o_off, len, factor, |d, s| *d += s);
    }

    /// `op(self value, nearest-upsampled other value)` over a channel slice, row-parallel.
    fn combine_nearest(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize, factor: usize, op: impl Fn(&mut f32, f32) + Sync) {
        assert!(
            factor >= 1 && (self.n, self.h, self.w) == (other.n, other.h * factor, other.w * factor),
            "add_assign/copy_channels/add_nearest: shape mismatch"
        );
        assert!(c_off + len <= self.c && o_off + len <= other.c, "add_assign/copy_channels/add_nearest: channel slice out of range");
        other.expect_f32(o_off, len);
        let (c, oc) = (self.c, other.c);
        self.par_rows_mut().for_each(|(ni, y, dst)| {
            let src = other.row(ni, y / factor);
            for (x, d) in dst.chunks_exact_mut(c).enumerate() {
                let s = (x / factor) * oc + o_off;
                for (d, &s) in d[c_off..c_off + len].iter_mut().zip(&src[s..s + len]) {
                    op(d, s);
                }
            }
        });
    }
}

/// Activation buffers a network keeps between forwards, so that a burst of tiles does not
/// page-fault and zero a few hundred MB per forward (x4plus at 128²: ~62 k faults, measured
/// with `perf stat -e page-faults`). A taken buffer's interior is arbitrary: the network
/// writes every channel it reads. Holds at most [`BufferPool::CAP_BYTES`]; the engine empties
/// it when its queue drains ([`BufferPool::clear`]), so an idle model holds none.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<Vec<Nhwc>>,
}

impl BufferPool {
    /// Most bytes kept between forwards (x4plus, one 128² tile, keeps ~260 MB).
    pub const CAP_BYTES: usize = 1 << 30;

    /// A buffer of this shape: a kept one (interior arbitrary, shadow forgotten), else a new
    /// zeroed one.
    pub fn take(&self, n: usize, h: usize, w: usize, c: usize) -> Nhwc {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|b| b.shape() == (n, h, w, c)) {
            Some(i) => {
                let mut b = free.swap_remove(i);
                b.reset_for_reuse();
                b
            }
            None => Nhwc::zeros(n, h, w, c),
        }
    }

    /// Keeps `b` for a later [`BufferPool::take`], unless that would pass the cap.
    pub fn give(&self, b: Nhwc) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.iter().map(Nhwc::bytes).sum::<usize>() + b.bytes() <= Self::CAP_BYTES {
            free.push(b);
        }
    }

    /// Drops every kept buffer.
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).iter().map(Nhwc::bytes).sum()
    }
}

/// Activation fused into the convolution's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    None,
    /// `x < 0 → slope·x` (Real-ESRGAN uses 0.2).
    LeakyRelu(f32),
    /// Per-output-channel slopes (`len == out_c`).
    PRelu(Vec<f32>),
}

/// One residual term: `out += weight · src[.., c_off..c_off+out_c]`. `src` has the output's
/// `n, h, w`.
#[derive(Clone, Copy)]
pub struct Residual<'a> {
    pub src: &'a Nhwc,
    pub c_off: usize,
    pub weight: f32,
}

/// The fused output pass: `out = scale · act(conv + bias) + Σ residuals`.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: f32,
    /// At most two.
    pub residuals: &'a [Residual<'a>],
    /// For a plain AMX conv: write only the output's bf16 shadow, not its f32 values (a
    /// third of the output traffic), for activations that only plain AMX convs read. Those
    /// channels' f32 values are then stale: f32 readers panic, a conv on another backend
    /// fails, and a mutable access widens them back from the shadow. Other backends ignore
    /// it and write f32 as usual.
    pub bf16_only: bool,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue { scale: 1.0, residuals: &[], bf16_only: false }
    }
}

struct Block {
    w: Vec<f32>,
    wbf: Vec<u16>,
    /// Winograd-transformed weights `[36][c_in][nv*16]` (empty unless the conv uses Winograd).
    wino: Vec<f32>,
    bias: Vec<f32>,
    slope: Vec<f32>,
    oc0: usize,
    nv: usize,
    lanes: usize,
}

/// A 3×3, stride 1, pad 1 convolution with pre-packed weights and a fused activation.
pub struct Conv3x3 {
    in_c: usize,
    out_c: usize,
    blocks: Vec<Block>,
    /// Packed for the AMX backends (then `blocks` is empty).
    #[cfg(target_arch = "x86_64")]
    amx: Option<amx::AmxWeights>,
    backend: Backend,
    /// Winograd weights are packed (`Winograd::pays` at construction).
    winograd: bool,
    /// The mode asked for: `Auto` also keeps maps of fewer than [`WINOGRAD_MIN_TILES`] tiles
    /// on the direct kernel.
    wino_mode: Winograd,
}

/// Pool of bf16 input copies, reused across calls (bounded by the number of concurrent
/// bf16 convolutions).
static BF16_POOL: Mutex<Vec<Vec<u16>>> = Mutex::new(Vec::new());

pub(super) fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

impl Conv3x3 {
    /// Packs `weight` (OIHW, `out_c·in_c·9` values) and `bias` (`out_c`, or none) for the
    /// backend from [`Backend::detect`] and the Winograd mode from [`Winograd::from_env`].
    pub fn new(weight: &[f32], bias: Option<&[f32]>, in_c: usize, out_c: usize, act: Activation) -> Result<Self, FastConvError> {
        Self::with_options(weight, bias, in_c, out_c, act, Backend::detect(), Winograd::from_env())
    }

    /// As [`Conv3x3::new`] with an explicit backend (an unsupported one falls back to
    /// [`Backend::best_fp32`]) and the direct kernel (no Winograd).
    pub fn with_backend(
        weight: &[f32],
        bias: Option<&[f32]>,
        in_c: usize,
        out_c: usize,
        act: Activation,
        backend: Backend,
    ) -> Result<Self, FastConvError> {
        Self::with_options(weight, bias, in_c, out_c, act, backend, Winograd::Off)
    }

    /// As [`Conv3x3::with_backend`] with an explicit Winograd mode: the conv runs Winograd
    /// Winograd (F(4×4, 3×3) fp32 or F(2×2, 3×3) AMX) when `winograd.pays(backend, in_c,
    /// out_c)`, else the backend's direct kernel. See [`Conv3x3::uses_winograd`].
    pub fn with_options(
        weight: &[f32],
        bias: Option<&[f32]>,
        in_c: usize,
        out_c: usize,
        act: Activation,
        backend: Backend,
        winograd: Winograd,
    ) -> Result<Self, FastConvError> {
        let backend = if backend.supported() { backend } else { Backend::best_fp32() };
        let use_wino = winograd.pays(backend, in_c, out_c);
        if in_c == 0 || out_c == 0 || weight.len() != out_c * in_c * 9 {
            return shape_err(format!("weight: {} values for {out_c}x{in_c}x3x3", weight.len()));
        }
        if bias.is_some_and(|b| b.len() != out_c) {
            return shape_err("bias length != out_c");
        }
        let slope_of = |o: usize| match &act {
            Activation::None => Ok(1.0),
            Activation::LeakyRelu(s) => Ok(*s),
            Activation::PRelu(v) if v.len() == out_c => Ok(v[o]),
            Activation::PRelu(v) => shape_err(format!("PReLU: {} slopes for {out_c} channels", v.len())),
        };
        #[cfg(target_arch = "x86_64")]
        if matches!(backend, Backend::AmxBf16 | Backend::AmxBf16x2 | Backend::AmxBf16x3 | Backend::AmxBf16W2) {
            let bias_v: Vec<f32> = (0..out_c).map(|o| bias.map_or(0.0, |b| b[o])).collect();
            let slope: Vec<f32> = (0..out_c).map(slope_of).collect::<Result<_, _>>()?;
            // Passes: (input half, weight half), false = hi, true = lo.
            let plan: &[(bool, bool)] = match backend {
                Backend::AmxBf16x3 => &[(false, false), (true, false), (false, true)],
                Backend::AmxBf16x2 => &[(false, false), (true, false)],
                Backend::AmxBf16W2 => &[(false, false), (false, true)],
                _ => &[(false, false)],
            };
            let mut wts = amx::AmxWeights::pack(weight, &bias_v, &slope, in_c, out_c, plan);
            if use_wino {
                wts = wts.with_winograd(weight, in_c);
            }
            return Ok(Conv3x3 {
                in_c,
                out_c,
                blocks: Vec::new(),
                amx: Some(wts),
                backend,
                winograd: use_wino,
                wino_mode: winograd,
            });
        }
        // Split the 16-channel vectors into blocks of at most MAX_NV, as evenly as possible.
        let max_nv = std::env::var("UPRES_FASTCONV_MAXNV").ok().and_then(|v| v.parse().ok()).unwrap_or(MAX_NV).clamp(1, 4);
        let nvt = out_c.div_ceil(16);
        let nblocks = nvt.div_ceil(max_nv);
        let mut blocks = Vec::with_capacity(nblocks);
        let mut v0 = 0;
        for bi in 0..nblocks {
            let nv = (nvt - v0) / (nblocks - bi) + usize::from((nvt - v0) % (nblocks - bi) != 0);
            let oc0 = v0 * 16;
            let width = nv * 16;
            let valid = (out_c - oc0).min(width);
            let lanes = valid - (nv - 1) * 16;
            let mut w = vec![0f32; 9 * in_c * width];
            let mut bias_v = vec![0f32; width];
            let mut slope = vec![1f32; width];
            for j in 0..valid {
                let o = oc0 + j;
                bias_v[j] = bias.map_or(0.0, |b| b[o]);
                slope[j] = slope_of(o)?;
                for i in 0..in_c {
                    for t in 0..9 {
                        w[(t * in_c + i) * width + j] = weight[(o * in_c + i) * 9 + t];
                    }
                }
            }
            let mut wbf = Vec::new();
            if backend == Backend::Avx512Bf16 {
                let pairs = in_c.div_ceil(2);
                wbf = vec![0u16; 9 * pairs * width * 2];
                for t in 0..9 {
                    for i in 0..in_c {
                        for j in 0..width {
                            wbf[((t * pairs + i / 2) * width + j) * 2 + i % 2] = f32_to_bf16(w[(t * in_c + i) * width + j]);
                        }
                    }
                }
            }
            let wino = if use_wino { winograd::pack(weight, in_c, oc0, width, valid) } else { Vec::new() };
            blocks.push(Block { w, wbf, wino, bias: bias_v, slope, oc0, nv, lanes });
            v0 += nv;
        }
        Ok(Conv3x3 {
            in_c,
            out_c,
            blocks,
            #[cfg(target_arch = "x86_64")]
            amx: None,
            backend,
            winograd: use_wino,
            wino_mode: winograd,
        })
    }

    /// From candle tensors: weight `(out_c, in_c, 3, 3)`, bias `(out_c)`.
    pub fn from_tensors(weight: &Tensor, bias: Option<&Tensor>, act: Activation) -> candle_core::Result<Self> {
        let (o, i, kh, kw) = weight.dims4()?;
        if (kh, kw) != (3, 3) {
            candle_core::bail!("fastconv: kernel {kh}x{kw}, want 3x3");
        }
        let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b = match bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        Conv3x3::new(&w, b.as_deref(), i, o, act).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Drop-in for candle NCHW code: converts `x` (N, in_c, H, W) to [`Nhwc`], convolves
    /// with the fused bias/activation, and converts back to an f32 NCHW tensor on `x`'s
    /// device. The conversions cost two copies; keep activations in [`Nhwc`] across layers
    /// to avoid them.
    pub fn forward_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let input = Nhwc::from_tensor(x, 0)?;
        let mut out = Nhwc::zeros(n, h, w, self.out_c);
        self.forward(&input, 0, &mut out, 0, &Epilogue::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        out.to_tensor(0, self.out_c, x.device())
    }

    pub fn in_c(&self) -> usize {
        self.in_c
    }

    pub fn out_c(&self) -> usize {
        self.out_c
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether [`Conv3x3::forward`] runs a Winograd kernel (under [`Winograd::Auto`], images
    /// of fewer than [`WINOGRAD_MIN_TILES`] 4×4 tiles, or [`AMX_WINOGRAD_MIN_TILES`] 2×2 tiles
    /// on AMX, still run the direct kernel).
    pub fn uses_winograd(&self) -> bool {
        self.winograd
    }

    /// Floating-point operations of one forward over `n×h×w` (2 per multiply-add).
    pub fn flops(&self, n: usize, h: usize, w: usize) -> f64 {
        2.0 * 9.0 * (self.in_c * self.out_c * n * h * w) as f64
    }

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
        self.blocks
            .iter()
            .map(|b| RawBlock {
                w: b.w.as_ptr(),
                wbf: b.wbf.as_ptr(),
                wino: b.wino.as_ptr(),
                bias: b.bias.as_ptr(),
                slope: b.slope.as_ptr(),
                oc0: b.oc0,
                nv: b.nv,
                lanes: b.lanes,
            })
            .collect()
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
        let mut rr = [RawRes { ptr: std::ptr::null(), cs: 0, weight: 0.0 }; 2];
        rr[..res.len()].copy_from_slice(res);
        #[cfg(target_arch = "x86_64")]
        if let Some(wts) = &self.amx {
            return self.run_amx(wts, geom, (inp, cs_in, shadow_in), out_ptr, cs_out, rr, res.len(), scale, shadow_out);
        }
        // Per image, so that a batch runs the kernel each of its images would run alone.
        let tiles = h.div_ceil(4) * w.div_ceil(4);
        if self.winograd && (self.wino_mode == Winograd::Always || tiles >= WINOGRAD_MIN_TILES) {
            let job = winograd::WinoJob {
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
            scratch = BF16_POOL.lock().map(|mut p| p.pop()).ok().flatten().unwrap_or_default();
            scratch.clear();
            let pixels = n * (h + 2) * row_px;
            scratch.resize((pixels + SLACK_PX) * csb, 0);
            kernels::to_bf16(inp, cs_in, self.in_c, pixels, &mut scratch, csb);
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
                kernels::run_range(backend, &job, b, q0, q1);
            }
        };
        let items = n * per_img;
        if items == 1 {
            work(0);
        } else {
            (0..items).into_par_iter().for_each(work);
        }
        if bf16 {
            if let Ok(mut p) = BF16_POOL.lock() {
                p.push(scratch);
            }
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
        wts: &amx::AmxWeights,
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
                scratch = BF16_POOL.lock().map(|mut p| p.pop()).ok().flatten().unwrap_or_default();
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
            amx_wino::run(&job, wts, wino, &amx_wino::WinoGeom { n, h, w, c_in: self.in_c });
        } else {
            self.run_amx_direct(&job, wts, geom);
        }
        if !scratch.is_empty() {
            if let Ok(mut p) = BF16_POOL.lock() {
                p.push(scratch);
            }
        }
    }

    /// The direct AMX kernel over every interior position: 256-position chunks × images.
    #[cfg(target_arch = "x86_64")]
    fn run_amx_direct(&self, job: &RawJob, wts: &amx::AmxWeights, (n, h, w): (usize, usize, usize)) {
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
                kernels::run_amx_band(job, wts, base, i * amx::BAND_ROWS);
            } else {
                let q0 = base + first + (i - bands) * amx::CHUNK;
                let q1 = (q0 + amx::CHUNK).min(base + end);
                kernels::run_amx(job, wts, q0, q1);
            }
        };
        (0..n * per_img).into_par_iter().for_each(work);
    }
}

/// Whether the AMX band kernel suits maps `w` wide: its 16-column tiles waste at most 1/9.
fn amx_bands_pay(w: usize) -> bool {
    w.div_ceil(16) * 16 * 8 <= w * 9
}

/// One output row of [`Nhwc::pixel_shuffle_nchw`] for a constant factor `R`: pixel `x` of `src`
/// (`c` channels apart) fills `dst[R·x..R·x+R]` from its channels `base..base+R`, plus the
/// skip pixel's channel `k` when given.
fn shuffle_row<const R: usize>(dst: &mut [f32], src: &[f32], c: usize, base: usize, skip: Option<(&[f32], usize, usize)>) {
    let pixels = dst.chunks_exact_mut(R).zip(src.chunks_exact(c));
    match skip {
        Some((s, sc, k)) => {
            for ((d, px), sp) in pixels.zip(s.chunks_exact(sc)) {
                let v: &[f32; R] = px[base..base + R].try_into().expect("R channels");
                for (d, v) in d.iter_mut().zip(v) {
                    *d = v + sp[k];
                }
            }
        }
        None => {
            for (d, px) in pixels {
                let v: &[f32; R] = px[base..base + R].try_into().expect("R channels");
                d.copy_from_slice(v);
            }
        }
    }
}

/// [`shuffle_row`] for any factor.
fn shuffle_row_dyn(dst: &mut [f32], src: &[f32], c: usize, base: usize, r: usize, skip: Option<(&[f32], usize, usize)>) {
    for (x, (d, px)) in dst.chunks_exact_mut(r).zip(src.chunks_exact(c)).enumerate() {
        let add = skip.map_or(0.0, |(s, sc, k)| s[x * sc + k]);
        for (d, v) in d.iter_mut().zip(&px[base..base + r]) {
            *d = v + add;
        }
    }
}

#[cfg(test)]
mod tests;
