//! Fast path vs a straightforward f64-accumulating reference convolution.

use super::job::{bf16_to_f32, f32_to_bf16};
use super::*;
use candle_core::{Device, Tensor};

/// Deterministic xorshift in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

const BACKENDS: [Backend; 8] = Backend::ALL;

/// Says in the test output, past libtest's capture (which hides a passing test's `println!`),
/// that part of a test cannot run on this CPU, so a green run never hides an unexercised path.
fn skip_note(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED (part of) fastconv::{test}: {why}");
}

/// The backends this CPU runs; the others are named in a skip note.
fn runnable(test: &str) -> Vec<Backend> {
    let (run, skip): (Vec<Backend>, Vec<Backend>) = BACKENDS.into_iter().partition(|b| b.supported());
    if !skip.is_empty() {
        skip_note(test, &format!("backends {skip:?} not supported (or hidden) on this CPU"));
    }
    run
}

/// Per-output tolerance factor on Σ|w·x|+|b|: bf16 rounds inputs and weights (2⁻⁹ relative
/// each); bf16x2 rounds only the weights, bf16w2 only the inputs; bf16x3 drops only the lo·lo
/// term (~2⁻¹⁸) plus f32 accumulation.
fn tol(b: Backend) -> f64 {
    match b {
        Backend::Avx512Bf16 | Backend::AmxBf16 => 1.6e-2,
        Backend::AmxBf16x2 | Backend::AmxBf16W2 => 4e-3,
        Backend::AmxBf16x3 => 2e-5,
        _ => 1e-5,
    }
}

/// Case `k`'s activation (none, LeakyReLU 0.2, random PReLU, in turn) and its per-channel
/// negative slopes for [`reference`].
fn random_activation(rng: &mut Rng, k: usize, out_c: usize) -> (Activation, Vec<f32>) {
    match k % 3 {
        0 => (Activation::None, vec![1.0; out_c]),
        1 => (Activation::LeakyRelu(0.2), vec![0.2; out_c]),
        _ => {
            let v = rng.vec(out_c);
            (Activation::PRelu(v.clone()), v)
        }
    }
}

/// Reference: returns (value, Σ|terms|) per output, NCHW-indexed [n][o][y][x].
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &Nhwc,
    in_off: usize,
    wt: &[f32],
    bias: &[f32],
    in_c: usize,
    out_c: usize,
    slopes: &[f32],
    scale: f32,
    res: &[(&Nhwc, usize, f32)],
) -> Vec<(f64, f64)> {
    let (n, h, w, _) = x.shape();
    let mut out = Vec::with_capacity(n * out_c * h * w);
    for ni in 0..n {
        for o in 0..out_c {
            for y in 0..h {
                for xx in 0..w {
                    let mut s = bias[o] as f64;
                    let mut a = (bias[o] as f64).abs();
                    for i in 0..in_c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xs) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                if yy < 0 || xs < 0 || yy >= h as isize || xs >= w as isize {
                                    continue;
                                }
                                let v = x.pixel(ni, yy as usize, xs as usize)[in_off + i] as f64;
                                let t = wt[(o * in_c + i) * 9 + ky * 3 + kx] as f64 * v;
                                s += t;
                                a += t.abs();
                            }
                        }
                    }
                    if s < 0.0 {
                        s *= slopes[o] as f64;
                    }
                    s *= scale as f64;
                    a *= (scale as f64).abs();
                    for (r, off, wgt) in res {
                        let rv = r.pixel(ni, y, xx)[off + o] as f64 * *wgt as f64;
                        s += rv;
                        a += rv.abs();
                    }
                    out.push((s, a));
                }
            }
        }
    }
    out
}

fn check(out: &Nhwc, out_off: usize, out_c: usize, want: &[(f64, f64)], tol: f64, what: &str) {
    let (n, h, w, _) = out.shape();
    let mut k = 0;
    for ni in 0..n {
        for o in 0..out_c {
            for y in 0..h {
                for x in 0..w {
                    let got = out.pixel(ni, y, x)[out_off + o] as f64;
                    let (v, a) = want[k];
                    k += 1;
                    assert!((got - v).abs() <= tol * a + 1e-6, "{what}: n{ni} o{o} y{y} x{x}: got {got}, want {v} (Σ|t|={a})");
                }
            }
        }
    }
}

