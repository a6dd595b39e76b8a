//! The server's shared state, built once from a validated `Config`.
//!
//! Owns construction order (origins → tiers → models → batcher) and readiness: `/readyz` turns
//! ready only after every engine ran one warm-up inference (the result store's state is
//! reported beside it, and does not make the replica unready).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::admission::MemoryBudget;
use crate::purge_bus::PurgeBus;
use crate::cache::claim::Claims;
use crate::cache::memory::MemoryTier;
use crate::cache::store::StoreTier;
use crate::cache::writer::StoreWriter;
use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::engine::batcher::{BatchConfig, Batcher};
use crate::engine::{GenParams, InferError, Tile, Unattended};
use crate::engine::lanczos::Lanczos;
use crate::engine::registry::{ModelEntry, Registry};
use crate::guard::Guards;
use crate::jobs::memory::MemoryJobs;
use crate::jobs::store::StoreJobs;
use crate::jobs::JobStore;
use crate::objects::Bucket;
use crate::params::{imgproxy, ParamLimits};
use crate::flight::FlightValue;
use crate::playground::progress::ProgressBoard;
use crate::quality::Quality;
use crate::source::Origins;
use crate::telemetry::Metrics;
use crate::verify::Signer;

pub struct App {
    pub cfg: Config,
    pub param_limits: ParamLimits,
    /// imgproxy's URL syntax (origins by base URL); `None` when `[imgproxy] enabled = false`.
    pub imgproxy: Option<imgproxy::Syntax>,
    pub origins: Origins,
    pub memory: MemoryTier,
    pub store: Option<StoreTier>,
    /// Claims in the shared store (cross-replica coalescing); none without a store.
    pub claims: Option<Claims>,
    /// Writes results to the store after their responses.
    pub store_writes: StoreWriter,
    pub flights: Coalescer<FlightValue>,
    pub registry: Registry,
    pub batcher: Batcher,
    /// Bytes of image buffers running jobs may hold (`admission.rs`).
    pub memory_budget: MemoryBudget,
    pub metrics: Arc<Metrics>,
    pub signer: Option<Signer>,
    /// Progress of running flights for the playground's event streams.
    pub progress: Arc<ProgressBoard>,
    pub guards: Guards,
    /// Purge fan-out to the other replicas; with a Redis `rate_limit.backend` only.
    pub purge_bus: Option<Arc<PurgeBus>>,
    /// Job records (`/api/v1/jobs`); in this process for now (`jobs::JobStore` is the seam).
    pub jobs: Arc<dyn JobStore>,
    /// Consistency scores, the quality gate, canary and shadow choices (`quality`).
    pub quality: Quality,
    ready: AtomicBool,
    next_id: AtomicU64,
    id_prefix: u32,
}

#[derive(thiserror::Error, Debug)]
#[error("startup: {0}")]
pub struct StartupError(pub String);

impl App {
    /// Builds the app with Lanczos plus the models found in `ml.models_dir`.
    pub fn build(cfg: Config) -> Result<Arc<App>, StartupError> {
        let models = load_models(&cfg)?;
        Self::build_with_models(cfg, models)
    }

