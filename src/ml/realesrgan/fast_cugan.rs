//! Real-CUGAN on [`fastconv`](crate::ml::fastconv) (NHWC): the CPU path of a Real-CUGAN model.
//!
//! * 3×3 valid convs run as fastconv's same-padded [`Conv3x3`] (LeakyReLU fused) on the whole
//!   map: a valid conv's output is the same conv's output without its one-pixel rim, so two
//!   chained convs are exact two pixels in, and the rim is dropped when the map is next copied
//!   (the SE scale or a skip crop rides on that copy). All at [`Backend::edge`] precision (fp32:
//!   the 50 dB parity bound is measured for fp32).
//! * 2×2 stride-2 convs: space-to-depth, then [`Conv1x1`] (`4·C → C'`), LeakyReLU in place.
//! * Deconvolutions: [`Conv1x1`] to the `k²·C'` columns, then one gather pass per output pixel
//!   (`col2im`) with bias, LeakyReLU and the U-Net's cropped skip add fused in.
//! * SE blocks: per-image channel means over the map, the two small dense layers on the host,
//!   the channel scale fused into the crop copy.
//! * The cascade's final add, the 4× crop and pixel shuffle, the runtime's output crop and the
//!   4× nearest residual are one gather into the NCHW output.
//!
//! Buffers come from a [`BufferPool`] kept between forwards.

use rayon::prelude::*;

use super::error::ModelError;
use super::cugan::{pad_input, Cugan, CuganConfig, Deconv, Se, UNetConv, VConv, SLOPE};
use crate::ml::fastconv::pointwise::Conv1x1;
use crate::ml::fastconv::{Activation, Backend, BufferPool, Conv3x3, Epilogue, FastConvError, Nhwc, Winograd};

fn leaky(v: f32) -> f32 {
    if v < 0.0 {
        v * SLOPE
    } else {
        v
    }
}

fn conv3(c: &VConv, backend: Backend, wino: Winograd) -> Result<Conv3x3, ModelError> {
    let act = if c.leaky { Activation::LeakyRelu(SLOPE) } else { Activation::None };
    Ok(Conv3x3::with_options(&c.weight, Some(&c.bias), c.cin, c.cout, act, backend, wino)?)
}

/// A 2×2 stride-2 conv as space-to-depth + 1×1 (input channel `(ky·2 + kx)·C + c`).
struct Down {
    conv: Conv1x1,
    cin: usize,
}

impl Down {
    fn new(c: &VConv) -> Result<Self, ModelError> {
        let (cin, cout) = (c.cin, c.cout);
        let mut w = vec![0f32; cout * 4 * cin];
        for o in 0..cout {
            for i in 0..cin {
                for t in 0..4 {
                    w[o * 4 * cin + t * cin + i] = c.weight[(o * cin + i) * 4 + t];
                }
            }
        }
        Ok(Self { conv: Conv1x1::new(&w, Some(&c.bias), 4 * cin, cout)?, cin })
    }

    /// `x` (rim 0, even sides) → the half-size map, LeakyReLU applied.
    fn forward(&self, x: &Nhwc, pool: &BufferPool) -> Result<Nhwc, FastConvError> {
        let (n, h, w, _) = x.shape();
        let c = self.cin;
        let mut s = pool.take(n, h / 2, w / 2, 4 * c);
        fill(&mut s, 4 * c, |ni, y, xx, px| {
            for (t, chunk) in px.chunks_exact_mut(c).enumerate() {
                chunk.copy_from_slice(&x.pixel(ni, 2 * y + t / 2, 2 * xx + t % 2)[..c]);
            }
        });
        let oc = self.conv.out_c();
        let mut out = pool.take(n, h / 2, w / 2, oc);
        self.conv.forward(&s, 0, &mut out, 0)?;
        pool.give(s);
        out.map_channels(0, oc, leaky);
        Ok(out)
    }
}

/// A transposed conv as 1×1 to the columns + `col2im` gather.
struct Up {
    cols: Conv1x1,
    bias: Vec<f32>,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    leaky: bool,
}

