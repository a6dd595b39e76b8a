//! Cross-replica coalescing: a replica about to compute a result claims it in the shared store,
//! so the other replicas wait for that result instead of computing it again.
//!
//! Owns the claim records (`claims/<result key hex>` next to `results/`, holding
//! `{"owner", "expires_unix_ms", "lease"}` as JSON), the wait loop and the holder's renewal.
//! Every change to a claim is conditional on the version last seen (`claim_cell.rs`: ETags on
//! object stores, a lock on local folders). It does not own local coalescing (`coalesce.rs`)
//! nor the results (`store.rs`, which this module only reads while waiting).
//!
//! ```text
//! wait_or_claim(key):                      (bounded by the wait limit, whatever happens)
//!   create claim (if absent) ─ won ─────────────────────────────────────────→ Compute(held)
//!     └ exists → read it ─ gone (released meanwhile) → try again (3× at once, then as live)
//!                         ├ released or expired → replace it if unchanged since read
//!                         │     won → result stored meanwhile? → Found : Compute(held)
//!                         │     lost (another replica was first) → as live
//!                         └ live → sleep (backoff) → result in the store? → Found(result)
//!                                                  → past the wait limit? → Compute(unclaimed)
//! held: renewed every ttl/3 while computing (if unchanged since our last write; a claim
//!       found changed is lost: computing goes on, nothing is released)
//! release / drop of held: replaced by an expired tombstone (object stores) or deleted (local
//!       folder), only if unchanged since our last write: never the next owner's claim.
//! ```
//! Expiry uses the replicas' wall clocks: keep them in sync (NTP) to well within
//! `cache.claims.ttl`. A store error never fails a request: the replica computes unclaimed, as
//! it would without a shared store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::claim_cell::{Cell, CellError, Swap, Version};
use super::store::{Lookup, StoreTier};
use super::CachedResult;
use crate::config::ClaimsConfig;
use crate::key::ResultKey;
use crate::telemetry::Metrics;

/// Longest pause between two polls of a waiting replica.
const MAX_POLL: Duration = Duration::from_secs(1);
/// Immediate retries after a claim vanished between our create and our read.
const GONE_RETRIES: u32 = 3;

/// The content of a claim object.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ClaimRecord {
    /// Which replica computes (`host-pid-random`), for logs.
    pub owner: String,
    /// Past this instant (Unix milliseconds) the claim is abandoned and may be taken over;
    /// 0 marks a released claim (a tombstone).
    pub expires_unix_ms: u64,
    /// Unique per claim taken, so every record (and its ETag) differs from every other.
    #[serde(default)]
    pub lease: u64,
}

/// Claims in one shared store, made by this process.
#[derive(Clone)]
pub struct Claims {
    cell: Cell,
    prefix: Path,
    results: StoreTier,
    owner: Arc<str>,
    ttl: Duration,
    first_poll: Duration,
    metrics: Arc<Metrics>,
    /// Added to the wall clock (tests play a replica whose clock runs ahead).
    skew_ms: i64,
}

/// What the caller does next.
pub enum Turn {
    /// Compute the result, then `release` (the claim may be absent: store error, wait limit).
    Compute(Held),
    /// Another replica stored the result while we waited.
    Found(CachedResult),
}

/// How a claim was won.
#[derive(PartialEq)]
enum Won {
    Created,
    /// A released claim (tombstone) replaced.
    Released,
    /// An expired (or unreadable) claim replaced: its owner died or stalled.
    TookOver,
}

/// The outcome of one attempt at taking the claim.
enum Take {
    Won(Won, u64, Version),
    Live,
    Gone,
}

