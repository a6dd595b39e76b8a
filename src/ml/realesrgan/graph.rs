//! Checking an ncnn layer graph against the network we build, while taking its weights.
//!
//! [`Graph::resolve`] turns a parsed `.param` into a list of [`Node`]s: every computing layer with
//! its operation and its inputs resolved through `Split` layers to the node (or the network input)
//! that produces them. A model is then built by walking its architecture with a [`Builder`]: each
//! step says which operation it expects next and from which inputs; the builder compares that with
//! the next node of the file and hands out that node's weights, so the model and the file either
//! agree layer by layer or loading fails with the first difference.

use std::collections::HashMap;
use std::fmt;

use super::error::ModelError;
use crate::ml::ncnn::{Layer, LayerData, Param};

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// 3×3-style same-padded, stride-1 convolution, optionally with a fused activation.
    Conv { cin: usize, cout: usize, k: usize, bias: bool, act: Fused },
    /// Per-channel PReLU.
    PRelu { channels: usize },
    /// Channel concatenation (inputs in order).
    Concat,
    /// Weighted sum `Σ coeffs[i] · input[i]`.
    WeightedSum { coeffs: Vec<f32> },
    /// Plain elementwise sum of two inputs (commutative).
    Add,
    /// Nearest-neighbour upsampling by an integer factor.
    Nearest { factor: f32 },
    /// Bicubic resize (ncnn's: A = -0.75, half-pixel centres, edge replicate) by a factor.
    Bicubic { factor: f32 },
    /// Depth-to-space with ncnn/PyTorch channel order.
    PixelShuffle { factor: usize },
    /// A `MemoryData` constant of `len` values (no inputs).
    Constant { len: usize },
    /// `a - b`, `b` broadcast per channel when it is a constant.
    Sub,
    /// Elementwise product of two inputs.
    Mul,
    /// `x - s` for a scalar `s`.
    SubScalar(f32),
    /// `x · s` for a scalar `s`.
    MulScalar(f32),
    /// `x · sigmoid(x)`.
    Swish,
    Sigmoid,
    /// Unpadded ("valid") convolution with a stride (Real-CUGAN's 3×3 and 2×2 stride-2 convs).
    ConvValid { cin: usize, cout: usize, k: usize, stride: usize, act: Fused },
    /// Transposed convolution (bias always), PyTorch's `ConvTranspose2d(k, stride, pad)`.
    Deconv { cin: usize, cout: usize, k: usize, stride: usize, pad: usize, act: Fused },
    /// Mean over all pixels of each channel (ncnn's global average Pooling).
    GlobalAvgPool,
    /// Fully connected layer with bias on a per-channel vector.
    Dense { cin: usize, cout: usize, act: DenseAct },
    /// Cuts `border` pixels off every side of the height and width.
    Crop { border: usize },
}

/// The activation of an InnerProduct layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DenseAct {
    Relu,
    Sigmoid,
}

/// An activation fused into a Convolution layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fused {
    None,
    LeakyRelu(f32),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Conv { cin, cout, k, bias, act } => {
                write!(f, "conv {cin}→{cout} {k}×{k}{}", if *bias { " +bias" } else { "" })?;
                match act {
                    Fused::None => Ok(()),
                    Fused::LeakyRelu(s) => write!(f, " leaky({s})"),
                }
            }
            Op::PRelu { channels } => write!(f, "prelu({channels})"),
            Op::Concat => write!(f, "concat"),
            Op::WeightedSum { coeffs } => write!(f, "sum{coeffs:?}"),
            Op::Add => write!(f, "add"),
            Op::Nearest { factor } => write!(f, "nearest×{factor}"),
            Op::Bicubic { factor } => write!(f, "bicubic×{factor}"),
            Op::PixelShuffle { factor } => write!(f, "pixelshuffle({factor})"),
            Op::Constant { len } => write!(f, "constant[{len}]"),
            Op::Sub => write!(f, "sub"),
            Op::Mul => write!(f, "mul"),
            Op::SubScalar(s) => write!(f, "sub {s}"),
            Op::MulScalar(s) => write!(f, "mul {s}"),
            Op::Swish => write!(f, "swish"),
            Op::Sigmoid => write!(f, "sigmoid"),
            Op::ConvValid { cin, cout, k, stride, act } => write!(f, "valid conv {cin}→{cout} {k}×{k}/{stride} {act:?}"),
            Op::Deconv { cin, cout, k, stride, pad, act } => write!(f, "deconv {cin}→{cout} {k}×{k}/{stride} pad {pad} {act:?}"),
            Op::GlobalAvgPool => write!(f, "global average"),
            Op::Dense { cin, cout, act } => write!(f, "dense {cin}→{cout} {act:?}"),
            Op::Crop { border } => write!(f, "crop {border}"),
        }
    }
}