#[test]
fn matches_reference_on_random_shapes() {
    let backends = runnable("matches_reference_on_random_shapes");
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // (n, h, w, in_c, out_c): odd sizes, 1×1 maps, channel counts off the vector width,
    // batch > 1, and Real-ESRGAN's own channel counts.
    let shapes = [
        (1, 1, 1, 3, 5),
        (2, 5, 7, 17, 33),
        (1, 9, 13, 64, 64),
        (1, 3, 40, 35, 48),
        (3, 4, 4, 1, 16),
        (1, 6, 11, 96, 32),
        (2, 2, 3, 192, 64),
        (1, 7, 5, 64, 3),
        (1, 1, 30, 8, 80),
        // Wide enough for the AMX band kernel: bands plus leftover rows, a partial last
        // 16-column tile, a partial k-block, an odd output tile, a batch.
        (2, 9, 32, 40, 48),
        (1, 6, 100, 96, 32),
    ];
    for (si, &(n, h, w, in_c, out_c)) in shapes.iter().enumerate() {
        let extra_in = si % 3; // channel stride wider than the slice
        let in_off = si % 2;
        let x = {
            let mut t = Nhwc::zeros(n, h, w, in_c + extra_in + in_off);
            for ni in 0..n {
                for y in 0..h {
                    for xx in 0..w {
                        for v in t.pixel_mut(ni, y, xx) {
                            *v = rng.next();
                        }
                    }
                }
            }
            t
        };
        let wt = rng.vec(out_c * in_c * 9);
        let bias = rng.vec(out_c);
        let (act, slopes) = random_activation(&mut rng, si, out_c);
        let mut r1 = Nhwc::zeros(n, h, w, out_c + 2);
        for ni in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    for v in r1.pixel_mut(ni, y, xx) {
                        *v = rng.next();
                    }
                }
            }
        }
        let (scale, res): (f32, Vec<(&Nhwc, usize, f32)>) = match si % 4 {
            0 => (1.0, vec![]),
            1 => (0.2, vec![(&r1, 1, 1.0)]),
            2 => (0.04, vec![(&r1, 0, 0.2), (&x, in_off, 1.0)]),
            _ => (1.0, vec![(&r1, 2, 1.0)]),
        };
        // the two-residual case needs out_c <= in_c slice width for `x`
        let res: Vec<_> = res.into_iter().filter(|(r, off, _)| off + out_c <= r.shape().3).collect();
        let want = reference(&x, in_off, &wt, &bias, in_c, out_c, &slopes, scale, &res);
        for &b in &backends {
            let conv = Conv3x3::with_backend(&wt, Some(&bias), in_c, out_c, act.clone(), b).unwrap();
            assert_eq!(conv.backend(), b);
            let out_off = si % 2;
            let mut out = Nhwc::zeros(n, h, w, out_c + out_off + 1);
            let residuals: Vec<Residual> = res.iter().map(|&(src, c_off, weight)| Residual { src, c_off, weight }).collect();
            conv.forward(&x, in_off, &mut out, out_off, &Epilogue { scale, residuals: &residuals, bf16_only: false }).unwrap();
            check(&out, out_off, out_c, &want, tol(b), &format!("{b:?} shape {si}"));
            // Channels outside the output slice and the zero border stay untouched.
            for ni in 0..n {
                for y in 0..h {
                    for xx in 0..w {
                        let px = out.pixel(ni, y, xx);
                        assert!(px[..out_off].iter().chain(&px[out_off + out_c..]).all(|&v| v == 0.0), "{b:?}: wrote outside the slice");
                    }
                }
            }
            let (buf, base) = out.raw_buf();
            assert!(buf[..base + (w + 3) * out.c].iter().all(|&v| v == 0.0), "{b:?}: wrote the border");
        }
    }
}

#[test]
fn in_place_dense_block_concat() {
    let mut rng = Rng(42);
    let (n, h, w) = (2, 6, 9);
    // channels 0..20 hold x; two growth convs of 12 each append to it.
    let mut buf = Nhwc::zeros(n, h, w, 20 + 24);
    for ni in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for v in &mut buf.pixel_mut(ni, y, xx)[..20] {
                    *v = rng.next();
                }
            }
        }
    }
    for b in runnable("in_place_dense_block_concat") {
        let w1 = rng.vec(12 * 20 * 9);
        let w2 = rng.vec(12 * 32 * 9);
        let b1 = rng.vec(12);
        let c1 = Conv3x3::with_backend(&w1, Some(&b1), 20, 12, Activation::LeakyRelu(0.2), b).unwrap();
        let c2 = Conv3x3::with_backend(&w2, None, 32, 12, Activation::LeakyRelu(0.2), b).unwrap();
        c1.forward_in_place(&mut buf, 0, 20, &Epilogue::default()).unwrap();
        let want1 = reference(&buf, 0, &w1, &b1, 20, 12, &[0.2; 12], 1.0, &[]);
        check(&buf, 20, 12, &want1, tol(b), &format!("{b:?} conv1"));
        c2.forward_in_place(&mut buf, 0, 32, &Epilogue::default()).unwrap();
        let want2 = reference(&buf, 0, &w2, &[0.0; 12], 32, 12, &[0.2; 12], 1.0, &[]);
        check(&buf, 32, 12, &want2, tol(b), &format!("{b:?} conv2"));
        assert!(c2.forward_in_place(&mut buf, 0, 20, &Epilogue::default()).is_err(), "overlap must be refused");
    }
}

/// The AMX bf16 kernel writes a bf16 shadow next to its f32 output, and the next AMX conv
/// reads it instead of converting: same result as converting, any other write invalidates
/// exactly the channels it touched.
#[test]
fn amx_bf16_shadow_matches_conversion() {
    if !Backend::AmxBf16.supported() {
        skip_note("amx_bf16_shadow_matches_conversion", "AMX not available: shadow path not exercised");
        return;
    }
    shadow_case(Backend::AmxBf16);
    // Splitting only the weights keeps bf16 inputs: that mode reads and writes the shadow too.
    shadow_case(Backend::AmxBf16W2);
    // The input-split modes need each input's `lo` half, which the shadow does not keep: they
    // neither leave a shadow nor read one.
    let mut rng = Rng(10);
    let x = random_nhwc(&mut rng, 1, 5, 7, 8);
    for split in [Backend::AmxBf16x2, Backend::AmxBf16x3] {
        let c = Conv3x3::with_backend(&rng.vec(8 * 8 * 9), None, 8, 8, Activation::None, split).unwrap();
        let mut y = Nhwc::zeros(1, 5, 7, 8);
        c.forward(&x, 0, &mut y, 0, &Epilogue::default()).unwrap();
        assert!(y.bf16_if_valid(0, 8).is_none(), "{split:?} must not leave a shadow");
    }
}

