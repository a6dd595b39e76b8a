//! The rate-limit backend of one request class: buckets in this process's memory
//! (`ratelimit.rs`, per replica) or in Redis (`shared_limit.rs`, one limit for the fleet).
//! Both take the key they are given (`Guards` decides what identifies a client).

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{BucketConfig, RateLimitConfig};
use crate::error::ProxyError;

use super::ratelimit::Bucket;
use super::shared_limit::{RedisBucket, RedisLink};

pub enum Limiter {
    Memory(Bucket),
    Redis(RedisBucket),
}

impl Limiter {
    /// `None` when the limit is off (`per_minute = 0`). `redis` is the shared link when
    /// `rate_limit.backend` names a Redis server.
    pub fn from_config(
        rl: &RateLimitConfig,
        cfg: &BucketConfig,
        class: &'static str,
        what: &'static str,
        redis: Option<&Arc<RedisLink>>,
    ) -> Option<Limiter> {
        match redis {
            Some(link) => RedisBucket::from_config(cfg, class, what, link.clone()).map(Limiter::Redis),
            None => Bucket::from_config(cfg, what, rl.sweep_interval).map(Limiter::Memory),
        }
    }

    pub async fn check(&self, client: IpAddr) -> Result<(), ProxyError> {
        match self {
            Limiter::Memory(b) => b.check(client),
            Limiter::Redis(b) => b.check(client).await,
        }
    }
}
