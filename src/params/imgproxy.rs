//! imgproxy's processing URL format, beside upres's own, parsed into the same `TransformSpec`:
//!
//! ```text
//! /<signature>/<option>:<arg>:<arg>/…/plain/<source URL>@<ext>
//! /<signature>/<option>:<arg>:<arg>/…/<base64url source URL, may be split by />.<ext>
//! ```
//!
//! `recognise` tells the syntaxes apart by the segment after the signature: `plain`, `enc`, an
//! option segment (`name:…`, a lowercase name followed by `:`), or a base64url source that
//! decodes to a URL (`…://…`). upres's own option segments are `name=value`, `xN` or `-`, so
//! they never look like any of these; an upres source key that does is written after `-`.
//! With signing off, the signature segment is any placeholder (`insecure`, `_`) that is not
//! one of upres's option segments.
//!
//! Semantics follow imgproxy's where upres can honour them; options upres cannot honour answer
//! `ParamError::Unsupported` (400) naming the option, unless `[imgproxy] ignore_unsupported`.
//! Enlarging is the one deliberate extension: `enlarge:1` (or `upscale:<model>`) lets the box
//! be filled by upres's super-resolution rules; without it the output is never larger than
//! the source (`fit=inside`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use percent_encoding::percent_decode_str;

use super::{defs, Fit, Format, Gravity, ParamError, ParamLimits, TransformPath, TransformSpec};

/// What the imgproxy syntax needs from the config, built once at startup.
#[derive(Clone, Debug, Default)]
pub struct Syntax {
    /// Configured origins as (name, base URL without a trailing `/`), longest URL first.
    origins: Vec<(String, String)>,
    /// `[imgproxy] ignore_unsupported`: drop options upres lacks instead of answering 400.
    pub ignore_unsupported: bool,
}

impl Syntax {
    pub fn new<'a>(origins: impl IntoIterator<Item = (&'a str, &'a str)>, ignore_unsupported: bool) -> Syntax {
        let mut origins: Vec<(String, String)> =
            origins.into_iter().map(|(name, url)| (name.to_string(), url.trim_end_matches('/').to_string())).collect();
        origins.sort_by_key(|o| std::cmp::Reverse(o.1.len()));
        Syntax { origins, ignore_unsupported }
    }
}

/// How the response should be offered for download (`filename`, `return_attachment`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Disposition {
    /// File name without extension; the output format's extension is appended.
    pub filename: Option<String>,
    pub attachment: bool,
}

impl Disposition {
    /// The `Content-Disposition` value; `stem` names the file when no `filename` was given.
    pub fn header_value(&self, stem: &str, extension: &str) -> String {
        let kind = if self.attachment { "attachment" } else { "inline" };
        let name = self.filename.as_deref().unwrap_or(stem);
        // Quoted-string safe: printable ASCII without quotes or backslashes; the rest becomes `_`.
        let safe: String = name
            .chars()
            .take(200)
            .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
            .collect();
        format!("{kind}; filename=\"{safe}.{extension}\"")
    }
}

/// A parsed imgproxy URL.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub path: TransformPath,
    /// Present when the URL asked for `filename` or `return_attachment`.
    pub disposition: Option<Disposition>,
}

/// The path after the signature segment, when `path` is in imgproxy's syntax. `signed`: the
/// signature was already checked and stripped by `verify`; otherwise the first segment is a
/// placeholder to skip.
pub fn recognise(path: &str, signed: bool) -> Option<&str> {
    let rest = if signed {
        path
    } else {
        let trimmed = path.strip_prefix('/')?;
        let (placeholder, _) = trimmed.split_once('/')?;
        if placeholder.is_empty() || placeholder.contains('=') || placeholder == "-" || is_scale_segment(placeholder) {
            return None;
        }
        &path[1 + placeholder.len()..]
    };
    let after = rest.strip_prefix('/')?;
    let first = after.split('/').next().unwrap_or("");
    let imgproxy = first == "plain" || first == "enc" || option_name(first).is_some() || decodes_to_url(after);
    imgproxy.then_some(rest)
}