impl Up {
    fn new(d: &Deconv) -> Result<Self, ModelError> {
        let (cin, cout, k) = (d.cin, d.cout, d.k);
        // Column `(ky·k + kx)·C' + o` = Σᵢ x[i]·w[o][i][ky][kx].
        let mut w = vec![0f32; k * k * cout * cin];
        for o in 0..cout {
            for i in 0..cin {
                for t in 0..k * k {
                    w[(t * cout + o) * cin + i] = d.weight[(o * cin + i) * k * k + t];
                }
            }
        }
        let cols = Conv1x1::new(&w, None, cin, k * k * cout)?;
        Ok(Self { cols, bias: d.bias.clone(), cout, k, stride: d.stride, pad: d.pad, leaky: d.leaky })
    }

    /// `x` with a rim of `rim` pixels → the upsampled map (rim 0), plus `skip` cropped by its
    /// border when given.
    fn forward(&self, x: &Nhwc, rim: usize, skip: Option<(&Nhwc, usize)>, pool: &BufferPool) -> Result<Nhwc, FastConvError> {
        let (n, h, w, _) = x.shape();
        let (ih, iw) = (h - 2 * rim, w - 2 * rim);
        let (k, s, p, co) = (self.k, self.stride, self.pad, self.cout);
        let (oh, ow) = ((ih - 1) * s + k - 2 * p, (iw - 1) * s + k - 2 * p);
        let mut cols = pool.take(n, h, w, k * k * co);
        self.cols.forward(x, 0, &mut cols, 0)?;
        let mut out = pool.take(n, oh, ow, co);
        // The input positions and kernel taps that reach output coordinate `o` on one axis.
        let taps = |o: usize, len: usize| -> Vec<(usize, usize)> {
            (0..k).filter(|&t| (o + p) >= t && (o + p - t).is_multiple_of(s) && (o + p - t) / s < len).map(|t| (t, (o + p - t) / s)).collect()
        };
        let ys: Vec<_> = (0..oh).map(|o| taps(o, ih)).collect();
        let xs: Vec<_> = (0..ow).map(|o| taps(o, iw)).collect();
        fill(&mut out, co, |ni, y, xx, px| {
            px.copy_from_slice(&self.bias);
            for &(ty, iy) in &ys[y] {
                for &(tx, ix) in &xs[xx] {
                    let col = &cols.pixel(ni, iy + rim, ix + rim)[(ty * k + tx) * co..][..co];
                    px.iter_mut().zip(col).for_each(|(d, v)| *d += v);
                }
            }
            if self.leaky {
                px.iter_mut().for_each(|v| *v = leaky(*v));
            }
            if let Some((sk, b)) = skip {
                px.iter_mut().zip(&sk.pixel(ni, y + b, xx + b)[..co]).for_each(|(d, v)| *d += v);
            }
        });
        pool.give(cols);
        Ok(out)
    }
}

/// Two 3×3 valid convs and the optional SE block.
struct Block {
    c1: Conv3x3,
    c2: Conv3x3,
    se: Option<Se>,
}

impl Block {
    fn new(u: &UNetConv, backend: Backend, wino: Winograd) -> Result<Self, ModelError> {
        Ok(Self { c1: conv3(&u.c1, backend, wino)?, c2: conv3(&u.c2, backend, wino)?, se: u.se.clone() })
    }

    /// `x` (rim 0) → the block output, 4 pixels smaller (rim 0).
    fn forward(&self, x: &Nhwc, pool: &BufferPool) -> Result<Nhwc, FastConvError> {
        let (n, h, w, _) = x.shape();
        let none = Epilogue::default();
        let mut a = pool.take(n, h, w, self.c1.out_c());
        self.c1.forward(x, 0, &mut a, 0, &none)?;
        let co = self.c2.out_c();
        let mut b = pool.take(n, h, w, co);
        self.c2.forward(&a, 0, &mut b, 0, &none)?;
        pool.give(a);
        let scales: Vec<Vec<f32>> = match &self.se {
            Some(se) => (0..n).map(|ni| se.scales(&channel_means(&b, ni, 2))).collect(),
            None => Vec::new(),
        };
        let mut out = pool.take(n, h - 4, w - 4, co);
        fill(&mut out, co, |ni, y, xx, px| {
            px.copy_from_slice(&b.pixel(ni, y + 2, xx + 2)[..co]);
            if let Some(s) = scales.get(ni) {
                px.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
            }
        });
        pool.give(b);
        Ok(out)
    }
}

