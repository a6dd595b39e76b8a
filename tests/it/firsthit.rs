//! The first-hit budget: a preview within the budget while the model runs in the background,
//! then the final; coalescing, client departure and overload of that background run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CACHE_CONTROL, ETAG};

use crate::support::*;
use upres::config::{OutputConfig, ServeConfig};

/// A server whose only model is a gated engine that the registry believes takes 10 s per pixel.
async fn gated_server(tweak: impl FnOnce(&mut upres::config::Config) + Send + 'static) -> (TestServer, Arc<GatedEngine>) {
    let engine = GatedEngine::new();
    let s = Setup::new()
        .models(vec![entry("gated", engine.clone())])
        .config(move |c| {
            c.ml.warm_up = false;
            tweak(c);
        })
        .start()
        .await;
    measured_slow(&s.app, 0, Duration::from_secs(10));
    (s, engine)
}

/// Waits (bounded) until the background run's flight has ended, then GETs `url`: the final.
async fn until_final(s: &TestServer, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.app.flights.in_flight() != 0 {
        assert!(Instant::now() < deadline, "the background run never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upres-result"], "final");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_model_answers_a_preview_within_the_budget_then_the_final() {
    let (s, engine) = gated_server(|_| {}).await;
    s.put_source("a.png", &png(16, 12));
    let url = s.url("/x2/model=gated/format=png/a.png");
    let budget = ServeConfig::default().first_hit_budget;

    let clock = Instant::now();
    let first = client().get(&url).send().await.unwrap();
    assert!(clock.elapsed() < budget, "answered after {:?}", clock.elapsed());
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-upres-result"], "preview");
    assert_eq!(first.headers()["x-upres-cache"], "preview");
    assert_eq!(first.headers()["x-upres-model"], upres::preview::PREVIEW_MODEL);
    assert_eq!(first.headers()[CACHE_CONTROL], ServeConfig::default().preview_cache_control.as_str());
    let preview_etag = first.headers()[ETAG].clone();
    let preview = first.bytes().await.unwrap();
    assert_eq!(dimensions(&preview), (32, 24), "the same transform");
    engine.started.notified().await;

    // During the run: the same preview again, from memory.
    let again = client().get(&url).send().await.unwrap();
    assert_eq!(again.headers()["x-upres-result"], "preview");
    assert_eq!(again.headers()[ETAG], preview_etag);
    assert_eq!(again.bytes().await.unwrap(), preview);

    engine.release();
    let last = until_final(&s, &url).await;
    assert_eq!(last.headers()[CACHE_CONTROL], OutputConfig::default().cache_control.as_str());
    assert_ne!(last.headers()[ETAG], preview_etag, "a preview's ETag never validates the final");
    assert!(last.headers()["x-upres-model"].to_str().unwrap().starts_with("gated-x2@"));
    let final_bytes = last.bytes().await.unwrap();
    assert_eq!(dimensions(&final_bytes), (32, 24));
    assert_ne!(final_bytes, preview);
    // Stored (writes run after the response): another replica on the same store serves the
    // final, never the preview.
    s.stored().await;
    let (other, _) = {
        let engine = GatedEngine::new();
        let o = Setup::sharing(&s).models(vec![entry("gated", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
        measured_slow(&o.app, 0, Duration::from_secs(10));
        (o, engine)
    };
    let r = client().get(other.url("/x2/model=gated/format=png/a.png")).send().await.unwrap();
    assert_eq!((r.headers()["x-upres-result"].to_str().unwrap(), r.headers()["x-upres-cache"].to_str().unwrap()), ("final", "hit-store"));
    assert_eq!(r.bytes().await.unwrap(), final_bytes);
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    assert_eq!(s.metric("upres_previews_total").await, 2);
    assert_eq!(s.metric("upres_background_runs_total{outcome=\"done\"}").await, 1);
    other.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_first_hits_cause_one_background_run() {
    let (s, engine) = gated_server(|_| {}).await;
    s.put_source("a.png", &png(16, 16));
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (url, barrier) = (s.url("/x2/model=gated/format=png/a.png"), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-upres-result"], "preview");
            r.bytes().await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "one preview for all");
    engine.started.notified().await;
    engine.release();
    until_final(&s, &s.url("/x2/model=gated/format=png/a.png")).await;
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    assert_eq!(s.metric("upres_background_runs_total").await, 1);
    assert_eq!(s.metric("upres_previews_total").await, 100);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_run_survives_its_client_leaving() {
    let (s, engine) = gated_server(|_| {}).await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/model=gated/format=png/a.png");
    {
        // Its own connection, closed when the client is dropped: nobody waits any more.
        let leaving = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let r = leaving.get(&url).send().await.unwrap();
        assert_eq!(r.headers()["x-upres-result"], "preview");
    }
    engine.started.notified().await;
    // Had the run been cancelled, the engine (which checks once more after the gate) says so.
    engine.release();
    let r = until_final(&s, &url).await;
    assert_eq!(r.headers()["x-upres-cache"], "hit-memory");
    assert!(!engine.saw_cancel.load(Ordering::SeqCst), "the run was not cancelled");
    assert_eq!(s.metric("upres_background_runs_total{outcome=\"done\"}").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_overload_the_preview_is_served_and_the_background_run_dropped() {
    let (s, engine) = gated_server(|c| c.engine.queue_capacity = 1).await;
    s.put_source("a.png", &png(8, 8));
    s.put_source("b.png", &png(8, 8));
    let a = client().get(s.url("/x2/model=gated/format=png/a.png")).send().await.unwrap();
    assert_eq!(a.headers()["x-upres-result"], "preview");
    engine.started.notified().await; // a's run holds the only queue slot
    let b = client().get(s.url("/x2/model=gated/format=png/b.png")).send().await.unwrap();
    assert_eq!(b.status(), 200, "overload still answers the preview");
    assert_eq!(b.headers()["x-upres-result"], "preview");
    assert_eq!(s.metric("upres_background_runs_total{outcome=\"dropped\"}").await, 1);
    assert_eq!(s.app.flights.in_flight(), 1, "b's run was not queued");
    engine.release();
    until_final(&s, &s.url("/x2/model=gated/format=png/a.png")).await;
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_budget_always_waits_for_the_model() {
    let (s, engine) = gated_server(|c| c.serve.first_hit_budget = Duration::ZERO).await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/model=gated/format=png/a.png");
    let request = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    engine.started.notified().await;
    engine.release();
    let r = request.await.unwrap();
    assert_eq!((r.headers()["x-upres-result"].to_str().unwrap(), r.headers()["x-upres-cache"].to_str().unwrap()), ("final", "miss"));
    assert_eq!(s.metric("upres_previews_total").await, 0);
    s.stop().await;
}

/// With a second, fast model loaded (measured within the budget), the preview is made by that
/// model instead of Lanczos, through the queue, and `X-Upres-Model` names it; the final is still
/// the requested model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preview_is_made_by_the_cheapest_model_that_fits_the_budget() {
    let (slow, quick) = (GatedEngine::new(), SlowEngine::new(Duration::ZERO));
    let s = Setup::new()
        .models(vec![entry("gated", slow.clone()), entry("quick", quick.clone())])
        .config(|c| c.ml.warm_up = false)
        .start()
        .await;
    measured_slow(&s.app, 0, Duration::from_secs(10));
    measured_slow(&s.app, 1, Duration::from_nanos(10));
    s.put_source("q.png", &png(16, 12));
    let url = s.url("/x2/model=gated/format=png/q.png");

    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-upres-result"], "preview");
    let model = first.headers()["x-upres-model"].to_str().unwrap().to_string();
    assert!(model.starts_with("slow-x2@"), "the quick model made the preview, not {model}");
    assert_eq!(quick.passes.load(Ordering::SeqCst), 1, "one pass of the quick model");
    assert_eq!(dimensions(&first.bytes().await.unwrap()), (32, 24), "the same transform");

    // A quick model measured too slow for the budget leaves the preview to Lanczos.
    measured_slow(&s.app, 1, Duration::from_secs(10));
    s.put_source("r.png", &png(16, 12));
    let other = client().get(s.url("/x2/model=gated/format=png/r.png")).send().await.unwrap();
    assert_eq!(other.headers()["x-upres-result"], "preview");
    assert_eq!(other.headers()["x-upres-model"], upres::preview::PREVIEW_MODEL);

    slow.release();
    let last = until_final(&s, &url).await;
    assert!(last.headers()["x-upres-model"].to_str().unwrap().starts_with("gated-x2@"));
    assert_eq!(quick.passes.load(Ordering::SeqCst), 1, "the finals are the requested model's alone");
    s.stop().await;
}
