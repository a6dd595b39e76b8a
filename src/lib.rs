//! upres: an on-the-fly image super-resolution proxy.
#![deny(unsafe_code)]

pub mod config;
pub mod engine;
pub mod error;
pub mod imaging;
pub mod key;
pub mod ml;
pub mod params;
pub mod telemetry;
