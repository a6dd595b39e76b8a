//! Coalescing and cancellation, observed from outside: /metrics and response headers. The
//! engine is gated: each test decides when its one pass may finish, so the interleavings below
//! are the ones asserted, whatever the machine's speed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_identical_misses_run_the_engine_once() {
    let engine = SlowEngine::gated();
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
    // The pass runs only once all 100 requests wait on the one flight.
    engine.started(1).await;
    eventually("100 requests on one flight", || s.app.flights.waiters() == 100).await;
    engine.open();
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
    assert_eq!(outcomes.get("coalesced"), Some(&99), "{outcomes:?}");
    assert_eq!(s.engine_runs().await, 1);
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_alone_cancels_its_work() {
    let engine = SlowEngine::gated();
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| c.ml.warm_up = false)
        .start()
        .await;
    s.put_source("a.png", &png(8, 8));
    let request = tokio::spawn(client().get(s.url("/x2/model=slow/a.png")).send());
    engine.started(1).await;
    request.abort(); // the client goes away while its pass runs
    engine.cancelled().await;
    // The server is healthy and the queue is empty again.
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    eventually("the queue drains", || s.app.batcher.depth() == 0).await;
    assert_eq!(s.app.flights.in_flight(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_continues_for_a_remaining_waiter_when_the_first_client_leaves() {
    let engine = SlowEngine::gated();
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| c.ml.warm_up = false)
        .start()
        .await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/model=slow/format=png/a.png");
    let leaver = tokio::spawn(client().get(&url).send());
    engine.started(1).await;
    let patient = tokio::spawn(client().get(&url).send());
    eventually("the second request joined the flight", || s.app.flights.waiters() == 2).await;
    leaver.abort();
    eventually("the first request left", || s.app.flights.waiters() == 1).await;
    engine.open();
    let patient = patient.await.unwrap().unwrap();
    assert_eq!(patient.status(), 200);
    assert_eq!(patient.headers()["x-upres-cache"], "coalesced");
    assert!(!engine.saw_cancel.load(Ordering::SeqCst));
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    s.stop().await;
}
