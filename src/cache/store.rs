//! The store tier: encoded results in an object store, verified by hash on every read.
//!
//! Object layout: `results/<first 2 hex>/<result key hex>` holding a frame:
//! `b"UPRES01\n"` ‖ u32 LE header length ‖ JSON header ‖ image bytes. The header carries the
//! content type, model id, dimensions and the blake3 of the image bytes; a read whose bytes do
//! not hash to that value (torn write, bit rot, tampering) is reported `Corrupt` and treated as a
//! miss, and the recomputed result overwrites it. Writes are single atomic puts.
//!
//! Every call goes through `TimedStore` (the tier is opened with `cache.store.timeout`), and its
//! outcome is kept in `StoreHealth`, which `/readyz` reports without waiting on the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::CachedResult;
use crate::imaging::consistency::Score;
use crate::imaging::encode::OutputFormat;
use crate::key::ResultKey;
use crate::objects::Bucket;

const MAGIC: &[u8; 8] = b"UPRES01\n";

#[derive(Serialize, Deserialize)]
struct Header {
    content_type: String,
    model: String,
    width: u32,
    height: u32,
    blake3: String,
    /// The model output's consistency score; absent in older frames and for plain resizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consistency: Option<Score>,
}

/// What a store read found.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedResult),
    Miss,
    /// Present but failed verification; the reason is for logs.
    Corrupt(String),
}

#[derive(thiserror::Error, Debug)]
#[error("result store: {0}")]
pub struct StoreError(String);

#[derive(Clone)]
pub struct StoreTier {
    bucket: Bucket,
    health: Arc<parking_lot::Mutex<StoreHealth>>,
    probing: Arc<std::sync::atomic::AtomicBool>,
}

/// What the tier's recent calls say about the store.
#[derive(Clone, Debug, Default)]
pub struct StoreHealth {
    /// Calls failed (or timed out) since the last one that succeeded.
    pub failures_in_a_row: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When a call last finished (success or failure); none before the first.
    pub last_seen: Option<Instant>,
}

impl StoreTier {
    pub fn new(bucket: Bucket) -> Self {
        Self { bucket, health: Default::default(), probing: Default::default() }
    }

    /// The tier with a time limit on every call (results and claims alike).
    pub fn with_timeout(bucket: Bucket, limit: Duration) -> Self {
        let store = Arc::new(super::timed::TimedStore::new(bucket.store, limit));
        Self::new(Bucket { store, ..bucket })
    }

    pub fn health(&self) -> StoreHealth {
        self.health.lock().clone()
    }

    /// Probes the store in a spawned task when no call finished for `stale` (one probe at a
    /// time), so `health` stays current without anyone waiting on the store.
    pub fn refresh_health(&self, stale: Duration) {
        use std::sync::atomic::Ordering;
        let fresh = self.health.lock().last_seen.is_some_and(|t| t.elapsed() < stale);
        if fresh || self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let tier = self.clone();
        tokio::spawn(async move {
            let _ = tier.probe().await;
            tier.probing.store(false, Ordering::Release);
        });
    }

    fn observe<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut h = self.health.lock();
        h.last_seen = Some(Instant::now());
        match &r {
            Ok(_) => h.failures_in_a_row = 0,
            Err(e) => {
                h.failures_in_a_row += 1;
                h.last_error = Some(e.0.clone());
            }
        }
        r
    }

    pub fn url(&self) -> &str {
        &self.bucket.url
    }

    /// The bucket (claims live beside the results).
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    fn location(&self, key: &ResultKey) -> Path {
        let hex = key.hex();
        self.bucket.prefix.parts().chain(Path::from_iter(["results", &hex[..2], &hex]).parts()).collect()
    }

    pub async fn get(&self, key: &ResultKey) -> Result<Lookup, StoreError> {
        let r = self.get_unobserved(key).await;
        self.observe(r)
    }

    async fn get_unobserved(&self, key: &ResultKey) -> Result<Lookup, StoreError> {
        let res = match self.bucket.store.get(&self.location(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(Lookup::Miss),
            Err(e) => return Err(StoreError(e.to_string())),
        };
        let bytes = res.bytes().await.map_err(|e| StoreError(e.to_string()))?;
        Ok(match unframe(key, bytes) {
            Ok(r) => Lookup::Hit(r),
            Err(reason) => Lookup::Corrupt(reason),
        })
    }

    /// Whether the store holds a result under `key` (a HEAD: the object is not read or checked).
    pub async fn contains(&self, key: &ResultKey) -> Result<bool, StoreError> {
        let r = match self.bucket.store.head(&self.location(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError(e.to_string())),
        };
        self.observe(r)
    }

    pub async fn put(&self, result: &CachedResult) -> Result<(), StoreError> {
        let framed = frame(result);
        let r = self
            .bucket
            .store
            .put(&self.location(&result.key), PutPayload::from(framed))
            .await
            .map(|_| ())
            .map_err(|e| StoreError(e.to_string()));
        self.observe(r)
    }

    /// Readiness: the store answers (a missing probe object is fine).
    pub async fn probe(&self) -> Result<(), StoreError> {
        let path: Path = self.bucket.prefix.parts().chain(Path::from("upres-readyz-probe").parts()).collect();
        let r = match self.bucket.store.head(&path).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError(e.to_string())),
        };
        self.observe(r)
    }
}

