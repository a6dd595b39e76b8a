//! Cross-replica coalescing: a replica about to compute a result claims it in the shared store,
//! so the other replicas wait for that result instead of computing it again.
//!
//! Owns the claim objects (`claims/<result key hex>` next to `results/`, holding
//! `{"owner", "expires_unix_ms"}` as JSON) and the wait loop. It does not own local coalescing
//! (`coalesce.rs`, one flight per request key inside a process) nor the results themselves
//! (`store.rs`, which this module only reads while waiting).
//!
//! ```text
//! wait_or_claim(key):
//!   create claim (PutMode::Create = If-None-Match: *) ─ won ──────────────→ Compute(held)
//!     └ exists → read it ─ gone (released meanwhile) → try again at once
//!                         ├ expired (crashed owner) → take over: PutMode::Update with its ETag
//!                         │   (delete + create where the backend has no Update) → Compute(held)
//!                         └ live → sleep (backoff) → result in the store? → Found(result)
//!                                                  → past the wait limit? → Compute(unclaimed)
//! ```
//! The holder deletes its claim after writing the result (or on failure or cancellation, when
//! `Held` drops), so waiters find the result at their next poll, or, if the owner failed, one of
//! them claims and computes. Expiry uses the replicas' wall clocks: keep them in sync (NTP) to
//! well within `cache.claims.ttl`. A store error never fails a request: the replica computes
//! unclaimed, as it would without a shared store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::store::{Lookup, StoreTier};
use super::CachedResult;
use crate::config::ClaimsConfig;
use crate::key::ResultKey;
use crate::telemetry::Metrics;

/// Longest pause between two polls of a waiting replica.
const MAX_POLL: Duration = Duration::from_secs(1);

/// The content of a claim object.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ClaimRecord {
    /// Which replica computes (`host-pid-random`), for logs and for a safe release.
    pub owner: String,
    /// Past this instant (Unix milliseconds) the claim is abandoned and may be taken over.
    pub expires_unix_ms: u64,
}

/// Claims in one shared store, made by this process.
#[derive(Clone)]
pub struct Claims {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    results: StoreTier,
    owner: Arc<str>,
    ttl: Duration,
    first_poll: Duration,
    metrics: Arc<Metrics>,
}

/// What the caller does next.
pub enum Turn {
    /// Compute the result, then `release` (the claim may be absent: store error, wait limit).
    Compute(Held),
    /// Another replica stored the result while we waited.
    Found(CachedResult),
}

/// The outcome of one attempt at taking the claim.
enum Take {
    Won { took_over: bool },
    Live,
    Gone,
}

impl Claims {
    pub fn new(results: StoreTier, cfg: &ClaimsConfig, metrics: Arc<Metrics>) -> Claims {
        let bucket = results.bucket().clone();
        Claims {
            store: bucket.store,
            prefix: bucket.prefix,
            results,
            owner: owner_id().into(),
            ttl: cfg.ttl,
            first_poll: cfg.poll,
            metrics,
        }
    }

    /// This process's owner id, as written in its claims.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The claim object of `key` (tests and operators read it).
    pub fn location(&self, key: &ResultKey) -> Path {
        self.prefix.parts().chain(Path::from_iter(["claims", &key.hex()]).parts()).collect()
    }

