//! Happy paths: sizes, formats, negotiation, cache tiers and their headers.

use image::ImageFormat;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY};

use crate::support::*;

#[tokio::test]
async fn x2_x3_x4_give_scaled_dimensions() {
    let s = TestServer::start().await;
    s.put_source("shop/cat.png", &png(30, 20));
    for (scale, w, h) in [(2, 60, 40), (3, 90, 60), (4, 120, 80)] {
        let r = client().get(s.url(&format!("/x{scale}/shop/cat.png"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(dimensions(&r.bytes().await.unwrap()), (w, h), "x{scale}");
    }
    s.stop().await;
}

#[tokio::test]
async fn format_auto_negotiates_on_accept_and_says_vary() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let get = |accept: &'static str| client().get(s.url("/x2/a.png")).header(ACCEPT, accept).send();
    let avif = get("image/avif,image/webp,*/*").await.unwrap();
    assert_eq!(avif.headers()[CONTENT_TYPE], "image/avif", "AVIF first");
    assert_eq!(avif.headers()[VARY], "Accept");
    let webp = get("image/webp,*/*").await.unwrap();
    assert_eq!(webp.headers()[CONTENT_TYPE], "image/webp");
    assert_eq!(webp.headers()[VARY], "Accept");
    let jpeg = get("*/*").await.unwrap();
    assert_eq!(jpeg.headers()[CONTENT_TYPE], "image/jpeg");
    assert_ne!(webp.headers()[ETAG], jpeg.headers()[ETAG]);
    assert_ne!(avif.headers()[ETAG], webp.headers()[ETAG]);
    let body = avif.bytes().await.unwrap();
    assert_eq!(&body[4..12], b"ftypavif");
    let png_out = client().get(s.url("/x2/format=png/a.png")).header(ACCEPT, "image/webp").send().await.unwrap();
    assert_eq!(png_out.headers()[CONTENT_TYPE], "image/png");
    assert!(png_out.headers().get(VARY).is_none(), "an explicit format does not vary");
    let bytes = png_out.bytes().await.unwrap();
    assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::Png);
    s.stop().await;
}

#[tokio::test]
async fn avif_is_explicit_or_left_out_of_auto_by_config() {
    let s = Setup::new().config(|c| c.output.auto_avif = false).start().await;
    s.put_source("a.png", &png(8, 8));
    let chrome = "image/avif,image/webp,image/apng,*/*;q=0.8";
    let auto = client().get(s.url("/x2/a.png")).header(ACCEPT, chrome).send().await.unwrap();
    assert_eq!(auto.headers()[CONTENT_TYPE], "image/webp", "auto_avif = false");
    let avif = client().get(s.url("/x2/format=avif/a.png")).send().await.unwrap();
    assert_eq!(avif.headers()[CONTENT_TYPE], "image/avif");
    assert!(avif.headers().get(VARY).is_none());
    let etag = avif.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let body = avif.bytes().await.unwrap();
    let stored = client().get(s.url(&format!("/r/{etag}.avif"))).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.headers()[CONTENT_TYPE], "image/avif");
    assert_eq!(stored.bytes().await.unwrap(), body);
    s.stop().await;
}

#[tokio::test]
async fn alpha_sources_stay_transparent_with_auto_format() {
    let s = TestServer::start().await;
    s.put_source("alpha.png", &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/alpha.png")).unwrap());
    let r = client().get(s.url("/x2/alpha.png")).send().await.unwrap();
    assert_eq!(r.headers()[CONTENT_TYPE], "image/png", "no WebP in Accept and alpha: PNG");
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgba8();
    assert_eq!(img.dimensions(), (32, 32));
    assert_eq!(img.get_pixel(2, 16).0[3], 0);
    assert_eq!(img.get_pixel(29, 16).0[3], 255);
    s.stop().await;
}

#[tokio::test]
async fn resize_options_box_the_upscaled_image() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(40, 20));
    for (opts, expect) in [
        ("w=100", (100, 50)),
        ("h=10", (20, 10)),
        ("w=50/h=50", (50, 25)),
        ("w=50/h=50/fit=cover", (50, 50)),
        ("w=50/h=50/fit=fill", (50, 50)),
        ("w=1000/fit=inside", (160, 80)),
        ("w=50/dpr=2", (100, 50)),
    ] {
        let r = client().get(s.url(&format!("/x4/{opts}/format=png/a.png"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{opts}");
        assert_eq!(dimensions(&r.bytes().await.unwrap()), expect, "{opts}");
    }
    s.stop().await;
}

#[tokio::test]
async fn second_request_hits_memory_with_the_same_etag_and_bytes() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(16, 16));
    let first = client().get(s.url("/x4/a.png")).send().await.unwrap();
    assert_eq!(first.headers()["x-upres-cache"], "miss");
    assert!(first.headers()["x-upres-model"].to_str().unwrap().starts_with("lanczos-x4@"));
    let timing = first.headers()["server-timing"].to_str().unwrap().to_string();
    for stage in ["fetch", "decode", "infer", "encode"] {
        assert!(timing.contains(stage), "{timing}");
    }
    assert_eq!(first.headers()[CACHE_CONTROL], upres::config::OutputConfig::default().cache_control.as_str());
    let etag = first.headers()[ETAG].clone();
    let body = first.bytes().await.unwrap();
    // Options in another order and an alias: the same request key.
    let second = client().get(s.url("/scale=4/-/a.png")).send().await.unwrap();
    assert_eq!(second.headers()["x-upres-cache"], "hit-memory");
    assert_eq!(second.headers()[ETAG], etag);
    assert_eq!(second.bytes().await.unwrap(), body);
    assert_eq!(s.engine_runs().await, 1);
    s.stop().await;
}

