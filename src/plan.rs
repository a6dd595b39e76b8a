//! Resolving a `TransformSpec` against the source header, the request and the config: which
//! engine (if any), what sizes, which output format and quality. Only a `Plan` reaches the
//! engine.
//!
//! The output decides what runs. Its size is `source × scale` without a box (no scale: the
//! source's size), else the `w`×`h` box (× `dpr`) by `fit` (`inside` never exceeds
//! `source × scale`, no scale: the source). A model runs only when the output needs more pixels
//! than the part of the source it shows has, on either axis, and then at the smallest loaded
//! scale that covers the need; Lanczos does the rest (down into the box, or up beyond the
//! largest model scale to `limits.max_upscale`). Otherwise it is a plain resize (or a
//! re-encode). Every limit is checked here, before any pixel is decoded, and only on sizes that
//! are really made.

use std::sync::Arc;

use crate::config::{Config, Content};
use crate::engine::registry::{with_denoise, ModelError, Registry};
use crate::engine::{Engine, GenParams, SchedulerKind};
use crate::error::{Classify, ErrorClass};
use crate::engine::Tile;
use crate::imaging::attention;
use crate::imaging::decode::Header;
use crate::imaging::encode::{Encoding, OutputFormat};
use crate::imaging::metadata::Keep;
use crate::imaging::resize::Crop;
use crate::imaging::resize_only::{self, Target};
use crate::params::{Fit, Format, Gravity, ModelChoice, TransformSpec};
use crate::quality::Role;

/// The output format after `Accept` negotiation, as far as it is known before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Explicit(OutputFormat),
    /// `format=auto` and the client accepts AVIF (and `output.auto_avif` is on).
    AutoAvif,
    /// `format=auto` and the client accepts WebP (but not AVIF, or AVIF is left out of `auto`).
    AutoWebp,
    /// `format=auto` and the client accepts neither: JPEG, or PNG for alpha.
    AutoLegacy,
}

impl Variant {
    /// `auto` prefers AVIF (when `auto_avif`), then WebP, then JPEG/PNG.
    pub fn negotiate(format: Format, accept: Option<&str>, auto_avif: bool) -> Variant {
        let accept = accept.unwrap_or("");
        match format {
            Format::Avif => Variant::Explicit(OutputFormat::Avif),
            Format::Webp => Variant::Explicit(OutputFormat::Webp),
            Format::Jpeg => Variant::Explicit(OutputFormat::Jpeg),
            Format::Png => Variant::Explicit(OutputFormat::Png),
            Format::Auto if auto_avif && accepts(accept, "image/avif") => Variant::AutoAvif,
            Format::Auto if accepts(accept, "image/webp") => Variant::AutoWebp,
            Format::Auto => Variant::AutoLegacy,
        }
    }

    /// Part of the request key.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Explicit(f) => f.as_str(),
            Variant::AutoAvif => "auto:avif",
            Variant::AutoWebp => "auto:webp",
            Variant::AutoLegacy => "auto:legacy",
        }
    }

    /// Whether the response depends on `Accept` (then it says `Vary: Accept`).
    pub fn varies(self) -> bool {
        !matches!(self, Variant::Explicit(_))
    }

    fn resolve(self, has_alpha: bool) -> OutputFormat {
        match self {
            Variant::Explicit(f) => f,
            Variant::AutoAvif => OutputFormat::Avif,
            Variant::AutoWebp => OutputFormat::Webp,
            Variant::AutoLegacy if has_alpha => OutputFormat::Png,
            Variant::AutoLegacy => OutputFormat::Jpeg,
        }
    }

    /// The format for a `w`×`h` output: a side over the format's limit (WebP: 16383, AVIF:
    /// 16384) is refused for an explicit format, and makes `auto` fall back to JPEG (PNG with
    /// alpha), which holds it. Decided before any work.
    fn resolve_for_size(self, has_alpha: bool, w: u32, h: u32) -> Result<OutputFormat, PlanError> {
        let fits = |f: OutputFormat| w <= f.max_side() && h <= f.max_side();
        let first = self.resolve(has_alpha);
        let fallback = if has_alpha { OutputFormat::Png } else { OutputFormat::Jpeg };
        match self {
            _ if fits(first) => Ok(first),
            Variant::Explicit(_) => Err(PlanError::FormatSideLimit { format: first.as_str(), max: first.max_side(), width: w, height: h }),
            _ if fits(fallback) => Ok(fallback),
            _ if fits(OutputFormat::Png) => Ok(OutputFormat::Png),
            _ => Err(PlanError::FormatSideLimit { format: first.as_str(), max: first.max_side(), width: w, height: h }),
        }
    }
}

