//! The REST API over real HTTP: uploads, batch, limits, errors, the OpenAPI document.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::support::*;

fn image_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).file_name("upload.bin").mime_str("image/png").unwrap()
}

fn form(bytes: Vec<u8>, fields: &[(&str, &str)]) -> Form {
    let mut f = Form::new().part("image", image_part(bytes));
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}

async fn upscale(s: &TestServer, f: Form) -> reqwest::Response {
    client().post(s.url("/api/v1/upscale")).multipart(f).send().await.unwrap()
}

async fn error_of(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status().as_u16(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().to_string()
}

#[tokio::test]
async fn upscale_returns_4x_with_metadata_and_a_fetchable_location() {
    let s = TestServer::start().await;
    let r = upscale(&s, form(png(30, 20), &[("model", "lanczos"), ("format", "png")])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/png");
    assert_eq!(header(&r, "x-upres-cache"), "miss");
    assert!(header(&r, "x-upres-model").starts_with("lanczos-x4@"));
    assert!(header(&r, "x-upres-params").starts_with("out=120x80/format=png"), "{}", header(&r, "x-upres-params"));
    let timing = header(&r, "server-timing");
    for stage in ["decode", "infer", "encode"] {
        assert!(timing.contains(stage), "{timing}");
    }
    let etag = header(&r, "etag");
    let location = header(&r, "location");
    assert_eq!(location, format!("/r/{}.png", etag.trim_matches('"')));
    let body = r.bytes().await.unwrap();
    assert_eq!(dimensions(&body), (120, 80));
    let stored = client().get(s.url(&location)).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(header(&stored, "etag"), etag);
    assert_eq!(stored.bytes().await.unwrap(), body, "Location serves the same bytes");
    s.stop().await;
}

#[tokio::test]
async fn the_same_upload_twice_is_a_hit_and_scale_and_format_apply() {
    let s = TestServer::start().await;
    let fields = [("model", "lanczos"), ("scale", "2"), ("format", "jpeg"), ("quality", "70")];
    let first = upscale(&s, form(png(16, 12), &fields)).await;
    assert_eq!(header(&first, "x-upres-cache"), "miss");
    assert_eq!(header(&first, "content-type"), "image/jpeg");
    let second = upscale(&s, form(png(16, 12), &fields)).await;
    assert!(header(&second, "x-upres-cache").starts_with("hit"), "{}", header(&second, "x-upres-cache"));
    assert_eq!(header(&first, "etag"), header(&second, "etag"));
    let (a, b) = (first.bytes().await.unwrap(), second.bytes().await.unwrap());
    assert_eq!(a, b);
    assert_eq!(dimensions(&a), (32, 24));
    let avif = upscale(&s, form(png(16, 12), &[("model", "lanczos"), ("scale", "2"), ("format", "avif")])).await;
    assert_eq!(header(&avif, "content-type"), "image/avif");
    assert!(header(&avif, "x-upres-params").starts_with("out=32x24/format=avif/q=55/speed=10/yuv=420"), "{}", header(&avif, "x-upres-params"));
    assert_eq!(&avif.bytes().await.unwrap()[4..12], b"ftypavif");
    s.stop().await;
}

#[tokio::test]
async fn an_upload_in_display_p3_comes_out_in_srgb_without_its_metadata() {
    use crate::serving::{delta_e, p3_jpeg_with_metadata, p3_to_srgb};
    let s = TestServer::start().await;
    for (fields, png) in [(&[("model", "lanczos"), ("scale", "2"), ("format", "png")][..], true), (&[("width", "32"), ("format", "webp")][..], false)] {
        let r = upscale(&s, form(p3_jpeg_with_metadata(), fields)).await;
        assert_eq!(r.status(), 200, "{fields:?}");
        let out = r.bytes().await.unwrap();
        assert_eq!(upres::imaging::metadata::read(&out), Default::default(), "{fields:?}");
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        let (w, h) = img.dimensions();
        let got = img.get_pixel(w - w / 8, h / 2).0.map(f64::from);
        let want = p3_to_srgb([200, 80, 60]);
        assert!(delta_e(got, want) < if png { 2.0 } else { 3.0 }, "{fields:?}: got {got:?}, want {want:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn an_upload_and_a_url_of_the_same_bytes_share_one_result() {
    let s = TestServer::start().await;
    let bytes = png(24, 16);
    s.put_source("same.png", &bytes);
    let url = client().get(s.url("/x4/model=lanczos/format=webp/same.png")).send().await.unwrap();
    assert_eq!(url.status(), 200);
    let up = upscale(&s, form(bytes, &[("model", "lanczos"), ("format", "webp"), ("scale", "4")])).await;
    assert_eq!(up.status(), 200);
    assert_eq!(header(&up, "etag"), header(&url, "etag"));
    assert_eq!(header(&up, "x-upres-cache"), "hit-store", "the URL's stored result serves the upload");
    assert_eq!(up.bytes().await.unwrap(), url.bytes().await.unwrap());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_uploads_compute_once() {
    let engine = SlowEngine::gated();
    let s = Setup::new().models(vec![entry("slow", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (url, barrier) = (s.url("/api/v1/upscale"), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let f = form(png(8, 8), &[("model", "slow"), ("scale", "2"), ("format", "png")]);
                let r = client().post(url).multipart(f).send().await.unwrap();
                assert_eq!(r.status(), 200);
                header(&r, "x-upres-cache")
            })
        })
        .collect();
    // The pass finishes only once all six uploads wait on its flight.
    engine.started(1).await;
    eventually("six uploads on one flight", || s.app.flights.waiters() == 6).await;
    engine.open();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| *o == "miss").count(), 1, "{outcomes:?}");
    assert_eq!(engine.passes.load(Ordering::SeqCst), 1, "{outcomes:?}");
    s.stop().await;
}

#[tokio::test]
async fn bodies_over_the_upload_limit_are_413() {
    let s = Setup::new().config(|c| c.api.max_upload_bytes = 100_000).start().await;
    let r = upscale(&s, form(vec![7u8; 150_000], &[])).await;
    let message = error_of(r, 413, "too_large").await;
    assert!(message.contains("100000"), "{message}");
    // Without Content-Length (chunked), the limit stops the stream part-way.
    let raw = raw_chunked_upload(s.addr, 400_000).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{}", &raw[..raw.len().min(200)]);
    assert!(raw.contains("too_large"));
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// A multipart upload sent chunked, `size` bytes of image part, over a raw connection.
async fn raw_chunked_upload(addr: std::net::SocketAddr, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /api/v1/upscale HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
Content-Type: multipart/form-data; boundary=B0UND\r\nTransfer-Encoding: chunked\r\n\r\n";
    c.write_all(head.as_bytes()).await.unwrap();
    let mut body = b"--B0UND\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(0x89u8, size));
    body.extend_from_slice(b"\r\n--B0UND--\r\n");
    for chunk in body.chunks(16 * 1024) {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if c.write_all(&frame).await.is_err() {
            break; // the server may stop reading once it answered
        }
    }
    let _ = c.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn non_images_are_415_by_magic_number_not_by_content_type() {
    let s = TestServer::start().await;
    let text = upscale(&s, form(b"hello, this is text".to_vec(), &[])).await;
    error_of(text, 415, "unsupported_media_type").await;
    // A polyglot: a PDF header with a whole PNG after it. The magic number says PDF.
    let mut polyglot = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    polyglot.extend(png(8, 8));
    error_of(upscale(&s, form(polyglot, &[])).await, 415, "unsupported_media_type").await;
    error_of(upscale(&s, form(Vec::new(), &[])).await, 415, "unsupported_media_type").await;
    let json = client().post(s.url("/api/v1/upscale")).header("content-type", "application/json").body("{}").send().await.unwrap();
    error_of(json, 415, "unsupported_media_type").await;
    s.stop().await;
}

#[tokio::test]
async fn bad_fields_are_400_naming_the_field() {
    let s = TestServer::start().await;
    for (fields, needle) in [
        (vec![("noise_level", "999")], "`noise_level`"),
        (vec![("scale", "5")], "`scale`"),
        (vec![("guidance_scale", "31")], "`guidance_scale`"),
        (vec![("num_inference_steps", "0")], "`num_inference_steps`"),
        (vec![("quality", "abc")], "`quality`"),
        (vec![("zoom", "2")], "`zoom`"),
        (vec![("seed", "1"), ("seed", "2")], "`seed`"),
        (vec![("model", "nope")], "lanczos"),
    ] {
        let message = error_of(upscale(&s, form(png(4, 4), &fields)).await, 400, "bad_request").await;
        assert!(message.contains(needle), "{fields:?}: {message}");
    }
    let long = "a".repeat(2000);
    let message = error_of(upscale(&s, form(png(4, 4), &[("prompt", &long)])).await, 400, "bad_request").await;
    assert!(message.contains("`prompt`") && !message.contains(&long[..100]), "{message}");
    let no_image = client().post(s.url("/api/v1/upscale")).multipart(Form::new().text("scale", "2")).send().await.unwrap();
    assert!(error_of(no_image, 400, "bad_request").await.contains("image"));
    let two = Form::new().part("image", image_part(png(4, 4))).part("image", image_part(png(4, 4)));
    error_of(client().post(s.url("/api/v1/upscale")).multipart(two).send().await.unwrap(), 400, "bad_request").await;
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let s = TestServer::start().await;
    for path in ["/api/v1/upscale", "/api/v1/batch-upscale"] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["allow"], "POST", "{path}");
        error_of(r, 405, "method_not_allowed").await;
    }
    for path in ["/api/v1/model-info", "/api/v1/health", "/api/v1/openapi.json", "/healthz", "/readyz", "/metrics", "/r/x.png"] {
        let r = client().post(s.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["allow"], "GET, HEAD", "{path}");
        error_of(r, 405, "method_not_allowed").await;
    }
    s.stop().await;
}

#[tokio::test]
async fn batch_answers_per_image_and_one_bad_image_fails_alone() {
    let s = TestServer::start().await;
    let f = Form::new()
        .part("image", image_part(png(10, 8)))
        .part("image", image_part(b"not an image".to_vec()))
        .part("image", image_part(png(6, 6)))
        .part("image", image_part(png(5, 5)))
        .text("model", "lanczos")
        .text("scale", "4")
        .text("params", r#"[{"scale": 2}, null, {"format": "png", "quality": 90}, {"noise_level": 999}]"#);
    let r = client().post(s.url("/api/v1/batch-upscale")).multipart(f).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "{body}");
    assert_eq!((results[0]["width"].as_u64(), results[0]["height"].as_u64()), (Some(20), Some(16)));
    assert_eq!(results[0]["format"], "webp", "auto is WebP in a batch");
    assert!(results[0]["error"].is_null());
    assert_eq!(results[1]["error"]["code"], "unsupported_media_type", "{body}");
    assert!(results[1]["url"].is_null());
    assert_eq!((results[2]["width"].as_u64(), results[2]["format"].as_str()), (Some(24), Some("png")));
    assert_eq!(results[3]["error"]["code"], "bad_request");
    assert!(results[3]["error"]["message"].as_str().unwrap().contains("`noise_level`"));
    for (i, item) in results.iter().enumerate().filter(|(_, r)| r["error"].is_null()) {
        assert_eq!(item["index"], i);
        let url = item["url"].as_str().unwrap();
        assert_eq!(url, format!("/r/{}.{}", item["hash"].as_str().unwrap(), if item["format"] == "png" { "png" } else { "webp" }));
        assert!(item["model"].as_str().unwrap().starts_with("lanczos-x"));
        let stored = client().get(s.url(url)).send().await.unwrap();
        assert_eq!(stored.status(), 200, "{url}");
        let bytes = stored.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, item["bytes"].as_u64().unwrap());
        assert_eq!(dimensions(&bytes), (item["width"].as_u64().unwrap() as u32, item["height"].as_u64().unwrap() as u32));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_images_share_the_batcher_and_its_forward_passes() {
    let engine = SlowEngine::gated();
    let s = Setup::new().models(vec![entry("slow", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
    // Four different images of one shape each…
    let mut f = Form::new().text("model", "slow").text("scale", "2").text("format", "png");
    for i in 0..4u8 {
        let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([i * 40, x as u8, y as u8]));
        f = f.part("image", image_part(encode(image::DynamicImage::ImageRgb8(img), image::ImageFormat::Png)));
    }
    let request = tokio::spawn(client().post(s.url("/api/v1/batch-upscale")).multipart(f).send());
    // The first pass holds the worker; the images it did not take queue behind it meanwhile.
    engine.started(1).await;
    eventually("all four images queued", || s.app.batcher.depth() == 4).await;
    engine.open();
    let body: Value = request.await.unwrap().unwrap().json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["error"].is_null() && r["width"] == 16), "{body}");
    let hashes: std::collections::HashSet<&str> = results.iter().map(|r| r["hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 4);
    // …take fewer forward passes than images: their tiles were batched together.
    let passes = engine.passes.load(Ordering::SeqCst);
    assert!(passes <= 2, "{passes} passes: the images queued behind the first pass share one");
    s.stop().await;
}

#[tokio::test]
async fn malformed_batches_are_4xx_for_the_whole_request() {
    let s = Setup::new().config(|c| c.api.max_batch_images = 2).start().await;
    let post = |f: Form| client().post(s.url("/api/v1/batch-upscale")).multipart(f).send();
    let three = Form::new().part("image", image_part(png(4, 4))).part("image", image_part(png(4, 4))).part("image", image_part(png(4, 4)));
    assert!(error_of(post(three).await.unwrap(), 413, "too_large").await.contains("2"));
    let bad_json = Form::new().part("image", image_part(png(4, 4))).text("params", "[{");
    assert!(error_of(post(bad_json).await.unwrap(), 400, "bad_request").await.contains("`params`"));
    let too_many_params = Form::new().part("image", image_part(png(4, 4))).text("params", "[{}, {}]");
    error_of(post(too_many_params).await.unwrap(), 400, "bad_request").await;
    let bad_default = Form::new().part("image", image_part(png(4, 4))).text("scale", "9");
    assert!(error_of(post(bad_default).await.unwrap(), 400, "bad_request").await.contains("`scale`"));
    error_of(post(Form::new().text("scale", "2")).await.unwrap(), 400, "bad_request").await;
    s.stop().await;
}

#[tokio::test]
async fn openapi_and_model_info_describe_the_server() {
    let s = TestServer::start().await;
    let r = client().get(s.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/upscale"]["post"].is_object());
    let info: Value = client().get(s.url("/api/v1/model-info")).send().await.unwrap().json().await.unwrap();
    let models = info["models"].as_array().unwrap();
    assert!(models.iter().all(|m| m["id"].as_str().unwrap().contains('@') && m["weights"].is_string() && m["device"] == "cpu"));
    assert_eq!(info["scales"], serde_json::json!([2, 3, 4]));
    assert_eq!(info["devices"], serde_json::json!(["cpu"]));
    assert_eq!(info["limits"]["max_upload_bytes"], 10 * 1024 * 1024);
    assert_eq!(info["limits"]["max_batch_images"], 16);
    assert_eq!(info["defaults"]["num_inference_steps"]["api"], 8);
    assert_eq!(info["defaults"]["num_inference_steps"]["url"], 8);
    assert_eq!(info["defaults"]["scheduler"]["api"], "dpm");
    assert_eq!(info["defaults"]["scheduler"]["url"], "dpm");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uploader_that_disconnects_cancels_its_work() {
    let engine = SlowEngine::gated();
    let s = Setup::new().models(vec![entry("slow", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
    let f = form(png(8, 8), &[("model", "slow"), ("scale", "2")]);
    let request = tokio::spawn(client().post(s.url("/api/v1/upscale")).multipart(f).send());
    engine.started(1).await;
    request.abort(); // the client gives up while its pass runs
    engine.cancelled().await;
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_upload_is_408_within_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Setup::new().config(|c| c.server.request_deadline = Duration::from_millis(500)).start().await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = "POST /api/v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n\
Content-Length: 5000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nPNG";
    c.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut out)).await.expect("answered in time").unwrap();
    let answer = String::from_utf8_lossy(&out[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    s.stop().await;
}
