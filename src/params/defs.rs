//! Every transform option, defined once: name, aliases, documentation, parser.
//!
//! The README's URL table is checked against `OPTIONS` by a test, so docs cannot drift from the
//! parser. The canonical writer for each field lives in `canonical.rs`, which is exhaustive over
//! `TransformSpec`.

use super::{Denoise, Fit, Format, Gravity, ModelChoice, ParamError, ParamLimits, SchedulerKind, TransformSpec};

/// One transform option.
pub struct OptionDef {
    /// Canonical name, as written in canonical form.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// Accepted values, for docs.
    pub syntax: &'static str,
    /// One-line description, for docs.
    pub doc: &'static str,
    /// Validates `value` (already percent-decoded) and stores it in the spec.
    pub apply: fn(&mut TransformSpec, &str, &ParamLimits) -> Result<(), String>,
}

/// The option table, in documentation order.
pub static OPTIONS: &[OptionDef] = &[
    OptionDef {
        name: "scale",
        aliases: &[],
        syntax: "`x1` \\| `x2` \\| `x3` \\| `x4` (or `scale=1..4`)",
        doc: "Enlargement factor when no `w`/`h` box is given; with `fit=inside`, the box's cap. Default: none (the source's size). See the rules below.",
        apply: |s, v, _| {
            s.scale = Some(int_in(v, 1, 4)?);
            Ok(())
        },
    },
    OptionDef {
        name: "model",
        aliases: &["m"],
        syntax: "`auto` \\| `sd-x4` \\| `realesrgan` \\| `anime` \\| `animevideo` \\| `span` \\| `cugan` \\| `photo` \\| `lanczos` \\| a model name (file stem, lowercase)",
        doc: "Which upscaler, when pixels are missing. `auto` follows the `[[engine.auto]]` rules on the source's pixels (sd-x4 when a prompt is given).",
        apply: |s, v, _| {
            if v == "auto" {
                s.model = ModelChoice::Auto;
                return Ok(());
            }
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return Err("expected `auto` or a model name of [a-z0-9._-], at most 64 bytes".into());
            }
            s.model = ModelChoice::Named(v.to_string());
            Ok(())
        },
    },
    OptionDef {
        name: "denoise",
        aliases: &[],
        syntax: "`conservative` \\| `none` \\| `1` \\| `2` \\| `3`",
        doc: "Denoise level of a model that has levels (`model=cugan`, `cugan-pro`): picks the `<model>-conservative`, `-no-denoise` or `-denoise<N>x` files. Default: the model as named (`cugan` is conservative).",
        apply: |s, v, _| {
            s.denoise = Some(match v {
                "conservative" => Denoise::Conservative,
                "none" | "0" => Denoise::None,
                "1" | "2" | "3" => Denoise::Level(v.as_bytes()[0] - b'0'),
                _ => return Err("expected conservative, none, 1, 2 or 3".into()),
            });
            Ok(())
        },
    },
    OptionDef {
        name: "prompt",
        aliases: &["p"],
        syntax: "percent-encoded UTF-8",
        doc: "Text guiding the sd-x4 model.",
        apply: |s, v, l| {
            s.prompt = Some(text(v, l)?);
            Ok(())
        },
    },
    OptionDef {
        name: "neg",
        aliases: &["negative_prompt"],
        syntax: "percent-encoded UTF-8",
        doc: "Negative prompt for sd-x4.",
        apply: |s, v, l| {
            s.negative_prompt = Some(text(v, l)?);
            Ok(())
        },
    },
    OptionDef {
        name: "noise",
        aliases: &["noise_level"],
        syntax: "`0..350`",
        doc: "sd-x4 low-res noise augmentation. Default 20.",
        apply: |s, v, _| {
            s.noise_level = Some(int_in(v, 0, 350)?);
            Ok(())
        },
    },
    OptionDef {
        name: "steps",
        aliases: &[],
        syntax: "`1..200`",
        doc: "sd-x4 denoising steps. Default from `[sd] url_default_steps`.",
        apply: |s, v, _| {
            s.steps = Some(int_in(v, 1, 200)?);
            Ok(())
        },
    },
    OptionDef {
        name: "scheduler",
        aliases: &[],
        syntax: "`ddim`, `dpm`",
        doc: "sd-x4 denoising scheduler: DDIM (eta 0) or DPM-Solver++ (multistep, order 2). Default from `[sd] url_default_scheduler`.",
        apply: |s, v, _| {
            s.scheduler = Some(SchedulerKind::parse(v).ok_or_else(|| "expected `ddim` or `dpm`".to_string())?);
            Ok(())
        },
    },
    OptionDef {
        name: "guidance",
        aliases: &["g"],
        syntax: "`0..30` (decimal)",
        doc: "sd-x4 classifier-free guidance scale. Default 9.",
        apply: |s, v, _| {
            s.guidance = Some(float_in(v, 0.0, 30.0)?);
            Ok(())
        },
    },
    OptionDef {
        name: "seed",
        aliases: &[],
        syntax: "`0..2^64-1`",
        doc: "sd-x4 random seed. Default 0.",
        apply: |s, v, _| {
            s.seed = Some(v.parse::<u64>().map_err(|_| "expected an unsigned 64-bit integer".to_string())?);
            Ok(())
        },
    },
    OptionDef {
        name: "w",
        aliases: &["width"],
        syntax: "`1..16384`",
        doc: "Output width box in CSS pixels (times `dpr`).",
        apply: |s, v, l| {
            s.width = Some(int_in(v, 1, l.max_dimension)?);
            Ok(())
        },
    },
    OptionDef {
        name: "h",
        aliases: &["height"],
        syntax: "`1..16384`",
        doc: "Output height box in CSS pixels (times `dpr`).",
        apply: |s, v, l| {
            s.height = Some(int_in(v, 1, l.max_dimension)?);
            Ok(())
        },
    },
    OptionDef {
        name: "fit",
        aliases: &[],
        syntax: "`contain` \\| `cover` \\| `fill` \\| `inside`",
        doc: "How the output meets the `w`×`h` box. Default `contain`; `inside` never exceeds `source × scale` (no scale: the source).",
        apply: |s, v, _| {
            s.fit = Some(match v {
                "contain" => Fit::Contain,
                "cover" => Fit::Cover,
                "fill" => Fit::Fill,
                "inside" => Fit::Inside,
                _ => return Err("expected contain, cover, fill or inside".into()),
            });
            Ok(())
        },
    },
    OptionDef {
        name: "gravity",
        aliases: &[],
        syntax: "`centre` \\| `north` \\| `south` \\| `east` \\| `west` \\| `northeast` \\| `northwest` \\| `southeast` \\| `southwest` \\| `smart`",
        doc: "Which part `fit=cover` keeps when it crops. `smart` keeps the most interesting window (edges, saturated colour, skin tones). Default `centre`.",
        apply: |s, v, _| {
            s.gravity = Some(gravity(v).ok_or("expected centre, north, south, east, west, a corner (northeast…) or smart")?);
            Ok(())
        },
    },
    OptionDef {
        name: "dpr",
        aliases: &[],
        syntax: "`1..4` (decimal)",
        doc: "Device pixel ratio multiplying `w` and `h`. Default 1.",
        apply: |s, v, _| {
            s.dpr = Some(float_in(v, 1.0, 4.0)?);
            Ok(())
        },
    },
    OptionDef {
        name: "format",
        aliases: &["f"],
        syntax: "`auto` \\| `avif` \\| `webp` \\| `jpeg` \\| `png`",
        doc: "Output format; `auto` picks AVIF when `Accept` lists it (unless `output.auto_avif` is off), else WebP when listed, else JPEG (PNG for alpha).",
        apply: |s, v, _| {
            s.format = match v {
                "auto" => Format::Auto,
                "avif" => Format::Avif,
                "webp" => Format::Webp,
                "jpeg" | "jpg" => Format::Jpeg,
                "png" => Format::Png,
                _ => return Err("expected auto, avif, webp, jpeg or png".into()),
            };
            Ok(())
        },
    },
    OptionDef {
        name: "q",
        aliases: &["quality"],
        syntax: "`1..100`",
        doc: "Encoder quality (AVIF, WebP, JPEG). Default per format from the config.",
        apply: |s, v, _| {
            s.quality = Some(int_in(v, 1, 100)? as u8);
            Ok(())
        },
    },
    OptionDef {
        name: "origin",
        aliases: &[],
        syntax: "an origin name from `[origins]`",
        doc: "Which configured origin holds the source. Default `default`.",
        apply: |s, v, _| {
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err("expected a name of [A-Za-z0-9_-]".into());
            }
            s.origin = Some(v.to_string());
            Ok(())
        },
    },
    OptionDef {
        name: "preset",
        aliases: &[],
        syntax: "a preset name from `[presets]`",
        doc: "Options from a named preset; options in the URL win. A `default` preset applies to every request.",
        apply: |s, v, l| {
            let preset = l.presets.get(v).ok_or_else(|| ParamError::UnknownPreset(v.chars().take(64).collect()).to_string())?;
            s.fill_from(preset);
            Ok(())
        },
    },
];

