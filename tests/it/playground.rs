//! The playground's endpoints from outside: pages, samples, signing, progress streams, cancel.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use upres::config::PlaygroundAccess;
use upres::engine::{Engine, EngineId, GenParams, InferError, Progress, RunContext, Tile, Tiling};

use crate::support::*;

#[tokio::test]
async fn pages_are_served_from_the_binary_to_loopback_clients() {
    let s = TestServer::start().await;
    for (path, kind) in [("/", "text/html"), ("/docs", "text/html"), ("/playground/app.js", "text/javascript"), ("/playground/style.css", "text/css")] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} references nothing outside the server");
    }
    let page = client().get(s.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/playground/app.js") && page.contains("<label for=\"split\""));
    assert_eq!(client().post(s.url("/")).send().await.unwrap().status(), 405);
    s.stop().await;
}

#[tokio::test]
async fn off_hides_everything_and_the_transform_path_is_untouched() {
    let s = Setup::new().config(|c| c.playground.enabled = PlaygroundAccess::Off).start().await;
    s.put_source("a.png", &png(8, 8));
    for path in ["/", "/docs", "/playground/app.js", "/api/v1/samples", "/api/v1/sign?path=/x2/a.png", "/api/v1/progress/abcdefgh12"] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    // A progress header is ignored (no stream to feed) and the image is served as usual.
    let r = client().get(s.url("/x2/model=lanczos/a.png")).header("x-upres-progress", "abcdefgh12").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.app.progress.watched(), 0);
    s.stop().await;
}

#[tokio::test]
async fn samples_list_the_origin_and_serve_original_bytes() {
    let s = TestServer::start().await;
    let cat = png(12, 10);
    s.put_source("shop/cat.png", &cat);
    s.put_source("readme.txt", b"not an image");
    let list: serde_json::Value = client().get(s.url("/api/v1/samples")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["samples"], serde_json::json!([{ "key": "shop/cat.png", "bytes": cat.len() }]));
    let r = client().get(s.url("/api/v1/samples/shop/cat.png")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &cat[..]);
    assert_eq!(client().get(s.url("/api/v1/samples/shop/none.png")).send().await.unwrap().status(), 404);
    assert_eq!(client().get(s.url("/api/v1/samples/shop%2Fcat.png")).send().await.unwrap().status(), 400);
    assert_eq!(client().get(s.url("/api/v1/samples/readme.txt")).send().await.unwrap().status(), 415);
    s.stop().await;
}

#[tokio::test]
async fn sign_returns_the_path_to_request_signed_when_signing_is_on() {
    let plain = TestServer::start().await;
    let r: serde_json::Value =
        client().get(plain.url("/api/v1/sign?path=%2Fx2%2Fa.png")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r, serde_json::json!({ "path": "/x2/a.png", "signed": false }));
    assert_eq!(client().get(plain.url("/api/v1/sign?path=%2Fx9%2Fa.png")).send().await.unwrap().status(), 400);
    assert_eq!(client().get(plain.url("/api/v1/sign")).send().await.unwrap().status(), 400);
    plain.stop().await;

    let s = Setup::new()
        .config(|c| {
            c.signing.key = Some("943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881".into());
            c.signing.salt = Some("520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5".into());
        })
        .start()
        .await;
    s.put_source("a.png", &png(8, 8));
    assert_eq!(client().get(s.url("/x2/model=lanczos/a.png")).send().await.unwrap().status(), 403);
    let r: serde_json::Value =
        client().get(s.url("/api/v1/sign?path=%2Fx2%2Fmodel%3Dlanczos%2Fa.png")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["signed"], true);
    let path = r["path"].as_str().unwrap();
    assert!(path.ends_with("/x2/model=lanczos/a.png") && path.len() > "/x2/model=lanczos/a.png".len() + 10, "{path}");
    assert_eq!(client().get(s.url(path)).send().await.unwrap().status(), 200, "the signed path is served");
    s.stop().await;
}

/// An engine with 8-px tiles that reports 4 steps per pass (like sd-x4) and sleeps a little per
/// step, so progress can be watched.
struct Stepper {
    id: EngineId,
    passes: AtomicU32,
}

impl Engine for Stepper {
    fn id(&self) -> &EngineId {
        &self.id
    }
    fn scale(&self) -> u32 {
        2
    }
    fn tiling(&self) -> Option<Tiling> {
        Some(Tiling::squares(8, 0))
    }
    fn upscale(&self, tiles: &[Tile], _: &[GenParams], ctx: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        for step in 1..=4 {
            std::thread::sleep(Duration::from_millis(15));
            ctx.progress(Progress { done: step, total: 4 });
        }
        Ok(tiles.iter().map(|t| Tile::new(t.width * 2, t.height * 2, vec![0.5; t.data.len() * 4])).collect())
    }
}

