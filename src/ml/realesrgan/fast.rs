//! The Real-ESRGAN networks on [`fastconv`](crate::ml::fastconv) (NHWC, pre-packed AMX bf16 /
//! AVX-512 / AVX2 3×3 convolutions with fused bias, activation and residuals): the CPU path of
//! [`super::RealEsrgan`].
//!
//! Built once at load from the same [`super::layers::Conv`] layers the candle path uses (weights
//! copied and packed by [`Conv::to_fast`](super::layers::Conv::to_fast)), so both paths run the
//! same numbers; the candle path stays the reference (and the CUDA path). The wiring follows
//! `docs/fastconv.md`:
//!
//! * RRDBNet: one `64 + 4·32`-channel buffer per dense block; `conv1..conv4` append their growth
//!   channels in place; `conv5` writes the next block's input slot with `0.2·x5 + x` fused; the
//!   RRDB residual is folded into the third block's `conv5` (`0.04·x5 + 0.2·x3_in + rrdb_in`);
//!   `conv_body` adds the trunk skip in its epilogue. Nearest ×2 upsampling between the up convs.
//! * SRVGGNetCompact: PReLU fused, two ping-pong buffers, pixel shuffle + nearest-upsampled input
//!   on NHWC; the x2/x3 files' bicubic resize runs on the NCHW output with the candle helper
//!   [`super::layers::bicubic`].
//! * SPAN: [`FastSpan`] (its own module).
//!
//! A batch of `N` tiles is one pass: every buffer is `N` images deep and the kernels spread
//! positions × images over rayon's pool. Buffers come from a [`BufferPool`] kept between
//! forwards (emptied by [`FastNet::release_buffers`] when the engine goes idle).

use candle_core::{Device, Result, Tensor};

pub use super::fast_cugan::FastCugan;
pub use super::fast_span::FastSpan;
use super::error::ModelError;
use super::layers::bicubic;
use super::rrdb::Rrdb;
use super::srvgg::{Srvgg, SrvggConfig};
use crate::ml::fastconv::{Backend, BufferPool, Conv3x3, Epilogue, FastConvError, Nhwc, Residual, Winograd};

/// Dense-block and RRDB residual scale (as in [`super::rrdb`]).
const RES_SCALE: f32 = 0.2;