/// `gravity=` values (`center` is accepted for `centre`).
pub fn gravity(v: &str) -> Option<Gravity> {
    Some(match v {
        "centre" | "center" => Gravity::Centre,
        "north" => Gravity::North,
        "south" => Gravity::South,
        "east" => Gravity::East,
        "west" => Gravity::West,
        "northeast" => Gravity::NorthEast,
        "northwest" => Gravity::NorthWest,
        "southeast" => Gravity::SouthEast,
        "southwest" => Gravity::SouthWest,
        "smart" => Gravity::Smart,
        _ => return None,
    })
}

/// What a path segment is, if it is an option at all.
pub enum Recognised {
    Option(&'static OptionDef, String),
    UnknownOption(String),
}

/// Looks at a raw (still percent-encoded) segment: `xN`, `name=value`, or not an option.
pub fn recognise(raw: &str) -> Option<Recognised> {
    if let Some(digits) = raw.strip_prefix('x') {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Recognised::Option(lookup("scale").expect("scale is defined"), digits.to_string()));
        }
    }
    let (name, value) = raw.split_once('=')?;
    match lookup(name) {
        Some(def) => Some(Recognised::Option(def, value.to_string())),
        None => Some(Recognised::UnknownOption(
            // Echoed back in a 400: keep it short and printable.
            name.chars().filter(|c| !c.is_control()).take(64).collect(),
        )),
    }
}

