//! The activation layout the kernels read and write: [`Nhwc`] (f32 NHWC with a stored zero
//! border, a channel stride wider than a conv's slice, and a bf16 shadow for the AMX
//! kernels), and the row-parallel layout passes between convolutions (NCHW conversion,
//! upsampling, pixel shuffle, residual adds).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::job::{bf16_to_f32, f32_to_bf16};
use super::error::{shape_err, FastConvError};


/// Extra pixels allocated after the last padded pixel: a tile may run up to 15 positions past
/// the last interior pixel (its results are discarded, its reads must stay in the buffer).
pub(super) const SLACK_PX: usize = 24;

/// An f32 NHWC activation with a stored one-pixel zero border and a channel stride `c`.
///
/// Pixel `(n, y, x)` (logical coordinates, `0 <= y < h`) lives at padded flat index
/// `n·(h+2)·(w+2) + (y+1)·(w+2) + (x+1)`; channel `k` of it at `index·c + k`. The border is
/// never written by the ops here and stays zero.
#[derive(Clone, Debug)]
pub struct Nhwc {
    pub(super) n: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c: usize,
    buf: Vec<f32>,
    /// Start of the data inside `buf` (aligned to 64 bytes).
    base: usize,
    /// bf16 shadow of the same pixels and channel stride, written by the AMX bf16 kernel next
    /// to its f32 output so the next convolution reads bf16 without a conversion pass (empty
    /// until an AMX convolution writes this buffer). Plus slack for the tile overrun.
    bf16: Vec<u16>,
    /// Start of the shadow inside `bf16`, aligned to 64 bytes: with a pixel stride of a
    /// multiple of 32 channels every tile row is then one cache line, not two (measured up to
    /// 4× on L1-resident shapes, ~25 % on 64→64 at 128²).
    bf16_base: usize,
    /// Per channel: whether `bf16` holds the rounded f32 values. Any other write clears it.
    bf16_valid: Vec<bool>,
    /// Per channel: whether only the shadow is current because a plain AMX conv wrote it
    /// with [`Epilogue::bf16_only`] (empty: every channel's f32 values are current).
    f32_stale: Vec<bool>,
}

impl Nhwc {
    /// A zeroed activation of `n` images, `h×w` pixels, `c` channels (channel stride).
    pub fn zeros(n: usize, h: usize, w: usize, c: usize) -> Self {
        let len = (n * (h + 2) * (w + 2) + SLACK_PX) * c;
        let buf = vec![0f32; len + 16];
        let base = buf.as_ptr().align_offset(64).min(15);
        Nhwc { n, h, w, c, buf, base, bf16: Vec::new(), bf16_base: 0, bf16_valid: Vec::new(), f32_stale: Vec::new() }
    }

    /// Forgets what the buffer's shadow and f32 values held, for reuse by [`super::BufferPool`]: the
    /// interior is then arbitrary until written; the zero border and slack stay zero (no
    /// operation here writes them).
    pub(super) fn reset_for_reuse(&mut self) {
        self.bf16_valid.clear();
        self.f32_stale.clear();
    }

    /// Bytes held (f32 data and bf16 shadow).
    pub(super) fn bytes(&self) -> usize {
        self.buf.len() * 4 + self.bf16.len() * 2
    }

    /// The whole allocation and where the data starts in it (tests check the border and
    /// slack stay zero).
    #[cfg(test)]
    pub(super) fn raw_buf(&self) -> (&[f32], usize) {
        (&self.buf, self.base)
    }