    /// Claims `key`, or waits (at most `wait_limit`) for the replica that holds it.
    pub async fn wait_or_claim(&self, key: &ResultKey, wait_limit: Duration) -> Turn {
        let until = Instant::now() + wait_limit;
        let mut pause = self.first_poll;
        let mut waited = false;
        loop {
            match self.try_take(key).await {
                Ok(Take::Won { took_over }) => {
                    self.metrics.cache_event("claim", if took_over { "takeover" } else { "acquired" });
                    return Turn::Compute(self.held(key));
                }
                Ok(Take::Gone) => continue,
                Ok(Take::Live) => {}
                Err(e) => {
                    self.metrics.cache_event("claim", "error");
                    warn!(key = %key.short(), error = %e, "claim failed; computing unclaimed");
                    return Turn::Compute(Held::none());
                }
            }
            if !waited {
                waited = true;
                self.metrics.cache_event("claim", "wait");
                debug!(key = %key.short(), "another replica computes this result; waiting");
            }
            if Instant::now() + pause > until {
                self.metrics.cache_event("claim", "wait_timeout");
                return Turn::Compute(Held::none());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
            if let Ok(Lookup::Hit(found)) = self.results.get(key).await {
                self.metrics.cache_event("claim", "found");
                return Turn::Found(found);
            }
        }
    }

    async fn try_take(&self, key: &ResultKey) -> object_store::Result<Take> {
        let path = self.location(key);
        match self.store.put_opts(&path, self.record(), PutMode::Create.into()).await {
            Ok(_) => return Ok(Take::Won { took_over: false }),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let current = match self.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(Take::Gone),
            Err(e) => return Err(e),
        };
        let version = UpdateVersion { e_tag: current.meta.e_tag.clone(), version: current.meta.version.clone() };
        let bytes = match current.bytes().await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(Take::Gone),
            Err(e) => return Err(e),
        };
        // An unreadable claim (torn write, another version's format) counts as abandoned.
        let record = serde_json::from_slice::<ClaimRecord>(&bytes).ok();
        if record.as_ref().is_some_and(|r| r.expires_unix_ms > now_ms()) {
            return Ok(Take::Live);
        }
        debug!(key = %key.short(), owner = %record.map(|r| r.owner).unwrap_or_default(), "taking over an expired claim");
        let opts = PutOptions::from(PutMode::Update(version));
        match self.store.put_opts(&path, self.record(), opts).await {
            Ok(_) => Ok(Take::Won { took_over: true }),
            // Another replica took it over first, or its owner released it: look again.
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => Ok(Take::Live),
            Err(object_store::Error::NotFound { .. }) => Ok(Take::Gone),
            // Local folders have no compare-and-swap: delete, then race on create like anyone.
            Err(object_store::Error::NotImplemented { .. }) => {
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                match self.store.put_opts(&path, self.record(), PutMode::Create.into()).await {
                    Ok(_) => Ok(Take::Won { took_over: true }),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(Take::Live),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn record(&self) -> PutPayload {
        let record = ClaimRecord {
            owner: self.owner.to_string(),
            expires_unix_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        PutPayload::from(serde_json::to_vec(&record).expect("claim record serialises"))
    }

    fn held(&self, key: &ResultKey) -> Held {
        Held { claim: Some((self.clone(), self.location(key))) }
    }

    /// Deletes the claim at `path` if it is still ours (it may have expired and been taken over).
    async fn release(&self, path: &Path) {
        let ours = match self.store.get(path).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => serde_json::from_slice::<ClaimRecord>(&b).is_ok_and(|r| *r.owner == *self.owner),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !ours {
            return;
        }
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => self.metrics.cache_event("claim", "released"),
            Err(e) => {
                self.metrics.cache_event("claim", "error");
                warn!(claim = %path, error = %e, "could not release a claim; it expires by itself");
            }
        }
    }
}

/// A claim this replica holds (or none). Release it after the result is stored; dropping it
/// unreleased (failure, cancellation) releases it in the background.
#[must_use = "release the claim after storing the result"]
pub struct Held {
    claim: Option<(Claims, Path)>,
}

impl Held {
    /// No claim: claims are off, or the store failed, or the wait limit passed.
    pub fn none() -> Held {
        Held { claim: None }
    }

    pub fn is_claimed(&self) -> bool {
        self.claim.is_some()
    }

    pub async fn release(mut self) {
        if let Some((claims, path)) = self.claim.take() {
            claims.release(&path).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((claims, path)) = self.claim.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { claims.release(&path).await });
            }
        }
    }
}

/// `Claims` optional: without a shared store every replica just computes.
pub async fn wait_or_claim(claims: Option<&Claims>, key: &ResultKey, wait_limit: Duration) -> Turn {
    match claims {
        Some(c) => c.wait_or_claim(key, wait_limit).await,
        None => Turn::Compute(Held::none()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `host-pid-random`: unique per process, readable in the bucket.
fn owner_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "upres".into());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::StoreTier;
    use crate::imaging::encode::OutputFormat;
    use crate::objects::Bucket;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn claims(dir: &std::path::Path, ttl: Duration) -> Claims {
        let bucket = Bucket::open(&format!("file://{}", dir.display()), &BTreeMap::new(), true).unwrap();
        let cfg = ClaimsConfig { enabled: true, ttl, poll: Duration::from_millis(10) };
        Claims::new(StoreTier::new(bucket), &cfg, Arc::new(Metrics::new()))
    }

    fn result(key: ResultKey) -> CachedResult {
        CachedResult {
            key,
            bytes: Bytes::from_static(b"img"),
            format: OutputFormat::Png,
            model: "m".into(),
            width: 1,
            height: 1,
        }
    }

    async fn record_at(c: &Claims, key: &ResultKey) -> Option<ClaimRecord> {
        let bytes = c.store.get(&c.location(key)).await.ok()?.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    #[tokio::test]
    async fn first_claims_second_waits_and_finds_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (claims(dir.path(), Duration::from_secs(60)), claims(dir.path(), Duration::from_secs(60)));
        assert_ne!(a.owner(), b.owner());
        let key = ResultKey::derive(&[b"x"]);
        let Turn::Compute(held) = a.wait_or_claim(&key, Duration::from_secs(5)).await else { panic!("a must claim") };
        assert!(held.is_claimed());
        assert_eq!(record_at(&a, &key).await.unwrap().owner, a.owner());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait_or_claim(&key, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "b waits while a's claim is live");
        a.results.put(&result(key)).await.unwrap();
        held.release().await;
        assert!(record_at(&a, &key).await.is_none(), "released");
        match tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap() {
            Turn::Found(r) => assert_eq!(r, result(key)),
            Turn::Compute(_) => panic!("b should have found a's result"),
        }
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_over_and_a_released_one_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = claims(dir.path(), Duration::from_millis(150));
        let key = ResultKey::derive(&[b"y"]);
        let Turn::Compute(held) = crashed.wait_or_claim(&key, Duration::from_secs(1)).await else { panic!() };
        std::mem::forget(held); // the owner dies without releasing
        let b = claims(dir.path(), Duration::from_secs(60));
        let started = Instant::now();
        let Turn::Compute(held) = b.wait_or_claim(&key, Duration::from_secs(5)).await else { panic!("b takes over") };
        assert!(held.is_claimed());
        assert!(started.elapsed() >= Duration::from_millis(100), "b waited for the expiry");
        assert_eq!(record_at(&b, &key).await.unwrap().owner, b.owner());
        // A failing owner's claim is released on drop; the next replica claims at once.
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Turn::Compute(again) = crashed.wait_or_claim(&key, Duration::from_millis(50)).await else { panic!() };
        assert!(again.is_claimed());
        again.release().await;
    }

    #[tokio::test]
    async fn the_wait_is_bounded_and_releasing_never_deletes_someone_elses_claim() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (claims(dir.path(), Duration::from_secs(60)), claims(dir.path(), Duration::from_secs(60)));
        let key = ResultKey::derive(&[b"z"]);
        let Turn::Compute(held_a) = a.wait_or_claim(&key, Duration::from_secs(1)).await else { panic!() };
        let started = Instant::now();
        let Turn::Compute(unclaimed) = b.wait_or_claim(&key, Duration::from_millis(200)).await else { panic!() };
        assert!(!unclaimed.is_claimed(), "past the wait limit b computes without a claim");
        assert!(started.elapsed() < Duration::from_secs(1));
        unclaimed.release().await;
        // Releasing b's (absent) claim left a's in place; a foreign owner's release is a no-op.
        assert_eq!(record_at(&a, &key).await.unwrap().owner, a.owner());
        b.release(&b.location(&key)).await;
        assert_eq!(record_at(&a, &key).await.unwrap().owner, a.owner());
        held_a.release().await;
        assert!(record_at(&a, &key).await.is_none());
    }
}