/// Finds an option by name or alias.
pub fn lookup(name: &str) -> Option<&'static OptionDef> {
    OPTIONS.iter().find(|d| d.name == name || d.aliases.contains(&name))
}

fn int_in<T>(v: &str, lo: T, hi: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    // Leading `+` or zeros would give two spellings of one value; canonical form rules them out.
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || (v.len() > 1 && v.starts_with('0')) {
        return Err(format!("expected an integer in {lo}..={hi}"));
    }
    match v.parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(format!("expected an integer in {lo}..={hi}")),
    }
}

fn float_in(v: &str, lo: f32, hi: f32) -> Result<f32, String> {
    let ok_chars = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match v.parse::<f32>() {
        Ok(n) if ok_chars && n.is_finite() && n >= lo && n <= hi => Ok(n),
        _ => Err(format!("expected a number in {lo}..={hi}")),
    }
}

fn text(v: &str, limits: &ParamLimits) -> Result<String, String> {
    if v.len() > limits.max_prompt_bytes {
        return Err(format!("longer than {} bytes", limits.max_prompt_bytes));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err("control characters are not allowed".into());
    }
    Ok(v.to_string())
}

/// The README's URL option table, generated from `OPTIONS` (a test keeps the README in sync).
pub fn markdown_table() -> String {
    let mut s = String::from("| option | aliases | values | meaning |\n|---|---|---|---|\n");
    for d in OPTIONS {
        let aliases = if d.aliases.is_empty() {
            "—".to_string()
        } else {
            d.aliases.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
        };
        s.push_str(&format!("| `{}` | {} | {} | {} |\n", d.name, aliases, d.syntax, d.doc));
    }
    s
}