/// `media` listed with a non-zero q. A bare `*/*` or `image/*` does not count: old browsers
/// send them.
fn accepts(accept: &str, media: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let listed = parts.next().unwrap_or("");
        listed.eq_ignore_ascii_case(media)
            && parts.all(|p| match p.strip_prefix("q=") {
                Some(q) => q.parse::<f32>().map(|q| q > 0.0).unwrap_or(false),
                None => true,
            })
    })
}

/// Where the request's REST or URL defaults come from (steps differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Url,
    Api,
}

/// Everything the compute path needs.
#[derive(Clone)]
pub struct Plan {
    /// The model that runs; `None` when the source has every pixel the output needs.
    pub engine: Option<Arc<dyn Engine>>,
    /// The source's header (format, oriented size, alpha, orientation).
    pub source: Header,
    pub src_w: u32,
    pub src_h: u32,
    /// Size of the engine's output (the source's size when no engine runs).
    pub engine_w: u32,
    pub engine_h: u32,
    /// Final output size.
    pub out_w: u32,
    pub out_h: u32,
    /// Source rectangle of the final resize, as fractions of the engine output (for `cover`).
    pub crop: Option<(f64, f64, f64, f64)>,
    /// `gravity=smart`: the crop's size is planned, its place is chosen from the decoded pixels
    /// (`place_smart_crop`); until then it is centred.
    pub smart: bool,
    pub format: OutputFormat,
    pub quality: u8,
    /// rav1e's speed preset (`output.avif_speed`); it changes AVIF bytes only.
    pub avif_speed: u8,
    /// `output.keep_wide_gamut` / `keep_copyright` (no profile for AVIF: it is tagged `nclx`).
    pub keep: Keep,
    pub gen: GenParams,
    /// `canary` when `[ml.canary]` put its model in place of `auto`'s pick (metrics by role).
    pub role: Role,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("engine", &self.model())
            .field("src", &(self.src_w, self.src_h))
            .field("out", &(self.out_w, self.out_h))
            .field("format", &self.format)
            .finish()
    }
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum PlanError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the output would be {width}x{height} = {pixels} pixels, over the limit of {limit}")]
    OutputTooLarge { width: u64, height: u64, pixels: u64, limit: u64 },
    #[error("{model} accepts inputs up to {max} pixels per side; this one is {width}x{height}")]
    InputTooLarge { model: String, max: u32, width: u32, height: u32 },
    #[error("the output would enlarge the source {factor:.2}x, over the limit of {limit}x")]
    UpscaleTooLarge { factor: f64, limit: f64 },
    #[error("{format} output is limited to {max} pixels per side; the result would be {width}x{height}")]
    FormatSideLimit { format: &'static str, max: u32, width: u32, height: u32 },
}

impl Classify for PlanError {
    fn class(&self) -> ErrorClass {
        match self {
            PlanError::Model(e) => e.class(),
            PlanError::OutputTooLarge { .. }
            | PlanError::InputTooLarge { .. }
            | PlanError::UpscaleTooLarge { .. }
            | PlanError::FormatSideLimit { .. } => ErrorClass::TooLarge,
        }
    }
}

impl Plan {
    pub fn resolve(
        spec: &TransformSpec,
        variant: Variant,
        header: &Header,
        registry: &Registry,
        cfg: &Config,
        caller: Caller,
    ) -> Result<Plan, PlanError> {
        Plan::resolve_with_content(spec, variant, header, None, registry, cfg, caller)
    }