/// Real-CUGAN on fastconv.
pub struct FastCugan {
    pub(super) cfg: CuganConfig,
    // U-Net 1.
    u1_conv1: Block,
    u1_down: Down,
    u1_conv2: Block,
    u1_up: Up,
    u1_conv3: Conv3x3,
    u1_bottom: Up,
    // U-Net 2.
    u2_conv1: Block,
    u2_down1: Down,
    u2_conv2: Block,
    u2_down2: Down,
    u2_conv3: Block,
    u2_up3: Up,
    u2_conv4: Block,
    u2_up4: Up,
    u2_conv5: Conv3x3,
    u2_bottom: Conv3x3,
    last: Option<Conv3x3>,
    pub(super) pool: BufferPool,
}

impl FastCugan {
    pub fn new(net: &Cugan, backend: Backend, wino: Winograd) -> Result<Self, ModelError> {
        let b = backend.edge();
        let (u1, u2) = (&net.unet1, &net.unet2);
        Ok(Self {
            cfg: net.cfg,
            u1_conv1: Block::new(&u1.conv1, b, wino)?,
            u1_down: Down::new(&u1.down)?,
            u1_conv2: Block::new(&u1.conv2, b, wino)?,
            u1_up: Up::new(&u1.up)?,
            u1_conv3: conv3(&u1.conv3, b, wino)?,
            u1_bottom: Up::new(&u1.bottom)?,
            u2_conv1: Block::new(&u2.conv1, b, wino)?,
            u2_down1: Down::new(&u2.down1)?,
            u2_conv2: Block::new(&u2.conv2, b, wino)?,
            u2_down2: Down::new(&u2.down2)?,
            u2_conv3: Block::new(&u2.conv3, b, wino)?,
            u2_up3: Up::new(&u2.up3)?,
            u2_conv4: Block::new(&u2.conv4, b, wino)?,
            u2_up4: Up::new(&u2.up4)?,
            u2_conv5: conv3(&u2.conv5, b, wino)?,
            u2_bottom: conv3(&u2.bottom, b, wino)?,
            last: net.last.as_ref().map(|c| conv3(c, b, wino)).transpose()?,
            pool: BufferPool::default(),
        })
    }