#[tokio::test]
async fn if_none_match_gives_304_and_head_gives_headers_only() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let first = client().get(s.url("/x2/a.png")).send().await.unwrap();
    let etag = first.headers()[ETAG].clone();
    let len = first.bytes().await.unwrap().len();
    let r = client().get(s.url("/x2/a.png")).header(IF_NONE_MATCH, etag.clone()).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()[ETAG], etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let head = client().head(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), len.to_string());
    s.stop().await;
}

#[tokio::test]
async fn restart_with_the_same_store_hits_the_store_and_r_serves_by_hash() {
    let a = TestServer::start().await;
    a.put_source("a.png", &png(12, 12));
    let first = client().get(a.url("/x4/format=webp/a.png")).send().await.unwrap();
    let etag = first.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let body = first.bytes().await.unwrap();
    let setup = Setup::sharing(&a);
    a.stop().await;

    let b = setup.start().await;
    let again = client().get(b.url("/x4/format=webp/a.png")).send().await.unwrap();
    assert_eq!(again.headers()["x-upres-cache"], "hit-store");
    assert_eq!(again.bytes().await.unwrap(), body);
    assert_eq!(b.engine_runs().await, 0, "the restarted server computed nothing");

    let direct = client().get(b.url(&format!("/r/{etag}.webp"))).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(direct.headers()[CONTENT_TYPE], "image/webp");
    assert_eq!(direct.bytes().await.unwrap(), body);
    assert_eq!(client().get(b.url(&format!("/r/{etag}.png"))).send().await.unwrap().status(), 404);
    assert_eq!(client().get(b.url("/r/00ff.webp")).send().await.unwrap().status(), 404);
    b.stop().await;
}

