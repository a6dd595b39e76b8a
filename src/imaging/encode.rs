//! Planar `f32` pixels → AVIF (rav1e, `avif.rs`), WebP (libwebp), JPEG (mozjpeg, `jpeg.rs`) or
//! PNG bytes. Outputs are sRGB and carry no metadata but what `metadata::Tags` says: by default
//! only the sRGB marks that cost a few bytes (PNG `sRGB` chunk, AVIF `nclx`), with
//! `[output]` switches a kept wide-gamut profile and the source's copyright fields.

use std::io::Cursor;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::metadata::{self, Keep, Tags};
use super::{avif, jpeg};
use crate::engine::Tile;
use crate::error::{Classify, ErrorClass};

/// A concrete output format (after `auto` was negotiated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Avif,
    Webp,
    Jpeg,
    Png,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 4] = [OutputFormat::Avif, OutputFormat::Webp, OutputFormat::Jpeg, OutputFormat::Png];

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Avif => "image/avif",
            OutputFormat::Webp => "image/webp",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Avif => "avif",
            OutputFormat::Webp => "webp",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Avif => "avif",
            OutputFormat::Webp => "webp",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "avif" => Some(OutputFormat::Avif),
            "webp" => Some(OutputFormat::Webp),
            "jpg" | "jpeg" => Some(OutputFormat::Jpeg),
            "png" => Some(OutputFormat::Png),
            _ => None,
        }
    }

    pub fn from_content_type(ct: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.content_type() == ct)
    }

    /// WebP's hard limit is 16383 pixels per side; AVIF's is AV1's highest level's frame width
    /// (larger AVIF images would need grids, which upres does not write).
    pub fn max_side(self) -> u32 {
        match self {
            OutputFormat::Avif => 16384,
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

/// What the encoder is told: the format, its quality, and the settings that change its bytes
/// (part of the result key through `Plan::canonical`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Encoding {
    pub format: OutputFormat,
    /// 1..=100 (PNG ignores it).
    pub quality: u8,
    /// rav1e's speed preset for AVIF (`avif::SPEEDS`).
    pub avif_speed: u8,
    /// What the output keeps of the source's metadata.
    pub keep: Keep,
}

impl Encoding {
    /// The defaults of `[output]` for `format` (tests and tools).
    pub fn new(format: OutputFormat, quality: u8) -> Self {
        Encoding { format, quality, avif_speed: DEFAULT_AVIF_SPEED, keep: Keep::default() }
    }
}

/// Chosen with `encode-bench` (docs/benchmarks.md, README "Formats"): rav1e's fastest speed
/// (upres's tuning of it; the others cost 4 to 5 times more on two cores), at a quality whose
/// SSIM is at least WebP's at its default 82, with a fifth fewer bytes.
pub const DEFAULT_AVIF_SPEED: u8 = 10;
pub const DEFAULT_AVIF_QUALITY: u8 = 55;

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

/// Encodes an untagged (sRGB) output. JPEG has no alpha: transparent pixels are composited over
/// white.
pub fn encode(rgb: &Tile, alpha: Option<&[f32]>, enc: &Encoding) -> Result<Vec<u8>, EncodeError> {
    encode_tagged(rgb, alpha, enc, &Tags::default())
}

/// `encode`, with `tags` (a kept profile, copyright fields) written into the file.
pub fn encode_tagged(rgb: &Tile, alpha: Option<&[f32]>, enc: &Encoding, tags: &Tags) -> Result<Vec<u8>, EncodeError> {
    let (w, h) = rgb.shape();
    check_sides(w, h, enc.format)?;
    match (enc.format, alpha) {
        (OutputFormat::Jpeg, Some(a)) => {
            let n = rgb.plane_len();
            let mut data = rgb.data.clone();
            for c in 0..3 {
                for i in 0..n {
                    data[c * n + i] = data[c * n + i] * a[i] + (1.0 - a[i]);
                }
            }
            encode_interleaved(&interleave(&Tile::new(w, h, data), None), (w, h), false, enc, tags)
        }
        (_, Some(_)) => encode_interleaved(&interleave(rgb, alpha), (w, h), true, enc, tags),
        (_, None) => encode_interleaved(&interleave(rgb, None), (w, h), false, enc, tags),
    }
}

/// Encodes interleaved 8-bit RGB, untagged (sRGB).
pub fn encode_rgb8(px: &[u8], w: u32, h: u32, enc: &Encoding) -> Result<Vec<u8>, EncodeError> {
    encode_rgb8_tagged(px, w, h, enc, &Tags::default())
}

/// `encode_rgb8` with `tags` written into the file.
pub fn encode_rgb8_tagged(px: &[u8], w: u32, h: u32, enc: &Encoding, tags: &Tags) -> Result<Vec<u8>, EncodeError> {
    check_sides(w, h, enc.format)?;
    encode_interleaved(px, (w, h), false, enc, tags)
}

fn check_sides(w: u32, h: u32, format: OutputFormat) -> Result<(), EncodeError> {
    // The plan refuses these before any work; this is the last line of defence.
    if w > format.max_side() || h > format.max_side() {
        return Err(EncodeError::TooLarge { format: format.as_str(), max: format.max_side(), width: w, height: h });
    }
    Ok(())
}

/// RGB8 or (with `alpha`) RGBA8 pixels into `format`, then `tags` into its container; JPEG takes
/// RGB8 only.
fn encode_interleaved(px: &[u8], (w, h): (u32, u32), alpha: bool, enc: &Encoding, tags: &Tags) -> Result<Vec<u8>, EncodeError> {
    let quality = enc.quality;
    let file = match enc.format {
        OutputFormat::Avif => {
            // AVIF carries no ICC profile here (the plan never keeps one for it): sRGB `nclx`.
            avif::encode(px, w, h, alpha, avif::Settings { quality, speed: enc.avif_speed, depth: avif::DEPTH, chroma: avif::CHROMA }, tags.exif.as_deref()).map_err(|e| EncodeError::Failed(format!("avif: {e}")))?
        }
        OutputFormat::Webp => {
            let enc = if alpha { webp::Encoder::from_rgba(px, w, h) } else { webp::Encoder::from_rgb(px, w, h) };
            let mem = enc.encode_simple(false, quality as f32).map_err(|e| EncodeError::Failed(format!("{e:?}")))?;
            mem.to_vec()
        }
        OutputFormat::Jpeg => jpeg::encode(px, w, h, quality, tags.icc.as_deref()).map_err(EncodeError::Failed)?,
        OutputFormat::Png => {
            let color = if alpha { ExtendedColorType::Rgba8 } else { ExtendedColorType::Rgb8 };
            let mut out = Cursor::new(Vec::new());
            PngEncoder::new(&mut out).write_image(px, w, h, color).map_err(|e| EncodeError::Failed(e.to_string()))?;
            out.into_inner()
        }
    };
    Ok(metadata::attach(file, w, h, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_the_decoder() {
        let rgb = Tile::new(5, 3, vec![0.5; 45]);
        for f in [OutputFormat::Webp, OutputFormat::Jpeg, OutputFormat::Png] {
            let bytes = encode(&rgb, None, &Encoding::new(f, 90)).unwrap();
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
            let img = image::load_from_memory(&encode(&rgb, Some(&alpha), &Encoding::new(f, 100)).unwrap()).unwrap().to_rgba8();
            assert_eq!(img.get_pixel(0, 0).0[3], 0, "{f:?}");
            assert_eq!(img.get_pixel(1, 0).0[3], 255, "{f:?}");
        }
    }

    /// The AVIF decoded by libavif's `avifdec` (Debian `libavif-bin`, installed by
    /// scripts/install-test-tools.sh) as RGBA8; `None` (said why) where it is missing.
    fn avifdec(bytes: &[u8]) -> Option<image::RgbaImage> {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("in.avif"), dir.path().join("out.png"));
        std::fs::write(&src, bytes).unwrap();
        match std::process::Command::new("avifdec").arg(&src).arg(&dst).output() {
            Ok(o) => assert!(o.status.success(), "avifdec: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                eprintln!("skipping the AVIF pixel check: avifdec not runnable ({e}); scripts/install-test-tools.sh installs it");
                return None;
            }
        }
        Some(image::open(&dst).unwrap().to_rgba8())
    }

    #[test]
    fn avif_is_an_avif_file_with_the_pixels_and_alpha() {
        // A left-right gradient, the right half transparent.
        let (w, h) = (64u32, 32u32);
        let n = (w * h) as usize;
        let mut data = vec![0.0f32; 3 * n];
        let mut alpha = vec![1.0f32; n];
        for i in 0..n {
            let x = (i as u32 % w) as f32 / (w - 1) as f32;
            data[i] = x;
            data[n + i] = 1.0 - x;
            data[2 * n + i] = 0.5;
            if i as u32 % w >= w / 2 {
                alpha[i] = 0.0;
            }
        }
        let rgb = Tile::new(w, h, data);
        for alpha in [None, Some(&alpha[..])] {
            let bytes = encode(&rgb, alpha, &Encoding::new(OutputFormat::Avif, 80)).unwrap();
            assert_eq!(&bytes[4..12], b"ftypavif", "an AVIF file");
            let Some(img) = avifdec(&bytes) else { return };
            assert_eq!(img.dimensions(), (w, h));
            let left = img.get_pixel(4, 16).0;
            assert!((left[0] as i32 - 16).abs() <= 8 && (left[1] as i32 - 239).abs() <= 8, "{left:?}");
            assert_eq!(left[3], 255);
            assert_eq!(img.get_pixel(60, 16).0[3], if alpha.is_some() { 0 } else { 255 });
        }
    }

    #[test]
    fn avif_at_odd_sizes_keeps_every_pixel_and_the_colour() {
        // 4:2:0 at odd sizes: the last chroma column and row cover one pixel each.
        for (w, h) in [(33u32, 17u32), (1, 1), (3, 2)] {
            let n = (w * h) as usize;
            let data: Vec<f32> = [0.8f32, 0.2, 0.4].iter().flat_map(|&v| std::iter::repeat_n(v, n)).collect();
            let alpha = vec![1.0f32; n];
            let bytes = encode(&Tile::new(w, h, data), Some(&alpha), &Encoding::new(OutputFormat::Avif, DEFAULT_AVIF_QUALITY)).unwrap();
            let Some(img) = avifdec(&bytes) else { return };
            assert_eq!(img.dimensions(), (w, h));
            let corner = img.get_pixel(w - 1, h - 1).0;
            for (got, want) in corner.iter().zip([204, 51, 102, 255]) {
                assert!((*got as i32 - want).abs() <= 6, "{w}x{h}: {corner:?}");
            }
        }
    }

    #[test]
    fn jpeg_is_progressive_with_optimised_tables_and_smaller_than_baseline() {
        // A colour gradient with a texture in lightness only, 64x48: the texture is what costs
        // bytes, and 4:2:0 chroma (half resolution) can hold the smooth colour.
        let (w, h) = (64u32, 48u32);
        let px: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let t = ((x * x + 3 * y) % 24) as i32 - 12;
                [x * 4, y * 5, 128].map(|v| (v as i32 + t).clamp(0, 255) as u8)
            })
            .collect();
        let ours = encode_rgb8(&px, w, h, &Encoding::new(OutputFormat::Jpeg, 85)).unwrap();
        // SOF2 (progressive DCT) and no SOF0 (baseline).
        assert!(ours.windows(2).any(|m| m == [0xFF, 0xC2]), "progressive");
        assert!(!ours.windows(2).any(|m| m == [0xFF, 0xC0]), "not baseline");
        let mut baseline = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut baseline, 85).write_image(&px, w, h, ExtendedColorType::Rgb8).unwrap();
        assert!(ours.len() < baseline.len(), "{} >= {}", ours.len(), baseline.len());
        let back = image::load_from_memory(&ours).unwrap().to_rgb8();
        let errs: Vec<i32> = back.as_raw().iter().zip(&px).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let (max, mean) = (*errs.iter().max().unwrap(), errs.iter().sum::<i32>() as f64 / errs.len() as f64);
        assert!(max < 40 && mean < 4.0, "max error {max}, mean {mean:.2}");
    }

    #[test]
    fn webp_side_limit_is_a_clear_error() {
        let rgb = Tile::new(16384, 1, vec![0.0; 3 * 16384]);
        assert_eq!(encode(&rgb, None, &Encoding::new(OutputFormat::Webp, 80)).unwrap_err().class(), ErrorClass::TooLarge);
        let rgb = Tile::new(16385, 1, vec![0.0; 3 * 16385]);
        assert_eq!(encode(&rgb, None, &Encoding::new(OutputFormat::Avif, 80)).unwrap_err().class(), ErrorClass::TooLarge);
    }
}