#[test]
fn bf16_only_output_feeds_amx_and_guards_f32_readers() {
    let mut rng = Rng(11);
    let (n, h, w) = (2, 9, 14);
    let x = random_nhwc(&mut rng, n, h, w, 24);
    let (w1, w2) = (rng.vec(40 * 24 * 9), rng.vec(16 * 40 * 9));
    let only = Epilogue { bf16_only: true, ..Epilogue::default() };
    // Other backends ignore the flag and write f32 as usual.
    let fp32 = Conv3x3::with_backend(&w1, None, 24, 40, Activation::LeakyRelu(0.2), Backend::best_fp32()).unwrap();
    let mut y = Nhwc::zeros(n, h, w, 40);
    fp32.forward(&x, 0, &mut y, 0, &only).unwrap();
    assert!(y.f32_current(0, 40));
    if !Backend::AmxBf16.supported() {
        skip_note("bf16_only_output_feeds_amx_and_guards_f32_readers", "AMX not available: bf16_only path not exercised");
        return;
    }
    let c1 = Conv3x3::with_backend(&w1, None, 24, 40, Activation::LeakyRelu(0.2), Backend::AmxBf16).unwrap();
    let c2 = Conv3x3::with_backend(&w2, None, 40, 16, Activation::None, Backend::AmxBf16).unwrap();
    // y_full: f32 + shadow; y_bf: the shadow only, in channels 4..44 of a wider buffer.
    let mut y_full = Nhwc::zeros(n, h, w, 40);
    c1.forward(&x, 0, &mut y_full, 0, &Epilogue::default()).unwrap();
    let mut y_bf = Nhwc::zeros(n, h, w, 48);
    c1.forward(&x, 0, &mut y_bf, 4, &only).unwrap();
    assert!(!y_bf.f32_current(4, 40) && y_bf.f32_current(0, 4) && y_bf.f32_current(44, 4));
    assert!(y_bf.to_nchw(0, 4).iter().all(|&v| v == 0.0), "untouched channels stay readable");
    // A plain AMX consumer reads the shadow: identical results.
    let (mut z_full, mut z_bf) = (Nhwc::zeros(n, h, w, 16), Nhwc::zeros(n, h, w, 16));
    c2.forward(&y_full, 0, &mut z_full, 0, &Epilogue::default()).unwrap();
    c2.forward(&y_bf, 4, &mut z_bf, 0, &Epilogue::default()).unwrap();
    assert_eq!(z_full.to_nchw(0, 16), z_bf.to_nchw(0, 16));
    // f32 readers: a fp32 conv and a residual fail cleanly, the accessors panic.
    let c2_fp32 = Conv3x3::with_backend(&w2, None, 40, 16, Activation::None, Backend::best_fp32()).unwrap();
    assert!(c2_fp32.forward(&y_bf, 4, &mut z_bf, 0, &Epilogue::default()).is_err());
    let res = [Residual { src: &y_bf, c_off: 4, weight: 1.0 }];
    let ep = Epilogue { residuals: &res, ..Epilogue::default() };
    assert!(c2.forward(&y_full, 0, &mut z_bf, 0, &ep).is_err());
    assert!(std::panic::catch_unwind(|| y_bf.to_nchw(4, 40)).is_err());
    // A mutable access widens the shadow back: the f32 values become the rounded ones.
    let mut widened = y_bf.clone();
    widened.pixel_mut(0, 0, 0);
    assert!(widened.f32_current(0, 48));
    let want: Vec<f32> = y_full.to_nchw(0, 40).iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect();
    assert_eq!(widened.to_nchw(4, 40), want);
}

fn shadow_case(amx: Backend) {
    let mut rng = Rng(9);
    let (n, h, w) = (2, 13, 21);
    let x = random_nhwc(&mut rng, n, h, w, 20);
    let (w1, b1) = (rng.vec(36 * 20 * 9), rng.vec(36));
    let (w2, b2) = (rng.vec(24 * 36 * 9), rng.vec(24));
    let slopes: Vec<f32> = (0..24).map(|i| 0.05 * i as f32).collect();
    let c1 = Conv3x3::with_backend(&w1, Some(&b1), 20, 36, Activation::LeakyRelu(0.2), amx).unwrap();
    let c2 = Conv3x3::with_backend(&w2, Some(&b2), 36, 24, Activation::PRelu(slopes.clone()), amx).unwrap();
    // y: channels 4..40 of a 44-channel buffer, so the 64-channel k-blocks read past the slice.
    let mut y = Nhwc::zeros(n, h, w, 44);
    c1.forward(&x, 0, &mut y, 4, &Epilogue::default()).unwrap();
    assert!(y.bf16_if_valid(4, 36).is_some(), "the AMX conv must leave a current shadow");
    let mut z1 = Nhwc::zeros(n, h, w, 24);
    c2.forward(&y, 4, &mut z1, 0, &Epilogue::default()).unwrap();
    let mut y2 = y.clone();
    y2.pixel_mut(0, 0, 0);
    assert!(y2.bf16_if_valid(4, 36).is_none(), "a write must invalidate the shadow");
    let mut z2 = Nhwc::zeros(n, h, w, 24);
    c2.forward(&y2, 4, &mut z2, 0, &Epilogue::default()).unwrap();
    assert_eq!(z1.to_nchw(0, 24), z2.to_nchw(0, 24), "shadow and conversion paths differ");
    let want = reference(&y, 4, &w2, &b2, 36, 24, &slopes, 1.0, &[]);
    check(&z1, 0, 24, &want, tol(amx), "AMX via shadow");
    // A fp32 conv overwriting channels 10..18 stales exactly those.
    let c3 = Conv3x3::with_backend(&rng.vec(8 * 20 * 9), None, 20, 8, Activation::None, Backend::best_fp32()).unwrap();
    c3.forward(&x, 0, &mut y, 10, &Epilogue::default()).unwrap();
    assert!(y.bf16_if_valid(4, 36).is_none());
    assert!(y.bf16_if_valid(4, 6).is_some() && y.bf16_if_valid(18, 22).is_some());
    c2.forward(&y, 4, &mut z1, 0, &Epilogue::default()).unwrap();
    let want = reference(&y, 4, &w2, &b2, 36, 24, &slopes, 1.0, &[]);
    check(&z1, 0, 24, &want, tol(amx), "AMX after a partial fp32 write");
}

