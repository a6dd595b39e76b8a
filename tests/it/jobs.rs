//! The jobs API end to end: enqueue, poll, fetch the result, and a signed callback received by a
//! test server on 127.0.0.1.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use sha2::Sha256;

use crate::support::*;

const SECRET: &str = "callback-test-secret";

fn job_form(fields: &[(&str, &str)]) -> Form {
    let image = Part::bytes(png(8, 6)).file_name("a.png").mime_str("image/png").unwrap();
    let mut f = Form::new().part("image", image);
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}

/// A one-shot HTTP receiver on 127.0.0.1: answers 200 to the first request and hands over its
/// signature header and body.
async fn receiver() -> (String, tokio::sync::oneshot::Receiver<(String, Vec<u8>)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/upres?token=t1", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (headers, body) = answer_one_request(socket).await;
        let signature = headers.into_iter().find(|(n, _)| n == "x-upres-signature").map(|(_, v)| v).unwrap_or_default();
        let _ = tx.send((signature, body));
    });
    (url, rx)
}

/// The receiver's check: `t=<secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
fn verify(signature: &str, body: &[u8]) -> bool {
    let Some((t, v1)) = signature.split_once(',') else { return false };
    let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap_or_default()).is_ok()
}

async fn poll_until(s: &TestServer, location: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client().get(s.url(location)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let job: Value = r.json().await.unwrap();
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "the job never got there: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_is_polled_and_calls_back_signed() {
    let s = Setup::new()
        .config(|c| {
            c.jobs.callback_secret = Some(SECRET.into());
            // Loopback receivers are internal addresses: the SSRF guard's switch lets them in.
            c.jobs.callback_allow_private = true;
        })
        .start()
        .await;
    let (hook, received) = receiver().await;
    let form = job_form(&[("scale", "2"), ("model", "lanczos"), ("format", "png"), ("callback_url", &hook)]);
    let r = client().post(s.url("/api/v1/jobs")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/jobs/{id}"));
    assert_eq!(job["state"], "queued");
    assert!(job.get("callback_url").is_none(), "the callback URL (it may hold a token) is not shown");

    let (signature, body) = tokio::time::timeout(Duration::from_secs(20), received).await.expect("callback within 20 s").unwrap();
    assert!(verify(&signature, &body), "signature {signature} verifies");
    let called: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((called["id"].as_str().unwrap(), called["state"].as_str().unwrap()), (id.as_str(), "done"));

    let job = poll_until(&s, &location, |j| j["callback"] != "pending").await;
    assert_eq!(job["callback"], "delivered");
    assert_eq!(job["progress"], serde_json::json!({ "done": 1, "total": 1 }));
    let url = job["result"]["url"].as_str().unwrap();
    assert!(url.starts_with("/r/") && url.ends_with(".png"), "{url}");
    let image = client().get(s.url(url)).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(dimensions(&image.bytes().await.unwrap()), (16, 12));
    assert_eq!(s.metric("upres_jobs_total{state=\"done\"}").await, 1);
    assert_eq!(s.metric("upres_job_callbacks_total{outcome=\"delivered\"}").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn jobs_refuse_bad_callbacks_and_unknown_ids() {
    let s = Setup::new().config(|c| c.jobs.callback_secret = Some(SECRET.into())).start().await;
    let post = |fields: &'static [(&'static str, &'static str)]| client().post(s.url("/api/v1/jobs")).multipart(job_form(fields)).send();
    // Without callback_allow_private, the SSRF guard refuses loopback and metadata addresses.
    for target in ["http://127.0.0.1:9/x", "http://169.254.169.254/latest"] {
        let form = job_form(&[("callback_url", target)]);
        let r = client().post(s.url("/api/v1/jobs")).multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 400, "{target}");
    }
    assert_eq!(post(&[("callback_url", "ftp://example.com/x")]).await.unwrap().status(), 400);
    assert_eq!(post(&[("scale", "9")]).await.unwrap().status(), 400, "fields are checked at once");
    // No callback: poll to the end.
    let r = post(&[("scale", "2"), ("format", "png")]).await.unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job = poll_until(&s, &location, |j| j["state"] == "done" || j["state"] == "failed").await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(job.get("callback").is_none());
    let r = client().get(s.url(&location)).send().await.unwrap();
    assert_eq!(r.headers()["location"].to_str().unwrap(), job["result"]["url"].as_str().unwrap());
    assert_eq!(client().get(s.url("/api/v1/jobs/00000000000000000000000000000000")).send().await.unwrap().status(), 404);
    assert_eq!(client().get(s.url("/api/v1/jobs/nope")).send().await.unwrap().status(), 404);
    s.stop().await;

    // A server without a callback secret refuses callbacks: the receiver could not verify them.
    let s = TestServer::start().await;
    let form = job_form(&[("callback_url", "https://example.com/hook")]);
    let r = client().post(s.url("/api/v1/jobs")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}
