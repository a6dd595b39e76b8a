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

fn parity(stem: &str) {
    let model = load(stem, None);
    for (w, h) in SIZES {
        let (ishape, input) = fixture(&format!("in-{w}x{h}.npy"));
        assert_eq!(ishape, vec![3, h, w]);
        let (oshape, want) = fixture(&format!("{stem}-{w}x{h}.npy"));
        let x = Tensor::from_vec(input, (1, 3, h, w), &Device::Cpu).unwrap();
        let y = model.forward(&x).unwrap();
        assert_eq!(y.dims()[1..], oshape[..], "{stem} {w}x{h}: output shape");
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let (max, psnr) = compare(&got, &want);
        println!("parity {stem} {w}x{h}: max abs err {max:.2e}, PSNR {psnr:.1} dB (8-bit)");
        assert!(psnr >= 45.0, "{stem} {w}x{h}: PSNR {psnr:.1} dB < 45 dB vs ncnn (max abs err {max:.2e})");
        assert!(max < 1e-4, "{stem} {w}x{h}: max abs err {max:.2e} vs ncnn");
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
