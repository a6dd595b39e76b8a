//! Replicas sharing a real S3 result tier (moto's server on 127.0.0.1): results served across
//! replicas, hash verification of another replica's writes, cross-replica claims.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::process::ChildServer;
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

/// The claim record of `hex` in the bucket, if any.
async fn claim_record(bucket: &upres::objects::Bucket, hex: &str) -> Option<serde_json::Value> {
    let bytes = bucket.store.get(&claim_path(hex)).await.ok()?.bytes().await.unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// Released: no claim, or a tombstone (an expired record; S3 has no conditional delete).
async fn assert_released(bucket: &upres::objects::Bucket, hex: &str) {
    if let Some(record) = claim_record(bucket, hex).await {
        assert_eq!(record["expires_unix_ms"], 0, "a live claim is left: {record}");
    }
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
    a.stored().await;
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
    a.stored().await;

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
    b.stored().await;
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
    let (engine_a, engine_b) = (SlowEngine::gated(), SlowEngine::gated());
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
    // The pass finishes only once every request waits: five on each replica's flight, one
    // replica's leader computing, the other's waiting on the claim.
    eventually("one pass started", || engine_a.passes.load(Ordering::SeqCst) + engine_b.passes.load(Ordering::SeqCst) == 1).await;
    eventually("five requests on each replica's flight", || a.app.flights.waiters() == 5 && b.app.flights.waiters() == 5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&a, "claim", "wait").await + events(&b, "claim", "wait").await == 0 {
        assert!(Instant::now() < deadline, "no replica waits on the claim");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine_a.open();
    engine_b.open();
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
    // The claim is released once the result is stored (after the responses).
    a.stored().await;
    b.stored().await;
    let key = key_of(&client().get(a.url(path)).send().await.unwrap());
    assert_released(&s3.bucket(), &key).await;
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
    a.stored().await;
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
        b.stored().await;
        assert!(bucket.store.head(&result_path(&key)).await.is_ok(), "the result is stored again");
        assert_released(&bucket, &key).await;
        b.stop().await;
    }
    a.stop().await;
}

/// Claims on the S3 bucket directly, as replica `n` would make them.
fn claims_on(s3: &S3Server, ttl: Duration) -> upres::cache::claim::Claims {
    let cfg = upres::config::ClaimsConfig { enabled: true, ttl, poll: Duration::from_millis(10) };
    let results = upres::cache::store::StoreTier::new(s3.bucket());
    upres::cache::claim::Claims::new(results, &cfg, Arc::new(upres::telemetry::Metrics::new()))
}

fn claimed(turn: upres::cache::claim::Turn) -> upres::cache::claim::Held {
    match turn {
        upres::cache::claim::Turn::Compute(held) => held,
        upres::cache::claim::Turn::Found(_) => panic!("expected to compute"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_an_expired_claim_is_taken_over_by_exactly_one_replica_and_kept_from_the_stalled_owner() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket();
    let key = upres::key::ResultKey::derive(&[b"s3-race"]);
    let hex = key.hex();
    let expired = serde_json::json!({ "owner": "stalled-replica", "expires_unix_ms": 1, "lease": 1 });
    bucket.store.put(&claim_path(&hex), PutPayload::from(serde_json::to_vec(&expired).unwrap())).await.unwrap();
    // Six replicas notice the expiry at once; If-Match on the ETag they read lets one through.
    let start = Arc::new(tokio::sync::Barrier::new(6));
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let (claims, start) = (claims_on(&s3, Duration::from_secs(60)), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                (claimed(claims.wait_or_claim(&key, Duration::ZERO).await), claims.owner().to_string())
            })
        })
        .collect();
    let mut held = Vec::new();
    for r in racers {
        held.push(r.await.unwrap());
    }
    let winners: Vec<&String> = held.iter().filter(|(h, _)| h.is_claimed()).map(|(_, owner)| owner).collect();
    assert_eq!(winners.len(), 1, "one winner");
    let record = claim_record(&bucket, &hex).await.unwrap();
    assert_eq!(record["owner"], winners[0].as_str());
    // The stalled owner comes back: its version is gone, it cannot touch the winner's claim.
    let stalled = claims_on(&s3, Duration::from_secs(60));
    let unclaimed = claimed(stalled.wait_or_claim(&key, Duration::ZERO).await);
    assert!(!unclaimed.is_claimed(), "a live claim is not taken");
    unclaimed.release().await;
    assert_eq!(claim_record(&bucket, &hex).await.unwrap(), record);
    for (h, _) in held {
        h.release().await;
    }
    assert_released(&bucket, &hex).await;
    // A released claim (tombstone) is claimed again at once.
    let again = claimed(stalled.wait_or_claim(&key, Duration::ZERO).await);
    assert!(again.is_claimed());
    again.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_a_release_after_a_takeover_leaves_the_new_owners_claim() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket();
    let key = upres::key::ResultKey::derive(&[b"s3-release"]);
    let hex = key.hex();
    let (slow, next) = (claims_on(&s3, Duration::from_secs(60)), claims_on(&s3, Duration::from_secs(60)));
    let stalled = claimed(slow.wait_or_claim(&key, Duration::ZERO).await);
    assert!(stalled.is_claimed());
    // Its claim expires (written here as time passing would leave it) and `next` takes over.
    let mut record = claim_record(&bucket, &hex).await.unwrap();
    record["expires_unix_ms"] = 1.into();
    bucket.store.put(&claim_path(&hex), PutPayload::from(serde_json::to_vec(&record).unwrap())).await.unwrap();
    let taken = claimed(next.wait_or_claim(&key, Duration::ZERO).await);
    assert!(taken.is_claimed());
    let new_record = claim_record(&bucket, &hex).await.unwrap();
    assert_eq!(new_record["owner"], next.owner());
    stalled.release().await;
    assert_eq!(claim_record(&bucket, &hex).await.unwrap(), new_record, "the stalled owner's release left it");
    taken.release().await;
    assert_released(&bucket, &hex).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_a_long_computation_renews_its_claim_past_the_ttl() {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket();
    let key = upres::key::ResultKey::derive(&[b"s3-renew"]);
    let ttl = Duration::from_millis(600);
    let (owner, other) = (claims_on(&s3, ttl), claims_on(&s3, ttl));
    let mut held = claimed(owner.wait_or_claim(&key, Duration::ZERO).await);
    let first_expiry = claim_record(&bucket, &key.hex()).await.unwrap()["expires_unix_ms"].as_u64().unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Renewals are the events; go on until the first expiry has passed.
    let mut n = 0;
    while now() <= first_expiry + 50 {
        n += 1;
        tokio::time::timeout(Duration::from_secs(10), held.renewed(n)).await.expect("the claim is renewed");
    }
    let unclaimed = claimed(other.wait_or_claim(&key, Duration::ZERO).await);
    assert!(!unclaimed.is_claimed(), "a renewed claim is not taken over");
    assert_eq!(claim_record(&bucket, &key.hex()).await.unwrap()["owner"], owner.owner());
    held.release().await;
    assert_released(&bucket, &key.hex()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_accepted_by_one_replica_is_read_and_finished_through_another() {
    let s3 = S3Server::start().await;
    let a = replica(&s3, None, lanczos()).await;
    let b = replica(&s3, Some(&a), lanczos()).await;
    let image = reqwest::multipart::Part::bytes(png(8, 6)).file_name("a.png").mime_str("image/png").unwrap();
    let form = reqwest::multipart::Form::new().part("image", image).text("scale", "2").text("model", "lanczos").text("format", "png");
    let r = client().post(a.url("/api/v1/jobs")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = location.rsplit('/').next().unwrap().to_string();
    // The record is in the bucket beside results and claims, framed like them.
    let record = s3.bucket().store.get(&Path::from_iter(["jobs", id.as_str()])).await.unwrap().bytes().await.unwrap();
    assert!(record.starts_with(b"UPJOB01\n"));

    // The other replica answers for it, through to the result (a store hit there).
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let r = client().get(b.url(&location)).send().await.unwrap();
        assert_eq!(r.status(), 200, "the second replica knows the job");
        let job: serde_json::Value = r.json().await.unwrap();
        if job["state"] == "done" {
            break job;
        }
        assert!(job["state"] == "queued" || job["state"] == "running", "{job}");
        assert!(Instant::now() < deadline, "not done within 20 s: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let result = client().get(b.url(job["result"]["url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["x-upres-cache"], "hit-store");
    assert_eq!(dimensions(&result.bytes().await.unwrap()), (16, 12));

    // A tampered record reads as unknown, not as someone else's job.
    let mut tampered = record.to_vec();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let path = Path::from_iter(["jobs", id.as_str()]);
    let done_record = s3.bucket().store.get(&path).await.unwrap().bytes().await.unwrap();
    s3.bucket().store.put(&path, PutPayload::from(tampered)).await.unwrap();
    assert_eq!(client().get(b.url(&location)).send().await.unwrap().status(), 404);
    s3.bucket().store.put(&path, PutPayload::from(done_record)).await.unwrap();
    assert_eq!(client().get(a.url(&location)).send().await.unwrap().status(), 200);

    // Finished jobs expire after jobs.ttl: a replica whose TTL has passed answers 404 and deletes
    // the record, after which no replica knows the job.
    let (options, bucket) = (s3.options(), s3.bucket.clone());
    let c = Setup::sharing(&a)
        .config(move |c| {
            c.cache.store.url = format!("s3://{bucket}");
            c.cache.store.options = options;
            c.ml.warm_up = false;
            c.jobs.ttl = Duration::from_millis(1);
        })
        .start()
        .await;
    assert_eq!(client().get(c.url(&location)).send().await.unwrap().status(), 404);
    assert_eq!(client().get(a.url(&location)).send().await.unwrap().status(), 404);
    for s in [a, b, c] {
        s.stop().await;
    }
}

/// A callback receiver on 127.0.0.1 that answers 200 to every POST and counts them.
async fn counting_receiver() -> (String, Arc<std::sync::atomic::AtomicUsize>, tokio::sync::watch::Receiver<Option<serde_json::Value>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::watch::channel(None);
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (_, body) = answer_one_request(socket).await;
            counted.fetch_add(1, Ordering::SeqCst);
            tx.send_replace(serde_json::from_slice(&body).ok());
        }
    });
    (url, count, rx)
}

/// A value of `name` in a Prometheus text page (summed over labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two `upres serve` processes on one bucket. Replica A accepts a job and is SIGKILLed while the
/// job waits in its batcher (A's `engine.max_wait` is ten minutes and the batch is never full, so
/// A cannot finish it); B sees A's lease run out, takes the job over, runs it from the image kept
/// in the bucket and delivers the callback once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_replica_is_killed_mid_run_is_finished_once_by_another() {
    let s3 = S3Server::start().await;
    let models = crate::models::models_with(&["spanx2_ch48"]);
    let origin = tempfile::tempdir().unwrap();
    let (hook, delivered, mut last_callback) = counting_receiver().await;
    let config = |max_wait: &str| {
        let o = s3.options();
        format!(
            r#"
[server]
request_deadline = "3s"
[cache.claims]
ttl = "3s"
[cache.store]
url = "s3://{bucket}"
[cache.store.options]
aws_endpoint = "{endpoint}"
aws_allow_http = "true"
aws_region = "{region}"
aws_access_key_id = "testing"
aws_secret_access_key = "testing"
[ml]
warm_up = false
[engine]
max_batch = 8
max_wait = "{max_wait}"
[jobs]
lease = "1s"
sweep_interval = "200ms"
callback_secret = "s"
callback_allow_private = true
"#,
            bucket = s3.bucket,
            endpoint = o["aws_endpoint"],
            region = o["aws_region"],
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (stalling, normal) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&stalling, config("10m")).unwrap();
    std::fs::write(&normal, config("5ms")).unwrap();
    let start = |cfg: std::path::PathBuf| {
        let (origin, models) = (origin.path().to_path_buf(), models.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            ChildServer::start_with(&origin, &["--config", cfg.to_str().unwrap()], Some(&models), &[])
                .unwrap_or_else(|f| panic!("upres serve did not start: {f:?}"))
        })
    };
    let (a, b) = (start(stalling).await.unwrap(), start(normal).await.unwrap());

    let image = reqwest::multipart::Part::bytes(png(16, 12)).file_name("a.png").mime_str("image/png").unwrap();
    let form = reqwest::multipart::Form::new()
        .part("image", image)
        .text("scale", "2")
        .text("model", "spanx2_ch48")
        .text("format", "png")
        .text("callback_url", hook);
    let r = client().post(a.url("/api/v1/jobs")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", a.log());
    let location = r.headers()["location"].to_str().unwrap().to_string();

    // A's job is in its inference queue (where it waits ten minutes for company): kill A there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = client().get(a.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metric(&text, "upres_engine_queue_depth") >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "A never queued the job: {}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running: serde_json::Value = client().get(b.url(&location)).send().await.unwrap().json().await.unwrap();
    assert_eq!(running["state"], "running", "{running}");
    a.kill();

    // B finishes it: by its sweep or by this GET noticing the expired lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let r = client().get(b.url(&location)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let job: serde_json::Value = r.json().await.unwrap();
        if job["state"] == "done" && job["callback"] == "delivered" {
            break job;
        }
        assert!(job["state"] == "running" || job["state"] == "done", "{job}\n{}", b.log());
        assert!(Instant::now() < deadline, "B did not finish the job within 30 s: {job}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(job["result"]["model"].as_str().unwrap().starts_with("spanx2_ch48"), "{job}");
    let result = client().get(b.url(job["result"]["url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(dimensions(&result.bytes().await.unwrap()), (32, 24));

    // Exactly one takeover, one callback (the finished record), and the kept image is gone.
    let text = client().get(b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "upres_job_takeovers_total"), 1.0);
    let callback = last_callback.wait_for(Option::is_some).await.unwrap().clone().unwrap();
    assert_eq!((callback["state"].as_str(), callback["id"].as_str()), (Some("done"), job["id"].as_str()));
    assert_eq!(delivered.load(Ordering::SeqCst), 1, "the callback is delivered once");
    use futures::TryStreamExt;
    let inputs: Vec<_> = s3.bucket().store.list(Some(&Path::from("job-inputs"))).try_collect().await.unwrap();
    assert!(inputs.is_empty(), "the finished job's image is dropped: {inputs:?}");
}
