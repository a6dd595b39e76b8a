//! URL → `TransformSpec` + source key: the transform grammar, typed and validated.
//!
//! A transform path is `/<options…>/[-/]<source key>`. Option segments come first; the first
//! segment that is neither an option nor `-` starts the source key (a `-` segment ends the options
//! explicitly, for source keys whose first segment looks like an option). Each option is defined
//! once in `defs.rs`; `canonical.rs` writes the sorted, normalised form that cache keys hash.
//!
//! This module owns syntax only. Whether a model exists, which format `auto` becomes and how big
//! the output is are decided later, against the source and the config (`plan`).

mod canonical;
pub mod defs;
pub mod imgproxy;

use percent_encoding::percent_decode_str;

use crate::engine::SchedulerKind;
use crate::error::{Classify, ErrorClass};

pub use canonical::{canonical, normalized};

/// Output container requested in the URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Format {
    #[default]
    Auto,
    Avif,
    Webp,
    Jpeg,
    Png,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Avif => "avif",
            Format::Webp => "webp",
            Format::Jpeg => "jpeg",
            Format::Png => "png",
        }
    }
}

/// How the output meets the `w`/`h` box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Fit {
    /// Scale to fit inside the box, keeping the aspect ratio.
    #[default]
    Contain,
    /// Scale to cover the box, keeping the aspect ratio, and crop (where `gravity` says).
    Cover,
    /// Stretch to exactly the box.
    Fill,
    /// Like `contain`, but never larger than `source × scale` (no scale: the source).
    Inside,
}

impl Fit {
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Contain => "contain",
            Fit::Cover => "cover",
            Fit::Fill => "fill",
            Fit::Inside => "inside",
        }
    }
}

/// Which part of the image `fit=cover` keeps when it crops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Gravity {
    #[default]
    Centre,
    North,
    South,
    East,
    West,
    NorthEast,
    NorthWest,
    SouthEast,
    SouthWest,
    /// The most interesting window, chosen from the source's pixels (`imaging::attention`).
    Smart,
}

impl Gravity {
    pub fn as_str(self) -> &'static str {
        match self {
            Gravity::Centre => "centre",
            Gravity::North => "north",
            Gravity::South => "south",
            Gravity::East => "east",
            Gravity::West => "west",
            Gravity::NorthEast => "northeast",
            Gravity::NorthWest => "northwest",
            Gravity::SouthEast => "southeast",
            Gravity::SouthWest => "southwest",
            Gravity::Smart => "smart",
        }
    }

    /// Where the crop window sits in the room it has: 0 = left/top, 1 = right/bottom. `Smart`
    /// starts centred; its window moves once the pixels are decoded.
    pub fn anchor(self) -> (f64, f64) {
        match self {
            Gravity::Centre | Gravity::Smart => (0.5, 0.5),
            Gravity::North => (0.5, 0.0),
            Gravity::South => (0.5, 1.0),
            Gravity::East => (1.0, 0.5),
            Gravity::West => (0.0, 0.5),
            Gravity::NorthEast => (1.0, 0.0),
            Gravity::NorthWest => (0.0, 0.0),
            Gravity::SouthEast => (1.0, 1.0),
            Gravity::SouthWest => (0.0, 1.0),
        }
    }
}

/// The model asked for: `auto` or a name/alias, resolved against the registry later.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum ModelChoice {
    #[default]
    Auto,
    Named(String),
}

/// A model family's denoise level (`denoise=`), choosing among its files: Real-CUGAN's
/// `model=cugan/denoise=2` runs the `realcugan-denoise2x` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denoise {
    Conservative,
    None,
    /// 1..=3.
    Level(u8),
}

impl Denoise {
    /// The URL value.
    pub fn as_str(self) -> &'static str {
        match self {
            Denoise::Conservative => "conservative",
            Denoise::None => "none",
            Denoise::Level(1) => "1",
            Denoise::Level(2) => "2",
            Denoise::Level(_) => "3",
        }
    }

    /// The suffix of the model names that hold this level (`<model>-<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            Denoise::Conservative => "conservative",
            Denoise::None => "no-denoise",
            Denoise::Level(1) => "denoise1x",
            Denoise::Level(2) => "denoise2x",
            Denoise::Level(_) => "denoise3x",
        }
    }
}

