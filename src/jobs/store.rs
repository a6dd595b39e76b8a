//! Job records in the shared object store, beside results and claims: `jobs/<id>`, so any
//! replica answers `GET /api/v1/jobs/{id}` (chosen when `[cache.store]` is a shared bucket).
//!
//! Framed like results: `b"UPJOB01\n"` ‖ 64 hex digits of the blake3 of the JSON ‖ `\n` ‖ JSON.
//! A record that fails verification reads as unknown (404) and is logged. Writes are single
//! atomic puts, and only the replica running a job writes its record. A finished record reads as
//! gone once `jobs.ttl` passed and is deleted then; a bucket lifecycle rule on `jobs/` removes the
//! ones nobody read again. The store is not bounded by `jobs.max_jobs` (that bounds memory).

use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{now_ms, Job, JobStore, JobStoreError};
use crate::objects::Bucket;

const MAGIC: &[u8; 8] = b"UPJOB01\n";

/// The record plus what `Job` does not show over HTTP (the running replica needs the callback
/// URL back if it reads the record).
#[derive(Serialize, Deserialize)]
struct Stored {
    job: Job,
    callback_url: Option<String>,
}

pub struct StoreJobs {
    bucket: Bucket,
    ttl: Duration,
}

impl StoreJobs {
    pub fn new(bucket: Bucket, ttl: Duration) -> StoreJobs {
        StoreJobs { bucket, ttl }
    }

    fn location(&self, id: &str) -> Path {
        self.bucket.prefix.parts().chain(Path::from_iter(["jobs", id]).parts()).collect()
    }

    async fn write(&self, job: Job) -> Result<(), JobStoreError> {
        let framed = frame(&Stored { callback_url: job.callback_url.clone(), job });
        self.bucket
            .store
            .put(&self.location(&framed.1), PutPayload::from(framed.0))
            .await
            .map(|_| ())
            .map_err(|e| JobStoreError::Backend(e.to_string()))
    }
}

fn frame(stored: &Stored) -> (Bytes, String) {
    let json = serde_json::to_vec(stored).expect("a job serialises");
    let mut out = BytesMut::with_capacity(MAGIC.len() + 65 + json.len());
    out.put_slice(MAGIC);
    out.put_slice(blake3::hash(&json).to_hex().as_bytes());
    out.put_u8(b'\n');
    out.put_slice(&json);
    (out.freeze(), stored.job.id.clone())
}

fn unframe(id: &str, bytes: &[u8]) -> Result<Job, String> {
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
    Ok(Job { callback_url: stored.callback_url, ..stored.job })
}

#[async_trait]
impl JobStore for StoreJobs {
    async fn insert(&self, job: Job) -> Result<(), JobStoreError> {
        self.write(job).await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, JobStoreError> {
        let location = self.location(id);
        let bytes = match self.bucket.store.get(&location).await {
            Ok(r) => r.bytes().await.map_err(|e| JobStoreError::Backend(e.to_string()))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(JobStoreError::Backend(e.to_string())),
        };
        let job = match unframe(id, &bytes) {
            Ok(job) => job,
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
        self.write(job).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_tampering_is_caught() {
        let mut job = Job::new(super::super::new_id(), Some("https://hooks.example/x?token=t".into()));
        job.progress = Some(super::super::JobProgress { done: 1, total: 4 });
        let (bytes, id) = frame(&Stored { callback_url: job.callback_url.clone(), job: job.clone() });
        assert_eq!(unframe(&id, &bytes).unwrap(), job);
        let mut bad = bytes.to_vec();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        assert_eq!(unframe(&id, &bad).unwrap_err(), "hash mismatch");
        assert!(unframe("0".repeat(32).as_str(), &bytes).unwrap_err().starts_with("holds job"));
        assert!(unframe(&id, &bytes[..40]).is_err());
    }
}
