//! AVIF output: rav1e (pure Rust with its x86/ARM assembly) wrapped by avif-serialize.
//!
//! upres drives rav1e itself rather than through a wrapper so that colour can be 4:2:0: a
//! photo's chroma carries a quarter of the detail its luma does, and subsampling it halves the
//! samples the encoder codes (half the time, a smaller file at the same luma quality; WebP and
//! JPEG subsample too). `Chroma::Yuv444` stays for measurement and for operators who want it.
//! Why rav1e and not libaom/SVT-AV1 through libavif: README "Formats"; sizes and times:
//! docs/benchmarks.md.
//!
//! The file is `depth` bits, BT.601 full range YCbCr, tagged sRGB (an `nclx` colour box: BT.709
//! primaries, sRGB transfer), with no other metadata than the copyright EXIF
//! `output.keep_copyright` keeps. Alpha is a separate 4:0:0 image at the same quality.

use rav1e::prelude::{
    BlockSize, ChromaSamplePosition, ChromaSampling, ColorDescription, ColorPrimaries, Config, EncoderConfig, EncoderStatus, MatrixCoefficients,
    PartitionRange, PixelRange, SceneDetectionSpeed, TransferCharacteristics, Tune,
};
use rav1e::Pixel;
use rayon::prelude::*;

/// Encoder speed range (rav1e presets): 1 is slowest and smallest, 10 fastest.
pub const SPEEDS: std::ops::RangeInclusive<u8> = 1..=10;

/// The bit depth upres writes (docs/benchmarks.md, "Output encoders at 2048²").
pub const DEPTH: u8 = 10;

/// How colour is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chroma {
    /// Cb and Cr at half width and half height (what upres writes).
    Yuv420,
    /// Cb and Cr at full resolution.
    Yuv444,
}

impl Chroma {
    /// `420` or `444`, as in result keys and `encode-bench` arguments.
    pub fn name(self) -> &'static str {
        match self {
            Chroma::Yuv420 => "420",
            Chroma::Yuv444 => "444",
        }
    }
}

/// The chroma sampling upres writes (docs/benchmarks.md, "Output encoders at 2048²").
pub const CHROMA: Chroma = Chroma::Yuv420;

/// What changes the AVIF bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// 1..=100, linear onto AV1's quantiser index (255 at 0, 0 at 100), as libavif's `quality`.
    pub quality: u8,
    /// `SPEEDS`.
    pub speed: u8,
    /// 8 or 10 bits per sample (`DEPTH` in upres; `encode-bench` measures both).
    pub depth: u8,
    /// `CHROMA` in upres.
    pub chroma: Chroma,
}

/// Why an image could not be encoded (rav1e's configuration or encoder status).
#[derive(Debug)]
pub struct AvifError(String);

impl std::fmt::Display for AvifError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AvifError {}

