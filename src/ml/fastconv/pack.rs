//! Weight packing, once per convolution: OIHW f32 weights into the layouts the kernels read
//! (fp32 output-channel blocks `[tap][c_in][block channels]` with bias and slope alongside,
//! their bf16 pairs, Winograd transforms, and the AMX tile layout).

use super::select::Backend;
use super::job::{f32_to_bf16, RawBlock};
use super::select;
#[cfg(target_arch = "x86_64")]
use super::{amx_wino, job::bf16_to_f32, job::AmxWeights, wino_bf16};
use super::winograd;

/// Widest output-channel block, in 16-channel vectors (4: 64 channels × 6 pixels per tile).
/// `UPRES_FASTCONV_MAXNV` overrides it (tuning).
const MAX_NV: usize = 4;

/// One fp32 output-channel block of packed weights (what a [`RawBlock`] points into).
pub(super) struct Block {
    w: Vec<f32>,
    /// The same weights in bf16, input channels in pairs (the AVX-512 BF16 backend only).
    wbf: Vec<u16>,
    /// Winograd-transformed weights `[36][c_in][nv*16]` (empty unless the conv uses Winograd).
    wino: Vec<f32>,
    /// bf16 Winograd weights `[ξ][c_in/2][nv*16][2]` (the AVX-512 BF16 backend with Winograd).
    wino_bf: Vec<u16>,
    bias: Vec<f32>,
    slope: Vec<f32>,
    oc0: usize,
    nv: usize,
    lanes: usize,
}

impl Block {
    /// Raw pointers into this block, for one call of a kernel (the block outlives it).
    pub(super) fn raw(&self) -> RawBlock {
        RawBlock {
            w: self.w.as_ptr(),
            wbf: self.wbf.as_ptr(),
            wino: self.wino.as_ptr(),
            wino_bf: self.wino_bf.as_ptr(),
            bias: self.bias.as_ptr(),
            slope: self.slope.as_ptr(),
            oc0: self.oc0,
            nv: self.nv,
            lanes: self.lanes,
        }
    }
}

/// Packs OIHW `weight` (`out_c·in_c·9` values, checked by the caller) with per-channel `bias`
/// and `slope` (`out_c` each) into blocks of up to [`MAX_NV`] vectors, split as evenly as
/// possible; with the bf16 pairs on [`Backend::Avx512Bf16`] and the Winograd transform when
/// `winograd` (in bf16 for `wino_rows`-row tiles on [`Backend::Avx512Bf16`], else fp32 F(4×4)).
#[allow(clippy::too_many_arguments)]
pub(super) fn blocks(weight: &[f32], bias: &[f32], slope: &[f32], in_c: usize, out_c: usize, backend: Backend, winograd: bool, wino_rows: usize) -> Vec<Block> {
    let max_nv = select::max_nv_override().unwrap_or(MAX_NV);
    let nvt = out_c.div_ceil(16);
    let nblocks = nvt.div_ceil(max_nv);
    let mut blocks = Vec::with_capacity(nblocks);
    let mut v0 = 0;
    for bi in 0..nblocks {
        let nv = (nvt - v0) / (nblocks - bi) + usize::from(!(nvt - v0).is_multiple_of(nblocks - bi));
        let oc0 = v0 * 16;
        let width = nv * 16;
        let valid = (out_c - oc0).min(width);
        let lanes = valid - (nv - 1) * 16;
        let mut w = vec![0f32; 9 * in_c * width];
        let mut bias_v = vec![0f32; width];
        let mut slope_v = vec![1f32; width];
        for j in 0..valid {
            let o = oc0 + j;
            bias_v[j] = bias[o];
            slope_v[j] = slope[o];
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
        let bf16_wino = winograd && backend == Backend::Avx512Bf16;
        let wino = if winograd && !bf16_wino { winograd::pack(weight, in_c, oc0, width, valid) } else { Vec::new() };
        #[cfg(target_arch = "x86_64")]
        let wino_bf = if bf16_wino { wino_bf16::pack(weight, in_c, oc0, width, valid, wino_rows) } else { Vec::new() };
        #[cfg(not(target_arch = "x86_64"))]
        let wino_bf = {
            let _ = (bf16_wino, wino_rows);
            Vec::new()
        };
        blocks.push(Block { w, wbf, wino, wino_bf, bias: bias_v, slope: slope_v, oc0, nv, lanes });
        v0 += nv;
    }
    blocks
}

/// Packs OIHW f32 weights for the AMX kernels; `bias` and `slope` are per output channel
/// (`out_c` long). `plan` lists the passes, each `(input half, weight half)` with false = hi,
/// true = lo; `winograd` also packs the F(2×2, 3×3) weights (plain bf16 only: one pass).
#[cfg(target_arch = "x86_64")]
pub(super) fn amx(
    weight: &[f32],
    bias: &[f32],
    slope: &[f32],
    (in_c, out_c): (usize, usize),
    plan: &[(bool, bool)],
    winograd: bool,
) -> AmxWeights {
    let tiles = out_c.div_ceil(32) * 2;
    let kb = in_c.div_ceil(32);
    let passes = plan.len();
    let kk = passes * kb;
    let mut w = vec![0u16; tiles * 9 * kk * 512];
    for o in 0..out_c {
        let (tile, oo) = (o / 16, o % 16);
        for i in 0..in_c {
            for t in 0..9 {
                let v = weight[(o * in_c + i) * 9 + t];
                let hi = f32_to_bf16(v);
                let lo = f32_to_bf16(v - bf16_to_f32(hi));
                for pass in 0..passes {
                    let k = pass * kb + i / 32;
                    let ii = i % 32;
                    let val = if plan[pass].1 { lo } else { hi };
                    w[(((tile * 9 + t) * kk + k) * 16 + ii / 2) * 32 + oo * 2 + ii % 2] = val;
                }
            }
        }
    }
    let pad = |v: &[f32], fill: f32| {
        let mut p = vec![fill; tiles * 16];
        p[..out_c].copy_from_slice(v);
        p
    };
    let wino = if winograd {
        assert_eq!(passes, 1, "AMX Winograd runs the plain bf16 mode only");
        amx_wino::pack(weight, in_c, out_c, tiles, kb)
    } else {
        Vec::new()
    };
    let a_lo = plan.iter().any(|p| p.0);
    AmxWeights { tiles, kb, passes, a_lo, plan: plan.to_vec(), w, bias: pad(bias, 0.0), slope: pad(slope, 1.0), out_c, wino }
}
