//! fastconv vs candle conv2d vs PyTorch/oneDNN, per Real-ESRGAN layer shape, plus a full
//! SRVGGNetCompact-shaped forward (random weights) through both paths.
//!
//! ```text
//! .venv/bin/python scripts/bench_torch_conv.py target/torch_conv.json   # optional, torch column
//! cargo bench --bench fastconv
//! ```
//! The `wino` columns are the Winograd F(4×4, 3×3) path (`Winograd::Always`, AVX-512 only) in
//! *effective* GFLOP/s: the direct convolution's FLOPs over its time, so the columns compare.
//!
//! Env: `FASTCONV_TORCH_JSON` (default target/torch_conv.json), `FASTCONV_BENCH_SECS`
//! (min seconds per measurement, default 0.5), `FASTCONV_SKIP_CANDLE=1`, `FASTCONV_ONLY=text`
//! (only the shapes whose `n hxw cin->cout` label contains it).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use upres::ml::fastconv::{Activation, Backend, Conv3x3, Epilogue, Nhwc, Winograd};

/// (n, h, w, cin, cout) — keep in sync with scripts/bench_torch_conv.py.
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 64, 64, 64, 64),
    (1, 128, 128, 64, 64),
    (1, 256, 256, 64, 64),
    (1, 128, 128, 64, 32),
    (1, 128, 128, 96, 32),
    (1, 128, 128, 160, 32),
    (1, 128, 128, 192, 64),
    (1, 128, 128, 3, 64),
    (1, 128, 128, 64, 48),
    (1, 256, 256, 64, 3),
    (4, 64, 64, 64, 64),
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// CPU time of all this process's threads in seconds (Linux schedstat, ns resolution; 0
/// elsewhere). On a shared machine `flops / cpu time` shows the kernel's per-core rate
/// independent of how much of the machine other processes took.
fn cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e9
}

/// Best wall time of `f` over at least `min` seconds (and at least 2 runs after a warm-up).
fn best_time(min: Duration, f: impl FnMut()) -> f64 {
    best_time_cpu(min, f).0
}

/// (best wall time, mean CPU seconds per run).
fn best_time_cpu(min: Duration, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 2 || start.elapsed() < min {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    (best, (cpu_secs() - cpu0) / runs as f64)
}

fn torch_table() -> Vec<((usize, usize, usize, usize, usize), f64)> {
    let path = std::env::var("FASTCONV_TORCH_JSON").unwrap_or_else(|_| "target/torch_conv.json".into());
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("(no {path}: torch column empty; run scripts/bench_torch_conv.py)");
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("torch json");
    v["shapes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let g = |k: &str| s[k].as_u64().unwrap_or(0) as usize;
            ((g("n"), g("h"), g("w"), g("cin"), g("cout")), s["nhwc_gflops"].as_f64().unwrap_or(0.0))
        })
        .collect()
}

/// Contemporaneous ceiling: a register-only AVX-512 FMA loop (24 independent chains,
/// `fastconv::fma_peak_chains`) on every rayon thread. Returns (GFLOP/s wall, GFLOP per
/// CPU-second); NaN without AVX-512F.
fn fma_peak(min: Duration) -> (f64, f64) {
    if upres::ml::fastconv::fma_peak_chains(1).is_none() {
        return (f64::NAN, f64::NAN);
    }
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let iters = 2_000_000;
    let flops = (threads * iters * 24 * 32) as f64;
    let (t, cpu) = best_time_cpu(min, || {
        let s: f32 = (0..threads).into_par_iter().map(|_| upres::ml::fastconv::fma_peak_chains(iters).unwrap_or(0.0)).sum();
        std::hint::black_box(s);
    });
    (flops / t / 1e9, flops / cpu / 1e9)
}

fn random_nhwc(rng: &mut Rng, n: usize, h: usize, w: usize, c: usize) -> Nhwc {
    let mut t = Nhwc::zeros(n, h, w, c);
    for ni in 0..n {
        for y in 0..h {
            for x in 0..w {
                for v in t.pixel_mut(ni, y, x) {
                    *v = rng.next();
                }
            }
        }
    }
    t
}

