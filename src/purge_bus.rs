//! Purge fan-out: with Redis configured (`rate_limit.backend = "redis://…"`), a purge received by
//! one replica is published on `upres:purge` and applied by every replica's subscriber.
//!
//! Pub/sub delivers to the subscribers connected at that moment: a replica that is reconnecting
//! misses the message, and the memory TTL (`cache.memory.ttl`) bounds how long it serves the old
//! entry. The subscriber reconnects on its own, one second after a lost connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::guard::shared_limit::RedisLink;

pub const CHANNEL: &str = "upres:purge";

/// One purge on the wire; `from` lets the sender skip its own message (it purged already).
#[derive(Serialize, Deserialize)]
struct Message {
    from: String,
    origin: String,
    keys: Vec<String>,
}

pub struct PurgeBus {
    link: Arc<RedisLink>,
    /// This process, among the replicas (random per start).
    me: String,
    listening: AtomicBool,
}

impl PurgeBus {
    pub fn new(link: Arc<RedisLink>) -> PurgeBus {
        // Unique per bus: another process (pid, start time) or another server in this one (count).
        static BUSES: AtomicU64 = AtomicU64::new(0);
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let me = format!("{}-{started:x}-{}", std::process::id(), BUSES.fetch_add(1, Ordering::Relaxed));
        PurgeBus { link, me, listening: AtomicBool::new(false) }
    }

    /// Sends a purge to the other replicas; the number of subscribers that received it.
    pub async fn publish(&self, origin: &str, keys: &[String]) -> Result<u64, String> {
        let message = Message { from: self.me.clone(), origin: origin.to_string(), keys: keys.to_vec() };
        let payload = serde_json::to_string(&message).map_err(|e| e.to_string())?;
        self.link.publish(CHANNEL, &payload).await
    }

    /// Whether the subscriber is subscribed now (purges from other replicas reach this one).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Applies other replicas' purges with `apply(origin, keys)` until the task is aborted.
    pub async fn listen(self: Arc<Self>, apply: impl Fn(&str, &[String]) + Send + Sync) {
        loop {
            match self.subscribe_and_apply(&apply).await {
                Ok(()) => tracing::warn!("purge fan-out: the Redis subscription ended; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "purge fan-out: Redis unreachable; retrying in 1 s"),
            }
            self.listening.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn subscribe_and_apply(&self, apply: &(impl Fn(&str, &[String]) + Send + Sync)) -> redis::RedisResult<()> {
        let mut pubsub = self.link.client().get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        self.listening.store(true, Ordering::Relaxed);
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            match serde_json::from_slice::<Message>(msg.get_payload_bytes()) {
                Ok(m) if m.from == self.me => {}
                Ok(m) => apply(&m.origin, &m.keys),
                Err(e) => tracing::warn!(error = %e, "purge fan-out: ignoring a malformed message"),
            }
        }
        Ok(())
    }
}
