//! Happy paths: sizes, formats, negotiation, cache tiers and their headers.

use image::ImageFormat;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY};

use crate::support::*;

#[tokio::test]
async fn x2_x3_x4_give_scaled_dimensions() {
    let s = TestServer::start().await;
    s.put_source("shop/cat.png", &png(30, 20));
    for (scale, w, h) in [(2, 60, 40), (3, 90, 60), (4, 120, 80)] {
        let r = client().get(s.url(&format!("/x{scale}/shop/cat.png"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(dimensions(&r.bytes().await.unwrap()), (w, h), "x{scale}");
    }
    s.stop().await;
}

#[tokio::test]
async fn format_auto_negotiates_on_accept_and_says_vary() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let get = |accept: &'static str| client().get(s.url("/x2/a.png")).header(ACCEPT, accept).send();
    let avif = get("image/avif,image/webp,*/*").await.unwrap();
    assert_eq!(avif.headers()[CONTENT_TYPE], "image/avif", "AVIF first");
    assert_eq!(avif.headers()[VARY], "Accept");
    let webp = get("image/webp,*/*").await.unwrap();
    assert_eq!(webp.headers()[CONTENT_TYPE], "image/webp");
    assert_eq!(webp.headers()[VARY], "Accept");
    let jpeg = get("*/*").await.unwrap();
    assert_eq!(jpeg.headers()[CONTENT_TYPE], "image/jpeg");
    assert_ne!(webp.headers()[ETAG], jpeg.headers()[ETAG]);
    assert_ne!(avif.headers()[ETAG], webp.headers()[ETAG]);
    let body = avif.bytes().await.unwrap();
    assert_eq!(&body[4..12], b"ftypavif");
    let png_out = client().get(s.url("/x2/format=png/a.png")).header(ACCEPT, "image/webp").send().await.unwrap();
    assert_eq!(png_out.headers()[CONTENT_TYPE], "image/png");
    assert!(png_out.headers().get(VARY).is_none(), "an explicit format does not vary");
    let bytes = png_out.bytes().await.unwrap();
    assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::Png);
    s.stop().await;
}

#[tokio::test]
async fn avif_is_explicit_or_left_out_of_auto_by_config() {
    let s = Setup::new().config(|c| c.output.auto_avif = false).start().await;
    s.put_source("a.png", &png(8, 8));
    let chrome = "image/avif,image/webp,image/apng,*/*;q=0.8";
    let auto = client().get(s.url("/x2/a.png")).header(ACCEPT, chrome).send().await.unwrap();
    assert_eq!(auto.headers()[CONTENT_TYPE], "image/webp", "auto_avif = false");
    let avif = client().get(s.url("/x2/format=avif/a.png")).send().await.unwrap();
    assert_eq!(avif.headers()[CONTENT_TYPE], "image/avif");
    assert!(avif.headers().get(VARY).is_none());
    let etag = avif.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let body = avif.bytes().await.unwrap();
    let stored = client().get(s.url(&format!("/r/{etag}.avif"))).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.headers()[CONTENT_TYPE], "image/avif");
    assert_eq!(stored.bytes().await.unwrap(), body);
    s.stop().await;
}

#[tokio::test]
async fn alpha_sources_stay_transparent_with_auto_format() {
    let s = TestServer::start().await;
    s.put_source("alpha.png", &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/alpha.png")).unwrap());
    let r = client().get(s.url("/x2/alpha.png")).send().await.unwrap();
    assert_eq!(r.headers()[CONTENT_TYPE], "image/png", "no WebP in Accept and alpha: PNG");
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgba8();
    assert_eq!(img.dimensions(), (32, 32));
    assert_eq!(img.get_pixel(2, 16).0[3], 0);
    assert_eq!(img.get_pixel(29, 16).0[3], 255);
    s.stop().await;
}

#[tokio::test]
async fn resize_options_box_the_upscaled_image() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(40, 20));
    for (opts, expect) in [
        ("w=100", (100, 50)),
        ("h=10", (20, 10)),
        ("w=50/h=50", (50, 25)),
        ("w=50/h=50/fit=cover", (50, 50)),
        ("w=50/h=50/fit=fill", (50, 50)),
        ("w=1000/fit=inside", (160, 80)),
        ("w=50/dpr=2", (100, 50)),
    ] {
        let r = client().get(s.url(&format!("/x4/{opts}/format=png/a.png"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{opts}");
        assert_eq!(dimensions(&r.bytes().await.unwrap()), expect, "{opts}");
    }
    s.stop().await;
}

#[tokio::test]
async fn second_request_hits_memory_with_the_same_etag_and_bytes() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(16, 16));
    let first = client().get(s.url("/x4/a.png")).send().await.unwrap();
    assert_eq!(first.headers()["x-upres-cache"], "miss");
    assert!(first.headers()["x-upres-model"].to_str().unwrap().starts_with("lanczos-x4@"));
    let timing = first.headers()["server-timing"].to_str().unwrap().to_string();
    for stage in ["fetch", "decode", "infer", "encode"] {
        assert!(timing.contains(stage), "{timing}");
    }
    assert_eq!(first.headers()[CACHE_CONTROL], upres::config::OutputConfig::default().cache_control.as_str());
    let etag = first.headers()[ETAG].clone();
    let body = first.bytes().await.unwrap();
    // Options in another order and an alias: the same request key.
    let second = client().get(s.url("/scale=4/-/a.png")).send().await.unwrap();
    assert_eq!(second.headers()["x-upres-cache"], "hit-memory");
    assert_eq!(second.headers()[ETAG], etag);
    assert_eq!(second.bytes().await.unwrap(), body);
    assert_eq!(s.engine_runs().await, 1);
    s.stop().await;
}

