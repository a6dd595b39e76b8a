//! Benchmark of the ncnn-file engines (the Real-ESRGAN family and SPAN, `ml::realesrgan::KNOWN`;
//! the name is historical): ms per image, output megapixels/s and achieved
//! convolution GFLOP/s per model and input size, in one table with the same model files run by
//! PyTorch (`--torch`, Real-ESRGAN only: `scripts/realesrgan_torch.py`, fp32 NCHW, fp32 channels_last, bf16 autocast)
//! and ncnn (`--ncnn`: `scripts/realesrgan_bench_ncnn.py`, fp32 and bf16) on the CPU, and the ratio
//! of upres's time to the fastest of those peers.
//!
//! ```text
//! cargo run --release --bin realesrgan-bench -- [--models DIR] [--sizes 64,128,256] [--runs N]
//!     [--rounds R] [--only STEM,…] [--torch .venv/bin/python] [--ncnn .venv/bin/python] [--threads N]
//! ```
//! With `--rounds R` every model's sequence (upres, then each peer, each `--runs` timed runs)
//! runs R times in turn and each configuration keeps its best run over all rounds: on a host
//! whose throughput swings within seconds, every runtime then gets samples spread over the same
//! minutes rather than one stretch each.
//! Each image is one forward pass over a `size`×`size` input (no tiling, batch 1), the same
//! synthetic image in every runtime. The first pass per model, size and configuration is a warm-up
//! and is not timed. FLOPs count convolutions only (2 per MAC). Every runtime gets `--threads`.
//!
//! With `--interleave N` (needs `--torch`) upres and one PyTorch configuration
//! (`--interleave-mode`, default `bf16`) instead alternate forward by forward, N pairs per model
//! and size, through a persistent `scripts/realesrgan_torch.py serve` process: both then sample
//! the host's swings at the same moments. It prints each side's best, the ratio of the bests,
//! and the spread of the per-pair ratios.
//!
//! upres runs twice: with the engine's default kernels (the first output line names the CPU and
//! the kernel family of each role, `fastconv::kernel_summary`; `UPRES_FASTCONV` /
//! `UPRES_FASTCONV_WINOGRAD` override) and with the direct fp32 kernel (`direct f32` column),
//! and `dB` is the default's 8-bit output against the direct kernel's on the bench image. Each
//! default run's stderr line also gives the mean CPU time per forward (user + system, all
//! threads, Linux): on a loaded host it compares kernels where wall time swings.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use upres::engine::{Engine, GenParams, Tile, Unattended};
use upres::ml::realesrgan::{Known, RealEsrgan, KNOWN};

struct Args {
    models: PathBuf,
    sizes: Vec<u32>,
    runs: u32,
    /// Repetitions of each model's upres-then-peers sequence.
    rounds: u32,
    only: Option<Vec<String>>,
    ncnn: Option<String>,
    torch: Option<String>,
    threads: usize,
    /// Skip the fp32 direct-kernel column (and its PSNR).
    no_fp32: bool,
    /// Alternate upres and PyTorch forward by forward, this many pairs (0: the table).
    interleave: u32,
    /// PyTorch's configuration in `--interleave` mode.
    interleave_mode: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        models: "models".into(),
        sizes: vec![64, 128, 256],
        runs: 3,
        rounds: 1,
        only: None,
        ncnn: None,
        torch: None,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        no_fp32: false,
        interleave: 0,
        interleave_mode: "bf16".into(),
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
            "--rounds" => a.rounds = val()?.parse().map_err(|_| "bad --rounds")?,
            "--interleave" => a.interleave = val()?.parse().map_err(|_| "bad --interleave")?,
            "--interleave-mode" => a.interleave_mode = val()?,
            "--only" => a.only = Some(val()?.split(',').map(str::to_string).collect()),
            "--ncnn" => a.ncnn = Some(val()?),
            "--torch" => a.torch = Some(val()?),
            "--threads" => a.threads = val()?.parse().map_err(|_| "bad --threads")?,
            "--no-fp32" => a.no_fp32 = true,
            "-h" | "--help" => {
                println!("realesrgan-bench [--models DIR] [--sizes 64,128,256] [--runs N] [--rounds R] [--only STEM,...] [--torch PYTHON] [--ncnn PYTHON] [--threads N] [--no-fp32] [--interleave PAIRS [--interleave-mode bf16|fp32|fp32-cl]]");
                std::process::exit(0);
            }
            f => return Err(format!("unknown flag {f}")),
        }
    }
    a.runs = a.runs.max(1);
    a.rounds = a.rounds.max(1);
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