impl Claims {
    pub fn new(results: StoreTier, cfg: &ClaimsConfig, metrics: Arc<Metrics>) -> Claims {
        let bucket = results.bucket().clone();
        let cell = match bucket.local_folder() {
            Some(root) => Cell::Folder { root },
            None => Cell::Store(bucket.store.clone()),
        };
        Claims {
            cell,
            prefix: bucket.prefix,
            results,
            owner: owner_id().into(),
            ttl: cfg.ttl,
            first_poll: cfg.poll,
            metrics,
            skew_ms: 0,
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
        let mut gone = 0;
        loop {
            match self.try_take(key).await {
                Ok(Take::Won(how, lease, version)) => {
                    let event = if how == Won::TookOver { "takeover" } else { "acquired" };
                    self.metrics.cache_event("claim", event);
                    let held = self.held(key, lease, version);
                    // The claim was released or changed hands while we looked: the result may
                    // be stored already (one read, instead of computing it a second time).
                    if how != Won::Created || waited {
                        if let Ok(Lookup::Hit(found)) = self.results.get(key).await {
                            self.metrics.cache_event("claim", "found");
                            held.release().await;
                            return Turn::Found(found);
                        }
                    }
                    return Turn::Compute(held);
                }
                Ok(Take::Gone) if gone < GONE_RETRIES && Instant::now() < until => {
                    gone += 1;
                    continue;
                }
                Ok(Take::Gone | Take::Live) => {}
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

    async fn try_take(&self, key: &ResultKey) -> Result<Take, CellError> {
        let path = self.location(key);
        let lease = next_lease();
        if let Some(version) = self.cell.create(&path, self.record(lease)).await? {
            return Ok(Take::Won(Won::Created, lease, version));
        }
        let Some((bytes, version)) = self.cell.read(&path).await? else { return Ok(Take::Gone) };
        // An unreadable claim (torn write, another version's format) counts as abandoned.
        let record = serde_json::from_slice::<ClaimRecord>(&bytes).ok();
        if record.as_ref().is_some_and(|r| r.expires_unix_ms > self.now_ms()) {
            return Ok(Take::Live);
        }
        let how = if record.as_ref().is_some_and(|r| r.expires_unix_ms == 0) { Won::Released } else { Won::TookOver };
        if how == Won::TookOver {
            debug!(key = %key.short(), owner = %record.map(|r| r.owner).unwrap_or_default(), "taking over an expired claim");
        }
        // Conditional on the version just read: of several replicas, exactly one replaces it.
        Ok(match self.cell.replace(&path, &version, self.record(lease)).await? {
            Swap::Done(version) => Take::Won(how, lease, version),
            Swap::Lost => Take::Live,
        })
    }

    fn record(&self, lease: u64) -> Bytes {
        self.encode(lease, self.now_ms() + self.ttl.as_millis() as u64)
    }

    fn encode(&self, lease: u64, expires_unix_ms: u64) -> Bytes {
        let record = ClaimRecord { owner: self.owner.to_string(), expires_unix_ms, lease };
        Bytes::from(serde_json::to_vec(&record).expect("claim record serialises"))
    }

    fn now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(self.skew_ms)
    }

    /// A held claim: a task renews it every ttl/3 until the holder releases or drops it.
    fn held(&self, key: &ResultKey, lease: u64, version: Version) -> Held {
        let done = CancellationToken::new();
        let (renewed, renewals) = tokio::sync::watch::channel(0u32);
        let keeper = Keeper { claims: self.clone(), path: self.location(key), lease, version, renewed };
        let task = tokio::spawn(keeper.run(done.clone()));
        Held { lease: Some(Lease { done, task, renewals }) }
    }
}

/// The task behind a `Held`: renews the claim while the holder computes, releases it after.
/// Renewals and the release run in this one task, one after the other, so each is conditional
/// on the version the previous one wrote.
struct Keeper {
    claims: Claims,
    path: Path,
    lease: u64,
    version: Version,
    renewed: tokio::sync::watch::Sender<u32>,
}

impl Keeper {
    async fn run(mut self, done: CancellationToken) {
        let every = (self.claims.ttl / 3).max(Duration::from_millis(1));
        let metrics = self.claims.metrics.clone();
        loop {
            tokio::select! {
                biased;
                _ = done.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            match self.claims.cell.replace(&self.path, &self.version, self.claims.record(self.lease)).await {
                Ok(Swap::Done(version)) => {
                    self.version = version;
                    metrics.cache_event("claim", "renewed");
                    self.renewed.send_modify(|n| *n += 1);
                }
                Ok(Swap::Lost) => {
                    // Expired and taken over (a stall longer than the TTL): the result will be
                    // computed twice, identically; the claim is the other replica's now.
                    metrics.cache_event("claim", "lost");
                    warn!(claim = %self.path, "claim taken over while computing; not renewing it");
                    return;
                }
                Err(e) => {
                    metrics.cache_event("claim", "error");
                    warn!(claim = %self.path, error = %e, "could not renew a claim; trying again");
                }
            }
        }
        let tombstone = self.claims.encode(self.lease, 0);
        match self.claims.cell.remove(&self.path, &self.version, tombstone).await {
            Ok(Swap::Done(_)) => metrics.cache_event("claim", "released"),
            Ok(Swap::Lost) => {
                metrics.cache_event("claim", "lost");
                debug!(claim = %self.path, "claim was taken over; nothing to release");
            }
            Err(CellError::Unsupported) => debug!(claim = %self.path, "no conditional overwrite; the claim expires by itself"),
            Err(e) => {
                metrics.cache_event("claim", "error");
                warn!(claim = %self.path, error = %e, "could not release a claim; it expires by itself");
            }
        }
    }
}

struct Lease {
    done: CancellationToken,
    task: JoinHandle<()>,
    renewals: tokio::sync::watch::Receiver<u32>,
}

/// A claim this replica holds (or none), renewed until it is released. Release it after the
/// result is stored; dropping it unreleased (failure, cancellation) releases it in the
/// background.
#[must_use = "release the claim after storing the result"]
pub struct Held {
    lease: Option<Lease>,
}

impl Held {
    /// No claim: claims are off, or the store failed, or the wait limit passed.
    pub fn none() -> Held {
        Held { lease: None }
    }

    pub fn is_claimed(&self) -> bool {
        self.lease.is_some()
    }

    /// Stops renewing and releases the claim (if still ours); returns once that is done.
    pub async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.done.cancel();
            let _ = lease.task.await;
        }
    }

    /// Waits until the claim has been renewed `n` times in all (tests).
    pub async fn renewed(&mut self, n: u32) {
        if let Some(lease) = &mut self.lease {
            let _ = lease.renewals.wait_for(|&r| r >= n).await;
        }
    }

    /// Stops renewing without releasing, as a crashed process would (tests).
    pub fn abandon(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.task.abort();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.done.cancel();
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

/// A fresh lease id, unique within the process (the owner id tells processes apart).
fn next_lease() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
    use std::collections::BTreeMap;

    /// The two kinds of backend: a local folder (lock) and an object store with ETags
    /// (object_store's in-memory store answers `If-Match`/`If-None-Match` as S3 does).
    enum Backend {
        Folder(tempfile::TempDir),
        Memory(Arc<dyn object_store::ObjectStore>),
    }

    impl Backend {
        fn all() -> [Backend; 2] {
            [Backend::Folder(tempfile::tempdir().unwrap()), Backend::Memory(Arc::new(object_store::memory::InMemory::new()))]
        }

        fn claims(&self, ttl: Duration) -> Claims {
            let bucket = match self {
                Backend::Folder(dir) => Bucket::open(&format!("file://{}", dir.path().display()), &BTreeMap::new(), true).unwrap(),
                Backend::Memory(store) => Bucket { store: store.clone(), prefix: Path::default(), url: "memory://".into() },
            };
            let cfg = ClaimsConfig { enabled: true, ttl, poll: Duration::from_millis(10) };
            let claims = Claims::new(StoreTier::new(bucket), &cfg, Arc::new(Metrics::new()));
            assert_eq!(matches!(claims.cell, Cell::Folder { .. }), matches!(self, Backend::Folder(_)));
            claims
        }
    }

    /// The same process with its wall clock `ms` ahead: it sees our claims expired.
    fn ahead(c: &Claims, ms: i64) -> Claims {
        Claims { skew_ms: ms, ..c.clone() }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    fn result(key: ResultKey) -> CachedResult {
        CachedResult {
            key,
            bytes: Bytes::from_static(b"img"),
            format: OutputFormat::Png,
            model: "m".into(),
            width: 1,
            height: 1,
            source: None,
            consistency: None,
        }
    }

    async fn record_at(c: &Claims, key: &ResultKey) -> Option<ClaimRecord> {
        let (bytes, _) = c.cell.read(&c.location(key)).await.unwrap()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A live claim on `key`: the record is there, not a tombstone, not expired.
    async fn live(c: &Claims, key: &ResultKey) -> Option<ClaimRecord> {
        record_at(c, key).await.filter(|r| r.expires_unix_ms > now_ms())
    }

    fn claimed(turn: Turn) -> Held {
        match turn {
            Turn::Compute(held) => held,
            Turn::Found(_) => panic!("expected to compute"),
        }
    }

    #[tokio::test]
    async fn a_waiter_never_takes_a_live_claim_and_finds_the_owners_result() {
        for backend in Backend::all() {
            let (a, b) = (backend.claims(MINUTE), backend.claims(MINUTE));
            assert_ne!(a.owner(), b.owner());
            let key = ResultKey::derive(&[b"x"]);
            let held = claimed(a.wait_or_claim(&key, Duration::from_secs(5)).await);
            assert!(held.is_claimed());
            assert_eq!(live(&a, &key).await.unwrap().owner, a.owner());
            // Past its wait limit b computes, but unclaimed: a's claim stays a's.
            let unclaimed = claimed(b.wait_or_claim(&key, Duration::ZERO).await);
            assert!(!unclaimed.is_claimed(), "b took a live claim");
            unclaimed.release().await;
            assert_eq!(live(&a, &key).await.unwrap().owner, a.owner());
            // The owner stores its result: a waiting b finds it (a's claim is still live).
            a.results.put(&result(key)).await.unwrap();
            match b.wait_or_claim(&key, Duration::from_secs(5)).await {
                Turn::Found(r) => assert_eq!(r, result(key)),
                Turn::Compute(_) => panic!("b should have found a's result"),
            }
            held.release().await;
            assert!(live(&a, &key).await.is_none(), "released");
        }
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_over_and_a_released_one_claimed_again() {
        for backend in Backend::all() {
            let crashed = backend.claims(MINUTE);
            let key = ResultKey::derive(&[b"y"]);
            claimed(crashed.wait_or_claim(&key, Duration::from_secs(1)).await).abandon();
            // A replica whose clock is past the expiry takes it over at once.
            let b = ahead(&backend.claims(MINUTE), 2 * 60_000);
            let held = claimed(b.wait_or_claim(&key, Duration::ZERO).await);
            assert!(held.is_claimed(), "b takes the expired claim over");
            assert_eq!(record_at(&b, &key).await.unwrap().owner, b.owner());
            // b fails (no result) and releases: the next replica claims at once.
            held.release().await;
            let again = claimed(crashed.wait_or_claim(&key, Duration::ZERO).await);
            assert!(again.is_claimed());
            again.release().await;
        }
    }

    #[tokio::test]
    async fn releasing_after_a_takeover_never_removes_the_new_owners_claim() {
        for backend in Backend::all() {
            // Two flights of one process (same owner id), the first stalled past its TTL.
            let a = backend.claims(MINUTE);
            let key = ResultKey::derive(&[b"z"]);
            let stalled = claimed(a.wait_or_claim(&key, Duration::ZERO).await);
            let next = claimed(ahead(&a, 2 * 60_000).wait_or_claim(&key, Duration::ZERO).await);
            assert!(next.is_claimed(), "the stalled claim is taken over");
            let taken = record_at(&a, &key).await.unwrap();
            stalled.release().await;
            assert_eq!(record_at(&a, &key).await.as_ref(), Some(&taken), "the stalled owner's release left the new claim");
            next.release().await;
            assert!(live(&a, &key).await.is_none());
        }
    }

    #[tokio::test]
    async fn of_two_replicas_replacing_the_same_expired_claim_exactly_one_wins() {
        for backend in Backend::all() {
            // Forced interleaving: both read the expired claim, then both try to replace it.
            let (a, b) = (backend.claims(MINUTE), backend.claims(MINUTE));
            let key = ResultKey::derive(&[b"w"]);
            let path = a.location(&key);
            a.cell.create(&path, a.encode(1, 1)).await.unwrap().expect("created");
            let (_, seen_by_a) = a.cell.read(&path).await.unwrap().unwrap();
            let (_, seen_by_b) = b.cell.read(&path).await.unwrap().unwrap();
            assert!(matches!(a.cell.replace(&path, &seen_by_a, a.record(2)).await.unwrap(), Swap::Done(_)));
            assert!(matches!(b.cell.replace(&path, &seen_by_b, b.record(3)).await.unwrap(), Swap::Lost));
            assert!(matches!(b.cell.remove(&path, &seen_by_b, b.encode(3, 0)).await.unwrap(), Swap::Lost));
            let winner = live(&a, &key).await.unwrap();
            assert_eq!((winner.owner.as_str(), winner.lease), (a.owner(), 2));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_replicas_take_over_an_expired_claim_once() {
        for backend in Backend::all() {
            let crashed = backend.claims(MINUTE);
            for round in 0..20u8 {
                let key = ResultKey::derive(&[b"race", &[round]]);
                claimed(crashed.wait_or_claim(&key, Duration::ZERO).await).abandon();
                let start = Arc::new(tokio::sync::Barrier::new(6));
                let racers: Vec<_> = (0..6)
                    .map(|_| {
                        let (c, start) = (ahead(&backend.claims(MINUTE), 2 * 60_000), start.clone());
                        tokio::spawn(async move {
                            start.wait().await;
                            claimed(c.wait_or_claim(&key, Duration::ZERO).await)
                        })
                    })
                    .collect();
                let mut held = Vec::new();
                for r in racers {
                    held.push(r.await.unwrap());
                }
                assert_eq!(held.iter().filter(|h| h.is_claimed()).count(), 1, "round {round}: one winner");
                for h in held {
                    h.release().await;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_long_computation_keeps_its_claim_past_the_ttl() {
        for backend in Backend::all() {
            let ttl = Duration::from_millis(150);
            let (a, b) = (backend.claims(ttl), backend.claims(ttl));
            let key = ResultKey::derive(&[b"long"]);
            let mut held = claimed(a.wait_or_claim(&key, Duration::ZERO).await);
            let first_expiry = record_at(&a, &key).await.unwrap().expires_unix_ms;
            // Renewals (every ttl/3) are the events; go on until the first expiry has passed.
            let mut n = 0;
            while now_ms() <= first_expiry + 20 {
                n += 1;
                tokio::time::timeout(Duration::from_secs(5), held.renewed(n)).await.expect("the claim is renewed");
            }
            let unclaimed = claimed(b.wait_or_claim(&key, Duration::ZERO).await);
            assert!(!unclaimed.is_claimed(), "a renewed claim is not taken over");
            assert_eq!(live(&a, &key).await.unwrap().owner, a.owner());
            held.release().await;
            assert!(live(&a, &key).await.is_none());
        }
    }
}