#[test]
fn matches_candle_conv2d_through_tensors() {
    let dev = Device::Cpu;
    let mut rng = Rng(7);
    let (n, c, h, w, o) = (2, 19, 11, 6, 21);
    let xt = Tensor::from_vec(rng.vec(n * c * h * w), (n, c, h, w), &dev).unwrap();
    let wt = Tensor::from_vec(rng.vec(o * c * 9), (o, c, 3, 3), &dev).unwrap();
    let bt = Tensor::from_vec(rng.vec(o), o, &dev).unwrap();
    let want = xt.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&bt.reshape((1, o, 1, 1)).unwrap()).unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let conv = Conv3x3::from_tensors(&wt, Some(&bt), Activation::None).unwrap();
    let x = Nhwc::from_tensor(&xt, 3).unwrap();
    let mut out = Nhwc::zeros(n, h, w, o);
    conv.forward(&x, 0, &mut out, 0, &Epilogue::default()).unwrap();
    let got = out.to_tensor(0, o, &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 2e-4 * (1.0 + w.abs()), "{g} vs {w}");
    }
    let got2 = conv.forward_tensor(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got, got2);
}

#[test]
fn pixel_shuffle_and_upsample() {
    // 1 image, 2×1 pixels, 8 channels = 2 output channels × 2².
    let data: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let t = Nhwc::from_nchw(&data, 1, 8, 1, 2, 0).unwrap();
    let s = t.pixel_shuffle(0, 8, 2);
    assert_eq!(s.shape(), (1, 2, 4, 2));
    // NCHW input: channel k at pixel x = data[k*2 + x]. Output (c, y, x) = in[c*4 + (y%2)*2 + x%2] at x/2.
    for cc in 0..2 {
        for y in 0..2 {
            for x in 0..4 {
                let k = cc * 4 + (y % 2) * 2 + x % 2;
                assert_eq!(s.pixel(0, y, x)[cc], data[k * 2 + x / 2]);
            }
        }
    }
    let u = t.upsample_nearest(1, 2, 3);
    assert_eq!(u.shape(), (1, 3, 6, 2));
    assert_eq!(u.pixel(0, 2, 5), &[data[2 + 1], data[4 + 1]]);
    let mut a = u.clone();
    a.add_assign(0, &u, 1, 1);
    assert_eq!(a.pixel(0, 0, 0)[0], data[2] + data[4]);
}

/// The row-parallel layout passes agree with their definitions on several images, odd sizes
/// and channel slices: NCHW round trip, `add_nearest` = upsample + add, and the fused SRVGG
/// tail `pixel_shuffle_nchw` = shuffle + nearest skip + NCHW.
#[test]
fn layout_passes_match_their_definitions() {
    let (n, h, w, r) = (2, 3, 5, 3);
    let val = |i: usize| ((i * 37 % 101) as f32) * 0.25 - 7.0;
    let data: Vec<f32> = (0..n * 20 * h * w).map(val).collect();
    let t = Nhwc::from_nchw(&data, n, 20, h, w, 3).unwrap();
    assert_eq!(t.shape(), (n, h, w, 23));
    assert_eq!(t.to_nchw(0, 20), data);
    assert_eq!(t.pixel(1, 2, 4)[7], data[((20 + 7) * h + 2) * w + 4]);

    let skip_data: Vec<f32> = (0..n * 4 * h * w).map(|i| val(i + 5)).collect();
    let skip = Nhwc::from_nchw(&skip_data, n, 4, h, w, 0).unwrap();
    let mut big = Nhwc::from_nchw(&(0..n * 3 * h * r * w * r).map(|i| val(i + 9)).collect::<Vec<_>>(), n, 3, h * r, w * r, 1).unwrap();
    let mut want = big.clone();
    want.add_assign(1, &skip.upsample_nearest(1, 2, r), 0, 2);
    big.add_nearest(1, &skip, 1, 2, r);
    assert_eq!(big.to_nchw(0, 4), want.to_nchw(0, 4));
    let mut copied = big.clone();
    copied.copy_channels(0, &want, 2, 2);
    assert_eq!(copied.to_nchw(0, 2), want.to_nchw(2, 2));
    assert_eq!(copied.to_nchw(2, 2), big.to_nchw(2, 2), "channels outside the slice are kept");

    // Channels 1..2r²+1 are 2 output channels × r², for the constant-factor paths (2–4) and
    // the general one (5).
    for r in [2, 3, 4, 5] {
        let c = 2 * r * r + 2;
        let t = Nhwc::from_nchw(&(0..n * c * h * w).map(|i| val(i + r)).collect::<Vec<_>>(), n, c, h, w, 0).unwrap();
        let mut shuffled = t.pixel_shuffle(1, 2 * r * r, r);
        shuffled.add_nearest(0, &skip, 0, 2, r);
        assert_eq!(t.pixel_shuffle_nchw(1, 2 * r * r, r, Some(&skip)), shuffled.to_nchw(0, 2), "r = {r}");
        assert_eq!(t.pixel_shuffle_nchw(1, 2 * r * r, r, None), t.pixel_shuffle(1, 2 * r * r, r).to_nchw(0, 2), "r = {r}");
    }
}

#[test]
fn rejects_bad_shapes() {
    assert!(Conv3x3::new(&[0.0; 10], None, 1, 1, Activation::None).is_err());
    assert!(Conv3x3::new(&[0.0; 18], None, 1, 2, Activation::PRelu(vec![0.1])).is_err());
    let c = Conv3x3::new(&[0.0; 18], None, 2, 1, Activation::None).unwrap();
    let x = Nhwc::zeros(1, 4, 4, 2);
    let mut o = Nhwc::zeros(1, 4, 5, 1);
    assert!(c.forward(&x, 0, &mut o, 0, &Epilogue::default()).is_err());
    let mut o = Nhwc::zeros(1, 4, 4, 1);
    assert!(c.forward(&x, 1, &mut o, 0, &Epilogue::default()).is_err());
    assert!(c.forward(&x, 0, &mut o, 0, &Epilogue::default()).is_ok());
    // Empty maps are a no-op.
    let x = Nhwc::zeros(1, 0, 4, 2);
    let mut o = Nhwc::zeros(1, 0, 4, 1);
    assert!(c.forward(&x, 0, &mut o, 0, &Epilogue::default()).is_ok());
}