/// Interleaved RGB8 or (with `alpha`) RGBA8 pixels into an AVIF file. Threads come from the
/// rayon pool of the calling thread (the global one on the blocking pool): one tile each.
/// `exif` (a TIFF structure) goes into the file's `Exif` item when given.
pub fn encode(px: &[u8], w: u32, h: u32, alpha: bool, s: Settings, exif: Option<&[u8]>) -> Result<Vec<u8>, AvifError> {
    let channels = if alpha { 4 } else { 3 };
    let (wu, hu) = (w as usize, h as usize);
    if w == 0 || h == 0 || px.len() != wu * hu * channels {
        return Err(AvifError(format!("{} bytes are not {w}x{h} with {channels} channels", px.len())));
    }
    let depth = if s.depth <= 8 { 8 } else { 10 };
    let planes = ycbcr_planes(px, wu, hu, channels, depth, s.chroma);
    let quantizer = quantizer(s.quality);
    let speed = s.speed.clamp(*SPEEDS.start(), *SPEEDS.end());
    let colour = || {
        let layout = Layout { w: wu, h: hu, depth, chroma: Some(s.chroma) };
        encode_av1(&planes, layout, quantizer, speed)
    };
    let alpha_plane = || {
        alpha.then(|| {
            let a: Vec<u16> = px.chunks_exact(4).map(|p| widen(p[3], depth)).collect();
            encode_av1(&[a], Layout { w: wu, h: hu, depth, chroma: None }, quantizer, speed)
        })
    };
    let (colour, alpha_av1) = rayon::join(colour, alpha_plane);
    let (colour, alpha_av1) = (colour?, alpha_av1.transpose()?);

    let mut file = avif_serialize::Aviffy::new();
    file.set_matrix_coefficients(avif_serialize::constants::MatrixCoefficients::Bt601)
        .set_color_primaries(avif_serialize::constants::ColorPrimaries::Bt709)
        .set_transfer_characteristics(avif_serialize::constants::TransferCharacteristics::Srgb)
        .set_full_color_range(true);
    match s.chroma {
        // 4:2:0 at 8 or 10 bits is AV1's Main profile; 4:4:4 needs High.
        Chroma::Yuv420 => file.set_seq_profile(0).set_chroma_subsampling((true, true)),
        Chroma::Yuv444 => file.set_seq_profile(1).set_chroma_subsampling((false, false)),
    };
    if let Some(exif) = exif {
        file.set_exif(exif.to_vec());
    }
    let mut out = Vec::new();
    file.write(&mut out, &colour, alpha_av1.as_deref(), w, h, depth).map_err(|e| AvifError(format!("writing the container: {e}")))?;
    Ok(out)
}

/// libavif's quality scale onto rav1e's quantiser index.
fn quantizer(quality: u8) -> usize {
    let q = quality.clamp(1, 100) as usize;
    ((100 - q) * 255 + 50) / 100
}

/// One 8-bit sample at `depth` bits (bit replication keeps 255 at full scale).
fn widen(v: u8, depth: u8) -> u16 {
    if depth == 8 {
        v as u16
    } else {
        ((v as u16) << 2) | ((v as u16) >> 6)
    }
}

/// BT.601 full-range Y, Cb, Cr planes at `depth` bits. With `Chroma::Yuv420` each chroma
/// sample comes from the mean RGB of its 2×2 block (edge blocks use the pixels they have).
fn ycbcr_planes(px: &[u8], w: usize, h: usize, channels: usize, depth: u8, chroma: Chroma) -> [Vec<u16>; 3] {
    const KR: f32 = 0.299;
    const KB: f32 = 0.114;
    let max = ((1u32 << depth) - 1) as f32;
    let scale = max / 255.0;
    let mid = (1u32 << (depth - 1)) as f32;
    let to_u16 = |v: f32| v.round().clamp(0.0, max) as u16;
    let y_of = |r: f32, g: f32, b: f32| KR * r + (1.0 - KR - KB) * g + KB * b;
    let cbcr = |r: f32, g: f32, b: f32| {
        let y = y_of(r, g, b);
        (to_u16((b - y) * scale * 0.5 / (1.0 - KB) + mid), to_u16((r - y) * scale * 0.5 / (1.0 - KR) + mid))
    };
    let rgb = |x: usize, y: usize| {
        let p = &px[(y * w + x) * channels..];
        (p[0] as f32, p[1] as f32, p[2] as f32)
    };
    let luma: Vec<u16> = px.par_chunks_exact(channels).map(|p| to_u16(y_of(p[0] as f32, p[1] as f32, p[2] as f32) * scale)).collect();
    let (cw, ch, step) = match chroma {
        Chroma::Yuv420 => (w.div_ceil(2), h.div_ceil(2), 2),
        Chroma::Yuv444 => (w, h, 1),
    };
    let (mut cb, mut cr) = (vec![0u16; cw * ch], vec![0u16; cw * ch]);
    cb.par_chunks_mut(cw).zip(cr.par_chunks_mut(cw)).enumerate().for_each(|(cy, (cb_row, cr_row))| {
        let ys = cy * step..(cy * step + step).min(h);
        for (cx, (u, v)) in cb_row.iter_mut().zip(cr_row).enumerate() {
            let (mut r, mut g, mut b, mut n) = (0.0, 0.0, 0.0, 0.0);
            for y in ys.clone() {
                for x in cx * step..(cx * step + step).min(w) {
                    let (pr, pg, pb) = rgb(x, y);
                    (r, g, b, n) = (r + pr, g + pg, b + pb, n + 1.0);
                }
            }
            (*u, *v) = cbcr(r / n, g / n, b / n);
        }
    });
    [luma, cb, cr]
}

