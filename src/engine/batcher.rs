//! Cross-request batching: a bounded queue per engine, worker threads that group same-shaped
//! tiles from different requests into one forward pass.
//!
//! ```text
//! submit(tiles) ──► [bounded depth] ──► lane (crossbeam channel) ──► worker thread(s)
//!                                                         gather for ≤ max_wait, ≤ max_batch tiles
//!                                                         of one (tile shape, batch class)
//!                                                         engine.upscale(batch) → scatter → reply
//! ```
//! Inference never runs on the async reactor: workers are plain threads that own nothing but an
//! `Arc<dyn Engine>`. The queue bound is global across engines (jobs submitted and not yet
//! answered); past it `submit` says `Overloaded` and the caller answers 503 with `Retry-After`.
//! A job whose every waiter left (`CancellationToken`) is dropped before it runs, and a batch whose
//! every job was cancelled reports `cancelled()` to the engine so long runs (sd-x4) stop early.
//!
//! Background jobs (`submit_background`: shadow runs of a candidate model) take no queue slot
//! and are never batched with served jobs. A worker runs one only when no served job is queued
//! or running anywhere; while the served queue is at least half full they are dropped
//! (answered `Cancelled`), and a background pass reports `cancelled()` once served work
//! arrives. So background work never holds a served job's place.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Engine, GenParams, InferError, Progress, RunContext, Tile};
use crate::error::{Classify, ErrorClass};
use crate::telemetry::Metrics;

/// Where a job's progress goes (e.g. a playground progress stream).
pub type ProgressFn = Arc<dyn Fn(JobProgress) + Send + Sync>;

/// What a job's progress callback hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobProgress {
    /// Tiles of this job finished (after each forward pass that carried some of them).
    Tiles(Progress),
    /// Steps of the forward pass now running this job's tiles (sd-x4 denoising steps).
    Steps(Progress),
}

/// Batching knobs (from `[engine]`).
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
}

#[derive(thiserror::Error, Debug, Clone)]
pub enum SubmitError {
    #[error("the inference queue is full ({0} jobs); retry later")]
    Overloaded(usize),
    #[error("engine {0} has no worker")]
    NoLane(String),
}

impl Classify for SubmitError {
    fn class(&self) -> ErrorClass {
        match self {
            SubmitError::Overloaded(_) => ErrorClass::Overloaded,
            SubmitError::NoLane(_) => ErrorClass::Internal,
        }
    }
}

/// What an engine's forward pass returns: upscaled tiles in submission order.
pub type JobResult = Result<Vec<Tile>, InferError>;

/// A finished job: its tiles in submission order, and the time of the forward passes that
/// carried them (queue waits left out; a pass shared with other jobs counts whole).
#[derive(Debug)]
pub struct Ran {
    pub tiles: Vec<Tile>,
    pub busy: Duration,
}

impl std::ops::Deref for Ran {
    type Target = [Tile];
    fn deref(&self) -> &[Tile] {
        &self.tiles
    }
}

/// The answer to one job.
pub type JobAnswer = Result<Ran, InferError>;

pub struct Batcher {
    lanes: HashMap<String, Sender<Job>>,
    depth: Arc<AtomicUsize>,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
}

struct Job {
    tiles: Vec<Option<Tile>>,
    params: GenParams,
    class: u64,
    shape: (u32, u32),
    cancel: CancellationToken,
    progress: Option<ProgressFn>,
    reply: oneshot::Sender<JobAnswer>,
    /// Served jobs hold a unit of queue depth; background jobs hold none.
    _slot: Option<QueueSlot>,
    background: bool,
}

/// One unit of queue depth; released when the job is answered or dropped.
struct QueueSlot {
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.depth.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth.dec();
    }
}

