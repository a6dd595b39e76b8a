//! The public convolution type: [`Conv3x3`] (constructors, which pack the weights once for
//! the chosen backend; accessors; candle adapters) and what a forward takes ([`Activation`],
//! [`Epilogue`], [`Residual`]). The forward itself, validation to kernel, is in `dispatch.rs`.

use candle_core::{DType, Tensor};

use super::select::{self, Backend, Winograd};
#[cfg(target_arch = "x86_64")]
use super::job::AmxWeights;
use super::layout::Nhwc;
use super::pack;
use super::error::{shape_err, FastConvError};

/// Activation fused into the convolution's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    None,
    /// `x < 0 → slope·x` (Real-ESRGAN uses 0.2).
    LeakyRelu(f32),
    /// Per-output-channel slopes (`len == out_c`).
    PRelu(Vec<f32>),
}

/// One residual term: `out += weight · src[.., c_off..c_off+out_c]`. `src` has the output's
/// `n, h, w`.
#[derive(Clone, Copy)]
pub struct Residual<'a> {
    pub src: &'a Nhwc,
    pub c_off: usize,
    pub weight: f32,
}

/// The fused output pass: `out = scale · act(conv + bias) + Σ residuals`.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: f32,
    /// At most two.
    pub residuals: &'a [Residual<'a>],
    /// For a plain AMX conv: write only the output's bf16 shadow, not its f32 values (a
    /// third of the output traffic), for activations that only plain AMX convs read. Those
    /// channels' f32 values are then stale: f32 readers panic, a conv on another backend
    /// fails, and a mutable access widens them back from the shadow. Other backends ignore
    /// it and write f32 as usual.
    pub bf16_only: bool,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Epilogue { scale: 1.0, residuals: &[], bf16_only: false }
    }
}

/// A 3×3, stride 1, pad 1 convolution with pre-packed weights and a fused activation.
pub struct Conv3x3 {
    pub(super) in_c: usize,
    pub(super) out_c: usize,
    pub(super) blocks: Vec<pack::Block>,
    /// Packed for the AMX backends (then `blocks` is empty).
    #[cfg(target_arch = "x86_64")]
    pub(super) amx: Option<AmxWeights>,
    pub(super) backend: Backend,
    /// Winograd weights are packed (`Winograd::pays` at construction).
    pub(super) winograd: bool,
    /// The mode asked for: `Auto` also keeps maps of fewer than [`WINOGRAD_MIN_TILES`](super::WINOGRAD_MIN_TILES) tiles
    /// on the direct kernel.
    pub(super) wino_mode: Winograd,
    /// Output rows per tile of the bf16 Winograd kernel (`wino_bf16.rs`, 2 or 4) when this
    /// conv runs it.
    pub(super) wino_rows: usize,
}

impl Conv3x3 {
    /// Packs `weight` (OIHW, `out_c·in_c·9` values) and `bias` (`out_c`, or none) for the
    /// backend from [`Backend::detect`] and the Winograd mode from [`Winograd::from_env`].
    pub fn new(weight: &[f32], bias: Option<&[f32]>, in_c: usize, out_c: usize, act: Activation) -> Result<Self, FastConvError> {
        Self::with_options(weight, bias, in_c, out_c, act, Backend::detect(), Winograd::from_env())
    }

    /// As [`Conv3x3::new`] with an explicit backend (an unsupported one falls back to
    /// [`Backend::best_fp32`]) and the direct kernel (no Winograd).
    pub fn with_backend(
        weight: &[f32],
        bias: Option<&[f32]>,
        in_c: usize,
        out_c: usize,
        act: Activation,
        backend: Backend,
    ) -> Result<Self, FastConvError> {
        Self::with_options(weight, bias, in_c, out_c, act, backend, Winograd::Off)
    }

    /// As [`Conv3x3::with_backend`] with an explicit Winograd mode: the conv runs Winograd
    /// Winograd (F(4×4, 3×3) fp32 or F(2×2, 3×3) AMX) when `winograd.pays(backend, in_c,
    /// out_c)`, else the backend's direct kernel. See [`Conv3x3::uses_winograd`].
    pub fn with_options(
        weight: &[f32],
        bias: Option<&[f32]>,
        in_c: usize,
        out_c: usize,
        act: Activation,
        backend: Backend,
        winograd: Winograd,
    ) -> Result<Self, FastConvError> {
        Self::with_winograd_rows(weight, bias, in_c, out_c, act, backend, winograd, select::bf16_winograd_rows())
    }

