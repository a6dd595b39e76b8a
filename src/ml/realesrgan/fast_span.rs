//! SPAN on [`fastconv`](crate::ml::fastconv) (NHWC): the CPU path of a SPAN model.
//!
//! The 3×3 convs run on [`Conv3x3`], all at [`Backend::edge`] precision (fp32 where the trunk
//! backend would be bf16: the 50 dB parity bound is measured for fp32 only),
//! `conv_cat` on [`Conv1x1`]; Swish is one in-place pass per conv and the attention
//! `(h3 + x)·(sigmoid(h3) - 0.5)` one pass per block, both with the vectorised sigmoid of
//! [`pointwise`](crate::ml::fastconv::pointwise). The four concatenated maps are written into
//! their slots of one `4C`-channel buffer as they are made, so the concat costs one copy per
//! slot at most. Buffers come from a [`BufferPool`] kept between forwards.

use super::error::ModelError;
use super::span::Span;
use crate::ml::fastconv::pointwise::{sigmoid, swish, Conv1x1};
use crate::ml::fastconv::{Backend, BufferPool, Conv3x3, Epilogue, FastConvError, Nhwc, Winograd};

/// SPAN on fastconv.
pub struct FastSpan {
    feat: usize,
    pub(super) scale: usize,
    mean: [f32; 3],
    img_range: f32,
    conv_1: Conv3x3,
    /// Per block: c1, c2, c3.
    blocks: Vec<[Conv3x3; 3]>,
    conv_2: Conv3x3,
    conv_cat: Conv1x1,
    up: Conv3x3,
    pub(super) pool: BufferPool,
}

impl FastSpan {
    pub fn new(net: &Span, backend: Backend, wino: Winograd) -> Result<Self, ModelError> {
        let backend = backend.edge();
        let blocks = net
            .blocks
            .iter()
            .map(|b| Ok([b.c1.to_fast(backend, wino)?, b.c2.to_fast(backend, wino)?, b.c3.to_fast(backend, wino)?]))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let conv_cat = net.conv_cat.to_fast_1x1()?;
        Ok(Self {
            feat: net.cfg.feat,
            scale: net.cfg.scale as usize,
            mean: net.mean,
            img_range: net.img_range,
            conv_1: net.conv_1.to_fast(backend, wino)?,
            blocks,
            conv_2: net.conv_2.to_fast(backend, wino)?,
            conv_cat,
            up: net.up.to_fast(backend, wino)?,
            pool: BufferPool::default(),
        })
    }

    /// NCHW `(n, 3, h, w)` RGB in `[0, 1]` → NHWC input of the first conv (mean and range
    /// applied; folding them into `conv_1` would be wrong at the zero-padded border).
    pub fn input(&self, x: &[f32], n: usize, h: usize, w: usize) -> Result<Nhwc, FastConvError> {
        let mut v = x.to_vec();
        for (i, plane) in v.chunks_exact_mut(h * w).enumerate() {
            let m = self.mean[i % 3];
            plane.iter_mut().for_each(|p| *p = (*p - m) * self.img_range);
        }
        Nhwc::from_nchw(&v, n, 3, h, w, 0)
    }

    /// `x` from [`FastSpan::input`] → NCHW data `(n, 3, s·h, s·w)`.
    pub fn forward(&self, x: &Nhwc) -> Result<Vec<f32>, FastConvError> {
        let (n, h, w, _) = x.shape();
        let f = self.feat;
        let pool = &self.pool;
        let none = Epilogue::default();
        // cat = [conv_1 out, conv_2 out, block 1 out, block 6's first activation].
        let mut cat = pool.take(n, h, w, 4 * f);
        self.conv_1.forward(x, 0, &mut cat, 0, &none)?;
        let mut cur = pool.take(n, h, w, f);
        cur.copy_channels(0, &cat, 0, f);
        let mut a = pool.take(n, h, w, f);
        let mut b = pool.take(n, h, w, f);
        let last = self.blocks.len() - 1;
        for (i, [c1, c2, c3]) in self.blocks.iter().enumerate() {
            c1.forward(&cur, 0, &mut a, 0, &none)?;
            a.map_channels(0, f, swish);
            if i == last {
                cat.copy_channels(3 * f, &a, 0, f);
            }
            c2.forward(&a, 0, &mut b, 0, &none)?;
            b.map_channels(0, f, swish);
            c3.forward(&b, 0, &mut a, 0, &none)?;
            a.combine(0, &cur, 0, f, |h3, x| *h3 = (*h3 + x) * (sigmoid(*h3) - 0.5));
            std::mem::swap(&mut cur, &mut a);
            if i == 0 {
                cat.copy_channels(2 * f, &cur, 0, f);
            }
        }
        self.conv_2.forward(&cur, 0, &mut cat, f, &none)?;
        self.conv_cat.forward(&cat, 0, &mut a, 0)?;
        let uc = self.up.out_c();
        let mut u = pool.take(n, h, w, uc);
        self.up.forward(&a, 0, &mut u, 0, &none)?;
        let y = u.pixel_shuffle_nchw(0, uc, self.scale, None);
        [cat, cur, a, b, u].into_iter().for_each(|t| pool.give(t));
        Ok(y)
    }
}
