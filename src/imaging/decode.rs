//! Bytes → planar `f32` pixels, with limits checked from the header before any pixel is decoded.
//!
//! Accepts JPEG (including grayscale and CMYK), PNG (8/16-bit, palette, alpha), WebP and GIF
//! (first frame). Applies the EXIF orientation and the embedded ICC profile (`colour.rs`: the
//! pixels become sRGB unless `[output] keep_wide_gamut` keeps a wide-gamut profile; a CMYK JPEG
//! goes through its profile), drops every other piece of metadata except the rights fields
//! `[output] keep_copyright` asks for (the result is re-encoded from pixels), and splits alpha
//! off so the engine sees RGB only.
//!
//! Memory is bounded before the first byte is read: the decoder's allocation limit comes from
//! the pixel limit, and PNG's compressed metadata chunks (an ICC profile or text that inflates
//! to gigabytes from a few megabytes) are cut out of the bytes before any decoder sees them;
//! the ICC profile is read by `metadata.rs`, bounded by `colour::MAX_PROFILE_BYTES`.

use std::borrow::Cow;
use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::metadata::{Keep, Tags, PNG_SIGNATURE};
use super::{colour, metadata};
use crate::engine::Tile;
use crate::error::{Classify, ErrorClass};

/// What the header says, oriented (a 90° EXIF rotation swaps width and height).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// The pixel format has an alpha channel (it may still be fully opaque).
    pub has_alpha: bool,
    /// EXIF orientation, applied by every decode here.
    pub orientation: Orientation,
}

/// A decoded image: RGB planes and an optional alpha plane, values in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub rgb: Tile,
    /// `None` when the image has no alpha channel or every pixel is opaque.
    pub alpha: Option<Vec<f32>>,
    /// What the output carries of the source (`metadata::Keep`); empty by default.
    pub tags: Tags,
}

#[derive(thiserror::Error, Debug)]
pub enum DecodeError {
    #[error("the source is empty")]
    Empty,
    #[error("the source is not an image in a supported format (JPEG, PNG, WebP, GIF)")]
    NotAnImage,
    #[error("{0:?} images are not supported; use JPEG, PNG, WebP or GIF")]
    UnsupportedFormat(ImageFormat),
    #[error("the image is {width}x{height} = {pixels} pixels, over the limit of {limit}")]
    TooManyPixels { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("the image has a zero dimension")]
    ZeroSize,
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
}

impl Classify for DecodeError {
    fn class(&self) -> ErrorClass {
        match self {
            DecodeError::Empty | DecodeError::NotAnImage | DecodeError::UnsupportedFormat(_) => ErrorClass::Unsupported,
            DecodeError::TooManyPixels { .. } => ErrorClass::TooLarge,
            DecodeError::ZeroSize | DecodeError::Corrupt(_) => ErrorClass::Unprocessable,
        }
    }
}

const SUPPORTED: [ImageFormat; 4] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif];

/// A reader with its limits set before it reads anything: no buffer beyond what `max_pixels`
/// of 16-bit RGBA need, and PNG metadata chunks removed (`without_png_metadata`; the ICC
/// profile is read, bounded, by `metadata.rs`).
fn reader(bytes: &[u8], max_pixels: u64) -> Result<(ImageReader<Cursor<Cow<'_, [u8]>>>, ImageFormat), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    // Content sniffing only: the source's name or Content-Type never decides the decoder.
    let format = image::guess_format(bytes).map_err(|_| DecodeError::NotAnImage)?;
    if !SUPPORTED.contains(&format) {
        return Err(DecodeError::UnsupportedFormat(format));
    }
    let bytes = if format == ImageFormat::Png { without_png_metadata(bytes) } else { Cow::Borrowed(bytes) };
    let mut r = ImageReader::with_format(Cursor::new(bytes), format);
    r.limits(limits(max_pixels));
    Ok((r, format))
}

/// 16-bit RGBA is the widest buffer a decoder makes: 8 bytes per pixel, plus slack for its
/// working buffers.
fn limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

