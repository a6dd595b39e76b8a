//! Every error status, with a clear JSON body, and the server healthy afterwards.

use std::time::Duration;

use crate::support::*;

async fn expect(s: &TestServer, path: &str, status: u16, code: &str) -> serde_json::Value {
    let r = client().get(s.url(path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{path}");
    // A 404 may be cached briefly (output.not_found_cache_control); every other error never.
    let want = if status == 404 { "public, max-age=60" } else { "no-store" };
    assert_eq!(r.headers()["cache-control"], want, "{path}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{path}: {body}");
    body
}

#[tokio::test]
async fn bad_urls_are_400_414_404_and_never_escape_the_origin() {
    let s = TestServer::start().await;
    std::fs::write(s.origin.path().parent().unwrap().join("secret.png"), png(4, 4)).ok();
    s.put_source("a.png", &png(4, 4));
    let body = expect(&s, "/x4/zoom=2/a.png", 400, "bad_request").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("zoom"));
    let body = expect(&s, "/x4/q=101/a.png", 400, "bad_request").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("`q`"));
    expect(&s, "/x4/model=nope/a.png", 400, "bad_request").await;
    expect(&s, "/x4/..%2fsecret.png", 400, "bad_request").await;
    expect(&s, "/x4//a.png", 400, "bad_request").await;
    expect(&s, "/x4/missing.png", 404, "not_found").await;
    expect(&s, &format!("/x4/{}.png", "a".repeat(9000)), 414, "uri_too_long").await;
    let post = client().post(s.url("/x4/a.png")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    // reqwest normalises `..` itself; send it raw over TCP to be sure the server sees it.
    for path in ["/x4/../secret.png", "/x4/%2e%2e/secret.png", "/x4/%2E./secret.png", "/x4/shop/../../secret.png"] {
        let raw = raw_get(s.addr, path).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
    }
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn hostile_and_broken_sources_give_clean_errors() {
    let s = Setup::new().config(|c| c.limits.max_source_bytes = 200_000).start().await;
    let good = png(64, 64);
    s.put_source("truncated.png", &good[..good.len() / 2]);
    s.put_source("empty.png", b"");
    s.put_source("text.png", b"<html>not an image</html>");
    s.put_source("big.bin", &vec![0u8; 300_000]);
    // A PNG header that claims 100000 x 100000 pixels: refused from the header.
    s.put_source("bomb.png", &png_header_only(100_000, 100_000));
    s.put_source("huge-output.png", &png(3000, 3000));
    // A BMP signature: a real image format that upres does not accept.
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0u8; 60]);
    s.put_source("a.bmp", &bmp);
    expect(&s, "/x2/truncated.png", 422, "unprocessable_image").await;
    expect(&s, "/x2/empty.png", 415, "unsupported_media_type").await;
    expect(&s, "/x2/text.png", 415, "unsupported_media_type").await;
    expect(&s, "/x2/a.bmp", 415, "unsupported_media_type").await;
    expect(&s, "/x2/big.bin", 413, "too_large").await;
    expect(&s, "/x2/bomb.png", 413, "too_large").await;
    expect(&s, "/x4/huge-output.png", 413, "too_large").await;
    expect(&s, "/x2/w=16000/h=16000/fit=fill/format=webp/empty.png", 415, "unsupported_media_type").await;
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.put_source("ok.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/ok.png")).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// A well-formed PNG that declares a huge image but carries a few bytes of pixel data: what a
/// decompression bomb looks like before inflating.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", b"x\x9c\x03\x00\x00\x00\x00\x01"), (b"IEND", b"")] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn signing_on_rejects_unsigned_and_accepts_signed_urls() {
    // Key "secret" / salt "hello" in hex; the signature is checked against Python's hmac in
    // src/verify.rs tests and in the examples.
    let s = Setup::new()
        .config(|c| {
            c.signing.key = Some("736563726574".into());
            c.signing.salt = Some("68656c6c6f".into());
        })
        .start()
        .await;
    s.put_source("a.png", &png(4, 4));
    expect(&s, "/x2/a.png", 403, "forbidden").await;
    expect(&s, "/AAAA/x2/a.png", 403, "forbidden").await;
    let signer = upres::verify::Signer::from_hex("736563726574", "68656c6c6f").unwrap();
    let signed = format!("/{}/x2/a.png", signer.sign("/x2/a.png"));
    let r = client().get(s.url(&signed)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.engine_runs().await, 1, "only the signed request did work");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_with_retry_after() {
    let engine = SlowEngine::gated();
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| {
            c.ml.warm_up = false;
            c.engine.queue_capacity = 1;
        })
        .start()
        .await;
    s.put_source("a.png", &png(4, 4));
    s.put_source("b.png", &png(5, 5));
    let first = tokio::spawn({
        let url = s.url("/x2/model=slow/a.png");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    });
    // The first job holds the only queue slot until the gate opens.
    engine.started(1).await;
    let r = client().get(s.url("/x2/model=slow/b.png")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    engine.open();
    assert_eq!(first.await.unwrap(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_request_deadline_answers_504() {
    // The pass never finishes on its own: only the deadline can answer.
    let engine = SlowEngine::gated();
    let s = Setup::new()
        .models(vec![entry("slow", engine.clone())])
        .config(|c| {
            c.ml.warm_up = false;
            c.server.request_deadline = Duration::from_millis(300);
        })
        .start()
        .await;
    s.put_source("a.png", &png(4, 4));
    let started = std::time::Instant::now();
    expect(&s, "/x2/model=slow/a.png", 504, "timeout").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    engine.open();
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}