    /// As `resolve`, with the source's content kind (`imaging::content`) for `model=auto` rules
    /// that name one; `None`: such rules are skipped.
    pub fn resolve_with_content(
        spec: &TransformSpec,
        variant: Variant,
        header: &Header,
        content: Option<Content>,
        registry: &Registry,
        cfg: &Config,
        caller: Caller,
    ) -> Result<Plan, PlanError> {
        let has_prompt = spec.prompt.as_deref().is_some_and(|p| !p.trim().is_empty());
        let (src_w, src_h) = (header.width, header.height);
        let limit = cfg.limits.max_output_pixels;
        let check = |w: u64, h: u64| {
            let pixels = w.saturating_mul(h);
            if pixels > limit {
                Err(PlanError::OutputTooLarge { width: w, height: h, pixels, limit })
            } else {
                Ok(())
            }
        };
        let dpr = spec.dpr.unwrap_or(1.0) as f64;
        let bw = spec.width.map(|w| (w as f64 * dpr).round().max(1.0));
        let bh = spec.height.map(|h| (h as f64 * dpr).round().max(1.0));
        check(bw.unwrap_or(0.0) as u64, bh.unwrap_or(0.0) as u64)?;
        let geometry = Geometry::of(spec, bw, bh, src_w, src_h);
        let (out_w, out_h) = (geometry.out_w, geometry.out_h);
        check(out_w as u64, out_h as u64)?;
        let factor = geometry.enlargement(src_w, src_h);
        if factor > cfg.limits.max_upscale + 1e-9 {
            return Err(PlanError::UpscaleTooLarge { factor, limit: cfg.limits.max_upscale });
        }
        // A named model is checked even when none runs, so a typo is a 400 on every URL.
        let model = with_denoise(&spec.model, spec.denoise)?;
        if let ModelChoice::Named(_) = model {
            registry.resolve(&model, 1, has_prompt)?;
        }
        let engine = if geometry.missing_pixels(src_w, src_h) {
            let want = (factor - 1e-9).ceil().max(1.0) as u32;
            let pixels = src_w as u64 * src_h as u64;
            let e = &cfg.engine;
            Some(registry.pick_for(&model, want, has_prompt, pixels, content, &e.auto, e.auto_unavailable)?)
        } else {
            None
        };
        if let Some(engine) = &engine {
            if engine.prompt_guided() && src_w.max(src_h) > cfg.sd.max_input_side {
                return Err(PlanError::InputTooLarge {
                    model: engine.id().name.clone(),
                    max: cfg.sd.max_input_side,
                    width: src_w,
                    height: src_h,
                });
            }
            let es = engine.scale() as u64;
            check(src_w as u64 * es, src_h as u64 * es)?;
        }
        let es = engine.as_ref().map_or(1, |e| e.scale());
        let crop = geometry.crop;
        // A window as large as the image has nowhere to move.
        let smart = spec.gravity == Some(Gravity::Smart) && crop.is_some_and(|(_, _, w, h)| w < 1.0 - 1e-9 || h < 1.0 - 1e-9);
        let format = variant.resolve_for_size(header.has_alpha, out_w, out_h)?;
        let quality = spec.quality.unwrap_or(match format {
            OutputFormat::Avif => cfg.output.avif_quality,
            OutputFormat::Webp => cfg.output.webp_quality,
            OutputFormat::Jpeg => cfg.output.jpeg_quality,
            OutputFormat::Png => 100,
        });
        let defaults = GenParams::default();
        let gen = GenParams {
            prompt: spec.prompt.clone().unwrap_or_default(),
            negative_prompt: spec.negative_prompt.clone().unwrap_or_default(),
            noise_level: spec.noise_level.unwrap_or(defaults.noise_level),
            steps: spec.steps.unwrap_or(match caller {
                Caller::Url => cfg.sd.url_default_steps,
                Caller::Api => defaults.steps,
            }),
            scheduler: spec.scheduler.unwrap_or(match caller {
                Caller::Url => cfg.sd.url_default_scheduler,
                Caller::Api => defaults.scheduler,
            }),
            guidance: spec.guidance.unwrap_or(defaults.guidance),
            seed: spec.seed.unwrap_or(defaults.seed),
        };
        Ok(Plan {
            source: *header,
            src_w,
            src_h,
            engine_w: src_w * es,
            engine_h: src_h * es,
            out_w,
            out_h,
            crop,
            smart,
            format,
            quality,
            avif_speed: cfg.output.avif_speed,
            keep: Keep { profile: cfg.output.keep_wide_gamut && format != OutputFormat::Avif, copyright: cfg.output.keep_copyright },
            gen,
            engine,
            role: Role::Stable,
        })
    }

    /// The same output made by another engine (a canary, a quality-gate fallback): the engine's
    /// output size follows its scale, the output and the canonical form stay; `role` as given.
    /// The engine's output is checked against `limits.max_output_pixels` like any plan's.
    pub fn with_engine(&self, engine: Arc<dyn Engine>, role: Role, cfg: &Config) -> Result<Plan, PlanError> {
        let es = engine.scale();
        let (w, h) = (self.src_w as u64 * es as u64, self.src_h as u64 * es as u64);
        let limit = cfg.limits.max_output_pixels;
        if w.saturating_mul(h) > limit {
            return Err(PlanError::OutputTooLarge { width: w, height: h, pixels: w.saturating_mul(h), limit });
        }
        Ok(Plan { engine_w: self.src_w * es, engine_h: self.src_h * es, engine: Some(engine), role, ..self.clone() })
    }

    /// The engine id that runs, or `resize` when none does (`X-Upres-Model`, result key).
    pub fn model(&self) -> String {
        self.engine.as_ref().map_or_else(|| "resize".to_string(), |e| e.id().to_string())
    }