fn is_scale_segment(s: &str) -> bool {
    s.strip_prefix('x').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `name` of a `name:args` segment: lowercase letters, digits, `_` and `-`, starting with a letter.
fn option_name(segment: &str) -> Option<&str> {
    let (name, _) = segment.split_once(':')?;
    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    ok.then_some(name)
}

fn decodes_to_url(segments: &str) -> bool {
    decode_base64_source(segments).is_ok_and(|(url, _)| url.contains("://"))
}

/// Parses the path after the signature (starting with `/`).
pub fn parse(rest: &str, syntax: &Syntax, limits: &ParamLimits) -> Result<Request, ParamError> {
    if rest.len() > limits.max_path_bytes {
        return Err(ParamError::TooLong(limits.max_path_bytes));
    }
    let after = rest.strip_prefix('/').unwrap_or(rest);
    let segments: Vec<&str> = after.split('/').collect();
    let mut st = State::new(syntax, limits);
    let mut i = 0;
    while i < segments.len() {
        let seg = segments[i];
        if seg == "plain" || seg == "enc" {
            break;
        }
        let Some(name) = option_name(seg) else { break };
        let args: Vec<&str> = seg[name.len() + 1..].split(':').collect();
        st.option(name, &args)?;
        i += 1;
    }
    let source_segments = &segments[i..];
    let (url, ext) = match source_segments.first() {
        None => return Err(ParamError::MissingSource),
        Some(&"enc") => return Err(ParamError::Unsupported("enc (encrypted source URLs)".into())),
        Some(&"plain") => {
            let raw = source_segments[1..].join("/");
            let (raw, ext) = match raw.rsplit_once('@') {
                Some((url, ext)) => (url.to_string(), Some(ext.to_string())),
                None => (raw, None),
            };
            let url = percent_decode_str(&raw).decode_utf8().map_err(|_| ParamError::BadEncoding)?.into_owned();
            (url, ext)
        }
        Some(_) => decode_base64_source(&source_segments.join("/"))?,
    };
    if let Some(ext) = ext.filter(|e| !e.is_empty()) {
        st.format(&ext)?;
    }
    let (origin, key) = map_source(&url, syntax)?;
    let (spec, disposition) = st.finish()?;
    let mut spec = spec;
    spec.origin = origin;
    Ok(Request { path: TransformPath { spec, source: key }, disposition })
}

/// `<base64url>[.<ext>]`, possibly split by `/`; padding is allowed.
fn decode_base64_source(joined: &str) -> Result<(String, Option<String>), ParamError> {
    let bad = || ParamError::BadSource("not valid base64url".into());
    let (encoded, ext) = match joined.rsplit_once('.') {
        Some((e, ext)) if !ext.contains('/') => (e, Some(ext.to_string())),
        _ => (joined, None),
    };
    let encoded: String = encoded.chars().filter(|&c| c != '/').collect();
    let bytes = URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')).map_err(|_| bad())?;
    let url = String::from_utf8(bytes).map_err(|_| bad())?;
    Ok((url, ext))
}

/// A source URL → (origin name, key below it). `local:///k` and bare keys name the default
/// origin; any other URL must lie under a configured origin's base URL (no open proxy).
fn map_source(url: &str, syntax: &Syntax) -> Result<(Option<String>, String), ParamError> {
    let (origin, key) = if let Some(key) = url.strip_prefix("local:///") {
        (None, key.to_string())
    } else if url.contains("://") {
        let found = syntax.origins.iter().find_map(|(name, base)| {
            let rest = url.strip_prefix(base.as_str())?.strip_prefix('/')?;
            Some((name, rest))
        });
        let (name, rest) =
            found.ok_or_else(|| ParamError::BadSource("the URL is not under any configured origin".into()))?;
        ((name != "default").then(|| name.clone()), rest.to_string())
    } else {
        (None, url.trim_start_matches('/').to_string())
    };
    if key.is_empty() {
        return Err(ParamError::MissingSource);
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return Err(ParamError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(ParamError::DotSegment);
        }
        if seg.contains(['\\', '\0']) {
            return Err(ParamError::BadEncoding);
        }
    }
    Ok((origin, key))
}

#[derive(Clone, Copy, PartialEq)]
enum ResizingType {
    Fit,
    Fill,
    FillDown,
    Force,
}

/// Options read so far; `finish` turns them into a spec.
struct State<'a> {
    syntax: &'a Syntax,
    limits: &'a ParamLimits,
    spec: TransformSpec,
    resizing_type: Option<ResizingType>,
    enlarge: Option<bool>,
    zoom: Option<(f64, f64)>,
    disposition: Option<Disposition>,
}

