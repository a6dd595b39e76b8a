//! imgproxy's URL syntax against a live server: URLs built by the official Node SDK
//! (`tests/imgproxy/urls.mjs`, `@imgproxy/imgproxy-node` pinned in its package-lock.json and
//! installed by scripts/install-test-tools.sh), hand-signed URLs for upres's own options, and
//! the cache entry both syntaxes share.

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::support::*;

const KEY: &str = "736563726574";
const SALT: &str = "68656c6c6f";

async fn signed_server() -> TestServer {
    let s = Setup::new()
        .config(|c| {
            c.signing.key = Some(KEY.into());
            c.signing.salt = Some(SALT.into());
            c.presets.insert("thumb".into(), "w=50/h=50/fit=cover".into());
        })
        .start()
        .await;
    s.put_source("shop/cat.png", &png(120, 80));
    s
}

fn sign(path: &str) -> String {
    let signer = upres::verify::Signer::from_hex(KEY, SALT).unwrap();
    format!("/{}{path}", signer.sign(path))
}

/// Runs the SDK script; returns (case name → URL).
async fn sdk_urls(endpoint: &str, source: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = root.join("tests/imgproxy/node_modules/@imgproxy/imgproxy-node");
    assert!(sdk.exists(), "needs {} (run scripts/install-test-tools.sh, or `npm ci` in tests/imgproxy)", sdk.display());
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "node", "urls.mjs", endpoint, source]).current_dir(root.join("tests/imgproxy"));
    cmd.env("IMGPROXY_KEY", KEY).env("IMGPROXY_SALT", SALT);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("node runs (is it installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "urls.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["url"].as_str().unwrap().to_string()))
        .collect()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

