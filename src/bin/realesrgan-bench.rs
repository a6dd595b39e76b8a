//! Benchmark of the Real-ESRGAN engines: ms per image, output megapixels/s and achieved
//! convolution GFLOP/s per model and input size, optionally next to ncnn running the same model
//! files on the CPU in fp32 (via `scripts/realesrgan_bench_ncnn.py`).
//!
//! ```text
//! cargo run --release --bin realesrgan-bench -- [--models DIR] [--sizes 64,128,256] [--runs N]
//!     [--only STEM,…] [--ncnn .venv/bin/python] [--threads N]
//! ```
//! Each image is one forward pass over a `size`×`size` input (no tiling). The first pass per
//! model and size is a warm-up and is not timed. FLOPs count convolutions only (2 per MAC).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use upres::engine::{Engine, GenParams, Tile, Unattended};
use upres::ml::realesrgan::{Known, RealEsrgan, KNOWN};

struct Args {
    models: PathBuf,
    sizes: Vec<u32>,
    runs: u32,
    only: Option<Vec<String>>,
    ncnn: Option<String>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        models: "models".into(),
        sizes: vec![64, 128, 256],
        runs: 3,
        only: None,
        ncnn: None,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--models" => a.models = val()?.into(),
            "--sizes" => {
                a.sizes = val()?.split(',').map(|s| s.parse().map_err(|_| format!("bad size {s}"))).collect::<Result<_, _>>()?
            }
            "--runs" => a.runs = val()?.parse().map_err(|_| "bad --runs")?,
            "--only" => a.only = Some(val()?.split(',').map(str::to_string).collect()),
            "--ncnn" => a.ncnn = Some(val()?),
            "--threads" => a.threads = val()?.parse().map_err(|_| "bad --threads")?,
            "-h" | "--help" => {
                println!("realesrgan-bench [--models DIR] [--sizes 64,128,256] [--runs N] [--only STEM,...] [--ncnn PYTHON] [--threads N]");
                std::process::exit(0);
            }
            f => return Err(format!("unknown flag {f}")),
        }
    }
    a.runs = a.runs.max(1);
    Ok(a)
}

fn image(size: u32) -> Tile {
    let n = (size * size) as usize;
    let mut data = vec![0f32; 3 * n];
    for (i, v) in data.iter_mut().enumerate() {
        let (c, p) = (i / n, i % n);
        let (x, y) = ((p as u32 % size) as f32, (p as u32 / size) as f32);
        *v = 0.5 + 0.4 * ((x * 0.37 + c as f32).sin() * (y * 0.23).cos());
    }
    Tile::new(size, size, data)
}

/// ncnn's ms per image for (stem, size), from the Python helper's `stem size ms` lines.
fn ncnn_times(python: &str, a: &Args, stems: &[&Known]) -> Vec<(String, u32, f64)> {
    let sizes: Vec<String> = a.sizes.iter().map(u32::to_string).collect();
    let names: Vec<&str> = stems.iter().map(|k| k.stem).collect();
    let out = Command::new(python)
        .arg("scripts/realesrgan_bench_ncnn.py")
        .args(["--models", &a.models.display().to_string()])
        .args(["--sizes", &sizes.join(",")])
        .args(["--runs", &a.runs.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args(["--only", &names.join(",")])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut t = l.split_whitespace();
                Some((t.next()?.to_string(), t.next()?.parse().ok()?, t.next()?.parse().ok()?))
            })
            .collect(),
        Ok(o) => {
            eprintln!("ncnn helper failed: {}", String::from_utf8_lossy(&o.stderr));
            Vec::new()
        }
        Err(e) => {
            eprintln!("ncnn helper could not start ({python}): {e}");
            Vec::new()
        }
    }
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("realesrgan-bench: {e}");
            std::process::exit(2);
        }
    };
    let device = upres::ml::device::select("cpu").expect("cpu device");
    let stems: Vec<&Known> =
        KNOWN.iter().filter(|k| a.only.as_ref().is_none_or(|o| o.iter().any(|s| s == k.stem))).collect();
    let path = if upres::ml::realesrgan::fastconv_enabled_by_env() { "fastconv" } else { "candle" };
    println!("# realesrgan-bench: {path} CPU (UPRES_FASTCONV=off for candle), {} threads, {} timed runs, untiled, batch 1", a.threads, a.runs);
    let mut rows = Vec::new();
    for k in &stems {
        let model = match RealEsrgan::load(&a.models, k, &device, None) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: {e} (run scripts/fetch-models.sh)", k.stem);
                std::process::exit(1);
            }
        };
        for &size in &a.sizes {
            let img = image(size);
            let p = [GenParams::default()];
            let run = || model.upscale(std::slice::from_ref(&img), &p, &Unattended).expect("forward");
            run();
            let t = Instant::now();
            for _ in 0..a.runs {
                run();
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0 / a.runs as f64;
            let flops = model.flops(size as usize, size as usize) as f64;
            rows.push((k.stem.to_string(), size, model.scale(), ms, flops));
            eprintln!("{path} {} {size}: {ms:.1} ms", k.stem);
        }
    }
    let ncnn = a.ncnn.as_deref().map(|py| ncnn_times(py, &a, &stems)).unwrap_or_default();
    println!(
        "{:<26} {:>5} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8}",
        "model", "input", "ms/img", "out MP/s", "GFLOP/s", "ncnn ms", "ncnn MP/s", "ncnn GF/s", "ncnn/us"
    );
    for (stem, size, scale, ms, flops) in rows {
        let out_mp = (size * scale) as f64 * (size * scale) as f64 / 1e6;
        let mut line = format!(
            "{:<26} {:>5} {:>10.1} {:>9.3} {:>9.1}",
            stem,
            format!("{size}²"),
            ms,
            out_mp / (ms / 1000.0),
            flops / 1e9 / (ms / 1000.0)
        );
        if let Some((_, _, nms)) = ncnn.iter().find(|(s, z, _)| *s == stem && *z == size) {
            line += &format!(
                " {:>10.1} {:>9.3} {:>9.1} {:>8.2}",
                nms,
                out_mp / (nms / 1000.0),
                flops / 1e9 / (nms / 1000.0),
                nms / ms
            );
        }
        println!("{line}");
    }
}
