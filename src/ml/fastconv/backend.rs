//! Which kernel runs a convolution: the [`Backend`] families and the policies that pick one
//! per network layer ([`Backend::detect`], [`Backend::for_gan`], [`Backend::edge`],
//! [`Backend::dense_in`]), and when a conv runs Winograd ([`Winograd`]). What the CPU can run
//! and what the operator forced live in `select.rs`.

use super::select;

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