async fn get(url: &str) -> Answer {
    let r = client().get(url).header("accept", "image/webp").send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer { status, headers, body: r.bytes().await.unwrap() }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_from_the_official_node_sdk_work_for_every_option_family() {
    let s = signed_server().await;
    let urls = sdk_urls(&s.url(""), "local:///shop/cat.png").await;
    // Source 120×80. (name, status, size or None, content type prefix, text the body must hold)
    let expect: &[(&str, u16, Option<(u32, u32)>, &str, &str)] = &[
        ("resize_fill", 200, Some((60, 60)), "image/webp", ""),
        ("size", 200, Some((60, 40)), "image/webp", ""),
        ("resizing_type_force", 200, Some((50, 30)), "image/webp", ""),
        ("width", 200, Some((60, 40)), "image/webp", ""),
        ("height", 200, Some((60, 40)), "image/webp", ""),
        // imgproxy's default: never larger than the source.
        ("no_enlarge", 200, Some((120, 80)), "image/webp", ""),
        // enlarge:1 lets upres's model fill the box.
        ("enlarge", 200, Some((300, 200)), "image/webp", ""),
        ("zoom", 200, Some((120, 80)), "image/webp", ""),
        ("dpr", 200, Some((60, 40)), "image/webp", ""),
        ("gravity", 200, Some((40, 40)), "image/webp", ""),
        ("smart_crop", 200, Some((40, 40)), "image/webp", ""),
        ("quality_format", 200, Some((60, 40)), "image/jpeg", ""),
        ("format_webp", 200, Some((60, 40)), "image/webp", ""),
        ("preset", 200, Some((50, 50)), "image/webp", ""),
        ("cachebuster", 200, Some((60, 40)), "image/webp", ""),
        ("attachment", 200, Some((60, 40)), "image/webp", ""),
        ("plain", 200, Some((60, 40)), "image/webp", ""),
        ("unsupported_crop", 400, None, "", "crop"),
        ("unsupported_background", 400, None, "", "background"),
        ("unsupported_min_width", 400, None, "", "mw"),
    ];
    assert_eq!(urls.len(), expect.len(), "every SDK case is checked: {urls:?}");
    for (name, status, size, ct, text) in expect {
        let url = &urls.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no SDK case {name}")).1;
        let a = get(url).await;
        let body = String::from_utf8_lossy(&a.body);
        assert_eq!(a.status, *status, "{name}: {url}\n{body}");
        if let Some(size) = size {
            assert_eq!(dimensions(&a.body), *size, "{name}: {url}");
            assert!(header(&a, "content-type").starts_with(ct), "{name}: {:?}", a.headers);
        }
        assert!(body.contains(text), "{name}: the 400 names the option: {body}");
    }
    let att = get(&urls.iter().find(|(n, _)| n == "attachment").unwrap().1).await;
    assert_eq!(header(&att, "content-disposition"), "attachment; filename=\"kitty.webp\"");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upres_options_ride_in_imgproxy_urls_and_signatures_are_checked() {
    let s = signed_server().await;
    // upscale:<model> enlarges with that model; upres's generation options parse as name:value.
    let a = get(&s.url(&sign("/w:240/us:lanczos/seed:3/plain/local:///shop/cat.png@png"))).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(dimensions(&a.body), (240, 160));
    assert_eq!(header(&a, "content-type"), "image/png");
    assert!(header(&a, "x-upres-model").starts_with("lanczos"), "{:?}", a.headers);
    // The base64 form, split by `/`, with an extension.
    let b64 = URL_SAFE_NO_PAD.encode("local:///shop/cat.png");
    let (head, tail) = b64.split_at(10);
    let a = get(&s.url(&sign(&format!("/rs:fit:30:30/{head}/{tail}.jpg")))).await;
    assert_eq!((a.status, dimensions(&a.body)), (200, (30, 20)));
    assert_eq!(header(&a, "content-type"), "image/jpeg");
    // Wrong or missing signatures are 403, as for upres's own URLs; so is a changed option.
    let good = sign("/w:60/plain/local:///shop/cat.png");
    assert_eq!(get(&s.url(&good.replace("w:60", "w:61"))).await.status, 403);
    assert_eq!(get(&s.url("/insecure/w:60/plain/local:///shop/cat.png")).await.status, 403);
    // Sources outside the configured origins are refused: no open proxy.
    let a = get(&s.url(&sign("/w:60/plain/https://example.com/cat.png"))).await;
    assert_eq!(a.status, 400);
    assert!(String::from_utf8_lossy(&a.body).contains("origin"));
    // An unknown imgproxy option names itself.
    let a = get(&s.url(&sign("/bogus:1/plain/local:///shop/cat.png"))).await;
    assert_eq!(a.status, 400);
    assert!(String::from_utf8_lossy(&a.body).contains("bogus"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_syntaxes_share_one_cache_entry() {
    let s = TestServer::start().await;
    s.put_source("cat.png", &png(451, 300));
    // Same spec: the second request is a memory hit.
    let native = get(&s.url("/w=300/cat.png")).await;
    assert_eq!(native.status, 200);
    let same = get(&s.url("/insecure/w:300/el:1/plain/cat.png")).await;
    assert_eq!(same.status, 200, "{}", String::from_utf8_lossy(&same.body));
    assert_eq!(header(&same, "x-upres-cache"), "hit-memory");
    // imgproxy's default fit (no enlarge) is another spec, but the same plan: one stored result.
    let fit = get(&s.url("/insecure/rs:fit:300/plain/cat.png")).await;
    assert_eq!(fit.status, 200);
    assert_eq!(header(&fit, "etag"), header(&native, "etag"));
    assert_eq!(native.body, fit.body);
    // Signing off: any placeholder works, but upres's own option segments never read as one.
    let a = get(&s.url("/_/w:300/plain/cat.png")).await;
    assert_eq!(header(&a, "etag"), header(&native, "etag"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_srcset_example_page_serves_every_candidate() {
    let s = signed_server().await;
    s.put_source("shop/wide.png", &png(200, 100));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/imgproxy-srcset");
    assert!(root.join("node_modules/@imgproxy/imgproxy-node").exists(), "run scripts/install-test-tools.sh (npm ci in examples/imgproxy-srcset)");
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "node", "srcset.mjs", &s.url(""), "local:///shop/wide.png", "50", "100", "300", "400"]).current_dir(&root);
    cmd.env("IMGPROXY_KEY", KEY).env("IMGPROXY_SALT", SALT);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = String::from_utf8(out.stdout).unwrap();
    let (_, list) = page.split_once("srcset=\"").expect("the page has a srcset");
    let (list, _) = list.split_once('"').unwrap();
    let candidates: Vec<(&str, &str)> = list.split(',').map(|c| c.trim().split_once(' ').unwrap()).collect();
    // 300 is past the source (200 px) and not the widest, so it stays at the source's size;
    // the widest asks for enlarge and is upscaled.
    let want = [("50w", (50, 25)), ("100w", (100, 50)), ("300w", (200, 100)), ("400w", (400, 200))];
    assert_eq!(candidates.len(), want.len(), "{page}");
    for ((url, descriptor), (want_descriptor, size)) in candidates.iter().zip(want) {
        assert_eq!(*descriptor, want_descriptor);
        let a = get(url).await;
        assert_eq!(a.status, 200, "{url}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(header(&a, "content-type"), "image/webp");
        assert_eq!(dimensions(&a.body), size, "{url}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nuxt_image_imgproxy_provider_urls_serve_every_width() {
    let s = signed_server().await;
    s.put_source("shop/wide.png", &png(200, 100));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nuxt-image");
    assert!(root.join("node_modules/@nuxt/image").exists(), "run scripts/install-test-tools.sh (npm ci in examples/nuxt-image)");
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "node", "urls.mjs", &s.url(""), "local:///shop/wide.png", "50", "100", "300", "400"]).current_dir(&root);
    cmd.env("IMGPROXY_KEY", KEY).env("IMGPROXY_SALT", SALT);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 300 is past the source (200 px) and not the widest: the source's size; the widest asks
    // for enlarge and is upscaled; the smart thumbnail is a 100×100 crop.
    let want = [("w50", (50, 25)), ("w100", (100, 50)), ("w300", (200, 100)), ("w400", (400, 200)), ("thumb_smart", (100, 100))];
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), want.len(), "{list:?}");
    for (case, (name, size)) in list.iter().zip(want) {
        assert_eq!(case["name"], name);
        let url = case["url"].as_str().unwrap();
        let a = get(url).await;
        assert_eq!(a.status, 200, "{url}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(header(&a, "content-type"), "image/webp");
        assert_eq!(dimensions(&a.body), size, "{url}");
    }
    s.stop().await;
}
