//! Which kernel runs a convolution: the [`Backend`] families, the policies that pick one per
//! network layer ([`Backend::detect`], [`Backend::for_gan`], [`Backend::edge`],
//! [`Backend::dense_in`]) and when a conv runs Winograd ([`Winograd`]); the CPU's features as
//! the selector sees them, and the operator's overrides.
//!
//! Every backend asks [`CpuFeature::usable`], never the CPU directly, so a feature can be
//! hidden (`kernels.hide_cpu_features`, env alias `UPRES_CPU_HIDE=amx,avx512bf16,…`): the
//! whole suite then runs the paths of a CPU without it (an Intel host proves the AMD and ARM
//! paths, CI runs the kernel tests once natively and once with AMX hidden).
//!
//! Overrides come from the config through [`set_overrides`] once at start-up; processes that
//! never call it (tests, benches) read the env aliases (`UPRES_FASTCONV`,
//! `UPRES_FASTCONV_WINOGRAD`, `UPRES_CPU_HIDE`) on first use. A forced backend the CPU cannot
//! run is refused by [`set_overrides`]; from the environment alone it falls back to the best
//! supported fp32 backend with a warning.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

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

    /// The backend of a GAN's trunk convolutions (SRVGGNetCompact's body; RRDBNet's trunk uses
    /// [`Backend::for_rrdb`]): `UPRES_FASTCONV` if set and supported, else plain AMX bf16 where
    /// the CPU has it, else AVX-512 BF16 (with its Winograd F(2×4)), else
    /// [`Backend::best_fp32`]. Paired with
    /// [`Backend::edge`] for the image-facing convolutions this holds the 45 dB parity bound
    /// (docs/fastconv.md has the per-model numbers).
    pub fn for_gan() -> Backend {
        Backend::from_env().unwrap_or_else(|| {
            if Backend::AmxBf16.supported() {
                Backend::AmxBf16
            } else if Backend::Avx512Bf16.supported() {
                Backend::Avx512Bf16
            } else {
                Backend::best_fp32()
            }
        })
    }

    /// The backend of RRDBNet's residual trunk: `UPRES_FASTCONV` if set and supported, else
    /// plain AMX bf16 where the CPU has it, else [`Backend::best_fp32`]. Unlike
    /// [`Backend::for_gan`] it never picks [`Backend::Avx512Bf16`]: its Winograd F(2×4) in bf16
    /// costs x4plus-anime 38 dB against fp32 on the bench image (345 chained convs compound the
    /// rounding that SRVGG's 16 absorb), and its direct kernel is slower than fp32 Winograd
    /// F(4×4) (docs/fastconv.md, "Winograd in bf16 without AMX").
    pub fn for_rrdb() -> Backend {
        Backend::from_env().unwrap_or_else(|| if Backend::AmxBf16.supported() { Backend::AmxBf16 } else { Backend::best_fp32() })
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

/// Output rows per tile of the AVX-512 BF16 Winograd kernel: F(2×4, 3×3). F(4×4) in bf16 does
/// 25 % fewer products but misses the 45 dB parity bound (docs/fastconv.md).
pub const BF16_WINOGRAD_ROWS: usize = 2;

/// `UPRES_FASTCONV_BF16_ROWS` (measurement only): `4` runs the AVX-512 BF16 Winograd kernel
/// as F(4×4); anything else [`BF16_WINOGRAD_ROWS`].
pub(super) fn bf16_winograd_rows() -> usize {
    match std::env::var("UPRES_FASTCONV_BF16_ROWS").ok().as_deref().map(str::trim) {
        Some("4") => 4,
        _ => BF16_WINOGRAD_ROWS,
    }
}

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
        overrides().winograd.unwrap_or(default)
    }

    /// Whether a conv with `in_c → out_c` channels on `backend` runs Winograd under this mode.
    pub fn pays(self, backend: Backend, in_c: usize, out_c: usize) -> bool {
        let auto = match backend {
            Backend::Avx512 | Backend::Avx512Bf16 => in_c >= WINOGRAD_MIN_IN_C,
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

/// A CPU feature a kernel family needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuFeature {
    /// Intel AMX tiles with bf16 (and the OS granting the tile state).
    Amx,
    /// AVX-512 BF16 dot products (`vdpbf16ps`).
    Avx512Bf16,
    /// AVX-512F. Hiding it hides everything built on it (AVX-512 BF16, AMX).
    Avx512,
    /// AVX2 with FMA.
    Avx2,
}

impl CpuFeature {
    pub const ALL: [CpuFeature; 4] = [CpuFeature::Amx, CpuFeature::Avx512Bf16, CpuFeature::Avx512, CpuFeature::Avx2];

    /// The configuration name (`amx`, `avx512bf16`, `avx512`, `avx2`).
    pub fn as_str(self) -> &'static str {
        match self {
            CpuFeature::Amx => "amx",
            CpuFeature::Avx512Bf16 => "avx512bf16",
            CpuFeature::Avx512 => "avx512",
            CpuFeature::Avx2 => "avx2",
        }
    }

    /// Whether the hardware (and OS) has it, hidden or not.
    pub fn present(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                CpuFeature::Amx => super::amx_tile::available(),
                CpuFeature::Avx512Bf16 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"),
                CpuFeature::Avx512 => is_x86_feature_detected!("avx512f"),
                CpuFeature::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// The features this one builds on, itself included: hiding any of them hides it.
    fn chain(self) -> &'static [CpuFeature] {
        match self {
            CpuFeature::Amx => &[CpuFeature::Amx, CpuFeature::Avx512Bf16, CpuFeature::Avx512],
            CpuFeature::Avx512Bf16 => &[CpuFeature::Avx512Bf16, CpuFeature::Avx512],
            CpuFeature::Avx512 => &[CpuFeature::Avx512],
            CpuFeature::Avx2 => &[CpuFeature::Avx2],
        }
    }

    /// Whether it is present and nothing in its chain is in `hidden`.
    fn usable_with(self, hidden: &[CpuFeature]) -> bool {
        self.present() && !self.chain().iter().any(|f| hidden.contains(f))
    }

    /// Whether kernels may use it: present and not hidden, nor anything it builds on.
    pub fn usable(self) -> bool {
        self.usable_with(&overrides().hide)
    }
}

