//! Reading ncnn model files: the text `.param` layer graph and the `.bin` weight blobs.
//!
//! Owns the file formats only: parsing the graph into [`Param`], and cutting the weight file into
//! per-layer [`LayerData`] in graph order. It does not know any architecture; checking that a graph
//! is the network we build is `ml::realesrgan::graph`'s job.
//!
//! Format (ncnn's own `.param` v2 text format, magic `7767517`):
//! ```text
//! 7767517
//! <layer count> <blob count>
//! <Type> <name> <n inputs> <n outputs> <input blobs…> <output blobs…> <k=v …>
//! ```
//! A key `k` below `-23300` is an array: its id is `-k - 23300` and its value is
//! `<len>,<v0>,<v1>,…`. A value with a `.` or an exponent is a float, otherwise an integer.
//!
//! The `.bin` holds each weighted layer's data in graph order. A Convolution's weight starts with a
//! 4-byte tag (`0x01306B47`: fp16; `0`: fp32; anything else, e.g. int8 or a quantisation table,
//! is rejected) and is padded to 4 bytes; its bias (when `5=1`) is raw fp32. Deconvolution and
//! InnerProduct (bias flag `1=`, size `2=`) are stored the same way. PReLU slopes are raw
//! fp32, as are MemoryData constants. Layers this module does not know are accepted only when they carry no weights.

use std::collections::BTreeMap;
use std::fmt;

/// ncnn's `.param` magic number.
const PARAM_MAGIC: &str = "7767517";
/// Tag of an fp16 weight blob.
const TAG_FP16: u32 = 0x0130_6B47;
/// Tag of an int8 weight blob (rejected).
const TAG_INT8: u32 = 0x000D_4B38;

/// Why an ncnn file could not be read.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum NcnnError {
    #[error(".param line {line}: {reason}")]
    Param { line: usize, reason: String },
    #[error(".bin: layer `{layer}` ({kind}): {reason}")]
    Bin { layer: String, kind: String, reason: String },
}

/// One parameter value of a layer line.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i32),
    Float(f32),
    Array(Vec<f32>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Array(v) => write!(f, "{v:?}"),
        }
    }
}

/// One line of the layer graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// ncnn layer type, e.g. `Convolution`.
    pub kind: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Parameters by id (array ids already decoded: `-23310=…` is id 10).
    pub params: BTreeMap<i32, Value>,
    /// 1-based line in the `.param` file, for messages.
    pub line: usize,
}

impl Layer {
    /// An integer parameter, or `default` when absent.
    pub fn int(&self, id: i32, default: i32) -> Result<i32, String> {
        match self.params.get(&id) {
            None => Ok(default),
            Some(Value::Int(i)) => Ok(*i),
            Some(v) => Err(format!("parameter {id} should be an integer, found {v}")),
        }
    }

    /// A float parameter (integers are accepted), or `default` when absent.
    pub fn float(&self, id: i32, default: f32) -> Result<f32, String> {
        match self.params.get(&id) {
            None => Ok(default),
            Some(Value::Float(x)) => Ok(*x),
            Some(Value::Int(i)) => Ok(*i as f32),
            Some(v) => Err(format!("parameter {id} should be a number, found {v}")),
        }
    }

    /// An array parameter, or empty when absent.
    pub fn array(&self, id: i32) -> Result<Vec<f32>, String> {
        match self.params.get(&id) {
            None => Ok(Vec::new()),
            Some(Value::Array(v)) => Ok(v.clone()),
            Some(v) => Err(format!("parameter {id} should be an array, found {v}")),
        }
    }
}

/// A parsed `.param` file.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub layers: Vec<Layer>,
    pub blob_count: usize,
}

impl Param {
    pub fn parse(text: &str) -> Result<Param, NcnnError> {
        let err = |line: usize, reason: String| NcnnError::Param { line, reason };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
        match lines.next() {
            Some((_, m)) if m == PARAM_MAGIC => {}
            Some((n, m)) => return Err(err(n, format!("magic `{m}` is not {PARAM_MAGIC}: not an ncnn .param file"))),
            None => return Err(err(1, "empty file".into())),
        }
        let (n, counts) = lines.next().ok_or_else(|| err(2, "missing layer/blob counts".into()))?;
        let counts: Vec<usize> = counts
            .split_whitespace()
            .map(|t| t.parse().map_err(|_| err(n, format!("bad count `{t}`"))))
            .collect::<Result<_, _>>()?;
        let [layer_count, blob_count] = counts[..] else {
            return Err(err(n, "expected `<layer count> <blob count>`".into()));
        };
        let mut layers = Vec::with_capacity(layer_count);
        for (n, l) in lines {
            layers.push(parse_layer(l).map_err(|r| err(n, r)).map(|mut layer| {
                layer.line = n;
                layer
            })?);
        }
        if layers.len() != layer_count {
            return Err(err(2, format!("header says {layer_count} layers, file has {}", layers.len())));
        }
        Ok(Param { layers, blob_count })
    }
}