#[tokio::test]
async fn a_corrupted_store_entry_is_detected_and_recomputed() {
    let a = TestServer::start().await;
    a.put_source("a.png", &png(12, 12));
    let first = client().get(a.url("/x2/format=png/a.png")).send().await.unwrap();
    let etag = first.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let good = first.bytes().await.unwrap();
    a.stored().await;
    let file = a.store.path().join("results").join(&etag[..2]).join(&etag);
    let mut raw = std::fs::read(&file).unwrap();
    let n = raw.len();
    raw[n - 20] ^= 0x55;
    std::fs::write(&file, raw).unwrap();
    let setup = Setup::sharing(&a);
    a.stop().await;

    let b = setup.start().await;
    let r = client().get(b.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(r.headers()["x-upres-cache"], "miss", "a corrupt entry is a miss");
    assert_eq!(r.bytes().await.unwrap(), good);
    assert_eq!(b.metric("upres_cache_events_total{event=\"corrupt\"").await, 1);
    // The recomputed result was written back over the corrupt one.
    b.stored().await;
    let c = Setup::sharing(&b).start().await;
    let again = client().get(c.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(again.headers()["x-upres-cache"], "hit-store");
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn decoder_fixtures_are_served() {
    let s = TestServer::start().await;
    for name in ["cmyk.jpg", "exif-rotate90.jpg", "gray16.png", "anim.gif", "palette.png"] {
        let bytes = std::fs::read(format!("{}/tests/fixtures/images/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        s.put_source(name, &bytes);
        let r = client().get(s.url(&format!("/x2/format=png/{name}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let (w, h) = dimensions(&r.bytes().await.unwrap());
        let src = image::load_from_memory(&bytes).unwrap();
        let expect = if name.starts_with("exif") { (src.height() * 2, src.width() * 2) } else { (src.width() * 2, src.height() * 2) };
        assert_eq!((w, h), expect, "{name}");
    }
    s.stop().await;
}

#[tokio::test]
async fn health_ready_metrics_and_model_info_answer() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/a.png")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let ready: serde_json::Value = client().get(s.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["store"], "ok");
    let info: serde_json::Value = client().get(s.url("/api/v1/model-info")).send().await.unwrap().json().await.unwrap();
    assert!(info["models"].as_array().unwrap().iter().any(|m| m["name"] == "lanczos"));
    let metrics = client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in ["upres_requests_total", "upres_engine_queue_depth", "upres_stage_seconds", "upres_request_seconds"] {
        assert!(metrics.contains(name), "{name} missing");
    }
    s.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(s.url("/x2/a.png")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_in_flight_requests() {
    let engine = SlowEngine::gated();
    let s = Setup::new().models(vec![entry("slow", engine.clone())]).config(|c| c.ml.warm_up = false).start().await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/model=slow/a.png");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    engine.started(1).await;
    let addr = s.addr;
    // Shut down while the request is in its pass: the listener closes, the request goes on.
    let stopping = tokio::spawn(s.stop());
    eventually("the listener closed", || std::net::TcpStream::connect(addr).is_err()).await;
    assert!(!in_flight.is_finished());
    engine.open();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the in-flight request completed");
    stopping.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

/// sRGB 8-bit → CIE Lab (D65): ΔE76 between two colours.
pub(crate) fn delta_e(a: [f64; 3], b: [f64; 3]) -> f64 {
    let lab = |c: [f64; 3]| {
        let l = c.map(|v| {
            let v = v / 255.0;
            if v <= 0.04045 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
        });
        let m = [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]];
        let white = [0.9505, 1.0, 1.089];
        let f = |t: f64| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
        let [x, y, z] = [0, 1, 2].map(|r| f((0..3).map(|k| m[r][k] * l[k]).sum::<f64>() / white[r]));
        [116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)]
    };
    let (p, q) = (lab(a), lab(b));
    (0..3).map(|i| (p[i] - q[i]).powi(2)).sum::<f64>().sqrt()
}

/// Display P3 → sRGB by the published linear matrix (from the two spaces' primaries, D65),
/// clipped: the reference conversion.
pub(crate) fn p3_to_srgb(p3: [u8; 3]) -> [f64; 3] {
    let m = [[1.2249401, -0.2249404, 0.0], [-0.0420569, 1.0420571, 0.0], [-0.0196376, -0.0786361, 1.0982735]];
    let l = p3.map(|v| {
        let v = v as f64 / 255.0;
        if v <= 0.04045 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) }
    });
    [0, 1, 2].map(|r| {
        let v = (0..3).map(|k| m[r][k] * l[k]).sum::<f64>().clamp(0.0, 1.0);
        255.0 * if v <= 0.0031308 { 12.92 * v } else { 1.055 * v.powf(1.0 / 2.4) - 0.055 }
    })
}

#[tokio::test]
async fn display_p3_and_cmyk_sources_come_out_in_srgb() {
    let s = TestServer::start().await;
    // 64×32 JPEG tagged Display P3: left half P3 red, right half an in-gamut orange.
    let icc = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    let px: Vec<u8> = (0..64 * 32).flat_map(|i| if i % 64 < 32 { [255, 0, 0] } else { [200, 80, 60] }).collect();
    s.put_source("p3.jpg", &upres::imaging::jpeg::encode(&px, 64, 32, 95, Some(&icc)).unwrap());
    // The resize-only path (shrink-on-load), a model path, and AVIF/WebP/JPEG outputs.
    for path in ["/w=32/format=png/p3.jpg", "/x2/format=png/p3.jpg", "/w=32/format=webp/p3.jpg", "/w=32/format=jpeg/p3.jpg"] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgb8();
        let (w, h) = img.dimensions();
        for (x, p3) in [(w / 8, [255, 0, 0]), (w - w / 8, [200, 80, 60])] {
            let got = img.get_pixel(x, h / 2).0.map(f64::from);
            let want = p3_to_srgb(p3);
            let limit = if path.contains("png") { 2.0 } else { 3.0 };
            assert!(delta_e(got, want) < limit, "{path} P3 {p3:?}: got {got:?}, want {want:?}");
        }
    }
    // A CMYK JPEG with its own profile; reference by littlecms (scripts/make_cmyk_profile_fixture.py).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images");
    s.put_source("cmyk.jpg", &std::fs::read(format!("{dir}/cmyk-profile.jpg")).unwrap());
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{dir}/cmyk-profile.json")).unwrap()).unwrap();
    let r = client().get(s.url("/w=24/format=png/cmyk.jpg")).send().await.unwrap();
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgb8();
    for p in reference["patches"].as_array().unwrap() {
        let got = img.get_pixel(p["x"].as_u64().unwrap() as u32, p["y"].as_u64().unwrap() as u32).0.map(f64::from);
        let want = [0, 1, 2].map(|i| p["srgb"][i].as_f64().unwrap());
        assert!(delta_e(got, want) < 2.0, "CMYK {}: got {got:?}, want {want:?}", p["cmyk"]);
    }
    s.stop().await;
}

/// A 64×32 JPEG in Display P3 (left half P3 red, right half an orange), with EXIF (a caption,
/// a copyright, a GPS position) and IPTC (a caption, a copyright notice).
pub(crate) fn p3_jpeg_with_metadata() -> Vec<u8> {
    let icc = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    let px: Vec<u8> = (0..64 * 32).flat_map(|i| if i % 64 < 32 { [255, 0, 0] } else { [200, 80, 60] }).collect();
    let jpeg = upres::imaging::jpeg::encode(&px, 64, 32, 95, Some(&icc)).unwrap();
    // Big-endian TIFF: IFD0 at 8 (caption at 50, Copyright inline, GPS IFD at 58), then the GPS IFD.
    let mut exif = b"MM\0*\0\0\0\x08\0\x03".to_vec();
    exif.extend_from_slice(b"\x01\x0e\0\x02\0\0\0\x07\0\0\0\x32");
    exif.extend_from_slice(b"\x82\x98\0\x02\0\0\0\x04Ann\0");
    exif.extend_from_slice(b"\x88\x25\0\x04\0\0\0\x01\0\0\0\x3a\0\0\0\0");
    exif.extend_from_slice(b"secret\0\0");
    exif.extend_from_slice(b"\0\x01\0\x01\0\x02\0\0\0\x02N\0\0\0\0\0\0\0");
    let dataset = |d: u8, v: &[u8]| [&[0x1C, 2, d][..], &(v.len() as u16).to_be_bytes(), v].concat();
    let iim = [dataset(120, b"private caption"), dataset(116, b"(c) Ann")].concat();
    let mut iptc = b"8BIM\x04\x04\0\0".to_vec();
    iptc.extend_from_slice(&(iim.len() as u32).to_be_bytes());
    iptc.extend_from_slice(&iim);
    let tags = upres::imaging::metadata::Tags { icc: None, exif: Some(exif), iptc: Some(iptc) };
    upres::imaging::metadata::attach(jpeg, 64, 32, &tags)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn metadata_is_stripped_unless_copyright_or_wide_gamut_are_kept() {
    use upres::imaging::metadata::{read, Embedded};
    let source = p3_jpeg_with_metadata();
    assert!(contains(&source, b"secret") && contains(&source, b"private caption"), "the source has it");
    let paths = ["/w=32/format=jpeg/m.jpg", "/w=32/format=webp/m.jpg", "/w=32/format=png/m.jpg", "/x2/format=png/m.jpg", "/w=32/format=avif/m.jpg"];
    // By default: nothing of the source's metadata, sRGB pixels.
    let s = TestServer::start().await;
    s.put_source("m.jpg", &source);
    for path in paths {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let out = r.bytes().await.unwrap();
        assert_eq!(read(&out), Embedded::default(), "{path}");
        assert!(!contains(&out, b"Ann\0") && !contains(&out, b"secret"), "{path}");
    }
    s.stop().await;
    // Switched on: the EXIF Copyright and the IPTC copyright notice (nothing else), and the P3
    // profile with the P3 values as they are (JPEG, PNG, WebP; AVIF is converted, tagged sRGB).
    let s = Setup::new()
        .config(|c| {
            c.output.keep_copyright = true;
            c.output.keep_wide_gamut = true;
        })
        .start()
        .await;
    s.put_source("m.jpg", &source);
    let p3 = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    for path in paths {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let out = r.bytes().await.unwrap();
        assert!(contains(&out, b"Ann\0") && !contains(&out, b"secret") && !contains(&out, b"private"), "{path}");
        let avif = path.contains("avif");
        let embedded = read(&out);
        assert_eq!(embedded.iptc.is_some(), path.contains("jpeg"), "{path}");
        if path.contains("jpeg") {
            assert!(contains(embedded.iptc.as_deref().unwrap(), b"(c) Ann"), "{path}");
        }
        if avif {
            continue;
        }
        assert_eq!(embedded.icc.as_deref(), Some(&p3[..]), "{path}");
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        let (w, h) = img.dimensions();
        let got = img.get_pixel(w - w / 8, h / 2).0.map(f64::from);
        assert!(delta_e(got, [200.0, 80.0, 60.0]) < 3.0, "{path}: the P3 values kept, got {got:?}");
    }
    // The switches are part of the result key (REST uploads say its canonical form).
    for (format, want) in [("png", "/icc=keep/meta=copyright"), ("avif", "/speed=10/yuv=420/meta=copyright")] {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(source.clone()).file_name("m.jpg"))
            .text("width", "32")
            .text("format", format);
        let r = client().post(s.url("/api/v1/upscale")).multipart(form).send().await.unwrap();
        let params = r.headers()["x-upres-params"].to_str().unwrap().to_string();
        assert!(params.ends_with(want), "{format}: {params}");
    }
    s.stop().await;
}