impl<'a> State<'a> {
    fn new(syntax: &'a Syntax, limits: &'a ParamLimits) -> Self {
        let spec = limits.presets.get("default").cloned().unwrap_or_default();
        State { syntax, limits, spec, resizing_type: None, enlarge: None, zoom: None, disposition: None }
    }

    /// Refuses an option upres cannot honour, or drops it when the config says so.
    fn unsupported(&self, what: &str) -> Result<(), ParamError> {
        if self.syntax.ignore_unsupported {
            Ok(())
        } else {
            Err(ParamError::Unsupported(what.chars().take(64).collect()))
        }
    }

    fn option(&mut self, name: &str, args: &[&str]) -> Result<(), ParamError> {
        // Each arm names the option by its full name in errors.
        match name {
            "resize" | "rs" => {
                arity("resize", args, 8)?;
                self.resizing_type("resize", arg(args, 0))?;
                self.size("resize", &args[args.len().min(1)..])
            }
            "size" | "s" => {
                arity("size", args, 7)?;
                self.size("size", args)
            }
            "resizing_type" | "rt" => {
                arity("resizing_type", args, 1)?;
                self.resizing_type("resizing_type", arg(args, 0))
            }
            "width" | "w" => {
                arity("width", args, 1)?;
                self.dimension("width", arg(args, 0), true)
            }
            "height" | "h" => {
                arity("height", args, 1)?;
                self.dimension("height", arg(args, 0), false)
            }
            "enlarge" | "el" => {
                arity("enlarge", args, 1)?;
                if let Some(b) = boolean("enlarge", arg(args, 0))? {
                    self.enlarge = Some(b);
                }
                Ok(())
            }
            "extend" | "ex" => {
                arity("extend", args, 4)?;
                self.extend("extend", arg(args, 0))
            }
            "zoom" | "z" => {
                arity("zoom", args, 2)?;
                let x = positive("zoom", arg(args, 0))?;
                let y = if args.len() > 1 { positive("zoom", arg(args, 1))? } else { x };
                if let (Some(x), Some(y)) = (x, y.or(x)) {
                    self.zoom = Some((x, y));
                }
                Ok(())
            }
            "dpr" => {
                arity("dpr", args, 1)?;
                match positive("dpr", arg(args, 0))? {
                    None => Ok(()),
                    Some(1.0) => {
                        self.spec.dpr = None;
                        Ok(())
                    }
                    Some(_) => self.native("dpr", arg(args, 0)),
                }
            }
            "gravity" | "g" => {
                arity("gravity", args, 3)?;
                self.gravity(args)
            }
            "crop" | "c" => {
                arity("crop", args, 5)?;
                // Only "no crop" (zero or empty sizes) is honoured: upres cannot cut the source.
                let none = args.iter().take(2).all(|a| a.is_empty() || a.parse::<f64>().is_ok_and(|v| v == 0.0));
                if none {
                    Ok(())
                } else {
                    self.unsupported("crop")
                }
            }
            "quality" | "q" => {
                arity("quality", args, 1)?;
                match arg(args, 0) {
                    "" | "0" => {
                        self.spec.quality = None;
                        Ok(())
                    }
                    v => self.native("q", v),
                }
            }
            "format" | "f" | "ext" => {
                arity("format", args, 1)?;
                match arg(args, 0) {
                    "" => Ok(()),
                    v => self.format(v),
                }
            }
            "background" | "bg" => {
                // An empty background turns it off, which is what upres does anyway.
                if args.iter().all(|a| a.is_empty()) {
                    Ok(())
                } else {
                    self.unsupported("background")
                }
            }
            "preset" | "pr" => {
                for name in args.iter().filter(|a| !a.is_empty()) {
                    let preset =
                        self.limits.presets.get(*name).ok_or_else(|| ParamError::UnknownPreset(name.chars().take(64).collect()))?;
                    self.spec.overlay(preset);
                }
                Ok(())
            }
            // Only changes the URL (and so the cache key upstream of upres); nothing to do here.
            "cachebuster" | "cb" => Ok(()),
            "filename" | "fn" => {
                arity("filename", args, 2)?;
                let raw = arg(args, 0);
                let name = if boolean("filename", arg(args, 1))?.unwrap_or(false) {
                    let bytes = URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).map_err(|_| invalid("filename", "not valid base64url"))?;
                    String::from_utf8(bytes).map_err(|_| invalid("filename", "not UTF-8"))?
                } else {
                    percent_decode_str(raw).decode_utf8().map_err(|_| ParamError::BadEncoding)?.into_owned()
                };
                let d = self.disposition.get_or_insert_with(Default::default);
                d.filename = (!name.is_empty()).then_some(name);
                Ok(())
            }
            "return_attachment" | "att" => {
                arity("return_attachment", args, 1)?;
                let on = boolean("return_attachment", arg(args, 0))?.unwrap_or(false);
                self.disposition.get_or_insert_with(Default::default).attachment = on;
                Ok(())
            }
            // upres's own options in imgproxy's `name:value` form.
            "upscale" | "us" => {
                arity("upscale", args, 1)?;
                self.enlarge = Some(true);
                match arg(args, 0) {
                    "" => Ok(()),
                    v => self.native("model", v),
                }
            }
            "prompt" | "negative_prompt" | "neg" => {
                // Prompts may hold `:`; everything after the name is the text.
                let text = percent_decode_str(&args.join(":")).decode_utf8().map_err(|_| ParamError::BadEncoding)?.into_owned();
                self.native(if name == "prompt" { "prompt" } else { "neg" }, &text)
            }
            "noise" | "steps" | "scheduler" | "guidance" | "seed" => {
                let def = defs::lookup(name).expect("upres option exists");
                arity(def.name, args, 1)?;
                self.native(def.name, arg(args, 0))
            }
            other if UNSUPPORTED.contains(&other) => self.unsupported(other),
            other => Err(ParamError::Unknown(other.chars().take(64).collect())),
        }
    }

    /// Applies an option through upres's own table, so ranges and messages are the same.
    fn native(&mut self, name: &str, value: &str) -> Result<(), ParamError> {
        let def = defs::lookup(name).expect("upres option exists");
        (def.apply)(&mut self.spec, value, self.limits).map_err(|reason| ParamError::Invalid { name: def.name, reason })
    }

    fn resizing_type(&mut self, option: &'static str, v: &str) -> Result<(), ParamError> {
        self.resizing_type = match v {
            "" => return Ok(()),
            "fit" => Some(ResizingType::Fit),
            "fill" => Some(ResizingType::Fill),
            "fill-down" => Some(ResizingType::FillDown),
            "force" => Some(ResizingType::Force),
            "auto" => return self.unsupported("resizing_type:auto"),
            _ => return Err(invalid(option, "expected fit, fill, fill-down, force or auto")),
        };
        Ok(())
    }

    /// `%width:%height:%enlarge:%extend[:extend args]`.
    fn size(&mut self, option: &'static str, args: &[&str]) -> Result<(), ParamError> {
        self.dimension(option, arg(args, 0), true)?;
        self.dimension(option, arg(args, 1), false)?;
        if let Some(b) = boolean(option, arg(args, 2))? {
            self.enlarge = Some(b);
        }
        self.extend(option, arg(args, 3))
    }

    fn extend(&mut self, option: &'static str, v: &str) -> Result<(), ParamError> {
        match boolean(option, v)? {
            Some(true) => self.unsupported("extend"),
            _ => Ok(()),
        }
    }

    /// A width or height; `0` means "from the aspect ratio", empty keeps what was set.
    fn dimension(&mut self, option: &'static str, v: &str, width: bool) -> Result<(), ParamError> {
        if v.is_empty() {
            return Ok(());
        }
        let n: u32 = v.parse().map_err(|_| invalid(option, "expected a non-negative integer"))?;
        if n > self.limits.max_dimension {
            return Err(invalid(option, &format!("at most {}", self.limits.max_dimension)));
        }
        let slot = if width { &mut self.spec.width } else { &mut self.spec.height };
        *slot = (n > 0).then_some(n);
        Ok(())
    }

    fn gravity(&mut self, args: &[&str]) -> Result<(), ParamError> {
        let g = match arg(args, 0) {
            "" => return Ok(()),
            "ce" => Gravity::Centre,
            "no" => Gravity::North,
            "so" => Gravity::South,
            "ea" => Gravity::East,
            "we" => Gravity::West,
            "noea" => Gravity::NorthEast,
            "nowe" => Gravity::NorthWest,
            "soea" => Gravity::SouthEast,
            "sowe" => Gravity::SouthWest,
            "sm" => Gravity::Smart,
            "fp" => return self.unsupported("gravity:fp"),
            "obj" | "objw" => return self.unsupported("gravity:obj"),
            _ => return Err(invalid("gravity", "expected ce, no, so, ea, we, noea, nowe, soea, sowe")),
        };
        let offset = args.iter().skip(1).any(|a| !a.is_empty() && a.parse::<f64>() != Ok(0.0));
        if offset {
            self.unsupported("gravity offsets")?;
        }
        self.spec.gravity = (g != Gravity::Centre).then_some(g);
        Ok(())
    }

    fn format(&mut self, v: &str) -> Result<(), ParamError> {
        self.spec.format = match v {
            "png" => Format::Png,
            "jpg" | "jpeg" => Format::Jpeg,
            "webp" => Format::Webp,
            "avif" => Format::Avif,
            "gif" | "ico" | "svg" | "heic" | "bmp" | "tiff" | "jxl" | "best" => {
                return self.unsupported(&format!("format:{v}"));
            }
            _ => return Err(invalid("format", "expected png, jpg, webp or avif")),
        };
        Ok(())
    }

    fn finish(mut self) -> Result<(TransformSpec, Option<Disposition>), ParamError> {
        let spec = &mut self.spec;
        if let Some((zx, zy)) = self.zoom {
            match (spec.width, spec.height) {
                (None, None) if zx == zy && zx == 1.0 => {}
                (None, None) if zx == zy && [2.0, 3.0, 4.0].contains(&zx) => spec.scale = Some(zx as u32),
                (None, None) => return Err(invalid("zoom", "without a width or height upres zooms by 1, 2, 3 or 4")),
                (w, h) => {
                    let max = self.limits.max_dimension as f64;
                    let scaled = |v: u32, z: f64| {
                        let n = (v as f64 * z).round();
                        if n >= 1.0 && n <= max {
                            Ok(n as u32)
                        } else {
                            Err(invalid("zoom", &format!("the zoomed size must be in 1..={max}")))
                        }
                    };
                    spec.width = w.map(|v| scaled(v, zx)).transpose()?;
                    spec.height = h.map(|v| scaled(v, zy)).transpose()?;
                }
            }
        }
        let enlarge = self.enlarge.unwrap_or(false);
        let both = spec.width.is_some() && spec.height.is_some();
        // A fit from a preset stands unless the URL chose a resizing type or enlarging.
        let chosen = self.resizing_type.is_some() || self.enlarge.is_some() || spec.fit.is_none();
        if chosen && (spec.width.is_some() || spec.height.is_some()) {
            spec.fit = match self.resizing_type.unwrap_or(ResizingType::Fit) {
                ResizingType::Fill | ResizingType::FillDown if both => Some(Fit::Cover),
                ResizingType::Force if both => Some(Fit::Fill),
                // One side given: imgproxy keeps the aspect ratio for every type.
                _ if enlarge => None,
                _ => Some(Fit::Inside),
            };
        }
        Ok((self.spec, self.disposition))
    }
}

