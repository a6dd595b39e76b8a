//! The consistency score: how well a model's output, taken back down to the input's size, agrees
//! with the input. It owns the luma conversion, the downscale and the two measures (PSNR, SSIM);
//! it does not decide what a score is good enough for (`quality::gate`).
//!
//! - Luma: BT.601 `Y' = 0.299 R' + 0.587 G' + 0.114 B'` on the sRGB-encoded values (as JPEG and
//!   the usual SSIM implementations do), on a 0..255 scale; values are clamped to `[0, 1]` first,
//!   as the encoder does.
//! - Downscale: the area (box) filter for every model. An engine's output is exactly `scale`
//!   times the input on each side, so each input pixel is compared with the mean of the
//!   `scale`×`scale` output pixels it became. Other sizes (two outputs of different scales) are
//!   averaged over the fractional area each target pixel covers.
//! - PSNR: `10 log10(255² / MSE)`, capped at [`PSNR_CAP`] dB (identical images would be
//!   infinite; the cap keeps headers, JSON and histograms finite).
//! - SSIM: Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), `K1 = 0.01`,
//!   `K2 = 0.03`, windows clamped at the image's edge, averaged over every pixel.
//!
//! The score says the output is consistent with the input, not that it looks real: a model that
//! invents plausible detail which averages back to the input scores high.

use crate::engine::Tile;

/// PSNR of identical images (and the most any score reports), in dB.
pub const PSNR_CAP: f64 = 100.0;

/// PSNR (dB) and SSIM (−1..1, 1 = identical) on luma.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    pub psnr: f64,
    pub ssim: f64,
}

impl Score {
    /// `psnr=34.21;ssim=0.9512` (`X-Upres-Consistency`).
    pub fn header_value(&self) -> String {
        format!("psnr={:.2};ssim={:.4}", self.psnr, self.ssim)
    }
}

/// A luma plane, 0..255.
#[derive(Clone, Debug, PartialEq)]
pub struct Luma {
    pub width: u32,
    pub height: u32,
    pub data: Vec<f32>,
}

impl Luma {
    /// BT.601 luma of a planar RGB tile (values clamped to `[0, 1]`).
    pub fn of(tile: &Tile) -> Luma {
        let n = tile.plane_len();
        let (r, rest) = tile.data.split_at(n);
        let (g, b) = rest.split_at(n);
        let data = (0..n)
            .map(|i| 255.0 * (0.299 * r[i].clamp(0.0, 1.0) + 0.587 * g[i].clamp(0.0, 1.0) + 0.114 * b[i].clamp(0.0, 1.0)))
            .collect();
        Luma { width: tile.width, height: tile.height, data }
    }

    /// BT.601 luma of interleaved RGB8 pixels (`width`×`height`, three bytes each).
    pub fn of_rgb8(px: &[u8], width: u32, height: u32) -> Luma {
        assert_eq!(px.len(), 3 * width as usize * height as usize, "pixels do not match their size");
        let data = px.chunks_exact(3).map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32).collect();
        Luma { width, height, data }
    }

    /// This plane averaged down (area filter) to `width`×`height` (at most its own size).
    pub fn area_down(&self, width: u32, height: u32) -> Luma {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let (sw, sh) = (self.width as usize, self.height as usize);
        if sw % width as usize == 0 && sh % height as usize == 0 && sw / width as usize == sh / height as usize {
            // The engine case: an integer factor, whole blocks.
            let s = sw / width as usize;
            let mut data = vec![0f32; width as usize * height as usize];
            for y in 0..sh {
                let row = &self.data[y * sw..(y + 1) * sw];
                let out = &mut data[(y / s) * width as usize..(y / s + 1) * width as usize];
                for (x, v) in row.iter().enumerate() {
                    out[x / s] += v;
                }
            }
            let inv = 1.0 / (s * s) as f32;
            data.iter_mut().for_each(|v| *v *= inv);
            return Luma { width, height, data };
        }
        let xs = spans(sw, width as usize);
        let ys = spans(sh, height as usize);
        let mut data = Vec::with_capacity(width as usize * height as usize);
        for ys in &ys {
            for xs in &xs {
                let (mut sum, mut area) = (0f64, 0f64);
                for &(y, wy) in ys {
                    for &(x, wx) in xs {
                        sum += (wy * wx) as f64 * self.data[y * sw + x] as f64;
                        area += (wy * wx) as f64;
                    }
                }
                data.push((sum / area.max(f64::MIN_POSITIVE)) as f32);
            }
        }
        Luma { width, height, data }
    }
}