/// Where a node's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    Input,
    Node(usize),
}

impl fmt::Display for Src {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Src::Input => write!(f, "input"),
            Src::Node(i) => write!(f, "#{i}"),
        }
    }
}

/// One computing layer of the file.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<Src>,
    pub layer: String,
    pub line: usize,
    pub data: LayerData,
}

/// The computing layers of a model file, in file order.
#[derive(Debug)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// The node whose output blob is named `output`.
    pub output: Src,
}

/// The input and output blob names Real-ESRGAN's ncnn exports use.
const INPUT_BLOB: &str = "data";
const OUTPUT_BLOB: &str = "output";

impl Graph {
    /// Resolves `Split`s and `Input`, and turns each remaining layer into an [`Op`].
    pub fn resolve(param: &Param, data: Vec<LayerData>) -> Result<Graph, ModelError> {
        Self::resolve_named(param, data, INPUT_BLOB, OUTPUT_BLOB)
    }

    /// [`Graph::resolve`] for a file whose input and output blobs have other names
    /// (Real-CUGAN's `in0`/`out0`).
    pub fn resolve_named(param: &Param, data: Vec<LayerData>, input_blob: &str, output_blob: &str) -> Result<Graph, ModelError> {
        let mut blobs: HashMap<&str, Src> = HashMap::new();
        let mut nodes = Vec::new();
        for (layer, data) in param.layers.iter().zip(data) {
            let at = |r: String| ModelError::Graph(format!("line {} layer `{}` ({}): {r}", layer.line, layer.name, layer.kind));
            let inputs = layer
                .inputs
                .iter()
                .map(|b| blobs.get(b.as_str()).copied().ok_or_else(|| at(format!("input blob `{b}` is never produced"))))
                .collect::<Result<Vec<Src>, ModelError>>()?;
            let src = match layer.kind.as_str() {
                "Input" => {
                    if layer.outputs.len() != 1 || layer.outputs[0] != input_blob {
                        return Err(at(format!("the input blob must be `{input_blob}`")));
                    }
                    Src::Input
                }
                "Split" => match inputs[..] {
                    [s] => s,
                    _ => return Err(at("Split needs exactly one input".into())),
                },
                _ => {
                    let op = op_of(layer).map_err(at)?;
                    if layer.outputs.len() != 1 {
                        return Err(at("expected exactly one output blob".into()));
                    }
                    nodes.push(Node { op, inputs, layer: layer.name.clone(), line: layer.line, data });
                    Src::Node(nodes.len() - 1)
                }
            };
            for b in &layer.outputs {
                blobs.insert(b.as_str(), src);
            }
        }
        let output = *blobs.get(output_blob).ok_or_else(|| ModelError::Graph(format!("no blob is named `{output_blob}`")))?;
        Ok(Graph { nodes, output })
    }
}

