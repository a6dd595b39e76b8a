//! libFuzzer on `targets/url_parse.rs` (the property is there, shared with `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../targets/url_parse.rs"]
mod target;

fuzz_target!(|data: &[u8]| target::check(data));