impl Batcher {
    /// Starts `engine.workers()` threads per engine.
    pub fn start(engines: &[Arc<dyn Engine>], cfg: BatchConfig, metrics: Arc<Metrics>) -> Self {
        let mut lanes = HashMap::new();
        let depth = Arc::new(AtomicUsize::new(0));
        for engine in engines {
            let key = engine.id().to_string();
            if lanes.contains_key(&key) {
                continue;
            }
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            for i in 0..engine.workers().max(1) {
                let (engine, rx, metrics, depth) = (engine.clone(), rx.clone(), metrics.clone(), depth.clone());
                std::thread::Builder::new()
                    .name(format!("upres-infer-{}-{i}", engine.id().name))
                    .spawn(move || worker(engine, rx, cfg, metrics, depth))
                    .expect("spawning an inference thread");
            }
            lanes.insert(key, tx);
        }
        Self { lanes, depth, cfg, metrics }
    }

    /// Jobs submitted and not yet answered.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// `Overloaded` when the queue is full now: lets a caller refuse before decoding, so an
    /// overloaded server spends no CPU or memory on requests `submit` would refuse anyway.
    /// Advisory (the queue may fill between this and `submit`, which stays the real bound).
    pub fn check_room(&self) -> Result<(), SubmitError> {
        let cap = self.cfg.queue_capacity;
        if self.depth() >= cap {
            return Err(SubmitError::Overloaded(cap));
        }
        Ok(())
    }

    /// Queues one request's tiles (all of one shape). The receiver yields when every tile is done.
    pub fn submit(
        &self,
        engine: &dyn Engine,
        tiles: Vec<Tile>,
        params: GenParams,
        cancel: CancellationToken,
        progress: Option<ProgressFn>,
    ) -> Result<oneshot::Receiver<JobAnswer>, SubmitError> {
        let key = engine.id().to_string();
        let lane = self.lanes.get(&key).ok_or_else(|| SubmitError::NoLane(key.clone()))?;
        let shape = tiles.first().map(Tile::shape).unwrap_or((0, 0));
        assert!(tiles.iter().all(|t| t.shape() == shape), "a job's tiles must share one shape");
        // Reserve a slot or refuse: the bound is checked and taken in one atomic step.
        let cap = self.cfg.queue_capacity;
        if self.depth.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| (d < cap).then_some(d + 1)).is_err() {
            return Err(SubmitError::Overloaded(cap));
        }
        self.metrics.queue_depth.inc();
        let slot = QueueSlot { depth: self.depth.clone(), metrics: self.metrics.clone() };
        let (reply, rx) = oneshot::channel();
        let class = engine.batch_class(&params);
        let job =
            Job { tiles: tiles.into_iter().map(Some).collect(), params, class, shape, cancel, progress, reply, _slot: Some(slot), background: false };
        lane.send(job).map_err(|_| SubmitError::NoLane(format!("{key} (worker gone)")))?;
        Ok(rx)
    }

    /// Queues background tiles (module docs): refused (`Overloaded`) while the served queue is
    /// at least half full; otherwise they run when no served job is queued or running.
    pub fn submit_background(
        &self,
        engine: &dyn Engine,
        tiles: Vec<Tile>,
        params: GenParams,
        cancel: CancellationToken,
    ) -> Result<oneshot::Receiver<JobAnswer>, SubmitError> {
        let key = engine.id().to_string();
        let lane = self.lanes.get(&key).ok_or_else(|| SubmitError::NoLane(key.clone()))?;
        if self.under_load() {
            return Err(SubmitError::Overloaded(self.cfg.queue_capacity));
        }
        let shape = tiles.first().map(Tile::shape).unwrap_or((0, 0));
        assert!(tiles.iter().all(|t| t.shape() == shape), "a job's tiles must share one shape");
        let (reply, rx) = oneshot::channel();
        let class = engine.batch_class(&params);
        let job = Job { tiles: tiles.into_iter().map(Some).collect(), params, class, shape, cancel, progress: None, reply, _slot: None, background: true };
        lane.send(job).map_err(|_| SubmitError::NoLane(format!("{key} (worker gone)")))?;
        Ok(rx)
    }

    /// The served queue is at least half full: background work is refused and dropped.
    pub fn under_load(&self) -> bool {
        shedding(&self.depth, self.cfg.queue_capacity)
    }
}

fn shedding(depth: &AtomicUsize, capacity: usize) -> bool {
    depth.load(Ordering::Acquire) * 2 >= capacity.max(1)
}