/// PNG chunks upres never uses whose content a decoder would inflate or keep: the ICC profile
/// (`iCCP`, zlib) and text (`zTXt`, `iTXt` possibly zlib, `tEXt`). A 3 MB `iCCP` inflates to
/// 3 GB. `eXIf` (orientation) stays.
const DROPPED_PNG_CHUNKS: [&[u8; 4]; 4] = [b"iCCP", b"zTXt", b"iTXt", b"tEXt"];

/// The PNG without its `DROPPED_PNG_CHUNKS`; borrowed when it has none. Chunks are walked by
/// their length fields only, as the decoder walks them: from the first chunk that does not fit
/// the rest is kept as it is, so the decoder fails there just as it would have.
fn without_png_metadata(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Cow::Borrowed(bytes);
    }
    let mut kept: Option<Vec<u8>> = None;
    let mut pos = PNG_SIGNATURE.len();
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        // length, type, data, CRC
        let Some(end) = len.checked_add(12).and_then(|n| n.checked_add(pos)).filter(|&e| e <= bytes.len()) else { break };
        if DROPPED_PNG_CHUNKS.iter().any(|d| d[..] == *kind) {
            kept.get_or_insert_with(|| bytes[..pos].to_vec());
        } else if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&bytes[pos..end]);
        }
        pos = end;
        if kind == b"IEND" {
            break;
        }
    }
    match kept {
        None => Cow::Borrowed(bytes),
        Some(mut k) => {
            k.extend_from_slice(&bytes[pos..]);
            Cow::Owned(k)
        }
    }
}

fn check_pixels(width: u32, height: u32, limit: u64) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize);
    }
    let pixels = width as u64 * height as u64;
    if pixels > limit {
        return Err(DecodeError::TooManyPixels { width, height, pixels, limit });
    }
    Ok(())
}

fn corrupt(e: image::ImageError) -> DecodeError {
    DecodeError::Corrupt(e.to_string())
}

/// The media type of image bytes, sniffed from their content (never from a name); `None` when
/// they are not an image format upres reads.
pub fn sniff_media_type(bytes: &[u8]) -> Option<&'static str> {
    let format = image::guess_format(bytes).ok().filter(|f| SUPPORTED.contains(f))?;
    Some(format.to_mime_type())
}

/// Reads only the header: format and oriented dimensions, limit-checked.
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<Header, DecodeError> {
    let (r, format) = reader(bytes, max_pixels)?;
    let mut decoder = r.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = if swaps_axes(orientation) { (h, w) } else { (w, h) };
    Ok(Header { format, width, height, has_alpha: decoder.color_type().has_alpha(), orientation })
}

fn swaps_axes(o: Orientation) -> bool {
    use Orientation::*;
    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// Decodes fully. The pixel limit is checked from the header first, and the decoder's own
/// allocation limit is set from it, so a decompression bomb is refused before allocating.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    decode_keeping(bytes, max_pixels, Keep::default())
}

/// `decode`, keeping what `keep` says of the source's metadata in `Decoded::tags` (a kept
/// wide-gamut profile is not converted from).
pub fn decode_keeping(bytes: &[u8], max_pixels: u64, keep: Keep) -> Result<Decoded, DecodeError> {
    let found = metadata::for_output(bytes, keep);
    let img = decode_image(bytes, max_pixels, found.convert_from.as_deref())?;
    Ok(Decoded { tags: found.tags, ..split(img) })
}