impl fmt::Display for CpuFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CpuFeature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CpuFeature::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown CPU feature {s:?} (expected one of amx, avx512bf16, avx512, avx2)"))
    }
}

impl Backend {
    /// Every backend, fastest-first within each precision.
    pub const ALL: [Backend; 8] = [
        Backend::Portable,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Avx512Bf16,
        Backend::AmxBf16,
        Backend::AmxBf16x2,
        Backend::AmxBf16x3,
        Backend::AmxBf16W2,
    ];

    /// The configuration name (`portable`, `avx2`, `avx512`, `bf16`, `amx`, `amx2`, `amx3`,
    /// `amxw2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Avx512Bf16 => "bf16",
            Backend::AmxBf16 => "amx",
            Backend::AmxBf16x2 => "amx2",
            Backend::AmxBf16x3 => "amx3",
            Backend::AmxBf16W2 => "amxw2",
        }
    }

    /// The CPU feature the backend needs beyond the baseline (none for the portable kernel).
    pub fn needs(self) -> Option<CpuFeature> {
        match self {
            Backend::Portable => None,
            Backend::Avx2 => Some(CpuFeature::Avx2),
            Backend::Avx512 => Some(CpuFeature::Avx512),
            Backend::Avx512Bf16 => Some(CpuFeature::Avx512Bf16),
            Backend::AmxBf16 | Backend::AmxBf16x2 | Backend::AmxBf16x3 | Backend::AmxBf16W2 => Some(CpuFeature::Amx),
        }
    }

    /// Whether this CPU can run the backend, with hidden features counted as absent.
    pub fn supported(self) -> bool {
        self.needs().is_none_or(CpuFeature::usable)
    }

    /// The fastest supported fp32 backend.
    pub fn best_fp32() -> Backend {
        [Backend::Avx512, Backend::Avx2].into_iter().find(|b| b.supported()).unwrap_or(Backend::Portable)
    }

    /// The forced backend (`kernels.backend`, env alias `UPRES_FASTCONV`), when there is one
    /// this CPU supports.
    pub fn from_env() -> Option<Backend> {
        overrides().backend.filter(|b| b.supported())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Backend::ALL.into_iter().find(|b| b.as_str().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            format!("unknown kernel backend {s:?} (expected one of portable, avx2, avx512, bf16, amx, amx2, amx3, amxw2)")
        })
    }
}

impl FromStr for Winograd {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "0" => Ok(Winograd::Off),
            "auto" | "on" | "1" => Ok(Winograd::Auto),
            "always" => Ok(Winograd::Always),
            _ => Err(format!("unknown Winograd mode {s:?} (expected off, auto or always)")),
        }
    }
}

