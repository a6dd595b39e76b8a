//! Colour management: a source's embedded ICC profile (JPEG APP2, PNG iCCP, WebP ICCP) is applied
//! once, right after decoding, so the model, the resize and the encoder all see sRGB, which is
//! what an untagged output means to every browser. moxcms (pure Rust, already in the tree
//! through the `image` crate) does the conversion: matrix/TRC profiles (Display P3, Adobe RGB,
//! ProPhoto…) and LUT profiles (CMYK), relative colorimetric with black-point compensation off.
//!
//! A profile moxcms cannot read or cannot transform is ignored (the pixels are used as they are,
//! as browsers do with a broken profile): colour is never a reason to refuse an image.

use image::{DynamicImage, ImageBuffer};
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

/// ICC profiles larger than this are ignored (real ones are a few KB; CMYK LUT profiles up to
/// about 1 MB).
pub const MAX_PROFILE_BYTES: usize = 4 << 20;

/// The profile, when it parses and describes RGB or CMYK data.
fn parse(icc: &[u8]) -> Option<ColorProfile> {
    if icc.is_empty() || icc.len() > MAX_PROFILE_BYTES {
        return None;
    }
    match ColorProfile::new_from_slice(icc) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring an unreadable ICC profile");
            None
        }
    }
}

/// Whether the profile maps RGB to sRGB as the identity (an sRGB profile, in whatever
/// encoding): probe colours across the cube come back within one step, so converting would only
/// round.
fn is_srgb(p: &ColorProfile) -> bool {
    let Ok(t) = p.create_transform_8bit(Layout::Rgb, &ColorProfile::new_srgb(), Layout::Rgb, TransformOptions::default()) else {
        return false;
    };
    let steps = [0u8, 37, 90, 128, 171, 213, 255];
    let mut probe = Vec::with_capacity(3 * steps.len().pow(3));
    for r in steps {
        for g in steps {
            for b in steps {
                probe.extend_from_slice(&[r, g, b]);
            }
        }
    }
    let mut out = vec![0u8; probe.len()];
    t.transform(&probe, &mut out).is_ok() && probe.iter().zip(&out).all(|(a, b)| a.abs_diff(*b) <= 1)
}

/// Whether `icc` is a readable RGB profile other than sRGB (Display P3, Adobe RGB…): the
/// profiles `output.keep_wide_gamut` keeps instead of converting.
pub fn is_wide_rgb(icc: &[u8]) -> bool {
    parse(icc).is_some_and(|p| p.color_space == DataColorSpace::Rgb && !is_srgb(&p))
}

/// `img` (RGB or RGBA, any depth) converted from `icc` to sRGB; unchanged when the profile is
/// sRGB, not RGB, unreadable or not transformable. Alpha is kept.
pub fn rgb_to_srgb(img: DynamicImage, icc: &[u8]) -> DynamicImage {
    let Some(src) = parse(icc).filter(|p| p.color_space == DataColorSpace::Rgb && !is_srgb(p)) else { return img };
    let dst = ColorProfile::new_srgb();
    let opts = TransformOptions::default();
    let (w, h) = (img.width(), img.height());
    let converted = match img {
        DynamicImage::ImageRgb8(ref px) => src.create_transform_8bit(Layout::Rgb, &dst, Layout::Rgb, opts).ok().and_then(|t| {
            let mut out = vec![0u8; px.len()];
            t.transform(px, &mut out).ok()?;
            ImageBuffer::from_raw(w, h, out).map(DynamicImage::ImageRgb8)
        }),
        DynamicImage::ImageRgba8(ref px) => src.create_transform_8bit(Layout::Rgba, &dst, Layout::Rgba, opts).ok().and_then(|t| {
            let mut out = vec![0u8; px.len()];
            t.transform(px, &mut out).ok()?;
            ImageBuffer::from_raw(w, h, out).map(DynamicImage::ImageRgba8)
        }),
        DynamicImage::ImageRgb16(ref px) => src.create_transform_16bit(Layout::Rgb, &dst, Layout::Rgb, opts).ok().and_then(|t| {
            let mut out = vec![0u16; px.len()];
            t.transform(px, &mut out).ok()?;
            ImageBuffer::from_raw(w, h, out).map(DynamicImage::ImageRgb16)
        }),
        DynamicImage::ImageRgba16(ref px) => src.create_transform_16bit(Layout::Rgba, &dst, Layout::Rgba, opts).ok().and_then(|t| {
            let mut out = vec![0u16; px.len()];
            t.transform(px, &mut out).ok()?;
            ImageBuffer::from_raw(w, h, out).map(DynamicImage::ImageRgba16)
        }),
        // Grey and float images: a grey profile's curve is close to sRGB's; left as they are.
        _ => None,
    };
    match converted {
        Some(c) => c,
        None => {
            tracing::debug!("ICC profile not applied (no transform for this profile and pixel layout)");
            img
        }
    }
}

/// CMYK samples (4 bytes a pixel, 0 = no ink) through a CMYK `icc` into sRGB RGB8; `None` when
/// the profile is not a usable CMYK profile.
pub fn cmyk_to_srgb(cmyk: &[u8], icc: &[u8]) -> Option<Vec<u8>> {
    let src = parse(icc).filter(|p| p.color_space == DataColorSpace::Cmyk)?;
    let t = src.create_transform_8bit(Layout::Rgba, &ColorProfile::new_srgb(), Layout::Rgb, TransformOptions::default()).ok()?;
    let mut out = vec![0u8; cmyk.len() / 4 * 3];
    t.transform(cmyk, &mut out).ok()?;
    Some(out)
}
