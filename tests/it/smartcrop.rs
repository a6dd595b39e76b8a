//! `gravity=smart` (imgproxy's `g:sm`) against a live server: a skin-coloured, textured subject
//! in a corner of a flat background is inside the smart window and outside the centre one, on
//! the resize path and the model path (cut before the model, with alpha), both syntaxes share
//! one cache entry, and a second replica makes the same bytes.

use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};

use crate::support::*;

/// A flat grey `w`×`h` image with a skin-toned checkered square of side `side` whose top-left
/// corner is at (`x0`, `y0`). `alpha`: the background is semi-transparent, the subject opaque.
fn scene(w: u32, h: u32, x0: u32, y0: u32, side: u32, alpha: bool) -> Vec<u8> {
    let img = RgbaImage::from_fn(w, h, |x, y| {
        if (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y) {
            if (x / 3 + y / 3) % 2 == 0 {
                Rgba([217, 158, 122, 255])
            } else {
                Rgba([174, 126, 98, 255])
            }
        } else {
            Rgba([128, 128, 128, if alpha { 200 } else { 255 }])
        }
    });
    let img = if alpha { DynamicImage::ImageRgba8(img) } else { DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8()) };
    encode(img, ImageFormat::Png)
}

/// Output pixels of the subject's colour (red well above blue; the background is grey).
fn subject_pixels(bytes: &[u8]) -> usize {
    let img = image::load_from_memory(bytes).expect("an image").to_rgba8();
    img.pixels().filter(|p| p[0] as i32 - p[2] as i32 > 40).count()
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let r = client().get(url).header("accept", "image/webp").send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.bytes().await.unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smart_window_holds_an_off_centre_subject_the_centre_window_misses() {
    let s = TestServer::start().await;
    // 400×200, subject 50 px square near the right edge: a square window is 200×200, the
    // centre one spans x 100..300.
    s.put_source("scene.png", &scene(400, 200, 330, 75, 50, false));

    // The resize path (no model).
    let (status, _, centre) = get(&s.url("/w=100/h=100/fit=cover/format=png/scene.png")).await;
    assert_eq!(status, 200);
    let (status, native_headers, smart) = get(&s.url("/w=100/h=100/fit=cover/gravity=smart/format=png/scene.png")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&smart));
    assert_eq!(dimensions(&smart), (100, 100));
    assert_eq!(subject_pixels(&centre), 0, "the centre window misses the subject");
    // The whole subject (50 px at half scale: 25×25 = 625 px) is inside the smart window.
    assert!(subject_pixels(&smart) > 500, "{} subject pixels", subject_pixels(&smart));
    assert_eq!(header(&native_headers, "x-upres-model"), "resize");
    assert_ne!(header(&native_headers, "etag"), "", "an ETag");

    // imgproxy's g:sm is the same request: a memory hit with the same bytes.
    let (status, h, via) = get(&s.url("/insecure/rs:fill:100:100/g:sm/plain/scene.png@png")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&via));
    assert_eq!(header(&h, "x-upres-cache"), "hit-memory");
    assert_eq!(header(&h, "etag"), header(&native_headers, "etag"));
    assert_eq!(via, smart);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_upscales_only_the_smart_window_and_replicas_agree() {
    let s = TestServer::start().await;
    // Subject in the bottom-left corner; alpha on the background. A 300×300 output from a 200×200
    // window needs 1.5×: the (Lanczos) model runs on the cut-out window.
    let source = scene(400, 200, 10, 140, 50, true);
    s.put_source("corner.png", &source);
    let path = "/w=300/h=300/fit=cover/gravity=smart/format=png/corner.png";
    let (status, h, smart) = get(&s.url(path)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&smart));
    assert!(header(&h, "x-upres-model").starts_with("lanczos"), "{h:?}");
    assert_eq!(dimensions(&smart), (300, 300));
    // 50 px at 1.5× = 75×75 = 5625 subject pixels; the centre window has none.
    assert!(subject_pixels(&smart) > 5000, "{}", subject_pixels(&smart));
    let img = image::load_from_memory(&smart).unwrap().to_rgba8();
    assert!(img.pixels().any(|p| p[3] == 255) && img.pixels().any(|p| p[3] < 220), "alpha is kept");
    let (_, _, centre) = get(&s.url("/w=300/h=300/fit=cover/format=png/corner.png")).await;
    assert_eq!(subject_pixels(&centre), 0);

    // Another replica (own store, same origin) computes the same result under the same key.
    let other = Setup { origin: s.origin.clone(), ..Setup::new() }.start().await;
    let (status, h2, again) = get(&other.url(path)).await;
    assert_eq!((status, header(&h2, "x-upres-cache")), (200, "miss"));
    assert_eq!(header(&h2, "etag"), header(&h, "etag"));
    assert_eq!(again, smart);
    other.stop().await;
    s.stop().await;
}
