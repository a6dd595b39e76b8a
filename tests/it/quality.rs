//! Knowing what is served: the consistency score on misses and hits, the quality gate's
//! fallback, canary sources and shadow runs, with two real test engines registered beside
//! Lanczos: `Nearest` (a faithful ×2: its output averages back to the input exactly) and
//! `Tinted` (Lanczos ×2, then every colour shifted: a model that is plainly wrong).

use std::sync::Arc;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::Value;

use upres::engine::lanczos::Lanczos;
use upres::engine::registry::ModelEntry;
use upres::engine::{Engine, EngineId, GenParams, InferError, RunContext, Tile, Tiling};
use upres::imaging::resize::resize_rgb;
use upres::key::SourceHash;

use crate::support::{client, encode, eventually, nearest_x2, GatedEngine, Setup, TestServer};

/// Nearest-neighbour ×2.
struct Nearest(EngineId);

impl Engine for Nearest {
    fn id(&self) -> &EngineId {
        &self.0
    }
    fn scale(&self) -> u32 {
        2
    }
    fn tiling(&self) -> Option<Tiling> {
        None
    }
    fn upscale(&self, tiles: &[Tile], _: &[GenParams], _: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        Ok(tiles.iter().map(nearest_x2).collect())
    }
}

/// Lanczos ×2, then red and green up by a quarter and blue down by one: colours shifted.
struct Tinted(EngineId);

impl Engine for Tinted {
    fn id(&self) -> &EngineId {
        &self.0
    }
    fn scale(&self) -> u32 {
        2
    }
    fn tiling(&self) -> Option<Tiling> {
        None
    }
    fn upscale(&self, tiles: &[Tile], _: &[GenParams], _: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        Ok(tiles
            .iter()
            .map(|t| {
                let mut out = resize_rgb(t, t.width * 2, t.height * 2, None);
                let n = out.plane_len();
                for (i, v) in out.data.iter_mut().enumerate() {
                    let shift = if i < 2 * n { 0.25 } else { -0.25 };
                    *v = (*v + shift).clamp(0.0, 1.0);
                }
                out
            })
            .collect())
    }
}

fn model(name: &str, rank: u32, engine: Arc<dyn Engine>) -> ModelEntry {
    ModelEntry { name: name.into(), aliases: vec![], rank, engine, description: String::new() }
}

/// Lanczos (rank 0), `nearest` (rank 10: what `auto` picks) and `tint` (rank 5).
fn models() -> Vec<ModelEntry> {
    let mut m: Vec<ModelEntry> = [2, 4].into_iter().map(|s| model("lanczos", 0, Arc::new(Lanczos::new(s, 1)))).collect();
    m.push(model("nearest", 10, Arc::new(Nearest(EngineId::new("nearest-x2", "test")))));
    m.push(model("tint", 5, Arc::new(Tinted(EngineId::new("tint-x2", "test")))));
    m
}