fn err(e: FastConvError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// RRDBNet on fastconv.
pub struct FastRrdb {
    feat: usize,
    grow: usize,
    first: Conv3x3,
    /// Per RRDB, per dense block, the five convs.
    blocks: Vec<[[Conv3x3; 5]; 3]>,
    body: Conv3x3,
    up1: Conv3x3,
    up2: Conv3x3,
    hr: Conv3x3,
    last: Conv3x3,
    /// Activation buffers kept between forwards.
    pool: BufferPool,
}

impl FastRrdb {
    pub fn new(net: &Rrdb, backend: Backend, wino: Winograd) -> std::result::Result<Self, ModelError> {
        // The AMX bf16 Winograd kernel rounds its transforms to bf16, ~3× the direct kernel's
        // error per conv: over RRDBNet's 345 chained trunk convs that costs x4plus-anime 42.7 dB
        // against fp32 (under the 45 dB bound), so the trunk keeps the direct kernel there.
        // SRVGG's 16 body convs keep 52 dB with it.
        // The AVX-512 BF16 Winograd F(2×4) costs more (38 dB on x4plus-anime), so a forced bf16
        // backend runs its direct kernel here too.
        let trunk_wino = if matches!(backend, Backend::AmxBf16 | Backend::Avx512Bf16) { Winograd::Off } else { wino };
        // Each dense block's first conv (reads only the residual stream, and its output feeds
        // the block's four other convs) on `backend.dense_in()`: on plain AMX, weights split
        // into two bf16 halves (docs/fastconv.md, "RRDBNet's precision").
        let mut blocks = Vec::with_capacity(net.blocks.len());
        for rrdb in &net.blocks {
            let mut dbs = Vec::with_capacity(3);
            for db in rrdb {
                let convs: Vec<Conv3x3> = db
                    .convs
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c.to_fast(if k == 0 { backend.dense_in() } else { backend }, trunk_wino))
                    .collect::<std::result::Result<_, _>>()?;
                dbs.push(<[Conv3x3; 5]>::try_from(convs).map_err(|_| ModelError::Graph("five convs".into()))?);
            }
            blocks.push(<[[Conv3x3; 5]; 3]>::try_from(dbs).map_err(|_| ModelError::Graph("three dense blocks".into()))?);
        }
        // The image-facing convs (the first, and from the trunk's closing conv on) at edge
        // precision; the residual trunk on `backend`.
        let e = backend.edge();
        let feat = net.conv_first.cout;
        let grow = net.blocks.first().map(|b| b[0].convs[0].cout).unwrap_or(0);
        Ok(Self {
            feat,
            grow,
            first: net.conv_first.to_fast(e, wino)?,
            blocks,
            body: net.conv_body.to_fast(e, wino)?,
            up1: net.conv_up1.to_fast(e, wino)?,
            up2: net.conv_up2.to_fast(e, wino)?,
            hr: net.conv_hr.to_fast(e, wino)?,
            last: net.conv_last.to_fast(e, wino)?,
            pool: BufferPool::default(),
        })
    }

    /// `x`: `(n, h, w, 3)` → NCHW data `(n, 3, 4h, 4w)`.
    pub fn forward(&self, x: &Nhwc) -> std::result::Result<Vec<f32>, FastConvError> {
        let (n, h, w, _) = x.shape();
        let (f, g) = (self.feat, self.grow);
        let pool = &self.pool;
        let none = Epilogue::default();
        // x1..x4 are read only by the dense block's own convs: on plain AMX they need only
        // the bf16 shadow (the block input, channels ..f, stays f32 for the residuals).
        let growth = Epilogue { bf16_only: true, ..Epilogue::default() };
        let mut feat = pool.take(n, h, w, f);
        self.first.forward(x, 0, &mut feat, 0, &none)?;
        // bufs[0..3]: the three dense blocks of the current RRDB (bufs[0][..f] = RRDB input);
        // bufs[3] receives the RRDB output and becomes the next bufs[0].
        let mut bufs: [Nhwc; 4] = std::array::from_fn(|_| pool.take(n, h, w, f + 4 * g));
        bufs[0].copy_channels(0, &feat, 0, f);
        for rrdb in &self.blocks {
            for (d, db) in rrdb.iter().enumerate() {
                for (k, conv) in db[..4].iter().enumerate() {
                    conv.forward_in_place(&mut bufs[d], 0, f + k * g, &growth)?;
                }
                let (lo, hi) = bufs.split_at_mut(d + 1);
                let cat = &lo[d];
                if d < 2 {
                    let res = [Residual { src: cat, c_off: 0, weight: 1.0 }];
                    db[4].forward(cat, 0, &mut hi[0], 0, &Epilogue { scale: RES_SCALE, residuals: &res, bf16_only: false })?;
                } else {
                    // 0.2·(0.2·x5 + x3_in) + rrdb_in
                    let res = [
                        Residual { src: cat, c_off: 0, weight: RES_SCALE },
                        Residual { src: &lo[0], c_off: 0, weight: 1.0 },
                    ];
                    let ep = Epilogue { scale: RES_SCALE * RES_SCALE, residuals: &res, bf16_only: false };
                    db[4].forward(cat, 0, &mut hi[0], 0, &ep)?;
                }
            }
            bufs.swap(0, 3);
        }
        let mut body = pool.take(n, h, w, f);
        let res = [Residual { src: &feat, c_off: 0, weight: 1.0 }];
        self.body.forward(&bufs[0], 0, &mut body, 0, &Epilogue { scale: 1.0, residuals: &res, bf16_only: false })?;
        bufs.into_iter().chain([feat]).for_each(|b| pool.give(b));
        let mut up = pool.take(n, 2 * h, 2 * w, f);
        body.upsample_nearest_into(0, f, 2, &mut up);
        pool.give(body);
        let mut x1 = pool.take(n, 2 * h, 2 * w, f);
        self.up1.forward(&up, 0, &mut x1, 0, &none)?;
        pool.give(up);
        let mut up = pool.take(n, 4 * h, 4 * w, f);
        x1.upsample_nearest_into(0, f, 2, &mut up);
        pool.give(x1);
        let mut x2 = pool.take(n, 4 * h, 4 * w, f);
        self.up2.forward(&up, 0, &mut x2, 0, &none)?;
        // `up` (same shape) is free again: conv_hr writes there.
        self.hr.forward(&x2, 0, &mut up, 0, &none)?;
        pool.give(x2);
        let mut out = pool.take(n, 4 * h, 4 * w, self.last.out_c());
        self.last.forward(&up, 0, &mut out, 0, &none)?;
        pool.give(up);
        let y = out.to_nchw(0, 3);
        pool.give(out);
        Ok(y)
    }
}

/// SRVGGNetCompact on fastconv.
pub struct FastSrvgg {
    cfg: SrvggConfig,
    convs: Vec<Conv3x3>,
    /// Activation buffers kept between forwards.
    pool: BufferPool,
}

impl FastSrvgg {
    pub fn new(net: &Srvgg, backend: Backend, wino: Winograd) -> std::result::Result<Self, ModelError> {
        // The first conv (reads the image) at edge precision, the rest on `backend`. Unlike
        // RRDBNet's tail, SRVGG's last conv (64→48, before the pixel shuffle) loses nothing
        // measurable in plain bf16 (8-bit PSNR vs fp32 52.3–52.7 / 51.9–52.0 dB on the test
        // and texture images either way; the body's rounding dominates) and runs 4–7 % of the
        // forward faster than on fp32 Winograd at 128².
        let convs = net
            .convs
            .iter()
            .enumerate()
            .map(|(i, c)| c.to_fast(if i == 0 { backend.edge() } else { backend }, wino))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if convs.len() < 2 {
            return Err(ModelError::Graph("SRVGGNetCompact needs at least two convs".into()));
        }
        Ok(Self { cfg: net.cfg, convs, pool: BufferPool::default() })
    }