    /// Whether the engine reads generation parameters.
    fn prompt_guided(&self) -> bool {
        self.engine.as_ref().is_some_and(|e| e.prompt_guided())
    }

    /// The canonical form of what is computed (`model()` is hashed beside it). Generation
    /// parameters count only for engines that read them.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "out={}x{}/format={}/q={}",
            self.out_w,
            self.out_h,
            self.format.as_str(),
            self.quality
        );
        if self.format == OutputFormat::Avif {
            // The chroma sampling is fixed in code, but it changes the bytes: it keys them.
            s.push_str(&format!("/speed={}/yuv={}", self.avif_speed, crate::imaging::avif::CHROMA.name()));
        }
        // Off (the default) adds nothing, so keys stay as they were without the switches.
        if self.keep.profile {
            s.push_str("/icc=keep");
        }
        if self.keep.copyright {
            s.push_str("/meta=copyright");
        }
        match self.crop {
            // The window's place follows from the source bytes, which the result key hashes.
            Some((_, _, w, h)) if self.smart => s.push_str(&format!("/crop=smart,{w:.6},{h:.6}")),
            Some((l, t, w, h)) => s.push_str(&format!("/crop={l:.6},{t:.6},{w:.6},{h:.6}")),
            None => {}
        }
        if self.prompt_guided() {
            let g = &self.gen;
            s.push_str(&format!(
                "/prompt={}/neg={}/noise={}/steps={}/guidance={}/seed={}",
                hex::encode(blake3::hash(g.prompt.as_bytes()).as_bytes()),
                hex::encode(blake3::hash(g.negative_prompt.as_bytes()).as_bytes()),
                g.noise_level,
                g.steps,
                g.guidance,
                g.seed
            ));
            // DDIM keys stay as they were before schedulers could be chosen
            if g.scheduler != SchedulerKind::Ddim {
                s.push_str(&format!("/scheduler={}", g.scheduler.as_str()));
            }
        }
        s
    }

    /// What the encoder is told.
    pub fn encoding(&self) -> Encoding {
        Encoding { format: self.format, quality: self.quality, avif_speed: self.avif_speed, keep: self.keep }
    }

    /// What the resize-only path makes, when no engine runs and the source has no alpha.
    pub fn resize_only(&self) -> Option<Target> {
        (self.engine.is_none() && resize_only::handles(&self.source)).then_some(Target {
            width: self.out_w,
            height: self.out_h,
            crop: self.crop,
            smart: self.smart,
            encoding: self.encoding(),
        })
    }

    /// Moves a smart crop's window to the most interesting place in the decoded source `rgb`
    /// (`imaging::attention`); other plans are unchanged.
    pub fn place_smart_crop(&mut self, rgb: &Tile) {
        if let (true, Some((_, _, w, h))) = (self.smart, self.crop) {
            let (l, t) = attention::best_offset_tile(rgb, w, h);
            self.crop = Some((l, t, w, h));
        }
    }

    /// The source rectangle (x, y, width, height in source pixels) a placed smart crop needs,
    /// with `margin` pixels of context on each side where the source has them; `None` when the
    /// plan has no smart crop or it needs nearly the whole source.
    pub fn smart_region(&self, margin: u32) -> Option<(u32, u32, u32, u32)> {
        let (l, t, w, h) = self.crop.filter(|_| self.smart)?;
        let span = |start: f64, len: f64, size: u32| {
            let lo = ((start * size as f64).floor() as u32).saturating_sub(margin);
            let hi = (((start + len) * size as f64).ceil() as u32).saturating_add(margin).min(size);
            (lo, hi - lo)
        };
        let (x, cw) = span(l, w, self.src_w);
        let (y, ch) = span(t, h, self.src_h);
        ((cw as u64 * ch as u64) * 10 < self.src_w as u64 * self.src_h as u64 * 9).then_some((x, y, cw, ch))
    }

    /// The same plan on the `region` of the source only (`smart_region`): source and engine
    /// sizes shrink to the region, the crop is expressed in it. Outputs are unchanged.
    pub fn narrowed_to(&self, (x, y, w, h): (u32, u32, u32, u32)) -> Plan {
        let es = self.engine.as_ref().map_or(1, |e| e.scale());
        let crop = self.crop.map(|(l, t, cw, ch)| {
            let (sw, sh) = (self.src_w as f64, self.src_h as f64);
            ((l * sw - x as f64) / w as f64, (t * sh - y as f64) / h as f64, cw * sw / w as f64, ch * sh / h as f64)
        });
        Plan { src_w: w, src_h: h, engine_w: w * es, engine_h: h * es, crop, ..self.clone() }
    }

    /// The crop in engine-output pixels.
    pub fn crop_px(&self) -> Option<Crop> {
        self.crop.map(|(l, t, w, h)| Crop {
            left: l * self.engine_w as f64,
            top: t * self.engine_h as f64,
            width: w * self.engine_w as f64,
            height: h * self.engine_h as f64,
        })
    }
}