/// Winograd tolerance factor on Σ|w·x|+|b|+|residual terms| (fp32 F(4×4, 3×3)). The
/// transforms multiply values by up to 8 (Aᵀ) and 5 (Bᵀ) and sum 36 products, so the rounding
/// error is larger than the direct kernel's: measured max |err|/Σ|terms| ≈ 4e-6 on these
/// shapes (direct ≈ 1e-6); the bound leaves >10× margin.
const WINO_TOL: f64 = 5e-5;

fn random_nhwc(rng: &mut Rng, n: usize, h: usize, w: usize, c: usize) -> Nhwc {
    let mut t = Nhwc::zeros(n, h, w, c);
    for ni in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for v in t.pixel_mut(ni, y, xx) {
                    *v = rng.next();
                }
            }
        }
    }
    t
}

/// Asserts that a conv into channels `out_off..out_off+out_c` of a zeroed `out` left every other
/// channel, the border (top row, left column, bottom row, right column) and the slack zero.
fn assert_only_slice_written(out: &Nhwc, out_off: usize, out_c: usize, what: &str) {
    let (n, h, w, _) = out.shape();
    for ni in 0..n {
        for y in 0..h {
            for xx in 0..w {
                let px = out.pixel(ni, y, xx);
                assert!(px[..out_off].iter().chain(&px[out_off + out_c..]).all(|&v| v == 0.0), "{what}: wrote outside the slice");
            }
        }
    }
    for ni in 0..n {
        let img = ni * (h + 2) * (w + 2);
        for q in (0..w + 2).chain((h + 1) * (w + 2)..(h + 2) * (w + 2)) {
            assert!(out.data()[(img + q) * out.c..(img + q + 1) * out.c].iter().all(|&v| v == 0.0), "{what}: wrote the border");
        }
        for y in 0..h + 2 {
            for q in [img + y * (w + 2), img + y * (w + 2) + w + 1] {
                assert!(out.data()[q * out.c..(q + 1) * out.c].iter().all(|&v| v == 0.0), "{what}: wrote the border");
            }
        }
    }
    let tail = n * (h + 2) * (w + 2) * out.c;
    assert!(out.data()[tail..].iter().all(|&v| v == 0.0), "{what}: wrote past the last image");
}

/// (n, h, w, in_c, out_c) for the Winograd tests: sizes not multiples of 4 or 2 (partial edge
/// tiles), 1×1 and 1-row maps, channel counts off the vector width, batches, Real-ESRGAN's
/// shapes.
const WINOGRAD_SHAPES: [(usize, usize, usize, usize, usize); 14] = [
    (1, 1, 1, 3, 5),
    (2, 5, 7, 17, 33),
    (1, 3, 40, 35, 48),
    (3, 13, 9, 16, 16),
    (1, 9, 13, 64, 64),
    (2, 6, 11, 96, 32),
    (1, 10, 7, 128, 32),
    (1, 11, 10, 160, 32),
    (2, 2, 3, 192, 64),
    (1, 7, 5, 64, 3),
    (1, 1, 30, 8, 80),
    (1, 12, 12, 3, 64),
    (1, 8, 9, 64, 48),
    (2, 17, 19, 64, 64),
];

/// Runs `conv(Winograd::Always)` and `conv(Winograd::Off)` on `x` into a fresh output slice
/// and checks each against `want` within its tolerance (`tols`: Winograd, direct) and that
/// nothing outside the slice was written; returns their largest relative errors.
#[allow(clippy::too_many_arguments)]
fn winograd_and_direct(
    conv: impl Fn(Winograd) -> Conv3x3,
    x: &Nhwc,
    in_off: usize,
    out_off: usize,
    ep: &Epilogue,
    want: &[(f64, f64)],
    tols: [f64; 2],
    what: &str,
) -> [f64; 2] {
    let (n, h, w, _) = x.shape();
    [Winograd::Always, Winograd::Off].into_iter().zip(tols).map(|(mode, tol)| {
        let conv = conv(mode);
        assert_eq!(conv.uses_winograd(), mode == Winograd::Always);
        let out_c = conv.out_c();
        let mut out = Nhwc::zeros(n, h, w, out_c + out_off + 1);
        conv.forward(x, in_off, &mut out, out_off, ep).unwrap();
        let what = format!("{mode:?} {what}");
        check(&out, out_off, out_c, want, tol, &what);
        assert_only_slice_written(&out, out_off, out_c, &what);
        max_rel_err(&out, out_off, out_c, want)
    }).collect::<Vec<_>>().try_into().unwrap()
}

/// Largest |got − want| / (Σ|terms|) over an output slice.
fn max_rel_err(out: &Nhwc, out_off: usize, out_c: usize, want: &[(f64, f64)]) -> f64 {
    let (n, h, w, _) = out.shape();
    let mut k = 0;
    let mut worst = 0f64;
    for ni in 0..n {
        for o in 0..out_c {
            for y in 0..h {
                for x in 0..w {
                    let (v, a) = want[k];
                    k += 1;
                    worst = worst.max((out.pixel(ni, y, x)[out_off + o] as f64 - v).abs() / a.max(1e-30));
                }
            }
        }
    }
    worst
}

