//! Resolving a `TransformSpec` against the source header, the request and the config: which
//! engine, what sizes, which output format and quality. Only a `Plan` reaches the engine.
//!
//! Sizes: the engine upscales the source by its own scale; the result is then resized (Lanczos)
//! to `source × requested scale`, or into the `w`×`h` box (× `dpr`) by `fit`. Every limit is
//! checked here, before any pixel is decoded.

use std::sync::Arc;

use crate::config::Config;
use crate::engine::registry::{ModelError, Registry};
use crate::engine::{Engine, GenParams};
use crate::error::{Classify, ErrorClass};
use crate::imaging::decode::Header;
use crate::imaging::encode::OutputFormat;
use crate::imaging::resize::Crop;
use crate::params::{Fit, Format, TransformSpec};

/// The output format after `Accept` negotiation, as far as it is known before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Explicit(OutputFormat),
    /// `format=auto` and the client accepts WebP.
    AutoWebp,
    /// `format=auto` and the client does not accept WebP: JPEG, or PNG for alpha.
    AutoLegacy,
}

impl Variant {
    pub fn negotiate(format: Format, accept: Option<&str>) -> Variant {
        match format {
            Format::Webp => Variant::Explicit(OutputFormat::Webp),
            Format::Jpeg => Variant::Explicit(OutputFormat::Jpeg),
            Format::Png => Variant::Explicit(OutputFormat::Png),
            Format::Auto if accepts_webp(accept.unwrap_or("")) => Variant::AutoWebp,
            Format::Auto => Variant::AutoLegacy,
        }
    }

    /// Part of the request key.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Explicit(f) => f.as_str(),
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
            Variant::AutoWebp => OutputFormat::Webp,
            Variant::AutoLegacy if has_alpha => OutputFormat::Png,
            Variant::AutoLegacy => OutputFormat::Jpeg,
        }
    }
}

/// `image/webp` listed with a non-zero q. A bare `*/*` does not count: old browsers send it.
fn accepts_webp(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        media.eq_ignore_ascii_case("image/webp")
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
    pub engine: Arc<dyn Engine>,
    /// Requested scale.
    pub scale: u32,
    pub src_w: u32,
    pub src_h: u32,
    /// Size of the engine's output.
    pub engine_w: u32,
    pub engine_h: u32,
    /// Final output size.
    pub out_w: u32,
    pub out_h: u32,
    /// Source rectangle of the final resize, as fractions of the engine output (for `cover`).
    pub crop: Option<(f64, f64, f64, f64)>,
    pub format: OutputFormat,
    pub quality: u8,
    pub gen: GenParams,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("engine", &self.engine.id().to_string())
            .field("scale", &self.scale)
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
}