/// Size and sampling of the planes handed to `encode_av1`; `chroma: None` is one 4:0:0 plane.
#[derive(Clone, Copy)]
struct Layout {
    w: usize,
    h: usize,
    depth: u8,
    chroma: Option<Chroma>,
}

/// One still AV1 frame from planes of `depth`-bit samples (row-major, tightly packed).
fn encode_av1(planes: &[Vec<u16>], layout: Layout, quantizer: usize, speed: u8) -> Result<Vec<u8>, AvifError> {
    let mut enc = EncoderConfig::with_speed_preset(speed);
    enc.width = layout.w;
    enc.height = layout.h;
    enc.bit_depth = layout.depth as usize;
    enc.chroma_sampling = match layout.chroma {
        None => ChromaSampling::Cs400,
        Some(Chroma::Yuv420) => ChromaSampling::Cs420,
        Some(Chroma::Yuv444) => ChromaSampling::Cs444,
    };
    enc.chroma_sample_position = ChromaSamplePosition::Unknown;
    enc.pixel_range = PixelRange::Full;
    enc.color_description = layout.chroma.map(|_| ColorDescription {
        color_primaries: ColorPrimaries::BT709,
        transfer_characteristics: TransferCharacteristics::SRGB,
        matrix_coefficients: MatrixCoefficients::BT601,
    });
    enc.still_picture = true;
    enc.quantizer = quantizer;
    enc.min_quantizer = quantizer.min(255) as u8;
    enc.tune = Tune::Psychovisual;
    // One tile per thread, but no tile under 256×256: tiny tiles cost more bytes than they save time.
    enc.tiles = rayon::current_num_threads().min(layout.w * layout.h / (256 * 256)).max(1);
    // A single frame: nothing to look ahead at, no scene cuts, no references.
    enc.speed_settings.rdo_lookahead_frames = 1;
    enc.speed_settings.scene_detection_mode = SceneDetectionSpeed::None;
    enc.speed_settings.multiref = false;
    if speed == *SPEEDS.end() {
        // The fastest preset is upres's default, tuned for one still photo at web qualities
        // (docs/benchmarks.md, "AVIF speed settings"): CDEF off (half the encode time for
        // +0.0004 SSIM), 16×16 blocks only (rav1e's own 10 uses 32×32: larger files), and the
        // coarse set of directional intra angles (−28 % time, +4 % bytes).
        let ss = &mut enc.speed_settings;
        ss.cdef = false;
        ss.partition.partition_range = PartitionRange::new(BlockSize::BLOCK_16X16, BlockSize::BLOCK_16X16);
        ss.prediction.fine_directional_intra = false;
    }
    let cfg = Config::new().with_encoder_config(enc);
    if layout.depth == 8 {
        encode_frame::<u8>(&cfg, planes, layout)
    } else {
        encode_frame::<u16>(&cfg, planes, layout)
    }
}