/// For each of `to` target cells over `from` source cells: the source cells it covers, with the
/// covered fraction of each.
fn spans(from: usize, to: usize) -> Vec<Vec<(usize, f32)>> {
    let step = from as f64 / to as f64;
    (0..to)
        .map(|i| {
            let (start, end) = (i as f64 * step, (i + 1) as f64 * step);
            let mut cells = Vec::new();
            let mut x = start.floor() as usize;
            while (x as f64) < end && x < from {
                let w = (end.min(x as f64 + 1.0) - start.max(x as f64)) as f32;
                if w > 0.0 {
                    cells.push((x, w));
                }
                x += 1;
            }
            cells
        })
        .collect()
}

/// The consistency of `output` (an engine's output for `input`) with `input`.
pub fn score(input: &Tile, output: &Tile) -> Score {
    let reference = Luma::of(input);
    compare(&reference, &Luma::of(output).area_down(input.width, input.height))
}

/// PSNR and SSIM of two luma planes of one size.
pub fn compare(a: &Luma, b: &Luma) -> Score {
    assert_eq!((a.width, a.height), (b.width, b.height), "compared planes differ in size");
    Score { psnr: psnr(&a.data, &b.data), ssim: ssim(a, b) }
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64;
    if mse <= 0.0 {
        return PSNR_CAP;
    }
    (10.0 * (255.0f64 * 255.0 / mse).log10()).min(PSNR_CAP)
}

/// The 11-tap Gaussian, σ = 1.5, normalised.
fn window() -> [f64; 11] {
    let mut w = [0f64; 11];
    for (i, v) in w.iter_mut().enumerate() {
        let d = i as f64 - 5.0;
        *v = (-d * d / (2.0 * 1.5 * 1.5)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| v / sum)
}

/// Separable Gaussian blur with edge clamping, in f64: the variances are differences of large
/// second moments (up to 255²), which f32 would round visibly.
fn blur(data: &[f64], w: usize, h: usize) -> Vec<f64> {
    let k = window();
    let mut rows = vec![0f64; data.len()];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (i, kv) in k.iter().enumerate() {
                let xx = (x as isize + i as isize - 5).clamp(0, w as isize - 1) as usize;
                s += kv * data[y * w + xx];
            }
            rows[y * w + x] = s;
        }
    }
    let mut out = vec![0f64; data.len()];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (i, kv) in k.iter().enumerate() {
                let yy = (y as isize + i as isize - 5).clamp(0, h as isize - 1) as usize;
                s += kv * rows[yy * w + x];
            }
            out[y * w + x] = s;
        }
    }
    out
}

