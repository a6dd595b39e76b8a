//! examples/ run against a live server with signing on: the curl walk-through, the Python client
//! and the Node client. Each prints one JSON summary; these tests check it. A missing tool
//! (curl, openssl, python3, node) fails the test: nothing is skipped.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

const KEY: &str = "736563726574";
const SALT: &str = "68656c6c6f";

struct Example {
    server: TestServer,
    images: tempfile::TempDir,
}

async fn start() -> Example {
    let server = Setup::new()
        .config(|c| {
            c.signing.key = Some(KEY.into());
            c.signing.salt = Some(SALT.into());
        })
        .start()
        .await;
    server.put_source("shop/cat.png", &png(24, 16));
    let images = tempfile::tempdir().unwrap();
    std::fs::write(images.path().join("a.png"), png(20, 10)).unwrap();
    std::fs::write(images.path().join("b.png"), png(8, 8)).unwrap();
    Example { server, images }
}

/// Runs `program args…` from the repository root with the server's URL and keys in the
/// environment, bounded by `timeout`; returns the last stdout line as JSON.
async fn run(ex: &Example, program: &str, args: &[&str]) -> Value {
    let root = env!("CARGO_MANIFEST_DIR").to_string();
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(program).args(args).current_dir(&root);
    cmd.env("UPRES_URL", ex.server.url("")).env("UPRES_KEY", KEY).env("UPRES_SALT", SALT).env("SOURCE", "shop/cat.png");
    cmd.env("IMAGE", ex.images.path().join("a.png"));
    let program = program.to_string();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("{program} printed nothing; stderr:\n{stderr}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{program} printed no JSON ({e}): {last}"))
}

fn image_arg(ex: &Example, name: &str) -> String {
    ex.images.path().join(name).display().to_string()
}

fn signed(path: &str) -> String {
    let signer = upres::verify::Signer::from_hex(KEY, SALT).unwrap();
    format!("/{}{path}", signer.sign(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_walk_through() {
    let ex = start().await;
    let out = run(&ex, "bash", &["examples/curl.sh"]).await;
    assert_eq!(out["health"], 200, "{out}");
    assert_eq!(out["model_info"], 200);
    assert_eq!(out["upload"]["status"], 200);
    assert!(out["upload"]["bytes"].as_u64().unwrap() > 0);
    assert!(out["upload"]["location"].as_str().unwrap().starts_with("/r/"));
    assert_eq!(out["stored"], serde_json::json!({ "status": 200, "same": true }));
    assert_eq!(out["transform"]["status"], 200);
    assert_eq!(out["transform"]["signed_path"], signed("/x2/w=100/format=png/shop/cat.png"), "openssl signs like upres");
    assert_eq!(out["unsigned_status"], 403);
    ex.server.stop().await;
}

async fn check_client(ex: &Example, out: &Value) {
    assert!(out["models"].as_array().unwrap().iter().any(|m| m.as_str().unwrap().starts_with("lanczos-x4@")), "{out}");
    assert_eq!(out["upscale"]["status"], 200);
    assert!(out["upscale"]["model"].as_str().unwrap().starts_with("lanczos-x4@"));
    assert_eq!(out["stored"], serde_json::json!({ "status": 200, "same": true }));
    // The client's upload and this test's own request of the same bytes agree on the result.
    let r = client()
        .get(ex.server.url(out["upscale"]["location"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (80, 40));
    assert_eq!(out["batch"]["status"], 200);
    let results = out["batch"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!((results[0]["width"].as_u64(), results[0]["height"].as_u64()), (Some(40), Some(20)), "params[0] asked x2");
    assert_eq!((results[1]["width"].as_u64(), results[1]["height"].as_u64()), (Some(32), Some(32)), "default x4");
    assert!(results.iter().all(|r| r["error"].is_null() && r["format"] == "webp"));
    assert_eq!(out["transform"]["url"], signed("/x2/format=png/shop/cat.png"), "the client signs like upres");
    assert_eq!(out["transform"]["status"], 200);
    assert!(out["transform"]["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client() {
    let ex = start().await;
    let (a, b) = (image_arg(&ex, "a.png"), image_arg(&ex, "b.png"));
    let out = run(&ex, "python3", &["examples/python/client.py", &a, &b]).await;
    check_client(&ex, &out).await;
    ex.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client() {
    let ex = start().await;
    let (a, b) = (image_arg(&ex, "a.png"), image_arg(&ex, "b.png"));
    let out = run(&ex, "node", &["examples/js/client.mjs", &a, &b]).await;
    check_client(&ex, &out).await;
    ex.server.stop().await;
}
