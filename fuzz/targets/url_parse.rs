//! The `url_parse` target's property, shared by the cargo-fuzz target
//! (`fuzz_targets/url_parse.rs`, nightly) and the stable replay-and-mutate run in `cargo test`
//! (`tests/it/fuzz.rs`): `params::parse` on any bytes never panics; whatever it accepts has a
//! safe source key and a canonical form that parses back to the same (normalised) spec (the
//! cache key's promise).

use upres::params::{canonical, normalized, parse, ParamLimits};

pub fn check(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let limits = ParamLimits::default();
    let Ok(parsed) = parse(path, &limits) else { return };
    // The source key can never leave the origin root.
    assert!(!parsed.source.is_empty());
    for seg in parsed.source.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "unsafe source {:?}", parsed.source);
        assert!(!seg.contains(['\\', '\0']), "unsafe source {:?}", parsed.source);
    }
    // Canonical round trip.
    let c = canonical(&parsed.spec);
    let again = if c.is_empty() { "/-/img.png".to_string() } else { format!("/{c}/-/img.png") };
    let back = parse(&again, &limits).unwrap_or_else(|e| panic!("canonical form {again:?} does not parse: {e}"));
    assert_eq!(canonical(&back.spec), c, "canonical form is not a fixpoint");
    // The canonical form drops defaults and options without effect (`params::normalized`), so
    // it parses back to the normalised spec, which means the same transform.
    assert_eq!(back.spec, normalized(&parsed.spec), "canonical form {c:?} changes the spec");
}
