//! An HTTP origin (an in-process hyper server on 127.0.0.1:0) through object_store: fetch,
//! 404, the origin deadline, the byte cap enforced while streaming, and the SSRF guard
//! (internal addresses, redirects to other hosts).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// Serves `/img/a.png`, `/img/slow.png` (never answers), `/img/big.png` (300 kB), and
/// redirects: `/img/to-self.png` → `127.0.0.1/img/a.png`, `/img/to-localhost.png` →
/// `localhost/img/a.png` (same server, another host name), `/img/to-metadata.png` →
/// `169.254.169.254`, `/img/to-port/<N>.png` → `127.0.0.1:<N>/img/a.png` (same host, another port).
async fn fake_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let small = Bytes::from(png(6, 6));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let small = small.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let small = small.clone();
                    async move {
                        let port = addr.port();
                        let redirect = |to: String| {
                            http::Response::builder().status(302).header("location", to).body(Full::new(Bytes::new())).unwrap()
                        };
                        if let Some(n) = req.uri().path().strip_prefix("/img/to-port/").and_then(|p| p.strip_suffix(".png")) {
                            return Ok(redirect(format!("http://127.0.0.1:{n}/img/a.png")));
                        }
                        match req.uri().path() {
                            "/img/to-self.png" => return Ok(redirect(format!("http://127.0.0.1:{port}/img/a.png"))),
                            "/img/to-localhost.png" => return Ok(redirect(format!("http://localhost:{port}/img/a.png"))),
                            "/img/to-metadata.png" => return Ok(redirect("http://169.254.169.254/latest/meta-data".into())),
                            _ => {}
                        }
                        let (status, body) = match req.uri().path() {
                            "/img/a.png" => (200, small),
                            "/img/slow.png" => std::future::pending().await,
                            "/img/big.png" => (200, Bytes::from(vec![0u8; 300_000])),
                            _ => (404, Bytes::from_static(b"no")),
                        };
                        let resp = http::Response::builder().status(status).body(Full::new(body)).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_origin_fetch_404_timeout_and_cap() {
    let origin = fake_origin().await;
    let s = Setup::new()
        .config(move |c| {
            let o = c.origins.get_mut("default").unwrap();
            o.url = format!("http://{origin}/img");
            o.timeout = Duration::from_millis(500);
            o.options.insert("allow_http".into(), "true".into());
            o.allow_private = true;
            c.limits.max_source_bytes = 200_000;
        })
        .start()
        .await;
    let ok = client().get(s.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(dimensions(&ok.bytes().await.unwrap()), (12, 12));
    assert_eq!(client().get(s.url("/x2/missing.png")).send().await.unwrap().status(), 404);
    let started = std::time::Instant::now();
    assert_eq!(client().get(s.url("/x2/slow.png")).send().await.unwrap().status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2), "the origin deadline cut the slow origin off");
    assert_eq!(client().get(s.url("/x2/big.png")).send().await.unwrap().status(), 413);
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

async fn error_message(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn internal_origins_are_refused_unless_allowed() {
    let origin = fake_origin().await;
    let s = Setup::new()
        .config(move |c| {
            let o = c.origins.get_mut("default").unwrap();
            o.url = format!("http://{origin}/img");
            o.options.insert("allow_http".into(), "true".into());
        })
        .start()
        .await;
    let started = std::time::Instant::now();
    let r = client().get(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let msg = error_message(r).await;
    assert!(msg.contains("loopback") && msg.contains("allow_private"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(2), "a refusal is not retried");
    s.stop().await;

    // A host name is checked on its resolved address: `localhost` is loopback too.
    let s = Setup::new()
        .config(move |c| {
            let o = c.origins.get_mut("default").unwrap();
            o.url = format!("http://localhost:{}/img", origin.port());
            o.options.insert("allow_http".into(), "true".into());
        })
        .start()
        .await;
    let r = client().get(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let msg = error_message(r).await;
    assert!(msg.contains("`localhost` resolves to") && msg.contains("loopback"), "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn redirects_only_to_allowed_hosts() {
    let origin = fake_origin().await;
    let start = |redirect_hosts: Vec<String>| {
        Setup::new()
            .config(move |c| {
                let o = c.origins.get_mut("default").unwrap();
                o.url = format!("http://{origin}/img");
                o.options.insert("allow_http".into(), "true".into());
                o.allow_private = true;
                o.redirect_hosts = redirect_hosts;
            })
            .start()
    };
    let s = start(vec![]).await;
    assert_eq!(client().get(s.url("/x2/to-self.png")).send().await.unwrap().status(), 200);
    let r = client().get(s.url("/x2/to-localhost.png")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let msg = error_message(r).await;
    assert!(msg.contains(&format!("`localhost:{}`: the host is not this origin's", origin.port())), "{msg}");
    let r = client().get(s.url("/x2/to-metadata.png")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(error_message(r).await.contains("169.254.169.254"));
    // The origin's own host on another port is another service (an admin port, a database).
    let other = fake_origin().await;
    let to_other_port = format!("/x2/to-port/{}.png", other.port());
    let r = client().get(s.url(&to_other_port)).send().await.unwrap();
    assert_eq!(r.status(), 502, "a redirect to the origin's host on another port");
    let msg = error_message(r).await;
    assert!(msg.contains(&format!("`127.0.0.1:{}`: the port is not this origin's", other.port())), "{msg}");
    s.stop().await;
    // A listed host without a port allows only the default ports (80, 443).
    let s = start(vec!["localhost".into()]).await;
    assert_eq!(client().get(s.url("/x2/to-localhost.png")).send().await.unwrap().status(), 502);
    s.stop().await;
    let s = start(vec![format!("localhost:{}", origin.port()), format!("127.0.0.1:{}", other.port())]).await;
    assert_eq!(client().get(s.url("/x2/to-localhost.png")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(s.url(&to_other_port)).send().await.unwrap().status(), 200);
    s.stop().await;
}