/// Decodes to oriented 8-bit RGB (alpha dropped), for the resize-only path.
/// `icc` is the profile to convert from (`metadata::for_output`).
pub fn decode_rgb8(bytes: &[u8], max_pixels: u64, icc: Option<&[u8]>) -> Result<RgbImage, DecodeError> {
    Ok(match decode_image(bytes, max_pixels, icc)? {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Decodes and converts from `icc` (the embedded profile, unless it is sRGB or kept) to sRGB.
fn decode_image(bytes: &[u8], max_pixels: u64, icc: Option<&[u8]>) -> Result<DynamicImage, DecodeError> {
    let (r, format) = reader(bytes, max_pixels)?;
    let mut decoder = r.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // A CMYK JPEG's inks go through its profile (the `image` decoder reports CMYK as RGB, so
    // libjpeg's header decides, in `cmyk_jpeg_to_srgb`).
    let cmyk = match icc {
        Some(icc) if format == ImageFormat::Jpeg => cmyk_jpeg_to_srgb(bytes, icc),
        _ => None,
    };
    let mut img = match (cmyk, icc) {
        (Some(rgb), _) => DynamicImage::ImageRgb8(rgb),
        (None, Some(icc)) => colour::rgb_to_srgb(DynamicImage::from_decoder(decoder).map_err(corrupt)?, icc),
        (None, None) => DynamicImage::from_decoder(decoder).map_err(corrupt)?,
    };
    img.apply_orientation(orientation);
    Ok(img)
}

/// A CMYK JPEG's ink values (libjpeg, Adobe's inverted storage undone, as browsers read CMYK
/// JPEGs) through its CMYK profile; `None` where libjpeg or the profile cannot, so the `image`
/// crate's profile-less conversion decodes it instead.
fn cmyk_jpeg_to_srgb(bytes: &[u8], icc: &[u8]) -> Option<RgbImage> {
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<Option<(u32, u32, Vec<u8>)>> {
        let dec = mozjpeg::Decompress::new_mem(bytes)?;
        if !matches!(dec.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let mut started = dec.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let px: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(Some((w, h, px)))
    });
    let (w, h, mut px) = decoded.ok()?.ok()??;
    px.iter_mut().for_each(|v| *v = 255 - *v);
    RgbImage::from_raw(w, h, colour::cmyk_to_srgb(&px, icc)?)
}

fn split(img: DynamicImage) -> Decoded {
    let (w, h) = (img.width(), img.height());
    let n = (w * h) as usize;
    if img.color().has_alpha() {
        let rgba = img.to_rgba32f();
        let mut data = vec![0f32; 3 * n];
        let mut alpha = vec![0f32; n];
        for (i, px) in rgba.pixels().enumerate() {
            data[i] = px[0];
            data[n + i] = px[1];
            data[2 * n + i] = px[2];
            alpha[i] = px[3];
        }
        let opaque = alpha.iter().all(|&a| a >= 1.0);
        Decoded { rgb: Tile::new(w, h, data), alpha: (!opaque).then_some(alpha), tags: Tags::default() }
    } else {
        let rgb = img.to_rgb32f();
        let mut data = vec![0f32; 3 * n];
        for (i, px) in rgb.pixels().enumerate() {
            data[i] = px[0];
            data[n + i] = px[1];
            data[2 * n + i] = px[2];
        }
        Decoded { rgb: Tile::new(w, h, data), alpha: None, tags: Tags::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgba};

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn grayscale_16_bit_becomes_rgb() {
        let img = ImageBuffer::<Luma<u16>, _>::from_fn(3, 2, |x, _| Luma([x as u16 * 30000]));
        let d = decode(&png(DynamicImage::ImageLuma16(img)), 100).unwrap();
        assert_eq!(d.rgb.shape(), (3, 2));
        assert!(d.alpha.is_none());
        let n = d.rgb.plane_len();
        assert!((d.rgb.data[1] - 30000.0 / 65535.0).abs() < 1e-4);
        assert_eq!(d.rgb.data[1], d.rgb.data[n + 1]);
    }

    #[test]
    fn alpha_is_split_off_and_opaque_alpha_dropped() {
        let img = ImageBuffer::<Rgba<u8>, _>::from_fn(2, 2, |x, _| Rgba([255, 0, 0, if x == 0 { 0 } else { 255 }]));
        let d = decode(&png(DynamicImage::ImageRgba8(img)), 100).unwrap();
        assert_eq!(d.alpha.as_deref(), Some(&[0.0, 1.0, 0.0, 1.0][..]));
        let opaque = ImageBuffer::<Rgba<u8>, _>::from_pixel(2, 2, Rgba([1, 2, 3, 255]));
        assert!(decode(&png(DynamicImage::ImageRgba8(opaque)), 100).unwrap().alpha.is_none());
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let img = DynamicImage::new_rgb8(100, 100);
        let bytes = png(img);
        assert!(matches!(probe(&bytes, 9_999), Err(DecodeError::TooManyPixels { pixels: 10_000, .. })));
        assert!(matches!(decode(&bytes, 9_999), Err(DecodeError::TooManyPixels { .. })));
        assert_eq!(probe(&bytes, 10_000).unwrap().width, 100);
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/images/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// RGB of pixel (x, y) as 8-bit.
    fn px(d: &Decoded, x: u32, y: u32) -> [u8; 3] {
        let i = (y * d.rgb.width + x) as usize;
        let n = d.rgb.plane_len();
        [0, 1, 2].map(|c| (d.rgb.data[c * n + i] * 255.0).round() as u8)
    }

    #[test]
    fn cmyk_jpeg_becomes_rgb() {
        let d = decode(&fixture("cmyk.jpg"), 1 << 20).unwrap();
        assert_eq!(d.rgb.shape(), (24, 16));
        let [r, g, b] = px(&d, 12, 8);
        assert!(r > 200 && g < 60 && b < 60, "CMYK (0,255,255,0) is red, got {r},{g},{b}");
    }

    /// sRGB 8-bit → CIE Lab (D65), for ΔE.
    fn lab(rgb: [f64; 3]) -> [f64; 3] {
        let lin = rgb.map(|v| {
            let v = v / 255.0;
            if v <= 0.04045 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
        });
        let m = rgb_to_xyz([(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)]);
        let xyz = mul(&m, lin);
        let white = mul(&m, [1.0; 3]);
        let f = |t: f64| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
        let [fx, fy, fz] = [0, 1, 2].map(|i| f(xyz[i] / white[i]));
        [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
    }

    fn mul(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
        [0, 1, 2].map(|r| (0..3).map(|c| m[r][c] * v[c]).sum())
    }

    /// The RGB → XYZ matrix of primaries (x, y) with the D65 white, by the textbook construction.
    fn rgb_to_xyz(primaries: [(f64, f64); 3]) -> [[f64; 3]; 3] {
        let cols = primaries.map(|(x, y)| [x / y, 1.0, (1.0 - x - y) / y]);
        let p = [[cols[0][0], cols[1][0], cols[2][0]], [1.0, 1.0, 1.0], [cols[0][2], cols[1][2], cols[2][2]]];
        let w = [0.3127 / 0.3290, 1.0, (1.0 - 0.3127 - 0.3290) / 0.3290];
        let s = mul(&invert(&p), w);
        [0, 1, 2].map(|r| [0, 1, 2].map(|c| p[r][c] * s[c]))
    }

    fn invert(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
        let [[a, b, c], [d, e, f], [g, h, i]] = *m;
        let det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
        [
            [(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
            [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
            [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det],
        ]
    }

    /// Display P3 8-bit → sRGB 8-bit from the two spaces' primaries (same white, same transfer
    /// curve), clipped: the reference conversion, independent of any colour library.
    pub(crate) fn p3_to_srgb(p3: [u8; 3]) -> [f64; 3] {
        let srgb_to_xyz = rgb_to_xyz([(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)]);
        let p3_to_xyz = rgb_to_xyz([(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)]);
        let lin = p3.map(|v| {
            let v = v as f64 / 255.0;
            if v <= 0.04045 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
        });
        let out = mul(&invert(&srgb_to_xyz), mul(&p3_to_xyz, lin));
        out.map(|v| {
            let v = v.clamp(0.0, 1.0);
            255.0 * if v <= 0.0031308 { 12.92 * v } else { 1.055 * v.powf(1.0 / 2.4) - 0.055 }
        })
    }

    pub(crate) fn delta_e(a: [f64; 3], b: [f64; 3]) -> f64 {
        let (la, lb) = (lab(a), lab(b));
        (0..3).map(|i| (la[i] - lb[i]).powi(2)).sum::<f64>().sqrt()
    }

    /// A 32×16 JPEG in Display P3 (its profile embedded): left half P3 red, right half an
    /// in-gamut orange.
    pub(crate) fn display_p3_jpeg() -> Vec<u8> {
        let icc = moxcms::ColorProfile::new_display_p3().encode().unwrap();
        let px: Vec<u8> = (0..32 * 16).flat_map(|i| if i % 32 < 16 { [255, 0, 0] } else { [200, 80, 60] }).collect();
        crate::imaging::jpeg::encode(&px, 32, 16, 95, Some(&icc)).unwrap()
    }

    #[test]
    fn a_display_p3_jpeg_is_converted_to_srgb() {
        let d = decode(&display_p3_jpeg(), 1 << 20).unwrap();
        for (x, p3) in [(6, [255, 0, 0]), (26, [200, 80, 60])] {
            let got = px(&d, x, 8).map(f64::from);
            let want = p3_to_srgb(p3);
            assert!(delta_e(got, want) < 2.0, "P3 {p3:?}: got {got:?}, want {want:?}");
            // Read as if it were sRGB, the orange is far off: the test can tell.
            if x == 26 {
                assert!(delta_e(p3.map(f64::from), want) > 5.0);
            }
        }
        // The same pixels with an sRGB profile (or none) are left alone.
        let srgb = moxcms::ColorProfile::new_srgb().encode().unwrap();
        let px8: Vec<u8> = [200u8, 80, 60].repeat(64);
        let plain = crate::imaging::jpeg::encode(&px8, 8, 8, 95, None).unwrap();
        let tagged = crate::imaging::jpeg::encode(&px8, 8, 8, 95, Some(&srgb)).unwrap();
        assert_eq!(decode(&plain, 100).unwrap().rgb.data, decode(&tagged, 100).unwrap().rgb.data);
    }

    #[test]
    fn a_wide_gamut_profile_is_kept_only_when_asked() {
        let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
        let keep = Keep { profile: true, copyright: false };
        let kept = decode_keeping(&display_p3_jpeg(), 1 << 20, keep).unwrap();
        assert_eq!(kept.tags.icc.as_deref(), Some(&p3[..]));
        let got = px(&kept, 26, 8).map(f64::from);
        assert!(delta_e(got, [200.0, 80.0, 60.0]) < 2.0, "the P3 values as they are: {got:?}");
        assert_eq!(decode(&display_p3_jpeg(), 1 << 20).unwrap().tags, Tags::default());
        // An sRGB or a CMYK profile is never kept (the output is RGB in sRGB either way).
        let srgb = moxcms::ColorProfile::new_srgb().encode().unwrap();
        let tagged = crate::imaging::jpeg::encode(&[200u8, 80, 60].repeat(64), 8, 8, 95, Some(&srgb)).unwrap();
        assert_eq!(decode_keeping(&tagged, 100, keep).unwrap().tags.icc, None);
        assert_eq!(decode_keeping(&fixture("cmyk-profile.jpg"), 1 << 20, keep).unwrap().tags.icc, None);
    }

    #[test]
    fn a_corrupt_jpeg_profile_is_ignored() {
        let px8: Vec<u8> = [200u8, 80, 60].repeat(64);
        let plain = decode(&crate::imaging::jpeg::encode(&px8, 8, 8, 95, None).unwrap(), 100).unwrap();
        let mut p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
        let truncated = p3[..p3.len() / 2].to_vec();
        // Tag table offsets pointing past the end.
        p3[140..160].fill(0xFF);
        for icc in [truncated, p3, vec![0u8; 200], b"not a profile".to_vec()] {
            let bytes = crate::imaging::jpeg::encode(&px8, 8, 8, 95, Some(&icc)).unwrap();
            let d = decode_keeping(&bytes, 100, Keep { profile: true, copyright: true }).unwrap();
            assert_eq!(d.rgb.data, plain.rgb.data);
            assert_eq!(d.tags, Tags::default());
        }
    }

    #[test]
    fn a_cmyk_jpeg_with_a_profile_converts_through_it() {
        // Fixture and littlecms's reference values: scripts/make_cmyk_profile_fixture.py.
        let d = decode(&fixture("cmyk-profile.jpg"), 1 << 20).unwrap();
        let reference: serde_json::Value = serde_json::from_slice(&fixture("cmyk-profile.json")).unwrap();
        for p in reference["patches"].as_array().unwrap() {
            let xy = |k: &str| p[k].as_u64().unwrap() as u32;
            let rgb = |k: &str| -> [f64; 3] { [0, 1, 2].map(|i| p[k][i].as_f64().unwrap()) };
            let got = px(&d, xy("x"), xy("y")).map(f64::from);
            assert!(delta_e(got, rgb("srgb")) < 2.0, "CMYK {}: got {got:?}, littlecms {:?}", p["cmyk"], rgb("srgb"));
            assert!(delta_e(got, rgb("naive")) > 10.0, "the profile made a difference");
        }
    }

    #[test]
    fn a_png_icc_profile_is_applied_and_a_bad_one_ignored() {
        let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
        let plain = png(DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, image::Rgb([200, 80, 60]))));
        let mut iccp = b"Display P3\0\0".to_vec();
        iccp.extend_from_slice(&zlib(&p3));
        let tagged = with_chunks(&plain, &[chunk(b"iCCP", &iccp)]);
        let got = px(&decode(&tagged, 100).unwrap(), 1, 1).map(f64::from);
        assert!(delta_e(got, p3_to_srgb([200, 80, 60])) < 2.0, "{got:?}");
        // A profile that is not one: the pixels as they are.
        let mut junk = b"junk\0\0".to_vec();
        junk.extend_from_slice(&zlib(b"not an ICC profile"));
        let bad = with_chunks(&plain, &[chunk(b"iCCP", &junk)]);
        assert_eq!(px(&decode(&bad, 100).unwrap(), 1, 1), [200, 80, 60]);
        // A bomb: inflating stops at the cap, and the image still decodes.
        let mut bomb = b"bomb\0\0".to_vec();
        bomb.extend_from_slice(&zlib(&vec![0u8; colour::MAX_PROFILE_BYTES + 1]));
        let bombed = with_chunks(&plain, &[chunk(b"iCCP", &bomb)]);
        assert!(metadata::icc(&bombed).is_none());
        assert_eq!(px(&decode(&bombed, 100).unwrap(), 1, 1), [200, 80, 60]);
    }

    #[test]
    fn exif_orientation_is_applied_to_pixels_and_header() {
        let bytes = fixture("exif-rotate90.jpg");
        let h = probe(&bytes, 1 << 20).unwrap();
        assert_eq!((h.width, h.height), (16, 24));
        let d = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(d.rgb.shape(), (16, 24));
        // The stored left half (red) is the top half once rotated 90° clockwise.
        let top = px(&d, 8, 3);
        let bottom = px(&d, 8, 20);
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    #[test]
    fn gif_first_frame_palette_and_16_bit_fixtures_decode() {
        let g = decode(&fixture("anim.gif"), 1 << 20).unwrap();
        assert_eq!(g.rgb.shape(), (12, 8));
        assert!(px(&g, 3, 3)[0] > 200, "first frame is red");
        let p = decode(&fixture("palette.png"), 1 << 20).unwrap();
        assert_eq!(px(&p, 5, 5), [10, 20, 30]);
        let gray = decode(&fixture("gray16.png"), 1 << 20).unwrap();
        assert_eq!(gray.rgb.shape(), (20, 10));
        let a = decode(&fixture("alpha.png"), 1 << 20).unwrap();
        let alpha = a.alpha.expect("half transparent");
        assert_eq!((alpha[0], alpha[15]), (0.0, 1.0));
    }

    #[test]
    fn bad_input_is_classified() {
        assert_eq!(decode(b"", 10).unwrap_err().class(), ErrorClass::Unsupported);
        assert_eq!(decode(b"hello, world", 10).unwrap_err().class(), ErrorClass::Unsupported);
        let bytes = png(DynamicImage::new_rgb8(64, 64));
        let truncated = &bytes[..bytes.len() / 2];
        assert_eq!(decode(truncated, 1 << 20).unwrap_err().class(), ErrorClass::Unprocessable);
        // BMP is a real image format we do not accept.
        assert!(matches!(reader(b"BM\0\0\0\0\0\0\0\0\0\0\0\0", 10), Err(DecodeError::UnsupportedFormat(_))));
    }

    fn chunk(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut c = (body.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(body);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(body);
        c.extend_from_slice(&h.finalize().to_be_bytes());
        c
    }

    /// `png` with `extra` chunks inserted after IHDR (signature 8 + IHDR 25 bytes).
    fn with_chunks(png: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
        let mut out = png[..33].to_vec();
        for c in extra {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&png[33..]);
        out
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn png_metadata_chunks_are_dropped_before_decoding() {
        let img = ImageBuffer::<Rgba<u8>, _>::from_fn(5, 4, |x, y| Rgba([x as u8 * 40, y as u8 * 60, 7, 200]));
        let plain = png(DynamicImage::ImageRgba8(img));
        let profile = zlib(&vec![0u8; 1 << 20]);
        let mut iccp = b"bomb\0\0".to_vec();
        iccp.extend_from_slice(&profile);
        let mut ztxt = b"Comment\0\0".to_vec();
        ztxt.extend_from_slice(&profile);
        let mut itxt = b"XML:com.adobe.xmp\0\x01\0\0\0".to_vec();
        itxt.extend_from_slice(&profile);
        let extra = [chunk(b"iCCP", &iccp), chunk(b"zTXt", &ztxt), chunk(b"iTXt", &itxt), chunk(b"tEXt", b"k\0v")];
        let hostile = with_chunks(&plain, &extra);
        let stripped = without_png_metadata(&hostile);
        assert_eq!(&stripped[..], &plain[..], "exactly the metadata chunks are gone");
        assert!(matches!(without_png_metadata(&plain), Cow::Borrowed(_)), "no copy without metadata");
        assert_eq!(probe(&hostile, 20).unwrap(), probe(&plain, 20).unwrap());
        assert_eq!(decode(&hostile, 20).unwrap().rgb.data, decode(&plain, 20).unwrap().rgb.data);
    }

    #[test]
    fn malformed_png_chunk_framing_is_left_to_the_decoder() {
        let plain = png(DynamicImage::new_rgb8(3, 3));
        // A metadata chunk, then a chunk whose length runs past the end: the first goes, and
        // from the second on everything stays byte for byte, so the decoder fails there as before.
        let runaway = [0xff, 0xff, 0xff, 0xf0, b'i', b'C', b'C', b'P', 1, 2, 3];
        let mut bad = plain[..33].to_vec();
        bad.extend_from_slice(&chunk(b"tEXt", b"k\0v"));
        bad.extend_from_slice(&runaway);
        bad.extend_from_slice(&plain[33..]);
        let want = [&plain[..33], &runaway[..], &plain[33..]].concat();
        assert_eq!(&without_png_metadata(&bad)[..], &want[..]);
        assert_eq!(decode(&bad, 100).unwrap_err().class(), ErrorClass::Unprocessable);
        // Truncated inside the signature or the first chunk: unchanged.
        for n in [0, 5, 8, 12, 20] {
            assert!(matches!(without_png_metadata(&plain[..n]), Cow::Borrowed(_)));
        }
    }
}