/// The operator's kernel choices (`[kernels]` in the config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOverrides {
    /// Run every fastconv convolution on this backend (`None`: chosen per network).
    pub backend: Option<Backend>,
    /// Winograd mode for every convolution (`None`: each network's default).
    pub winograd: Option<Winograd>,
    /// CPU features the selector treats as absent.
    pub hide: Vec<CpuFeature>,
}

impl KernelOverrides {
    /// The env aliases: `UPRES_FASTCONV` (a backend name; `off`/`candle`/`0` are the
    /// Real-ESRGAN engine's switch to its candle reference and leave the backend automatic),
    /// `UPRES_FASTCONV_WINOGRAD`, `UPRES_CPU_HIDE` (comma list). Unknown values are ignored
    /// with a warning: this path serves tests and benches, the config path refuses them.
    pub fn from_env() -> KernelOverrides {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let backend = var("UPRES_FASTCONV").and_then(|v| match v.as_str() {
            "off" | "candle" | "0" | "auto" => None,
            _ => v.parse::<Backend>().map_err(|e| tracing::warn!("UPRES_FASTCONV: {e}")).ok(),
        });
        let winograd = var("UPRES_FASTCONV_WINOGRAD")
            .and_then(|v| v.parse::<Winograd>().map_err(|e| tracing::warn!("UPRES_FASTCONV_WINOGRAD: {e}")).ok());
        let hide = var("UPRES_CPU_HIDE")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .filter_map(|s| s.parse::<CpuFeature>().map_err(|e| tracing::warn!("UPRES_CPU_HIDE: {e}")).ok())
                    .collect()
            })
            .unwrap_or_default();
        let o = KernelOverrides { backend, winograd, hide };
        if let Some(b) = o.backend.filter(|b| !o.backend_runs(*b)) {
            tracing::warn!(backend = %b, "UPRES_FASTCONV names a backend this CPU cannot run; using the automatic choice");
        }
        o
    }

    /// Whether `b` runs on this CPU with this set's hidden features.
    fn backend_runs(&self, b: Backend) -> bool {
        b.needs().is_none_or(|f| f.usable_with(&self.hide))
    }
}

static OVERRIDES: OnceLock<KernelOverrides> = OnceLock::new();

/// The overrides in force: those given to [`set_overrides`], else the env aliases.
pub fn overrides() -> &'static KernelOverrides {
    OVERRIDES.get_or_init(KernelOverrides::from_env)
}

/// Sets the kernel choices for this process, before any convolution is built. Refuses a
/// forced backend this CPU cannot run (with the hidden features counted as absent), and a
/// second call with different choices (the first one already decided what was built).
pub fn set_overrides(o: KernelOverrides) -> Result<(), String> {
    if let Some(b) = o.backend {
        if !o.backend_runs(b) {
            let need = b.needs().map_or(String::new(), |f| format!(" ({f})"));
            return Err(format!(
                "kernels.backend = {b:?}: this CPU lacks the features it needs{need}, or they are hidden by kernels.hide_cpu_features"
            ));
        }
    }
    let set = OVERRIDES.get_or_init(|| o.clone());
    if *set == o {
        Ok(())
    } else {
        Err(format!("kernel overrides already set to {set:?} in this process; cannot change them to {o:?}"))
    }
}

/// `UPRES_FASTCONV_MAXNV` (tuning): the widest fp32 output-channel block in 16-channel
/// vectors, clamped to 1..=4; `None` when unset or not a number.
pub(super) fn max_nv_override() -> Option<usize> {
    std::env::var("UPRES_FASTCONV_MAXNV").ok().and_then(|v| v.parse().ok()).map(|v: usize| v.clamp(1, 4))
}

/// The CPU's model name (`/proc/cpuinfo`; the architecture elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("Hardware"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Backend {
    /// The backend with the Winograd kernel it runs where [`Winograd::Auto`] pays, for logs and
    /// benchmark output: `avx512 + Winograd F(4×4) fp32`, `bf16 + Winograd F(2×4) bf16`,
    /// `amx + Winograd F(2×2) bf16`, or just the name for backends without one.
    pub fn family(self) -> String {
        let wino = match self {
            Backend::Avx512 => Some("F(4×4) fp32".to_string()),
            Backend::Avx512Bf16 => Some(format!("F({}×4) bf16", bf16_winograd_rows())),
            #[cfg(target_arch = "x86_64")]
            Backend::AmxBf16 => Some("F(2×2) bf16".to_string()),
            _ => None,
        };
        match wino {
            Some(w) => format!("{self} + Winograd {w}"),
            None => self.to_string(),
        }
    }
}

