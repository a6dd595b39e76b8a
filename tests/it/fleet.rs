//! Replicas sharing a real S3 result tier (moto's server on 127.0.0.1): results served across
//! replicas, hash verification of another replica's writes, cross-replica claims.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::support::*;

/// A replica on the shared origin of `first` (or a new one) and the S3 bucket, with `models`.
async fn replica(s3: &S3Server, first: Option<&TestServer>, models: Vec<upres::engine::registry::ModelEntry>) -> TestServer {
    let setup = match first {
        Some(f) => Setup::sharing(f),
        None => Setup::new(),
    };
    let (options, bucket) = (s3.options(), s3.bucket.clone());
    setup
        .models(models)
        .config(move |c| {
            c.cache.store.url = format!("s3://{bucket}");
            c.cache.store.options = options;
            c.ml.warm_up = false;
        })
        .start()
        .await
}

/// `upres_cache_events_total{tier, event}` of one server.
async fn events(s: &TestServer, tier: &str, event: &str) -> u64 {
    let text = client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let (tier, event) = (format!("tier=\"{tier}\""), format!("event=\"{event}\""));
    text.lines()
        .filter(|l| l.starts_with("upres_cache_events_total{") && l.contains(&tier) && l.contains(&event))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The result key (hex) a response names in its ETag.
fn key_of(r: &reqwest::Response) -> String {
    r.headers()["etag"].to_str().unwrap().trim_matches('"').to_string()
}

fn result_path(hex: &str) -> Path {
    Path::from_iter(["results", &hex[..2], hex])
}

fn claim_path(hex: &str) -> Path {
    Path::from_iter(["claims", hex])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_serves_another_replicas_result_from_s3_without_computing() {
    let s3 = S3Server::start().await;
    let a = replica(&s3, None, lanczos()).await;
    let b = replica(&s3, Some(&a), lanczos()).await;
    a.put_source("shop/a.png", &png(40, 30));
    let url = "/x2/model=lanczos/format=png/shop/a.png";

    let ra = client().get(a.url(url)).send().await.unwrap();
    assert_eq!(ra.status(), 200);
    assert_eq!(ra.headers()["x-upres-cache"], "miss");
    let key = key_of(&ra);
    let body_a = ra.bytes().await.unwrap();
    // The object is in the bucket, framed, under results/.
    assert!(s3.bucket().store.head(&result_path(&key)).await.is_ok(), "A wrote its result to S3");

    let rb = client().get(b.url(url)).send().await.unwrap();
    assert_eq!(rb.status(), 200);
    assert_eq!(rb.headers()["x-upres-cache"], "hit-store");
    assert_eq!(key_of(&rb), key);
    assert_eq!(rb.bytes().await.unwrap(), body_a);
    assert!(a.engine_runs().await >= 1);
    assert_eq!(b.engine_runs().await, 0, "B served A's result without running its engine");
    assert_eq!(events(&b, "store", "hit").await, 1);
    // And by key, through /r/ on B.
    let stored = client().get(b.url(&format!("/r/{key}.png"))).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.bytes().await.unwrap(), body_a);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_corrupted_in_the_bucket_is_caught_by_the_other_replica_recomputed_and_rewritten() {
    let s3 = S3Server::start().await;
    let a = replica(&s3, None, lanczos()).await;
    let b = replica(&s3, Some(&a), lanczos()).await;
    a.put_source("b.png", &png(24, 24));
    let url = "/x2/model=lanczos/format=png/b.png";
    let ra = client().get(a.url(url)).send().await.unwrap();
    let key = key_of(&ra);
    let good = ra.bytes().await.unwrap();

    // Flip the last byte of the stored frame, in the bucket.
    let bucket = s3.bucket();
    let framed = bucket.store.get(&result_path(&key)).await.unwrap().bytes().await.unwrap();
    let mut bad = framed.to_vec();
    *bad.last_mut().unwrap() ^= 0xff;
    bucket.store.put(&result_path(&key), PutPayload::from(bad.clone())).await.unwrap();

    let rb = client().get(b.url(url)).send().await.unwrap();
    assert_eq!(rb.status(), 200);
    assert_eq!(rb.headers()["x-upres-cache"], "miss", "B recomputed instead of serving bad bytes");
    assert_eq!(rb.bytes().await.unwrap(), good);
    assert_eq!(events(&b, "store", "corrupt").await, 1);
    assert!(b.engine_runs().await >= 1);
    let rewritten = bucket.store.get(&result_path(&key)).await.unwrap().bytes().await.unwrap();
    assert_eq!(rewritten, framed, "B rewrote the object with the verified result");

    // A third replica now gets a verified store hit.
    let c = replica(&s3, Some(&a), lanczos()).await;
    let rc = client().get(c.url(url)).send().await.unwrap();
    assert_eq!(rc.headers()["x-upres-cache"], "hit-store");
    assert_eq!(c.engine_runs().await, 0);
    for s in [a, b, c] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_misses_on_two_replicas_run_the_engine_once() {
    let s3 = S3Server::start().await;
    let (engine_a, engine_b) = (SlowEngine::new(Duration::from_millis(700)), SlowEngine::new(Duration::from_millis(700)));
    let a = replica(&s3, None, vec![entry("slow", engine_a.clone())]).await;
    let b = replica(&s3, Some(&a), vec![entry("slow", engine_b.clone())]).await;
    a.put_source("c.png", &png(16, 16));
    let path = "/x2/model=slow/format=png/c.png";
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (url, barrier) = (if i % 2 == 0 { a.url(path) } else { b.url(path) }, barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = client().get(url).send().await.unwrap();
            let cache = r.headers()["x-upres-cache"].to_str().unwrap().to_string();
            (r.status().as_u16(), cache, r.bytes().await.unwrap())
        }));
    }
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, cache, body) = t.await.unwrap();
        assert_eq!(status, 200);
        *outcomes.entry(cache).or_default() += 1;
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "identical bytes everywhere");
    let passes = engine_a.passes.load(Ordering::SeqCst) + engine_b.passes.load(Ordering::SeqCst);
    assert_eq!(passes, 1, "one forward pass across both replicas; outcomes {outcomes:?}");
    assert_eq!(a.engine_runs().await + b.engine_runs().await, 1);
    assert_eq!(outcomes.get("miss"), Some(&1), "{outcomes:?}");
    // The other replica waited on the claim and then read the result from S3.
    let waited = events(&a, "claim", "wait").await + events(&b, "claim", "wait").await;
    let found = events(&a, "claim", "found").await + events(&b, "claim", "found").await;
    assert_eq!((waited, found), (1, 1), "{outcomes:?}");
    // The claim is gone once the result is stored.
    let key = key_of(&client().get(a.url(path)).send().await.unwrap());
    let claim = s3.bucket().store.head(&claim_path(&key)).await;
    assert!(matches!(claim, Err(object_store::Error::NotFound { .. })), "{claim:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_replicas_claim_is_taken_over_when_it_expires() {
    let s3 = S3Server::start().await;
    let a = replica(&s3, None, lanczos()).await;
    a.put_source("d.png", &png(20, 20));
    let url = "/x2/model=lanczos/format=png/d.png";
    let key = key_of(&client().get(a.url(url)).send().await.unwrap());
    let bucket = s3.bucket();

    for (expires_in_ms, wait_at_least) in [(-5_000i64, Duration::ZERO), (1_500, Duration::from_millis(1_200))] {
        // No result, and a claim by a replica that died (already expired, or expiring soon).
        bucket.store.delete(&result_path(&key)).await.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let record = serde_json::json!({ "owner": "crashed-replica", "expires_unix_ms": now + expires_in_ms });
        bucket.store.put(&claim_path(&key), PutPayload::from(serde_json::to_vec(&record).unwrap())).await.unwrap();

        let b = replica(&s3, Some(&a), lanczos()).await;
        let started = Instant::now();
        let r = client().get(b.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upres-cache"], "miss");
        assert!(started.elapsed() >= wait_at_least, "a live claim is respected until it expires");
        assert_eq!(events(&b, "claim", "takeover").await, 1);
        assert!(b.engine_runs().await >= 1);
        assert!(bucket.store.head(&result_path(&key)).await.is_ok(), "the result is stored again");
        let claim = bucket.store.head(&claim_path(&key)).await;
        assert!(matches!(claim, Err(object_store::Error::NotFound { .. })), "released: {claim:?}");
        b.stop().await;
    }
    a.stop().await;
}
