//! The consistency score (`imaging::consistency`) of every bundled model on the sample images:
//! per model, the min / median / max PSNR and SSIM of its outputs against their inputs, and the
//! median time of one forward pass and of the score itself. The numbers behind docs/benchmarks.md's "Consistency
//! scores" and the README's "Operating quality".
//!
//! ```text
//! scripts/fetch-models.sh && scripts/fetch-samples.sh
//! cargo run --bin consistency-bench -- [--models models] [--samples samples] [--side 128] [--only name,…]
//! ```
//! Every image (PNG/JPEG under `--samples`, recursively) is decoded, and its centre
//! `--side`×`--side` (smaller images whole) is the model input: one pass per model and image,
//! cut into the model's tiles as the server cuts them. Prompt-guided models are skipped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use upres::config::Config;
use upres::engine::tiling::Grid;
use upres::engine::{GenParams, Tile, Unattended};
use upres::imaging::consistency::{self, Score};
use upres::imaging::{decode, resize};

struct Args {
    models: PathBuf,
    samples: PathBuf,
    side: u32,
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { models: "models".into(), samples: "samples".into(), side: 128, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--models" => a.models = value()?.into(),
            "--samples" => a.samples = value()?.into(),
            "--side" => a.side = value()?.parse().map_err(|e| format!("--side: {e}"))?,
            "--only" => a.only = Some(value()?.split(',').map(str::to_string).collect()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn images(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            images(&p, out);
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "png" | "jpg" | "jpeg")) {
            out.push(p);
        }
    }
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let mut paths = Vec::new();
    images(&args.samples, &mut paths);
    if paths.is_empty() {
        return Err(format!("no PNG/JPEG images under {} (scripts/fetch-samples.sh)", args.samples.display()));
    }
    let inputs: Vec<(String, Tile)> = paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let rgb = decode::decode(&bytes, 100_000_000).map_err(|e| format!("{}: {e}", p.display()))?.rgb;
            let (w, h) = (rgb.width.min(args.side), rgb.height.min(args.side));
            let region = ((rgb.width - w) / 2, (rgb.height - h) / 2, w, h);
            Ok((p.display().to_string(), resize::cut_rgb(&rgb, region)))
        })
        .collect::<Result<_, String>>()?;
    let mut cfg = Config::default();
    cfg.ml.models_dir = args.models.clone();
    let entries = upres::app::load_models(&cfg).map_err(|e| e.to_string())?;
    println!("inputs: {} images, centre {}² crops: {}", inputs.len(), args.side, inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "));
    println!();
    println!("| model | scale | PSNR min / median / max (dB) | SSIM min / median / max | model ms per image | score ms per image |");
    println!("|---|---|---|---|---|---|");
    for entry in &entries {
        let engine = &entry.engine;
        let name = engine.id().name.clone();
        if engine.prompt_guided() || args.only.as_ref().is_some_and(|o| !o.iter().any(|n| *n == name || *n == entry.name)) {
            continue;
        }
        let mut scores: Vec<Score> = Vec::new();
        let mut ms = Vec::new();
        let mut score_ms = Vec::new();
        for (label, input) in &inputs {
            let grid = Grid::new(input.width, input.height, engine.tiling());
            let tiles = grid.cut(input);
            let started = Instant::now();
            let mut outs = Vec::with_capacity(tiles.len());
            for tile in &tiles {
                let out = engine.upscale(std::slice::from_ref(tile), &[GenParams::default()], &Unattended).map_err(|e| format!("{name} on {label}: {e}"))?;
                outs.extend(out);
            }
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            let output = grid.stitch(&outs, engine.scale());
            let started = Instant::now();
            scores.push(consistency::score(input, &output));
            score_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        engine.idle();
        let (p0, p1, p2) = spread(scores.iter().map(|s| s.psnr).collect());
        let (s0, s1, s2) = spread(scores.iter().map(|s| s.ssim).collect());
        let (_, t, _) = spread(ms);
        let (_, st, _) = spread(score_ms);
        println!("| {name} | {} | {p0:.1} / {p1:.1} / {p2:.1} | {s0:.3} / {s1:.3} / {s2:.3} | {t:.0} | {st:.1} |", engine.scale());
    }
    Ok(())
}