#[test]
fn winograd_matches_reference_on_random_shapes() {
    if !Backend::Avx512.supported() {
        let c = Conv3x3::with_options(&[0.5; 9 * 16], None, 16, 1, Activation::None, Backend::Avx512, Winograd::Always).unwrap();
        assert!(!c.uses_winograd(), "Winograd without avx512f must fall back to the direct kernel");
        skip_note("winograd_matches_reference_on_random_shapes", "no avx512f: only the fallback to the direct kernel was checked");
        return;
    }
    let mut rng = Rng(0x5eed_1234_abcd);
    let (mut worst_w, mut worst_d) = (0f64, 0f64);
    for (si, &(n, h, w, in_c, out_c)) in WINOGRAD_SHAPES.iter().enumerate() {
        let extra_in = si % 3;
        let in_off = (si / 2) % 3;
        let x = random_nhwc(&mut rng, n, h, w, in_c + extra_in + in_off);
        let wt = rng.vec(out_c * in_c * 9);
        let bias = rng.vec(out_c);
        let (act, slopes) = random_activation(&mut rng, si, out_c);
        let r1 = random_nhwc(&mut rng, n, h, w, out_c + 2);
        let (scale, res): (f32, Vec<(&Nhwc, usize, f32)>) = match si % 4 {
            0 => (1.0, vec![]),
            1 => (0.2, vec![(&r1, 1, 1.0)]),
            2 => (0.04, vec![(&r1, 0, 0.2), (&x, in_off, 1.0)]),
            _ => (1.0, vec![(&r1, 2, 1.0)]),
        };
        let res: Vec<_> = res.into_iter().filter(|(r, off, _)| off + out_c <= r.shape().3).collect();
        let want = reference(&x, in_off, &wt, &bias, in_c, out_c, &slopes, scale, &res);
        let residuals: Vec<Residual> = res.iter().map(|&(src, c_off, weight)| Residual { src, c_off, weight }).collect();
        let ep = Epilogue { scale, residuals: &residuals, bf16_only: false };
        let out_off = (si + 1) % 3;
        let conv = |mode| Conv3x3::with_options(&wt, Some(&bias), in_c, out_c, act.clone(), Backend::Avx512, mode).unwrap();
        let what = format!("shape {si} {n}x{h}x{w} {in_c}->{out_c}");
        let [ew, ed] = winograd_and_direct(conv, &x, in_off, out_off, &ep, &want, [WINO_TOL, tol(Backend::Avx512)], &what);
        (worst_w, worst_d) = (worst_w.max(ew), worst_d.max(ed));
    }
    println!("max |err|/Σ|terms|: winograd {worst_w:.2e}, direct {worst_d:.2e} (bounds {WINO_TOL:.0e}, {:.0e})", tol(Backend::Avx512));
}

#[test]
fn winograd_in_place_dense_block_concat() {
    if !Backend::Avx512.supported() {
        skip_note("winograd_in_place_dense_block_concat", "no avx512f: the fp32 Winograd kernel does not run here");
        return;
    }
    let mut rng = Rng(4242);
    let (n, h, w) = (2, 7, 10);
    // RRDB-like growth: x in 0..24, three convs of 16 append (the 2nd and 3rd read the
    // channels the previous one wrote, while other threads write theirs).
    let mut buf = Nhwc::zeros(n, h, w, 24 + 3 * 16 + 5);
    for ni in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for v in &mut buf.pixel_mut(ni, y, xx)[..24] {
                    *v = rng.next();
                }
            }
        }
    }
    for k in 0..3 {
        let in_c = 24 + 16 * k;
        let wt = rng.vec(16 * in_c * 9);
        let b = rng.vec(16);
        let conv = Conv3x3::with_options(&wt, Some(&b), in_c, 16, Activation::LeakyRelu(0.2), Backend::Avx512, Winograd::Always).unwrap();
        assert!(conv.uses_winograd());
        conv.forward_in_place(&mut buf, 0, in_c, &Epilogue::default()).unwrap();
        let want = reference(&buf, 0, &wt, &b, in_c, 16, &[0.2; 16], 1.0, &[]);
        check(&buf, in_c, 16, &want, WINO_TOL, &format!("winograd growth conv {k}"));
        assert!(conv.forward_in_place(&mut buf, 0, 8, &Epilogue::default()).is_err(), "overlap must be refused");
    }
    // The 5 spare channels after the last growth slice stay zero.
    for ni in 0..n {
        for y in 0..h {
            for xx in 0..w {
                assert!(buf.pixel(ni, y, xx)[72..].iter().all(|&v| v == 0.0));
            }
        }
    }
}

