//! Job records in this process: bounded, finished jobs expire after `jobs.ttl`.
//!
//! A full store refuses new jobs (503) instead of evicting: evicting a running job would lose
//! its record while its work goes on. Expired records are swept on insert, so no background task
//! is needed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Job, JobStore, JobStoreError};

pub struct MemoryJobs {
    max: usize,
    ttl: Duration,
    jobs: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    job: Job,
    /// When a finished job's record goes; `None` while it runs.
    expires: Option<Instant>,
}

impl MemoryJobs {
    pub fn new(max: usize, ttl: Duration) -> MemoryJobs {
        MemoryJobs { max, ttl, jobs: Mutex::new(HashMap::new()) }
    }

    fn entry(&self, job: Job) -> Entry {
        let expires = job.state.finished().then(|| Instant::now() + self.ttl);
        Entry { job, expires }
    }
}

fn expired(e: &Entry, now: Instant) -> bool {
    e.expires.is_some_and(|t| t <= now)
}

#[async_trait]
impl JobStore for MemoryJobs {
    async fn insert(&self, job: Job) -> Result<(), JobStoreError> {
        let mut jobs = self.jobs.lock();
        if jobs.len() >= self.max {
            let now = Instant::now();
            jobs.retain(|_, e| !expired(e, now));
        }
        if jobs.len() >= self.max {
            return Err(JobStoreError::Full(self.max));
        }
        let entry = self.entry(job);
        jobs.insert(entry.job.id.clone(), entry);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, JobStoreError> {
        let jobs = self.jobs.lock();
        Ok(jobs.get(id).filter(|e| !expired(e, Instant::now())).map(|e| e.job.clone()))
    }

    async fn put(&self, job: Job) -> Result<(), JobStoreError> {
        let entry = self.entry(job);
        self.jobs.lock().insert(entry.job.id.clone(), entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{new_id, JobState};

    #[tokio::test]
    async fn bounded_and_finished_jobs_expire() {
        let store = MemoryJobs::new(2, Duration::from_millis(30));
        let (a, b) = (Job::new(new_id(), None), Job::new(new_id(), None));
        store.insert(a.clone()).await.unwrap();
        store.insert(b.clone()).await.unwrap();
        assert_eq!(store.insert(Job::new(new_id(), None)).await, Err(JobStoreError::Full(2)), "running jobs are never evicted");
        let mut done = a.clone();
        done.state = JobState::Done;
        store.put(done.clone()).await.unwrap();
        assert_eq!(store.get(&a.id).await.unwrap(), Some(done));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.get(&a.id).await.unwrap(), None, "a finished job expires");
        assert!(store.get(&b.id).await.unwrap().is_some(), "a running one does not");
        store.insert(Job::new(new_id(), None)).await.expect("the expired record made room");
    }
}
