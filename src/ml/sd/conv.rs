//! The UNet's and VAE's 3×3 stride-1 convolutions and the resnet block built on them, with the
//! CPU path on [`fastconv`] (issue #7: "and by the SD x4 UNet/VAE where it helps").
//!
//! The 3×3 convolutions hold nearly all of both networks' FLOPs and candle's CPU `conv2d` runs
//! them at a small fraction of the machine's speed. On the CPU (unless `UPRES_FASTCONV=off`) each
//! one is packed once at load into a [`Conv3x3`] and the candle weights are dropped, so memory is
//! not doubled; each call converts NCHW → padded NHWC and back around the fast kernel, which is
//! cheap next to a 3×3 convolution over 128–512 channels. Elsewhere (CUDA, or fastconv off) the
//! candle `Conv2d` runs. The stride-2 downsamplers and the 1×1 shortcuts stay on candle.
//!
//! [`Resnet`] is candle-transformers' `ResnetBlock2D` (same weights, same op order) with its two
//! convolutions swapped for [`Conv3`].

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{conv2d, group_norm, linear, Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

use crate::ml::fastconv::{Activation, Conv3x3};
use crate::ml::realesrgan::fastconv_enabled_by_env;

const CONV3: Conv2dConfig = Conv2dConfig { padding: 1, stride: 1, dilation: 1, groups: 1, cudnn_fwd_algo: None };

/// A 3×3, stride 1, padding 1 convolution with bias.
pub enum Conv3 {
    Fast(Conv3x3),
    Candle(Conv2d),
}

impl Conv3 {
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let conv = conv2d(cin, cout, 3, CONV3, vb.clone())?;
        if vb.device().is_cpu() && fastconv_enabled_by_env() {
            let fast = Conv3x3::from_tensors(conv.weight(), conv.bias(), Activation::None)?;
            return Ok(Conv3::Fast(fast));
        }
        Ok(Conv3::Candle(conv))
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Conv3::Fast(_))
    }
}

impl Module for Conv3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Conv3::Fast(c) => c.forward_tensor(x),
            Conv3::Candle(c) => c.forward(x),
        }
    }
}

/// A resnet block: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`.
pub struct Resnet {
    norm1: GroupNorm,
    conv1: Conv3,
    norm2: GroupNorm,
    conv2: Conv3,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
}

impl Resnet {
    /// `temb`: the time-embedding width, or `None` for the VAE's blocks.
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize, eps: f64, temb: Option<usize>) -> Result<Self> {
        let conv_shortcut = if cin != cout {
            Some(conv2d(cin, cout, 1, Conv2dConfig::default(), vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: Conv3::new(cin, cout, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: Conv3::new(cout, cout, vb.pp("conv2"))?,
            time_emb_proj: temb.map(|t| linear(t, cout, vb.pp("time_emb_proj"))).transpose()?,
            conv_shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let h = self.conv1.forward(&candle_nn::ops::silu(&self.norm1.forward(x)?)?)?;
        let h = match (temb, &self.time_emb_proj) {
            (Some(t), Some(proj)) => proj
                .forward(&candle_nn::ops::silu(t)?)?
                .unsqueeze(D::Minus1)?
                .unsqueeze(D::Minus1)?
                .broadcast_add(&h)?,
            _ => h,
        };
        let h = self.conv2.forward(&candle_nn::ops::silu(&self.norm2.forward(&h)?)?)?;
        shortcut + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The fast path and candle's conv2d agree on SD-like shapes (odd channel counts included).
    #[test]
    fn fast_conv3_matches_candle() {
        let dev = Device::Cpu;
        for (cin, cout, h, w) in [(7, 32, 9, 11), (64, 64, 8, 8), (96, 40, 5, 13)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let candle = conv2d(cin, cout, 3, CONV3, vb.pp("c")).unwrap();
            let fast = Conv3::new(cin, cout, vb.pp("c")).unwrap();
            assert!(fast.is_fast() || !fastconv_enabled_by_env());
            let x = Tensor::randn(0f32, 1.0, (2, cin, h, w), &dev).unwrap();
            let a = candle.forward(&x).unwrap();
            let b = fast.forward(&x).unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{cin}->{cout} {h}x{w}: max diff {diff}");
        }
    }
}