    /// `(n, h, w, c)`.
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.h, self.w, self.c)
    }

    pub(super) fn row_px(&self) -> usize {
        self.w + 2
    }

    pub(super) fn img_px(&self) -> usize {
        (self.h + 2) * (self.w + 2)
    }

    pub(super) fn index(&self, n: usize, y: usize, x: usize) -> usize {
        n * self.img_px() + (y + 1) * self.row_px() + (x + 1)
    }

    pub(super) fn data(&self) -> &[f32] {
        &self.buf[self.base..]
    }

    /// Mutable data; the bf16 shadow no longer matches it. Channels that only the shadow
    /// held are first widened back to f32 (exact), so no value is lost.
    pub(super) fn data_mut(&mut self) -> &mut [f32] {
        self.widen_stale();
        if !self.bf16_valid.is_empty() {
            self.bf16_valid.clear();
        }
        &mut self.buf[self.base..]
    }

    /// Mutable data pointer for a kernel that writes channels `off..off+len` only; the shadow
    /// of those channels is marked stale (a kernel that also writes the shadow revalidates it)
    /// and their f32 values current (a `bf16_only` kernel marks them stale again).
    pub(super) fn data_mut_ptr_for(&mut self, off: usize, len: usize) -> *mut f32 {
        if let Some(v) = self.bf16_valid.get_mut(off..off + len) {
            v.fill(false);
        }
        if let Some(v) = self.f32_stale.get_mut(off..off + len) {
            v.fill(false);
        }
        self.buf[self.base..].as_mut_ptr()
    }

    /// Whether the f32 values of channels `off..off+len` are current.
    pub(super) fn f32_current(&self, off: usize, len: usize) -> bool {
        self.f32_stale.get(off..off + len).is_none_or(|v| !v.iter().any(|&s| s))
    }

    /// Panics unless the f32 values of channels `off..off+len` are current: a reader of f32
    /// data after a `bf16_only` write is a bug in the network code, not bad input.
    pub(super) fn expect_f32(&self, off: usize, len: usize) {
        assert!(
            self.f32_current(off, len),
            "Nhwc channels {off}..{} hold only bf16 values (written with Epilogue::bf16_only)",
            off + len
        );
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn mark_f32_stale(&mut self, off: usize, len: usize) {
        if self.f32_stale.is_empty() {
            self.f32_stale = vec![false; self.c];
        }
        self.f32_stale[off..off + len].fill(true);
    }

    /// Writes the shadow's values of the stale channels back into the f32 data.
    fn widen_stale(&mut self) {
        if self.f32_current(0, self.c) {
            self.f32_stale.clear();
            return;
        }
        let c = self.c;
        let stale = std::mem::take(&mut self.f32_stale);
        let data = &mut self.buf[self.base..];
        for (px, bf) in data.chunks_exact_mut(c).zip(self.bf16[self.bf16_base..].chunks_exact(c)) {
            for k in (0..c).filter(|&k| stale[k]) {
                px[k] = bf16_to_f32(bf[k]);
            }
        }
    }

    /// The bf16 shadow, if it holds channels `off..off+len`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn bf16_if_valid(&self, off: usize, len: usize) -> Option<*const u16> {
        let valid = self.bf16_valid.get(off..off + len)?;
        valid.iter().all(|&v| v).then(|| self.bf16[self.bf16_base..].as_ptr())
    }

    /// The bf16 shadow: per pixel the `c` channels rounded to bf16, pixel stride `c`.
    /// Allocated zeroed on first use; its slack covers a 32-position tile overrun plus a
    /// 32-channel block read past the end.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn bf16_mut_ptr(&mut self) -> *mut u16 {
        if self.bf16.is_empty() {
            self.bf16 = vec![0u16; (self.n * self.img_px() + 64) * self.c + 64 + 32];
            self.bf16_base = self.bf16.as_ptr().align_offset(64).min(31);
        }
        if self.bf16_valid.is_empty() {
            self.bf16_valid = vec![false; self.c];
        }
        self.bf16[self.bf16_base..].as_mut_ptr()
    }

    /// Rounds the f32 values of the channels in `off..off+len` whose shadow is not current
    /// into the shadow (all pixels, so the zero border carries over).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn fill_shadow(&mut self, off: usize, len: usize) {
        self.bf16_mut_ptr();
        let c = self.c;
        let todo: Vec<usize> = (off..off + len).filter(|&k| !self.bf16_valid[k]).collect();
        if todo.is_empty() {
            return;
        }
        let data = &self.buf[self.base..];
        for (px, bf) in data.chunks_exact(c).zip(self.bf16[self.bf16_base..].chunks_exact_mut(c)) {
            for &k in &todo {
                bf[k] = f32_to_bf16(px[k]);
            }
        }
        self.mark_bf16_valid(off, len);
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn mark_bf16_valid(&mut self, off: usize, len: usize) {
        if let Some(v) = self.bf16_valid.get_mut(off..off + len) {
            v.fill(true);
        }
    }

    /// The channels of pixel `(n, y, x)`.
    pub fn pixel(&self, n: usize, y: usize, x: usize) -> &[f32] {
        self.expect_f32(0, self.c);
        self.px(n, y, x)
    }

    /// [`Nhwc::pixel`] for callers that checked the channels they read.
    pub(super) fn px(&self, n: usize, y: usize, x: usize) -> &[f32] {
        let i = self.index(n, y, x) * self.c;
        &self.data()[i..i + self.c]
    }

    /// Mutable channels of pixel `(n, y, x)`.
    pub fn pixel_mut(&mut self, n: usize, y: usize, x: usize) -> &mut [f32] {
        let i = self.index(n, y, x) * self.c;
        let c = self.c;
        &mut self.data_mut()[i..i + c]
    }

    /// Interior pixels of row `y` of image `n`: `w` pixels of `c` channels.
    pub(super) fn row(&self, n: usize, y: usize) -> &[f32] {
        let i = self.index(n, y, 0) * self.c;
        &self.data()[i..i + self.w * self.c]
    }

    /// The interior rows of every image as `(image, y, w·c values)`, on rayon's pool: the
    /// layout passes between convolutions (resizes, residuals, format changes) run on both
    /// cores like the convolutions, instead of leaving one idle.
    pub(super) fn par_rows_mut(&mut self) -> impl ParallelIterator<Item = (usize, usize, &mut [f32])> {
        let (h, w, c, row_px) = (self.h, self.w, self.c, self.row_px());
        let len = self.n * self.img_px() * c;
        self.data_mut()[..len].par_chunks_mut((row_px * c).max(1)).enumerate().filter_map(move |(r, px)| {
            let (ni, yy) = (r / (h + 2), r % (h + 2));
            (yy >= 1 && yy <= h).then(|| (ni, yy - 1, &mut px[c..(w + 1) * c]))
        })
    }

    /// Builds from NCHW data (`data.len() == n·c·h·w`); the channel stride is `c + extra_c`.
    pub fn from_nchw(data: &[f32], n: usize, c: usize, h: usize, w: usize, extra_c: usize) -> Result<Self, FastConvError> {
        if data.len() != n * c * h * w {
            return shape_err(format!("from_nchw: {} values for {n}x{c}x{h}x{w}", data.len()));
        }
        let mut t = Nhwc::zeros(n, h, w, c + extra_c);
        let cs = t.c;
        t.par_rows_mut().for_each(|(ni, y, row)| {
            for (x, px) in row.chunks_exact_mut(cs).enumerate() {
                for (k, v) in px[..c].iter_mut().enumerate() {
                    *v = data[((ni * c + k) * h + y) * w + x];
                }
            }
        });
        Ok(t)
    }

    /// Channels `c_off..c_off+c_len` as NCHW data.
    pub fn to_nchw(&self, c_off: usize, c_len: usize) -> Vec<f32> {
        assert!(c_off + c_len <= self.c, "channel slice out of range");
        self.expect_f32(c_off, c_len);
        let (h, w, c) = (self.h, self.w, self.c);
        let mut out = vec![0f32; self.n * c_len * h * w];
        // One output row (image, channel, y) per item.
        out.par_chunks_mut(w.max(1)).enumerate().for_each(|(r, dst)| {
            let (ni, k, y) = (r / (c_len * h), (r / h) % c_len, r % h);
            let src = self.row(ni, y);
            for (x, d) in dst.iter_mut().enumerate() {
                *d = src[x * c + c_off + k];
            }
        });
        out
    }

    /// From a candle NCHW tensor (any float dtype); channel stride `c + extra_c`.
    pub fn from_tensor(t: &Tensor, extra_c: usize) -> candle_core::Result<Self> {
        let (n, c, h, w) = t.dims4()?;
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Nhwc::from_nchw(&v, n, c, h, w, extra_c).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Channels `c_off..c_off+c_len` as a candle NCHW f32 tensor.
    pub fn to_tensor(&self, c_off: usize, c_len: usize, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.to_nchw(c_off, c_len), (self.n, c_len, self.h, self.w), device)
    }

    /// Nearest-neighbour upsampling by an integer `factor` of channels `c_off..c_off+c_len`.
    pub fn upsample_nearest(&self, c_off: usize, c_len: usize, factor: usize) -> Nhwc {
        let mut out = Nhwc::zeros(self.n, self.h * factor, self.w * factor, c_len);
        self.upsample_nearest_into(c_off, c_len, factor, &mut out);
        out
    }

    /// [`Nhwc::upsample_nearest`] into `out` (`factor`× this size, `c_len` channels), every
    /// interior value overwritten.
    pub fn upsample_nearest_into(&self, c_off: usize, c_len: usize, factor: usize, out: &mut Nhwc) {
        assert!(c_off + c_len <= self.c, "channel slice out of range");
        assert!(out.shape() == (self.n, self.h * factor, self.w * factor, c_len), "upsample_nearest_into: shape mismatch");
        self.expect_f32(c_off, c_len);
        let c = self.c;
        out.par_rows_mut().for_each(|(ni, y, dst)| {
            let src = self.row(ni, y / factor);
            for (x, d) in dst.chunks_exact_mut(c_len).enumerate() {
                let s = (x / factor) * c + c_off;
                d.copy_from_slice(&src[s..s + c_len]);
            }
        });
    }

    /// PyTorch `pixel_shuffle(r)` of channels `c_off..c_off+c_len` (`c_len = C·r²`): output
    /// channel `k`, sub-pixel `(i, j)` comes from input channel `k·r² + i·r + j`.
    pub fn pixel_shuffle(&self, c_off: usize, c_len: usize, r: usize) -> Nhwc {
        assert!(c_off + c_len <= self.c && c_len.is_multiple_of(r * r), "bad pixel_shuffle slice");
        self.expect_f32(c_off, c_len);
        let co = c_len / (r * r);
        let mut out = Nhwc::zeros(self.n, self.h * r, self.w * r, co);
        let c = self.c;
        out.par_rows_mut().for_each(|(ni, y, dst)| {
            let src = self.row(ni, y / r);
            for (x, d) in dst.chunks_exact_mut(co).enumerate() {
                let s = (x / r) * c + c_off + (y % r) * r + (x % r);
                for (k, v) in d.iter_mut().enumerate() {
                    *v = src[s + k * r * r];
                }
            }
        });
        out
    }

    /// NCHW data of `pixel_shuffle(r)` of channels `c_off..c_off+c_len`, plus, when given,
    /// the nearest-upsampled `skip` (its first `c_len / r²` channels, `skip` at this buffer's
    /// size): SRVGGNetCompact's tail in one pass, not three over fresh buffers.
    pub fn pixel_shuffle_nchw(&self, c_off: usize, c_len: usize, r: usize, skip: Option<&Nhwc>) -> Vec<f32> {
        assert!(c_off + c_len <= self.c && r >= 1 && c_len.is_multiple_of(r * r), "bad pixel_shuffle slice");
        self.expect_f32(c_off, c_len);
        let co = c_len / (r * r);
        if let Some(s) = skip {
            assert!((s.n, s.h, s.w) == (self.n, self.h, self.w) && s.c >= co, "pixel_shuffle_nchw: skip shape mismatch");
            s.expect_f32(0, co);
        }
        let (oh, ow, c) = (self.h * r, self.w * r, self.c);
        let mut out = vec![0f32; self.n * co * oh * ow];
        // One output row (image, channel, y) per item.
        out.par_chunks_mut(ow.max(1)).enumerate().for_each(|(i, dst)| {
            let (ni, k, y) = (i / (co * oh), (i / oh) % co, i % oh);
            // Each input pixel fills `r` consecutive outputs: channels base..base+r.
            let base = c_off + k * r * r + (y % r) * r;
            let src = self.row(ni, y / r);
            let skip = skip.map(|s| (s.row(ni, y / r), s.c, k));
            // The usual factors as constants: a runtime-length copy of `r` floats per pixel
            // compiles to a `memcpy` call each, which cost ~2.5 % of SRVGG's forward at 128².
            match r {
                4 => shuffle_row::<4>(dst, src, c, base, skip),
                2 => shuffle_row::<2>(dst, src, c, base, skip),
                3 => shuffle_row::<3>(dst, src, c, base, skip),
                _ => shuffle_row_dyn(dst, src, c, base, r, skip),
            }
        });
        out
    }

    /// `f` on channels `c_off..c_off+len` in place, row-parallel: activations that no conv
    /// epilogue fuses (SPAN's Swish, with [`super::pointwise::swish`]).
    pub fn map_channels(&mut self, c_off: usize, len: usize, f: impl Fn(f32) -> f32 + Sync) {
        assert!(c_off + len <= self.c, "map_channels: channel slice out of range");
        let c = self.c;
        self.par_rows_mut().for_each(|(_, _, row)| {
            for px in row.chunks_exact_mut(c) {
                px[c_off..c_off + len].iter_mut().for_each(|v| *v = f(*v));
            }
        });
    }

    /// `op(self value, other value)` over channel slices of the same n, h, w, row-parallel
    /// (SPAN's attention product in one pass).
    pub fn combine(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize, op: impl Fn(&mut f32, f32) + Sync) {
        self.combine_nearest(c_off, other, o_off, len, 1, op);
    }

    /// `self[.., c_off..c_off+len] += other[.., o_off..o_off+len]` (same n, h, w).
    pub fn add_assign(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize) {
        assert!((self.n, self.h, self.w) == (other.n, other.h, other.w), "add_assign: shape mismatch");
        self.combine_nearest(c_off, other, o_off, len, 1, |d, s| *d += s);
    }

    /// `self[.., c_off..c_off+len] = other[.., o_off..o_off+len]` (same n, h, w).
    pub fn copy_channels(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize) {
        assert!((self.n, self.h, self.w) == (other.n, other.h, other.w), "copy_channels: shape mismatch");
        self.combine_nearest(c_off, other, o_off, len, 1, |d, s| *d = s);
    }

    /// `self[.., c_off..c_off+len] += upsample_nearest(other, factor)[.., o_off..o_off+len]`
    /// without building the upsampled copy (`self` is `factor`× `other`'s height and width).
    pub fn add_nearest(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize, factor: usize) {
        self.combine_nearest(c_off, other, o_off, len, factor, |d, s| *d += s);
    }

    /// `op(self value, nearest-upsampled other value)` over a channel slice, row-parallel.
    fn combine_nearest(&mut self, c_off: usize, other: &Nhwc, o_off: usize, len: usize, factor: usize, op: impl Fn(&mut f32, f32) + Sync) {
        assert!(
            factor >= 1 && (self.n, self.h, self.w) == (other.n, other.h * factor, other.w * factor),
            "add_assign/copy_channels/add_nearest: shape mismatch"
        );
        assert!(c_off + len <= self.c && o_off + len <= other.c, "add_assign/copy_channels/add_nearest: channel slice out of range");
        other.expect_f32(o_off, len);
        let (c, oc) = (self.c, other.c);
        self.par_rows_mut().for_each(|(ni, y, dst)| {
            let src = other.row(ni, y / factor);
            for (x, d) in dst.chunks_exact_mut(c).enumerate() {
                let s = (x / factor) * oc + o_off;
                for (d, &s) in d[c_off..c_off + len].iter_mut().zip(&src[s..s + len]) {
                    op(d, s);
                }
            }
        });
    }
}