/// A validated transform. Fields left `None` take their defaults when the plan is made, so an
/// explicit default and an omitted option give the same result key (and, through `normalized`,
/// the same request key).
#[derive(Clone, PartialEq, Default)]
pub struct TransformSpec {
    /// Enlargement factor 1..=4 when no box is given, and the cap of `fit=inside`.
    pub scale: Option<u32>,
    pub model: ModelChoice,
    /// Denoise level of a named model with levels (Real-CUGAN); `None`: the model as named.
    pub denoise: Option<Denoise>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub noise_level: Option<u32>,
    pub steps: Option<u32>,
    /// sd-x4 denoising scheduler.
    pub scheduler: Option<SchedulerKind>,
    pub guidance: Option<f32>,
    pub seed: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Option<Fit>,
    /// Crop anchor for `fit=cover`; `None` is the centre.
    pub gravity: Option<Gravity>,
    pub dpr: Option<f32>,
    pub format: Format,
    pub quality: Option<u8>,
    /// Named origin from the config; `None` is the default origin.
    pub origin: Option<String>,
}

impl std::fmt::Debug for TransformSpec {
    // Prompts never reach logs: show their length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformSpec")
            .field("scale", &self.scale)
            .field("model", &self.model)
            .field("denoise", &self.denoise)
            .field("prompt_len", &self.prompt.as_ref().map(|p| p.len()))
            .field("negative_prompt_len", &self.negative_prompt.as_ref().map(|p| p.len()))
            .field("noise_level", &self.noise_level)
            .field("steps", &self.steps)
            .field("scheduler", &self.scheduler)
            .field("guidance", &self.guidance)
            .field("seed", &self.seed)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fit", &self.fit)
            .field("gravity", &self.gravity)
            .field("dpr", &self.dpr)
            .field("format", &self.format)
            .field("quality", &self.quality)
            .field("origin", &self.origin)
            .finish()
    }
}

impl TransformSpec {
    /// Sets every field `other` sets (presets in imgproxy's syntax apply where they appear).
    pub fn overlay(&mut self, other: &TransformSpec) {
        self.merge(other, true);
    }

    /// Sets the fields this spec leaves unset from `base` (upres's `preset=` and the `default`
    /// preset: options in the URL win whatever their order).
    pub fn fill_from(&mut self, base: &TransformSpec) {
        self.merge(base, false);
    }

    fn merge(&mut self, o: &TransformSpec, overwrite: bool) {
        fn pick<T: Clone>(dst: &mut Option<T>, src: &Option<T>, overwrite: bool) {
            if src.is_some() && (overwrite || dst.is_none()) {
                *dst = src.clone();
            }
        }
        // Destructure so a new field cannot be forgotten here.
        let TransformSpec {
            scale,
            model,
            denoise,
            prompt,
            negative_prompt,
            noise_level,
            steps,
            scheduler,
            guidance,
            seed,
            width,
            height,
            fit,
            gravity,
            dpr,
            format,
            quality,
            origin,
        } = o;
        pick(&mut self.scale, scale, overwrite);
        if *model != ModelChoice::Auto && (overwrite || self.model == ModelChoice::Auto) {
            self.model = model.clone();
        }
        pick(&mut self.denoise, denoise, overwrite);
        pick(&mut self.prompt, prompt, overwrite);
        pick(&mut self.negative_prompt, negative_prompt, overwrite);
        pick(&mut self.noise_level, noise_level, overwrite);
        pick(&mut self.steps, steps, overwrite);
        pick(&mut self.scheduler, scheduler, overwrite);
        pick(&mut self.guidance, guidance, overwrite);
        pick(&mut self.seed, seed, overwrite);
        pick(&mut self.width, width, overwrite);
        pick(&mut self.height, height, overwrite);
        pick(&mut self.fit, fit, overwrite);
        pick(&mut self.gravity, gravity, overwrite);
        pick(&mut self.dpr, dpr, overwrite);
        if *format != Format::Auto && (overwrite || self.format == Format::Auto) {
            self.format = *format;
        }
        pick(&mut self.quality, quality, overwrite);
        pick(&mut self.origin, origin, overwrite);
    }
}

/// Named option sets from the config's `[presets]`, parsed once at startup.
pub type Presets = std::sync::Arc<std::collections::BTreeMap<String, TransformSpec>>;

/// Parses the config's `[presets]` (each value in upres's option syntax, e.g.
/// `w=300/h=300/fit=cover`). A preset cannot name another preset.
pub fn parse_presets(raw: &std::collections::BTreeMap<String, String>, limits: &ParamLimits) -> Result<Presets, String> {
    let plain = ParamLimits { presets: Presets::default(), ..limits.clone() };
    let mut out = std::collections::BTreeMap::new();
    for (name, options) in raw {
        let options = options.trim_matches('/');
        let path = if options.is_empty() { "/-/x".to_string() } else { format!("/{options}/-/x") };
        let parsed = parse(&path, &plain).map_err(|e| format!("preset `{name}`: {e}"))?;
        out.insert(name.clone(), parsed.spec);
    }
    Ok(std::sync::Arc::new(out))
}