fn op_of(l: &Layer) -> Result<Op, String> {
    let unsupported = |what: String| Err(format!("{what} is not supported"));
    match l.kind.as_str() {
        "Convolution" => {
            let cout = l.int(0, 0)? as usize;
            let kw = l.int(1, 0)?;
            let kh = l.int(11, kw)?;
            let dil = (l.int(2, 1)?, l.int(12, l.int(2, 1)?)?);
            let stride = (l.int(3, 1)?, l.int(13, l.int(3, 1)?)?);
            let pad_l = l.int(4, 0)?;
            let pads = [pad_l, l.int(14, pad_l)?, l.int(15, pad_l)?, l.int(16, l.int(14, pad_l)?)?];
            let size = l.int(6, 0)? as usize;
            if kw != kh || kw <= 0 {
                return unsupported(format!("kernel {kw}×{kh}"));
            }
            if dil != (1, 1) || stride.0 != stride.1 || stride.0 < 1 {
                return unsupported(format!("dilation {dil:?} / stride {stride:?}"));
            }
            if l.int(8, 0)? != 0 {
                return unsupported("int8 scale term".into());
            }
            let k = kw as usize;
            if cout == 0 || !size.is_multiple_of(cout * k * k) {
                return Err(format!("weight_data_size {size} is not a multiple of {cout}×{k}×{k}"));
            }
            let act = fused_act(l)?;
            let cin = size / (cout * k * k);
            let same = kw % 2 == 1 && stride == (1, 1) && pads.iter().all(|&p| p == kw / 2);
            if same {
                Ok(Op::Conv { cin, cout, k, bias: l.int(5, 0)? != 0, act })
            } else if pads.iter().all(|&p| p == 0) && l.int(5, 0)? != 0 {
                Ok(Op::ConvValid { cin, cout, k, stride: stride.0 as usize, act })
            } else {
                unsupported(format!("padding {pads:?} for a {kw}×{kw} kernel (only same padding, or none with a bias)"))
            }
        }
        "Deconvolution" => {
            let cout = l.int(0, 0)? as usize;
            let kw = l.int(1, 0)?;
            let dil = (l.int(2, 1)?, l.int(12, l.int(2, 1)?)?);
            let stride = (l.int(3, 1)?, l.int(13, l.int(3, 1)?)?);
            let pad_l = l.int(4, 0)?;
            let pads = [pad_l, l.int(14, pad_l)?, l.int(15, pad_l)?, l.int(16, l.int(14, pad_l)?)?];
            let out_pad = (l.int(18, 0)?, l.int(19, l.int(18, 0)?)?, l.int(20, 0)?, l.int(21, 0)?);
            let size = l.int(6, 0)? as usize;
            if kw <= 0 || l.int(11, kw)? != kw || dil != (1, 1) || stride.0 != stride.1 || stride.0 < 1 {
                return unsupported(format!("deconvolution kernel {kw} / dilation {dil:?} / stride {stride:?}"));
            }
            if pads.iter().any(|&p| p != pad_l || p < 0) || out_pad != (0, 0, 0, 0) || l.int(5, 0)? == 0 {
                return unsupported(format!("deconvolution padding {pads:?} / output padding {out_pad:?} / no bias"));
            }
            let k = kw as usize;
            if cout == 0 || !size.is_multiple_of(cout * k * k) {
                return Err(format!("weight_data_size {size} is not a multiple of {cout}×{k}×{k}"));
            }
            let (stride, pad) = (stride.0 as usize, pad_l as usize);
            Ok(Op::Deconv { cin: size / (cout * k * k), cout, k, stride, pad, act: fused_act(l)? })
        }
        "Pooling" => match (l.int(0, 0)?, l.int(4, 0)?) {
            (1, 1) => Ok(Op::GlobalAvgPool),
            (t, g) => unsupported(format!("Pooling type {t} global {g} (only global average is)")),
        },
        "InnerProduct" => {
            let cout = l.int(0, 0)? as usize;
            let size = l.int(2, 0)? as usize;
            if cout == 0 || !size.is_multiple_of(cout) || l.int(1, 0)? == 0 {
                return unsupported(format!("InnerProduct of {cout} outputs, {size} weights, without bias"));
            }
            let act = match l.int(9, 0)? {
                1 => DenseAct::Relu,
                4 => DenseAct::Sigmoid,
                a => return unsupported(format!("InnerProduct activation {a} (only ReLU and sigmoid are)")),
            };
            Ok(Op::Dense { cin: size / cout, cout, act })
        }
        "Crop" => {
            // Real-CUGAN's crops: `starts` (9), `ends` (10, negative: from the end), `axes` (11)
            // naming the height and width, the same border on all four sides.
            let (starts, ends, axes) = (l.array(9)?, l.array(10)?, l.array(11)?);
            let hw = axes == [-2.0, -1.0] || axes == [1.0, 2.0];
            match (starts.as_slice(), ends.as_slice()) {
                ([a, b], [c, d]) if hw && a == b && *c == -a && *d == -a && *a >= 0.0 && a.fract() == 0.0 => {
                    Ok(Op::Crop { border: *a as usize })
                }
                _ => unsupported(format!("Crop starts {starts:?} ends {ends:?} axes {axes:?} (only one border on height and width is)")),
            }
        }
        "PReLU" => Ok(Op::PRelu { channels: l.int(0, 0)? as usize }),
        "Concat" => match l.int(0, 0)? {
            0 => Ok(Op::Concat),
            a => unsupported(format!("concat along axis {a}")),
        },
        "Eltwise" => match l.int(0, 1)? {
            1 => {
                let mut coeffs = l.array(1)?;
                if coeffs.is_empty() {
                    coeffs = vec![1.0; l.inputs.len()];
                }
                if coeffs.len() != l.inputs.len() {
                    return Err(format!("{} coefficients for {} inputs", coeffs.len(), l.inputs.len()));
                }
                Ok(Op::WeightedSum { coeffs })
            }
            t => unsupported(format!("Eltwise operation {t} (only sum is)")),
        },
        "BinaryOp" => match (l.int(0, 0)?, l.int(1, 0)?, l.inputs.len()) {
            (0, 0, 2) => Ok(Op::Add),
            (1, 0, 2) => Ok(Op::Sub),
            (2, 0, 2) => Ok(Op::Mul),
            (1, 1, 1) => Ok(Op::SubScalar(l.float(2, 0.0)?)),
            (2, 1, 1) => Ok(Op::MulScalar(l.float(2, 0.0)?)),
            (t, s, n) => unsupported(format!("BinaryOp type {t} with_scalar {s} on {n} inputs (only add, sub, mul are)")),
        },
        "MemoryData" => match (l.int(0, 0)?, l.int(1, 1)?, l.int(11, 1)?, l.int(2, 1)?) {
            (w, h, d, c) if w > 0 && h > 0 && d > 0 && c > 0 => Ok(Op::Constant { len: (w * h * d * c) as usize }),
            dims => Err(format!("MemoryData shape {dims:?} must be positive")),
        },
        "Swish" => Ok(Op::Swish),
        "Sigmoid" => Ok(Op::Sigmoid),
        "Interp" => {
            let (hs, ws) = (l.float(1, 1.0)?, l.float(2, 1.0)?);
            if hs != ws || l.int(3, 0)? != 0 || l.int(4, 0)? != 0 || l.int(6, 0)? != 0 {
                return unsupported("Interp with a fixed output size, unequal scales or align_corner".into());
            }
            match l.int(0, 0)? {
                1 if hs.fract() == 0.0 && hs >= 1.0 => Ok(Op::Nearest { factor: hs }),
                3 => Ok(Op::Bicubic { factor: hs }),
                t => unsupported(format!("Interp type {t} with scale {hs}")),
            }
        }
        "PixelShuffle" => match (l.int(0, 1)?, l.int(1, 0)?) {
            (r, 0) if r > 0 => Ok(Op::PixelShuffle { factor: r as usize }),
            (r, m) => unsupported(format!("PixelShuffle factor {r} mode {m}")),
        },
        k => unsupported(format!("layer type `{k}`")),
    }
}

