//! Fast CPU 3×3 convolution for the Real-ESRGAN family .
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
//!   On AVX-512 BF16 without AMX, F(2×4, 3×3) with `V` and `U` in bf16 on `vdpbf16ps`
//!   (`wino_bf16.rs`): SRVGG's body ([`Backend::for_gan`]); RRDBNet keeps fp32
//!   ([`Backend::for_rrdb`]).
//!
//! Tolerances (see the tests): fp32 backends within `1e-5·Σ|w·x| + 1e-6` of an f64
//! reference per output; bf16 within `1.6e-2·Σ|w·x| + 1e-6`; AMX bf16x2 `4e-3`, bf16x3 `2e-5`;
//! Winograd `5e-5`, AMX Winograd `1.6e-2`.
//!
//! Files, by concern (a kernel file imports only the bottom modules `job.rs` and, for AMX,
//! `amx_tile.rs`; never another kernel file):
//!
//! * selection: `select.rs` ([`Backend`], [`Winograd`]: which kernel a conv runs, from the
//!   CPU's features and the operator's overrides from config or env);
//! * layout: `layout.rs` ([`Nhwc`] and the passes between convs), `pool.rs` ([`BufferPool`],
//!   the bf16 copy pool);
//! * packing: `pack.rs` (weights into the kernels' layouts), `conv.rs` ([`Conv3x3`]'s
//!   constructors and accessors);
//! * dispatch: `dispatch.rs` (validation, the raw job, work items, the kernel call);
//! * bottom: `job.rs` (raw job types, bf16 rounding), `amx_tile.rs` (AMX tile primitives),
//!   `error.rs` ([`FastConvError`]);
//! * kernels: `avx512.rs`, `portable.rs`, `winograd.rs`, `wino_bf16.rs`, `amx.rs`, `amx_wino.rs`;
//! * `pointwise.rs`: the 1×1 conv and the activations SPAN needs.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_tile;
#[cfg(target_arch = "x86_64")]
mod amx_wino;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod conv;
pub mod dense;
mod dispatch;
mod error;
mod job;
mod layout;
mod pack;
pub mod pointwise;
mod pool;
mod portable;
mod rows;
mod select;
mod winograd;
#[cfg(target_arch = "x86_64")]
mod wino_bf16;

pub use select::{
    Backend, Winograd, AMX_WINOGRAD_MIN_IN_C, AMX_WINOGRAD_MIN_OUT_C, AMX_WINOGRAD_MIN_TILES, WINOGRAD_MIN_IN_C, WINOGRAD_MIN_TILES,
};
pub use error::FastConvError;
pub use conv::{Activation, Conv3x3, Epilogue, Residual};
pub use layout::Nhwc;
pub use pool::BufferPool;
pub use select::{cpu_model, kernel_summary, overrides, set_overrides, CpuFeature, KernelOverrides};

/// A register-only AVX-512 FMA loop, 24 independent chains of `iters` FMAs each: the
/// ceiling `benches/fastconv.rs` reports next to the kernels. `None` without AVX-512F.
pub fn fma_peak_chains(iters: usize) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    return avx512::fma_chains(iters);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = iters;
        None
    }
}

#[cfg(test)]
mod tests;