fn main() {
    let min = Duration::from_secs_f64(std::env::var("FASTCONV_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.5));
    let skip_candle = std::env::var("FASTCONV_SKIP_CANDLE").is_ok();
    let dev = Device::Cpu;
    let torch = torch_table();
    let bf16 = Backend::Avx512Bf16.supported();
    println!(
        "fastconv bench: backend {:?}, rayon threads {}, bf16 {}",
        Backend::detect(),
        rayon::current_num_threads(),
        if bf16 { "yes" } else { "no" }
    );
    let (pk, pk_core) = fma_peak(min);
    println!("AVX-512 FMA-only loop now: {pk:.1} GFLOP/s wall, {pk_core:.1} GFLOP per CPU-second");
    println!("GFLOP/s (best wall time); f32/core-s = GFLOP per CPU-second of ours f32 (per-core rate)");
    let wino = Backend::Avx512.supported();
    println!("wino = Winograd F(4x4,3x3), effective GFLOP/s (direct FLOPs / time)");
    println!("amx = AMX bf16 tiles (the Real-ESRGAN trunk default) reading the bf16 shadow an AMX conv left on its input (as inside a network)");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "shape n hxw cin->cout",
        "ours f32",
        "wino",
        "ours bf16",
        "amx",
        "candle",
        "torch",
        "f32/tch",
        "wino/tch",
        "amx/tch",
        "f32/core-s",
        "wino/cor-s"
    );
    let mut rng = Rng(1);
    let only = std::env::var("FASTCONV_ONLY").unwrap_or_default();
    for &(n, h, w, cin, cout) in SHAPES {
        if !format!("{n} {h}x{w} {cin}->{cout}").contains(&only) {
            continue;
        }
        let wt = rng.vec(cout * cin * 9, 0.1);
        let bias = rng.vec(cout, 0.1);
        let x = random_nhwc(&mut rng, n, h, w, cin);
        let mut out = Nhwc::zeros(n, h, w, cout);
        let flops = 2.0 * 9.0 * (n * h * w * cin * cout) as f64;
        let conv = Conv3x3::with_backend(&wt, Some(&bias), cin, cout, Activation::LeakyRelu(0.2), Backend::best_fp32()).unwrap();
        let (t, cpu) = best_time_cpu(min, || conv.forward(&x, 0, &mut out, 0, &Epilogue::default()).unwrap());
        let ours = flops / t / 1e9;
        let per_core = flops / cpu / 1e9;
        let (ours_w, wino_core) = if wino {
            let c = Conv3x3::with_options(&wt, Some(&bias), cin, cout, Activation::LeakyRelu(0.2), Backend::Avx512, Winograd::Always)
                .unwrap();
            let (t, cpu) = best_time_cpu(min, || c.forward(&x, 0, &mut out, 0, &Epilogue::default()).unwrap());
            (flops / t / 1e9, flops / cpu / 1e9)
        } else {
            (f64::NAN, f64::NAN)
        };
        let ours_bf = if bf16 {
            let c = Conv3x3::with_backend(&wt, Some(&bias), cin, cout, Activation::LeakyRelu(0.2), Backend::Avx512Bf16).unwrap();
            let t = best_time(min, || c.forward(&x, 0, &mut out, 0, &Epilogue::default()).unwrap());
            flops / t / 1e9
        } else {
            f64::NAN
        };
        let ours_amx = if Backend::AmxBf16.supported() {
            let feed_w = rng.vec(cin * cin * 9, 0.05);
            let feed = Conv3x3::with_backend(&feed_w, None, cin, cin, Activation::None, Backend::AmxBf16).unwrap();
            let mut xa = Nhwc::zeros(n, h, w, cin);
            feed.forward(&x, 0, &mut xa, 0, &Epilogue::default()).unwrap();
            let c = Conv3x3::with_backend(&wt, Some(&bias), cin, cout, Activation::LeakyRelu(0.2), Backend::AmxBf16).unwrap();
            let t = best_time(min, || c.forward(&xa, 0, &mut out, 0, &Epilogue::default()).unwrap());
            flops / t / 1e9
        } else {
            f64::NAN
        };
        let cand = if skip_candle {
            f64::NAN
        } else {
            let xt = x.to_tensor(0, cin, &dev).unwrap();
            let wt_t = Tensor::from_vec(wt.clone(), (cout, cin, 3, 3), &dev).unwrap();
            let t = best_time(min.min(Duration::from_millis(300)), || {
                let _ = xt.conv2d(&wt_t, 1, 1, 1, 1).unwrap();
            });
            flops / t / 1e9
        };
        let tch = torch.iter().find(|(k, _)| *k == (n, h, w, cin, cout)).map_or(f64::NAN, |(_, g)| *g);
        println!(
            "{:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>10.1} {:>10.1}",
            format!("{n} {h}x{w} {cin}->{cout}"),
            ours,
            ours_w,
            ours_bf,
            ours_amx,
            cand,
            tch,
            ours / tch,
            ours_w / tch,
            ours_amx / tch,
            per_core,
            wino_core
        );
    }
    srvgg(&dev, min, skip_candle);
}

/// SRVGGNetCompact (animevideov3 shape: 64 feats, 16 body convs, ×4) with random weights.
struct Srvgg {
    convs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>, usize, usize)>, // weight, bias, prelu slope, cin, cout
}

