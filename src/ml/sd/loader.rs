//! Finds and maps the weight files of a diffusers `StableDiffusionUpscalePipeline` folder
//! (`unet/`, `vae/`, `text_encoder/` with fp32 or `.fp16` safetensors; configs as JSON), and
//! computes the weights digest used in the engine id. Tensors are read from the files one by one
//! (not memory-mapped), so a component's file is never resident next to its loaded copy.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
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

/// A safetensors file as a `VarBuilder` converting to `dtype`. Each tensor is read from the file
/// when the model asks for it (no memory map): a mapped file stays resident, page by page, until
/// the whole component is built, so loading the text encoder after the UNet used to peak at all
/// the weights plus the largest file (about 1.3 GiB more than the weights alone).
pub fn file_var_builder(path: &Path, dtype: DType, dev: &Device) -> Result<VarBuilder<'static>, SdError> {
    let file = SafetensorsFile::open(path)?;
    Ok(VarBuilder::from_backend(Box::new(file), dtype, dev.clone()))
}

/// One tensor's place in a safetensors file.
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// A safetensors file read tensor by tensor with positioned reads.
struct SafetensorsFile {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
    index: std::collections::HashMap<String, Entry>,
}

#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

impl SafetensorsFile {
    fn open(path: &Path) -> Result<Self, SdError> {
        let bad = |m: String| SdError::Load(format!("{}: {m}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100 << 20 || 8 + header_len > file_len {
            return Err(bad(format!("implausible safetensors header length {header_len}")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
        let raw: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let mut index = std::collections::HashMap::with_capacity(raw.len());
        for (name, v) in raw {
            if name == "__metadata__" {
                continue;
            }
            let h: HeaderEntry = serde_json::from_value(v).map_err(|e| bad(format!("{name}: {e}")))?;
            let dtype = match h.dtype.as_str() {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                "F64" => DType::F64,
                "I64" => DType::I64,
                "U32" => DType::U32,
                "U8" => DType::U8,
                other => return Err(bad(format!("{name}: unsupported dtype {other}"))),
            };
            let (a, b) = h.data_offsets;
            let want = h.shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
            if b < a || b - a != want || data_start + b > file_len {
                return Err(bad(format!("{name}: data offsets {a}..{b} do not fit its shape or the file")));
            }
            index.insert(name, Entry { dtype, shape: h.shape, start: data_start + a, end: data_start + b });
        }
        Ok(Self { path: path.to_path_buf(), file: std::sync::Mutex::new(file), index })
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self.index.get(name).ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())?;
        let read = |buf: &mut [u8]| -> std::io::Result<()> {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.seek(SeekFrom::Start(e.start))?;
            f.read_exact(buf)
        };
        let io = |err: std::io::Error| candle_core::Error::Msg(format!("{}: {name}: {err}", self.path.display()));
        let t = if e.dtype == DType::F32 && cfg!(target_endian = "little") {
            // straight into the tensor's own buffer: one copy of the tensor, not two
            let mut v = vec![0f32; (e.end - e.start) as usize / 4];
            read(bytemuck::cast_slice_mut(&mut v)).map_err(io)?;
            Tensor::from_vec(v, e.shape.as_slice(), &Device::Cpu)?
        } else {
            let mut bytes = vec![0u8; (e.end - e.start) as usize];
            read(&mut bytes).map_err(io)?;
            Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, &Device::Cpu)?
        };
        t.to_dtype(dtype)?.to_device(dev)
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsFile {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape { msg: format!("shape mismatch for {name}"), expected: s, got: t.shape().clone() }.bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
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
