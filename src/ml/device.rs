//! Which candle device the neural engines run on, from `ml.device`: the one picker for every
//! engine family.
//!
//! `auto` takes the first CUDA device when upres was built with the `cuda` feature and one is
//! present, else the CPU, and logs its choice. An explicit `cuda:N` that cannot be opened is an
//! error (a silent CPU fallback would be a surprise in production).

use candle_core::Device;

use super::MlError;
use crate::config::DeviceSpec;

pub fn select(spec: DeviceSpec) -> Result<Device, MlError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => {
            let device = Device::cuda_if_available(0).unwrap_or(Device::Cpu);
            tracing::info!(device = if device.is_cuda() { "cuda:0" } else { "cpu" }, "ml.device=auto chose");
            Ok(device)
        }
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| MlError::Device(format!("{spec}: {e}"))),
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
    fn one_set_of_accepted_values() {
        for (text, spec) in [("auto", DeviceSpec::Auto), ("cpu", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0)), ("cuda:1", DeviceSpec::Cuda(1))] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec), "{text}");
        }
        for bad in ["gpu", "cuda:", "cuda:x", "CPU0", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_and_unavailable_cuda() {
        assert!(matches!(select(DeviceSpec::Cpu), Ok(Device::Cpu)));
        assert!(select(DeviceSpec::Auto).is_ok());
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(select(DeviceSpec::Cuda(0)), Err(MlError::Device(_))));
    }

    #[test]
    fn the_config_refuses_an_unknown_device() {
        let err = toml_ml("device = \"gpu\"").unwrap_err();
        assert!(err.contains("gpu"), "{err}");
        assert_eq!(toml_ml("device = \"cuda\"").unwrap(), DeviceSpec::Cuda(0));
    }

    fn toml_ml(body: &str) -> Result<DeviceSpec, String> {
        #[derive(serde::Deserialize)]
        struct Ml {
            device: DeviceSpec,
        }
        use figment::providers::Format;
        let ml: Ml = figment::Figment::from(figment::providers::Toml::string(body)).extract().map_err(|e| e.to_string())?;
        Ok(ml.device)
    }
}