#[test]
fn winograd_switch_and_heuristic() {
    let wt = vec![0.25f32; 64 * 64 * 9];
    let mk = |in_c: usize, out_c: usize, b: Backend, m: Winograd| {
        Conv3x3::with_options(&wt[..in_c * out_c * 9], None, in_c, out_c, Activation::None, b, m).unwrap().uses_winograd()
    };
    let avx512 = Backend::Avx512.supported();
    assert!(!mk(64, 64, Backend::Avx512, Winograd::Off));
    assert_eq!(mk(64, 64, Backend::Avx512, Winograd::Auto), avx512);
    assert_eq!(mk(WINOGRAD_MIN_IN_C, 3, Backend::Avx512, Winograd::Auto), avx512);
    assert!(!mk(3, 64, Backend::Avx512, Winograd::Auto), "3 input channels: direct pays better");
    assert_eq!(mk(3, 64, Backend::Avx512, Winograd::Always), avx512);
    // The AVX-512 BF16 backend runs its own Winograd (`wino_bf16.rs`) under the same rule.
    // Without it the conv is built on the best fp32 backend, with that backend's decision.
    let bf16 = if Backend::Avx512Bf16.supported() { Backend::Avx512Bf16 } else { Backend::best_fp32() };
    assert!(Winograd::Auto.pays(Backend::Avx512Bf16, 64, 64));
    assert_eq!(mk(64, 64, Backend::Avx512Bf16, Winograd::Auto), Winograd::Auto.pays(bf16, 64, 64));
    assert!(!mk(64, 64, Backend::Avx512Bf16, Winograd::Off));
    assert!(!mk(3, 64, Backend::Avx512Bf16, Winograd::Auto), "3 input channels: direct");
    // Other backends keep their direct kernels.
    for b in [Backend::Portable, Backend::Avx2] {
        if b.supported() {
            assert!(!mk(64, 64, b, Winograd::Always), "{b:?}");
        }
    }
    // Auto keeps maps of fewer than WINOGRAD_MIN_TILES tiles on the direct kernel (same
    // result within the direct tolerance there), Always does not.
    if avx512 {
        let mut rng = Rng(77);
        let wt = rng.vec(16 * 16 * 9);
        let x = random_nhwc(&mut rng, 1, 3, 5, 16); // 1×2 = 2 tiles
        let want = reference(&x, 0, &wt, &[0.0; 16], 16, 16, &[1.0; 16], 1.0, &[]);
        let mut outs = Vec::new();
        for mode in [Winograd::Off, Winograd::Auto, Winograd::Always] {
            let c = Conv3x3::with_options(&wt, None, 16, 16, Activation::None, Backend::Avx512, mode).unwrap();
            assert_eq!(c.uses_winograd(), mode != Winograd::Off);
            let mut out = Nhwc::zeros(1, 3, 5, 16);
            c.forward(&x, 0, &mut out, 0, &Epilogue::default()).unwrap();
            check(&out, 0, 16, &want, WINO_TOL, &format!("{mode:?} small map"));
            outs.push(out.to_nchw(0, 16));
        }
        assert_eq!(outs[0], outs[1], "Auto must run the direct kernel on a 2-tile map");
    }
    // The AMX bf16 backend: Winograd F(2×2) from one k-block in and two output-tile pairs out;
    // the split modes keep their direct kernel.
    let amx = Backend::AmxBf16.supported();
    // The AMX decisions, as `pays` makes them (they do not depend on the CPU).
    let pays = |i, o, m: Winograd| m.pays(Backend::AmxBf16, i, o);
    assert!(pays(64, 64, Winograd::Auto));
    assert!(pays(AMX_WINOGRAD_MIN_IN_C, AMX_WINOGRAD_MIN_OUT_C, Winograd::Auto));
    assert!(!pays(64, 32, Winograd::Auto), "one output-tile pair: direct pays better");
    assert!(!pays(16, 64, Winograd::Auto), "a partial k-block: direct");
    assert!(pays(16, 32, Winograd::Always));
    if amx {
        assert!(mk(64, 64, Backend::AmxBf16, Winograd::Auto));
        assert!(!mk(64, 32, Backend::AmxBf16, Winograd::Auto));
        assert!(!mk(16, 64, Backend::AmxBf16, Winograd::Auto));
        assert!(mk(16, 32, Backend::AmxBf16, Winograd::Always));
    } else {
        // Without AMX a conv asked for AMX is built whole on the best fp32 backend, with that
        // backend's own Winograd decision: never an AMX choice on fp32 weights.
        let fb = Backend::best_fp32();
        for (i, o, m) in [(64, 64, Winograd::Auto), (64, 32, Winograd::Auto), (16, 64, Winograd::Auto), (16, 32, Winograd::Always)] {
            let c = Conv3x3::with_options(&wt[..i * o * 9], None, i, o, Activation::None, Backend::AmxBf16, m).unwrap();
            assert_eq!(c.backend(), fb, "{i}->{o} {m:?}");
            assert_eq!(c.uses_winograd(), m.pays(fb, i, o), "{i}->{o} {m:?}");
        }
        skip_note("winograd_switch_and_heuristic", "AMX not available: checked the fallback, not the AMX kernels");
    }
    for b in [Backend::AmxBf16x2, Backend::AmxBf16x3, Backend::AmxBf16W2] {
        if b.supported() {
            assert!(!mk(64, 64, b, Winograd::Always), "{b:?}");
        }
    }
    // Auto keeps images of fewer than AMX_WINOGRAD_MIN_TILES 2×2 tiles on the direct kernel,
    // counted per image: a batch runs what each of its images would run alone.
    if amx {
        let mut rng = Rng(78);
        let wt = rng.vec(64 * 64 * 9);
        let x = random_nhwc(&mut rng, 3, 5, 6, 64); // 3×3 = 9 tiles per image, 27 in the batch
        let mut outs = Vec::new();
        for mode in [Winograd::Off, Winograd::Auto, Winograd::Always] {
            let c = Conv3x3::with_options(&wt, None, 64, 64, Activation::None, Backend::AmxBf16, mode).unwrap();
            let mut out = Nhwc::zeros(3, 5, 6, 64);
            c.forward(&x, 0, &mut out, 0, &Epilogue::default()).unwrap();
            outs.push(out.to_nchw(0, 64));
        }
        assert_eq!(outs[0], outs[1], "Auto must run the direct kernel on a 9-tile image");
        assert_ne!(outs[0], outs[2], "Always runs Winograd (other rounding)");
    }
    // with_backend is explicit: no Winograd whatever the environment says.
    assert!(!Conv3x3::with_backend(&wt, None, 64, 64, Activation::None, Backend::Avx512).unwrap().uses_winograd());
}

/// AMX Winograd F(2×2, 3×3) tolerance factor on Σ|w·x|+|b|+|residual terms|: `V` and `U` are
/// rounded to bf16 after the transforms (sums of up to 4 inputs, 9 weights). Measured max on
/// these shapes: ≤ 2.4e-3 with 8 or more input channels (direct AMX ≤ 1.7e-3), 5.9e-3 on
/// 3→64, where few terms make the relative error large (`Winograd::Auto` never runs it below
/// 32 input channels). The bound is the direct bf16 kernel's, 2.7× above the worst case.
const AMX_WINO_TOL: f64 = 1.6e-2;

