//! Caching like a CDN origin: lifetimes per route, `Last-Modified`, source tags, purge.

use reqwest::header::{CACHE_CONTROL, ETAG, IF_MODIFIED_SINCE, LAST_MODIFIED};

use crate::support::*;
use upres::config::OutputConfig;

#[tokio::test]
async fn transform_urls_are_not_immutable_results_are_and_errors_say_how_long() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let defaults = OutputConfig::default();
    let r = client().get(s.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cc = r.headers()[CACHE_CONTROL].to_str().unwrap().to_string();
    assert_eq!(cc, defaults.cache_control);
    assert!(!cc.contains("immutable"), "a transform URL is not content-addressed: {cc}");
    let etag = r.headers()[ETAG].to_str().unwrap().trim_matches('"').to_string();
    let stored = client().get(s.url(&format!("/r/{etag}.png"))).send().await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.headers()[CACHE_CONTROL], "public, max-age=31536000, immutable");
    let missing = client().get(s.url("/x2/nope.png")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()[CACHE_CONTROL], defaults.not_found_cache_control.as_str());
    let bad = client().get(s.url("/x2/w=abc/a.png")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()[CACHE_CONTROL], "no-store");
    s.stop().await;
}

#[tokio::test]
async fn last_modified_comes_from_the_source_and_if_modified_since_gives_304() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    let url = s.url("/x2/format=png/a.png");
    let first = client().get(&url).send().await.unwrap();
    let lm = first.headers()[LAST_MODIFIED].to_str().unwrap().to_string();
    let mtime = std::fs::metadata(s.origin.path().join("a.png")).unwrap().modified().unwrap();
    assert_eq!(lm, httpdate::fmt_http_date(mtime), "Last-Modified is the source file's mtime");
    // Served from memory too, and a 304 when not modified since.
    let again = client().get(&url).header(IF_MODIFIED_SINCE, &lm).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()[LAST_MODIFIED], lm.as_str());
    let older = client().get(&url).header(IF_MODIFIED_SINCE, "Thu, 01 Jan 2015 00:00:00 GMT").send().await.unwrap();
    assert_eq!(older.status(), 200);
    assert!(!older.bytes().await.unwrap().is_empty());
    // If-None-Match wins over If-Modified-Since.
    let wrong_etag = client().get(&url).header("if-none-match", "\"nope\"").header(IF_MODIFIED_SINCE, &lm).send().await.unwrap();
    assert_eq!(wrong_etag.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn every_variant_of_a_source_carries_the_same_tag() {
    let s = TestServer::start().await;
    s.put_source("a.png", &png(8, 8));
    s.put_source("b.png", &png(8, 8));
    let tag = |path: &'static str| {
        let url = s.url(path);
        async move {
            let r = client().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let sk = r.headers()["surrogate-key"].to_str().unwrap().to_string();
            assert_eq!(r.headers()["cache-tag"].to_str().unwrap(), sk, "Cloudflare and Fastly get the same tag");
            sk
        }
    };
    let a = tag("/x2/format=png/a.png").await;
    assert_eq!(a, tag("/x4/w=20/format=webp/a.png").await);
    assert_eq!(a, tag("/x2/format=png/a.png").await, "a memory hit carries it too");
    assert_ne!(a, tag("/x2/format=png/b.png").await);
    assert!(a.starts_with("upres-") && a.len() == 22, "{a}");
    s.stop().await;
}

#[tokio::test]
async fn purge_drops_a_sources_variants_from_memory_and_needs_the_api_key() {
    let s = Setup::new().config(|c| c.api.keys = vec![upres::guard::auth::hash_key("k-1")]).start().await;
    s.put_source("a.png", &png(8, 8));
    let (small, large) = (s.url("/x2/format=png/a.png"), s.url("/x4/format=png/a.png"));
    let etag_of = |r: &reqwest::Response| r.headers()[ETAG].to_str().unwrap().to_string();
    let old_small = etag_of(&client().get(&small).send().await.unwrap());
    client().get(&large).send().await.unwrap();
    // The shop replaces the photo: memory still answers the old result until purged.
    s.put_source("a.png", &png(10, 6));
    let r = client().get(&small).send().await.unwrap();
    assert_eq!((r.headers()["x-upres-cache"].to_str().unwrap(), etag_of(&r)), ("hit-memory", old_small.clone()));

    let purge = |key: Option<&'static str>| {
        let mut req = client().post(s.url("/api/v1/purge")).json(&serde_json::json!({ "keys": ["a.png"] }));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_eq!(purge(None).await.unwrap().status(), 401);
    let r = purge(Some("k-1")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let tag = body["purged"][0]["tag"].as_str().unwrap().to_string();

    for url in [&small, &large] {
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.headers()["x-upres-cache"], "miss", "{url}: the origin is read again");
        assert_eq!(r.headers()["surrogate-key"].to_str().unwrap(), tag);
    }
    let r = client().get(&small).send().await.unwrap();
    assert_ne!(etag_of(&r), old_small, "the new photo's result");
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (20, 12));
    assert_eq!(s.metric("upres_purged_sources_total").await, 1);

    let bad = client().post(s.url("/api/v1/purge")).bearer_auth("k-1").json(&serde_json::json!({ "keys": [] })).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad = client().post(s.url("/api/v1/purge")).bearer_auth("k-1").body("{").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    s.stop().await;
}
