//! Jobs: the REST API's way to ask for a result without holding a connection
//! (`POST /api/v1/jobs` → 202 and an id; `GET /api/v1/jobs/{id}` → state, progress, then the
//! result's `/r/` URL; an optional signed callback when done). Cache-warming scripts enqueue
//! work this way.
//!
//! - `JobStore` is the seam for where job records live: `memory::MemoryJobs` keeps them in this
//!   process (bounded, finished jobs expire); `store::StoreJobs` keeps them in a shared result
//!   bucket (`jobs/<id>`, framed and verified, written only by the replica running the job), so
//!   any replica answers `GET /api/v1/jobs/{id}`; `App` picks it when `[cache.store]` is not a
//!   local folder.
//! - `run` is the job's task: the upload miss path (`miss::produce_planned`), progress into
//!   the record, the result into the store tier (its `/r/` URL needs it), then the callback.
//! - `callback` signs and POSTs the finished record through the SSRF guard.
//! - `takeover`: a job whose owner died (its lease ran out) is taken over by one survivor (a
//!   conditional write decides who), re-planned from its stored input and run again.
//!
//! HTTP shapes stay in `api/jobs.rs`.

pub mod callback;
pub mod memory;
pub mod run;
pub mod store;
pub mod takeover;

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorClass};

/// A job's record, as `GET /api/v1/jobs/{id}` shows it (and a store keeps it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub state: JobState,
    /// Tiles done of the model's run, once it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
    pub created_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// Where the finished record is POSTed (not shown: it may carry a receiver's token).
    #[serde(skip_serializing, default)]
    pub callback_url: Option<String>,
    /// How the callback went: `pending`, `delivered` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// What the job was asked for, so another replica can run it again (not shown).
    #[serde(skip_serializing, default)]
    pub input: Option<JobInput>,
    /// How often a replica took the job over from one that died (not shown).
    #[serde(skip_serializing, default)]
    pub takeovers: u32,
    /// When the owner's lease on the record ends, as last read from a shared store (not shown).
    #[serde(skip, default)]
    pub lease_until_unix_ms: Option<u64>,
}

/// The request of a job, beside its image (`JobStore::save_input`): the form's upscale fields
/// and the `Accept` header, planned again by `run::plan` exactly as the `POST` planned them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInput {
    pub fields: Vec<(String, String)>,
    pub accept: Option<String>,
    /// blake3 of the image, checked when another replica reads it back.
    pub image_blake3: String,
}

impl JobInput {
    pub fn new(fields: Vec<(String, String)>, accept: Option<String>, image: &[u8]) -> JobInput {
        JobInput { fields, accept, image_blake3: blake3::hash(image).to_hex().to_string() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub done: u32,
    pub total: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// `/r/<result key>.<ext>`, served from the result store.
    pub url: String,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub model: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The stable error code an HTTP answer would have carried.
    pub code: String,
    pub message: String,
}

impl Job {
    pub fn new(id: String, callback_url: Option<String>) -> Job {
        let callback = callback_url.as_ref().map(|_| "pending".to_string());
        Job {
            id,
            state: JobState::Queued,
            progress: None,
            result: None,
            error: None,
            created_unix_ms: now_ms(),
            finished_unix_ms: None,
            callback_url,
            callback,
            input: None,
            takeovers: 0,
            lease_until_unix_ms: None,
        }
    }

    /// Whether the job still needs an owner: not finished, or its callback not yet settled.
    pub fn needs_owner(&self) -> bool {
        !self.state.finished() || self.callback.as_deref() == Some("pending")
    }

    /// Whether its owner's lease ran out without the job ending (its owner is presumed dead).
    pub fn orphaned(&self, now_unix_ms: u64) -> bool {
        self.needs_owner() && self.input.is_some() && self.lease_until_unix_ms.is_some_and(|t| t <= now_unix_ms)
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum JobStoreError {
    #[error("the job store is full ({0} jobs); retry later")]
    Full(usize),
    #[error("job store: {0}")]
    Backend(String),
    /// Another replica took the job over: this one must not write its record again.
    #[error("the job was taken over by another replica")]
    Lost,
}

impl Classify for JobStoreError {
    fn class(&self) -> ErrorClass {
        match self {
            JobStoreError::Full(_) => ErrorClass::Overloaded,
            JobStoreError::Backend(_) | JobStoreError::Lost => ErrorClass::Internal,
        }
    }
}

/// Where job records live. Whole records in and out, so an object-store implementation is a
/// put/get of one JSON object per job.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Adds a new job; `Full` when the store holds as many as it may.
    async fn insert(&self, job: Job) -> Result<(), JobStoreError>;
    /// The job, if known and not expired.
    async fn get(&self, id: &str) -> Result<Option<Job>, JobStoreError>;
    /// Replaces a job's record (only the replica running the job writes it); `Lost` when
    /// another replica took the job over since this one's last write.
    async fn put(&self, job: Job) -> Result<(), JobStoreError>;

    /// Keeps a job's image where another replica can read it back (shared stores only).
    async fn save_input(&self, _id: &str, _image: Bytes) -> Result<(), JobStoreError> {
        Ok(())
    }
    /// The job's image, if kept and intact.
    async fn input(&self, _id: &str, _input: &JobInput) -> Result<Option<Bytes>, JobStoreError> {
        Ok(None)
    }
    /// Forgets the image once the job needs no owner any more (best effort).
    async fn drop_input(&self, _id: &str) {}
    /// Ids of jobs whose image is still kept: the ones that may need a new owner.
    async fn unfinished(&self) -> Result<Vec<String>, JobStoreError> {
        Ok(Vec::new())
    }
    /// Takes the job over if its owner's lease ran out: one conditional write, so of replicas
    /// racing for it exactly one gets `Some` (the record, now this replica's).
    async fn take_over(&self, _id: &str) -> Result<Option<Job>, JobStoreError> {
        Ok(None)
    }
}

/// A fresh, unguessable job id: 128 random bits in hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS has a random source");
    hex::encode(bytes)
}

/// Whether `s` could be a job id (so a malformed one is a 404 without a store read).
pub fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
