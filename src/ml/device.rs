//! Which candle device the neural engines run on, from `ml.device`.
//!
//! `auto` takes the first CUDA device when upres was built with the `cuda` feature and one is
//! present, else the CPU, and logs its choice. An explicit `cuda:N` that cannot be opened is an
//! error (a silent CPU fallback would be a surprise in production).

use candle_core::Device;

use super::MlError;

pub fn select(spec: &str) -> Result<Device, MlError> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            let device = match Device::cuda_if_available(0) {
                Ok(d) => d,
                Err(_) => Device::Cpu,
            };
            tracing::info!(device = if device.is_cuda() { "cuda:0" } else { "cpu" }, "ml.device=auto chose");
            Ok(device)
        }
        s => {
            let n: usize = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| MlError::Device(format!("`{s}` is not auto, cpu or cuda:N")))?;
            Device::new_cuda(n).map_err(|e| MlError::Device(format!("{s}: {e}")))
        }
    }
}

/// The device as `ml.device` would name it.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_bad_specs() {
        assert!(matches!(select("cpu"), Ok(Device::Cpu)));
        assert!(select("auto").is_ok());
        assert!(matches!(select("gpu"), Err(MlError::Device(_))));
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(select("cuda:0"), Err(MlError::Device(_))));
    }
}