/// A peer runtime's Python helper. Each prints `<stem> <size> <mode> <ms per image>` lines.
struct Helper {
    runtime: &'static str,
    /// Script and subcommand, relative to the repository root.
    script: &'static [&'static str],
    modes: &'static str,
}

const TORCH: Helper = Helper { runtime: "torch", script: &["scripts/realesrgan_torch.py", "bench"], modes: "fp32,fp32-cl,bf16" };
const NCNN: Helper = Helper { runtime: "ncnn", script: &["scripts/realesrgan_bench_ncnn.py"], modes: "fp32,bf16" };

/// One peer column of the table: a runtime in one configuration.
struct Peer {
    runtime: &'static str,
    mode: &'static str,
    header: &'static str,
}

const PEERS: [Peer; 5] = [
    Peer { runtime: "torch", mode: "fp32", header: "torch fp32" },
    Peer { runtime: "torch", mode: "fp32-cl", header: "torch NHWC" },
    Peer { runtime: "torch", mode: "bf16", header: "torch bf16" },
    Peer { runtime: "ncnn", mode: "fp32", header: "ncnn fp32" },
    Peer { runtime: "ncnn", mode: "bf16", header: "ncnn bf16" },
];

/// One peer measurement.
struct Timing {
    runtime: &'static str,
    size: u32,
    mode: String,
    ms: f64,
}

/// One line of the table: upres on a model and input size, and each peer's time (`PEERS` order).
struct Row {
    stem: &'static str,
    size: u32,
    scale: u32,
    ms: f64,
    /// upres with the direct fp32 kernel, when the default is another.
    ms_fp32: Option<f64>,
    /// PSNR (8-bit) of the default's output against the direct fp32 kernel's.
    psnr: Option<f64>,
    flops: f64,
    peers: [Option<f64>; PEERS.len()],
}

impl Row {
    /// The fastest peer configuration measured: (its header, its ms).
    fn fastest_peer(&self) -> Option<(&'static str, f64)> {
        PEERS.iter().zip(self.peers).filter_map(|(p, ms)| Some((p.header, ms?))).min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Runs `helper` with `python` on one model; failures are reported and give no timings.
fn peer_times(python: &str, helper: &Helper, a: &Args, stem: &str) -> Vec<Timing> {
    let sizes: Vec<String> = a.sizes.iter().map(u32::to_string).collect();
    let out = Command::new(python)
        .args(helper.script)
        .args(["--models", &a.models.display().to_string()])
        .args(["--sizes", &sizes.join(",")])
        .args(["--runs", &a.runs.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args(["--only", stem])
        .args(["--modes", helper.modes])
        .stderr(Stdio::inherit())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                let [s, size, mode, ms] = t[..] else { return None };
                (s == stem).then_some(())?;
                Some(Timing { runtime: helper.runtime, size: size.parse().ok()?, mode: mode.to_string(), ms: ms.parse().ok()? })
            })
            .collect(),
        Ok(o) => {
            eprintln!("{} helper failed on {stem} ({})", helper.runtime, o.status);
            Vec::new()
        }
        Err(e) => {
            eprintln!("{} helper could not start ({python}): {e}", helper.runtime);
            Vec::new()
        }
    }
}

/// Best time of `runs` forwards after a warm-up (the peers' scripts report the same): on a
/// shared machine the fastest run is the one least disturbed by other processes. Also the mean
/// CPU time per forward, where the OS reports it.
fn time(model: &RealEsrgan, img: &Tile, runs: u32) -> (f64, Option<f64>, Tile) {
    let p = [GenParams::default()];
    let run = || model.upscale(std::slice::from_ref(img), &p, &Unattended).expect("forward").remove(0);
    let mut out = run();
    let mut best = f64::INFINITY;
    let cpu0 = process_cpu_ms();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        out = run();
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = cpu0.zip(process_cpu_ms()).map(|(c0, c1)| (c1 - c0) / f64::from(runs.max(1)));
    (best, cpu, out)
}

/// The process's CPU time so far (user + system, all threads) in ms, from `/proc/self/stat`
/// (Linux; 100 clock ticks per second, the kernel's `USER_HZ`). On a loaded host it tells
/// kernels apart where wall time cannot; `None` elsewhere.
fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// A persistent `realesrgan_torch.py serve` process: one timed forward per request.
struct TorchServer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl TorchServer {
    fn start(python: &str, a: &Args) -> std::io::Result<Self> {
        let mut child = Command::new(python)
            .args(["scripts/realesrgan_torch.py", "serve"])
            .args(["--models", &a.models.display().to_string()])
            .args(["--threads", &a.threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self { child, stdin, stdout })
    }

    /// One timed forward of `stem` at `size`² in `mode` (the first request per key also warms up).
    fn forward(&mut self, stem: &str, size: u32, mode: &str) -> Result<f64, String> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{stem} {size} {mode}").map_err(|e| format!("torch serve: {e}"))?;
        self.stdin.flush().map_err(|e| format!("torch serve: {e}"))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("torch serve: {e}"))?;
        line.trim().parse().map_err(|_| format!("torch serve answered {line:?} (see its stderr)"))
    }
}