/// The output's size and which part of the source it shows.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Geometry {
    out_w: u32,
    out_h: u32,
    /// Source rectangle (left, top, width, height) as fractions, for `cover`.
    crop: Option<(f64, f64, f64, f64)>,
}

impl Geometry {
    /// `bw`/`bh`: the box in device pixels, if given.
    fn of(spec: &TransformSpec, bw: Option<f64>, bh: Option<f64>, src_w: u32, src_h: u32) -> Geometry {
        // The size without a box, and the cap of `inside`.
        let scale = spec.scale.unwrap_or(1) as f64;
        let (up_w, up_h) = (src_w as f64 * scale, src_h as f64 * scale);
        let fit = spec.fit.unwrap_or_default();
        let mut crop = None;
        let (w, h) = match (bw, bh) {
            (None, None) => (up_w, up_h),
            (Some(w), None) => cap_inside(fit, w, (up_h * w / up_w).round(), up_w, up_h),
            (None, Some(h)) => cap_inside(fit, (up_w * h / up_h).round(), h, up_w, up_h),
            (Some(w), Some(h)) => match fit {
                Fit::Fill => (w, h),
                Fit::Contain | Fit::Inside => {
                    let s = (w / up_w).min(h / up_h);
                    let s = if fit == Fit::Inside { s.min(1.0) } else { s };
                    ((up_w * s).round(), (up_h * s).round())
                }
                Fit::Cover => {
                    // Scale to cover the box, then take the centred box-shaped region.
                    let s = (w / up_w).max(h / up_h);
                    let (cw, ch) = (w / (up_w * s), h / (up_h * s));
                    let (ax, ay) = spec.gravity.unwrap_or_default().anchor();
                    crop = Some(((1.0 - cw) * ax, (1.0 - ch) * ay, cw, ch));
                    (w, h)
                }
            },
        };
        Geometry { out_w: w.max(1.0) as u32, out_h: h.max(1.0) as u32, crop }
    }

    /// The source pixels the output shows (all of them, or the `cover` crop).
    fn shown(&self, src_w: u32, src_h: u32) -> (f64, f64) {
        let (cw, ch) = self.crop.map_or((1.0, 1.0), |(_, _, w, h)| (w, h));
        (src_w as f64 * cw, src_h as f64 * ch)
    }

    /// Output pixels per shown source pixel on the more enlarged axis.
    fn enlargement(&self, src_w: u32, src_h: u32) -> f64 {
        let (sw, sh) = self.shown(src_w, src_h);
        (self.out_w as f64 / sw).max(self.out_h as f64 / sh)
    }

    /// The output needs more pixels than the source shows on some axis (rounding to whole
    /// pixels does not count).
    fn missing_pixels(&self, src_w: u32, src_h: u32) -> bool {
        let (sw, sh) = self.shown(src_w, src_h);
        self.out_w as f64 > sw.round().max(1.0) || self.out_h as f64 > sh.round().max(1.0)
    }
}

