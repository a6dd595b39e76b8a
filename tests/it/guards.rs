//! Request guards against a live server: API keys, CORS, per-client rate limits, header and body
//! size limits.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn code(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.unwrap();
    body["error"]["code"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn api_keys_401_403_and_open_routes() {
    let s = Setup::new()
        .config(|c| {
            c.api.keys = vec![upres::guard::auth::hash_key("k-123")];
            c.rate_limit.uploads.per_minute = 1000;
        })
        .start()
        .await;
    let post = |auth: Option<&str>| {
        let mut b = client().post(s.url("/api/v1/upscale"));
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(code(r).await, "unauthorized");
    let r = post(Some("Bearer wrong")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code(r).await, "forbidden");
    // The right key passes the guard: an empty POST reaches the route (415: not multipart)…
    let r = post(Some("Bearer k-123")).await.unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(code(r).await, "unsupported_media_type");
    // …and a real upload is served.
    let part = reqwest::multipart::Part::bytes(png(4, 4)).file_name("a.png").mime_str("image/png").unwrap();
    let form = reqwest::multipart::Form::new().part("image", part).text("scale", "2").text("format", "png");
    let r = client().post(s.url("/api/v1/upscale")).bearer_auth("k-123").multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (8, 8));
    for open in ["/api/v1/health", "/api/v1/model-info"] {
        assert_eq!(client().get(s.url(open)).send().await.unwrap().status(), 200, "{open}");
    }
    // Image URLs never need an API key.
    s.put_source("a.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/a.png")).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_response_headers() {
    let s = Setup::new().config(|c| c.cors.allowed_origins = vec!["https://shop.example".into()]).start().await;
    s.put_source("a.png", &png(4, 4));
    let preflight = |origin: &'static str, method: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, s.url("/api/v1/upscale"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://shop.example", "POST").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://shop.example");
    assert!(ok.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert_eq!(ok.headers()["access-control-max-age"], "600");
    let no = preflight("https://evil.example", "POST").await.unwrap();
    assert_eq!(no.status(), 204);
    assert!(no.headers().get("access-control-allow-origin").is_none());
    // An image from an allowed origin: readable, varies by Origin and Accept.
    let r = client().get(s.url("/x2/a.png")).header("origin", "https://shop.example").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let vary: Vec<_> = r.headers().get_all("vary").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(vary.contains(&"Origin".to_string()) && vary.contains(&"Accept".to_string()), "{vary:?}");
    // Errors are readable too, so a page can show the JSON message.
    let r = client().get(s.url("/x2/missing.png")).header("origin", "https://shop.example").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let r = client().get(s.url("/x2/a.png")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    s.stop().await;

    // Off by default: no CORS headers at all, OPTIONS is just another method.
    let s = TestServer::start().await;
    s.put_source("a.png", &png(4, 4));
    let r = client().get(s.url("/x2/a.png")).header("origin", "https://shop.example").send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(!r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    s.stop().await;
}

#[tokio::test]
async fn uploads_are_limited_per_client_with_retry_after() {
    // The default: 10 uploads per minute per IP (support.rs turns it off for the other tests).
    let defaults = upres::config::Config::default().rate_limit.uploads;
    assert_eq!((defaults.per_minute, defaults.burst), (10, 0));
    let s = Setup::new().config(move |c| c.rate_limit.uploads = defaults).start().await;
    for i in 0..10 {
        // Not rate-limited: the route answers (an empty body is not a multipart upload).
        let r = client().post(s.url("/api/v1/upscale")).send().await.unwrap();
        assert_eq!(r.status(), 415, "request {i}");
    }
    let r = client().post(s.url("/api/v1/upscale")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&after), "retry-after {after}");
    assert_eq!(code(r).await, "rate_limited");
    // Image requests are not limited by default, and health is never limited.
    s.put_source("a.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/a.png")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn transform_limit_keys_on_the_forwarded_client_only_behind_trusted_proxies() {
    let start = |trusted: bool| {
        Setup::new()
            .config(move |c| {
                c.rate_limit.transforms.per_minute = 2;
                if trusted {
                    c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
                }
            })
            .start()
    };
    let get = |s: &TestServer, client_ip: &str| {
        client().get(s.url("/x2/a.png")).header("x-forwarded-for", client_ip.to_string()).send()
    };
    // Behind a trusted proxy: each forwarded client has its own bucket.
    let s = start(true).await;
    s.put_source("a.png", &png(4, 4));
    assert_eq!(get(&s, "198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get(&s, "198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get(&s, "198.51.100.1").await.unwrap().status(), 429);
    assert_eq!(get(&s, "198.51.100.2").await.unwrap().status(), 200);
    s.stop().await;
    // Untrusted peer: the header is ignored, the peer (127.0.0.1) is one client.
    let s = start(false).await;
    s.put_source("a.png", &png(4, 4));
    assert_eq!(get(&s, "198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get(&s, "198.51.100.2").await.unwrap().status(), 200);
    assert_eq!(get(&s, "198.51.100.3").await.unwrap().status(), 429);
    s.stop().await;
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(request).await;
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut out)).await.expect("answered").unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).to_string()
}

#[tokio::test]
async fn oversized_heads_and_bodies_on_get_routes_are_refused() {
    let s = Setup::new().config(|c| c.server.max_header_bytes = 16 * 1024).start().await;
    s.put_source("a.png", &png(4, 4));
    let big = format!("GET /x2/a.png HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "a".repeat(32 * 1024));
    let answer = raw(s.addr, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let fits = format!("GET /x2/a.png HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Junk: {}\r\n\r\n", "a".repeat(8 * 1024));
    assert!(raw(s.addr, fits.as_bytes()).await.starts_with("HTTP/1.1 200"));
    // A GET with a body: 413 without reading it.
    let r = client().get(s.url("/x2/a.png")).body(vec![0u8; 10_000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(code(r).await, "too_large");
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// Behind a trusted proxy that writes one header, a client that adds the other forwarding
/// headers (new addresses each time) still lands in its own bucket: for each header upres can
/// be told to trust.
#[tokio::test]
async fn rate_limit_keys_ignore_spoofed_forwarding_headers_for_each_trusted_header() {
    let value = |header: &str, ip: &str| if header == "forwarded" { format!("for=\"{ip}\"") } else { ip.to_string() };
    for trusted in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let s = Setup::new()
            .config(move |c| {
                c.rate_limit.transforms.per_minute = 2;
                c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
                c.server.client_ip_header = trusted.into();
            })
            .start()
            .await;
        s.put_source("a.png", &png(4, 4));
        let get = |client_ip: &str, n: u8| {
            let mut r = client().get(s.url("/x2/a.png")).header(trusted, value(trusted, client_ip));
            for other in ["x-forwarded-for", "forwarded", "x-real-ip"].into_iter().filter(|h| *h != trusted) {
                r = r.header(other, value(other, &format!("203.0.113.{n}")));
            }
            r.send()
        };
        assert_eq!(get("198.51.100.1", 1).await.unwrap().status(), 200, "trusting {trusted}");
        assert_eq!(get("198.51.100.1", 2).await.unwrap().status(), 200, "trusting {trusted}");
        assert_eq!(get("198.51.100.1", 3).await.unwrap().status(), 429, "trusting {trusted}: the spoofed headers changed the key");
        assert_eq!(get("198.51.100.2", 4).await.unwrap().status(), 200, "trusting {trusted}: another client");
        s.stop().await;
    }
}

/// IPv6 clients share a bucket per /64 (`rate_limit.ipv6_prefix`): a client cannot escape its
/// limit by taking another address of its own network.
#[tokio::test]
async fn ipv6_clients_are_limited_per_network() {
    let start = |prefix: u8| {
        Setup::new()
            .config(move |c| {
                c.rate_limit.transforms.per_minute = 2;
                c.rate_limit.ipv6_prefix = prefix;
                c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
            })
            .start()
    };
    let get = |s: &TestServer, ip: &str| client().get(s.url("/x2/a.png")).header("x-forwarded-for", ip.to_string()).send();
    let s = start(64).await;
    s.put_source("a.png", &png(4, 4));
    assert_eq!(get(&s, "2001:db8:0:7::1").await.unwrap().status(), 200);
    assert_eq!(get(&s, "2001:db8:0:7::2").await.unwrap().status(), 200);
    assert_eq!(get(&s, "2001:db8:0:7:ffff:1:2:3").await.unwrap().status(), 429);
    assert_eq!(get(&s, "2001:db8:0:8::1").await.unwrap().status(), 200, "the next /64 is another client");
    s.stop().await;
    let s = start(128).await;
    s.put_source("a.png", &png(4, 4));
    for i in 1..=3 {
        assert_eq!(get(&s, &format!("2001:db8:0:7::{i}")).await.unwrap().status(), 200, "per address at /128");
    }
    s.stop().await;
}
