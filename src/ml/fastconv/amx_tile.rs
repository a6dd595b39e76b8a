//! Intel AMX primitives shared by the two AMX kernels (`amx.rs`, direct; `amx_wino.rs`,
//! Winograd): whether the CPU and OS run AMX, the tile configuration, the k-step and
//! accumulator-store instruction sequences and the fused epilogue of one 16-channel output
//! row. It imports only `job.rs`, so neither kernel imports the other.
// Unsafe is needed for inline assembly (the AMX intrinsics are not stable in Rust), the CPUID
// and `arch_prctl` calls, SIMD intrinsics on raw pointers and `#[target_feature]` functions;
// the crate root denies it elsewhere.
#![allow(unsafe_code)]
#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::sync::OnceLock;

use super::job::{AmxWeights, RawJob};

/// Whether this CPU and OS run AMX bf16 (CPUID AMX-TILE + AMX-BF16 + AVX-512F, and the kernel
/// granted the tile state to this process). Asked once.
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // The epilogue and the bf16 conversions use these next to the tile instructions.
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl"))
        {
            return false;
        }
        // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86_64 CPU with AVX-512F (checked above).
        let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
            return false;
        }
        request_tile_permission()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes this process's permission to use
    // the AMX register state; the syscall clobbers rcx and r11, declared below.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// Tile configuration: palette 1, all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
pub(super) struct TileConfig(pub(super) [u8; 64]);

impl TileConfig {
    pub(super) fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        TileConfig(c)
    }
}

/// What the epilogue needs of one 16-channel output tile, loaded once per block rather than
/// per row (measured 2–7 % of the narrow 64→32 / 64→64 convs).
#[derive(Clone, Copy)]
pub(super) struct TileConsts {
    pub bias: std::arch::x86_64::__m512,
    pub slope: std::arch::x86_64::__m512,
    pub oc: usize,
    /// Valid lanes of the tile (`out_c` need not be a multiple of 16).
    pub mask: u16,
}

/// The two output tiles of `pair`; `None` past the last output channel.
///
/// # Safety
/// The CPU supports avx512f (a caller without that target feature calls it in `unsafe`).
#[target_feature(enable = "avx512f")]
pub(super) fn tile_consts(wts: &AmxWeights, pair: usize) -> [Option<TileConsts>; 2] {
    use std::arch::x86_64::_mm512_loadu_ps;
    let tile = |ot: usize| {
        let oc = (2 * pair + ot) * 16;
        (oc < wts.out_c).then(|| {
            // Slicing checks the bounds: `pack::amx` pads both to whole 16-channel tiles.
            let (bias, slope) = (&wts.bias[oc..oc + 16], &wts.slope[oc..oc + 16]);
            // SAFETY: each load reads the 16 floats of a 16-element slice; avx512f is the
            // caller's contract.
            let (bias, slope) = unsafe { (_mm512_loadu_ps(bias.as_ptr()), _mm512_loadu_ps(slope.as_ptr())) };
            TileConsts { bias, slope, oc, mask: ((1u32 << (wts.out_c - oc).min(16)) - 1) as u16 }
        })
    };
    [tile(0), tile(1)]
}

/// Expands the local `asm!` macro `$step` with the B-tile load instruction: `tileloaddt1`
/// (non-temporal hint) when `$stream`, else `tileloadd`.
macro_rules! with_b_load {
    ($stream:expr, $step:ident) => {
        if $stream {
            $step!("tileloaddt1")
        } else {
            $step!("tileloadd")
        }
    };
}
pub(super) use with_b_load;

/// Stores the four accumulator tiles `tmm0–3` as consecutive 16×16 f32 tiles at `sp`.
///
/// # Safety
/// Tiles configured by the caller; `sp` addresses 1024 writable f32.
#[inline(always)]
pub(super) unsafe fn store_accumulators(sp: *mut f32) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tilestored [{p0} + {s}], tmm0",
            "tilestored [{p1} + {s}], tmm1",
            "tilestored [{p2} + {s}], tmm2",
            "tilestored [{p3} + {s}], tmm3",
            p0 = in(reg) sp,
            p1 = in(reg) sp.add(256),
            p2 = in(reg) sp.add(512),
            p3 = in(reg) sp.add(768),
            s = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// One k-block of the 2×2 register block: two A tiles (positions), two B tiles (output
/// channels), four `tdpbf16ps`. Each load sits just before the first `tdpbf16ps` that needs
/// it, so the tile unit starts on C0 while B1 and A1 load (in-process A/B: 3–5 % faster than
/// all four loads first, on every trunk shape). `STREAM_B` loads B with the non-temporal hint
/// (`tileloaddt1`).
///
/// # Safety
/// Tiles configured by the caller; `a0`/`a1` address 16 rows of `stride` bytes and `b0`/`b1`
/// 16 rows of 64 bytes of readable memory.
#[inline(always)]
pub(super) unsafe fn k_step<const STREAM_B: bool>(a0: *const u8, a1: *const u8, b0: *const u8, b1: *const u8, stride: usize) {
    // The two variants differ only in the B load instruction.
    macro_rules! step {
        ($b_load:literal) => {
            asm!(
                "tileloadd tmm4, [{a0} + {s}]",
                concat!($b_load, " tmm6, [{b0} + {s64}]"),
                "tdpbf16ps tmm0, tmm4, tmm6",
                concat!($b_load, " tmm7, [{b1} + {s64}]"),
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                s = in(reg) stride, s64 = in(reg) 64usize,
                options(nostack, readonly),
            )
        };
    }
    // SAFETY: the caller's contract.
    unsafe { with_b_load!(STREAM_B, step) }
}

/// `scale · act(acc + bias) + Σ residuals` (as the AVX-512 kernel's epilogue) for output
/// tile `t` at position `qq`, stored to the f32 output unless the job has none, and rounded to
/// its bf16 shadow (pixel stride `cs_out`) when it has one.
///
/// # Safety
/// `qq` is an interior position of the validated output, its shadow and the residuals, whose
/// channel slices hold `t`'s channels under its mask (validated in mod.rs).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
#[inline]
pub(super) unsafe fn finish(j: &RawJob, t: &TileConsts, qq: usize, acc: std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let mut y = _mm512_add_ps(acc, t.bias);
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, _mm512_setzero_ps());
        y = _mm512_mask_mul_ps(y, neg, y, t.slope);
        if j.scale != 1.0 {
            y = _mm512_mul_ps(y, _mm512_set1_ps(j.scale));
        }
        for r in &j.res[..j.nres] {
            let rv = _mm512_maskz_loadu_ps(t.mask, r.ptr.add(qq * r.cs + t.oc));
            y = _mm512_fmadd_ps(rv, _mm512_set1_ps(r.weight), y);
        }
        // A null f32 output: the conv writes only the shadow (Epilogue::bf16_only).
        if !j.out.is_null() {
            _mm512_mask_storeu_ps(j.out.add(qq * j.cs_out + t.oc), t.mask, y);
        }
        if !j.out_bf.is_null() {
            let hi = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(y));
            _mm256_mask_storeu_epi16(j.out_bf.add(qq * j.cs_out + t.oc) as *mut i16, t.mask, hi);
        }
    }
}