/// A small photo-like picture: smooth gradients and a disc; `seed` varies it.
fn photo(seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(48, 40, |x, y| {
        let (dx, dy) = (x as f32 - 24.0, y as f32 - 20.0);
        let disc = dx * dx + dy * dy < 120.0;
        let r = if disc { 220 } else { (x * 4 + seed * 13) as u8 };
        image::Rgb([r, (y * 5 + seed * 7) as u8, if disc { 40 } else { 120 }])
    });
    encode(DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

/// `X-Upres-Consistency: psnr=…;ssim=…` → (psnr, ssim).
fn score(r: &reqwest::Response) -> (f64, f64) {
    let v = r.headers().get("x-upres-consistency").expect("a consistency header").to_str().unwrap();
    let (p, s) = v.split_once(';').unwrap();
    (p.strip_prefix("psnr=").unwrap().parse().unwrap(), s.strip_prefix("ssim=").unwrap().parse().unwrap())
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn every_model_output_is_scored_and_hits_report_the_stored_score() {
    let s = Setup::new().models(models()).start().await;
    s.put_source("p.png", &photo(0));
    let miss = client().get(s.url("/x2/model=lanczos/p.png")).send().await.unwrap();
    assert_eq!((miss.status().as_u16(), header(&miss, "x-upres-cache").as_str()), (200, "miss"));
    let (psnr, ssim) = score(&miss);
    assert!(psnr > 30.0 && ssim > 0.95, "Lanczos is faithful: {psnr} dB, {ssim}");
    let hit = client().get(s.url("/x2/model=lanczos/p.png")).send().await.unwrap();
    assert_eq!(header(&hit, "x-upres-cache"), "hit-memory");
    assert_eq!(score(&hit), (psnr, ssim));
    // Another replica on the same store reads the score from the stored result's header.
    s.stored().await;
    let other = Setup::sharing(&s).models(models()).start().await;
    let stored = client().get(other.url("/x2/model=lanczos/p.png")).send().await.unwrap();
    assert_eq!(header(&stored, "x-upres-cache"), "hit-store");
    assert_eq!(score(&stored), (psnr, ssim));
    // A wrong model scores low (no gate configured: it is served, and counted as a pass).
    let tinted = client().get(s.url("/x2/model=tint/format=png/p.png")).send().await.unwrap();
    assert!(header(&tinted, "x-upres-model").starts_with("tint-x2@"));
    let (psnr, ssim) = score(&tinted);
    assert!(psnr < 20.0, "shifted colours score low: {psnr} dB, {ssim}");
    let faithful = client().get(s.url("/x2/model=nearest/p.png")).send().await.unwrap();
    assert_eq!(score(&faithful), (100.0, 1.0), "nearest neighbour averages back to its input exactly");
    // A plain resize runs no model and has no score.
    let resized = client().get(s.url("/w=20/p.png")).send().await.unwrap();
    assert!(resized.headers().get("x-upres-consistency").is_none());
    assert_eq!(s.metric("upres_output_consistency_count{metric=\"psnr\",model=\"tint-x2\",role=\"stable\"}").await, 1);
    assert_eq!(s.metric("upres_quality_gate_total{model=\"tint-x2\",outcome=\"pass\",role=\"stable\"}").await, 1);
    other.stop().await;
    s.stop().await;
}

#[tokio::test]
async fn an_output_below_the_gate_falls_back_and_the_fallback_is_cached_under_its_own_key() {
    let s = Setup::new()
        .models(models())
        .config(|c| {
            c.ml.quality.models.insert("tint".into(), upres::config::Minimum { min_psnr: 25.0, min_ssim: 0.5 });
        })
        .start()
        .await;
    s.put_source("p.png", &photo(1));
    let r = client().get(s.url("/x2/model=tint/format=png/p.png")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-upres-model").starts_with("lanczos-x2@"), "the next model down served: {}", header(&r, "x-upres-model"));
    let (psnr, _) = score(&r);
    assert!(psnr > 30.0, "the fallback's own score: {psnr}");
    assert_eq!(s.metric("upres_quality_gate_total{model=\"tint-x2\",outcome=\"fallback\",role=\"stable\"}").await, 1);
    assert_eq!(s.metric("upres_quality_gate_total{model=\"lanczos-x2\",outcome=\"pass\",role=\"stable\"}").await, 1);
    // The result key (ETag) is Lanczos's: the stored object under it is the fallback.
    s.stored().await;
    let key = header(&r, "etag").trim_matches('"').to_string();
    let stored = client().get(s.url(&format!("/r/{key}.png"))).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert!(header(&stored, "x-upres-model").starts_with("lanczos-x2@"));
    let lanczos = client().get(s.url("/x2/model=lanczos/format=png/p.png")).send().await.unwrap();
    assert_eq!(header(&lanczos, "etag"), header(&r, "etag"), "the fallback is the named Lanczos result");
    assert_eq!(header(&lanczos, "x-upres-cache"), "hit-store");
    s.stop().await;
}

#[tokio::test]
async fn canary_sources_are_chosen_by_their_hash_and_keyed_by_the_canary_model() {
    let s = Setup::new()
        .models(models())
        .config(|c| {
            c.ml.canary.model = "tint".into();
            c.ml.canary.fraction = 0.5;
        })
        .start()
        .await;
    let mut roles = (0, 0);
    for seed in 0..12 {
        let bytes = photo(seed);
        let canary = upres::quality::position(&SourceHash::of(&bytes), "canary") < 0.5;
        s.put_source(&format!("c{seed}.png"), &bytes);
        let r = client().get(s.url(&format!("/x2/c{seed}.png"))).send().await.unwrap();
        let model = header(&r, "x-upres-model");
        let want = if canary { "tint-x2@" } else { "nearest-x2@" };
        assert!(model.starts_with(want), "source {seed}: {model}, canary: {canary}");
        if canary { roles.0 += 1 } else { roles.1 += 1 }
        // A named model is honoured: the canary replaces `auto`'s pick only.
        let named = client().get(s.url(&format!("/x2/model=nearest/c{seed}.png"))).send().await.unwrap();
        assert!(header(&named, "x-upres-model").starts_with("nearest-x2@"));
    }
    assert!(roles.0 > 0 && roles.1 > 0, "12 sources fall on both sides of one half: {roles:?}");
    assert_eq!(s.metric("upres_quality_gate_total{model=\"tint-x2\",outcome=\"pass\",role=\"canary\"}").await, roles.0);
    assert_eq!(s.metric("upres_output_consistency_count{metric=\"ssim\",model=\"tint-x2\",role=\"canary\"}").await, roles.0);
    // Rolling back is a config change: the same URL, the stable model, another key.
    let rolled = Setup::sharing(&s).models(models()).start().await;
    for seed in 0..12 {
        let r = client().get(rolled.url(&format!("/x2/c{seed}.png"))).send().await.unwrap();
        assert!(header(&r, "x-upres-model").starts_with("nearest-x2@"));
    }
    rolled.stop().await;
    s.stop().await;
}

async fn shadow_summary(s: &TestServer) -> Value {
    client().get(s.url("/api/v1/shadow")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn shadow_runs_on_the_sample_and_the_summary_compares_the_two_models() {
    let s = Setup::new()
        .models(models())
        .config(|c| {
            c.ml.shadow.model = "tint".into();
            c.ml.shadow.sample = 0.5;
        })
        .start()
        .await;
    let mut sampled = 0;
    for seed in 0..8 {
        let bytes = photo(seed);
        sampled += (upres::quality::position(&SourceHash::of(&bytes), "shadow") < 0.5) as u64;
        s.put_source(&format!("s{seed}.png"), &bytes);
        let r = client().get(s.url(&format!("/x2/s{seed}.png"))).send().await.unwrap();
        assert!(header(&r, "x-upres-model").starts_with("nearest-x2@"), "the shadow is never served");
        let app = s.app.clone();
        let want = sampled;
        eventually("the shadow run is recorded", move || app.quality.shadow_summary().pairs.first().map_or(0, |p| p.runs) == want).await;
    }
    assert!(sampled > 0 && sampled < 8, "8 sources fall on both sides of one half: {sampled}");
    let summary = shadow_summary(&s).await;
    assert_eq!(summary["candidate"], "tint");
    let pair = &summary["pairs"][0];
    assert_eq!((pair["served"].as_str(), pair["candidate"].as_str()), (Some("nearest-x2"), Some("tint-x2")));
    assert_eq!(pair["runs"], sampled);
    assert_eq!(pair["dropped"], 0);
    assert_eq!(pair["served_psnr"]["min"], 100.0);
    assert!(pair["candidate_psnr"]["max"].as_f64().unwrap() < 20.0, "{pair}");
    assert!(pair["difference_psnr"]["max"].as_f64().unwrap() < 20.0, "{pair}");
    assert!(pair["time_ratio"]["median"].as_f64().unwrap() > 0.0, "{pair}");
    assert_eq!(s.metric("upres_shadow_runs_total{candidate=\"tint-x2\",outcome=\"done\",served=\"nearest-x2\"}").await, sampled);
    assert_eq!(s.metric("upres_output_consistency_count{metric=\"psnr\",model=\"tint-x2\",role=\"shadow\"}").await, sampled);
    // A second request for a shadowed source is a hit: no second shadow run.
    let again = client().get(s.url("/x2/s0.png")).send().await.unwrap();
    assert_eq!(header(&again, "x-upres-cache"), "hit-memory");
    assert_eq!(shadow_summary(&s).await["pairs"][0]["runs"], sampled);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_shadow_runs_while_served_work_fills_the_queue() {
    let gated = GatedEngine::new();
    let mut m = models();
    m.push(model("gated", 1, gated.clone()));
    let s = Setup::new()
        .models(m)
        .config(|c| {
            c.ml.warm_up = false;
            c.ml.shadow.model = "tint".into();
            c.ml.shadow.sample = 1.0;
            // One served job in the engines holds half the queue: background work is refused.
            c.engine.queue_capacity = 2;
        })
        .start()
        .await;
    s.put_source("busy.png", &photo(100));
    s.put_source("p.png", &photo(3));
    let busy = tokio::spawn(client().get(s.url("/x2/model=gated/busy.png")).send());
    gated.started.notified().await;
    let r = client().get(s.url("/x2/p.png")).send().await.unwrap();
    assert!(header(&r, "x-upres-model").starts_with("nearest-x2@"));
    let summary = shadow_summary(&s).await;
    let pairs: Vec<(String, u64, u64)> = summary["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["served"].as_str().unwrap().to_string(), p["runs"].as_u64().unwrap(), p["dropped"].as_u64().unwrap()))
        .collect();
    assert!(pairs.contains(&("nearest-x2".to_string(), 0, 1)), "dropped, not run: {pairs:?}");
    assert_eq!(s.metric("upres_shadow_runs_total{candidate=\"tint-x2\",outcome=\"dropped\",served=\"nearest-x2\"}").await, 1);
    gated.release();
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    s.stop().await;
}
