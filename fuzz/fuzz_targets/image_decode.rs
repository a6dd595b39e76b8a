//! libFuzzer on `targets/image_decode.rs` (the property is there, shared with `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../targets/image_decode.rs"]
mod target;

fuzz_target!(|data: &[u8]| target::check(data));