#[test]
fn amx_winograd_matches_reference_on_random_shapes() {
    if !Backend::AmxBf16.supported() {
        skip_note("amx_winograd_matches_reference_on_random_shapes", "AMX not available: the AMX Winograd kernel does not run here");
        return;
    }
    let mut rng = Rng(0xa3f0_5eed);
    // The fp32 Winograd shapes, plus: a full k-block on a 1×1 map, rows of more than one
    // 64-tile segment, channel counts off the k-block and tile widths, and maps wide enough
    // for the direct kernel's row bands.
    // The last two run the direct AMX kernel's row bands (one with streamed weights).
    let extra = [(1, 1, 1, 32, 16), (1, 3, 140, 35, 48), (3, 13, 9, 64, 16), (1, 1, 70, 40, 24), (1, 8, 16, 64, 64), (2, 5, 48, 192, 64)];
    let shapes: Vec<_> = WINOGRAD_SHAPES.iter().chain(&extra).copied().collect();
    let (mut worst_w, mut worst_d) = (0f64, 0f64);
    for (si, &(n, h, w, in_c, out_c)) in shapes.iter().enumerate() {
        let in_off = (si / 2) % 3;
        let x = random_nhwc(&mut rng, n, h, w, in_c + si % 3 + in_off);
        let wt = rng.vec(out_c * in_c * 9);
        let bias = rng.vec(out_c);
        let (act, slopes) = random_activation(&mut rng, si, out_c);
        let r1 = random_nhwc(&mut rng, n, h, w, out_c + 2);
        let (scale, res): (f32, Vec<(&Nhwc, usize, f32)>) = match si % 4 {
            0 => (1.0, vec![]),
            1 => (0.2, vec![(&r1, 1, 1.0)]),
            2 => (0.04, vec![(&r1, 0, 0.2), (&r1, 2, 1.0)]),
            _ => (1.0, vec![(&r1, 2, 1.0)]),
        };
        // The reference reads the bf16-rounded input: both kernels read the bf16 shadow.
        let mut xr = x.clone();
        for ni in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    for v in xr.pixel_mut(ni, y, xx) {
                        *v = bf16_to_f32(f32_to_bf16(*v));
                    }
                }
            }
        }
        let want = reference(&xr, in_off, &wt, &bias, in_c, out_c, &slopes, scale, &res);
        let residuals: Vec<Residual> = res.iter().map(|&(src, c_off, weight)| Residual { src, c_off, weight }).collect();
        let ep = Epilogue { scale, residuals: &residuals, bf16_only: false };
        let out_off = (si + 1) % 3;
        let conv = |mode| Conv3x3::with_options(&wt, Some(&bias), in_c, out_c, act.clone(), Backend::AmxBf16, mode).unwrap();
        let what = format!("AMX shape {si} {n}x{h}x{w} {in_c}->{out_c}");
        let [ew, ed] = winograd_and_direct(conv, &x, in_off, out_off, &ep, &want, [AMX_WINO_TOL, tol(Backend::AmxBf16)], &what);
        (worst_w, worst_d) = (worst_w.max(ew), worst_d.max(ed));
    }
    println!("AMX max |err|/Σ|terms|: winograd {worst_w:.2e}, direct {worst_d:.2e} (bounds {AMX_WINO_TOL:.1e}, {:.1e})", tol(Backend::AmxBf16));
}

/// AVX-512 BF16 Winograd tolerance factor on Σ|w·x|+|b|+|residual terms|: `V` and `U` are
/// rounded to bf16 after the transforms, whose coefficients (up to 5 in `Bᵀ`, 8 in `Aᵀ`) make
/// the error larger than the direct bf16 kernel's. Measured max on these shapes (AMD EPYC Zen 4,
/// 2026-12-07): F(2×4) BF16_WINO_TOL_MEASURED_2, F(4×4) BF16_WINO_TOL_MEASURED_4.
const BF16_WINO_TOL: [f64; 2] = [8e-2, 3e-1];

#[test]
fn bf16_winograd_matches_reference_on_random_shapes() {
    if !Backend::Avx512Bf16.supported() {
        let c = Conv3x3::with_options(&[0.5; 9 * 16], None, 16, 1, Activation::None, Backend::Avx512Bf16, Winograd::Always).unwrap();
        assert_eq!(c.backend(), Backend::best_fp32(), "without avx512bf16 the conv is built on the best fp32 backend");
        skip_note("bf16_winograd_matches_reference_on_random_shapes", "no avx512bf16 (or hidden): only the fallback was checked");
        return;
    }
    for (ri, rows) in [2usize, 4].into_iter().enumerate() {
        let mut rng = Rng(0xbf16_5eed + rows as u64);
        let (mut worst_w, mut worst_d) = (0f64, 0f64);
        for (si, &(n, h, w, in_c, out_c)) in WINOGRAD_SHAPES.iter().enumerate() {
            let in_off = (si / 2) % 3;
            let x = random_nhwc(&mut rng, n, h, w, in_c + si % 3 + in_off);
            let wt = rng.vec(out_c * in_c * 9);
            let bias = rng.vec(out_c);
            let (act, slopes) = random_activation(&mut rng, si, out_c);
            let r1 = random_nhwc(&mut rng, n, h, w, out_c + 2);
            let (scale, res): (f32, Vec<(&Nhwc, usize, f32)>) = match si % 4 {
                0 => (1.0, vec![]),
                1 => (0.2, vec![(&r1, 1, 1.0)]),
                2 => (0.04, vec![(&r1, 0, 0.2), (&x, in_off, 1.0)]),
                _ => (1.0, vec![(&r1, 2, 1.0)]),
            };
            let res: Vec<_> = res.into_iter().filter(|(r, off, _)| off + out_c <= r.shape().3).collect();
            let want = reference(&x, in_off, &wt, &bias, in_c, out_c, &slopes, scale, &res);
            let residuals: Vec<Residual> = res.iter().map(|&(src, c_off, weight)| Residual { src, c_off, weight }).collect();
            let ep = Epilogue { scale, residuals: &residuals, bf16_only: false };
            let out_off = (si + 1) % 3;
            let conv = |mode| Conv3x3::with_winograd_rows(&wt, Some(&bias), in_c, out_c, act.clone(), Backend::Avx512Bf16, mode, rows).unwrap();
            let what = format!("bf16 F({rows}x4) shape {si} {n}x{h}x{w} {in_c}->{out_c}");
            let [ew, ed] = winograd_and_direct(conv, &x, in_off, out_off, &ep, &want, [BF16_WINO_TOL[ri], tol(Backend::Avx512Bf16)], &what);
            (worst_w, worst_d) = (worst_w.max(ew), worst_d.max(ed));
        }
        println!(
            "bf16 F({rows}x4) max |err|/Σ|terms|: winograd {worst_w:.2e}, direct {worst_d:.2e} (bounds {:.1e}, {:.1e})",
            BF16_WINO_TOL[ri],
            tol(Backend::Avx512Bf16)
        );
    }
}
