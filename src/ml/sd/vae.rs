//! The VAE decoder of the x4 upscaler (`AutoencoderKL` with 3 blocks, decode path only: the
//! upscale pipeline never encodes), configured from `vae/config.json`.
//!
//! The mid-block attention runs over H×W tokens of the latent (one head). A naive score matrix
//! is (HW)² floats: 1 GiB at a 128² latent, 16 GiB at 256². `chunked_attention` processes the
//! queries in chunks so at most `ATTN_CHUNK_ELEMS` scores exist at once.
//!
//! Large latents are decoded in tiles ([`VaeTiling`], `sd.vae_tile`): the decoder's activations
//! grow with the output (a 128-channel map at 1024² is 512 MiB, and the up blocks hold several),
//! so a 256² latent decoded whole needs gigabytes. Tiles overlap and are cross-faded with the
//! proxy's own stitching ([`Grid::stitch`]). Each tile's mid-block attention and group norms see
//! only that tile, so a tiled decode differs slightly from a whole one (as diffusers'
//! `tiled_decode` does); `docs/sd-x4.md` gives the measured difference.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{conv2d, linear, Conv2d, Linear, VarBuilder};

use super::conv::{Conv3, Norm, Pre, Resnet};
use crate::engine::tiling::Grid;
use crate::engine::Tile;

/// Most attention scores materialised at once (16 Mi floats = 64 MiB in f32).
pub const ATTN_CHUNK_ELEMS: usize = 16 << 20;

/// How large latents are cut for decoding, in latent pixels (= input pixels of the x4 model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeTiling {
    /// A latent with a side longer than this is decoded in tiles of at most this side.
    pub tile: usize,
    /// Least overlap between neighbouring tiles (cross-faded in the output).
    pub overlap: usize,
}

/// Tile side and start positions along one axis of `len`: the fewest tiles of at most `tile`
/// that overlap by at least `overlap` (up to rounding by one), all the same size and spread
/// evenly, so no tile is a sliver and no work is wasted on a shifted-in last tile.
pub fn tile_spans(len: usize, tile: usize, overlap: usize) -> (usize, Vec<usize>) {
    if len <= tile {
        return (len, vec![0]);
    }
    let overlap = overlap.min(tile.saturating_sub(1));
    let n = (len - overlap).div_ceil(tile - overlap);
    let size = (len + (n - 1) * overlap).div_ceil(n).min(tile);
    let starts = (0..n).map(|i| i * (len - size) / (n - 1)).collect();
    (size, starts)
}

/// The fields of `vae/config.json` the decoder reads. `scaling_factor` is deliberately absent:
/// the x4 pipeline forces 0.08333 whatever the file says.
#[derive(serde::Deserialize, Clone, Debug)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "groups32")]
    pub norm_num_groups: usize,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn groups32() -> usize {
    32
}
fn yes() -> bool {
    true
}

/// softmax(q kᵀ · scale) v, with the queries processed in chunks. `q`: (B, N, D), `k`/`v`: (B, M, D).
pub fn chunked_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, n, _) = q.dims3()?;
    let (b, m, _) = k.dims3()?;
    let chunk = (ATTN_CHUNK_ELEMS / (b * m).max(1)).clamp(1, n);
    let kt = (k.t()?.contiguous()? * scale)?;
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let s = q.narrow(1, start, len)?.contiguous()?.matmul(&kt)?;
        let s = candle_nn::ops::softmax(&s, D::Minus1)?;
        outs.push(s.matmul(v)?);
        start += len;
    }
    Tensor::cat(&outs, 1)
}