fn frame(r: &CachedResult) -> Bytes {
    let header = Header {
        content_type: r.format.content_type().to_string(),
        model: r.model.clone(),
        width: r.width,
        height: r.height,
        blake3: blake3::hash(&r.bytes).to_hex().to_string(),
        consistency: r.consistency,
    };
    let json = serde_json::to_vec(&header).expect("header serialises");
    let mut out = BytesMut::with_capacity(MAGIC.len() + 4 + json.len() + r.bytes.len());
    out.put_slice(MAGIC);
    out.put_u32_le(json.len() as u32);
    out.put_slice(&json);
    out.put_slice(&r.bytes);
    out.freeze()
}

fn unframe(key: &ResultKey, data: Bytes) -> Result<CachedResult, String> {
    if data.len() < MAGIC.len() + 4 || &data[..MAGIC.len()] != MAGIC {
        return Err("bad magic".into());
    }
    let len = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
    let body_start = 12usize.checked_add(len).filter(|&e| e <= data.len()).ok_or("header length out of range")?;
    let header: Header = serde_json::from_slice(&data[12..body_start]).map_err(|e| format!("bad header: {e}"))?;
    let body = data.slice(body_start..);
    if blake3::hash(&body).to_hex().as_str() != header.blake3 {
        return Err("content hash mismatch".into());
    }
    let format = OutputFormat::from_content_type(&header.content_type).ok_or("unknown content type")?;
    Ok(CachedResult {
        key: *key,
        bytes: body,
        format,
        model: header.model,
        width: header.width,
        height: header.height,
        source: None,
        consistency: header.consistency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample() -> CachedResult {
        CachedResult {
            key: ResultKey::derive(&[b"k"]),
            bytes: Bytes::from_static(b"\x89PNG fake"),
            format: OutputFormat::Png,
            model: "lanczos-x4@1".into(),
            width: 4,
            height: 4,
            source: None,
            consistency: Some(Score { psnr: 41.5, ssim: 0.97 }),
        }
    }

    #[tokio::test]
    async fn put_get_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let tier = StoreTier::new(Bucket::open(&format!("file://{}", dir.path().display()), &BTreeMap::new(), true).unwrap());
        let r = sample();
        assert!(matches!(tier.get(&r.key).await.unwrap(), Lookup::Miss));
        tier.put(&r).await.unwrap();
        match tier.get(&r.key).await.unwrap() {
            Lookup::Hit(got) => assert_eq!(got, r),
            other => panic!("{other:?}"),
        }
        // Flip the last byte of the stored object.
        let hex = r.key.hex();
        let file = dir.path().join("results").join(&hex[..2]).join(&hex);
        let mut raw = std::fs::read(&file).unwrap();
        *raw.last_mut().unwrap() ^= 0xff;
        std::fs::write(&file, raw).unwrap();
        assert!(matches!(tier.get(&r.key).await.unwrap(), Lookup::Corrupt(_)));
        // Truncated to garbage.
        std::fs::write(&file, b"UPRES01\n\xff\xff\xff\xff").unwrap();
        assert!(matches!(tier.get(&r.key).await.unwrap(), Lookup::Corrupt(_)));
        tier.probe().await.unwrap();
    }
}