fn parse_layer(line: &str) -> Result<Layer, String> {
    let mut tok = line.split_whitespace();
    let mut next = |what: &str| tok.next().ok_or_else(|| format!("missing {what}"));
    let kind = next("layer type")?.to_string();
    let name = next("layer name")?.to_string();
    let n_in: usize = next("input count")?.parse().map_err(|_| "bad input count".to_string())?;
    let n_out: usize = next("output count")?.parse().map_err(|_| "bad output count".to_string())?;
    let inputs = (0..n_in).map(|_| next("input blob").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
    let outputs = (0..n_out).map(|_| next("output blob").map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
    let mut params = BTreeMap::new();
    for kv in tok {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("parameter `{kv}` is not k=v"))?;
        let k: i32 = k.parse().map_err(|_| format!("parameter key `{k}` is not an integer"))?;
        if k <= -23300 {
            let mut parts = v.split(',');
            let len: usize =
                parts.next().unwrap_or("").parse().map_err(|_| format!("array parameter {k} has a bad length"))?;
            let vals = parts
                .map(|p| parse_number(p).map(|x| match x {
                    Value::Int(i) => i as f32,
                    Value::Float(f) => f,
                    Value::Array(_) => unreachable!(),
                }))
                .collect::<Result<Vec<f32>, _>>()?;
            if vals.len() != len {
                return Err(format!("array parameter {k} says {len} values, has {}", vals.len()));
            }
            params.insert(-k - 23300, Value::Array(vals));
        } else {
            params.insert(k, parse_number(v)?);
        }
    }
    Ok(Layer { kind, name, inputs, outputs, params, line: 0 })
}

fn parse_number(v: &str) -> Result<Value, String> {
    if v.contains(['.', 'e', 'E']) {
        v.parse::<f32>().map(Value::Float).map_err(|_| format!("bad float `{v}`"))
    } else {
        v.parse::<i32>().map(Value::Int).map_err(|_| format!("bad integer `{v}`"))
    }
}

/// The weights of one layer, in ncnn's own layout.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerData {
    /// The layer has no weights.
    None,
    /// `weight` is `[out][in][kh][kw]` (PyTorch's OIHW; a Deconvolution's too, an
    /// InnerProduct's `[out][in]`), `bias` has `out` entries.
    Convolution { weight: Vec<f32>, bias: Option<Vec<f32>> },
    /// One slope per channel (or a single shared slope).
    PRelu { slope: Vec<f32> },
    /// A `MemoryData` constant, `w·h·c` raw f32 values (e.g. SPAN's per-channel RGB mean).
    MemoryData { values: Vec<f32> },
}

/// Layer types known to carry no weights.
const WEIGHTLESS: &[&str] =
    &["Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Sigmoid", "Swish", "Noop", "Pooling", "Crop"];

/// Cuts a `.bin` into per-layer weights, one entry per layer of `param`.
pub fn read_bin(param: &Param, bin: &[u8]) -> Result<Vec<LayerData>, NcnnError> {
    let mut cur = Cursor { bin, pos: 0 };
    let mut out = Vec::with_capacity(param.layers.len());
    for layer in &param.layers {
        let fail = |reason: String| NcnnError::Bin { layer: layer.name.clone(), kind: layer.kind.clone(), reason };
        let data = match layer.kind.as_str() {
            // Deconvolution and InnerProduct store their weights as Convolution does.
            "Convolution" | "Deconvolution" | "InnerProduct" => {
                let cout = layer.int(0, 0).map_err(fail)?;
                // InnerProduct's weight_data_size is parameter 2, the others' 6.
                let size_id = if layer.kind == "InnerProduct" { 2 } else { 6 };
                let size = layer.int(size_id, 0).map_err(fail)?;
                let bias_term = layer.int(if layer.kind == "InnerProduct" { 1 } else { 5 }, 0).map_err(fail)?;
                if cout <= 0 || size <= 0 {
                    return Err(fail(format!("num_output {cout} / weight_data_size {size} must be positive")));
                }
                let weight = cur.tagged(size as usize).map_err(fail)?;
                let bias = if bias_term != 0 { Some(cur.raw_f32(cout as usize).map_err(fail)?) } else { None };
                LayerData::Convolution { weight, bias }
            }
            "PReLU" => {
                let n = layer.int(0, 0).map_err(fail)?;
                if n <= 0 {
                    return Err(fail(format!("num_slope {n} must be positive")));
                }
                LayerData::PRelu { slope: cur.raw_f32(n as usize).map_err(fail)? }
            }
            "MemoryData" => {
                let dims = [layer.int(0, 0), layer.int(1, 1), layer.int(11, 1), layer.int(2, 1)];
                let dims = dims.into_iter().collect::<Result<Vec<i32>, String>>().map_err(fail)?;
                if dims.iter().any(|&d| d <= 0) {
                    return Err(fail(format!("MemoryData shape {dims:?} must be positive")));
                }
                let len = dims.iter().map(|&d| d as usize).product();
                LayerData::MemoryData { values: cur.raw_f32(len).map_err(fail)? }
            }
            k if WEIGHTLESS.contains(&k) => LayerData::None,
            k => return Err(fail(format!("layer type `{k}` is not supported by upres"))),
        };
        out.push(data);
    }
    if cur.pos != bin.len() {
        return Err(NcnnError::Bin {
            layer: "(end of file)".into(),
            kind: "-".into(),
            reason: format!("{} bytes left over after the last layer: .bin does not match .param", bin.len() - cur.pos),
        });
    }
    Ok(out)
}

