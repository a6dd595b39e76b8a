//! The path for outputs that need no model: 8-bit all the way, as libvips does it. JPEG sources
//! are decoded at 1/2, 1/4 or 1/8 of their size when that still covers the output (DCT scaling
//! while decoding: libjpeg-turbo through `mozjpeg`), other formats by the `image` crate; then
//! one SIMD Lanczos-3 resize (fast_image_resize, `U8x3`) and the encoder.
//!
//! Sources with an alpha channel take the planar `f32` path (`decode` → `resize` → `encode`),
//! which resizes alpha separately; a thumbnail storefront's photos are JPEGs.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageFormat, RgbImage};

use super::attention;
use super::{colour, metadata};
use super::decode::{self, DecodeError, Header};
use super::encode::{self, EncodeError, Encoding};

/// What to make: the output size, the source region it shows (fractions, for `fit=cover`) and
/// the encoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    pub width: u32,
    pub height: u32,
    /// (left, top, width, height) as fractions of the oriented source.
    pub crop: Option<(f64, f64, f64, f64)>,
    /// `gravity=smart`: the crop's left/top are chosen from the decoded pixels.
    pub smart: bool,
    pub encoding: Encoding,
}

#[derive(thiserror::Error, Debug)]
pub enum ResizeOnlyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl crate::error::Classify for ResizeOnlyError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            ResizeOnlyError::Decode(e) => e.class(),
            ResizeOnlyError::Encode(e) => e.class(),
        }
    }
}

/// Whether `render` handles this source (no alpha channel).
pub fn handles(header: &Header) -> bool {
    !header.has_alpha
}

/// Decodes (shrinking on load where it can), resizes into `target` and encodes.
pub fn render(bytes: &[u8], header: &Header, target: &Target, max_pixels: u64) -> Result<Vec<u8>, ResizeOnlyError> {
    let found = metadata::for_output(bytes, target.encoding.keep);
    let icc = found.convert_from.as_deref();
    let rgb = match header.format {
        ImageFormat::Jpeg => match decode_jpeg_shrunk(bytes, header, target) {
            // libjpeg ignores the ICC profile; `decode_rgb8` applies it itself.
            Some(rgb) => match icc {
                Some(icc) => colour::rgb_to_srgb(DynamicImage::ImageRgb8(rgb), icc).into_rgb8(),
                None => rgb,
            },
            None => decode::decode_rgb8(bytes, max_pixels, icc)?,
        },
        _ => decode::decode_rgb8(bytes, max_pixels, icc)?,
    };
    let (w, h) = rgb.dimensions();
    let mut target = *target;
    if let (true, Some((_, _, cw, ch))) = (target.smart, target.crop) {
        let (l, t) = attention::best_offset_rgb8(rgb.as_raw(), w, h, cw, ch);
        target.crop = Some((l, t, cw, ch));
    }
    let px = if (w, h) == (target.width, target.height) && target.crop.is_none() {
        rgb.into_raw()
    } else {
        resize_rgb8(rgb.as_raw(), w, h, &target)
    };
    Ok(encode::encode_rgb8_tagged(&px, target.width, target.height, &target.encoding, &found.tags)?)
}

/// The largest JPEG shrink (8, 4, 2 or 1) that keeps the shown region at least the output's
/// size on both axes. `w`/`h` are the oriented source's.
pub fn shrink_factor(w: u32, h: u32, target: &Target) -> u32 {
    let (cw, ch) = target.crop.map_or((1.0, 1.0), |(_, _, cw, ch)| (cw, ch));
    [8, 4, 2]
        .into_iter()
        .find(|&d| {
            let (sw, sh) = (w.div_ceil(d) as f64 * cw, h.div_ceil(d) as f64 * ch);
            sw >= target.width as f64 && sh >= target.height as f64
        })
        .unwrap_or(1)
}

/// libjpeg-turbo at the shrink factor, then oriented (the factor is the same on both axes, so
/// choosing it on the oriented size is right). `None` for what it does not convert to RGB
/// (CMYK/YCCK), or when it fails: the `image` path then decodes it or names the error.
fn decode_jpeg_shrunk(bytes: &[u8], header: &Header, target: &Target) -> Option<RgbImage> {
    let d = shrink_factor(header.width, header.height, target);
    // libjpeg reports errors by unwinding (mozjpeg's error manager); contain them here.
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let mut dec = mozjpeg::Decompress::new_mem(bytes)?;
        use mozjpeg::ColorSpace as C;
        if !matches!(dec.color_space(), C::JCS_YCbCr | C::JCS_RGB | C::JCS_GRAYSCALE) {
            return Ok(None);
        }
        dec.scale((8 / d) as u8);
        let mut started = dec.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let px: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(RgbImage::from_raw(w, h, px))
    });
    let mut img = DynamicImage::ImageRgb8(decoded.ok()?.ok()??);
    img.apply_orientation(header.orientation);
    match img {
        DynamicImage::ImageRgb8(rgb) => Some(rgb),
        other => Some(other.to_rgb8()),
    }
}