impl Drop for TorchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--interleave`: upres and PyTorch alternate forward by forward, `a.interleave` pairs per model
/// and size; prints each side's best, the ratio of the bests and the per-pair ratios' spread.
fn interleaved(a: &Args, stems: &[&Known], device: &candle_core::Device) -> Result<(), String> {
    let python = a.torch.as_deref().ok_or("--interleave needs --torch PYTHON")?;
    let mode = a.interleave_mode.as_str();
    let mut torch = TorchServer::start(python, a).map_err(|e| format!("torch serve could not start ({python}): {e}"))?;
    // A pause between the two runtimes, so that neither starts while the other's threads still
    // spin after their work (rayon's and OpenMP's idle loops).
    let pause = std::time::Duration::from_millis(20);
    println!(
        "{:<24} {:>5} {:>6} {:>9} {:>11} {:>10} {:>12} {:>14} {:>14}",
        "model", "input", "pairs", "upres ms", format!("torch {mode}"), "best/best", "pair median", "pair min–max", "pairs ≤ 0.8"
    );
    for k in stems {
        let model = RealEsrgan::load(&a.models, k, device, None).map_err(|e| format!("{}: {e} (run scripts/fetch-models.sh)", k.stem))?;
        let p = [GenParams::default()];
        for &size in &a.sizes {
            let img = image(size);
            let run = || model.upscale(std::slice::from_ref(&img), &p, &Unattended).expect("forward");
            run();
            torch.forward(k.stem, size, mode)?;
            let mut pairs = Vec::with_capacity(a.interleave as usize);
            for _ in 0..a.interleave.max(1) {
                std::thread::sleep(pause);
                let t = Instant::now();
                run();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                std::thread::sleep(pause);
                pairs.push((ms, torch.forward(k.stem, size, mode)?));
            }
            let best_u = pairs.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let best_t = pairs.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let mut ratios: Vec<f64> = pairs.iter().map(|(u, t)| u / t).collect();
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            let under = ratios.iter().filter(|r| **r <= 0.8).count();
            eprintln!("pairs {} {size}: {}", k.stem, pairs.iter().map(|(u, t)| format!("{u:.1}/{t:.1}")).collect::<Vec<_>>().join(" "));
            println!(
                "{:<24} {:>5} {:>6} {:>9.1} {:>11.1} {:>10.2} {:>12.2} {:>14} {:>14}",
                k.stem,
                format!("{size}²"),
                pairs.len(),
                best_u,
                best_t,
                best_u / best_t,
                median,
                format!("{:.2}–{:.2}", ratios[0], ratios[ratios.len() - 1]),
                format!("{under}/{}", ratios.len())
            );
        }
        model.idle();
    }
    Ok(())
}

/// PSNR of two [0, 1] images after 8-bit quantisation.
fn psnr8(a: &[f32], b: &[f32]) -> f64 {
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as f64;
    let mse = a.iter().zip(b).map(|(x, y)| (q(*x) - q(*y)).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn print_table(rows: &[Row]) {
    print!("{:<24} {:>5} {:>9} {:>8} {:>7} {:>10} {:>6}", "model", "input", "upres ms", "out MP/s", "GFLOP/s", "direct f32", "dB");
    for p in &PEERS {
        print!(" {:>10}", p.header);
    }
    println!(" {:>10} {:>11}", "fastest", "upres/best");
    let cell = |ms: Option<f64>| ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}"));
    for r in rows {
        let out_mp = (r.size * r.scale) as f64 * (r.size * r.scale) as f64 / 1e6;
        print!(
            "{:<24} {:>5} {:>9.1} {:>8.3} {:>7.1} {:>10} {:>6}",
            r.stem,
            format!("{}²", r.size),
            r.ms,
            out_mp / (r.ms / 1000.0),
            r.flops / 1e9 / (r.ms / 1000.0),
            cell(r.ms_fp32),
            r.psnr.map_or_else(|| "-".to_string(), |p| format!("{p:.1}"))
        );
        for ms in r.peers {
            print!(" {:>10}", cell(ms));
        }
        match r.fastest_peer() {
            Some((name, ms)) => println!(" {:>10} {:>11.2}", name, r.ms / ms),
            None => println!(" {:>10} {:>11}", "-", "-"),
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
    // upres's convolutions run on rayon's global pool; give it the same thread count as the peers.
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build_global() {
        eprintln!("realesrgan-bench: could not size the thread pool: {e}");
    }
    println!("realesrgan-bench: {}", upres::ml::fastconv::kernel_summary());
    let device = upres::ml::device::select(upres::config::DeviceSpec::Cpu).expect("cpu device");
    let stems: Vec<&Known> =
        KNOWN.iter().filter(|k| a.only.as_ref().is_none_or(|o| o.iter().any(|s| s == k.stem))).collect();
    let fast = upres::ml::realesrgan::fastconv_enabled_by_env();
    let backend = upres::ml::fastconv::Backend::for_gan();
    let wino = upres::ml::fastconv::Winograd::from_env_or(upres::ml::fastconv::Winograd::Auto);
    let path = if fast {
        format!("fastconv trunk {backend:?} (RRDBNet {:?}), image-facing convs {:?}, Winograd {wino:?}", upres::ml::fastconv::Backend::for_rrdb(), backend.edge())
    } else {
        "candle".to_string()
    };
    if a.interleave > 0 {
        println!("# realesrgan-bench --interleave: {path} CPU, {} threads, upres and PyTorch alternating forward by forward, untiled, batch 1", a.threads);
        if let Err(e) = interleaved(&a, &stems, &device) {
            eprintln!("realesrgan-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    println!("# realesrgan-bench: {path} CPU (UPRES_FASTCONV=off for candle), {} threads, {} timed runs × {} rounds, untiled, batch 1", a.threads, a.runs, a.rounds);
    let helpers: Vec<(&str, &Helper)> =
        [(a.torch.as_deref(), &TORCH), (a.ncnn.as_deref(), &NCNN)].into_iter().filter_map(|(py, h)| Some((py?, h))).collect();
    let mut rows: Vec<Row> = Vec::new();
    // Model by model, upres then each peer, so that load from other processes on a shared
    // machine spreads over all columns rather than hitting one runtime; `--rounds` repeats that
    // sequence and keeps each configuration's best.
    let best = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o.min(new)));
    for k in &stems {
        let mut model = match RealEsrgan::load(&a.models, k, &device, None) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: {e} (run scripts/fetch-models.sh)", k.stem);
                std::process::exit(1);
            }
        };
        let first = rows.len();
        use upres::ml::fastconv::Winograd;
        let fp32 = upres::ml::fastconv::Backend::best_fp32();
        let (default, default_wino) = (model.fastconv_backend(), model.fastconv_winograd());
        for round in 0..a.rounds {
            for &size in &a.sizes {
                let img = image(size);
                let (ms, cpu, out) = time(&model, &img, a.runs);
                let (ms_fp32, psnr) = if fast && !a.no_fp32 && (default != fp32 || default_wino != Winograd::Off) {
                    model.set_fastconv_backend(fp32).expect("fp32 backend");
                    model.set_fastconv_winograd(Winograd::Off).expect("direct kernel");
                    let (ms32, _, out32) = time(&model, &img, a.runs);
                    model.set_fastconv_backend(default).expect("default backend");
                    model.set_fastconv_winograd(default_wino).expect("default Winograd mode");
                    eprintln!("upres (fastconv {fp32:?} direct) {} {size}: {ms32:.1} ms", k.stem);
                    (Some(ms32), Some(psnr8(&out.data, &out32.data)))
                } else {
                    (None, None)
                };
                let cpu = cpu.map_or(String::new(), |c| format!(", CPU time {c:.0} ms per forward (all threads, mean of {})", a.runs.max(1)));
                eprintln!("upres ({path}) {} {size}: {ms:.1} ms (round {}){cpu}", k.stem, round + 1);
                match rows[first..].iter_mut().find(|r| r.size == size) {
                    Some(r) => {
                        r.ms = r.ms.min(ms);
                        r.ms_fp32 = ms_fp32.and_then(|m| best(r.ms_fp32, m));
                        r.psnr = psnr.or(r.psnr);
                    }
                    None => {
                        let flops = model.flops(size as usize, size as usize) as f64;
                        rows.push(Row { stem: k.stem, size, scale: model.scale(), ms, ms_fp32, psnr, flops, peers: [None; PEERS.len()] });
                    }
                }
            }
            // The peers run with none of upres's buffers held.
            model.idle();
            for (python, helper) in &helpers {
                for t in peer_times(python, helper, &a, k.stem) {
                    let col = PEERS.iter().position(|p| p.runtime == t.runtime && p.mode == t.mode);
                    let row = rows[first..].iter_mut().find(|r| r.size == t.size);
                    if let (Some(col), Some(row)) = (col, row) {
                        row.peers[col] = best(row.peers[col], t.ms);
                    }
                }
            }
        }
    }
    print_table(&rows);
}