struct Cursor<'a> {
    bin: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bin.len()).ok_or_else(|| {
            format!("needs {n} bytes at offset {}, file has {}: truncated or mismatched .bin", self.pos, self.bin.len())
        })?;
        let s = &self.bin[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn raw_f32(&mut self, n: usize) -> Result<Vec<f32>, String> {
        let bytes = self.take(4 * n)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// A weight blob with its 4-byte type tag.
    fn tagged(&mut self, n: usize) -> Result<Vec<f32>, String> {
        let tag = self.take(4)?;
        let tag = u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]]);
        match tag {
            TAG_FP16 => {
                let bytes = self.take((2 * n).next_multiple_of(4))?;
                Ok(bytes[..2 * n]
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect())
            }
            0 => self.raw_f32(n),
            TAG_INT8 => Err("int8 weights are not supported (use an fp16 or fp32 model)".into()),
            t => Err(format!("weight tag {t:#010x} is not fp16 or fp32 (quantised models are not supported)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "7767517\n4 5\n\
        Input in 0 1 data\n\
        Convolution conv 1 1 data c 0=2 1=3 4=1 5=1 6=54 9=2 -23310=1,2.000000e-01\n\
        PReLU act 1 1 c p 0=2\n\
        Interp up 1 1 p output 0=3 1=5.000000e-01 2=5.000000e-01\n";

    fn f16_bytes(vals: &[f32]) -> Vec<u8> {
        vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
    }

    #[test]
    fn parses_layers_params_and_arrays() {
        let p = Param::parse(TINY).unwrap();
        assert_eq!(p.layers.len(), 4);
        assert_eq!(p.blob_count, 5);
        let conv = &p.layers[1];
        assert_eq!((conv.kind.as_str(), conv.name.as_str()), ("Convolution", "conv"));
        assert_eq!(conv.inputs, vec!["data"]);
        assert_eq!(conv.int(0, 0), Ok(2));
        assert_eq!(conv.int(11, 3), Ok(3));
        assert_eq!(conv.array(10), Ok(vec![0.2]));
        assert_eq!(p.layers[3].float(1, 1.0), Ok(0.5));
        assert_eq!(p.layers[3].line, 6);
    }

    #[test]
    fn rejects_bad_param_files() {
        assert!(matches!(Param::parse("123\n1 1\n"), Err(NcnnError::Param { line: 1, .. })));
        let e = Param::parse("7767517\n2 1\nInput in 0 1 data\n").unwrap_err();
        assert!(e.to_string().contains("header says 2 layers"), "{e}");
        let e = Param::parse("7767517\n1 1\nInput in 0 1 data 0=x\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn reads_fp16_and_fp32_blobs_by_tag() {
        let p = Param::parse(TINY).unwrap();
        let w: Vec<f32> = (0..54).map(|i| i as f32 / 8.0).collect();
        let mut bin = TAG_FP16.to_le_bytes().to_vec();
        bin.extend(f16_bytes(&w));
        bin.extend([1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()));
        bin.extend([0.25f32, 0.5].iter().flat_map(|v| v.to_le_bytes()));
        let data = read_bin(&p, &bin).unwrap();
        assert_eq!(data[1], LayerData::Convolution { weight: w.clone(), bias: Some(vec![1.5, -2.0]) });
        assert_eq!(data[2], LayerData::PRelu { slope: vec![0.25, 0.5] });

        let mut bin32 = 0u32.to_le_bytes().to_vec();
        bin32.extend(w.iter().flat_map(|v| v.to_le_bytes()));
        bin32.extend([1.5f32, -2.0, 0.25, 0.5].iter().flat_map(|v| v.to_le_bytes()));
        assert_eq!(read_bin(&p, &bin32).unwrap(), data);
    }

    #[test]
    fn rejects_quantised_truncated_and_oversized_bins() {
        let p = Param::parse(TINY).unwrap();
        let mut int8 = TAG_INT8.to_le_bytes().to_vec();
        int8.extend(vec![0u8; 54 + 16]);
        assert!(read_bin(&p, &int8).unwrap_err().to_string().contains("int8"));
        let mut short = TAG_FP16.to_le_bytes().to_vec();
        short.extend(vec![0u8; 10]);
        assert!(read_bin(&p, &short).unwrap_err().to_string().contains("truncated"));
        let mut long = TAG_FP16.to_le_bytes().to_vec();
        long.extend(vec![0u8; 108 + 16 + 4]);
        assert!(read_bin(&p, &long).unwrap_err().to_string().contains("left over"));
    }

    #[test]
    fn rejects_unknown_weighted_layers() {
        let p = Param::parse("7767517\n2 2\nInput in 0 1 data\nBatchNorm bn 1 1 data out 0=4\n").unwrap();
        let e = read_bin(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("BatchNorm") && e.contains("not supported"), "{e}");
    }
}
