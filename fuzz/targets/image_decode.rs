//! The `image_decode` target's property, shared by the cargo-fuzz target
//! (`fuzz_targets/image_decode.rs`, nightly) and the stable replay-and-mutate run in
//! `cargo test` (`tests/it/fuzz.rs`): image probe + decode with upres's limits. Any bytes give a
//! header or a classified error, never a panic, and decoding never allocates beyond what the
//! pixel limit allows.

use upres::imaging::decode::{decode, probe};

/// Smaller than the server's 16 MP so each run stays fast; the logic is the same.
pub const MAX_PIXELS: u64 = 4_000_000;

pub fn check(data: &[u8]) {
    let Ok(header) = probe(data, MAX_PIXELS) else { return };
    assert!(header.width > 0 && header.height > 0);
    assert!(u64::from(header.width) * u64::from(header.height) <= MAX_PIXELS);
    if let Ok(decoded) = decode(data, MAX_PIXELS) {
        let (w, h) = (decoded.rgb.width, decoded.rgb.height);
        assert_eq!((w, h), (header.width, header.height), "probe and decode disagree on the size");
        if let Some(alpha) = &decoded.alpha {
            assert_eq!(alpha.len() as u64, u64::from(w) * u64::from(h));
        }
    }
}