    /// Builds the app with exactly these models (tests plug in instrumented engines here).
    pub fn build_with_models(cfg: Config, models: Vec<ModelEntry>) -> Result<Arc<App>, StartupError> {
        let err = |e: &dyn std::fmt::Display| StartupError(e.to_string());
        let origins = Origins::open(&cfg.origins).map_err(|e| err(&e))?;
        let store = if cfg.cache.store.url.is_empty() {
            None
        } else {
            let bucket = Bucket::open(&cfg.cache.store.url, &cfg.cache.store.options, true).map_err(|e| err(&e))?;
            Some(StoreTier::with_timeout(bucket, cfg.cache.store.timeout))
        };
        let memory = MemoryTier::new(cfg.cache.memory.max_bytes, cfg.cache.memory.ttl);
        let registry = Registry::new(models);
        let metrics = Arc::new(Metrics::new());
        let claims = store
            .as_ref()
            .filter(|_| cfg.cache.claims.enabled)
            .map(|s| Claims::new(s.clone(), &cfg.cache.claims, metrics.clone()));
        let store_writes = StoreWriter::new(store.clone(), cfg.cache.store.max_pending_writes, metrics.clone());
        let engines: Vec<_> = registry.entries().iter().map(|e| e.engine.clone()).collect();
        let batcher = Batcher::start(
            &engines,
            BatchConfig {
                max_batch: cfg.engine.max_batch,
                max_wait: cfg.engine.max_wait,
                queue_capacity: cfg.engine.queue_capacity,
            },
            metrics.clone(),
        );
        metrics.queue_capacity.set(i64::try_from(cfg.engine.queue_capacity).unwrap_or(i64::MAX));
        let memory_budget = MemoryBudget::from_config(&cfg.limits, metrics.clone());
        let quality = Quality::new(cfg.ml.quality.clone(), cfg.ml.shadow.clone(), cfg.ml.canary.clone(), metrics.quality.clone());
        let signer = Signer::from_config(&cfg.signing).map_err(|e| err(&e))?;
        let guards = Guards::build(&cfg, metrics.rate_limit_fallbacks.clone()).map_err(|e| err(&e))?;
        let param_limits = ParamLimits::from_config(&cfg).map_err(|e| err(&e))?;
        // A shared bucket holds job records too, so any replica answers for any job.
        let jobs: Arc<dyn JobStore> = match &store {
            Some(tier) if is_shared(tier.url()) => Arc::new(StoreJobs::new(tier.bucket().clone(), cfg.jobs.ttl, cfg.jobs.lease)),
            _ => Arc::new(MemoryJobs::new(cfg.jobs.max_jobs, cfg.jobs.ttl)),
        };
        let imgproxy = cfg.imgproxy.enabled.then(|| {
            imgproxy::Syntax::new(cfg.origins.iter().map(|(n, o)| (n.as_str(), o.url.as_str())), cfg.imgproxy.ignore_unsupported)
        });
        let id_prefix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0);
        Ok(Arc::new(App {
            cfg,
            param_limits,
            imgproxy,
            origins,
            memory,
            store,
            claims,
            store_writes,
            flights: Coalescer::new(),
            registry,
            batcher,
            memory_budget,
            metrics,
            signer,
            progress: Arc::new(ProgressBoard::new()),
            purge_bus: guards.redis().map(|link| Arc::new(PurgeBus::new(link.clone()))),
            guards,
            jobs,
            quality,
            ready: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            id_prefix,
        }))
    }

    /// Warms every engine up (on the blocking pool) and probes the store; then reports ready.
    pub async fn warm_up(self: &Arc<Self>) -> Result<(), StartupError> {
        if self.cfg.ml.warm_up {
            for (index, entry) in self.registry.entries().iter().enumerate() {
                let engine = entry.engine.clone();
                let id = engine.id().to_string();
                let started = std::time::Instant::now();
                let probe = tokio::task::spawn_blocking(move || {
                    engine.warm_up()?;
                    // One timed pass over a probe tile: the first-hit budget's estimate (never the model choice).
                    let probe = match engine.speed_probe_side() {
                        Some(side) => {
                            let tile = Tile::new(side, side, vec![0.5; 3 * (side * side) as usize]);
                            let clock = std::time::Instant::now();
                            engine.upscale(&[tile], &[GenParams::default()], &Unattended)?;
                            Some((clock.elapsed(), u64::from(side * side)))
                        }
                        None => None,
                    };
                    // No work is queued yet: free what the passes kept until requests come.
                    engine.idle();
                    Ok::<_, InferError>(probe)
                })
                .await
                .map_err(|e| StartupError(format!("warm-up of {id} panicked: {e}")))?
                .map_err(|e| StartupError(format!("warm-up of {id}: {e}")))?;
                let ms_per_input_mpx = probe.map(|(elapsed, px)| {
                    self.registry.record_speed(index, elapsed, px);
                    elapsed.as_secs_f64() * 1e9 / px as f64
                });
                tracing::info!(model = %id, ms = started.elapsed().as_millis() as u64, ms_per_input_mpx, "engine warmed up");
            }
        }
        // A store in trouble does not keep the replica from serving: it computes and serves from
        // memory meanwhile, and `/readyz` reports the store's state.
        if let Some(store) = &self.store {
            if let Err(e) = store.probe().await {
                tracing::warn!(store = %store.url(), error = %e, "the result store does not answer; serving uncached until it does");
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn next_request_id(&self) -> String {
        format!("{:08x}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Lanczos at every scale (always there), then whatever the models folder holds.
pub fn load_models(cfg: &Config) -> Result<Vec<ModelEntry>, StartupError> {
    let workers = match cfg.engine.lanczos_workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let mut entries: Vec<ModelEntry> = [2, 3, 4]
        .into_iter()
        .map(|s| ModelEntry {
            name: "lanczos".into(),
            aliases: vec![],
            rank: 0,
            engine: Arc::new(Lanczos::new(s, workers)),
            description: "Classical Lanczos-3 resampling; always available.".into(),
        })
        .collect();
    entries.extend(crate::ml::discover(cfg).map_err(|e| StartupError(e.to_string()))?);
    Ok(entries)
}

/// Whether a store URL is one other hosts can reach (S3, GCS, Azure, HTTP), not a local folder.
fn is_shared(url: &str) -> bool {
    !(url.starts_with("file:") || url.starts_with("memory:"))
}
