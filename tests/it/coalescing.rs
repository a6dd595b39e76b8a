//! Coalescing and cancellation, observed from outside: /metrics and response headers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_identical_misses_run_the_engine_once() {
    let engine = SlowEngine::new(Duration::from_millis(500));
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| c.ml.warm_up = false)
        .start()
        .await;
    s.put_source("a.png", &png(16, 16));
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (url, barrier) = (s.url("/x2/model=slow/format=png/a.png"), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = client().get(url).send().await.unwrap();
            let cache = r.headers()["x-upres-cache"].to_str().unwrap().to_string();
            (r.status().as_u16(), cache, r.bytes().await.unwrap())
        }));
    }
    let mut bodies = Vec::new();
    let mut outcomes = std::collections::HashMap::new();
    for t in tasks {
        let (status, cache, body) = t.await.unwrap();
        assert_eq!(status, 200);
        *outcomes.entry(cache).or_insert(0) += 1;
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every waiter gets identical bytes");
    assert_eq!(outcomes.get("miss"), Some(&1), "{outcomes:?}");
    assert!(outcomes.get("coalesced").copied().unwrap_or(0) >= 50, "{outcomes:?}");
    assert_eq!(s.engine_runs().await, 1);
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_alone_cancels_its_work() {
    let engine = SlowEngine::new(Duration::from_secs(20));
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| c.ml.warm_up = false)
        .start()
        .await;
    s.put_source("a.png", &png(8, 8));
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(400)).build().unwrap();
    assert!(impatient.get(s.url("/x2/model=slow/a.png")).send().await.is_err(), "the client gives up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.saw_cancel.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(engine.saw_cancel.load(Ordering::SeqCst), "the engine was told to stop");
    // The server is healthy and the queue is empty again.
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.app.batcher.depth() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.app.batcher.depth(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_continues_for_a_remaining_waiter_when_the_first_client_leaves() {
    let engine = SlowEngine::new(Duration::from_millis(800));
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| c.ml.warm_up = false)
        .start()
        .await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/model=slow/format=png/a.png");
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let leaver = tokio::spawn({
        let url = url.clone();
        async move { impatient.get(url).send().await.is_err() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let patient = client().get(&url).send().await.unwrap();
    assert!(leaver.await.unwrap(), "the first client gave up");
    assert_eq!(patient.status(), 200);
    assert_eq!(patient.headers()["x-upres-cache"], "coalesced");
    assert!(!engine.saw_cancel.load(Ordering::SeqCst));
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    s.stop().await;
}