/// One Lanczos-3 pass from interleaved RGB8 into the target box (from the crop, if any).
fn resize_rgb8(src: &[u8], w: u32, h: u32, target: &Target) -> Vec<u8> {
    let src = ImageRef::new(w, h, src, PixelType::U8x3).expect("buffer matches its size");
    let mut dst = Image::new(target.width, target.height, PixelType::U8x3);
    let mut opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    if let Some((l, t, cw, ch)) = target.crop {
        opts = opts.crop(l * w as f64, t * h as f64, cw * w as f64, ch * h as f64);
    }
    Resizer::new().resize(&src, &mut dst, &opts).expect("same pixel types");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::encode::OutputFormat;
    use std::io::Cursor;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn target(width: u32, height: u32, format: OutputFormat) -> Target {
        Target { width, height, crop: None, smart: false, encoding: Encoding::new(format, 90) }
    }

    #[test]
    fn shrink_keeps_the_output_covered() {
        assert_eq!(shrink_factor(2048, 1536, &target(256, 192, OutputFormat::Webp)), 8);
        assert_eq!(shrink_factor(2048, 1536, &target(257, 192, OutputFormat::Webp)), 4);
        assert_eq!(shrink_factor(2048, 1536, &target(1500, 1125, OutputFormat::Webp)), 1);
        // A centre crop of half the width needs twice the pixels.
        let crop = Target { crop: Some((0.25, 0.0, 0.5, 1.0)), ..target(256, 192, OutputFormat::Webp) };
        assert_eq!(shrink_factor(2048, 1536, &crop), 4);
    }

    #[test]
    fn a_jpeg_is_shrunk_resized_and_encoded_with_its_colours() {
        let bytes = jpeg(640, 480);
        let header = decode::probe(&bytes, 1 << 24).unwrap();
        for format in [OutputFormat::Webp, OutputFormat::Jpeg, OutputFormat::Png] {
            let out = render(&bytes, &header, &target(100, 75, format), 1 << 24).unwrap();
            let img = image::load_from_memory(&out).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (100, 75), "{format:?}");
            // The gradient runs left to right in red and top to bottom in green.
            let (tl, br) = (img.get_pixel(5, 5).0, img.get_pixel(94, 69).0);
            assert!(tl[0] < 40 && tl[1] < 40 && br[0] > 210 && br[1] > 210, "{format:?}: {tl:?} {br:?}");
        }
    }

    #[test]
    fn exif_orientation_and_non_jpeg_sources_are_handled() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/exif-rotate90.jpg");
        let bytes = std::fs::read(path).unwrap();
        let header = decode::probe(&bytes, 1 << 20).unwrap();
        let out = render(&bytes, &header, &target(8, 12, OutputFormat::Png), 1 << 20).unwrap();
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (8, 12));
        // Rotated 90° clockwise, the stored left half (red) is on top.
        assert!(img.get_pixel(4, 1).0[0] > 200 && img.get_pixel(4, 10).0[2] > 200);
        let cmyk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/cmyk.jpg")).unwrap();
        let header = decode::probe(&cmyk, 1 << 20).unwrap();
        let out = render(&cmyk, &header, &target(12, 8, OutputFormat::Png), 1 << 20).unwrap();
        let px = image::load_from_memory(&out).unwrap().to_rgb8().get_pixel(6, 4).0;
        assert!(px[0] > 200 && px[1] < 60, "CMYK falls back to the image crate: {px:?}");
    }

    #[test]
    fn a_corrupt_jpeg_is_an_error_not_a_panic() {
        let bytes = jpeg(64, 64);
        let header = decode::probe(&bytes, 1 << 20).unwrap();
        let mut broken = bytes[..bytes.len() / 3].to_vec();
        broken.extend_from_slice(&[0xFF, 0xD9]);
        // libjpeg pads a truncated scan (a grey image); the image path may refuse it. Either is fine, a panic is not.
        let _ = render(&broken, &header, &target(16, 16, OutputFormat::Png), 1 << 20);
        let garbage = [0xFF, 0xD8, 0xFF, 0x00, 0x01, 0x02];
        assert!(render(&garbage, &header, &target(16, 16, OutputFormat::Png), 1 << 20).is_err());
    }
}
