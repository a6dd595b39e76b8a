//! The memory tier: moka, weighted by encoded bytes, entries expire after a TTL.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::CachedResult;
use crate::key::{RequestKey, SourceTag};

#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<RequestKey, Arc<CachedResult>>,
}

impl MemoryTier {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            // Weigh by payload plus a small fixed overhead for the entry itself.
            .weigher(|_k, v: &Arc<CachedResult>| u32::try_from(v.bytes.len() + 256).unwrap_or(u32::MAX))
            .time_to_live(ttl)
            // `purge_source` invalidates by the entries' source tag.
            .support_invalidation_closures()
            .build();
        Self { cache }
    }

    pub async fn get(&self, key: &RequestKey) -> Option<Arc<CachedResult>> {
        self.cache.get(key).await
    }

    /// Whether the tier holds `key` now (no read, no recency update).
    pub fn contains(&self, key: &RequestKey) -> bool {
        self.cache.contains_key(key)
    }

    pub async fn insert(&self, key: RequestKey, value: Arc<CachedResult>) {
        self.cache.insert(key, value).await;
    }

    /// Drops every entry made from the source with `tag` (all its variants): the next request
    /// reads the origin again. Entries inserted later are not affected.
    pub fn purge_source(&self, tag: SourceTag) {
        // Only fails when closures are not enabled, which `new` does.
        let _ = self.cache.invalidate_entries_if(move |_, v| v.source.is_some_and(|s| s.tag == tag));
    }

    /// Bytes currently held (approximate until moka runs its pending tasks).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::encode::OutputFormat;
    use crate::key::ResultKey;

    fn result(n: usize) -> Arc<CachedResult> {
        Arc::new(CachedResult {
            key: ResultKey::derive(&[&n.to_le_bytes()]),
            bytes: vec![0u8; n].into(),
            format: OutputFormat::Png,
            model: "m".into(),
            width: 1,
            height: 1,
            source: None,
            consistency: None,
        })
    }

    #[tokio::test]
    async fn hits_and_byte_budget() {
        let m = MemoryTier::new(10_000, Duration::from_secs(60));
        let k = RequestKey::derive(&[b"a"]);
        m.insert(k, result(100)).await;
        assert_eq!(m.get(&k).await.unwrap().bytes.len(), 100);
        // Far over budget: moka evicts to stay within max_capacity.
        for i in 0..50u8 {
            m.insert(RequestKey::derive(&[&[i]]), result(1000)).await;
        }
        m.cache.run_pending_tasks().await;
        assert!(m.weighted_size() <= 10_000, "{}", m.weighted_size());
    }

    #[tokio::test]
    async fn purge_drops_only_the_sources_entries() {
        use crate::cache::SourceMeta;
        let m = MemoryTier::new(100_000, Duration::from_secs(60));
        let from = |origin: &str, key: &str, n| {
            let meta = SourceMeta { tag: SourceTag::of(origin, key), modified: None };
            Arc::new(result(n).for_source(meta))
        };
        let (a1, a2, b, upload) = (RequestKey::derive(&[b"a1"]), RequestKey::derive(&[b"a2"]), RequestKey::derive(&[b"b"]), RequestKey::derive(&[b"u"]));
        m.insert(a1, from("default", "a.jpg", 10)).await;
        m.insert(a2, from("default", "a.jpg", 20)).await;
        m.insert(b, from("default", "b.jpg", 30)).await;
        m.insert(upload, result(40)).await;
        m.purge_source(SourceTag::of("default", "a.jpg"));
        assert!(m.get(&a1).await.is_none() && m.get(&a2).await.is_none(), "every variant of a.jpg");
        assert!(m.get(&b).await.is_some() && m.get(&upload).await.is_some());
        // Entries made after the purge are kept.
        m.insert(a1, from("default", "a.jpg", 10)).await;
        assert!(m.get(&a1).await.is_some());
    }

    #[tokio::test]
    async fn entries_expire() {
        let m = MemoryTier::new(10_000, Duration::from_millis(50));
        let k = RequestKey::derive(&[b"a"]);
        m.insert(k, result(10)).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(m.get(&k).await.is_none());
    }
}
