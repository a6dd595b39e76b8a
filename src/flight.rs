//! What a flight (one computation shared by every request waiting for the same result)
//! delivers. Below `app.rs`, which holds the flights, and above nothing of the request path.

use std::sync::Arc;

use crate::cache::{CachedResult, SourceMeta};
use crate::error::ProxyError;
use crate::respond::{CacheOutcome, Timings};

/// What a flight delivers to every waiter.
pub type FlightValue = Result<Arc<Computed>, ProxyError>;

/// A produced (or store-found) result and how it was obtained.
#[derive(Debug)]
pub struct Computed {
    pub result: Arc<CachedResult>,
    /// `Miss` or `HitStore`, for the leader's own response.
    pub outcome: CacheOutcome,
    pub timings: Timings,
}

impl Computed {
    /// The same, with the result stamped with its URL's source (tag, `Last-Modified`).
    pub fn for_source(&self, source: SourceMeta) -> Computed {
        Computed { result: Arc::new(self.result.for_source(source)), outcome: self.outcome, timings: self.timings.clone() }
    }
}