/// imgproxy options upres does not implement (400 unless `ignore_unsupported`).
const UNSUPPORTED: &[&str] = &[
    "min-width", "mw", "min-height", "mh", "extend_aspect_ratio", "extend_ar", "exar", "padding", "pd",
    "trim", "t", "rotate", "rot", "auto_rotate", "ar", "blur", "bl", "sharpen", "sh", "pixelate", "pix",
    "unsharp_masking", "ush", "blur_detections", "bd", "draw_detections", "dd", "colorize", "col",
    "gradient", "gr", "watermark", "wm", "watermark_url", "wmu", "watermark_text", "wmt", "watermark_size",
    "wms", "watermark_shadow", "wmsh", "style", "st", "strip_metadata", "sm", "keep_copyright", "kcr",
    "dpi", "strip_color_profile", "scp", "enforce_thumbnail", "eth", "format_quality", "fq",
    "autoquality", "aq", "max_bytes", "mb", "jpeg_options", "jpgo", "png_options", "pngo", "webp_options",
    "webpo", "avif_options", "avifo", "page", "pg", "pages", "pgs", "disable_animation", "da", "video_thumbnail_second",
    "vts", "video_thumbnail_keyframes", "vtk", "video_thumbnail_tile", "vtt", "video_thumbnail_animation", "vta",
    "fallback_image_url", "fiu", "skip_processing", "skp", "raw", "expires", "exp", "hashsum", "hs",
    "max_src_resolution", "msr", "max_src_file_size", "msfs", "max_animation_frames", "maf",
    "max_animation_frame_resolution", "mafr", "max_result_dimension", "mrd", "monochrome", "mc",
    "duotone", "dt", "adjust", "a", "brightness", "br", "contrast", "co", "saturation", "sa",
    "background_alpha", "bga", "crop_aspect_ratio", "crop_ar", "car", "objects_position", "obj_pos", "op",
];

fn arg<'s>(args: &[&'s str], i: usize) -> &'s str {
    args.get(i).copied().unwrap_or("")
}

fn arity(option: &'static str, args: &[&str], max: usize) -> Result<(), ParamError> {
    if args.len() > max {
        return Err(invalid(option, &format!("takes at most {max} arguments")));
    }
    Ok(())
}

fn invalid(name: &'static str, reason: &str) -> ParamError {
    ParamError::Invalid { name, reason: reason.to_string() }
}

/// imgproxy's booleans (Go's `ParseBool`); empty keeps the default.
fn boolean(option: &'static str, v: &str) -> Result<Option<bool>, ParamError> {
    match v {
        "" => Ok(None),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
        _ => Err(invalid(option, "expected a boolean (1, t, true, 0, f, false)")),
    }
}

fn positive(option: &'static str, v: &str) -> Result<Option<f64>, ParamError> {
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
        _ => Err(invalid(option, "expected a positive number")),
    }
}

#[cfg(test)]
mod tests;
