//! Finds and maps the weight files of a diffusers `StableDiffusionUpscalePipeline` folder
//! (`unet/`, `vae/`, `text_encoder/` with fp32 or `.fp16` safetensors; configs as JSON), and
//! computes the weights digest used in the engine id.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::SdError;

/// The weight file of one component: `<stem>.safetensors` or `<stem>.fp16.safetensors`. fp16
/// is preferred when loading in f16 and used as a fallback otherwise (converted on load).
pub fn weight_file(dir: &Path, stem: &str, dtype: DType) -> Result<PathBuf, SdError> {
    let full = dir.join(format!("{stem}.safetensors"));
    let half = dir.join(format!("{stem}.fp16.safetensors"));
    let order = if dtype == DType::F16 { [half, full] } else { [full, half] };
    order
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| SdError::Load(format!("{}: neither {stem}.safetensors nor {stem}.fp16.safetensors", dir.display())))
}

/// Memory-maps a safetensors file as a `VarBuilder` converting to `dtype`.
#[allow(unsafe_code)]
pub fn mmap_var_builder(path: &Path, dtype: DType, dev: &Device) -> Result<VarBuilder<'static>, SdError> {
    // SAFETY: the weights file is mapped read-only and must not be modified or truncated while
    // upres runs (the operator's models folder is treated as immutable; replacing a file by a
    // rename is safe, truncating it in place is not).
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, dev) }
        .map_err(|e| SdError::Load(format!("{}: {e}", path.display())))
}

/// Reads and parses a JSON config file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SdError> {
    let s = std::fs::read_to_string(path).map_err(|e| SdError::Load(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&s).map_err(|e| SdError::Load(format!("{}: {e}", path.display())))
}

/// A digest of the weights: blake3 over each file's size, safetensors header (names, dtypes,
/// shapes, offsets) and the first and last 4 MiB of tensor data. Reading all 3.5 GB at startup
/// would cost seconds; this catches any re-export, dtype change or fine-tune in practice.
pub fn weights_digest(files: &[PathBuf], configs: &[PathBuf]) -> Result<String, SdError> {
    const EDGE: u64 = 4 << 20;
    let io = |p: &Path, e: std::io::Error| SdError::Load(format!("{}: {e}", p.display()));
    let mut h = blake3::Hasher::new();
    for p in files {
        let mut f = std::fs::File::open(p).map_err(|e| io(p, e))?;
        let len = f.metadata().map_err(|e| io(p, e))?.len();
        h.update(&len.to_le_bytes());
        let mut buf = vec![0u8; EDGE.min(len) as usize];
        f.read_exact(&mut buf).map_err(|e| io(p, e))?;
        h.update(&buf);
        if len > EDGE {
            let tail = EDGE.min(len - EDGE);
            f.seek(SeekFrom::End(-(tail as i64))).map_err(|e| io(p, e))?;
            let mut buf = vec![0u8; tail as usize];
            f.read_exact(&mut buf).map_err(|e| io(p, e))?;
            h.update(&buf);
        }
    }
    for p in configs {
        h.update(&std::fs::read(p).map_err(|e| io(p, e))?);
    }
    Ok(hex::encode(&h.finalize().as_bytes()[..8]))
}
