//! Smart crop (`gravity=smart`, imgproxy's `g:sm`): where the `fit=cover` window goes.
//!
//! Like libvips' `attention` strategy, a small copy of the image (longest side ≤ `MAP_SIDE`,
//! box-averaged) scores each pixel by edge energy (a Laplacian of luma), saturated colour and
//! skin tones; the window position whose summed score is highest wins (a summed-area table
//! sums every position in O(1)). Pure arithmetic on the decoded pixels: the same bytes give the
//! same window on every replica. A featureless image, or one where no position beats the centre
//! clearly, keeps the centre.

use crate::engine::Tile;

/// Longest side of the score map: enough to place a window, cheap on any image.
const MAP_SIDE: usize = 128;

/// A position must beat the centre's score by this factor to move the window: noise and
/// near-ties keep the centre.
const BEAT_CENTRE: f64 = 1.05;

/// The window's left/top (fractions of the image) for a `crop_w`×`crop_h` window (fractions
/// too, as in `Plan::crop`) in a planar RGB tile with values in `[0, 1]`.
pub fn best_offset_tile(img: &Tile, crop_w: f64, crop_h: f64) -> (f64, f64) {
    let plane = img.plane_len();
    let w = img.width as usize;
    let d = &img.data;
    best_offset(img.width, img.height, crop_w, crop_h, |x, y| {
        let p = y * w + x;
        [d[p], d[plane + p], d[2 * plane + p]]
    })
}

/// The same for interleaved 8-bit RGB (the resize-only path's decode).
pub fn best_offset_rgb8(px: &[u8], width: u32, height: u32, crop_w: f64, crop_h: f64) -> (f64, f64) {
    let w = width as usize;
    best_offset(width, height, crop_w, crop_h, |x, y| {
        let p = 3 * (y * w + x);
        [px[p] as f32 / 255.0, px[p + 1] as f32 / 255.0, px[p + 2] as f32 / 255.0]
    })
}

fn best_offset(width: u32, height: u32, crop_w: f64, crop_h: f64, pixel: impl Fn(usize, usize) -> [f32; 3]) -> (f64, f64) {
    let centre = ((1.0 - crop_w).max(0.0) / 2.0, (1.0 - crop_h).max(0.0) / 2.0);
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return centre;
    }
    let factor = w.max(h).div_ceil(MAP_SIDE).max(1);
    let (mw, mh) = (w.div_ceil(factor), h.div_ceil(factor));
    let score = saliency(&downsample(w, h, factor, mw, mh, pixel), mw, mh);

    let sat = SummedArea::new(&score, mw, mh);
    let ww = ((crop_w * mw as f64).round() as usize).clamp(1, mw);
    let wh = ((crop_h * mh as f64).round() as usize).clamp(1, mh);
    let (cx, cy) = ((mw - ww) / 2, (mh - wh) / 2);
    let centre_score = sat.sum(cx, cy, ww, wh);
    // The highest sum; among equals the one nearest the centre, then the first in scan order.
    let mut best = (centre_score, 0usize, cx, cy);
    for y in 0..=mh - wh {
        for x in 0..=mw - ww {
            let s = sat.sum(x, y, ww, wh);
            let dist = x.abs_diff(cx).pow(2) + y.abs_diff(cy).pow(2);
            if s > best.0 || (s == best.0 && dist < best.1) {
                best = (s, dist, x, y);
            }
        }
    }
    if best.0 <= centre_score * BEAT_CENTRE + 1e-9 {
        return centre;
    }
    // Map cells are `factor` source pixels wide (the last one may be narrower).
    let left = (best.2 * factor) as f64 / w as f64;
    let top = (best.3 * factor) as f64 / h as f64;
    (left.clamp(0.0, (1.0 - crop_w).max(0.0)), top.clamp(0.0, (1.0 - crop_h).max(0.0)))
}

/// Box-averages the image by `factor` into an `mw`×`mh` interleaved RGB map.
fn downsample(w: usize, h: usize, factor: usize, mw: usize, mh: usize, pixel: impl Fn(usize, usize) -> [f32; 3]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0f64; 3]; mw * mh];
    let mut counts = vec![0u32; mw * mh];
    for y in 0..h {
        let row = (y / factor) * mw;
        for x in 0..w {
            let i = row + x / factor;
            for (sum, v) in sums[i].iter_mut().zip(pixel(x, y)) {
                *sum += v as f64;
            }
            counts[i] += 1;
        }
    }
    sums.iter().zip(counts).map(|(s, n)| s.map(|v| (v / n.max(1) as f64) as f32)).collect()
}

/// Per-pixel interest: edge strength, plus saturated colour and skin tones in mid brightness.
fn saliency(rgb: &[[f32; 3]], w: usize, h: usize) -> Vec<f32> {
    let luma: Vec<f32> = rgb.iter().map(|[r, g, b]| 0.299 * r + 0.587 * g + 0.114 * b).collect();
    let at = |x: usize, y: usize| luma[y * w + x];
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            // Neighbours clamped at the border, so the frame's edge is not an edge.
            let around = at(x.saturating_sub(1), y) + at((x + 1).min(w - 1), y) + at(x, y.saturating_sub(1)) + at(x, (y + 1).min(h - 1));
            let edge = (4.0 * luma[i] - around).abs();
            let [r, g, b] = rgb[i];
            let l = luma[i];
            let saturation = if (0.05..0.95).contains(&l) { r.max(g).max(b) - r.min(g).min(b) } else { 0.0 };
            out[i] = edge + 0.3 * saturation + 0.4 * skin(r, g, b, l);
        }
    }
    out
}

