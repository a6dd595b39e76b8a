//! Planar `f32` pixels → WebP (libwebp), JPEG or PNG bytes. No metadata is written.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::engine::Tile;
use crate::error::{Classify, ErrorClass};

/// A concrete output format (after `auto` was negotiated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Webp,
    Jpeg,
    Png,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Webp => "image/webp",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Webp => "webp",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Webp => "webp",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "webp" => Some(OutputFormat::Webp),
            "jpg" | "jpeg" => Some(OutputFormat::Jpeg),
            "png" => Some(OutputFormat::Png),
            _ => None,
        }
    }

    pub fn from_content_type(ct: &str) -> Option<Self> {
        [OutputFormat::Webp, OutputFormat::Jpeg, OutputFormat::Png].into_iter().find(|f| f.content_type() == ct)
    }

    /// WebP's hard limit is 16383 pixels per side.
    pub fn max_side(self) -> u32 {
        match self {
            OutputFormat::Webp => 16383,
            OutputFormat::Jpeg => 65535,
            OutputFormat::Png => u32::MAX,
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum EncodeError {
    #[error("{format} output is limited to {max} pixels per side; the result is {width}x{height}")]
    TooLarge { format: &'static str, max: u32, width: u32, height: u32 },
    #[error("encoder failed: {0}")]
    Failed(String),
}

impl Classify for EncodeError {
    fn class(&self) -> ErrorClass {
        match self {
            EncodeError::TooLarge { .. } => ErrorClass::TooLarge,
            EncodeError::Failed(_) => ErrorClass::Internal,
        }
    }
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Interleaves planes into 8-bit RGB or RGBA.
fn interleave(rgb: &Tile, alpha: Option<&[f32]>) -> Vec<u8> {
    let n = rgb.plane_len();
    let ch = if alpha.is_some() { 4 } else { 3 };
    let mut out = vec![0u8; n * ch];
    for i in 0..n {
        out[i * ch] = to_u8(rgb.data[i]);
        out[i * ch + 1] = to_u8(rgb.data[n + i]);
        out[i * ch + 2] = to_u8(rgb.data[2 * n + i]);
        if let Some(a) = alpha {
            out[i * ch + 3] = to_u8(a[i]);
        }
    }
    out
}

/// Encodes. JPEG has no alpha: transparent pixels are composited over white.
pub fn encode(rgb: &Tile, alpha: Option<&[f32]>, format: OutputFormat, quality: u8) -> Result<Vec<u8>, EncodeError> {
    let (w, h) = rgb.shape();
    check_sides(w, h, format)?;
    match (format, alpha) {
        (OutputFormat::Jpeg, Some(a)) => {
            let n = rgb.plane_len();
            let mut data = rgb.data.clone();
            for c in 0..3 {
                for i in 0..n {
                    data[c * n + i] = data[c * n + i] * a[i] + (1.0 - a[i]);
                }
            }
            encode_rgb8(&interleave(&Tile::new(w, h, data), None), w, h, format, quality)
        }
        (_, Some(_)) => encode_interleaved(&interleave(rgb, alpha), w, h, true, format, quality),
        (_, None) => encode_rgb8(&interleave(rgb, None), w, h, format, quality),
    }
}

/// Encodes interleaved 8-bit RGB.
pub fn encode_rgb8(px: &[u8], w: u32, h: u32, format: OutputFormat, quality: u8) -> Result<Vec<u8>, EncodeError> {
    check_sides(w, h, format)?;
    encode_interleaved(px, w, h, false, format, quality)
}

fn check_sides(w: u32, h: u32, format: OutputFormat) -> Result<(), EncodeError> {
    // The plan refuses these before any work; this is the last line of defence.
    if w > format.max_side() || h > format.max_side() {
        return Err(EncodeError::TooLarge { format: format.as_str(), max: format.max_side(), width: w, height: h });
    }
    Ok(())
}

/// RGB8 or (with `alpha`) RGBA8 pixels into `format`; JPEG takes RGB8 only.
fn encode_interleaved(px: &[u8], w: u32, h: u32, alpha: bool, format: OutputFormat, quality: u8) -> Result<Vec<u8>, EncodeError> {
    let color = if alpha { ExtendedColorType::Rgba8 } else { ExtendedColorType::Rgb8 };
    let mut out = Cursor::new(Vec::new());
    match format {
        OutputFormat::Webp => {
            let enc = if alpha { webp::Encoder::from_rgba(px, w, h) } else { webp::Encoder::from_rgb(px, w, h) };
            let mem = enc.encode_simple(false, quality as f32).map_err(|e| EncodeError::Failed(format!("{e:?}")))?;
            return Ok(mem.to_vec());
        }
        OutputFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, quality)
            .write_image(px, w, h, color)
            .map_err(|e| EncodeError::Failed(e.to_string()))?,
        OutputFormat::Png => PngEncoder::new(&mut out).write_image(px, w, h, color).map_err(|e| EncodeError::Failed(e.to_string()))?,
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_the_decoder() {
        let rgb = Tile::new(5, 3, vec![0.5; 45]);
        for f in [OutputFormat::Webp, OutputFormat::Jpeg, OutputFormat::Png] {
            let bytes = encode(&rgb, None, f, 90).unwrap();
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!((img.width(), img.height()), (5, 3), "{f:?}");
            let px = img.to_rgb8().get_pixel(2, 1).0;
            assert!(px.iter().all(|&v| (v as i32 - 128).abs() <= 3), "{f:?}: {px:?}");
        }
    }

    #[test]
    fn alpha_survives_png_and_webp() {
        let rgb = Tile::new(2, 1, vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let alpha = [0.0, 1.0];
        for f in [OutputFormat::Png, OutputFormat::Webp] {
            let img = image::load_from_memory(&encode(&rgb, Some(&alpha), f, 100).unwrap()).unwrap().to_rgba8();
            assert_eq!(img.get_pixel(0, 0).0[3], 0, "{f:?}");
            assert_eq!(img.get_pixel(1, 0).0[3], 255, "{f:?}");
        }
    }

    #[test]
    fn webp_side_limit_is_a_clear_error() {
        let rgb = Tile::new(16384, 1, vec![0.0; 3 * 16384]);
        assert_eq!(encode(&rgb, None, OutputFormat::Webp, 80).unwrap_err().class(), ErrorClass::TooLarge);
    }
}
