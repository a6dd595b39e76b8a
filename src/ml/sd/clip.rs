//! The CLIP text encoder (transformers `CLIPTextModel`, `last_hidden_state`), configured from
//! `text_encoder/config.json`.
//!
//! candle-transformers' CLIP has private config fields and uses the tanh GELU for `"gelu"`; the
//! SD-2 / x4 text tower (OpenCLIP ViT-H, 23 layers) uses the exact erf GELU, so this is our own
//! small implementation with the same weight names (`text_model.…`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

/// The fields of `text_encoder/config.json` the model needs.
#[derive(serde::Deserialize, Clone, Debug)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Clone, Copy, Debug)]
enum Act {
    GeluErf,
    GeluTanh,
    QuickGelu,
}

impl Act {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "gelu" => Ok(Act::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Act::GeluTanh),
            "quick_gelu" => Ok(Act::QuickGelu),
            other => candle_core::bail!("unsupported CLIP hidden_act {other:?}"),
        }
    }
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::GeluErf => x.gelu_erf(),
            Act::GeluTanh => x.gelu(),
            Act::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        }
    }
}

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Act,
}

impl Layer {
    fn new(cfg: &ClipTextConfig, act: Act, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let a = vb.pp("self_attn");
        Ok(Self {
            ln1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            q: linear(h, h, a.pp("q_proj"))?,
            k: linear(h, h, a.pp("k_proj"))?,
            v: linear(h, h, a.pp("v_proj"))?,
            o: linear(h, h, a.pp("out_proj"))?,
            ln2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, cfg.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            heads: cfg.num_attention_heads,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let d = c / self.heads;
        let h = self.ln1.forward(x)?;
        let split = |t: Tensor| t.reshape((b, n, self.heads, d))?.transpose(1, 2)?.contiguous();
        let q = split((self.q.forward(&h)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(&h)?)?;
        let v = split(self.v.forward(&h)?)?;
        let att = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        let x = (x + self.o.forward(&o)?)?;
        let h = self.act.apply(&self.fc1.forward(&self.ln2.forward(&x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// `CLIPTextModel` up to `final_layer_norm`.
pub struct ClipTextModel {
    tok: Embedding,
    pos: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
}

impl ClipTextModel {
    /// `vb` is the root of `text_encoder/model.safetensors`: keys `text_model.…` as published
    /// (transformers 4), or without that prefix (as transformers 5 saves them).
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let act = Act::parse(&cfg.hidden_act)?;
        let vb = if vb.contains_tensor("embeddings.token_embedding.weight") { vb } else { vb.pp("text_model") };
        let e = vb.pp("embeddings");
        let tok = embedding(cfg.vocab_size, cfg.hidden_size, e.pp("token_embedding"))?;
        let pos = e.get((cfg.max_position_embeddings, cfg.hidden_size), "position_embedding.weight")?;
        let layers =
            (0..cfg.num_hidden_layers).map(|i| Layer::new(cfg, act, vb.pp("encoder.layers").pp(i))).collect::<Result<_>>()?;
        let final_ln = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self { tok, pos, layers, final_ln })
    }

    /// `ids`: (B, N) u32 → `last_hidden_state` (B, N, hidden).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        let x = self.tok.forward(ids)?.broadcast_add(&self.pos.narrow(0, 0, n)?)?;
        let mask = causal_mask(n, x.dtype(), x.device())?;
        let mut x = x;
        for l in &self.layers {
            x = l.forward(&x, &mask)?;
        }
        self.final_ln.forward(&x)
    }
}

fn causal_mask(n: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..n).flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(m, (1, 1, n, n), dev)?.to_dtype(dtype)
}