const FEAT: usize = 64;
const BODY: usize = 16;
const SCALE: usize = 4;

impl Srvgg {
    fn random(rng: &mut Rng) -> Self {
        let mut convs = Vec::new();
        let mut cin = 3;
        for i in 0..BODY + 2 {
            let cout = if i == BODY + 1 { 3 * SCALE * SCALE } else { FEAT };
            let std = (2.0 / (9.0 * cin as f32)).sqrt();
            let w = rng.vec(cout * cin * 9, std * 1.7);
            let b = rng.vec(cout, 0.01);
            let s = rng.vec(cout, 0.1).into_iter().map(|v| 0.25 + v).collect();
            convs.push((w, b, s, cin, cout));
            cin = cout;
        }
        Srvgg { convs }
    }

    fn fast_layers(&self, backend: Backend, wino: Winograd) -> Vec<Conv3x3> {
        let last = self.convs.len() - 1;
        self.convs
            .iter()
            .enumerate()
            .map(|(i, (w, b, s, cin, cout))| {
                let act = if i == last { Activation::None } else { Activation::PRelu(s.clone()) };
                Conv3x3::with_options(w, Some(b), *cin, *cout, act, backend, wino).unwrap()
            })
            .collect()
    }

    /// Our path; buffers are ping-ponged and reused by the caller.
    fn fast_forward(layers: &[Conv3x3], x: &Nhwc, bufs: &mut [Nhwc; 2], last: &mut Nhwc) -> Nhwc {
        layers[0].forward(x, 0, &mut bufs[0], 0, &Epilogue::default()).unwrap();
        let mut cur = 0;
        for l in &layers[1..layers.len() - 1] {
            let (a, b) = bufs.split_at_mut(1);
            let (src, dst) = if cur == 0 { (&a[0], &mut b[0]) } else { (&b[0], &mut a[0]) };
            l.forward(src, 0, dst, 0, &Epilogue::default()).unwrap();
            cur ^= 1;
        }
        layers[layers.len() - 1].forward(&bufs[cur], 0, last, 0, &Epilogue::default()).unwrap();
        let mut out = last.pixel_shuffle(0, 3 * SCALE * SCALE, SCALE);
        let up = x.upsample_nearest(0, 3, SCALE);
        out.add_assign(0, &up, 0, 3);
        out
    }

    fn candle_forward(&self, x: &Tensor) -> Tensor {
        let dev = x.device();
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (w, b, s, cin, cout)) in self.convs.iter().enumerate() {
            let wt = Tensor::from_vec(w.clone(), (*cout, *cin, 3, 3), dev).unwrap();
            let bt = Tensor::from_vec(b.clone(), (1, *cout, 1, 1), dev).unwrap();
            y = y.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&bt).unwrap();
            if i != last {
                let st = Tensor::from_vec(s.clone(), (1, *cout, 1, 1), dev).unwrap();
                let pos = y.relu().unwrap();
                let neg = y.neg().unwrap().relu().unwrap().neg().unwrap();
                y = (pos + neg.broadcast_mul(&st).unwrap()).unwrap();
            }
        }
        // pixel shuffle ×4: (n, 3*16, h, w) -> (n, 3, h*4, w*4)
        let (n, _, h, w) = y.dims4().unwrap();
        let y = y
            .reshape((n, 3, SCALE, SCALE, h, w))
            .unwrap()
            .permute((0, 1, 4, 2, 5, 3))
            .unwrap()
            .reshape((n, 3, h * SCALE, w * SCALE))
            .unwrap();
        let up = x.upsample_nearest2d(h * SCALE, w * SCALE).unwrap();
        (y + up).unwrap()
    }
}

