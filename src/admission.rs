//! Admission by memory: a job runs only when the bytes it will hold fit the server's budget.
//!
//! The inference queue bounds jobs, not bytes, and one job on a 16 MP source holds gigabytes
//! (the decoded source, the engine's output at up to 4× per side, the resize and encode
//! buffers). `job_bytes` estimates a job's peak from its plan — from the header, before any
//! pixel is decoded — and `MemoryBudget::admit` takes that many bytes from a byte semaphore or
//! refuses at once: 503 with `Retry-After` while the budget is in use, 413 for a job larger than
//! the whole budget (it could never run). The `MemoryPermit` travels with the job's buffers
//! (into the blocking stages too) and gives the bytes back when the last copy drops, however
//! the job ends: done, failed, cancelled or panicked.
//!
//! The budget is `limits.memory_budget` bytes, or by default `limits.memory_budget_fraction` of
//! the memory this process may use: the cgroup limit (v2 `memory.max`, v1
//! `memory.limit_in_bytes`) where one is set, else `MemTotal`. It covers per-job image buffers;
//! model weights, engine scratch, the memory tier (`cache.memory.max_bytes`) and source bytes
//! being fetched come on top, which is why the default fraction leaves half free.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;
use crate::error::{Classify, ErrorClass};
use crate::plan::Plan;
use crate::telemetry::Metrics;

/// The semaphore counts KiB: `acquire_many` takes a `u32`, and KiB give 4 TiB of range.
const UNIT: u64 = 1024;

/// Assumed when no memory size can be read (not Linux, no /proc).
const FALLBACK_MEMORY: u64 = 4 << 30;

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum AdmitError {
    #[error("the server's memory budget is in use (this job needs about {need_mib} MiB); retry later")]
    Busy { need_mib: u64 },
    #[error("this job needs about {need_mib} MiB, more than the server's whole memory budget ({budget_mib} MiB)")]
    TooLarge { need_mib: u64, budget_mib: u64 },
}

impl Classify for AdmitError {
    fn class(&self) -> ErrorClass {
        match self {
            AdmitError::Busy { .. } => ErrorClass::Overloaded,
            AdmitError::TooLarge { .. } => ErrorClass::TooLarge,
        }
    }
}

pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: u32,
    metrics: Arc<Metrics>,
}

/// Bytes a job holds from the budget; clones share them, the last drop gives them back.
#[derive(Clone)]
pub struct MemoryPermit(#[allow(dead_code)] Arc<Held>);

struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.memory_admitted_bytes.sub(self.bytes as i64);
    }
}

impl MemoryBudget {
    pub fn new(budget_bytes: u64, metrics: Arc<Metrics>) -> MemoryBudget {
        let total_units = (budget_bytes / UNIT).clamp(1, u64::from(u32::MAX).min(Semaphore::MAX_PERMITS as u64)) as u32;
        metrics.memory_budget_bytes.set((u64::from(total_units) * UNIT) as i64);
        MemoryBudget { units: Arc::new(Semaphore::new(total_units as usize)), total_units, metrics }
    }

    /// The configured budget, or the default fraction of this process's memory limit.
    pub fn from_config(cfg: &LimitsConfig, metrics: Arc<Metrics>) -> MemoryBudget {
        let bytes = match cfg.memory_budget {
            0 => (memory_limit().unwrap_or(FALLBACK_MEMORY) as f64 * cfg.memory_budget_fraction) as u64,
            b => b,
        };
        MemoryBudget::new(bytes, metrics)
    }

    pub fn budget_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Takes `bytes` from the budget now, or says why not (never waits).
    pub fn admit(&self, bytes: u64) -> Result<MemoryPermit, AdmitError> {
        let need_mib = bytes.div_ceil(1 << 20);
        let units = bytes.div_ceil(UNIT).max(1);
        if units > u64::from(self.total_units) {
            return Err(AdmitError::TooLarge { need_mib, budget_mib: self.budget_bytes() >> 20 });
        }
        let permit = self.units.clone().try_acquire_many_owned(units as u32).map_err(|_| {
            self.metrics.memory_refused.inc();
            AdmitError::Busy { need_mib }
        })?;
        let bytes = units * UNIT;
        self.metrics.memory_admitted_bytes.add(bytes as i64);
        Ok(MemoryPermit(Arc::new(Held { _permit: permit, bytes, metrics: self.metrics.clone() })))
    }
}

/// A job's peak bytes, from its plan. Deliberately pessimistic: it assumes an alpha plane and a
/// 16-bit source, counts tile overlap, and takes the largest of the three stages:
/// - decode: the decoder's buffer (≤ 8 B/px), its f32 RGBA conversion (16) and the planar copy
///   with alpha (16);
/// - infer: the input tiles and alpha, the engine's output tiles and the stitched image;
/// - finish: the stitched image, the per-plane resize copies, the resized RGB and alpha, and
///   the encoder's 8-bit buffer and output.
pub fn job_bytes(plan: &Plan) -> u64 {
    let px = |w: u32, h: u32| u64::from(w) * u64::from(h);
    let (src, eng, out) = (px(plan.src_w, plan.src_h), px(plan.engine_w, plan.engine_h), px(plan.out_w, plan.out_h));
    let overlap = match plan.engine.as_ref().and_then(|e| e.tiling()) {
        Some(t) if t.tile > 2 * t.overlap => {
            let inner = f64::from(t.tile - 2 * t.overlap);
            (f64::from(t.tile) / inner).powi(2).min(4.0)
        }
        _ => 1.0,
    };
    let tiled = |n: u64, bytes_per_px: u64| (n as f64 * bytes_per_px as f64 * overlap) as u64;
    let decode = src * (8 + 16 + 16);
    let infer = tiled(src, 12) + src * 4 + tiled(eng, 12) + eng * 12;
    let finish = eng * 12 + (src + eng) * 4 + out * (4 + 12 + 4) + out * 8;
    decode.max(infer).max(finish)
}

/// The memory this process may use: the tighter of its cgroup's limit and the machine's RAM.
pub fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let kib = m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        Some(kib * 1024)
    });
    match (cgroup_limit(), total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

/// cgroup v2 `memory.max` or v1 `memory.limit_in_bytes` of this process's cgroup (or the root
/// of the mount, as seen inside a container); `None` when unlimited or unreadable.
fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    candidates.push("/sys/fs/cgroup/memory.max".into());
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    candidates.iter().find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_the_budget_refuses_beyond_and_returns_bytes_on_drop() {
        let budget = MemoryBudget::new(10 << 20, Arc::new(Metrics::new()));
        let a = budget.admit(6 << 20).unwrap();
        let a2 = a.clone();
        assert_eq!(budget.admit(6 << 20).err(), Some(AdmitError::Busy { need_mib: 6 }));
        drop(a);
        assert!(budget.admit(6 << 20).is_err(), "a clone still holds the bytes");
        drop(a2);
        let b = budget.admit(6 << 20).unwrap();
        assert_eq!(budget.admit(11 << 20).err(), Some(AdmitError::TooLarge { need_mib: 11, budget_mib: 10 }));
        drop(b);
        assert_eq!(budget.metrics.memory_admitted_bytes.get(), 0);
    }

    #[test]
    fn the_machine_has_a_memory_limit() {
        let limit = memory_limit().expect("Linux reports MemTotal");
        assert!(limit > 64 << 20, "{limit}");
    }
}
