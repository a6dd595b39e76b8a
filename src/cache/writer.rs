//! Results reach the store tier after the response, not before it: a slow store must not make
//! a computed result late.
//!
//! - At most `cache.store.max_pending_writes` writes are in flight (each holds its encoded bytes).
//!   A result arriving when all slots are taken is not written: it is served (and kept in the
//!   memory tier) as usual, the skip is logged and counted (`event="write_dropped"`), and a later
//!   miss for it computes and writes it again.
//! - A failed write is logged and retried once after a short pause; a second failure is logged
//!   and counted (`event="write_failed"`). Every outcome is counted: `write`, `write_retried`,
//!   `write_failed`, `write_dropped` on `upres_cache_events_total{tier="store"}`, and
//!   `upres_store_writes_pending` shows the writes in flight.
//! - While a write is in flight its result is readable here (`pending`), so `/r/<key>` and other
//!   requests for the same result find it before the store has it.
//! - On shutdown the server waits for the writes in flight (`drain`, within `drain_timeout`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::warn;

use super::store::StoreTier;
use super::CachedResult;
use crate::key::ResultKey;
use crate::telemetry::Metrics;

/// Pause before the one retry of a failed write.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub struct StoreWriter {
    store: Option<StoreTier>,
    slots: Arc<Semaphore>,
    capacity: u32,
    pending: Arc<parking_lot::Mutex<HashMap<ResultKey, Arc<CachedResult>>>>,
    metrics: Arc<Metrics>,
}

impl StoreWriter {
    /// Without a store, nothing is written (`then` still runs).
    pub fn new(store: Option<StoreTier>, max_pending: usize, metrics: Arc<Metrics>) -> StoreWriter {
        let capacity = u32::try_from(max_pending.max(1)).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        StoreWriter {
            store,
            slots: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            pending: Default::default(),
            metrics,
        }
    }

    /// Writes `result` in the background, then runs `then` (the claim's release, so replicas
    /// waiting on the claim find the result once it is gone). Returns at once.
    pub fn write_behind(&self, result: Arc<CachedResult>, then: impl Future<Output = ()> + Send + 'static) {
        let Some(store) = self.store.clone() else {
            tokio::spawn(then);
            return;
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.cache_event("store", "write_dropped");
            warn!(key = %result.key.short(), pending = self.capacity, "result store writes are backed up; this result is served but not stored");
            tokio::spawn(then);
            return;
        };
        self.pending.lock().insert(result.key, result.clone());
        self.metrics.store_writes_pending.inc();
        let (pending, metrics) = (self.pending.clone(), self.metrics.clone());
        // Under the request's span: a failed write logs its request and trace ids.
        crate::trace_context::spawn(async move {
            let written = write_with_one_retry(&store, &result, &metrics).await;
            metrics.cache_event("store", if written { "write" } else { "write_failed" });
            {
                let mut p = pending.lock();
                if p.get(&result.key).is_some_and(|r| Arc::ptr_eq(r, &result)) {
                    p.remove(&result.key);
                }
            }
            metrics.store_writes_pending.dec();
            then.await;
            drop(slot);
        });
    }

    /// A result whose write is still in flight.
    pub fn pending(&self, key: &ResultKey) -> Option<CachedResult> {
        self.pending.lock().get(key).map(|r| CachedResult::clone(r))
    }

    /// Resolves once no write is in flight.
    pub async fn settled(&self) {
        let _all = self.slots.acquire_many(self.capacity).await;
    }

    /// Waits at most `limit` for the writes in flight; returns how many did not finish.
    pub async fn drain(&self, limit: Duration) -> usize {
        match tokio::time::timeout(limit, self.settled()).await {
            Ok(()) => 0,
            Err(_) => self.capacity as usize - self.slots.available_permits(),
        }
    }
}

async fn write_with_one_retry(store: &StoreTier, result: &CachedResult, metrics: &Metrics) -> bool {
    let key = result.key.short();
    let Err(first) = store.put(result).await else { return true };
    metrics.cache_event("store", "error");
    metrics.cache_event("store", "write_retried");
    warn!(key = %key, error = %first, "result store write failed; retrying once");
    tokio::time::sleep(RETRY_PAUSE).await;
    match store.put(result).await {
        Ok(()) => true,
        Err(e) => {
            metrics.cache_event("store", "error");
            warn!(key = %key, error = %e, "result store write failed again; the result is served but not stored");
            false
        }
    }
}
