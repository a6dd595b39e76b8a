//! The URL API's "what runs" rules through the real server: a model runs only where pixels are
//! missing, limits apply to sizes really made, the WebP side limit and `model=auto`'s refusal
//! are decided before any work, and explicit defaults share a request key.

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};

use crate::support::*;
use image::{DynamicImage, ImageFormat, RgbImage};

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 90]));
    encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn thumbnails_resize_without_a_model_and_enlargements_run_one() {
    let s = Setup::new().config(|c| c.limits.max_output_pixels = 1_000_000).start().await;
    s.put_source("photo.jpg", &jpeg(640, 427));
    s.put_source("big.jpg", &jpeg(1200, 900));
    s.put_source("small.png", &png(200, 100));
    // (URL, status, model header prefix, size)
    for (url, status, model, size) in [
        ("/w=300/photo.jpg", 200, "resize", (300, 200)),
        ("/x4/w=300/photo.jpg", 200, "resize", (300, 200)),
        ("/photo.jpg", 200, "resize", (640, 427)),
        ("/w=300/h=300/fit=cover/photo.jpg", 200, "resize", (300, 300)),
        // x4 of 1200x900 would be 17 MP, over this server's 1 MP: only a box-less x4 is refused.
        ("/x4/w=300/big.jpg", 200, "resize", (300, 225)),
        ("/x4/big.jpg", 413, "", (0, 0)),
        ("/w=1000/small.png", 200, "lanczos-x4@", (1000, 500)),
        ("/w=300/small.png", 200, "lanczos-x2@", (300, 150)),
        ("/w=1600/small.png", 413, "", (0, 0)),
    ] {
        let r = client().get(s.url(url)).header(ACCEPT, "image/webp").send().await.unwrap();
        assert_eq!(r.status(), status, "{url}");
        if status == 200 {
            assert!(header(&r, "x-upres-model").starts_with(model), "{url}: {}", header(&r, "x-upres-model"));
            assert_eq!(header(&r, "content-type"), "image/webp", "{url}");
            assert_eq!(dimensions(&r.bytes().await.unwrap()), size, "{url}");
        }
    }
    // Two enlargements ran the engine; the resizes did not.
    assert_eq!(s.engine_runs().await, 2);
    s.stop().await;
}

#[tokio::test]
async fn webp_side_limit_is_refused_or_switched_before_work() {
    let s = TestServer::start().await;
    s.put_source("wide.png", &png(4100, 2));
    let r = client().get(s.url("/x4/format=webp/wide.png")).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("16383"));
    assert_eq!(s.engine_runs().await, 0, "refused in the plan, before inference");
    let r = client().get(s.url("/x4/wide.png")).header(ACCEPT, "image/webp").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[CONTENT_TYPE], "image/jpeg", "format=auto switched to JPEG");
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (16400, 8));
    s.stop().await;
}

#[tokio::test]
async fn explicit_defaults_share_the_request_key() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(40, 20));
    let first = client().get(s.url("/w=30/a.png")).send().await.unwrap();
    assert_eq!(header(&first, "x-upres-cache"), "miss");
    for url in ["/x1/w=30/fit=contain/dpr=1/origin=default/a.png", "/x4/w=30/model=auto/a.png", "/w=30/format=auto/x3/a.png"] {
        let r = client().get(s.url(url)).send().await.unwrap();
        assert_eq!(header(&r, "x-upres-cache"), "hit-memory", "{url}");
    }
    s.stop().await;
}

#[tokio::test]
async fn auto_refuses_when_the_configured_model_is_not_loaded_here() {
    use upres::config::{AutoRule, AutoUnavailable};
    let s = Setup::new()
        .config(|c| {
            c.engine.auto = vec![AutoRule { max_input_pixels: None, content: None, model: "realesrgan-x4plus".into() }];
            c.engine.auto_unavailable = AutoUnavailable::Refuse;
        })
        .start()
        .await;
    s.put_source("a.png", &png(40, 20));
    let r = client().get(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 503, "never a different model under this config");
    assert!(r.headers().get(RETRY_AFTER).is_some());
    // A named model and a resize need no auto choice.
    assert_eq!(client().get(s.url("/x2/model=lanczos/a.png")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(s.url("/w=20/a.png")).send().await.unwrap().status(), 200);
    assert_eq!(s.engine_runs().await, 1);
    s.stop().await;
}
