//! Lanczos-3 resampling of planar `f32` images (fast_image_resize, SIMD on x86-64 and Arm).
//!
//! Used by the Lanczos engine, by the plan's final `w`/`h`/`fit` resize, and for alpha planes.
//! Works on sRGB-encoded values as browsers and most CDNs do (no linearisation).

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::engine::Tile;

/// A source rectangle in source pixels (fractional), for `fit=cover` crops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// Resizes one `sw`×`sh` plane to `dw`×`dh`, optionally from a crop of the source.
pub fn resize_plane(src: &[f32], sw: u32, sh: u32, dw: u32, dh: u32, crop: Option<Crop>) -> Vec<f32> {
    assert_eq!(src.len(), (sw * sh) as usize);
    if sw == dw && sh == dh && crop.is_none() {
        return src.to_vec();
    }
    let mut src_buf = src.to_vec();
    let src_img = Image::from_slice_u8(sw, sh, bytemuck::cast_slice_mut(&mut src_buf), PixelType::F32)
        .expect("plane buffer matches its size");
    let mut dst_buf = vec![0f32; (dw * dh) as usize];
    {
        let mut dst_img = Image::from_slice_u8(dw, dh, bytemuck::cast_slice_mut(&mut dst_buf), PixelType::F32)
            .expect("plane buffer matches its size");
        let mut opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        if let Some(c) = crop {
            opts = opts.crop(c.left, c.top, c.width, c.height);
        }
        Resizer::new().resize(&src_img, &mut dst_img, &opts).expect("same pixel types");
    }
    dst_buf
}

/// Resizes every plane of an RGB tile.
pub fn resize_rgb(src: &Tile, dw: u32, dh: u32, crop: Option<Crop>) -> Tile {
    let n = src.plane_len();
    let mut data = Vec::with_capacity(3 * (dw * dh) as usize);
    for c in 0..3 {
        data.extend(resize_plane(&src.data[c * n..(c + 1) * n], src.width, src.height, dw, dh, crop));
    }
    Tile::new(dw, dh, data)
}

/// The `(x, y, w, h)` region of an `sw`-wide plane, copied out.
pub fn cut_plane(src: &[f32], sw: u32, (x, y, w, h): (u32, u32, u32, u32)) -> Vec<f32> {
    let (sw, x, w) = (sw as usize, x as usize, w as usize);
    (y as usize..(y + h) as usize).flat_map(|row| &src[row * sw + x..row * sw + x + w]).copied().collect()
}

/// The `(x, y, w, h)` region of every plane of an RGB tile.
pub fn cut_rgb(src: &Tile, region: (u32, u32, u32, u32)) -> Tile {
    let n = src.plane_len();
    let data = (0..3).flat_map(|c| cut_plane(&src.data[c * n..(c + 1) * n], src.width, region)).collect();
    Tile::new(region.2, region.3, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_planes_stay_constant() {
        let out = resize_plane(&[0.25; 7 * 5], 7, 5, 28, 20, None);
        assert_eq!(out.len(), 28 * 20);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-5));
    }

    #[test]
    fn one_pixel_upscales() {
        let t = Tile::new(1, 1, vec![0.1, 0.5, 0.9]);
        let out = resize_rgb(&t, 4, 4, None);
        assert_eq!(out.shape(), (4, 4));
        assert!((out.data[0] - 0.1).abs() < 1e-5 && (out.data[16] - 0.5).abs() < 1e-5);
    }

    #[test]
    fn crop_takes_the_requested_region() {
        // Left half black, right half white: cropping the right half gives white.
        let mut plane = vec![0f32; 8 * 4];
        for y in 0..4 {
            for x in 4..8 {
                plane[y * 8 + x] = 1.0;
            }
        }
        let crop = Crop { left: 4.0, top: 0.0, width: 4.0, height: 4.0 };
        let out = resize_plane(&plane, 8, 4, 4, 4, Some(crop));
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-4), "{out:?}");
    }
}
