//! Job records in the shared object store, beside results and claims: `jobs/<id>`, so any
//! replica answers `GET /api/v1/jobs/{id}` (chosen when `[cache.store]` is a shared bucket).
//!
//! Framed like results: `b"UPJOB01\n"` ‖ 64 hex digits of the blake3 of the JSON ‖ `\n` ‖ JSON.
//! A record that fails verification reads as unknown (404) and is logged. A finished record
//! reads as gone once `jobs.ttl` passed and is deleted then; a bucket lifecycle rule on `jobs/`
//! removes the ones nobody read again. The store is not bounded by `jobs.max_jobs` (that bounds
//! memory).
//!
//! Ownership: every record names its owner (this process's random id) and a lease end
//! (`now + jobs.lease`, renewed by each write; the job's task writes at least every lease/3).
//! The first write is a conditional create, every later one a compare-and-swap on the version
//! this process wrote last (`cache::claim_cell`, as claims), so once another replica took a job
//! over, the old owner's writes fail with `Lost` and it stops. While a job needs an owner its
//! image waits in `job-inputs/<id>` (with its blake3 in the record); listing that folder is how
//! a sweep finds the jobs that may have lost theirs.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{now_ms, Job, JobInput, JobStore, JobStoreError};
use crate::cache::claim_cell::{Cell, CellError, Swap, Version};
use crate::objects::Bucket;

const MAGIC: &[u8; 8] = b"UPJOB01\n";

/// The record plus what `Job` does not show over HTTP (the callback URL, the input, the lease).
#[derive(Serialize, Deserialize)]
struct Stored {
    job: Job,
    callback_url: Option<String>,
    #[serde(default)]
    input: Option<JobInput>,
    #[serde(default)]
    takeovers: u32,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    lease_until_unix_ms: Option<u64>,
}

pub struct StoreJobs {
    bucket: Bucket,
    cell: Cell,
    ttl: Duration,
    lease: Duration,
    /// Who this process is in `owner` (random per process).
    owner: String,
    /// The version this process last wrote, per job it owns: the condition of its next write.
    owned: Mutex<HashMap<String, Version>>,
}

impl StoreJobs {
    pub fn new(bucket: Bucket, ttl: Duration, lease: Duration) -> StoreJobs {
        let cell = Cell::Store(bucket.store.clone());
        StoreJobs { bucket, cell, ttl, lease, owner: super::new_id(), owned: Mutex::new(HashMap::new()) }
    }

    fn location(&self, id: &str) -> Path {
        self.path(["jobs", id])
    }

    fn input_location(&self, id: &str) -> Path {
        self.path([INPUTS, id])
    }

    fn path(&self, parts: [&str; 2]) -> Path {
        self.bucket.prefix.parts().chain(Path::from_iter(parts).parts()).collect()
    }

    /// The record as this owner writes it: lease renewed while the job needs an owner.
    fn stamp(&self, job: Job) -> Stored {
        let lease_until_unix_ms = job.needs_owner().then(|| now_ms().saturating_add(self.lease.as_millis() as u64));
        Stored {
            callback_url: job.callback_url.clone(),
            input: job.input.clone(),
            takeovers: job.takeovers,
            owner: Some(self.owner.clone()),
            lease_until_unix_ms,
            job,
        }
    }
}

const INPUTS: &str = "job-inputs";

fn backend(e: impl std::fmt::Display) -> JobStoreError {
    JobStoreError::Backend(e.to_string())
}

fn frame(stored: &Stored) -> Bytes {
    let json = serde_json::to_vec(stored).expect("a job serialises");
    let mut out = BytesMut::with_capacity(MAGIC.len() + 65 + json.len());
    out.put_slice(MAGIC);
    out.put_slice(blake3::hash(&json).to_hex().as_bytes());
    out.put_u8(b'\n');
    out.put_slice(&json);
    out.freeze()
}

fn unframe(id: &str, bytes: &[u8]) -> Result<Stored, String> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a job record")?;
    if rest.len() < 65 || rest[64] != b'\n' {
        return Err("truncated header".into());
    }
    let (hash, json) = (&rest[..64], &rest[65..]);
    if blake3::hash(json).to_hex().as_bytes() != hash {
        return Err("hash mismatch".into());
    }
    let stored: Stored = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if stored.job.id != id {
        return Err(format!("holds job {}", stored.job.id));
    }
    Ok(stored)
}

/// The `Job` a stored record describes, hidden fields included.
fn job_of(stored: Stored) -> Job {
    Job {
        callback_url: stored.callback_url,
        input: stored.input,
        takeovers: stored.takeovers,
        lease_until_unix_ms: stored.lease_until_unix_ms,
        ..stored.job
    }
}