fn to_u8(v: &[f32]) -> Vec<u8> {
    v.iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

fn srvgg(dev: &Device, min: Duration, skip_candle: bool) {
    let (n, h, w) = (1, 128, 128);
    let mut rng = Rng(99);
    let net = Srvgg::random(&mut rng);
    let mut x = Nhwc::zeros(n, h, w, 3);
    for y in 0..h {
        for xx in 0..w {
            for v in x.pixel_mut(0, y, xx) {
                *v = (rng.next() + 1.0) * 0.5;
            }
        }
    }
    let flops: f64 = net.convs.iter().map(|(_, _, _, ci, co)| 2.0 * 9.0 * (ci * co * n * h * w) as f64).sum();
    let mut bufs = [Nhwc::zeros(n, h, w, FEAT), Nhwc::zeros(n, h, w, FEAT)];
    let mut last = Nhwc::zeros(n, h, w, 3 * SCALE * SCALE);
    let layers = net.fast_layers(Backend::best_fp32(), Winograd::Off);
    let mut ours_out = Vec::new();
    let t_ours = best_time(min, || ours_out = Srvgg::fast_forward(&layers, &x, &mut bufs, &mut last).to_nchw(0, 3));
    println!("\nSRVGGNetCompact-shaped forward (64 feats, 16 body convs, x4), input 1x3x{h}x{w}, {:.2} GFLOP:", flops / 1e9);
    println!("  ours f32   {:8.1} ms  {:6.1} GFLOP/s", t_ours * 1e3, flops / t_ours / 1e9);
    if Backend::Avx512.supported() {
        for mode in [Winograd::Auto, Winograd::Always] {
            let layers = net.fast_layers(Backend::Avx512, mode);
            let mut w_out = Vec::new();
            let t = best_time(min, || w_out = Srvgg::fast_forward(&layers, &x, &mut bufs, &mut last).to_nchw(0, 3));
            println!(
                "  wino {:<6}{:8.1} ms  {:6.1} GFLOP/s eff  x{:.2} vs ours f32  PSNR vs ours f32 on 8-bit output: {:.1} dB",
                format!("{mode:?}"),
                t * 1e3,
                flops / t / 1e9,
                t_ours / t,
                psnr(&to_u8(&w_out), &to_u8(&ours_out))
            );
        }
    }
    for (name, b) in [
        ("ours bf16 ", Backend::Avx512Bf16),
        ("ours amx  ", Backend::AmxBf16),
        ("ours amx2 ", Backend::AmxBf16x2),
        ("ours amx3 ", Backend::AmxBf16x3),
    ] {
        if !b.supported() {
            continue;
        }
        let layers = net.fast_layers(b, Winograd::Off);
        let mut bf_out = Vec::new();
        let t = best_time(min, || bf_out = Srvgg::fast_forward(&layers, &x, &mut bufs, &mut last).to_nchw(0, 3));
        println!(
            "  {name} {:8.1} ms  {:6.1} GFLOP/s  PSNR vs ours f32 on 8-bit output: {:.1} dB",
            t * 1e3,
            flops / t / 1e9,
            psnr(&to_u8(&bf_out), &to_u8(&ours_out))
        );
    }
    if !skip_candle {
        let xt = x.to_tensor(0, 3, dev).unwrap();
        let mut cand_out = Vec::new();
        let t = best_time(min.min(Duration::from_millis(300)), || {
            cand_out = net.candle_forward(&xt).flatten_all().unwrap().to_vec1::<f32>().unwrap()
        });
        println!(
            "  candle     {:8.1} ms  {:6.1} GFLOP/s  PSNR ours f32 vs candle on 8-bit output: {:.1} dB",
            t * 1e3,
            flops / t / 1e9,
            psnr(&to_u8(&ours_out), &to_u8(&cand_out))
        );
        println!("  speed-up vs candle: {:.1}x", t / t_ours);
    }
}
