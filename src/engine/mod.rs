//! The engine interface: a model that upscales batches of same-shaped RGB tiles.
//!
//! This module owns the contract every upscaler implements (`Engine`), the pixel type that crosses
//! it (`Tile`), the per-request knobs (`GenParams`) and the context a forward pass can consult
//! (`RunContext`: cancellation and progress). It does not own decoding, tiling of whole images,
//! batching across requests or encoding; those are `imaging`, `engine::tiling` and
//! `engine::batcher`.
//!
//! # Contract
//! - Input tiles are planar (CHW) `f32` RGB in `[0, 1]`, sRGB-encoded (no linearisation), all of the
//!   same width and height within one call.
//! - Output tiles are `scale()` times larger on each side, same layout and range (values may stray
//!   slightly outside `[0, 1]`; the caller clamps).
//! - `params[i]` belongs to `tiles[i]`: one forward pass may carry tiles of several requests.
//! - Engines are `Send + Sync` and are called from one dedicated worker thread at a time per
//!   engine (never from the async reactor).

use std::fmt;

pub mod batcher;
pub mod lanczos;
pub mod registry;
pub mod tiling;

/// An engine's identity, as shown in `X-Upres-Model` and hashed into result keys.
///
/// `weights` is a short hex digest of the weight file(s) so a new model never serves stale pixels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EngineId {
    /// The model's name, e.g. `realesrgan-x4plus` or `lanczos`.
    pub name: String,
    /// Short hex digest of the weights (16 hex chars of blake3), or a code version for classical
    /// engines.
    pub weights: String,
}

impl EngineId {
    pub fn new(name: impl Into<String>, weights: impl Into<String>) -> Self {
        Self { name: name.into(), weights: weights.into() }
    }

    /// Hashes weight bytes into the short digest used in ids.
    pub fn digest(bytes: &[u8]) -> String {
        hex::encode(&blake3::hash(bytes).as_bytes()[..8])
    }
}

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.weights)
    }
}

/// A planar RGB image region: `data.len() == 3 * width * height`, channel-major (R plane, G, B).
#[derive(Clone, Debug, PartialEq)]
pub struct Tile {
    pub width: u32,
    pub height: u32,
    pub data: Vec<f32>,
}

impl Tile {
    pub fn new(width: u32, height: u32, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), 3 * width as usize * height as usize, "tile data does not match its size");
        Self { width, height, data }
    }

    pub fn zeros(width: u32, height: u32) -> Self {
        Self::new(width, height, vec![0.0; 3 * width as usize * height as usize])
    }

    /// Number of pixels in one plane.
    pub fn plane_len(&self) -> usize {
        self.width as usize * self.height as usize
    }

    pub fn shape(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}

/// Per-request generation parameters. Classical and GAN engines ignore them; sd-x4 uses all.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub prompt: String,
    pub negative_prompt: String,
    /// Low-res noise augmentation level, 0..=350.
    pub noise_level: u32,
    /// Denoising steps, 1..=200.
    pub steps: u32,
    /// Classifier-free guidance scale, 0..=30.
    pub guidance: f32,
    pub seed: u64,
    /// The denoising scheduler.
    pub scheduler: SchedulerKind,
}

/// The sd-x4 denoising scheduler: DDIM (diffusers' default for the x4 upscaler) or DPM-Solver++
/// (multistep, order 2), which reaches the same picture in fewer steps and is upres's default
/// (docs/sd-x4.md: DPM-8 is within 44 dB of DDIM-30, DDIM needs 20 steps for that).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    Ddim,
    #[default]
    Dpm,
}

impl SchedulerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Dpm => "dpm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ddim" => Some(Self::Ddim),
            "dpm" => Some(Self::Dpm),
            _ => None,
        }
    }
}

/// Default denoising steps (REST API and `[sd] url_default_steps`): DPM-Solver++ with 8 steps is
/// within 44 dB PSNR of DDIM-30's picture on every measured seed (docs/benchmarks.md).
pub const DEFAULT_STEPS: u32 = 8;

impl Default for GenParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            noise_level: 20,
            steps: DEFAULT_STEPS,
            guidance: 9.0,
            seed: 0,
            scheduler: SchedulerKind::Dpm,
        }
    }
}

/// Work progress of one forward pass, reported to whoever waits (e.g. a progress stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u32,
    pub total: u32,
}

