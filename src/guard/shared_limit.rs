//! Rate limits shared by every replica: GCRA buckets in Redis (`rate_limit.backend = "redis://…"`).
//!
//! One check is one `EVALSHA` of `gcra.lua` (`EVAL` once after a Redis restart), so two replicas
//! taking the same client's last token cannot both get it. The script reads Redis's clock, so
//! replicas with skewed clocks agree. One multiplexed connection (the `redis` crate's
//! `ConnectionManager`, which reconnects on its own) serves every request of the process.
//!
//! When Redis does not answer within `rate_limit.redis_timeout`, `rate_limit.redis_unavailable`
//! decides: `allow` lets the request through, `deny` answers 503. Each such request is counted in
//! `upres_rate_limit_fallbacks_total{policy}`; the log says when Redis goes away and comes back.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use crate::config::{BucketConfig, RedisUnavailable};
use crate::error::{ErrorClass, ProxyError};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("gcra.lua")));

/// The process's one Redis connection and what to do without it; shared by the buckets.
pub struct RedisLink {
    client: redis::Client,
    /// Made on first use: the manager spawns its reconnect task on the running runtime.
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    policy: RedisUnavailable,
    fallbacks: IntCounterVec,
    /// Whether the last call failed, so the log says it once per outage, not once per request.
    down: AtomicBool,
}

impl RedisLink {
    /// Parses the URL; connects on first use (so a config check needs no Redis).
    pub fn new(url: &str, timeout: Duration, policy: RedisUnavailable, fallbacks: IntCounterVec) -> Result<RedisLink, String> {
        let client = redis::Client::open(url).map_err(|e| format!("rate_limit.backend: {e}"))?;
        Ok(RedisLink { client, conn: OnceCell::new(), timeout, policy, fallbacks, down: AtomicBool::new(false) })
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// The client, for connections of their own (a pub/sub subscriber cannot share one).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `PUBLISH`es `payload` on `channel` within the timeout; the number of subscribers reached.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<u64, String> {
        let call = async {
            let mut conn = self.connection().await?;
            redis::cmd("PUBLISH").arg(channel).arg(payload).query_async::<u64>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Runs the script for `key`: `Ok(0)` took a token, `Ok(µs)` is the wait for one.
    async fn gcra(&self, key: &str, interval_us: u64, tolerance_us: u64) -> Result<u64, String> {
        let call = async {
            let mut conn = self.connection().await?;
            GCRA.key(key).arg(interval_us).arg(tolerance_us).invoke_async::<u64>(&mut conn).await
        };
        // The whole call, reconnect attempts included, is bounded: a request never hangs on Redis.
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(wait)) => Ok(wait),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => tracing::info!("rate limits: Redis answers again"),
            Err(e) if !self.down.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, policy = self.policy.as_str(), "rate limits: Redis unreachable, using the fallback policy")
            }
            _ => {}
        }
        result
    }
}

/// One request class's buckets in Redis, keyed `upres:rl:<class>:<client>`.
pub struct RedisBucket {
    link: Arc<RedisLink>,
    class: &'static str,
    what: &'static str,
    interval_us: u64,
    tolerance_us: u64,
}

impl RedisBucket {
    /// `None` when the limit is off (`per_minute = 0`).
    pub fn from_config(cfg: &BucketConfig, class: &'static str, what: &'static str, link: Arc<RedisLink>) -> Option<RedisBucket> {
        if cfg.per_minute == 0 {
            return None;
        }
        let burst = if cfg.burst == 0 { cfg.per_minute } else { cfg.burst };
        let interval_us = 60_000_000 / u64::from(cfg.per_minute);
        Some(RedisBucket { link, class, what, interval_us, tolerance_us: interval_us * u64::from(burst - 1) })
    }

    /// Takes one token for `client`, or says (429) how long until one is there; when Redis is
    /// unreachable, lets the request through or answers 503, as configured.
    pub async fn check(&self, client: IpAddr) -> Result<(), ProxyError> {
        let key = format!("upres:rl:{}:{client}", self.class);
        match self.link.gcra(&key, self.interval_us, self.tolerance_us).await {
            Ok(0) => Ok(()),
            Ok(wait_us) => {
                // Retry-After has whole seconds; round up so a client that obeys it gets through.
                let secs = wait_us.div_ceil(1_000_000).max(1);
                Err(ProxyError::new(ErrorClass::RateLimited, format!("too many {} from this client; retry in {secs} s", self.what))
                    .with_retry_after(Duration::from_secs(secs)))
            }
            Err(_) => {
                self.link.fallbacks.with_label_values(&[self.link.policy.as_str()]).inc();
                match self.link.policy {
                    RedisUnavailable::Allow => Ok(()),
                    RedisUnavailable::Deny => Err(ProxyError::new(ErrorClass::Overloaded, "rate limiter unavailable; retry later")
                        .with_retry_after(Duration::from_secs(1))),
                }
            }
        }
    }
}