/// The VAE's single-head self-attention block (diffusers `Attention` with group norm and residual).
struct AttnBlock {
    norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl AttnBlock {
    fn new(vb: VarBuilder, ch: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm: Norm::new(groups, ch, 1e-6, vb.pp("group_norm"))?,
            q: linear(ch, ch, vb.pp("to_q"))?,
            k: linear(ch, ch, vb.pp("to_k"))?,
            v: linear(ch, ch, vb.pp("to_v"))?,
            out: linear(ch, ch, vb.pp("to_out.0"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.norm.forward(x, false)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.q.forward(&t)?, self.k.forward(&t)?, self.v.forward(&t)?);
        let o = chunked_attention(&q, &k, &v, 1.0 / (c as f64).sqrt())?;
        let o = self.out.forward(&o)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        o + x
    }
}

fn resnet(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Resnet> {
    Resnet::new(vb, cin, cout, groups, 1e-6, None)
}

struct UpDecoderBlock {
    resnets: Vec<Resnet>,
    up: Option<Conv3>,
}

/// `post_quant_conv` + `Decoder`.
pub struct VaeDecoder {
    post_quant: Option<Conv2d>,
    conv_in: Conv3,
    mid_r0: Resnet,
    mid_attn: Option<AttnBlock>,
    mid_r1: Resnet,
    ups: Vec<UpDecoderBlock>,
    norm_out: Norm,
    conv_out: Conv3,
    out_channels: usize,
}

impl VaeDecoder {
    /// `vb` is the root of `vae/diffusion_pytorch_model.safetensors`; encoder weights are ignored.
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let ch = &cfg.block_out_channels;
        let top = *ch.last().unwrap_or(&0);
        let post_quant = if cfg.use_post_quant_conv {
            Some(conv2d(cfg.latent_channels, cfg.latent_channels, 1, Default::default(), vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        let d = vb.pp("decoder");
        let conv_in = Conv3::new(cfg.latent_channels, top, d.pp("conv_in"))?;
        let mid = d.pp("mid_block");
        let mid_r0 = resnet(mid.pp("resnets.0"), top, top, g)?;
        let mid_attn = if cfg.mid_block_add_attention { Some(AttnBlock::new(mid.pp("attentions.0"), top, g)?) } else { None };
        let mid_r1 = resnet(mid.pp("resnets.1"), top, top, g)?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut ups = Vec::new();
        let mut out = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev = out;
            out = c;
            let vb = d.pp("up_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| resnet(vb.pp("resnets").pp(j), if j == 0 { prev } else { out }, out, g))
                .collect::<Result<_>>()?;
            let up = if i + 1 < rev.len() { Some(Conv3::new(out, out, vb.pp("upsamplers.0.conv"))?) } else { None };
            ups.push(UpDecoderBlock { resnets, up });
        }
        let norm_out = Norm::new(g, ch[0], 1e-6, d.pp("conv_norm_out"))?;
        let conv_out = Conv3::new(ch[0], cfg.out_channels, d.pp("conv_out"))?;
        Ok(Self { post_quant, conv_in, mid_r0, mid_attn, mid_r1, ups, norm_out, conv_out, out_channels: cfg.out_channels })
    }

    /// `z`: (B, 4, h, w) latents already divided by the scaling factor → (B, 3, 4h, 4w) in ~[-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut x = match &self.post_quant {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        x = self.conv_in.forward_pre(x, Pre::None, None)?;
        x = self.mid_r0.forward(x, None)?;
        if let Some(a) = &self.mid_attn {
            x = a.forward(&x)?;
        }
        x = self.mid_r1.forward(x, None)?;
        for u in &self.ups {
            for r in &u.resnets {
                x = r.forward(x, None)?;
            }
            if let Some(c) = &u.up {
                x = c.forward_pre(x, Pre::Up2, None)?;
            }
        }
        self.conv_out.forward_pre(x, Pre::NormSilu(&self.norm_out), None)
    }

    /// [`decode`](Self::decode), in overlapping tiles when `tiling` is set and the latent has a
    /// side longer than its tile. Only one tile's activations exist at a time.
    pub fn decode_tiled(&self, z: &Tensor, tiling: Option<VaeTiling>) -> Result<Tensor> {
        let (b, _, h, w) = z.dims4()?;
        let t = match tiling {
            Some(t) if (h > t.tile || w > t.tile) && self.out_channels == 3 => t,
            _ => return self.decode(z),
        };
        let (th, ys) = tile_spans(h, t.tile, t.overlap);
        let (tw, xs) = tile_spans(w, t.tile, t.overlap);
        let mut tiles: Vec<Vec<Tile>> = (0..b).map(|_| Vec::with_capacity(xs.len() * ys.len())).collect();
        let mut scale = 0;
        for &y0 in &ys {
            for &x0 in &xs {
                let y = self.decode(&z.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?)?.to_device(&candle_core::Device::Cpu)?;
                let (_, _, oh, ow) = y.dims4()?;
                scale = oh / th;
                for (i, item) in tiles.iter_mut().enumerate() {
                    item.push(Tile::new(ow as u32, oh as u32, y.get(i)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?));
                }
            }
        }
        let to_u32 = |v: &[usize]| v.iter().map(|&p| p as u32).collect::<Vec<u32>>();
        let grid = Grid { width: w as u32, height: h as u32, tile_w: tw as u32, tile_h: th as u32, xs: to_u32(&xs), ys: to_u32(&ys) };
        let mut out = Vec::with_capacity(b * 3 * h * w * scale * scale);
        for item in tiles {
            out.extend(grid.stitch(&item, scale as u32).data);
        }
        Tensor::from_vec(out, (b, 3, h * scale, w * scale), z.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn tile_spans_cover_evenly_with_the_overlap() {
        assert_eq!(tile_spans(100, 128, 16), (100, vec![0]));
        assert_eq!(tile_spans(128, 128, 16), (128, vec![0]));
        // 256 in tiles of ≤128 overlapping ≥16: three tiles of 96 (not 128, 128 and a shifted 128)
        assert_eq!(tile_spans(256, 128, 16), (96, vec![0, 80, 160]));
        for len in 1..300 {
            for (tile, overlap) in [(16, 4), (64, 16), (128, 16), (40, 0)] {
                let (size, starts) = tile_spans(len, tile, overlap);
                assert!(size <= tile && size <= len);
                assert_eq!(starts[0], 0);
                assert_eq!(starts.last().unwrap() + size, len, "{len} {tile} {overlap}");
                for p in starts.windows(2) {
                    assert!(p[0] + size >= p[1] + overlap.saturating_sub(1), "{len} {tile} {overlap}: {starts:?} size {size}");
                }
            }
        }
    }

    #[test]
    fn chunked_attention_equals_full_attention() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 37, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 37, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 37, 8), &dev).unwrap();
        let full = candle_nn::ops::softmax(&(q.matmul(&k.t().unwrap()).unwrap() * 0.3).unwrap(), D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap();
        // force several chunks by calling the loop with a tiny budget through narrow pieces
        let mut parts = Vec::new();
        for s in (0..37).step_by(10) {
            let len = 10.min(37 - s);
            parts.push(chunked_attention(&q.narrow(1, s, len).unwrap(), &k, &v, 0.3).unwrap());
        }
        let chunked = Tensor::cat(&parts, 1).unwrap();
        let d = (full - chunked).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "max diff {d}");
    }
}
