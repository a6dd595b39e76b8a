//! sd-bench: speed and memory of the sd-x4 pipeline on this machine.
//!
//! ```text
//! sd-bench speed [--full] [--sizes 64,128] [--steps 3] [--batches 1,4]
//! sd-bench rss SIZE [--full] [--steps 1] [--vae-tile T] [--vae-overlap O]
//! sd-bench vae SIZE [--full] [--vae-tile T] [--vae-overlap O]
//! sd-bench tiling SIZE [--full] [--steps 2] [--vae-tile T] [--vae-overlap O]
//! sd-bench schedulers [--full] [--sizes 32] [--steps 5,8,10,15,20] [--ref-steps 30] [--seeds 4]
//! sd-bench unet [--sizes 64,128] [--runs 2] [--threads 2] [--torch PYTHON]
//! ```
//! `unet` times one denoising step of the full-size UNet alone (random weights built in memory
//! from tests/fixtures/sd-x4-configs, batch 2 = the two guidance halves of one image, f32): the
//! best of `--runs` forward passes per size. With `--torch PYTHON` the same step of diffusers'
//! `UNet2DConditionModel` (scripts/sd_unet_torch.py, same config, same thread count) runs in the
//! same process tree, size by size after upres's, and the ratio upres/diffusers is printed
//! (scripts/sd-unet-bench.sh creates the pinned venv and runs both).
//! `speed` reports seconds per image per denoising step (time between the first and the last
//! step's progress report, divided by steps-1 and by the batch size) and the speed-up of batching.
//! `rss` runs the whole pipeline once at SIZE² and prints the peak resident set size (VmHWM,
//! reset after generating a `--full` model, so it covers loading and the run);
//! `vae` decodes one random SIZE² latent (the memory hot spot: mid-block attention over SIZE²
//! tokens) and prints its time and the peak RSS. The VAE tiles latents as `[sd]`'s defaults
//! say (`sd.vae_tile`, `sd.vae_tile_overlap`) unless `--vae-tile` (0: decode whole) and
//! `--vae-overlap` override them. `tiling` runs the pipeline at SIZE² and compares the tiled
//! decode of its final latents with a whole one: PSNR on the 8-bit output and both times.
//! `schedulers` compares DPM-Solver++ and DDIM at each of `--steps` with DDIM at `--ref-steps`
//! (same seed, prompt and image): PSNR of the 8-bit outputs, the lowest over `--seeds` seeds, and
//! the wall time of one run.
//! Without `--full` the tiny fixture model (tests/fixtures/sd-tiny/model) is used; with it a
//! full-size model with random weights is generated from tests/fixtures/sd-x4-configs into a
//! temporary folder (safetensors written at bench time, removed afterwards).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use upres::engine::{GenParams, Progress, RunContext, SchedulerKind};
use upres::ml::sd::pipeline::{Item, Noise};
use upres::ml::sd::{clip, load_pipeline, tokenizer, unet, vae};

struct Timer(Mutex<Vec<Instant>>);

