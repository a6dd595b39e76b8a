//! What kind of picture a source is, for `model=auto` rules with `content = "photo" |
//! "illustration"`: decided from the pixels alone, so every replica decides the same.
//!
//! The measure is the share of flat spots: on a 96×96 grid over the image, a spot is flat when
//! the pixel to its right and the one below differ from it by at most 1 in every channel.
//! Drawn images (illustrations, anime, logos, screenshots of them) are mostly flat fills;
//! photos carry sensor noise and texture nearly everywhere, even in skies and blurred
//! backgrounds. `FLAT_SHARE` or more is an illustration. The photos of `scripts/fetch-samples.sh`
//! measure 0.05–0.48 (the most: rocket.jpg, half sky), drawn images 0.67–0.87; the fixtures in
//! `tests/fixtures/images/content/` (two photo crops, a drawing as PNG and JPEG) are checked
//! below. Known miss: a small, strongly JPEG-compressed drawing has its flat fills broken into
//! blocks and reads as a photo. Cost: one pass over 9216 pixel triples after the decode.

use image::RgbImage;

use crate::config::Content;

/// Grid points per side.
const GRID: u32 = 96;
/// Share of flat grid points from which an image is an illustration.
pub const FLAT_SHARE: f64 = 0.55;

/// The share of flat spots of `img` (module docs); 0 for images under 2×2.
pub fn flat_share(img: &RgbImage) -> f64 {
    let (w, h) = img.dimensions();
    if w < 2 || h < 2 {
        return 0.0;
    }
    let at = |i: u32, n: u32, len: u32| -> u32 { (u64::from(i) * u64::from(len - 2) / u64::from(n - 1)) as u32 };
    let close = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| a.0.iter().zip(b.0.iter()).all(|(x, y)| x.abs_diff(*y) <= 1);
    let mut flat = 0u32;
    for gy in 0..GRID {
        let y = at(gy, GRID, h);
        for gx in 0..GRID {
            let x = at(gx, GRID, w);
            let p = img.get_pixel(x, y);
            if close(p, img.get_pixel(x + 1, y)) && close(p, img.get_pixel(x, y + 1)) {
                flat += 1;
            }
        }
    }
    f64::from(flat) / f64::from(GRID * GRID)
}

/// Photo or illustration (module docs).
pub fn classify(img: &RgbImage) -> Content {
    if flat_share(img) >= FLAT_SHARE {
        Content::Illustration
    } else {
        Content::Photo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_fills_are_illustrations_and_noise_is_a_photo() {
        // Four flat colour blocks with hard edges.
        let drawn = RgbImage::from_fn(200, 150, |x, y| image::Rgb([if x < 100 { 240 } else { 30 }, if y < 75 { 200 } else { 60 }, 128]));
        assert_eq!(classify(&drawn), Content::Illustration);
        // A smooth gradient with pseudo-random noise of a few levels: a photo's texture.
        let mut seed = 7u32;
        let photo = RgbImage::from_fn(200, 150, |x, y| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let n = (seed >> 16) as u8 % 7;
            image::Rgb([(x as u8).saturating_add(n), (y as u8).saturating_add(n / 2), 100u8.saturating_add(n)])
        });
        assert_eq!(classify(&photo), Content::Photo);
        assert_eq!(flat_share(&RgbImage::new(1, 1)), 0.0);
    }

    #[test]
    fn the_fixture_photos_and_drawings_are_told_apart() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/content");
        for (file, want) in [
            ("photo-cat.png", Content::Photo),
            ("photo-coffee.png", Content::Photo),
            ("drawn-cartoon.png", Content::Illustration),
            ("drawn-cartoon.jpg", Content::Illustration),
        ] {
            let img = image::open(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}")).to_rgb8();
            assert_eq!(classify(&img), want, "{file}: flat share {:.2}", flat_share(&img));
        }
    }
}
