//! Real ncnn models (SPAN, from scripts/fetch-models.sh) served through the URL and REST APIs by
//! their names and aliases: `model=span`, `model=photo` (`ml.photo_model`), the file stem.

use reqwest::multipart::{Form, Part};

use crate::support::*;

/// A models folder holding only the given stems (hard links into the repository's `models/`,
/// which must have them: the test fails, not skips, without them).
pub fn models_with(stems: &[&str]) -> tempfile::TempDir {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let dir = tempfile::tempdir().unwrap();
    for stem in stems {
        for ext in ["param", "bin"] {
            let from = src.join(format!("{stem}.{ext}"));
            assert!(from.is_file(), "{} is missing: run scripts/fetch-models.sh first", from.display());
            let to = dir.path().join(format!("{stem}.{ext}"));
            std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(drop)).unwrap();
        }
    }
    dir
}

async fn span_server(photo_model: &str) -> (TestServer, tempfile::TempDir) {
    let dir = models_with(&["ClearReality4x", "spanx4_ch48", "spanx2_ch48"]);
    let mut cfg = upres::config::Config::default();
    cfg.ml.models_dir = dir.path().to_path_buf();
    cfg.ml.device = upres::config::DeviceSpec::Cpu;
    cfg.ml.photo_model = photo_model.into();
    let models = upres::ml::discover(&cfg).expect("SPAN models load");
    let s = Setup::new().models(models).start().await;
    s.put_source("a.png", &png(20, 16));
    (s, dir)
}

fn model_header(r: &reqwest::Response) -> String {
    r.headers().get("x-upres-model").expect("x-upres-model").to_str().unwrap().to_string()
}

#[tokio::test]
async fn span_models_answer_by_alias_stem_and_photo_over_url_and_rest() {
    let (s, _dir) = span_server("clearreality4x").await;
    for (path, model, size) in [
        ("/x4/model=span/format=png/a.png", "spanx4_ch48@", (80, 64)),
        ("/x2/model=span/format=png/a.png", "spanx2_ch48@", (40, 32)),
        ("/x4/model=photo/format=png/a.png", "ClearReality4x@", (80, 64)),
        ("/x4/model=clearreality4x/format=png/a.png", "ClearReality4x@", (80, 64)),
    ] {
        let r = client().get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(model_header(&r).starts_with(model), "{path}: {}", model_header(&r));
        assert_eq!(dimensions(&r.bytes().await.unwrap()), size, "{path}");
    }
    let form = Form::new()
        .part("image", Part::bytes(png(20, 16)).file_name("a.png").mime_str("image/png").unwrap())
        .text("model", "photo")
        .text("format", "png");
    let r = client().post(s.url("/api/v1/upscale")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(model_header(&r).starts_with("ClearReality4x@"), "{}", model_header(&r));
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (80, 64));
    s.stop().await;
}

#[tokio::test]
async fn photo_follows_the_config_and_is_a_clear_400_when_not_loaded() {
    let (s, _dir) = span_server("spanx4_ch48").await;
    let r = client().get(s.url("/x4/model=photo/format=png/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(model_header(&r).starts_with("spanx4_ch48@"), "{}", model_header(&r));
    s.stop().await;
    let (s, _dir) = span_server("4xspankendata").await;
    let r = client().get(s.url("/x4/model=photo/format=png/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}