impl RunContext for Timer {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&self, _: Progress) {
        self.0.lock().unwrap().push(Instant::now());
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read<T: serde::de::DeserializeOwned>(p: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Writes a full-size x4 upscaler with random weights into `dir` (diffusers layout).
fn generate_full(dir: &Path) -> anyhow::Result<()> {
    let src = root().join("tests/fixtures/sd-x4-configs");
    let t0 = Instant::now();
    for sub in ["unet", "vae", "text_encoder", "scheduler", "low_res_scheduler", "tokenizer"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(src.join("model_index.json"), dir.join("model_index.json"))?;
    for (sub, f) in [("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
        ("scheduler", "scheduler_config.json"), ("low_res_scheduler", "scheduler_config.json")] {
        std::fs::copy(src.join(sub).join(f), dir.join(sub).join(f))?;
    }
    let merges = std::fs::read_to_string(root().join("tests/fixtures/sd-tiny/clip-bpe/merges.txt"))?;
    std::fs::write(dir.join("tokenizer/merges.txt"), &merges)?;
    std::fs::write(dir.join("tokenizer/vocab.json"), serde_json::to_string(&tokenizer::vocab_from_merges(&merges))?)?;
    std::fs::write(dir.join("tokenizer/tokenizer_config.json"), r#"{"model_max_length": 77, "pad_token": "!"}"#)?;
    let dev = Device::Cpu;
    {
        let vm = VarMap::new();
        unet::Unet::new(&read(&src.join("unet/config.json")), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        vm.save(dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    }
    {
        let vm = VarMap::new();
        vae::VaeDecoder::new(&read(&src.join("vae/config.json")), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        vm.save(dir.join("vae/diffusion_pytorch_model.safetensors"))?;
    }
    {
        let vm = VarMap::new();
        clip::ClipTextModel::new(&read(&src.join("text_encoder/config.json")), VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        vm.save(dir.join("text_encoder/model.safetensors"))?;
    }
    eprintln!("generated a random full-size model in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Peak RSS (VmHWM) since the start or since the model was generated.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

fn arg_list(args: &[String], name: &str, default: &str) -> Vec<usize> {
    let v = args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str).unwrap_or(default);
    v.split(',').map(|x| x.trim().parse().expect("a number")).collect()
}

fn arg_opt(args: &[String], name: &str) -> Option<usize> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|v| v.trim().parse().expect("a number"))
}

/// PSNR in dB of two images in [-1, 1] after the pipeline's post-processing to 8 bits.
fn psnr8(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let u8s = |t: &Tensor| -> anyhow::Result<Vec<f64>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|&y| ((y / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as f64).collect())
    };
    let (a, b) = (u8s(a)?, u8s(b)?);
    let mse = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64;
    Ok(10.0 * (255.0f64.powi(2) / mse).log10())
}

/// A persistent `sd_unet_torch.py serve` process: one best-of-`runs` time per request.
struct TorchUnet {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl TorchUnet {
    fn start(python: &str, threads: usize) -> std::io::Result<Self> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(python)
            .arg(root().join("scripts/sd_unet_torch.py"))
            .args(["serve", "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self { child, stdin, stdout })
    }

    fn best(&mut self, size: usize, runs: usize) -> anyhow::Result<f64> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{size} {runs}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.trim().parse().map_err(|_| anyhow::anyhow!("sd_unet_torch.py answered {line:?} (see its stderr)"))
    }
}

impl Drop for TorchUnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sd-bench unet`: one UNet step (batch 2), upres and optionally diffusers, size by size.
fn unet_speed(args: &[String]) -> anyhow::Result<()> {
    let sizes = arg_list(args, "--sizes", "64,128");
    let runs = arg_list(args, "--runs", "2")[0].max(1);
    let threads = rayon::current_num_threads();
    let torch = args.iter().position(|a| a == "--torch").and_then(|i| args.get(i + 1));
    let cfg: unet::UnetConfig = read(&root().join("tests/fixtures/sd-x4-configs/unet/config.json"));
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let vm = VarMap::new();
    let net = unet::Unet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    drop(vm);
    eprintln!("built the full-size UNet (random weights) in {:.1}s", t0.elapsed().as_secs_f64());
    let mut peer = torch.map(|py| TorchUnet::start(py, threads)).transpose()?;
    println!("# sd-bench unet: one denoising step, batch 2 (CFG halves of one image), f32, {threads} threads, best of {runs}");
    println!("| input | upres (s) | diffusers (s) | upres / diffusers |");
    println!("|---|---|---|---|");
    let ctx = Tensor::randn(0f32, 1f32, (2, 77, cfg.cross_attention_dim), &dev)?;
    let labels = Tensor::new(&[20u32, 20], &dev)?;
    for &size in &sizes {
        let x = Tensor::randn(0f32, 1f32, (2, cfg.in_channels, size, size), &dev)?;
        // upres and diffusers alternate pass by pass, so load from other processes on a shared
        // machine hits both sides alike; each side's best pass counts.
        let (mut best, mut theirs) = (f64::INFINITY, f64::INFINITY);
        for r in 0..runs {
            let t = Instant::now();
            net.forward(&x, 500.0, &ctx, &labels)?;
            let mine = t.elapsed().as_secs_f64();
            best = best.min(mine);
            eprintln!("upres {size}x{size} pass {}: {mine:.3}s", r + 1);
            if let Some(p) = peer.as_mut() {
                let t = p.best(size, 1)?;
                theirs = theirs.min(t);
                eprintln!("diffusers {size}x{size} pass {}: {t:.3}s", r + 1);
            }
        }
        if peer.is_some() {
            println!("| {size}x{size} | {best:.3} | {theirs:.3} | {:.2} |", best / theirs);
        } else {
            println!("| {size}x{size} | {best:.3} | - | - |");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // upres's kernels run on rayon's global pool; `--threads` sizes it like the peer's.
    if let Some(t) = arg_opt(&args, "--threads") {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    println!("sd-bench: {}; SD convolutions: {}", upres::ml::fastconv::kernel_summary(), upres::ml::sd::conv::kernel_family());
    let mode = args.first().cloned().unwrap_or_else(|| "speed".into());
    if mode == "unet" {
        return unet_speed(&args);
    }
    let full = args.iter().any(|a| a == "--full");
    let tmp = std::env::temp_dir().join(format!("upres-sd-bench-{}", std::process::id()));
    let dir = if full {
        generate_full(&tmp)?;
        tmp.clone()
    } else {
        root().join("tests/fixtures/sd-tiny/model")
    };
    // Generating the random model peaks at about a whole component plus its serialised bytes;
    // reset the high-water mark so the figures are those of loading and running only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t0 = Instant::now();
    let (mut pipe, digest, _) = load_pipeline(&dir, &Device::Cpu, DType::F32)?;
    let mut sd_cfg = upres::config::SdConfig::default();
    if let Some(t) = arg_opt(&args, "--vae-tile") {
        sd_cfg.vae_tile = t as u32;
    }
    if let Some(o) = arg_opt(&args, "--vae-overlap") {
        sd_cfg.vae_tile_overlap = o as u32;
    }
    pipe.vae_tiling = upres::ml::sd::vae_tiling(&sd_cfg);
    eprintln!("VAE tiling: {:?}", pipe.vae_tiling);
    eprintln!("after load: RSS {:.2} GiB, peak so far {:.2} GiB", status_kib("VmRSS") as f64 / (1 << 20) as f64, peak_rss_kib() as f64 / (1 << 20) as f64);
    eprintln!("loaded {} ({digest}) in {:.1}s", if full { "full-size random model" } else { "tiny model" }, t0.elapsed().as_secs_f64());
    let label = if full { "full" } else { "tiny" };
    let run = |size: usize, batch: usize, steps: usize| -> anyhow::Result<(f64, f64)> {
        let imgs: Vec<Tensor> = (0..batch).map(|_| Tensor::rand(0f32, 1f32, (3, size, size), &Device::Cpu)).collect::<Result<_, _>>()?;
        let params: Vec<GenParams> =
            (0..batch).map(|i| GenParams { prompt: format!("a photo, item {i}"), steps: steps as u32, seed: i as u64, ..GenParams::default() }).collect();
        let items: Vec<Item> = imgs.iter().zip(&params).map(|(im, p)| Item { image: im, params: p, noise: Noise::Seeded(p.seed) }).collect();
        let timer = Timer(Mutex::new(Vec::new()));
        let t = Instant::now();
        pipe.run(&items, steps, SchedulerKind::Ddim, &timer, None)?;
        let total = t.elapsed().as_secs_f64();
        let marks = timer.0.into_inner().unwrap();
        let per_step = if marks.len() >= 2 {
            (marks[marks.len() - 1] - marks[0]).as_secs_f64() / (marks.len() - 1) as f64
        } else {
            total
        };
        Ok((per_step / batch as f64, total))
    };
    match mode.as_str() {
        "schedulers" => {
            let size = arg_list(&args, "--sizes", "32")[0];
            let steps = arg_list(&args, "--steps", "5,8,10,15,20");
            let ref_steps = arg_list(&args, "--ref-steps", "30")[0];
            let seeds = arg_list(&args, "--seeds", "4")[0] as u64;
            // a smooth test image: the tiny model's random weights make a textured output anyway
            let img: Vec<f32> = (0..3 * size * size)
                .map(|i| {
                    let (c, y, x) = (i / (size * size), (i / size) % size, i % size);
                    0.5 + 0.4 * ((x as f32 / 5.0 + c as f32).sin() * (y as f32 / 4.0).cos())
                })
                .collect();
            let img = Tensor::from_vec(img, (3, size, size), &Device::Cpu)?;
            let go = |kind: SchedulerKind, steps: usize, seed: u64| -> anyhow::Result<(Tensor, f64)> {
                let params = GenParams { prompt: "a photo of a cat, sharp details".into(), negative_prompt: "blurry".into(), steps: steps as u32, seed, scheduler: kind, ..GenParams::default() };
                let t = Instant::now();
                let y = pipe.run(&[Item { image: &img, params: &params, noise: Noise::Seeded(seed) }], steps, kind, &Timer(Mutex::new(Vec::new())), None)?;
                Ok((y, t.elapsed().as_secs_f64()))
            };
            let refs: Vec<(Tensor, f64)> = (0..seeds).map(|s| go(SchedulerKind::Ddim, ref_steps, s)).collect::<anyhow::Result<_>>()?;
            let ref_time = refs.iter().map(|r| r.1).sum::<f64>() / seeds as f64;
            println!("reference: DDIM-{ref_steps}, {label} model, {size}x{size} input, {seeds} seeds, {ref_time:.2}s per run");
            println!("| scheduler | steps | min PSNR vs DDIM-{ref_steps} (dB) | mean PSNR (dB) | s per run |");
            println!("|---|---|---|---|---|");
            for &n in &steps {
                for kind in [SchedulerKind::Dpm, SchedulerKind::Ddim] {
                    let (mut min, mut sum, mut time) = (f64::INFINITY, 0.0, 0.0);
                    for (s, (r, _)) in refs.iter().enumerate() {
                        let (y, t) = go(kind, n, s as u64)?;
                        // the outputs are in [0, 1]; psnr8 takes [-1, 1]
                        let p = psnr8(&((y * 2.0)? - 1.0)?, &((r * 2.0)? - 1.0)?)?;
                        min = min.min(p);
                        sum += p.min(99.0);
                        time += t;
                    }
                    println!("| {} | {n} | {min:.2} | {:.2} | {:.2} |", kind.as_str(), sum / seeds as f64, time / seeds as f64);
                }
            }
        }
        "vae" => {
            let size: usize = args.get(1).and_then(|s| s.parse().ok()).expect("vae SIZE");
            let z = Tensor::randn(0f32, 1f32, (1, 4, size, size), &Device::Cpu)?;
            let t = Instant::now();
            let y = pipe.vae.decode_tiled(&z, pipe.vae_tiling)?;
            println!(
                "{label} VAE decode of a {size}x{size} latent to {:?}: {:.1}s, peak RSS {:.2} GiB",
                y.dims(),
                t.elapsed().as_secs_f64(),
                peak_rss_kib() as f64 / (1 << 20) as f64
            );
        }
        "tiling" => {
            let size: usize = args.get(1).and_then(|s| s.parse().ok()).expect("tiling SIZE");
            let steps = arg_list(&args, "--steps", "2")[0];
            let tiling = pipe.vae_tiling.expect("a VAE tiling (--vae-tile > 0)");
            let img = Tensor::rand(0f32, 1f32, (3, size, size), &Device::Cpu)?;
            let params = GenParams { prompt: "a photo".into(), steps: steps as u32, seed: 1, ..GenParams::default() };
            let mut tr = upres::ml::sd::pipeline::Trace::default();
            let item = Item { image: &img, params: &params, noise: Noise::Seeded(1) };
            pipe.run(&[item], steps, SchedulerKind::Ddim, &Timer(Mutex::new(Vec::new())), Some(&mut tr))?;
            let z = (tr.final_latents.expect("traced") / upres::ml::sd::pipeline::VAE_SCALING)?;
            let t = Instant::now();
            let whole = pipe.vae.decode(&z)?;
            let t_whole = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let tiled = pipe.vae.decode_tiled(&z, Some(tiling))?;
            let t_tiled = t.elapsed().as_secs_f64();
            let max = (&whole - &tiled)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            println!(
                "{label} model, {size}x{size} latent, {tiling:?}: tiled vs whole PSNR {:.2} dB (8-bit), max abs diff {max:.3e}; decode whole {t_whole:.1}s, tiled {t_tiled:.1}s",
                psnr8(&whole, &tiled)?
            );
        }
        "rss" => {
            let size: usize = args.get(1).and_then(|s| s.parse().ok()).expect("rss SIZE");
            let steps = arg_list(&args, "--steps", "1")[0];
            let (_, total) = run(size, 1, steps)?;
            println!("{label} model, {size}x{size} input, {steps} step(s): {total:.1}s wall, peak RSS {:.2} GiB", peak_rss_kib() as f64 / (1 << 20) as f64);
        }
        _ => {
            let sizes = arg_list(&args, "--sizes", "64,128");
            let steps = arg_list(&args, "--steps", "3")[0].max(2);
            let batches = arg_list(&args, "--batches", "1,4");
            println!("| model | input | batch | s/image/step | speed-up vs batch 1 | wall (s) |");
            println!("|---|---|---|---|---|---|");
            for &size in &sizes {
                let mut base = None;
                for &b in &batches {
                    let (pis, total) = run(size, b, steps)?;
                    let base = *base.get_or_insert(pis);
                    println!("| {label} | {size}x{size} | {b} | {pis:.3} | {:.2}x | {total:.1} |", base / pis);
                }
            }
        }
    }
    if full {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
