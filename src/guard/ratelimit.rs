//! Per-client token buckets (governor's keyed GCRA limiter), one limiter per request class.
//!
//! Memory stays bounded by the clients active within one refill period: every
//! `rate_limit.sweep_interval` the first request to notice runs `retain_recent`, which drops every
//! bucket that is full again (indistinguishable from a new one), then `shrink_to_fit`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter};

use crate::config::BucketConfig;
use crate::error::{ErrorClass, ProxyError};

/// The bucket of a client: its IPv4 address, or its IPv6 network of `ipv6_prefix` bits (an
/// IPv6 subscriber holds a whole /64 or more, and could take a fresh address per request).
pub fn bucket_key(client: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match client {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(ipv6_prefix.min(128))).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
        v4 => v4,
    }
}

/// One request class's buckets, keyed by client IP.
pub struct Bucket<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    what: &'static str,
    sweep_every: Duration,
    started: Instant,
    /// Milliseconds after `started` of the last sweep.
    last_sweep: AtomicU64,
}

impl Bucket<DefaultClock> {
    /// `None` when the limit is off (`per_minute = 0`).
    pub fn from_config(cfg: &BucketConfig, what: &'static str, sweep_every: Duration) -> Option<Bucket> {
        Some(Bucket::with_clock(quota(cfg)?, what, sweep_every, DefaultClock::default()))
    }
}

fn quota(cfg: &BucketConfig) -> Option<Quota> {
    let per_minute = NonZeroU32::new(cfg.per_minute)?;
    let burst = NonZeroU32::new(cfg.burst).unwrap_or(per_minute);
    Some(Quota::per_minute(per_minute).allow_burst(burst))
}

impl<C: Clock> Bucket<C> {
    fn with_clock(quota: Quota, what: &'static str, sweep_every: Duration, clock: C) -> Bucket<C> {
        Bucket {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
            what,
            sweep_every,
            started: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// Takes one token for `client`, or says (429) how long until one is there.
    pub fn check(&self, client: IpAddr) -> Result<(), ProxyError> {
        self.maybe_sweep();
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            // Retry-After has whole seconds; round up so a client that obeys it gets through.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ProxyError::new(ErrorClass::RateLimited, format!("too many {} from this client; retry in {secs} s", self.what))
                .with_retry_after(Duration::from_secs(secs.max(1)))
        })
    }

    /// Buckets currently held (one per recently active client).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    fn maybe_sweep(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.sweep_every.as_millis() as u64 {
            return;
        }
        // One request sweeps; the others go on.
        if self.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.sweep();
        }
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn bucket(per_minute: u32, burst: u32) -> (Bucket<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let q = quota(&BucketConfig { per_minute, burst }).unwrap();
        (Bucket::with_clock(q, "uploads", Duration::from_secs(3600), clock.clone()), clock)
    }

    #[test]
    fn ten_per_minute_then_429_with_retry_after() {
        let (b, clock) = bucket(10, 0);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..10 {
            b.check(a).unwrap();
        }
        let e = b.check(a).unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(6)), "one token per 6 s");
        // another client has its own bucket
        b.check("198.51.100.2".parse().unwrap()).unwrap();
        clock.advance(Duration::from_secs(6));
        b.check(a).unwrap();
        assert!(b.check(a).is_err());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_network() {
        let key = |ip: &str, p| bucket_key(ip.parse().unwrap(), p).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 48), "2001:db8:1::");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 128), "2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 56), "2001:db8:1::", "/56 keeps 8 bits of the 4th group");
        assert_eq!(key("2001:db8:1:2ff:aaaa::1", 56), "2001:db8:1:200::");
        assert_eq!(key("198.51.100.7", 64), "198.51.100.7", "IPv4 stays whole");
        // One /64, one bucket: a second address of it finds the first one's bucket empty.
        let (b, _) = bucket(1, 0);
        b.check(bucket_key("2001:db8::1".parse().unwrap(), 64)).unwrap();
        assert!(b.check(bucket_key("2001:db8::ffff:2".parse().unwrap(), 64)).is_err());
        b.check(bucket_key("2001:db8:0:1::1".parse().unwrap(), 64)).unwrap();
    }

    #[test]
    fn burst_is_separate_from_the_rate() {
        let (b, _) = bucket(60, 2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        b.check(a).unwrap();
        b.check(a).unwrap();
        assert_eq!(b.check(a).unwrap_err().retry_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn sweeping_forgets_idle_clients() {
        let (b, clock) = bucket(10, 0);
        for i in 0..1000u32 {
            b.check(IpAddr::from(i.to_be_bytes())).unwrap();
        }
        assert_eq!(b.tracked(), 1000);
        clock.advance(Duration::from_secs(61));
        b.check("198.51.100.1".parse().unwrap()).unwrap();
        b.sweep();
        assert_eq!(b.tracked(), 1, "only the client active within a refill period is kept");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        assert!(Bucket::from_config(&BucketConfig { per_minute: 0, burst: 5 }, "x", Duration::from_secs(1)).is_none());
    }
}
