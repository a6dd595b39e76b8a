//! The callback of a finished job: its record as JSON, POSTed to the job's `callback_url`
//! through the SSRF guard (`ssrf::callback_client`), signed so the receiver can tell it came
//! from us and was not replayed much later.
//!
//! `X-Upres-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(jobs.callback_secret, "<t>.<body>")>`
//! (the scheme Stripe and others use): the receiver recomputes the HMAC over the timestamp, a dot
//! and the raw body, compares in constant time, and rejects old timestamps. Delivery is tried
//! three times (0.5 s, 1 s apart); any 2xx is delivered.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::warn;

use super::Job;
use crate::app::App;

pub const SIGNATURE_HEADER: &str = "x-upres-signature";
const ATTEMPTS: u32 = 3;

/// The signature header's value for `body` at `unix_secs`.
pub fn sign(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_secs},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers `job`'s record to its callback URL; true when the receiver answered 2xx.
pub async fn deliver(app: &App, job: &Job) -> bool {
    let (Some(url), Some(secret)) = (job.callback_url.as_deref(), app.cfg.jobs.callback_secret.as_deref()) else {
        return false;
    };
    let Ok(url) = url::Url::parse(url) else { return false };
    let allow_private = app.cfg.jobs.callback_allow_private;
    let client = match crate::ssrf::callback_client(allow_private, app.cfg.jobs.callback_timeout) {
        Ok(c) => c,
        Err(e) => {
            warn!(job = %job.id, error = %e, "callback client");
            return false;
        }
    };
    let body = serde_json::to_vec(job).expect("a job serialises");
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let unix = super::now_ms() / 1000;
        let mut headers = vec![(SIGNATURE_HEADER, sign(secret.as_bytes(), unix, &body)), ("x-upres-job", job.id.clone())];
        // The trace of the request that created the job (`jobs::run::spawn` keeps it).
        if let Some(trace) = crate::trace_context::current() {
            headers.push((crate::trace_context::TRACEPARENT, trace.header_value()));
        }
        // The URL is not logged: a receiver may put a token in it.
        match crate::ssrf::post_json(&client, allow_private, &url, &headers, body.clone()).await {
            Ok(status) if (200..300).contains(&status) => return true,
            Ok(status) => warn!(job = %job.id, status, attempt, "callback answered with an error"),
            Err(e) => warn!(job = %job.id, error = %e, attempt, "callback failed"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_time_and_body() {
        let s = sign(b"secret", 1_700_000_000, b"{}");
        assert!(s.starts_with("t=1700000000,v1=") && s.len() == "t=1700000000,v1=".len() + 64, "{s}");
        assert_ne!(s, sign(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(s, sign(b"secret", 1_700_000_000, b"{ }"));
        assert_ne!(s, sign(b"other", 1_700_000_000, b"{}"));
    }
}
