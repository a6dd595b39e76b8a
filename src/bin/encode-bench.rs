//! Encoder time, size and SSIM for one image: the table behind the `[output]` defaults.
//!
//! `encode-bench <image> [side] [avif:<q>:<speed>[:<bits>[:420|444]]…]` makes the image
//! `side`×`side` (default 2048; Lanczos-3, cover) and encodes it as upres does
//! (`imaging::encode::encode_rgb8`) in each format at several qualities, AVIF at several rav1e
//! speeds, 8 or 10 bits and 4:2:0 or 4:4:4 chroma (defaults: upres's `avif::DEPTH` and
//! `avif::CHROMA`). Each row: the faster of two runs (wall time, every
//! core the encoder uses), bytes, and SSIM against the encoder's input (luma, 11×11 Gaussian
//! window, σ 1.5). AVIF is decoded by libavif's `avifdec` (Debian `libavif-bin`), the others by
//! the `image` crate. Feed it a model's output (`upres upscale … x4`) to measure "an upscaled
//! photo".

use std::time::Instant;

use anyhow::{bail, Context, Result};
use upres::imaging::avif;
use upres::imaging::consistency::{self, Luma};
use upres::imaging::encode::{encode_rgb8, Encoding, OutputFormat};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else { bail!("usage: encode-bench <image> [side]") };
    let side: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let img = image::open(&path).with_context(|| format!("reading {path}"))?.to_rgb8();
    let img = if img.dimensions() == (side, side) {
        img
    } else {
        image::DynamicImage::ImageRgb8(img).resize_to_fill(side, side, image::imageops::FilterType::Lanczos3).to_rgb8()
    };
    let px = img.as_raw();
    // `avif:<q>:<speed>` arguments pick the AVIF rows; the default is a grid.
    let chroma = |c: &str| match [avif::Chroma::Yuv420, avif::Chroma::Yuv444].into_iter().find(|k| k.name() == c) {
        Some(k) => Ok(k),
        None => bail!("chroma is 420 or 444, not {c}"),
    };
    let picked: Vec<Row> = args
        .map(|a| {
            let v: Vec<&str> = a.split(':').collect();
            let (q, s, d, c) = match v[..] {
                ["avif", q, s] => (q, s, None, None),
                ["avif", q, s, d] => (q, s, Some(d), None),
                ["avif", q, s, d, c] => (q, s, Some(d), Some(c)),
                _ => bail!("expected avif:<quality>:<speed>[:<bits>[:420|444]], got {a}"),
            };
            let depth = d.map(str::parse).transpose()?.unwrap_or(avif::DEPTH);
            let chroma = c.map(chroma).transpose()?.unwrap_or(avif::CHROMA);
            Ok((OutputFormat::Avif, q.parse()?, s.parse()?, depth, chroma))
        })
        .collect::<Result<_>>()?;
    let grid = || {
        [6, 8, 10].into_iter().flat_map(|speed| [50, 55, 60, 65, 70].map(|q| (OutputFormat::Avif, q, speed, avif::DEPTH, avif::CHROMA)))
    };
    let avif_rows: Vec<_> = if picked.is_empty() { grid().collect() } else { picked };
    let c = avif::CHROMA;
    let rows: Vec<Row> = [(OutputFormat::Webp, 82, 0, 8, c), (OutputFormat::Webp, 75, 0, 8, c), (OutputFormat::Jpeg, 85, 0, 8, c), (OutputFormat::Jpeg, 75, 0, 8, c)]
            .into_iter()
            .chain(avif_rows)
            .collect();
    println!("# {path} as {side}x{side}, {} threads", rayon::current_num_threads());
    println!("| format | quality | speed | bits | chroma | ms | bytes | SSIM |");
    println!("|---|---|---|---|---|---|---|---|");
    // The JPEG encoder upres used before mozjpeg (baseline, standard tables), for comparison.
    for quality in [85, 75] {
        let mut best = f64::MAX;
        let mut bytes = Vec::new();
        for _ in 0..2 {
            let t = Instant::now();
            bytes.clear();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).encode(px, side, side, image::ExtendedColorType::Rgb8)?;
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let score = ssim(px, decode(&bytes, OutputFormat::Jpeg)?.as_raw(), side as usize, side as usize);
        println!("| jpeg (image crate, baseline) | {quality} | - | 8 | 4:2:0 | {best:.0} | {} | {score:.4} |", bytes.len());
    }
    for (format, quality, speed, depth, chroma) in rows {
        let enc = Encoding::new(format, quality);
        let mut best = f64::MAX;
        let mut bytes = Vec::new();
        for _ in 0..2 {
            let t = Instant::now();
            bytes = match format {
                OutputFormat::Avif => avif::encode(px, side, side, false, avif::Settings { quality, speed, depth, chroma }, None)?,
                _ => encode_rgb8(px, side, side, &enc)?,
            };
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let decoded = decode(&bytes, format)?;
        let score = ssim(px, decoded.as_raw(), side as usize, side as usize);
        let speed = if format == OutputFormat::Avif { speed.to_string() } else { "-".into() };
        let chroma = match (format, chroma) {
            (OutputFormat::Avif, avif::Chroma::Yuv444) => "4:4:4",
            (OutputFormat::Png, _) => "-",
            _ => "4:2:0",
        };
        println!("| {} | {quality} | {speed} | {depth} | {chroma} | {best:.0} | {} | {score:.4} |", format.as_str(), bytes.len());
    }
    Ok(())
}

/// Format, quality, AVIF speed, bits per sample, AVIF chroma sampling.
type Row = (OutputFormat, u8, u8, u8, avif::Chroma);

fn decode(bytes: &[u8], format: OutputFormat) -> Result<image::RgbImage> {
    if format != OutputFormat::Avif {
        return Ok(image::load_from_memory(bytes)?.to_rgb8());
    }
    let dir = tempfile_dir()?;
    let (src, dst) = (dir.join("in.avif"), dir.join("out.png"));
    std::fs::write(&src, bytes)?;
    let out = std::process::Command::new("avifdec").arg(&src).arg(&dst).output().context("running avifdec (apt-get install libavif-bin)")?;
    if !out.status.success() {
        bail!("avifdec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let img = image::open(&dst)?.to_rgb8();
    std::fs::remove_dir_all(&dir)?;
    Ok(img)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("encode-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Mean SSIM of the luma planes: upres's own measure (`imaging::consistency`).
fn ssim(a: &[u8], b: &[u8], w: usize, h: usize) -> f64 {
    let (w, h) = (w as u32, h as u32);
    consistency::compare(&Luma::of_rgb8(a, w, h), &Luma::of_rgb8(b, w, h)).ssim
}
