//! The canonical form of a `TransformSpec`: options sorted by name, values normalised.
//!
//! Two URLs that mean the same transform (options in another order, aliases, `jpg` for `jpeg`,
//! explicit defaults, options that have no effect) have the same canonical form, and therefore
//! the same request key. `parse(canonical(s))` returns `normalized(s)` (property-tested in
//! `tests.rs`).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{Fit, Format, Gravity, ModelChoice, TransformSpec};

/// Bytes left unescaped in canonical prompt values: unreserved characters only, so the form is
/// a valid path segment and unambiguous.
const VALUE_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `spec` without options at their default or without effect: `x1`, `fit=contain`, `dpr=1`,
/// `origin=default`, `gravity=centre`; `fit` and `dpr` without a `w`/`h` box; `gravity` without
/// `fit=cover`; a scale beside a box unless `fit=inside` (only `inside` reads it, as its cap:
/// `plan.rs`).
pub fn normalized(spec: &TransformSpec) -> TransformSpec {
    let mut s = spec.clone();
    let boxed = s.width.is_some() || s.height.is_some();
    if s.fit == Some(Fit::Contain) || !boxed {
        s.fit = None;
    }
    if s.dpr == Some(1.0) || !boxed {
        s.dpr = None;
    }
    if s.scale == Some(1) || (boxed && s.fit != Some(Fit::Inside)) {
        s.scale = None;
    }
    if s.gravity == Some(Gravity::Centre) || s.fit != Some(Fit::Cover) {
        s.gravity = None;
    }
    if s.origin.as_deref() == Some("default") {
        s.origin = None;
    }
    s
}

/// Writes `normalized(spec)` as `/`-joined `name=value` segments sorted by name (no leading
/// slash). Options at their "unset" value are omitted.
pub fn canonical(spec: &TransformSpec) -> String {
    let spec = &normalized(spec);
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
    } = spec;
    let mut parts: Vec<(&str, String)> = Vec::new();
    if let Some(v) = scale {
        parts.push(("scale", v.to_string()));
    }
    if let ModelChoice::Named(m) = model {
        parts.push(("model", m.clone()));
    }
    if let Some(v) = denoise {
        parts.push(("denoise", v.as_str().to_string()));
    }
    if let Some(v) = prompt {
        parts.push(("prompt", utf8_percent_encode(v, VALUE_ESCAPE).to_string()));
    }
    if let Some(v) = negative_prompt {
        parts.push(("neg", utf8_percent_encode(v, VALUE_ESCAPE).to_string()));
    }
    if let Some(v) = noise_level {
        parts.push(("noise", v.to_string()));
    }
    if let Some(v) = steps {
        parts.push(("steps", v.to_string()));
    }
    if let Some(v) = scheduler {
        parts.push(("scheduler", v.as_str().to_string()));
    }
    if let Some(v) = guidance {
        parts.push(("guidance", number(*v)));
    }
    if let Some(v) = seed {
        parts.push(("seed", v.to_string()));
    }
    if let Some(v) = width {
        parts.push(("w", v.to_string()));
    }
    if let Some(v) = height {
        parts.push(("h", v.to_string()));
    }
    if let Some(v) = fit {
        parts.push(("fit", v.as_str().to_string()));
    }
    if let Some(v) = gravity {
        parts.push(("gravity", v.as_str().to_string()));
    }
    if let Some(v) = dpr {
        parts.push(("dpr", number(*v)));
    }
    if *format != Format::Auto {
        parts.push(("format", format.as_str().to_string()));
    }
    if let Some(v) = quality {
        parts.push(("q", v.to_string()));
    }
    if let Some(v) = origin {
        parts.push(("origin", v.clone()));
    }
    parts.sort_by(|a, b| a.0.cmp(b.0));
    parts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("/")
}

/// Shortest decimal that parses back to the same `f32` (Rust's `Display` guarantees that).
fn number(v: f32) -> String {
    let s = v.to_string();
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}