/// Reads an event stream to its end; returns the parsed `data:` events.
async fn events(mut r: reqwest::Response) -> Vec<serde_json::Value> {
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), r.chunk()).await.expect("stream ends").unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(|j| serde_json::from_str(j).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_progress_stream_follows_tiles_and_steps_and_ends_done() {
    let engine = Arc::new(Stepper { id: EngineId::new("stepper", "test"), passes: AtomicU32::new(0) });
    let s = Setup::new()
        .models(vec![entry("stepper", engine.clone())])
        .config(|c| {
            c.ml.warm_up = false;
            c.engine.max_batch = 1; // one tile per pass: four passes to watch
        })
        .start()
        .await;
    s.put_source("a.png", &png(16, 16));
    let id = "test-progress-0001";
    let stream = client().get(s.url(&format!("/api/v1/progress/{id}"))).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let watching = tokio::spawn(events(stream));
    let r = client().get(s.url("/x2/model=stepper/format=png/a.png")).header("x-upres-progress", id).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = watching.await.unwrap();
    assert_eq!(engine.passes.load(Ordering::SeqCst), 4);
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "done", "{seen:?}");
    assert_eq!((last["tiles_done"].as_u64(), last["tiles_total"].as_u64()), (Some(4), Some(4)), "{seen:?}");
    assert!(seen.iter().any(|e| e["state"] == "running" && e["tiles_done"].as_u64() < Some(4)), "{seen:?}");
    assert!(seen.iter().any(|e| e["steps_total"] == 4 && e["steps_done"].as_u64() > Some(0)), "{seen:?}");
    assert!(seen.iter().all(|e| e.as_object().unwrap().len() == 5), "only counts and a state travel: {seen:?}");
    assert_eq!(s.app.progress.watched(), 0, "the id is forgotten once answered");
    // A request that fails before any work ends its stream at once, `failed`.
    let stream = client().get(s.url("/api/v1/progress/test-bad-request-1")).send().await.unwrap();
    let watching = tokio::spawn(events(stream));
    let r = client().get(s.url("/x9/a.png")).header("x-upres-progress", "test-bad-request-1").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(watching.await.unwrap().last().unwrap()["state"], "failed");
    // Bad ids are refused.
    assert_eq!(client().get(s.url("/api/v1/progress/bad")).send().await.unwrap().status(), 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_watched_request_stops_the_work_and_ends_its_stream_failed() {
    let engine = SlowEngine::gated();
    let s = Setup::new().models(vec![entry("slow", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
    s.put_source("a.png", &png(8, 8));
    let id = "test-cancel-00001";
    let stream = client().get(s.url(&format!("/api/v1/progress/{id}"))).send().await.unwrap();
    let watching = tokio::spawn(events(stream));
    // What the page's AbortController does: the client goes away mid-computation.
    let request = tokio::spawn(client().get(s.url("/x2/model=slow/a.png")).header("x-upres-progress", id).send());
    engine.started(1).await;
    request.abort();
    let seen = watching.await.unwrap();
    assert!(seen.iter().any(|e| e["state"] == "running"), "{seen:?}");
    assert_eq!(seen.last().unwrap()["state"], "failed", "{seen:?}");
    engine.cancelled().await;
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_with_a_progress_id_reports_to_its_stream() {
    use reqwest::multipart::{Form, Part};
    let engine = Arc::new(Stepper { id: EngineId::new("stepper", "test"), passes: AtomicU32::new(0) });
    let s = Setup::new()
        .models(vec![entry("stepper", engine.clone())])
        .config(|c| {
            c.ml.warm_up = false;
            c.engine.max_batch = 1;
        })
        .start()
        .await;
    let id = "test-upload-00001";
    let stream = client().get(s.url(&format!("/api/v1/progress/{id}"))).send().await.unwrap();
    let watching = tokio::spawn(events(stream));
    let form = Form::new()
        .part("image", Part::bytes(png(16, 8)).file_name("a.png"))
        .text("model", "stepper")
        .text("scale", "2")
        .text("format", "png");
    let r = client().post(s.url("/api/v1/upscale")).header("x-upres-progress", id).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = watching.await.unwrap();
    let last = seen.last().unwrap();
    assert_eq!((last["state"].as_str(), last["tiles_done"].as_u64(), last["tiles_total"].as_u64()), (Some("done"), Some(2), Some(2)), "{seen:?}");
    assert_eq!(engine.passes.load(Ordering::SeqCst), 2);
    s.stop().await;
}

/// Calls the handler as a request from `peer` would arrive (no socket: `handle` takes a request).
async fn from_peer(s: &TestServer, peer: &str, path: &str) -> u16 {
    let mut req = http::Request::get(path).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    req.extensions_mut().insert(upres::guard::Peer(peer.parse().unwrap()));
    upres::routes::handle(&s.app, req).await.status().as_u16()
}

#[tokio::test]
async fn local_mode_serves_loopback_peers_only_and_signing_stays_loopback_only() {
    let local = TestServer::start().await;
    assert_eq!(from_peer(&local, "127.0.0.1:5000", "/").await, 200);
    assert_eq!(from_peer(&local, "[::1]:5000", "/").await, 200);
    assert_eq!(from_peer(&local, "[::ffff:127.0.0.1]:5000", "/").await, 200);
    for path in ["/", "/docs", "/api/v1/samples", "/api/v1/sign?path=%2Fx2%2Fa.png", "/api/v1/progress/abcdefgh12"] {
        assert_eq!(from_peer(&local, "10.1.2.3:5000", path).await, 404, "{path}");
    }
    local.stop().await;

    let everyone = Setup::new()
        .config(|c| {
            c.playground.enabled = PlaygroundAccess::On;
            c.signing.key = Some("943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881".into());
            c.signing.salt = Some("520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5".into());
        })
        .start()
        .await;
    assert_eq!(from_peer(&everyone, "10.1.2.3:5000", "/").await, 200);
    assert_eq!(from_peer(&everyone, "10.1.2.3:5000", "/api/v1/sign?path=%2Fx2%2Fa.png").await, 403, "no signing oracle for remote peers");
    assert_eq!(from_peer(&everyone, "127.0.0.1:5000", "/api/v1/sign?path=%2Fx2%2Fa.png").await, 200);
    everyone.stop().await;
}