/// One output row of [`Nhwc::pixel_shuffle_nchw`] for a constant factor `R`: pixel `x` of `src`
/// (`c` channels apart) fills `dst[R·x..R·x+R]` from its channels `base..base+R`, plus the
/// skip pixel's channel `k` when given.
fn shuffle_row<const R: usize>(dst: &mut [f32], src: &[f32], c: usize, base: usize, skip: Option<(&[f32], usize, usize)>) {
    let pixels = dst.chunks_exact_mut(R).zip(src.chunks_exact(c));
    match skip {
        Some((s, sc, k)) => {
            for ((d, px), sp) in pixels.zip(s.chunks_exact(sc)) {
                let v: &[f32; R] = px[base..base + R].try_into().expect("R channels");
                for (d, v) in d.iter_mut().zip(v) {
                    *d = v + sp[k];
                }
            }
        }
        None => {
            for (d, px) in pixels {
                let v: &[f32; R] = px[base..base + R].try_into().expect("R channels");
                d.copy_from_slice(v);
            }
        }
    }
}

/// [`shuffle_row`] for any factor.
fn shuffle_row_dyn(dst: &mut [f32], src: &[f32], c: usize, base: usize, r: usize, skip: Option<(&[f32], usize, usize)>) {
    for (x, (d, px)) in dst.chunks_exact_mut(r).zip(src.chunks_exact(c)).enumerate() {
        let add = skip.map_or(0.0, |(s, sc, k)| s[x * sc + k]);
        for (d, v) in d.iter_mut().zip(&px[base..base + r]) {
            *d = v + add;
        }
    }
}