/// With only one of `w`/`h`, `inside` never enlarges past `source × scale`.
fn cap_inside(fit: Fit, w: f64, h: f64, up_w: f64, up_h: f64) -> (f64, f64) {
    if fit == Fit::Inside && w > up_w {
        (up_w, up_h)
    } else {
        (w, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lanczos::Lanczos;
    use crate::engine::registry::ModelEntry;
    use crate::engine::{EngineId, InferError, RunContext, Tile, Tiling};
    use image::metadata::Orientation;
    use image::ImageFormat;

    /// A model that is only planned with, never run.
    struct Fake {
        id: EngineId,
        scale: u32,
    }

    /// A prompt-guided model (like sd-x4) that is only planned with.
    struct FakeSd(EngineId);

    impl Engine for FakeSd {
        fn id(&self) -> &EngineId {
            &self.0
        }
        fn scale(&self) -> u32 {
            4
        }
        fn tiling(&self) -> Option<Tiling> {
            None
        }
        fn prompt_guided(&self) -> bool {
            true
        }
        fn upscale(&self, _: &[Tile], _: &[GenParams], _: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
            Err(InferError::Model("planned only".into()))
        }
    }

    impl Engine for Fake {
        fn id(&self) -> &EngineId {
            &self.id
        }
        fn scale(&self) -> u32 {
            self.scale
        }
        fn tiling(&self) -> Option<Tiling> {
            None
        }
        fn upscale(&self, _: &[Tile], _: &[GenParams], _: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
            Err(InferError::Model("planned only".into()))
        }
    }

    fn lanczos() -> Vec<ModelEntry> {
        [2, 3, 4]
            .into_iter()
            .map(|s| ModelEntry {
                name: "lanczos".into(),
                aliases: vec![],
                rank: 0,
                engine: Arc::new(Lanczos::new(s, 1)),
                description: String::new(),
            })
            .collect()
    }

    /// Lanczos plus the Real-ESRGAN family as `scripts/fetch-models.sh` loads it.
    fn full_registry() -> Registry {
        let fake = |name: &str, alias: &str, rank, scale| ModelEntry {
            name: name.into(),
            aliases: vec![alias.into()],
            rank,
            engine: Arc::new(Fake { id: EngineId::new(format!("{name}-x{scale}"), "0"), scale }),
            description: String::new(),
        };
        let mut entries = lanczos();
        entries.extend([2, 3, 4].map(|s| fake("realesr-animevideov3", "animevideo", 5, s)));
        entries.push(fake("realesrgan-x4plus", "realesrgan", 10, 4));
        entries.push(fake("clearreality4x", "photo", 8, 4));
        Registry::new(entries)
    }

    /// The plan for `path` on a `w`×`h` JPEG that reads as a photo (`imaging::content`).
    fn plan_with(registry: &Registry, path: &str, w: u32, h: u32, accept: &str) -> Result<Plan, PlanError> {
        let t = crate::params::parse(path, &Default::default()).unwrap();
        let header = Header { format: ImageFormat::Jpeg, width: w, height: h, has_alpha: false, orientation: Orientation::NoTransforms };
        let variant = Variant::negotiate(t.spec.format, Some(accept), true);
        Plan::resolve_with_content(&t.spec, variant, &header, Some(Content::Photo), registry, &Config::default(), Caller::Url)
    }

    fn plan(path: &str, w: u32, h: u32) -> Result<Plan, PlanError> {
        plan_with(&Registry::new(lanczos()), path, w, h, "image/webp")
    }

    fn engine_scale(p: &Plan) -> Option<u32> {
        p.engine.as_ref().map(|e| e.scale())
    }

    #[test]
    fn sizes_follow_scale_and_fit_and_the_output_decides_what_runs() {
        let p = plan("/x4/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, p.engine_w, engine_scale(&p)), (400, 200, 400, Some(4)));
        let p = plan("/x2/w=100/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, engine_scale(&p)), (100, 50, None));
        let p = plan("/x2/w=100/h=100/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, engine_scale(&p)), (100, 50, None));
        let p = plan("/x2/w=100/h=100/fit=cover/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, engine_scale(&p)), (100, 100, Some(2)));
        let (l, _, cw, ch) = p.crop.unwrap();
        assert!((cw - 0.5).abs() < 1e-9 && (ch - 1.0).abs() < 1e-9 && (l - 0.25).abs() < 1e-9);
        let p = plan("/x2/w=100/h=100/fit=fill/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, engine_scale(&p)), (100, 100, Some(2)), "fill: y needs 2x");
        let p = plan("/x2/w=1000/fit=inside/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (200, 100));
        // No scale in the URL: `inside` stops at the source's size.
        let p = plan("/w=1000/fit=inside/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (100, 50));
        let p = plan("/w=1000/h=1000/fit=inside/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (100, 50));
        let p = plan("/x2/w=100/h=100/fit=cover/gravity=east/a.png", 100, 50).unwrap();
        let (l, t, cw, _) = p.crop.unwrap();
        assert!((l - 0.5).abs() < 1e-9 && t.abs() < 1e-9 && (cw - 0.5).abs() < 1e-9);
        let p = plan("/x2/w=100/dpr=2/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (200, 100));
        assert_eq!(plan("/x3/a.png", 10, 10).unwrap().engine.unwrap().scale(), 3);
        let p = plan("/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, p.model()), (100, 50, "resize".to_string()), "no scale, no box: re-encode");
    }

    #[test]
    fn a_smart_crop_is_keyed_apart_and_narrows_to_its_window() {
        let centre = plan("/x2/w=100/h=100/fit=cover/a.png", 100, 50).unwrap();
        let smart = plan("/x2/w=100/h=100/fit=cover/gravity=smart/a.png", 100, 50).unwrap();
        assert!(smart.smart && !centre.smart);
        assert_ne!(smart.canonical(), centre.canonical());
        assert!(smart.canonical().contains("crop=smart,0.500000,1.000000"), "{}", smart.canonical());
        // Nothing to crop: smart is the same as centre.
        let whole = plan("/x2/w=200/h=100/fit=cover/gravity=smart/a.png", 100, 50).unwrap();
        assert!(!whole.smart && whole.canonical() == plan("/x2/w=200/h=100/fit=cover/a.png", 100, 50).unwrap().canonical());
        // Placed at the left edge, the window (50×50 source px) and 8 px of context are cut out.
        let mut placed = smart.clone();
        placed.crop = Some((0.0, 0.0, 0.5, 1.0));
        let region = placed.smart_region(8).unwrap();
        assert_eq!(region, (0, 0, 58, 50));
        let n = placed.narrowed_to(region);
        assert_eq!((n.src_w, n.src_h, n.engine_w, n.engine_h, n.out_w, n.out_h), (58, 50, 116, 100, 100, 100));
        let (l, t, w, h) = n.crop.unwrap();
        assert!(l.abs() < 1e-9 && t.abs() < 1e-9 && (w - 50.0 / 58.0).abs() < 1e-9 && (h - 1.0).abs() < 1e-9);
        // The crop in engine pixels is the same window either way.
        let (a, b) = (placed.crop_px().unwrap(), n.crop_px().unwrap());
        assert!((a.width - b.width).abs() < 1e-9 && (a.left - b.left).abs() < 1e-9);
        assert!(centre.smart_region(8).is_none());
    }

    #[test]
    fn output_limit_is_checked_before_work_on_sizes_really_made() {
        let e = plan("/x4/a.png", 5000, 4000).unwrap_err();
        assert_eq!(e.class(), ErrorClass::TooLarge);
        assert!(plan("/x2/w=16384/h=16384/fit=fill/a.png", 10, 10).is_err());
        // A 16 MP source with x4 and a thumbnail box makes no 64 MP intermediate.
        let p = plan("/x4/w=300/a.png", 4000, 4000).unwrap();
        assert_eq!((p.out_w, p.out_h, p.model()), (300, 300, "resize".to_string()));
        let e = plan("/w=2000/a.png", 200, 100).unwrap_err();
        assert!(matches!(e, PlanError::UpscaleTooLarge { .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::TooLarge);
    }

    #[test]
    fn webp_side_limit_is_decided_in_the_plan() {
        let r = full_registry();
        let p = plan_with(&r, "/x4/a.jpg", 4100, 900, "image/webp").unwrap();
        assert_eq!((p.out_w, p.format), (16400, OutputFormat::Jpeg), "auto falls back to JPEG");
        let p = plan_with(&r, "/x4/a.jpg", 4000, 900, "image/webp").unwrap();
        assert_eq!(p.format, OutputFormat::Webp);
        let e = plan_with(&r, "/x4/format=webp/a.jpg", 4100, 900, "image/webp").unwrap_err();
        assert!(matches!(e, PlanError::FormatSideLimit { max: 16383, .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::TooLarge);
        // With alpha, auto falls back to PNG.
        assert_eq!(Variant::AutoWebp.resolve_for_size(true, 16400, 10).unwrap(), OutputFormat::Png);
    }

    #[test]
    fn unknown_model_is_a_400_listing_models_even_without_missing_pixels() {
        for path in ["/x4/model=realesrgan/a.png", "/w=5/model=realesrgan/a.png"] {
            let e = plan(path, 10, 10).unwrap_err();
            assert_eq!(e.class(), ErrorClass::BadRequest);
            assert!(e.to_string().contains("lanczos"));
        }
    }

    /// Every row of the README's URL rules table, with the default config.
    #[test]
    fn readme_rules_table_holds() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let table = readme.split("<!-- url rules:").nth(1).expect("the README has the url rules table");
        let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("| source")).skip(2).take_while(|l| l.starts_with('|')).collect();
        assert!(rows.len() >= 20, "{} rows", rows.len());
        let r = full_registry();
        let size = |cell: &str| -> Option<(u32, u32)> {
            let (w, h) = cell.trim().split_once('×')?;
            Some((w.parse().ok()?, h.parse().ok()?))
        };
        let ticked = |cell: &str| cell.split('`').nth(1).unwrap_or("").to_string();
        for row in rows {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (src, url, runs, out) = (cells[1], cells[2], cells[3], cells[4]);
            let (sw, sh) = size(src).unwrap_or_else(|| panic!("{row}: source"));
            let accept = if url.contains("Accept: image/webp") { "image/webp" } else { "*/*" };
            let got = plan_with(&r, &ticked(url), sw, sh, accept);
            let what = ticked(runs);
            match (what.as_str(), got) {
                ("413", Err(e)) => assert_eq!(e.class(), ErrorClass::TooLarge, "{row}"),
                ("413", Ok(p)) => panic!("{row}: expected 413, got {p:?}"),
                (_, Err(e)) => panic!("{row}: {e}"),
                (what, Ok(p)) => {
                    assert_eq!(Some((p.out_w, p.out_h)), size(out), "{row}");
                    match what {
                        "re-encode" => assert!(p.engine.is_none() && (p.out_w, p.out_h) == (sw, sh), "{row}: {p:?}"),
                        "resize" => assert!(p.engine.is_none() && (p.out_w, p.out_h) != (sw, sh), "{row}: {p:?}"),
                        model => {
                            let scale: u32 = runs.split('`').nth(2).and_then(|t| t.trim().strip_prefix('x')).and_then(|t| t[..1].parse().ok()).unwrap_or_else(|| panic!("{row}: scale"));
                            let name = p.engine.as_ref().map(|e| e.id().name.clone());
                            assert_eq!(name, Some(format!("{model}-x{scale}")), "{row}");
                        }
                    }
                    if runs.contains("JPEG") {
                        assert_eq!(p.format, OutputFormat::Jpeg, "{row}");
                    }
                }
            }
        }
    }

    #[test]
    fn accept_negotiation() {
        let webp = |a| accepts(a, "image/webp");
        assert!(webp("image/avif,image/webp,*/*"));
        assert!(webp("image/webp;q=0.8"));
        assert!(!webp("image/webp;q=0"));
        assert!(!webp("*/*"));
        assert!(!webp(""));
        let chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
        assert_eq!(Variant::negotiate(Format::Auto, Some(chrome), true), Variant::AutoAvif);
        assert_eq!(Variant::negotiate(Format::Auto, Some(chrome), false), Variant::AutoWebp, "auto_avif off");
        assert_eq!(Variant::negotiate(Format::Auto, Some("image/avif;q=0,image/webp"), true), Variant::AutoWebp);
        assert_eq!(Variant::negotiate(Format::Auto, Some("image/*,*/*"), true), Variant::AutoLegacy);
        assert_eq!(Variant::negotiate(Format::Avif, None, false), Variant::Explicit(OutputFormat::Avif));
        assert_eq!(Variant::AutoAvif.resolve(true), OutputFormat::Avif, "AVIF keeps alpha");
        assert_eq!(Variant::AutoAvif.resolve_for_size(false, 16385, 10).unwrap(), OutputFormat::Jpeg);
        assert!(Variant::Explicit(OutputFormat::Avif).resolve_for_size(false, 16385, 10).is_err());
        assert_eq!(Variant::AutoLegacy.resolve(true), OutputFormat::Png);
        assert_eq!(Variant::AutoLegacy.resolve(false), OutputFormat::Jpeg);
        assert!(Variant::AutoWebp.varies() && !Variant::Explicit(OutputFormat::Png).varies());
    }

    #[test]
    fn plan_canonical_ignores_gen_params_for_gan_and_classical_engines() {
        let a = plan("/x4/seed=1/a.png", 10, 10).unwrap();
        let b = plan("/x4/seed=2/a.png", 10, 10).unwrap();
        assert_eq!(a.canonical(), b.canonical());
        let c = plan("/x4/q=50/a.png", 10, 10).unwrap();
        assert_ne!(a.canonical(), c.canonical());
    }

    #[test]
    fn scheduler_reaches_gen_params_and_the_key_names_it_only_when_not_ddim() {
        let sd = Registry::new(vec![ModelEntry {
            name: "sd-x4".into(),
            aliases: vec![],
            rank: 0,
            engine: Arc::new(FakeSd(EngineId::new("sd-x4", "0"))),
            description: String::new(),
        }]);
        let p = |path: &str| plan_with(&sd, path, 10, 10, "image/webp").unwrap();
        let (ddim, dpm) = (p("/x4/m=sd-x4/prompt=a/scheduler=ddim/a.png"), p("/x4/m=sd-x4/prompt=a/scheduler=dpm/a.png"));
        assert_eq!((ddim.gen.scheduler, dpm.gen.scheduler), (SchedulerKind::Ddim, SchedulerKind::Dpm));
        assert!(!ddim.canonical().contains("scheduler"), "{}", ddim.canonical());
        assert!(dpm.canonical().ends_with("/scheduler=dpm"), "{}", dpm.canonical());
        // no `scheduler=` in the URL: `[sd] url_default_scheduler` (dpm by default)
        let default = p("/x4/m=sd-x4/prompt=a/a.png");
        assert_eq!(default.gen.scheduler, Config::default().sd.url_default_scheduler);
        assert_eq!((default.gen.scheduler, default.gen.steps), (SchedulerKind::Dpm, 8));
    }
}