    /// `x`: `(n, h, w, 3)` → NCHW data `(n, 3, r·h, r·w)` with `r` the network's upscale
    /// (before any bicubic resize).
    pub fn forward(&self, x: &Nhwc) -> std::result::Result<Vec<f32>, FastConvError> {
        let (n, h, w, _) = x.shape();
        let r = self.cfg.upscale;
        let none = Epilogue::default();
        let (first, rest) = self.convs.split_first().expect("checked in new");
        let (last, body) = rest.split_last().expect("checked in new");
        let f = first.out_c();
        let pool = &self.pool;
        let mut a = pool.take(n, h, w, f);
        let mut b = pool.take(n, h, w, f);
        first.forward(x, 0, &mut a, 0, &none)?;
        // Body activations are read only by the next conv, body or last, all plain AMX on
        // that backend: they need only the bf16 shadow (other backends ignore the flag).
        let ep = Epilogue { bf16_only: true, ..Epilogue::default() };
        for conv in body {
            conv.forward(&a, 0, &mut b, 0, &ep)?;
            std::mem::swap(&mut a, &mut b);
        }
        pool.give(b);
        let mut lr = pool.take(n, h, w, last.out_c());
        last.forward(&a, 0, &mut lr, 0, &none)?;
        pool.give(a);
        let y = lr.pixel_shuffle_nchw(0, last.out_c(), r, Some(x));
        pool.give(lr);
        Ok(y)
    }
}

/// Any of the networks, ready to run.
// One value per loaded model, matched once per forward: its size costs nothing, a box an
// indirection.
#[allow(clippy::large_enum_variant)]
pub enum FastNet {
    Rrdb(FastRrdb),
    Srvgg(FastSrvgg),
    Span(FastSpan),
    Cugan(FastCugan),
}

impl FastNet {
    /// Packs the weights of a loaded candle network (Winograd F(4×4, 3×3) per `wino`).
    pub(super) fn new(net: &super::Net, backend: Backend, wino: Winograd) -> std::result::Result<Self, ModelError> {
        Ok(match net {
            super::Net::Rrdb(n) => FastNet::Rrdb(FastRrdb::new(n, backend, wino)?),
            super::Net::Srvgg(n) => FastNet::Srvgg(FastSrvgg::new(n, backend, wino)?),
            super::Net::Span(n) => FastNet::Span(FastSpan::new(n, backend, wino)?),
            super::Net::Cugan(n) => FastNet::Cugan(FastCugan::new(n, backend, wino)?),
        })
    }

    /// Drops the activation buffers kept between forwards (the engine calls this when its
    /// queue drains).
    pub fn release_buffers(&self) {
        match self {
            FastNet::Rrdb(net) => net.pool.clear(),
            FastNet::Srvgg(net) => net.pool.clear(),
            FastNet::Span(net) => net.pool.clear(),
            FastNet::Cugan(net) => net.pool.clear(),
        }
    }

    /// Bytes of activation buffers kept now.
    pub fn kept_bytes(&self) -> usize {
        match self {
            FastNet::Rrdb(net) => net.pool.bytes(),
            FastNet::Srvgg(net) => net.pool.bytes(),
            FastNet::Span(net) => net.pool.bytes(),
            FastNet::Cugan(net) => net.pool.bytes(),
        }
    }

    /// `(N, 3, H, W)` f32 NCHW in, `(N, 3, s·H, s·W)` f32 NCHW out on the CPU (the same contract
    /// as the candle forward).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let data = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (y, oh, ow) = self.forward_data(&data, n, h, w)?;
        Tensor::from_vec(y, (n, 3, oh, ow), &Device::Cpu)
    }

    /// [`FastNet::forward`] on plain NCHW data `(n, 3, h, w)`: the output data and its height
    /// and width. The engine calls this directly, which saves the output's copy out of a
    /// tensor (a 3 MB `memcpy`, ~1 % of SRVGG's forward at 128²).
    pub fn forward_data(&self, x: &[f32], n: usize, h: usize, w: usize) -> Result<(Vec<f32>, usize, usize)> {
        let plain = || Nhwc::from_nchw(x, n, 3, h, w, 0).map_err(err);
        let (y, s) = match self {
            FastNet::Rrdb(net) => (net.forward(&plain()?).map_err(err)?, 4),
            FastNet::Srvgg(net) => (net.forward(&plain()?).map_err(err)?, net.cfg.upscale),
            FastNet::Span(net) => (net.forward(&net.input(x, n, h, w).map_err(err)?).map_err(err)?, net.scale),
            FastNet::Cugan(net) => (net.forward_data(x, n, h, w).map_err(err)?, net.cfg.scale as usize),
        };
        match self {
            FastNet::Srvgg(net) if net.cfg.scale as usize != net.cfg.upscale => {
                let y = Tensor::from_vec(y, (n, 3, s * h, s * w), &Device::Cpu)?;
                let y = bicubic(&y, net.cfg.scale as f32 / net.cfg.upscale as f32)?;
                let (_, _, oh, ow) = y.dims4()?;
                Ok((y.flatten_all()?.to_vec1()?, oh, ow))
            }
            _ => Ok((y, s * h, s * w)),
        }
    }
}