/// One line for benchmark output: the CPU, the features the selector may use, and the kernel
/// family of each role (GAN trunk, image-facing convs, fp32 default).
pub fn kernel_summary() -> String {
    let usable: Vec<&str> = CpuFeature::ALL.into_iter().filter(|f| f.usable()).map(CpuFeature::as_str).collect();
    let hidden: Vec<&str> = overrides().hide.iter().map(|f| f.as_str()).collect();
    let gan = Backend::for_gan();
    format!(
        "CPU: {} ({} threads); features used: [{}]{}; kernels: GAN trunk {}, RRDBNet trunk {}, image-facing {}, fp32 {}",
        cpu_model(),
        rayon::current_num_threads(),
        usable.join(","),
        if hidden.is_empty() { String::new() } else { format!(" (hidden: {})", hidden.join(",")) },
        gan.family(),
        Backend::for_rrdb().family(),
        gan.edge().family(),
        Backend::detect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for b in Backend::ALL {
            assert_eq!(b.as_str().parse::<Backend>(), Ok(b));
        }
        for f in CpuFeature::ALL {
            assert_eq!(f.as_str().parse::<CpuFeature>(), Ok(f));
        }
        assert_eq!(" AVX512 ".parse::<Backend>(), Ok(Backend::Avx512));
        assert!("avx1024".parse::<Backend>().unwrap_err().contains("avx1024"));
        assert!("sse".parse::<CpuFeature>().is_err());
        assert_eq!("on".parse::<Winograd>(), Ok(Winograd::Auto));
        assert_eq!("always".parse::<Winograd>(), Ok(Winograd::Always));
        assert_eq!("0".parse::<Winograd>(), Ok(Winograd::Off));
        assert!("sometimes".parse::<Winograd>().is_err());
    }

    #[test]
    fn hiding_a_feature_hides_what_builds_on_it() {
        // Pure in the hidden list: holds on every CPU (absent features are unusable anyway).
        for f in CpuFeature::ALL {
            assert!(!f.usable_with(&[f]), "{f} hidden");
        }
        assert!(!CpuFeature::Amx.usable_with(&[CpuFeature::Avx512]));
        assert!(!CpuFeature::Amx.usable_with(&[CpuFeature::Avx512Bf16]));
        assert!(!CpuFeature::Avx512Bf16.usable_with(&[CpuFeature::Avx512]));
        assert_eq!(CpuFeature::Avx512.usable_with(&[CpuFeature::Amx]), CpuFeature::Avx512.present());
        assert_eq!(CpuFeature::Avx2.usable_with(&[CpuFeature::Avx512]), CpuFeature::Avx2.present());
    }

    #[test]
    fn a_forced_backend_the_cpu_cannot_run_is_refused() {
        // Hiding the feature makes the refusal independent of the CPU; the refusal happens
        // before anything is stored, so the process-wide choice is untouched.
        for b in Backend::ALL.into_iter().filter(|b| *b != Backend::Portable) {
            let o = KernelOverrides { backend: Some(b), winograd: None, hide: b.needs().into_iter().collect() };
            let err = set_overrides(o).unwrap_err();
            assert!(err.contains(&format!("{b:?}")), "{err}");
        }
        // Portable runs everywhere, whatever is hidden.
        let o = KernelOverrides { backend: Some(Backend::Portable), winograd: None, hide: CpuFeature::ALL.to_vec() };
        assert!(o.backend_runs(Backend::Portable));
    }

    #[test]
    fn selection_never_picks_an_unsupported_backend() {
        assert!(Backend::best_fp32().supported());
        assert!(Backend::detect().supported());
        assert!(Backend::for_gan().supported());
        assert!(Backend::for_rrdb().supported());
        assert_ne!(Backend::for_rrdb(), Backend::Avx512Bf16, "RRDBNet's trunk misses the bound on bf16 Winograd");
        assert!(Backend::for_gan().edge().supported());
        assert!(Backend::for_gan().dense_in().supported());
        // The hidden features of this process (UPRES_CPU_HIDE) are respected by every pick.
        for f in &overrides().hide {
            for b in [Backend::best_fp32(), Backend::detect(), Backend::for_gan(), Backend::for_rrdb(), Backend::for_gan().edge()] {
                assert!(b.needs().is_none_or(|n| !n.chain().contains(f)), "{b:?} uses hidden {f}");
            }
        }
    }
}