    /// As [`Conv3x3::with_options`], with the bf16 Winograd kernel's tile height given (2 or 4;
    /// the kernel tests run both).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn with_winograd_rows(
        weight: &[f32],
        bias: Option<&[f32]>,
        in_c: usize,
        out_c: usize,
        act: Activation,
        backend: Backend,
        winograd: Winograd,
        wino_rows: usize,
    ) -> Result<Self, FastConvError> {
        let backend = if backend.supported() { backend } else { Backend::best_fp32() };
        let wino_rows = if wino_rows == 4 { 4 } else { 2 };
        let use_wino = winograd.pays(backend, in_c, out_c);
        if in_c == 0 || out_c == 0 || weight.len() != out_c * in_c * 9 {
            return shape_err(format!("weight: {} values for {out_c}x{in_c}x3x3", weight.len()));
        }
        if bias.is_some_and(|b| b.len() != out_c) {
            return shape_err("bias length != out_c");
        }
        let slope_of = |o: usize| match &act {
            Activation::None => Ok(1.0),
            Activation::LeakyRelu(s) => Ok(*s),
            Activation::PRelu(v) if v.len() == out_c => Ok(v[o]),
            Activation::PRelu(v) => shape_err(format!("PReLU: {} slopes for {out_c} channels", v.len())),
        };
        let bias_v: Vec<f32> = (0..out_c).map(|o| bias.map_or(0.0, |b| b[o])).collect();
        let slope: Vec<f32> = (0..out_c).map(slope_of).collect::<Result<_, _>>()?;
        #[cfg(target_arch = "x86_64")]
        if matches!(backend, Backend::AmxBf16 | Backend::AmxBf16x2 | Backend::AmxBf16x3 | Backend::AmxBf16W2) {
            // Passes: (input half, weight half), false = hi, true = lo.
            let plan: &[(bool, bool)] = match backend {
                Backend::AmxBf16x3 => &[(false, false), (true, false), (false, true)],
                Backend::AmxBf16x2 => &[(false, false), (true, false)],
                Backend::AmxBf16W2 => &[(false, false), (false, true)],
                _ => &[(false, false)],
            };
            let wts = pack::amx(weight, &bias_v, &slope, (in_c, out_c), plan, use_wino);
            return Ok(Conv3x3 {
                in_c,
                out_c,
                blocks: Vec::new(),
                amx: Some(wts),
                backend,
                winograd: use_wino,
                wino_mode: winograd,
                wino_rows: 2,
            });
        }
        Ok(Conv3x3 {
            in_c,
            out_c,
            blocks: pack::blocks(weight, &bias_v, &slope, in_c, out_c, backend, use_wino, wino_rows),
            #[cfg(target_arch = "x86_64")]
            amx: None,
            backend,
            winograd: use_wino,
            wino_mode: winograd,
            wino_rows,
        })
    }

    /// From candle tensors: weight `(out_c, in_c, 3, 3)`, bias `(out_c)`.
    pub fn from_tensors(weight: &Tensor, bias: Option<&Tensor>, act: Activation) -> candle_core::Result<Self> {
        let (o, i, kh, kw) = weight.dims4()?;
        if (kh, kw) != (3, 3) {
            candle_core::bail!("fastconv: kernel {kh}x{kw}, want 3x3");
        }
        let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let b = match bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        Conv3x3::new(&w, b.as_deref(), i, o, act).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Drop-in for candle NCHW code: converts `x` (N, in_c, H, W) to [`Nhwc`], convolves
    /// with the fused bias/activation, and converts back to an f32 NCHW tensor on `x`'s
    /// device. The conversions cost two copies; keep activations in [`Nhwc`] across layers
    /// to avoid them.
    pub fn forward_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let input = Nhwc::from_tensor(x, 0)?;
        let mut out = Nhwc::zeros(n, h, w, self.out_c);
        self.forward(&input, 0, &mut out, 0, &Epilogue::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        out.to_tensor(0, self.out_c, x.device())
    }

    pub fn in_c(&self) -> usize {
        self.in_c
    }

    pub fn out_c(&self) -> usize {
        self.out_c
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether [`Conv3x3::forward`] runs a Winograd kernel (under [`Winograd::Auto`], images
    /// of fewer than [`WINOGRAD_MIN_TILES`](super::WINOGRAD_MIN_TILES) 4×4 tiles, or [`AMX_WINOGRAD_MIN_TILES`](super::AMX_WINOGRAD_MIN_TILES) 2×2 tiles
    /// on AMX, still run the direct kernel).
    pub fn uses_winograd(&self) -> bool {
        self.winograd
    }

    /// Floating-point operations of one forward over `n×h×w` (2 per multiply-add).
    pub fn flops(&self, n: usize, h: usize, w: usize) -> f64 {
        2.0 * 9.0 * (self.in_c * self.out_c * n * h * w) as f64
    }
}