fn ssim(a: &Luma, b: &Luma) -> f64 {
    let (w, h) = (a.width as usize, a.height as usize);
    if w == 0 || h == 0 {
        return 1.0;
    }
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    let product = |f: fn(f64, f64) -> f64| a.data.iter().zip(&b.data).map(|(x, y)| f(*x as f64, *y as f64)).collect::<Vec<f64>>();
    let mu_a = blur(&product(|x, _| x), w, h);
    let mu_b = blur(&product(|_, y| y), w, h);
    let aa = blur(&product(|x, _| x * x), w, h);
    let bb = blur(&product(|_, y| y * y), w, h);
    let ab = blur(&product(|x, y| x * y), w, h);
    let mut total = 0f64;
    for i in 0..w * h {
        let (ma, mb) = (mu_a[i], mu_b[i]);
        let va = (aa[i] - ma * ma).max(0.0);
        let vb = (bb[i] - mb * mb).max(0.0);
        let cov = ab[i] - ma * mb;
        total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
    }
    total / (w * h) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth test picture with edges: gradients and a bright square.
    fn picture(w: u32, h: u32) -> Tile {
        let mut data = Vec::with_capacity(3 * (w * h) as usize);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let inside = (w / 4..3 * w / 4).contains(&x) && (h / 4..3 * h / 4).contains(&y);
                    let base = (x as f32 / w as f32) * 0.5 + (y as f32 / h as f32) * 0.3 + c as f32 * 0.05;
                    data.push(if inside { 0.9 - c as f32 * 0.1 } else { base });
                }
            }
        }
        Tile::new(w, h, data)
    }

    #[test]
    fn luma_of_rgb8_is_the_luma_of_the_same_pixels_as_a_tile() {
        let t = picture(12, 8);
        let n = t.plane_len();
        let bytes: Vec<u8> = (0..n).flat_map(|i| [0, 1, 2].map(|c| (t.data[c * n + i] * 255.0).round() as u8)).collect();
        let from_tile = Luma::of(&Tile::new(12, 8, (0..3 * n).map(|j| bytes[(j % n) * 3 + j / n] as f32 / 255.0).collect()));
        let from_bytes = Luma::of_rgb8(&bytes, 12, 8);
        assert_eq!((from_bytes.width, from_bytes.height), (12, 8));
        for (a, b) in from_tile.data.iter().zip(&from_bytes.data) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    /// Nearest-neighbour ×s: averages back to the input exactly.
    fn nearest(t: &Tile, s: u32) -> Tile {
        let (w, h) = (t.width * s, t.height * s);
        let mut data = Vec::with_capacity(t.data.len() * (s * s) as usize);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    data.push(t.data[c * t.plane_len() + ((y / s) * t.width + x / s) as usize]);
                }
            }
        }
        Tile::new(w, h, data)
    }

    #[test]
    fn identical_scores_the_cap_and_ssim_one() {
        let input = picture(40, 30);
        let s = score(&input, &nearest(&input, 4));
        assert_eq!(s.psnr, PSNR_CAP);
        assert!((s.ssim - 1.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.header_value(), "psnr=100.00;ssim=1.0000");
    }

    #[test]
    fn lanczos_scores_high() {
        let input = picture(48, 32);
        let out = crate::imaging::resize::resize_rgb(&input, 48 * 2, 32 * 2, None);
        let s = score(&input, &out);
        assert!(s.psnr > 30.0 && s.ssim > 0.95, "{s:?}");
    }

    #[test]
    fn noise_and_shifted_colours_score_low() {
        let input = picture(40, 40);
        let mut noisy = nearest(&input, 2);
        // A fixed pseudo-random sequence (xorshift), ±0.4.
        let mut state = 0x9e3779b97f4a7c15u64;
        for v in noisy.data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *v += ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32 * 0.8;
        }
        // Noise that does not average out: the block mean moves too.
        let s = score(&input, &noisy);
        assert!(s.psnr < 25.0 && s.ssim < 0.8, "noise: {s:?}");
        let mut shifted = nearest(&input, 2);
        shifted.data.iter_mut().for_each(|v| *v = (*v + 0.25).min(1.0));
        let s = score(&input, &shifted);
        assert!(s.psnr < 20.0, "shifted: {s:?}");
    }

    #[test]
    fn area_down_averages_fractional_cells() {
        let plane = Luma { width: 3, height: 1, data: vec![0.0, 90.0, 180.0] };
        let down = plane.area_down(2, 1);
        // Cell 0 covers x 0..1.5 (0 and half of 90), cell 1 covers 1.5..3.
        assert!((down.data[0] - 30.0).abs() < 1e-4 && (down.data[1] - 150.0).abs() < 1e-4, "{down:?}");
        let whole = Luma { width: 4, height: 2, data: vec![1.0, 3.0, 5.0, 7.0, 1.0, 3.0, 5.0, 7.0] }.area_down(2, 1);
        assert_eq!(whole.data, vec![2.0, 6.0]);
    }
}