/// A job being worked on by a worker.
struct Pending {
    job: Job,
    next: usize,
    done: usize,
    out: Vec<Option<Tile>>,
    busy: Duration,
}

impl Pending {
    fn new(job: Job) -> Self {
        let n = job.tiles.len();
        Self { job, next: 0, done: 0, out: vec![None; n], busy: Duration::ZERO }
    }
    fn batch_key(&self) -> ((u32, u32), u64, bool) {
        (self.job.shape, self.job.class, self.job.background)
    }
    fn unscheduled(&self) -> usize {
        self.job.tiles.len() - self.next
    }
}

/// What the engine sees of the jobs in its batch.
struct BatchContext<'a> {
    jobs: Vec<&'a Pending>,
    /// For a background batch: the served depth, which stops it once served work arrives.
    served: Option<&'a AtomicUsize>,
}

impl RunContext for BatchContext<'_> {
    fn cancelled(&self) -> bool {
        self.served.is_some_and(|d| d.load(Ordering::Acquire) > 0) || self.jobs.iter().all(|p| p.job.cancel.is_cancelled())
    }
    fn progress(&self, progress: Progress) {
        for p in &self.jobs {
            if let Some(f) = &p.job.progress {
                f(JobProgress::Steps(progress));
            }
        }
    }
}

/// How long a worker holding only background jobs waits for served work to end before it looks
/// again (served jobs on other lanes send it no message).
const BACKGROUND_POLL: Duration = Duration::from_millis(5);

fn worker(engine: Arc<dyn Engine>, rx: Receiver<Job>, cfg: BatchConfig, metrics: Arc<Metrics>, depth: Arc<AtomicUsize>) {
    let model = engine.id().to_string();
    let wants_company = engine.tiling().is_some() && !cfg.max_wait.is_zero() && cfg.max_batch > 1;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let next = rx.try_recv().or_else(|_| {
                // Nothing queued: let the engine free its scratch memory before waiting.
                engine.idle();
                rx.recv()
            });
            match next {
                Ok(job) => pending.push_back(Pending::new(job)),
                Err(_) => return, // the batcher is gone: shut down
            }
        }
        while let Ok(job) = rx.try_recv() {
            pending.push_back(Pending::new(job));
        }
        if shedding(&depth, cfg.queue_capacity) {
            drop_background(&mut pending);
        }
        answer_cancelled(&mut pending);
        // Served jobs first, oldest first; background jobs only while nothing is served.
        let served = pending.iter().find(|p| !p.job.background).map(Pending::batch_key);
        let idle = || depth.load(Ordering::Acquire) == 0;
        let Some(head) = served.or_else(|| pending.front().map(Pending::batch_key).filter(|_| idle())) else {
            if !pending.is_empty() {
                // Background work only, and served work running elsewhere: wait for it to end.
                if let Ok(job) = rx.recv_timeout(BACKGROUND_POLL) {
                    pending.push_back(Pending::new(job));
                }
            }
            continue;
        };
        // Large tiles (a whole photo in one pass) fill a pass alone: the activation budget holds.
        let max_batch = engine.tiling().map_or(cfg.max_batch, |t| t.batch_limit(head.0, cfg.max_batch));

        if wants_company {
            let deadline = Instant::now() + cfg.max_wait;
            while available(&pending, head) < max_batch {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(job) => pending.push_back(Pending::new(job)),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }

        // Assemble one batch from the jobs that share the head's key, oldest first.
        let mut tiles = Vec::new();
        let mut params = Vec::new();
        let mut owners = Vec::new();
        for (pi, p) in pending.iter_mut().enumerate() {
            if p.batch_key() != head || p.job.cancel.is_cancelled() {
                continue;
            }
            while p.next < p.job.tiles.len() && tiles.len() < max_batch {
                tiles.push(p.job.tiles[p.next].take().expect("each tile is scheduled once"));
                params.push(p.job.params.clone());
                owners.push((pi, p.next));
                p.next += 1;
            }
            if tiles.len() == max_batch {
                break;
            }
        }
        if tiles.is_empty() {
            continue;
        }

        metrics.engine_runs.with_label_values(&[&model]).inc();
        metrics.batch_size.with_label_values(&[&model]).observe(tiles.len() as f64);
        let started = Instant::now();
        let result = {
            let mut involved: Vec<usize> = owners.iter().map(|o| o.0).collect();
            involved.dedup();
            let ctx = BatchContext { jobs: involved.iter().map(|&i| &pending[i]).collect(), served: head.2.then_some(&*depth) };
            std::panic::catch_unwind(AssertUnwindSafe(|| engine.upscale(&tiles, &params, &ctx)))
                .unwrap_or_else(|_| Err(InferError::Model("the engine panicked".into())))
        };
        let took = started.elapsed();
        metrics.stage_seconds.with_label_values(&["infer_batch"]).observe(took.as_secs_f64());
        let mut involved: Vec<usize> = owners.iter().map(|o| o.0).collect();
        involved.dedup();
        for pi in involved {
            pending[pi].busy += took;
        }

        match result {
            Ok(outs) if outs.len() == owners.len() => {
                for ((pi, ti), tile) in owners.iter().zip(outs) {
                    let p = &mut pending[*pi];
                    p.out[*ti] = Some(tile);
                    p.done += 1;
                }
                let mut touched: Vec<usize> = owners.iter().map(|o| o.0).collect();
                touched.dedup();
                for pi in touched {
                    let p = &pending[pi];
                    if let Some(f) = &p.job.progress {
                        f(JobProgress::Tiles(Progress { done: p.done as u32, total: p.job.tiles.len() as u32 }));
                    }
                }
            }
            Ok(outs) => fail(&mut pending, &owners, InferError::Model(format!("engine returned {} tiles for {}", outs.len(), owners.len()))),
            Err(e) => fail(&mut pending, &owners, e),
        }
        answer_finished(&mut pending);
    }
}

