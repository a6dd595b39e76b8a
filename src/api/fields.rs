//! API form fields → `TransformSpec`, through the URL option table.
//!
//! Each field is an alias of a URL option (`params/defs.rs`) and is validated by that option's
//! own parser, so the REST API and URLs share ranges, model names and prompt limits. Values are
//! taken literally (no percent-decoding). An empty value is the same as an omitted field (browser
//! forms send empty inputs). Errors name the API field, never the URL option.

use crate::error::{Classify, ErrorClass};
use crate::params::{defs, ParamLimits, TransformSpec};

/// API field name → URL option name, in documentation order.
pub static FIELDS: &[(&str, &str)] = &[
    ("scale", "scale"),
    ("model", "model"),
    ("denoise", "denoise"),
    ("prompt", "prompt"),
    ("negative_prompt", "neg"),
    ("noise_level", "noise"),
    ("guidance_scale", "guidance"),
    ("num_inference_steps", "steps"),
    ("scheduler", "scheduler"),
    ("seed", "seed"),
    ("format", "format"),
    ("quality", "q"),
    ("width", "w"),
    ("height", "h"),
    ("fit", "fit"),
    ("dpr", "dpr"),
];

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum FieldError {
    #[error("unknown field `{0}`; the fields are `image`, {known}", known = known())]
    Unknown(String),
    #[error("field `{0}` is given more than once")]
    Duplicate(String),
    #[error("invalid value for field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl Classify for FieldError {
    fn class(&self) -> ErrorClass {
        ErrorClass::BadRequest
    }
}

fn known() -> String {
    FIELDS.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", ")
}

/// The spec API fields start from: the REST API is for upscaling, so `scale` defaults to 4
/// there (a URL without a scale keeps the source's size). With a `width`/`height` box the box
/// decides, as for URLs.
pub fn api_base() -> TransformSpec {
    TransformSpec { scale: Some(4), ..TransformSpec::default() }
}

/// Builds a spec from `base` plus `(name, value)` pairs; a name may appear once.
pub fn spec<'a>(
    base: &TransformSpec,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    limits: &ParamLimits,
) -> Result<TransformSpec, FieldError> {
    let mut spec = base.clone();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        let Some(&(field, option)) = FIELDS.iter().find(|(f, _)| *f == name) else {
            return Err(FieldError::Unknown(super::form::printable(name)));
        };
        if seen.contains(&field) {
            return Err(FieldError::Duplicate(field.to_string()));
        }
        seen.push(field);
        if value.is_empty() {
            continue;
        }
        let def = defs::lookup(option).expect("every API field maps to a URL option");
        (def.apply)(&mut spec, value, limits).map_err(|reason| FieldError::Invalid { field: field.to_string(), reason })?;
    }
    Ok(spec)
}

/// A JSON value from the batch `params` part as field text: strings as they are, numbers in
/// their JSON spelling; anything else is invalid.
pub fn json_text(field: &str, value: &serde_json::Value) -> Result<Option<String>, FieldError> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(FieldError::Invalid { field: super::form::printable(field), reason: "expected a string or a number".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Format, ModelChoice};

    #[test]
    fn fields_map_onto_url_options_with_the_same_validation() {
        let l = ParamLimits::default();
        let s = spec(
            &TransformSpec::default(),
            [("scale", "2"), ("model", "lanczos"), ("noise_level", "30"), ("num_inference_steps", "5"), ("format", "png"), ("prompt", "")],
            &l,
        )
        .unwrap();
        assert_eq!(s.scale, Some(2));
        assert_eq!(s.model, ModelChoice::Named("lanczos".into()));
        assert_eq!((s.noise_level, s.steps, s.format, s.prompt), (Some(30), Some(5), Format::Png, None));
        let e = spec(&TransformSpec::default(), [("noise_level", "351")], &l).unwrap_err();
        assert!(e.to_string().contains("`noise_level`") && e.to_string().contains("0..=350"), "{e}");
        let e = spec(&TransformSpec::default(), [("prompt", &*"a".repeat(2000))], &l).unwrap_err();
        assert!(e.to_string().contains("`prompt`"), "{e}");
        assert!(matches!(spec(&TransformSpec::default(), [("zoom", "2")], &l), Err(FieldError::Unknown(_))));
        assert!(matches!(spec(&TransformSpec::default(), [("seed", "1"), ("seed", "2")], &l), Err(FieldError::Duplicate(_))));
    }

    #[test]
    fn later_sources_override_a_base() {
        let l = ParamLimits::default();
        let base = spec(&TransformSpec::default(), [("scale", "2"), ("format", "png")], &l).unwrap();
        let item = spec(&base, [("scale", "3")], &l).unwrap();
        assert_eq!((item.scale, item.format), (Some(3), Format::Png));
    }

    #[test]
    fn every_field_names_a_url_option() {
        for (field, option) in FIELDS {
            assert!(defs::lookup(option).is_some(), "{field} → {option}");
        }
    }
}