#[async_trait]
impl JobStore for StoreJobs {
    async fn insert(&self, job: Job) -> Result<(), JobStoreError> {
        let id = job.id.clone();
        let bytes = frame(&self.stamp(job));
        match self.cell.create(&self.location(&id), bytes).await.map_err(backend)? {
            Some(version) => {
                self.owned.lock().insert(id, version);
                Ok(())
            }
            None => Err(JobStoreError::Backend(format!("job {id} exists already"))),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, JobStoreError> {
        let location = self.location(id);
        let bytes = match self.bucket.store.get(&location).await {
            Ok(r) => r.bytes().await.map_err(backend)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let job = match unframe(id, &bytes) {
            Ok(stored) => job_of(stored),
            Err(reason) => {
                tracing::warn!(job = id, %reason, "job record failed verification; treated as unknown");
                return Ok(None);
            }
        };
        let expired = job.finished_unix_ms.is_some_and(|t| t.saturating_add(self.ttl.as_millis() as u64) <= now_ms());
        if expired {
            // Best effort: the lifecycle rule catches what this misses.
            let _ = self.bucket.store.delete(&location).await;
            return Ok(None);
        }
        Ok(Some(job))
    }

    async fn put(&self, job: Job) -> Result<(), JobStoreError> {
        let id = job.id.clone();
        let Some(expected) = self.owned.lock().get(&id).cloned() else {
            return Err(JobStoreError::Lost);
        };
        let settled = !job.needs_owner();
        let bytes = frame(&self.stamp(job));
        match self.cell.replace(&self.location(&id), &expected, bytes).await {
            Ok(Swap::Done(version)) => {
                let mut owned = self.owned.lock();
                if settled {
                    owned.remove(&id);
                } else {
                    owned.insert(id, version);
                }
                Ok(())
            }
            Ok(Swap::Lost) => {
                self.owned.lock().remove(&id);
                Err(JobStoreError::Lost)
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn save_input(&self, id: &str, image: Bytes) -> Result<(), JobStoreError> {
        self.bucket.store.put(&self.input_location(id), PutPayload::from(image)).await.map(|_| ()).map_err(backend)
    }

    async fn input(&self, id: &str, input: &JobInput) -> Result<Option<Bytes>, JobStoreError> {
        let bytes = match self.bucket.store.get(&self.input_location(id)).await {
            Ok(r) => r.bytes().await.map_err(backend)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        if blake3::hash(&bytes).to_hex().as_str() != input.image_blake3 {
            tracing::warn!(job = id, "job input failed verification; treated as lost");
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    async fn drop_input(&self, id: &str) {
        let _ = self.bucket.store.delete(&self.input_location(id)).await;
    }

    async fn unfinished(&self) -> Result<Vec<String>, JobStoreError> {
        use futures::TryStreamExt;
        let prefix: Path = self.bucket.prefix.parts().chain(Path::from(INPUTS).parts()).collect();
        let listed: Vec<_> = self.bucket.store.list(Some(&prefix)).try_collect().await.map_err(backend)?;
        Ok(listed.into_iter().filter_map(|m| m.location.filename().filter(|f| super::is_id(f)).map(str::to_string)).collect())
    }

    async fn take_over(&self, id: &str) -> Result<Option<Job>, JobStoreError> {
        let location = self.location(id);
        let Some((bytes, version)) = self.cell.read(&location).await.map_err(backend)? else {
            // The record expired or was deleted: its input has nobody left to need it.
            self.drop_input(id).await;
            return Ok(None);
        };
        let stored = match unframe(id, &bytes) {
            Ok(s) => s,
            Err(reason) => {
                tracing::warn!(job = id, %reason, "job record failed verification; not taken over");
                return Ok(None);
            }
        };
        let job = job_of(stored);
        if !job.needs_owner() {
            // Its owner ended before dropping the input.
            self.drop_input(id).await;
            return Ok(None);
        }
        if !job.orphaned(now_ms()) {
            return Ok(None);
        }
        let job = Job { takeovers: job.takeovers + 1, ..job };
        let stamped = self.stamp(job);
        match self.cell.replace(&location, &version, frame(&stamped)).await {
            Ok(Swap::Done(version)) => {
                self.owned.lock().insert(id.to_string(), version);
                Ok(Some(job_of(stamped)))
            }
            Ok(Swap::Lost) => Ok(None),
            Err(CellError::Unsupported) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::jobs::{new_id, JobProgress, JobState};

    fn stored(job: &Job) -> Stored {
        Stored { callback_url: job.callback_url.clone(), input: None, takeovers: 0, owner: None, lease_until_unix_ms: None, job: job.clone() }
    }

    #[test]
    fn frames_round_trip_and_tampering_is_caught() {
        let mut job = Job::new(new_id(), Some("https://hooks.example/x?token=t".into()));
        job.progress = Some(JobProgress { done: 1, total: 4 });
        let bytes = frame(&stored(&job));
        assert_eq!(job_of(unframe(&job.id, &bytes).unwrap()), job);
        let mut bad = bytes.to_vec();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        assert_eq!(unframe(&job.id, &bad).err().unwrap(), "hash mismatch");
        assert!(unframe("0".repeat(32).as_str(), &bytes).err().unwrap().starts_with("holds job"));
        assert!(unframe(&job.id, &bytes[..40]).is_err());
    }

    /// Three replicas on one bucket: the owner's lease has run out; two survivors race to take
    /// the job over, exactly one wins, and the old owner's next write is refused.
    #[tokio::test]
    async fn of_two_racing_takeovers_exactly_one_wins_and_the_old_owner_is_locked_out() {
        let memory: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let bucket = Bucket { store: memory, prefix: Path::from("v1"), url: "memory://".into() };
        let replica = |lease| StoreJobs::new(bucket.clone(), Duration::from_secs(3600), lease);
        // A zero lease: the owner is "dead" as soon as it wrote.
        let (owner, b, c) = (replica(Duration::ZERO), replica(Duration::from_secs(60)), replica(Duration::from_secs(60)));
        let image = Bytes::from_static(b"not really a png");
        let mut job = Job::new(new_id(), Some("https://hooks.example/x".into()));
        job.input = Some(JobInput::new(vec![("scale".into(), "2".into())], None, &image));
        owner.insert(job.clone()).await.unwrap();
        owner.save_input(&job.id, image.clone()).await.unwrap();
        job.state = JobState::Running;
        owner.put(job.clone()).await.unwrap();
        assert_eq!(b.unfinished().await.unwrap(), vec![job.id.clone()]);

        let (won_b, won_c) = tokio::join!(b.take_over(&job.id), c.take_over(&job.id));
        let winners = [won_b.unwrap(), won_c.unwrap()].into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(winners.len(), 1, "exactly one takeover wins (the record changes only on a win)");
        let new = &winners[0];
        assert_eq!((new.takeovers, new.state, new.callback_url.as_deref()), (1, JobState::Running, Some("https://hooks.example/x")));
        assert_eq!(b.input(&job.id, new.input.as_ref().unwrap()).await.unwrap(), Some(image.clone()));
        // The old owner is locked out; the winner writes on; the loser cannot.
        assert_eq!(owner.put(job.clone()).await, Err(JobStoreError::Lost));
        let (winner, loser) = if b.owned.lock().contains_key(&job.id) { (&b, &c) } else { (&c, &b) };
        assert_eq!(loser.put(new.clone()).await, Err(JobStoreError::Lost));
        let mut done = new.clone();
        done.state = JobState::Done;
        done.callback = Some("delivered".into());
        winner.put(done.clone()).await.unwrap();
        assert_eq!(b.get(&job.id).await.unwrap().unwrap().state, JobState::Done);
        assert_eq!(loser.unfinished().await.unwrap().len(), 1, "the input stays until a sweep looks");
        // A settled job is never taken over; the look drops its stray input.
        assert_eq!(loser.take_over(&job.id).await.unwrap(), None);
        assert!(loser.unfinished().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_live_lease_is_not_taken_over() {
        let memory: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let bucket = Bucket { store: memory, prefix: Path::default(), url: "memory://".into() };
        let owner = StoreJobs::new(bucket.clone(), Duration::from_secs(3600), Duration::from_secs(60));
        let other = StoreJobs::new(bucket, Duration::from_secs(3600), Duration::from_secs(60));
        let image = Bytes::from_static(b"img");
        let mut job = Job::new(new_id(), None);
        job.input = Some(JobInput::new(Vec::new(), None, &image));
        owner.insert(job.clone()).await.unwrap();
        owner.save_input(&job.id, image).await.unwrap();
        assert_eq!(other.take_over(&job.id).await.unwrap(), None);
        let read = other.get(&job.id).await.unwrap().unwrap();
        assert!(!read.orphaned(now_ms()) && read.lease_until_unix_ms.is_some());
        owner.put(job).await.expect("the owner writes on");
    }
}