/// Tiles not yet scheduled among jobs with `key`.
fn available(pending: &VecDeque<Pending>, key: ((u32, u32), u64, bool)) -> usize {
    pending.iter().filter(|p| p.batch_key() == key && !p.job.cancel.is_cancelled()).map(Pending::unscheduled).sum()
}

/// Frees the job's queue slot, then answers it (so a woken caller sees the slot free).
fn answer(job: Job, result: JobAnswer) {
    let Job { reply, _slot, .. } = job;
    drop(_slot);
    let _ = reply.send(result);
}

/// Answers every background job `Cancelled`: the served queue needs the room.
fn drop_background(pending: &mut VecDeque<Pending>) {
    let mut i = 0;
    while i < pending.len() {
        if pending[i].job.background {
            let p = pending.remove(i).expect("index in range");
            answer(p.job, Err(InferError::Cancelled));
        } else {
            i += 1;
        }
    }
}

fn answer_cancelled(pending: &mut VecDeque<Pending>) {
    let mut i = 0;
    while i < pending.len() {
        if pending[i].job.cancel.is_cancelled() {
            let p = pending.remove(i).expect("index in range");
            answer(p.job, Err(InferError::Cancelled));
        } else {
            i += 1;
        }
    }
}

/// Marks every job in the failed batch as failed (its other tiles are skipped).
fn fail(pending: &mut VecDeque<Pending>, owners: &[(usize, usize)], err: InferError) {
    let mut pis: Vec<usize> = owners.iter().map(|o| o.0).collect();
    pis.dedup();
    for pi in pis.into_iter().rev() {
        if let Some(p) = pending.remove(pi) {
            answer(p.job, Err(err.clone()));
        }
    }
}