#[tokio::test]
async fn if_none_match_gives_304_and_head_gives_headers_only() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let first = client().get(s.url("/x2/a.png")).send().await.unwrap();
    let etag = first.headers()[ETAG].clone();
    let len = first.bytes().await.unwrap().len();
    let r = client().get(s.url("/x2/a.png")).header(IF_NONE_MATCH, etag.clone()).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()[ETAG], etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let head = client().head(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), len.to_string());
    s.stop().await;
}

#[tokio::test]
async fn restart_with_the_same_store_hits_the_store_and_r_serves_by_hash() {
    let a = TestServer::start().await;
    a.put_source("a.png", &png(12, 12));
    let first = client().get(a.url("/x4/format=webp/a.png")).send().await.unwrap();
    let etag = first.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let body = first.bytes().await.unwrap();
    let setup = Setup::sharing(&a);
    a.stop().await;

    let b = setup.start().await;
    let again = client().get(b.url("/x4/format=webp/a.png")).send().await.unwrap();
    assert_eq!(again.headers()["x-upres-cache"], "hit-store");
    assert_eq!(again.bytes().await.unwrap(), body);
    assert_eq!(b.engine_runs().await, 0, "the restarted server computed nothing");

    let direct = client().get(b.url(&format!("/r/{etag}.webp"))).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(direct.headers()[CONTENT_TYPE], "image/webp");
    assert_eq!(direct.bytes().await.unwrap(), body);
    assert_eq!(client().get(b.url(&format!("/r/{etag}.png"))).send().await.unwrap().status(), 404);
    assert_eq!(client().get(b.url("/r/00ff.webp")).send().await.unwrap().status(), 404);
    b.stop().await;
}

#[tokio::test]
async fn a_corrupted_store_entry_is_detected_and_recomputed() {
    let a = TestServer::start().await;
    a.put_source("a.png", &png(12, 12));
    let first = client().get(a.url("/x2/format=png/a.png")).send().await.unwrap();
    let etag = first.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let good = first.bytes().await.unwrap();
    a.stored().await;
    let file = a.store.path().join("results").join(&etag[..2]).join(&etag);
    let mut raw = std::fs::read(&file).unwrap();
    let n = raw.len();
    raw[n - 20] ^= 0x55;
    std::fs::write(&file, raw).unwrap();
    let setup = Setup::sharing(&a);
    a.stop().await;

    let b = setup.start().await;
    let r = client().get(b.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(r.headers()["x-upres-cache"], "miss", "a corrupt entry is a miss");
    assert_eq!(r.bytes().await.unwrap(), good);
    assert_eq!(b.metric("upres_cache_events_total{event=\"corrupt\"").await, 1);
    // The recomputed result was written back over the corrupt one.
    b.stored().await;
    let c = Setup::sharing(&b).start().await;
    let again = client().get(c.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(again.headers()["x-upres-cache"], "hit-store");
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn decoder_fixtures_are_served() {
    let s = TestServer::start().await;
    for name in ["cmyk.jpg", "exif-rotate90.jpg", "gray16.png", "anim.gif", "palette.png"] {
        let bytes = std::fs::read(format!("{}/tests/fixtures/images/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        s.put_source(name, &bytes);
        let r = client().get(s.url(&format!("/x2/format=png/{name}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let (w, h) = dimensions(&r.bytes().await.unwrap());
        let src = image::load_from_memory(&bytes).unwrap();
        let expect = if name.starts_with("exif") { (src.height() * 2, src.width() * 2) } else { (src.width() * 2, src.height() * 2) };
        assert_eq!((w, h), expect, "{name}");
    }
    s.stop().await;
}

#[tokio::test]
async fn health_ready_metrics_and_model_info_answer() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/a.png")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let ready: serde_json::Value = client().get(s.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["store"], "ok");
    let info: serde_json::Value = client().get(s.url("/api/v1/model-info")).send().await.unwrap().json().await.unwrap();
    assert!(info["models"].as_array().unwrap().iter().any(|m| m["name"] == "lanczos"));
    let metrics = client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in ["upres_requests_total", "upres_engine_queue_depth", "upres_stage_seconds", "upres_request_seconds"] {
        assert!(metrics.contains(name), "{name} missing");
    }
    s.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_in_flight_requests() {
    let engine = SlowEngine::gated();
    let s = Setup::new().models(vec![entry("slow", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/model=slow/a.png");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    engine.started(1).await;
    let addr = s.addr;
    // Shut down while the request is in its pass: the listener closes, the request goes on.
    let stopping = tokio::spawn(s.stop());
    eventually("the listener closed", || std::net::TcpStream::connect(addr).is_err()).await;
    assert!(!in_flight.is_finished());
    engine.open();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the in-flight request completed");
    stopping.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}