/// What a forward pass may ask of its callers while it runs.
pub trait RunContext {
    /// True when every request in this batch has been abandoned: stop early with
    /// `InferError::Cancelled`.
    fn cancelled(&self) -> bool;
    /// Report progress (e.g. denoising step `done` of `total`).
    fn progress(&self, progress: Progress);
}

/// A context that is never cancelled and drops progress; for offline use and tests.
pub struct Unattended;

impl RunContext for Unattended {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&self, _: Progress) {}
}

/// How an engine wants images cut before they reach it, in input pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Edge of the squares an image over `max_pixels` is cut into.
    pub tile: u32,
    /// Overlap between neighbouring tiles, blended when stitching.
    pub overlap: u32,
    /// An image of at most this many pixels is one tile (one pass over the whole image, any
    /// aspect); one pass never holds more (a batch of squares included). From the engine's
    /// activation budget (`ml.activation_budget`).
    pub max_pixels: u64,
}

impl Tiling {
    /// Squares of `tile` with `overlap`; only images within one square run whole.
    pub fn squares(tile: u32, overlap: u32) -> Tiling {
        Tiling { tile, overlap, max_pixels: tile as u64 * tile as u64 }
    }

    /// Tiles of `shape` one pass may hold: squares batch up to `max_batch`; a whole image
    /// larger than a square shares its pass only within `max_pixels`.
    pub fn batch_limit(&self, shape: (u32, u32), max_batch: usize) -> usize {
        let pixels = (shape.0 as u64 * shape.1 as u64).max(1);
        if pixels <= self.tile as u64 * self.tile as u64 {
            return max_batch.max(1);
        }
        ((self.max_pixels / pixels) as usize).clamp(1, max_batch.max(1))
    }
}

/// Why a forward pass failed.
#[derive(thiserror::Error, Debug, Clone)]
pub enum InferError {
    #[error("inference was cancelled: nobody is waiting for the result")]
    Cancelled,
    #[error("model error: {0}")]
    Model(String),
    #[error("invalid engine input: {0}")]
    Input(String),
}

impl From<candle_core::Error> for InferError {
    fn from(e: candle_core::Error) -> Self {
        InferError::Model(e.to_string())
    }
}

/// An upscaler. See the module docs for the tile contract.
pub trait Engine: Send + Sync + 'static {
    /// Identity including the weights digest.
    fn id(&self) -> &EngineId;

    /// Output edge = input edge × scale.
    fn scale(&self) -> u32;

    /// How to cut images for this engine; `None` sends whole images as single tiles.
    fn tiling(&self) -> Option<Tiling>;

    /// Jobs may share a forward pass only when their tiles have the same shape and this value is
    /// equal (e.g. sd-x4 returns the step count; GAN engines return 0).
    fn batch_class(&self, _params: &GenParams) -> u64 {
        0
    }

    /// Where the forward passes run (`cpu`, `cuda:0`), for `/api/v1/model-info`.
    fn device(&self) -> String {
        "cpu".into()
    }

    /// True for engines that read `GenParams` (sd-x4); the others ignore them, so they are left
    /// out of result keys.
    fn prompt_guided(&self) -> bool {
        false
    }

    /// How many worker threads should feed this engine. Engines that parallelise internally
    /// (candle) want 1; single-threaded classical filters want one per core.
    fn workers(&self) -> usize {
        1
    }

    /// Upscale one batch: every tile has the same shape; `params[i]` belongs to `tiles[i]`.
    fn upscale(
        &self,
        tiles: &[Tile],
        params: &[GenParams],
        ctx: &dyn RunContext,
    ) -> Result<Vec<Tile>, InferError>;

    /// Called by a batch worker when its queue has drained, before it waits for work: an
    /// engine that keeps scratch memory between batches of a burst frees it here.
    fn idle(&self) {}

    /// One small inference so `/readyz` reports ready only once kernels and weights are hot.
    /// Side of a square tile the server times once at warm-up (the first-hit budget's speed
    /// estimate; never the model choice). `None`: never timed.
    fn speed_probe_side(&self) -> Option<u32> {
        None
    }

    fn warm_up(&self) -> Result<(), InferError> {
        let tile = Tile::new(8, 8, vec![0.5; 3 * 64]);
        let out = self.upscale(&[tile], &[GenParams::default()], &Unattended)?;
        let s = self.scale();
        match out.first() {
            Some(t) if t.shape() == (8 * s, 8 * s) => Ok(()),
            _ => Err(InferError::Model("warm-up produced a wrong shape".into())),
        }
    }
}
