//! Pixels in and out: decoding with limits, Lanczos resampling, encoding, and the 8-bit
//! resize-only path (JPEG shrink-on-load) for outputs that need no model, and the smart crop's
//! window choice (`attention`).
//!
//! Everything here is synchronous and CPU-bound; callers run it on the blocking pool.

pub mod attention;
pub mod avif;
pub mod colour;
pub mod consistency;
pub mod content;
pub mod decode;
pub mod encode;
pub mod jpeg;
pub mod metadata;
pub mod resize;
pub mod resize_only;