/// Limits the parser enforces (from the config), and the presets it expands.
#[derive(Clone, Debug)]
pub struct ParamLimits {
    /// Longest accepted request path, in bytes.
    pub max_path_bytes: usize,
    /// Longest accepted prompt or negative prompt, in bytes after percent-decoding.
    pub max_prompt_bytes: usize,
    /// Largest `w` or `h`.
    pub max_dimension: u32,
    /// `[presets]`; the one named `default` applies to every request.
    pub presets: Presets,
}

impl ParamLimits {
    /// The limits a config sets (`server.max_path_bytes`, `limits.max_prompt_bytes`) and its
    /// `[presets]`, parsed under them: what the server and `upres upscale` both parse with.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, String> {
        let base = ParamLimits { max_path_bytes: cfg.server.max_path_bytes, max_prompt_bytes: cfg.limits.max_prompt_bytes, ..ParamLimits::default() };
        let presets = parse_presets(&cfg.presets, &base)?;
        Ok(ParamLimits { presets, ..base })
    }
}

impl Default for ParamLimits {
    fn default() -> Self {
        Self { max_path_bytes: 8192, max_prompt_bytes: 1024, max_dimension: 16384, presets: Presets::default() }
    }
}

/// A parsed transform path.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformPath {
    pub spec: TransformSpec,
    /// The source key below the origin root: decoded, `/`-separated, never empty, no `.`/`..`
    /// segments, no empty segments.
    pub source: String,
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum ParamError {
    #[error("unknown option `{0}`")]
    Unknown(String),
    #[error("invalid value for option `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("option `{0}` is given more than once")]
    Duplicate(&'static str),
    #[error("the path has no source image after the options")]
    MissingSource,
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("a path segment is not valid percent-encoded UTF-8 or holds `/`, `\\` or NUL")]
    BadEncoding,
    #[error("the path is longer than {0} bytes")]
    TooLong(usize),
    #[error("option `{0}` is not supported by upres")]
    Unsupported(String),
    #[error("unknown preset `{0}`")]
    UnknownPreset(String),
    #[error("invalid source: {0}")]
    BadSource(String),
}

impl Classify for ParamError {
    fn class(&self) -> ErrorClass {
        match self {
            ParamError::TooLong(_) => ErrorClass::UriTooLong,
            _ => ErrorClass::BadRequest,
        }
    }
}

/// Decodes one percent-encoded path segment; rejects separators and NUL hidden in escapes.
pub fn decode_segment(raw: &str) -> Result<String, ParamError> {
    let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| ParamError::BadEncoding)?;
    if decoded.contains(['/', '\\', '\0']) {
        return Err(ParamError::BadEncoding);
    }
    Ok(decoded.into_owned())
}

/// Parses a transform path (without query string and without a signature segment).
pub fn parse(path: &str, limits: &ParamLimits) -> Result<TransformPath, ParamError> {
    if path.len() > limits.max_path_bytes {
        return Err(ParamError::TooLong(limits.max_path_bytes));
    }
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let mut segments = trimmed.split('/').peekable();
    let mut spec = TransformSpec::default();
    let mut seen: Vec<&'static str> = Vec::new();

    while let Some(raw) = segments.peek().copied() {
        if raw.is_empty() {
            return Err(ParamError::EmptySegment);
        }
        if raw == "-" {
            segments.next();
            break;
        }
        let Some(def) = defs::recognise(raw) else { break };
        let (name, value) = match def {
            defs::Recognised::Option(def, value) => (def, value),
            defs::Recognised::UnknownOption(name) => return Err(ParamError::Unknown(name)),
        };
        if seen.contains(&name.name) {
            return Err(ParamError::Duplicate(name.name));
        }
        seen.push(name.name);
        let value = decode_option_value(&value)?;
        (name.apply)(&mut spec, &value, limits)
            .map_err(|reason| ParamError::Invalid { name: name.name, reason })?;
        segments.next();
    }

    let mut source = Vec::new();
    for raw in segments {
        if raw.is_empty() {
            return Err(ParamError::EmptySegment);
        }
        let seg = decode_segment(raw)?;
        if seg == "." || seg == ".." {
            return Err(ParamError::DotSegment);
        }
        source.push(seg);
    }
    if source.is_empty() {
        return Err(ParamError::MissingSource);
    }
    if let Some(default) = limits.presets.get("default") {
        spec.fill_from(default);
    }
    Ok(TransformPath { spec, source: source.join("/") })
}

fn decode_option_value(raw: &str) -> Result<String, ParamError> {
    // Option values may hold any text (prompts), but never a raw NUL.
    let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| ParamError::BadEncoding)?;
    if decoded.contains('\0') {
        return Err(ParamError::BadEncoding);
    }
    Ok(decoded.into_owned())
}

#[cfg(test)]
mod tests;