fn answer_finished(pending: &mut VecDeque<Pending>) {
    let mut i = 0;
    while i < pending.len() {
        if pending[i].done == pending[i].job.tiles.len() {
            let p = pending.remove(i).expect("index in range");
            let tiles: Vec<Tile> = p.out.into_iter().map(|t| t.expect("every tile done")).collect();
            answer(p.job, Ok(Ran { tiles, busy: p.busy }));
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineId, Tiling};
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    /// Doubles every pixel value's position (nearest ×2) and records batch sizes.
    struct Recorder {
        id: EngineId,
        batches: Mutex<Vec<usize>>,
        calls: AtomicU32,
        fail_on_value: Option<f32>,
    }

    impl Engine for Recorder {
        fn id(&self) -> &EngineId {
            &self.id
        }
        fn scale(&self) -> u32 {
            2
        }
        fn tiling(&self) -> Option<Tiling> {
            Some(Tiling::squares(4, 0))
        }
        fn upscale(&self, tiles: &[Tile], _: &[GenParams], _: &dyn RunContext) -> JobResult {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.batches.lock().unwrap().push(tiles.len());
            if tiles.iter().any(|t| Some(t.data[0]) == self.fail_on_value) {
                return Err(InferError::Model("boom".into()));
            }
            Ok(tiles.iter().map(|t| Tile::new(t.width * 2, t.height * 2, vec![t.data[0]; t.data.len() * 4])).collect())
        }
    }

    fn recorder(fail_on_value: Option<f32>) -> Arc<Recorder> {
        Arc::new(Recorder { id: EngineId::new("rec", "0"), batches: Mutex::new(vec![]), calls: AtomicU32::new(0), fail_on_value })
    }

    fn cfg(max_batch: usize, wait_ms: u64, cap: usize) -> BatchConfig {
        BatchConfig { max_batch, max_wait: Duration::from_millis(wait_ms), queue_capacity: cap }
    }

    #[tokio::test]
    async fn tiles_from_different_jobs_share_forward_passes() {
        let rec = recorder(None);
        let engine: Arc<dyn Engine> = rec.clone();
        let b = Batcher::start(std::slice::from_ref(&engine), cfg(8, 200, 100), Arc::new(Metrics::new()));
        let mut rxs = Vec::new();
        for v in 0..4 {
            let tiles = vec![Tile::new(4, 4, vec![v as f32; 48]); 2];
            rxs.push(b.submit(&*engine, tiles, GenParams::default(), CancellationToken::new(), None).unwrap());
        }
        for (v, rx) in rxs.into_iter().enumerate() {
            let out = rx.await.unwrap().unwrap();
            assert_eq!(out.len(), 2);
            assert!(out.iter().all(|t| t.shape() == (8, 8) && t.data[0] == v as f32));
        }
        let batches = rec.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 8);
        assert!(batches.len() < 4, "4 jobs of 2 tiles should need fewer than 4 passes: {batches:?}");
        assert_eq!(b.depth(), 0);
    }

    /// Blocks each forward pass until the test opens the gate once; logs passes and idle calls
    /// in order.
    struct Gate {
        id: EngineId,
        open: Mutex<std::sync::mpsc::Receiver<()>>,
        log: Mutex<Vec<&'static str>>,
    }

    fn gate(id: &str) -> (std::sync::mpsc::Sender<()>, Arc<Gate>) {
        let (open, rx) = std::sync::mpsc::channel();
        (open, Arc::new(Gate { id: EngineId::new(id, "0"), open: Mutex::new(rx), log: Mutex::new(vec![]) }))
    }

    impl Engine for Gate {
        fn id(&self) -> &EngineId {
            &self.id
        }
        fn scale(&self) -> u32 {
            1
        }
        fn tiling(&self) -> Option<Tiling> {
            None
        }
        fn idle(&self) {
            self.log.lock().unwrap().push("idle");
        }
        fn upscale(&self, tiles: &[Tile], _: &[GenParams], _: &dyn RunContext) -> JobResult {
            self.open.lock().unwrap().recv().unwrap();
            self.log.lock().unwrap().push("run");
            Ok(tiles.to_vec())
        }
    }

    #[tokio::test]
    async fn full_queue_refuses_until_answers_free_slots() {
        let (open, gate) = gate("gate");
        let engine: Arc<dyn Engine> = gate;
        let b = Batcher::start(std::slice::from_ref(&engine), cfg(1, 0, 2), Arc::new(Metrics::new()));
        let t = || vec![Tile::new(4, 4, vec![0.0; 48])];
        let submit = || b.submit(&*engine, t(), GenParams::default(), CancellationToken::new(), None);
        let a = submit().unwrap();
        let c = submit().unwrap();
        assert_eq!(b.depth(), 2);
        assert!(matches!(submit(), Err(SubmitError::Overloaded(2))));
        open.send(()).unwrap();
        open.send(()).unwrap();
        a.await.unwrap().unwrap();
        c.await.unwrap().unwrap();
        assert_eq!(b.depth(), 0);
        let d = submit().expect("slots are free again");
        open.send(()).unwrap();
        d.await.unwrap().unwrap();
    }

    /// The worker tells the engine it is idle only when nothing is queued: not between two
    /// queued jobs, and again once the queue drains.
    #[tokio::test]
    async fn engine_hears_idle_only_when_the_queue_drains() {
        let (open, log) = gate("idle");
        let engine: Arc<dyn Engine> = log.clone();
        let b = Batcher::start(std::slice::from_ref(&engine), cfg(1, 0, 4), Arc::new(Metrics::new()));
        let t = || vec![Tile::new(4, 4, vec![0.0; 48])];
        let a = b.submit(&*engine, t(), GenParams::default(), CancellationToken::new(), None).unwrap();
        let c = b.submit(&*engine, t(), GenParams::default(), CancellationToken::new(), None).unwrap();
        open.send(()).unwrap();
        open.send(()).unwrap();
        a.await.unwrap().unwrap();
        c.await.unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.log.lock().unwrap().last() != Some(&"idle") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let events = log.log.lock().unwrap().clone();
        let runs: Vec<usize> = events.iter().enumerate().filter(|(_, e)| **e == "run").map(|(i, _)| i).collect();
        assert_eq!(runs.len(), 2, "{events:?}");
        assert_eq!(runs[1], runs[0] + 1, "idle between two queued jobs: {events:?}");
        assert_eq!(events.last(), Some(&"idle"), "no idle after the queue drained: {events:?}");
    }

    #[tokio::test]
    async fn cancelled_jobs_are_not_run() {
        let rec = recorder(None);
        let engine: Arc<dyn Engine> = rec.clone();
        let b = Batcher::start(std::slice::from_ref(&engine), cfg(8, 0, 10), Arc::new(Metrics::new()));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let rx = b.submit(&*engine, vec![Tile::new(4, 4, vec![0.0; 48])], GenParams::default(), cancel, None).unwrap();
        assert!(matches!(rx.await.unwrap(), Err(InferError::Cancelled)));
        assert_eq!(rec.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn progress_reports_tiles_done_after_each_pass() {
        let rec = recorder(None);
        let engine: Arc<dyn Engine> = rec.clone();
        let b = Batcher::start(std::slice::from_ref(&engine), cfg(2, 0, 10), Arc::new(Metrics::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink: ProgressFn = {
            let seen = seen.clone();
            Arc::new(move |p| seen.lock().unwrap().push(p))
        };
        let tiles = vec![Tile::new(4, 4, vec![0.5; 48]); 5];
        let rx = b.submit(&*engine, tiles, GenParams::default(), CancellationToken::new(), Some(sink)).unwrap();
        assert_eq!(rx.await.unwrap().unwrap().len(), 5);
        let tiles_done: Vec<(u32, u32)> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| match p {
                JobProgress::Tiles(p) => Some((p.done, p.total)),
                JobProgress::Steps(_) => None,
            })
            .collect();
        assert_eq!(tiles_done, vec![(2, 5), (4, 5), (5, 5)], "max_batch 2 → three passes");
    }

    #[tokio::test]
    async fn an_engine_error_fails_only_the_jobs_in_that_batch() {
        let rec = recorder(Some(9.0));
        let engine: Arc<dyn Engine> = rec.clone();
        let b = Batcher::start(std::slice::from_ref(&engine), cfg(1, 0, 10), Arc::new(Metrics::new()));
        let bad = b.submit(&*engine, vec![Tile::new(4, 4, vec![9.0; 48])], GenParams::default(), CancellationToken::new(), None).unwrap();
        let good = b.submit(&*engine, vec![Tile::new(4, 4, vec![1.0; 48])], GenParams::default(), CancellationToken::new(), None).unwrap();
        assert!(matches!(bad.await.unwrap(), Err(InferError::Model(_))));
        assert_eq!(good.await.unwrap().unwrap()[0].data[0], 1.0);
    }
}
