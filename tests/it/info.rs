//! `/info/…`: imgproxy's info endpoint answered with upres's plan, signed like any URL, never
//! running a model.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::support::*;

const KEY: &str = "736563726574";
const SALT: &str = "68656c6c6f";

/// `/info/<signature><path>`: the signature covers the path after it, as imgproxy signs.
fn info_url(s: &TestServer, path: &str) -> String {
    let signer = upres::verify::Signer::from_hex(KEY, SALT).unwrap();
    s.url(&format!("/info/{}{path}", signer.sign(path)))
}

fn image_url(s: &TestServer, path: &str) -> String {
    let signer = upres::verify::Signer::from_hex(KEY, SALT).unwrap();
    s.url(&format!("/{}{path}", signer.sign(path)))
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).header("accept", "image/webp").send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert!(r.headers().get("cache-control").is_some_and(|v| v == "no-store"), "{:?}", r.headers());
    }
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_plans_like_a_request_and_never_runs_a_model() {
    let s = Setup::new()
        .config(|c| {
            c.signing.key = Some(KEY.into());
            c.signing.salt = Some(SALT.into());
        })
        .start()
        .await;
    let source = png(120, 80);
    s.put_source("shop/cat.png", &source);

    // A resize: no model, the output's size and format, nothing cached yet.
    let path = "/rs:fit:60/plain/local:///shop/cat.png";
    let (status, info) = get_json(&info_url(&s, path)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["source"]["width"], 120);
    assert_eq!(info["source"]["height"], 80);
    assert_eq!(info["source"]["format"], "png");
    assert_eq!(info["source"]["bytes"], source.len());
    let t = &info["transform"];
    assert_eq!((t["width"].as_u64(), t["height"].as_u64()), (Some(60), Some(40)), "{info}");
    assert_eq!((t["runs_model"].as_bool(), t["model"].as_str()), (Some(false), Some("resize")));
    assert_eq!(t["format"], "webp", "Accept: image/webp negotiates format=auto");
    assert_eq!(info["result"]["cached"], serde_json::json!({ "memory": false, "store": false }));
    // The real request is stored under the key info named, and info then finds it.
    let r = client().get(image_url(&s, path)).header("accept", "image/webp").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), info["result"]["etag"].as_str().unwrap());
    s.stored().await;
    let (_, again) = get_json(&info_url(&s, path)).await;
    assert_eq!(again["result"]["cached"], serde_json::json!({ "memory": true, "store": true }));
    assert_eq!(again["result"]["key"], info["result"]["key"]);
    let stored = client().get(s.url(info["result"]["url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(stored.status(), 200, "the result is served at result.url");

    // An enlargement: the model the plan picks, at the scale it picks, and it does not run.
    let runs = s.engine_runs().await;
    let b64 = URL_SAFE_NO_PAD.encode("local:///shop/cat.png");
    let (status, info) = get_json(&info_url(&s, &format!("/w:240/el:1/{b64}.png"))).await;
    assert_eq!(status, 200, "{info}");
    let t = &info["transform"];
    assert_eq!((t["width"].as_u64(), t["height"].as_u64(), t["format"].as_str()), (Some(240), Some(160), Some("png")));
    assert_eq!((t["runs_model"].as_bool(), t["model_scale"].as_u64()), (Some(true), Some(2)), "{info}");
    assert!(t["model"].as_str().unwrap().starts_with("lanczos-x2@"), "{info}");
    assert_eq!(s.engine_runs().await, runs, "info never runs a model");
    // upres's own syntax after /info plans the same result.
    let (status, native) = get_json(&info_url(&s, "/w=240/format=png/shop/cat.png")).await;
    assert_eq!(status, 200, "{native}");
    assert_eq!(native["result"]["key"], info["result"]["key"]);

    // Signed like any URL: a wrong or missing signature is 403, a changed option too.
    let good = info_url(&s, path);
    assert_eq!(get_json(&good.replace("rs:fit:60", "rs:fit:61")).await.0, 403);
    assert_eq!(get_json(&s.url("/info/insecure/rs:fit:60/plain/local:///shop/cat.png")).await.0, 403);
    // An unknown source is 404; an unknown option 400.
    let (status, body) = get_json(&info_url(&s, "/rs:fit:60/plain/local:///shop/nope.png")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(get_json(&info_url(&s, "/bogus:1/plain/local:///shop/cat.png")).await.0, 400);
    s.stop().await;
}