/// How close the pixel's chromaticity is to a skin tone (1 = on it, 0 = far), in mid brightness.
fn skin(r: f32, g: f32, b: f32, luma: f32) -> f32 {
    if !(0.2..0.95).contains(&luma) {
        return 0.0;
    }
    // Direction of a typical skin tone in RGB, compared with the pixel's direction.
    const SKIN: [f32; 3] = [0.78, 0.57, 0.44];
    let norm = (r * r + g * g + b * b).sqrt().max(1e-6);
    let skin_norm = (SKIN[0] * SKIN[0] + SKIN[1] * SKIN[1] + SKIN[2] * SKIN[2]).sqrt();
    let d = [r / norm - SKIN[0] / skin_norm, g / norm - SKIN[1] / skin_norm, b / norm - SKIN[2] / skin_norm];
    let distance = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    (1.0 - distance / 0.15).max(0.0)
}

/// Window sums in O(1).
struct SummedArea {
    stride: usize,
    table: Vec<f64>,
}

impl SummedArea {
    fn new(score: &[f32], w: usize, h: usize) -> SummedArea {
        let stride = w + 1;
        let mut table = vec![0f64; stride * (h + 1)];
        for y in 0..h {
            let mut row = 0f64;
            for x in 0..w {
                row += score[y * w + x] as f64;
                table[(y + 1) * stride + x + 1] = table[y * stride + x + 1] + row;
            }
        }
        SummedArea { stride, table }
    }

    fn sum(&self, x: usize, y: usize, w: usize, h: usize) -> f64 {
        let at = |x: usize, y: usize| self.table[y * self.stride + x];
        at(x + w, y + h) - at(x, y + h) - at(x + w, y) + at(x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat grey image with a skin-toned, textured square centred at (`cx`, `cy`) (fractions).
    fn scene(w: u32, h: u32, cx: f64, cy: f64, side: u32) -> Tile {
        let mut t = Tile::new(w, h, vec![0.5; 3 * (w * h) as usize]);
        let plane = (w * h) as usize;
        let x0 = (cx * w as f64) as u32 - side / 2;
        let y0 = (cy * h as f64) as u32 - side / 2;
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                let p = (y * w + x) as usize;
                let k = if (x / 3 + y / 3) % 2 == 0 { 1.0 } else { 0.8 };
                t.data[p] = 0.85 * k;
                t.data[plane + p] = 0.62 * k;
                t.data[2 * plane + p] = 0.48 * k;
            }
        }
        t
    }

    fn covers(start: f64, len: f64, lo: f64, hi: f64) -> bool {
        start <= lo + 1e-9 && start + len >= hi - 1e-9
    }

    #[test]
    fn the_window_finds_an_off_centre_subject() {
        // Landscape, subject near the right edge: a square crop moves right, the centre crop
        // (0.25..0.75) would miss it.
        let (l, t) = best_offset_tile(&scene(400, 200, 0.85, 0.5, 40), 0.5, 1.0);
        assert_eq!(t, 0.0);
        assert!(covers(l, 0.5, 0.80, 0.90), "window {l}..{} misses the subject", l + 0.5);
        // Portrait, subject near the top.
        let (l, t) = best_offset_tile(&scene(200, 400, 0.5, 0.12, 40), 1.0, 0.5);
        assert_eq!(l, 0.0);
        assert!(covers(t, 0.5, 0.07, 0.17), "top {t}");
        // Subject at the bottom-left corner of a large image (the map is downsampled) with a
        // window smaller on both axes.
        let (l, t) = best_offset_tile(&scene(1600, 1200, 0.1, 0.85, 120), 0.4, 0.4);
        assert!(covers(l, 0.4, 0.1 - 0.0375, 0.1 + 0.0375) && covers(t, 0.4, 0.8, 0.9), "{l} {t}");
    }

    #[test]
    fn interleaved_bytes_and_planar_floats_agree() {
        let t = scene(300, 150, 0.15, 0.5, 30);
        let plane = t.plane_len();
        let bytes: Vec<u8> =
            (0..plane).flat_map(|p| (0..3).map(move |c| c * plane + p)).map(|i| (t.data[i] * 255.0).round() as u8).collect();
        let a = best_offset_tile(&t, 0.5, 1.0);
        let b = best_offset_rgb8(&bytes, 300, 150, 0.5, 1.0);
        assert!((a.0 - b.0).abs() < 0.02 && a.1 == b.1, "{a:?} {b:?}");
        assert!(a.0 < 0.1, "{a:?}");
    }

    #[test]
    fn a_featureless_image_keeps_the_centre() {
        let flat = Tile::new(300, 100, vec![0.4; 3 * 300 * 100]);
        let (l, t) = best_offset_tile(&flat, 1.0 / 3.0, 1.0);
        assert!((l - 1.0 / 3.0).abs() < 1e-9 && t == 0.0, "{l} {t}");
        // A window as large as the image has nowhere to go.
        assert_eq!(best_offset_tile(&scene(100, 100, 0.2, 0.2, 10), 1.0, 1.0), (0.0, 0.0));
    }
}
