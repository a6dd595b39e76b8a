//! AVIF output through ravif (rav1e, pure Rust with its x86 assembly).
//!
//! Why rav1e and not libaom/SVT-AV1 through libavif: it builds from crates.io with the `nasm`
//! already needed for libjpeg-turbo (no C++ toolchain, no system library versions to match), and
//! no faster AV1 encoder was found for this build (sizes and times: docs/benchmarks.md).
//! The file is 4:4:4, `DEPTH` bits, tagged sRGB (an `nclx` colour box: BT.709 primaries, sRGB
//! transfer), with no other metadata than the copyright EXIF `output.keep_copyright` keeps.

use rgb::FromSlice;

/// Encoder speed range (rav1e presets): 1 is slowest and smallest, 10 fastest.
pub const SPEEDS: std::ops::RangeInclusive<u8> = 1..=10;

/// What changes the AVIF bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// ravif's 1..=100.
    pub quality: u8,
    /// `SPEEDS`.
    pub speed: u8,
    /// 8 or 10 bits per sample (`DEPTH` in upres; `encode-bench` measures both).
    pub depth: u8,
}

/// The bit depth upres writes (docs/benchmarks.md, "Output encoders at 2048²").
pub const DEPTH: u8 = 10;

/// Interleaved RGB8 or (with `alpha`) RGBA8 pixels into an AVIF file. Threads come from the
/// rayon pool of the calling thread (the global one on the blocking pool).
/// Errors are ravif's own (`encode.rs` maps them), so this module imports nothing of `encode`.
/// `exif` (a TIFF structure) goes into the file's `Exif` item when given.
pub fn encode(px: &[u8], w: u32, h: u32, alpha: bool, s: Settings, exif: Option<&[u8]>) -> Result<Vec<u8>, ravif::Error> {
    let (quality, speed) = (s.quality, s.speed);
    let depth = if s.depth <= 8 { ravif::BitDepth::Eight } else { ravif::BitDepth::Ten };
    let (w, h) = (w as usize, h as usize);
    let enc = ravif::Encoder::new()
        .with_quality(quality.clamp(1, 100) as f32)
        .with_alpha_quality(quality.clamp(1, 100) as f32)
        .with_speed(speed.clamp(*SPEEDS.start(), *SPEEDS.end()))
        .with_bit_depth(depth)
        .with_num_threads(None);
    let enc = match exif {
        Some(exif) => enc.with_exif(exif),
        None => enc,
    };
    let encoded = if alpha {
        enc.encode_rgba(ravif::Img::new(px.as_rgba(), w, h))
    } else {
        enc.encode_rgb(ravif::Img::new(px.as_rgb(), w, h))
    };
    encoded.map(|e| e.avif_file)
}