fn encode_frame<P: Pixel>(cfg: &Config, planes: &[Vec<u16>], layout: Layout) -> Result<Vec<u8>, AvifError> {
    let mut ctx = cfg.new_context::<P>().map_err(|e| AvifError(format!("rav1e configuration: {e}")))?;
    let mut frame = ctx.new_frame();
    for (i, src) in planes.iter().enumerate() {
        let (pw, ph) = if i == 0 || layout.chroma != Some(Chroma::Yuv420) {
            (layout.w, layout.h)
        } else {
            (layout.w.div_ceil(2), layout.h.div_ceil(2))
        };
        let mut dst = frame.planes[i].mut_slice(Default::default());
        for (row, src_row) in dst.rows_iter_mut().zip(src.chunks_exact(pw)).take(ph) {
            for (d, &v) in row[..pw].iter_mut().zip(src_row) {
                *d = P::cast_from(v);
            }
        }
    }
    ctx.send_frame(frame).map_err(|e| AvifError(format!("rav1e: {e}")))?;
    ctx.flush();
    let mut out = Vec::new();
    loop {
        match ctx.receive_packet() {
            Ok(packet) => out.extend_from_slice(&packet.data),
            Err(EncoderStatus::Encoded) => {}
            Err(EncoderStatus::LimitReached) => break,
            Err(e) => return Err(AvifError(format!("rav1e: {e}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_maps_linearly_onto_the_quantiser() {
        assert_eq!(quantizer(100), 0);
        assert_eq!(quantizer(1), 252);
        assert_eq!(quantizer(0), 252, "0 is clamped to 1");
        assert_eq!(quantizer(60), 102);
    }

    #[test]
    fn grey_has_neutral_chroma_and_white_is_full_scale() {
        for depth in [8, 10] {
            let px = [255u8, 255, 255, 128, 128, 128, 0, 0, 0, 255, 255, 255];
            let [y, cb, cr] = ycbcr_planes(&px, 2, 2, 3, depth, Chroma::Yuv420);
            let max = (1u16 << depth) - 1;
            assert_eq!(y[0], max);
            assert_eq!(y[3], max);
            assert_eq!(y[2], 0);
            assert_eq!((cb.len(), cr.len()), (1, 1));
            let mid = 1u16 << (depth - 1);
            assert!(cb[0].abs_diff(mid) <= 1 && cr[0].abs_diff(mid) <= 1, "{depth} bits: cb {} cr {}", cb[0], cr[0]);
        }
    }

    #[test]
    fn odd_sizes_round_chroma_up_and_average_what_the_edge_block_has() {
        // 3×1: the second chroma sample covers one red pixel only.
        let px = [0u8, 0, 255, 0, 0, 255, 255, 0, 0];
        let [y, cb, cr] = ycbcr_planes(&px, 3, 1, 3, 8, Chroma::Yuv420);
        assert_eq!(y.len(), 3);
        assert_eq!(cb.len(), 2);
        assert!(cr[1] > 200 && cb[0] > 200, "pure red has high Cr, pure blue high Cb: {cb:?} {cr:?}");
    }

    /// The `av1C` box's flags byte: tier, high bit depth, twelve bit, monochrome,
    /// subsampling x, subsampling y, chroma sample position (2 bits); and the profile.
    fn av1c(file: &[u8]) -> (u8, u8) {
        let at = file.windows(4).position(|w| w == b"av1C").expect("an av1C box");
        (file[at + 5] >> 5, file[at + 6])
    }

    #[test]
    fn the_file_says_420_at_main_profile_and_444_at_high() {
        let px: Vec<u8> = (0..48 * 32).flat_map(|i| [(i % 48 * 5) as u8, (i / 48 * 7) as u8, 90]).collect();
        for (chroma, profile, flags) in [(Chroma::Yuv420, 0, 0b0100_1100), (Chroma::Yuv444, 1, 0b0100_0000)] {
            let s = Settings { quality: 60, speed: 10, depth: 10, chroma };
            let file = encode(&px, 48, 32, false, s, None).unwrap();
            assert_eq!(&file[4..12], b"ftypavif");
            let (p, f) = av1c(&file);
            assert_eq!((p, f & 0b0111_1100), (profile, flags), "{chroma:?}: profile and high-bit-depth/mono/subsampling flags");
        }
        let eight = encode(&px, 48, 32, false, Settings { quality: 60, speed: 10, depth: 8, chroma: CHROMA }, None).unwrap();
        assert_eq!(av1c(&eight).1 & 0b0100_0000, 0, "8 bits");
    }

    #[test]
    fn wrong_buffer_length_is_an_error_not_a_panic() {
        let s = Settings { quality: 60, speed: 10, depth: DEPTH, chroma: CHROMA };
        assert!(encode(&[0; 10], 2, 2, false, s, None).is_err());
        assert!(encode(&[], 0, 0, false, s, None).is_err());
    }
}
