//! Replicas sharing a real Redis (redis-server on 127.0.0.1): one rate limit for the fleet, the
//! fallback policy when Redis goes away, and purges fanned out to every replica.

use std::time::Duration;

use reqwest::header::ETAG;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use upres::config::RedisUnavailable;

/// Debian's redis-server in a child process on a free port, without persistence; killed on drop.
/// `scripts/install-test-tools.sh` installs it.
pub struct RedisServer {
    pub url: String,
    port: u16,
    child: std::process::Child,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/install-test-tools.sh installs Debian's redis-server)");
        let mut redis = RedisServer { url: format!("redis://127.0.0.1:{port}"), port, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Readiness: PING answers PONG.
        while !redis.pong().await {
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited early: {status}");
            }
            assert!(std::time::Instant::now() < deadline, "redis-server did not answer PING within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis
    }

    async fn pong(&self) -> bool {
        let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
        let mut reply = [0u8; 7];
        conn.write_all(b"PING\r\n").await.is_ok() && conn.read_exact(&mut reply).await.is_ok() && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn replica(redis: &RedisServer, per_minute: u32, policy: RedisUnavailable) -> TestServer {
    let url = redis.url.clone();
    Setup::new()
        .config(move |c| {
            c.rate_limit.backend = url;
            c.rate_limit.uploads.per_minute = per_minute;
            c.rate_limit.redis_unavailable = policy;
        })
        .start()
        .await
}

/// An empty upload: 415 once past the rate limit (not multipart), 429 when limited.
async fn upload(s: &TestServer) -> reqwest::Response {
    let sent = client().post(s.url("/api/v1/upscale")).send();
    tokio::time::timeout(Duration::from_secs(5), sent).await.expect("answered within 5 s").unwrap()
}

#[tokio::test]
async fn two_replicas_share_one_limit() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis, 3, RedisUnavailable::Allow).await, replica(&redis, 3, RedisUnavailable::Allow).await);
    for i in 0..3 {
        assert_eq!(upload(&a).await.status(), 415, "request {i} on the first replica");
    }
    // The second replica sees the bucket the first one used up.
    let r = upload(&b).await;
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&after), "one token per 20 s: retry-after {after}");
    assert_eq!(upload(&a).await.status(), 429);
    // A replica on the memory backend keeps its own buckets.
    let alone = Setup::new().config(|c| c.rate_limit.uploads.per_minute = 3).start().await;
    assert_eq!(upload(&alone).await.status(), 415);
    assert_eq!(a.metric("upres_rate_limit_fallbacks_total").await, 0);
    for s in [a, b, alone] {
        s.stop().await;
    }
}

#[tokio::test]
async fn redis_going_away_takes_the_configured_fallback_without_hanging() {
    let redis = RedisServer::start().await;
    let allow = replica(&redis, 1000, RedisUnavailable::Allow).await;
    let deny = replica(&redis, 1000, RedisUnavailable::Deny).await;
    // Both connected and counting in Redis…
    assert_eq!(upload(&allow).await.status(), 415);
    assert_eq!(upload(&deny).await.status(), 415);
    // …then Redis dies under them.
    drop(redis);
    for _ in 0..3 {
        assert_eq!(upload(&allow).await.status(), 415, "allow: the request goes through");
        let r = upload(&deny).await;
        assert_eq!(r.status(), 503, "deny: refused");
        assert!(r.headers().contains_key("retry-after"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
    }
    assert_eq!(allow.metric("upres_rate_limit_fallbacks_total{policy=\"allow\"}").await, 3);
    assert_eq!(deny.metric("upres_rate_limit_fallbacks_total{policy=\"deny\"}").await, 3);
    allow.stop().await;
    deny.stop().await;
}

#[tokio::test]
async fn a_purge_on_one_replica_drops_the_entry_on_the_other() {
    let redis = RedisServer::start().await;
    let a = replica(&redis, 0, RedisUnavailable::Allow).await;
    // The second replica reads the same origin (the fleet's shop), with its own memory tier.
    let url = redis.url.clone();
    let b = Setup { origin: a.origin.clone(), ..Setup::new() }.config(move |c| c.rate_limit.backend = url).start().await;
    let bus = b.app.purge_bus.clone().expect("Redis configured: purges fan out");
    eventually("the second replica subscribed", || bus.listening()).await;

    a.put_source("a.png", &png(8, 8));
    let path = "/x2/format=png/a.png";
    let etag_of = |r: &reqwest::Response| r.headers()[ETAG].to_str().unwrap().to_string();
    let old = etag_of(&client().get(b.url(path)).send().await.unwrap());
    // The shop replaces the photo; the second replica still answers from memory…
    a.put_source("a.png", &png(10, 6));
    let r = client().get(b.url(path)).send().await.unwrap();
    assert_eq!((r.headers()["x-upres-cache"].to_str().unwrap(), etag_of(&r)), ("hit-memory", old.clone()));
    // …until a purge sent to the first replica reaches it.
    let r = client().post(a.url("/api/v1/purge")).json(&serde_json::json!({ "keys": ["a.png"] })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "fleet");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.metric("upres_purged_sources_total").await < 1 {
        assert!(std::time::Instant::now() < deadline, "the purge did not reach the second replica within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = client().get(b.url(path)).send().await.unwrap();
    assert_ne!(r.headers()["x-upres-cache"], "hit-memory");
    assert_ne!(etag_of(&r), old, "the replaced photo's result");
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (20, 12));
    // The sender applied it once, not again from its own message.
    assert_eq!(a.metric("upres_purged_sources_total").await, 1);
    a.stop().await;
    b.stop().await;
}
