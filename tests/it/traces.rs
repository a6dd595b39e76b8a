//! Request identity across hops: `X-Request-Id` (kept when sane, else made up, always answered),
//! W3C `traceparent` passed on to an HTTP origin and to a job's callback, and, from the real
//! binary, the ids on its log lines and its spans exported over OTLP/HTTP to a local receiver.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::multipart::{Form, Part};
use tokio::sync::mpsc;

use crate::process::ChildServer;
use crate::support::*;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An HTTP origin on 127.0.0.1 serving one PNG at every path, sending each request's
/// `traceparent` (or "") down the channel.
async fn recording_origin() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let image = Bytes::from(png(6, 6));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, image) = (tx.clone(), image.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let header = req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_string());
                    let _ = tx.send(header.unwrap_or_default());
                    let image = image.clone();
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(image))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// `(trace id, parent id, flags)` of a version-00 `traceparent`.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent:?}");
    assert_eq!(parts[0], "00");
    assert!(parts[1].len() == 32 && parts[2].len() == 16 && parts[3].len() == 2, "{traceparent:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_made_up_otherwise_and_always_answered() {
    let s = Setup::new().start().await;
    let get = |path: &'static str, id: Option<String>| {
        let mut r = client().get(s.url(path));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.send()
    };
    let r = get("/healthz", Some("edge-7f3a:1".into())).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "edge-7f3a:1");
    // An error's body names the same id the header does.
    let r = get("/x2/missing.png", Some("lb.42".into())).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "lb.42");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "lb.42");
    // Too long, or outside the safe characters: replaced, never echoed.
    for bad in ["x".repeat(65), "a b".into(), "<script>".into()] {
        let r = get("/healthz", Some(bad.clone())).await.unwrap();
        let answered = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(!answered.is_empty() && answered != bad, "{bad:?} → {answered:?}");
    }
    let a = get("/healthz", None).await.unwrap().headers()["x-request-id"].clone();
    let b = get("/healthz", None).await.unwrap().headers()["x-request-id"].clone();
    assert_ne!(a, b, "made-up ids differ");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traceparent_goes_on_to_the_origin_and_the_job_callback() {
    let (origin, mut seen) = recording_origin().await;
    let s = Setup::new()
        .config(move |c| {
            let o = c.origins.get_mut("default").unwrap();
            o.url = format!("http://{origin}/img");
            o.options.insert("allow_http".into(), "true".into());
            o.allow_private = true;
            c.jobs.callback_secret = Some("secret".into());
            c.jobs.callback_allow_private = true;
        })
        .start()
        .await;

    // The caller's trace: the origin sees the same trace, with this hop as the parent.
    let r = client().get(s.url("/x2/format=png/a.png")).header("traceparent", CALLER).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (trace, parent, flags) = fields(&seen.recv().await.unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "01"));
    assert_ne!(parent, CALLER_SPAN, "upres's own hop is the origin's parent");

    // No caller trace, or an invalid one: a fresh trace, still sent on.
    for (source, header) in [("b.png", None), ("c.png", Some("00-zz-00f067aa0ba902b7-01"))] {
        let mut req = client().get(s.url(&format!("/x2/format=png/{source}")));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let (trace, _, _) = fields(&seen.recv().await.unwrap());
        assert!(trace != CALLER_TRACE && trace != "0".repeat(32), "{trace}");
    }

    // A job keeps the trace of the request that created it, up to its callback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = tokio::spawn(async move { answer_one_request(listener.accept().await.unwrap().0).await });
    let image = Part::bytes(png(8, 6)).file_name("a.png").mime_str("image/png").unwrap();
    let form = Form::new().part("image", image).text("scale", "2").text("model", "lanczos").text("callback_url", hook);
    let r = client().post(s.url("/api/v1/jobs")).header("traceparent", CALLER).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let (headers, _) = tokio::time::timeout(Duration::from_secs(20), received).await.expect("callback within 20 s").unwrap();
    let traceparent = headers.iter().find(|(n, _)| n == "traceparent").map(|(_, v)| v.as_str()).expect("the callback has a traceparent");
    let (trace, parent, _) = fields(traceparent);
    assert_eq!(trace, CALLER_TRACE);
    assert_ne!(parent, CALLER_SPAN);
    s.stop().await;
}

/// Accepts OTLP/HTTP posts on 127.0.0.1, answers each 200 and sends `(path, body)` on.
async fn otlp_receiver() -> (String, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // The request line is not among the headers answer_one_request returns: peek it.
                let mut first = [0u8; 256];
                let n = socket.peek(&mut first).await.unwrap();
                let line = String::from_utf8_lossy(&first[..n]).lines().next().unwrap_or_default().to_string();
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                let (_, body) = answer_one_request(socket).await;
                let _ = tx.send((path, body));
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_ids_on_every_request_line_and_exports_spans_over_otlp() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let (endpoint, mut posts) = otlp_receiver().await;
    let origin = tempfile::tempdir().unwrap();
    std::fs::write(origin.path().join("a.png"), png(8, 8)).unwrap();
    let server = ChildServer::start(origin.path(), &[("UPRES_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str())]).expect("upres serve starts");
    let r = client().get(server.url("/x2/format=png/a.png")).header("traceparent", CALLER).header("x-request-id", "obs-1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(server.url("/x2/format=png/missing.png")).header("x-request-id", "obs-2").send().await.unwrap();
    assert_eq!(r.status(), 404);
    // SIGTERM: the server drains and its exporter sends what it batched before exiting.
    let log = server.terminate();

    // The spans: the first request's is a child of the caller's span, in the caller's trace.
    let mut spans = Vec::new();
    while spans.len() < 2 {
        let (path, body) = tokio::time::timeout(Duration::from_secs(20), posts.recv())
            .await
            .expect("the exporter posts within 20 s")
            .expect("the receiver runs");
        assert_eq!(path, "/v1/traces");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in request.resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().filter(|s| s.name == "request"));
            }
        }
    }
    let attr = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()).map(|v| format!("{:?}", v.value))
    };
    let first = spans.iter().find(|s| attr(s, "request_id").is_some_and(|v| v.contains("obs-1"))).expect("obs-1's span");
    assert_eq!(hex::encode(&first.trace_id), CALLER_TRACE);
    assert_eq!(hex::encode(&first.parent_span_id), CALLER_SPAN);
    let second = spans.iter().find(|s| attr(s, "request_id").is_some_and(|v| v.contains("obs-2"))).expect("obs-2's span");
    assert_ne!(hex::encode(&second.trace_id), CALLER_TRACE);
    assert!(second.parent_span_id.is_empty(), "no caller: a root span");

    // The logs: every line of a request carries its request and trace ids; the failed fetch
    // says why, and no line holds the image path's options or bytes beyond the key.
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of = |id: &str| lines.iter().filter(|l| l["span"]["request_id"] == id).cloned().collect::<Vec<_>>();
    let one = of("obs-1");
    assert!(one.iter().any(|l| l["fields"]["message"] == "request"), "{log}");
    assert!(one.iter().all(|l| l["span"]["trace_id"] == CALLER_TRACE), "{one:?}");
    let two = of("obs-2");
    let failed = two.iter().find(|l| l["fields"]["message"] == "origin fetch failed").expect("the failed fetch is logged");
    assert_eq!(failed["fields"]["reason"], "not_found");
    assert_eq!(failed["span"]["trace_id"].as_str().unwrap(), hex::encode(&second.trace_id));
    assert!(two.iter().any(|l| l["fields"]["message"] == "request" && l["fields"]["status"] == 404), "{two:?}");
}
