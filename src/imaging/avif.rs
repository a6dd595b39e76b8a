//! AVIF output through ravif (rav1e, pure Rust with its x86 assembly).
//!
//! Why rav1e and not libaom/SVT-AV1 through libavif: it builds from crates.io with the `nasm`
//! already needed for libjpeg-turbo (no C++ toolchain, no system library versions to match), and
//! at the speeds chosen here it meets the size and time goals measured in docs/benchmarks.md.
//! The file is 4:4:4, 10-bit, tagged sRGB (an `nclx` colour box: BT.709 primaries, sRGB
//! transfer), with no other metadata.

use rgb::FromSlice;

/// Encoder speed range (rav1e presets): 1 is slowest and smallest, 10 fastest.
pub const SPEEDS: std::ops::RangeInclusive<u8> = 1..=10;

/// Interleaved RGB8 or (with `alpha`) RGBA8 pixels into an AVIF file. Threads come from the
/// rayon pool of the calling thread (the global one on the blocking pool).
/// Errors are ravif's own (`encode.rs` maps them), so this module imports nothing of `encode`.
pub fn encode(px: &[u8], w: u32, h: u32, alpha: bool, quality: u8, speed: u8) -> Result<Vec<u8>, ravif::Error> {
    let (w, h) = (w as usize, h as usize);
    let enc = ravif::Encoder::new()
        .with_quality(quality.clamp(1, 100) as f32)
        .with_alpha_quality(quality.clamp(1, 100) as f32)
        .with_speed(speed.clamp(*SPEEDS.start(), *SPEEDS.end()))
        .with_num_threads(None);
    let encoded = if alpha {
        enc.encode_rgba(ravif::Img::new(px.as_rgba(), w, h))
    } else {
        enc.encode_rgb(ravif::Img::new(px.as_rgb(), w, h))
    };
    encoded.map(|e| e.avif_file)
}
