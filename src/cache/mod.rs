//! The two cache tiers and the value they hold.
//!
//! - `memory`: moka, keyed by `RequestKey` (URL meaning), weighted by bytes, with a TTL that
//!   bounds how long a URL maps to a result before the origin is read again.
//! - `store`: an object store keyed by `ResultKey` (content meaning), shared by replicas.
//! - `claim`: claims in that store, so replicas sharing it compute each result once.
//!
//! A cache failure never fails a request: the store reports errors, the caller logs them and
//! goes on uncached (`CacheBypass` in metrics).

pub mod claim;
mod claim_cell;
pub mod memory;
pub mod store;

use bytes::Bytes;

use crate::imaging::encode::OutputFormat;
use crate::key::ResultKey;

/// An encoded result and what the response needs to describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedResult {
    pub key: ResultKey,
    pub bytes: Bytes,
    pub format: OutputFormat,
    /// Engine id with weights digest (`X-Upres-Model`).
    pub model: String,
    pub width: u32,
    pub height: u32,
}
