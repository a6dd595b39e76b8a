//! The two cache tiers and the value they hold.
//!
//! - `memory`: moka, keyed by `RequestKey` (URL meaning), weighted by bytes, with a TTL that
//!   bounds how long a URL maps to a result before the origin is read again.
//! - `store`: an object store keyed by `ResultKey` (content meaning), shared by replicas.
//! - `claim`: claims in that store, so replicas sharing it compute each result once.
//! - `claim_cell`: one object changed only by compare-and-swap (claims, job records).
//! - `timed`: the time limit on every call to that store.
//! - `writer`: results written to the store after the response, bounded and counted.
//!
//! A cache failure never fails a request: the store reports errors, the caller logs them and
//! goes on uncached (`CacheBypass` in metrics).

pub mod claim;
pub mod claim_cell;
pub mod memory;
pub mod store;
pub mod timed;
pub mod writer;

use bytes::Bytes;

use std::time::SystemTime;

use crate::imaging::consistency::Score;
use crate::imaging::encode::OutputFormat;
use crate::key::{ResultKey, SourceTag};

/// What a URL's result knows about the source it came from: the CDN purge tag and the origin's
/// `Last-Modified`. Kept in the memory tier (keyed by URL), never in the store (keyed by content,
/// shared by every URL with the same bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceMeta {
    pub tag: SourceTag,
    pub modified: Option<SystemTime>,
}

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
    /// The source, for URL results (`None` for uploads and store reads).
    pub source: Option<SourceMeta>,
    /// The model output's consistency with its input (`X-Upres-Consistency`); `None` when no
    /// model ran (a plain resize) or for results stored before scores were.
    pub consistency: Option<Score>,
}

impl CachedResult {
    /// The same result, stamped with the source it was made from for this URL.
    pub fn for_source(&self, source: SourceMeta) -> CachedResult {
        CachedResult { source: Some(source), ..self.clone() }
    }
}
