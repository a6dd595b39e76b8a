//! Pixels in and out: decoding with limits, Lanczos resampling, encoding.
//!
//! Everything here is synchronous and CPU-bound; callers run it on the blocking pool.

pub mod decode;
pub mod encode;
pub mod resize;
