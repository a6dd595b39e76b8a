//! Row-parallel layout passes of the UNet and VAE on the CPU: NCHW ↔ channels-last with the
//! element-wise work fused in (group-norm affine, SiLU, nearest ×2 upsampling, per-channel adds,
//! residual sums), so that each pass reads and writes every value once, on every core.
//!
//! A channels-last row is `w` pixels of `stride` values (channels `0..c` used); the fastconv
//! [`Nhwc`](crate::ml::fastconv::Nhwc) rows and the transformer's `(B, H·W, C)` tokens both are.

use rayon::prelude::*;

use crate::ml::fastconv::pointwise::swish;

/// What [`rows_from_nchw`] applies to each value on its way.
#[derive(Clone, Copy)]
pub struct Map<'a> {
    /// Per (image, channel) `(a, b)`: `a·v + b` (a group norm's affine form).
    pub affine: Option<&'a [(f32, f32)]>,
    pub silu: bool,
    /// Nearest-neighbour upsampling factor (1 or 2).
    pub up: usize,
}

/// Writes NCHW `data` (`n·c·h·w` values) into channels-last rows: `rows` yields `(image, y, row)`
/// for the `(h·up)` rows of each image, each `w·up` pixels of `stride ≥ c` values.
pub fn rows_from_nchw<'r>(data: &[f32], (n, c, h, w): (usize, usize, usize, usize), map: Map, stride: usize, rows: impl ParallelIterator<Item = (usize, usize, &'r mut [f32])>) {
    debug_assert_eq!(data.len(), n * c * h * w);
    let up = map.up.max(1);
    let ow = w * up;
    rows.for_each(|(ni, yy, row)| {
        let sy = yy / up;
        for k in 0..c {
            let src = &data[((ni * c + k) * h + sy) * w..][..w];
            let (a, b) = map.affine.map_or((1.0, 0.0), |ab| ab[ni * c + k]);
            let px = row[k..].iter_mut().step_by(stride).take(ow);
            match (map.affine.is_some(), map.silu) {
                (false, false) => px.enumerate().for_each(|(x, d)| *d = src[x / up]),
                (_, true) => px.enumerate().for_each(|(x, d)| *d = swish(a * src[x / up] + b)),
                (true, false) => px.enumerate().for_each(|(x, d)| *d = a * src[x / up] + b),
            }
        }
    });
}

/// NCHW `(n, c, h, w)` from channels-last rows (`row(image, y)`: `w` pixels of `stride` values),
/// plus `add[(image·c + channel) % add.len()]` and `residual` (NCHW, same shape) when given.
pub fn nchw_from_rows<'a>(
    (n, c, h, w): (usize, usize, usize, usize),
    stride: usize,
    row: impl Fn(usize, usize) -> &'a [f32] + Sync,
    add: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let plane = h * w;
    let mut out = vec![0f32; n * c * plane];
    // One item per (image, block of 16 channels): a source pixel's 16 channels are one cache
    // line, written to 16 output planes.
    const KB: usize = 16;
    out.par_chunks_mut((c * plane).max(1)).enumerate().for_each(|(ni, img)| {
        img.par_chunks_mut(KB * plane).enumerate().for_each(|(kb, planes)| {
            let k0 = kb * KB;
            for y in 0..h {
                let src = row(ni, y);
                for (j, dst_plane) in planes.chunks_exact_mut(plane).enumerate() {
                    let k = k0 + j;
                    let addv = add.map_or(0.0, |a| a[(ni * c + k) % a.len()]);
                    let base = (ni * c + k) * plane + y * w;
                    let dst = &mut dst_plane[y * w..(y + 1) * w];
                    match residual {
                        Some(r) => {
                            for ((x, d), &r) in dst.iter_mut().enumerate().zip(&r[base..base + w]) {
                                *d = src[x * stride + k] + addv + r;
                            }
                        }
                        None => {
                            for (x, d) in dst.iter_mut().enumerate() {
                                *d = src[x * stride + k] + addv;
                            }
                        }
                    }
                }
            }
        });
    });
    out
}
