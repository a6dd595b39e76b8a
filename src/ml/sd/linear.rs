//! The transformer's linear layers: on the CPU with the AVX-512 fp32 backend they run on
//! fastconv's [`Dense`] kernel (packed at load; candle's copy of the weights is dropped),
//! elsewhere on candle's `Linear`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::conv::with_f32_slice;
use crate::ml::fastconv::dense::Dense;
use crate::ml::realesrgan::fastconv_enabled_by_env;

/// `y = x·Wᵀ + b` over the last dimension.
pub enum Lin {
    Fast(Dense),
    Candle(Linear),
}

impl Lin {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let l = linear(in_dim, out_dim, vb.clone())?;
        if vb.device().is_cpu() && fastconv_enabled_by_env() && Dense::available() {
            let w = l.weight().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let b = l.bias().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
            let d = Dense::new(&w, b.as_deref(), in_dim, out_dim).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            return Ok(Lin::Fast(d));
        }
        Ok(Lin::Candle(l))
    }
}

impl Module for Lin {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Lin::Fast(d) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let mut dims = x.dims().to_vec();
                let k = dims.pop().unwrap_or(1);
                if k != d.k() {
                    candle_core::bail!("linear: input width {k}, want {}", d.k());
                }
                let m = x.elem_count() / k.max(1);
                let y = with_f32_slice(x, |xs| d.forward(xs, m).map_err(|e| candle_core::Error::Msg(e.to_string())))?;
                dims.push(d.n());
                Tensor::from_vec(y, dims, x.device())
            }
            Lin::Fast(_) => candle_core::bail!("linear: the packed layer runs f32 on the CPU only"),
            Lin::Candle(l) => l.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// The packed layer against candle's `Linear` on the same weights (3-D input, a width that
    /// is not a multiple of 16): within 1e-5.
    #[test]
    fn packed_linear_matches_candle() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let candle = linear(40, 72, vb.pp("l")).unwrap();
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &dev).unwrap()).unwrap();
        }
        let lin = Lin::new(40, 72, vb.pp("l")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 53, 40), &dev).unwrap();
        let d = (lin.forward(&x).unwrap() - candle.forward(&x).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "max diff {d}");
    }
}