    /// NCHW `(n, 3, h, w)` in `[0, 1]` → NCHW `(n, 3, s·h, s·w)`: the runtime's whole-image
    /// path (reflect padding, network, crop, 4× residual).
    pub fn forward_data(&self, x: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<f32>, FastConvError> {
        let (padded, ph, pw) = pad_input(&self.cfg, x, n * 3, h, w);
        let input = Nhwc::from_nchw(&padded, n, 3, ph, pw, 0)?;
        drop(padded);
        let pool = &self.pool;
        let none = Epilogue::default();
        // U-Net 1.
        let x1 = self.u1_conv1.forward(&input, pool)?;
        let d = self.u1_down.forward(&x1, pool)?;
        let x2 = self.u1_conv2.forward(&d, pool)?;
        pool.give(d);
        let s = self.u1_up.forward(&x2, 0, Some((&x1, 4)), pool)?;
        [x1, x2].into_iter().for_each(|t| pool.give(t));
        let (sn, sh, sw, _) = s.shape();
        let mut t = pool.take(sn, sh, sw, self.u1_conv3.out_c());
        self.u1_conv3.forward(&s, 0, &mut t, 0, &none)?;
        pool.give(s);
        let z = self.u1_bottom.forward(&t, 1, None, pool)?;
        pool.give(t);
        // U-Net 2.
        let x1 = self.u2_conv1.forward(&z, pool)?;
        let d = self.u2_down1.forward(&x1, pool)?;
        let x2 = self.u2_conv2.forward(&d, pool)?;
        pool.give(d);
        let d = self.u2_down2.forward(&x2, pool)?;
        let x3 = self.u2_conv3.forward(&d, pool)?;
        pool.give(d);
        let s = self.u2_up3.forward(&x3, 0, Some((&x2, 4)), pool)?;
        [x2, x3].into_iter().for_each(|t| pool.give(t));
        let x4 = self.u2_conv4.forward(&s, pool)?;
        pool.give(s);
        let s = self.u2_up4.forward(&x4, 0, Some((&x1, 16)), pool)?;
        [x1, x4].into_iter().for_each(|t| pool.give(t));
        let (sn, sh, sw, _) = s.shape();
        let mut t = pool.take(sn, sh, sw, 64);
        self.u2_conv5.forward(&s, 0, &mut t, 0, &none)?;
        let mid = self.u2_bottom.out_c();
        let mut u = pool.take(sn, sh, sw, mid);
        self.u2_bottom.forward(&t, 0, &mut u, 0, &none)?;
        [s, t].into_iter().for_each(|b| pool.give(b));
        // y = u (rim 2) + z cropped by 20; the output is y's top-left s·h × s·w.
        let sc = self.cfg.scale as usize;
        let (oh, ow) = (sc * h, sc * w);
        let mut out = vec![0f32; n * 3 * oh * ow];
        match &self.last {
            None => {
                out.par_chunks_mut(ow).enumerate().for_each(|(r, row)| {
                    let (ni, c, yy) = (r / (3 * oh), (r / oh) % 3, r % oh);
                    for (xx, d) in row.iter_mut().enumerate() {
                        *d = u.pixel(ni, yy + 2, xx + 2)[c] + z.pixel(ni, yy + 20, xx + 20)[c];
                    }
                });
            }
            Some(last) => {
                let mut y = pool.take(sn, sh - 4, sw - 4, mid);
                fill(&mut y, mid, |ni, yy, xx, px| {
                    let (a, b) = (&u.pixel(ni, yy + 2, xx + 2)[..mid], &z.pixel(ni, yy + 20, xx + 20)[..mid]);
                    px.iter_mut().zip(a.iter().zip(b)).for_each(|(d, (a, b))| *d = a + b);
                });
                let (yn, yh, yw, _) = y.shape();
                let mut f = pool.take(yn, yh, yw, last.out_c());
                last.forward(&y, 0, &mut f, 0, &none)?;
                pool.give(y);
                // The valid conv's rim and the file's Crop 1: rim 2; then pixel shuffle ×2 and
                // the nearest-upscaled input.
                out.par_chunks_mut(ow).enumerate().for_each(|(r, row)| {
                    let (ni, c, yy) = (r / (3 * oh), (r / oh) % 3, r % oh);
                    let src = &x[((ni * 3 + c) * h + yy / 4) * w..][..w];
                    for (xx, d) in row.iter_mut().enumerate() {
                        let v = f.pixel(ni, yy / 2 + 2, xx / 2 + 2)[c * 4 + (yy % 2) * 2 + xx % 2];
                        *d = v + src[xx / 4];
                    }
                });
                pool.give(f);
            }
        }
        [u, z].into_iter().for_each(|b| pool.give(b));
        Ok(out)
    }
}

/// Per-channel mean of image `ni`'s pixels at least `rim` from the edge.
fn channel_means(t: &Nhwc, ni: usize, rim: usize) -> Vec<f32> {
    let (_, h, w, c) = t.shape();
    let sums = (rim..h - rim)
        .into_par_iter()
        .map(|y| {
            let mut acc = vec![0f64; c];
            for xx in rim..w - rim {
                acc.iter_mut().zip(t.pixel(ni, y, xx)).for_each(|(a, v)| *a += *v as f64);
            }
            acc
        })
        .reduce(|| vec![0f64; c], |mut a, b| {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            a
        });
    let count = ((h - 2 * rim) * (w - 2 * rim)) as f64;
    sums.into_iter().map(|s| (s / count) as f32).collect()
}

/// Writes channels `..c` of every pixel of `out` with `f(image, y, x, pixel)`: rows computed in
/// parallel into a staging buffer, then copied in.
fn fill(out: &mut Nhwc, c: usize, f: impl Fn(usize, usize, usize, &mut [f32]) + Sync) {
    let (n, h, w, _) = out.shape();
    let mut dense = vec![0f32; n * h * w * c];
    dense.par_chunks_mut((w * c).max(1)).enumerate().for_each(|(r, row)| {
        let (ni, y) = (r / h, r % h);
        for (xx, px) in row.chunks_exact_mut(c).enumerate() {
            f(ni, y, xx, px);
        }
    });
    for ni in 0..n {
        for y in 0..h {
            for xx in 0..w {
                let i = ((ni * h + y) * w + xx) * c;
                out.pixel_mut(ni, y, xx)[..c].copy_from_slice(&dense[i..i + c]);
            }
        }
    }
}