impl Classify for PlanError {
    fn class(&self) -> ErrorClass {
        match self {
            PlanError::Model(e) => e.class(),
            PlanError::OutputTooLarge { .. } | PlanError::InputTooLarge { .. } => ErrorClass::TooLarge,
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
        let scale = spec.scale.unwrap_or(4);
        let has_prompt = spec.prompt.as_deref().is_some_and(|p| !p.trim().is_empty());
        let (src_w, src_h) = (header.width, header.height);
        // `auto` must finish in time: half the deadline leaves room for queueing and encoding.
        let budget = cfg.server.request_deadline / 2;
        let engine = registry.resolve_within(&spec.model, scale, has_prompt, src_w as u64 * src_h as u64, budget)?;
        if engine.prompt_guided() && src_w.max(src_h) > cfg.sd.max_input_side {
            return Err(PlanError::InputTooLarge {
                model: engine.id().name.clone(),
                max: cfg.sd.max_input_side,
                width: src_w,
                height: src_h,
            });
        }
        let limit = cfg.limits.max_output_pixels;
        let check = |w: u64, h: u64| {
            let pixels = w.saturating_mul(h);
            if pixels > limit {
                Err(PlanError::OutputTooLarge { width: w, height: h, pixels, limit })
            } else {
                Ok(())
            }
        };
        let es = engine.scale() as u64;
        check(src_w as u64 * es, src_h as u64 * es)?;
        let (up_w, up_h) = (src_w as f64 * scale as f64, src_h as f64 * scale as f64);
        let dpr = spec.dpr.unwrap_or(1.0) as f64;
        let bw = spec.width.map(|w| (w as f64 * dpr).round().max(1.0));
        let bh = spec.height.map(|h| (h as f64 * dpr).round().max(1.0));
        check(bw.unwrap_or(0.0) as u64, bh.unwrap_or(0.0) as u64)?;
        let fit = spec.fit.unwrap_or_default();
        // `inside` never grows past the image at the URL's scale; with no scale in the URL, past
        // the source (imgproxy's "no enlarge").
        let (lim_w, lim_h) = if spec.scale.is_some() { (up_w, up_h) } else { (src_w as f64, src_h as f64) };
        let mut crop = None;
        let (out_w, out_h) = match (bw, bh) {
            (None, None) => (up_w, up_h),
            (Some(w), None) => shrink_for_inside(fit, w, (up_h * w / up_w).round(), lim_w, lim_h),
            (None, Some(h)) => shrink_for_inside(fit, (up_w * h / up_h).round(), h, lim_w, lim_h),
            (Some(w), Some(h)) => match fit {
                Fit::Fill => (w, h),
                Fit::Contain | Fit::Inside => {
                    let s = (w / up_w).min(h / up_h);
                    let s = if fit == Fit::Inside { s.min(lim_w / up_w) } else { s };
                    ((up_w * s).round(), (up_h * s).round())
                }
                Fit::Cover => {
                    // Scale to cover the box, then take the box-shaped region at the gravity.
                    let s = (w / up_w).max(h / up_h);
                    let (cw, ch) = (w / (up_w * s), h / (up_h * s));
                    let (ax, ay) = spec.gravity.unwrap_or_default().anchor();
                    crop = Some(((1.0 - cw) * ax, (1.0 - ch) * ay, cw, ch));
                    (w, h)
                }
            },
        };
        let (out_w, out_h) = (out_w.max(1.0) as u64, out_h.max(1.0) as u64);
        check(out_w, out_h)?;
        let format = variant.resolve(header.has_alpha);
        let quality = spec.quality.unwrap_or(match format {
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
            guidance: spec.guidance.unwrap_or(defaults.guidance),
            seed: spec.seed.unwrap_or(defaults.seed),
        };
        Ok(Plan {
            scale,
            src_w,
            src_h,
            engine_w: src_w * engine.scale(),
            engine_h: src_h * engine.scale(),
            out_w: out_w as u32,
            out_h: out_h as u32,
            crop,
            format,
            quality,
            gen,
            engine,
        })
    }

    /// The canonical form of what is computed (the engine id is hashed beside it). Generation
    /// parameters count only for engines that read them.
    pub fn canonical(&self) -> String {
        let mut s = format!(
            "scale={}/out={}x{}/format={}/q={}",
            self.scale,
            self.out_w,
            self.out_h,
            self.format.as_str(),
            self.quality
        );
        if let Some((l, t, w, h)) = self.crop {
            s.push_str(&format!("/crop={l:.6},{t:.6},{w:.6},{h:.6}"));
        }
        if self.engine.prompt_guided() {
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
        }
        s
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

/// With only one of `w`/`h`, `inside` never enlarges past `lim` (see `Plan::resolve`).
fn shrink_for_inside(fit: Fit, w: f64, h: f64, lim_w: f64, lim_h: f64) -> (f64, f64) {
    if fit == Fit::Inside && w > lim_w {
        (lim_w, lim_h)
    } else {
        (w, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::lanczos::Lanczos;
    use crate::engine::registry::ModelEntry;
    use image::ImageFormat;

    fn registry() -> Registry {
        Registry::new(
            [2, 3, 4]
                .into_iter()
                .map(|s| ModelEntry {
                    name: "lanczos".into(),
                    aliases: vec![],
                    rank: 0,
                    engine: Arc::new(Lanczos::new(s, 1)),
                    description: String::new(),
                })
                .collect(),
        )
    }

    fn plan(path: &str, w: u32, h: u32) -> Result<Plan, PlanError> {
        let t = crate::params::parse(path, &Default::default()).unwrap();
        let header = Header { format: ImageFormat::Png, width: w, height: h, has_alpha: false };
        Plan::resolve(&t.spec, Variant::negotiate(t.spec.format, Some("image/webp")), &header, &registry(), &Config::default(), Caller::Url)
    }

    #[test]
    fn sizes_follow_scale_and_fit() {
        let p = plan("/x4/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h, p.engine_w), (400, 200, 400));
        let p = plan("/x2/w=100/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (100, 50));
        let p = plan("/x2/w=100/h=100/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (100, 50));
        let p = plan("/x2/w=100/h=100/fit=cover/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (100, 100));
        let (l, _, cw, ch) = p.crop.unwrap();
        assert!((cw - 0.5).abs() < 1e-9 && (ch - 1.0).abs() < 1e-9 && (l - 0.25).abs() < 1e-9);
        let p = plan("/x2/w=100/h=100/fit=fill/a.png", 100, 50).unwrap();
        assert_eq!((p.out_w, p.out_h), (100, 100));
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
        assert_eq!(plan("/x3/a.png", 10, 10).unwrap().engine.scale(), 3);
    }

    #[test]
    fn output_limit_is_checked_before_work() {
        let e = plan("/x4/a.png", 5000, 4000).unwrap_err();
        assert_eq!(e.class(), ErrorClass::TooLarge);
        assert!(plan("/x2/w=16384/h=16384/fit=fill/a.png", 10, 10).is_err());
    }

    #[test]
    fn unknown_model_is_a_400_listing_models() {
        let e = plan("/x4/model=realesrgan/a.png", 10, 10).unwrap_err();
        assert_eq!(e.class(), ErrorClass::BadRequest);
        assert!(e.to_string().contains("lanczos"));
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts_webp("image/avif,image/webp,*/*"));
        assert!(accepts_webp("image/webp;q=0.8"));
        assert!(!accepts_webp("image/webp;q=0"));
        assert!(!accepts_webp("*/*"));
        assert!(!accepts_webp(""));
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
}