/// A Convolution's or Deconvolution's fused activation (`9=`): none, ReLU or LeakyReLU.
fn fused_act(l: &Layer) -> Result<Fused, String> {
    match l.int(9, 0)? {
        0 => Ok(Fused::None),
        2 => Ok(Fused::LeakyRelu(l.array(10)?.first().copied().unwrap_or(0.0))),
        1 => Ok(Fused::LeakyRelu(0.0)),
        a => Err(format!("fused activation type {a} is not supported")),
    }
}

/// Walks a [`Graph`] in step with an architecture; see the module docs.
pub struct Builder {
    graph: Graph,
    next: usize,
}

impl Builder {
    pub fn new(graph: Graph) -> Self {
        Self { graph, next: 0 }
    }

    /// The operation of the next node, if any (for optional layers, e.g. SPAN's input scale).
    pub fn peek(&self) -> Option<&Op> {
        self.graph.nodes.get(self.next).map(|n| &n.op)
    }

    /// Expects the next node to compute `op` from `inputs`; returns it (with its weights).
    pub fn expect(&mut self, op: Op, inputs: &[Src]) -> Result<(Src, LayerData), ModelError> {
        let i = self.next;
        let Some(node) = self.graph.nodes.get_mut(i) else {
            return Err(ModelError::Graph(format!("the file ends after {i} computing layers; the network expects {op} next")));
        };
        let inputs_match = node.inputs == inputs
            || (op == Op::Add && inputs.len() == 2 && node.inputs == [inputs[1], inputs[0]]);
        if node.op != op || !inputs_match {
            return Err(ModelError::Graph(format!(
                "line {} layer `{}`: expected #{i} = {op} of {}, found {} of {}",
                node.line,
                node.layer,
                list(inputs),
                node.op,
                list(&node.inputs)
            )));
        }
        self.next += 1;
        Ok((Src::Node(i), std::mem::replace(&mut node.data, LayerData::None)))
    }

    /// Checks that every node was used and that `out` is the blob named `output`.
    pub fn finish(self, out: Src) -> Result<(), ModelError> {
        if self.next != self.graph.nodes.len() {
            let n = &self.graph.nodes[self.next];
            return Err(ModelError::Graph(format!(
                "line {} layer `{}`: the network is complete but the file has {} more layers",
                n.line,
                n.layer,
                self.graph.nodes.len() - self.next
            )));
        }
        if out != self.graph.output {
            return Err(ModelError::Graph(format!("the file's `output` blob is {}, the network's output is {out}", self.graph.output)));
        }
        Ok(())
    }
}

fn list(srcs: &[Src]) -> String {
    let s: Vec<String> = srcs.iter().map(Src::to_string).collect();
    format!("[{}]", s.join(", "))
}
