//! Request identity across hops: W3C trace context (`traceparent`) and the request id.
//!
//! Owns: parsing and writing `traceparent` (version 00), the request id a client may send in
//! `X-Request-Id` (kept when sane, else made up), the trace each request runs in, and carrying it
//! into the tasks a request spawns (`spawn`), so origin fetches (`source.rs` → `ssrf.rs`) and job
//! callbacks (`jobs/callback.rs`) send it on. Does not own the subscriber or the exporter
//! (`telemetry.rs`).
//!
//! The trace is held twice, on purpose: as a tokio task-local (`current`), which works whether or
//! not a subscriber is installed, and in the request's `tracing` span, whose fields put
//! `request_id` and `trace_id` on every log line the request causes. With OTLP export on, the
//! span is an OpenTelemetry span parented to the caller's, and its own ids are the ones sent on.

use std::future::Future;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header names.
pub const TRACEPARENT: &str = "traceparent";
pub const REQUEST_ID: &str = "x-request-id";

/// The longest client-sent request id kept.
const MAX_REQUEST_ID: usize = 64;

/// One hop of a trace: the trace, the span on the sending side, and whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, neither id all
    /// zeros. Later versions are read by their first four fields, as the spec asks; `ff` is
    /// invalid. `None` for anything else (the request then starts a new trace).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let mut parts = value.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex(version, 2) || version == "ff" || !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The header value this hop sends on (version 00).
    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.span_id), u8::from(self.sampled))
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    fn remote_context(&self) -> opentelemetry::Context {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let parent = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(parent)
    }
}

/// The request id: the client's `X-Request-Id` when it is 1–64 characters of `A-Z a-z 0-9 - _ . :`
/// (so it is safe in logs and headers), else `generated`.
pub fn request_id(client: Option<&http::HeaderValue>, generated: impl FnOnce() -> String) -> String {
    let sane = |s: &&str| {
        (1..=MAX_REQUEST_ID).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    match client.and_then(|v| v.to_str().ok()).filter(sane) {
        Some(id) => id.to_string(),
        None => generated(),
    }
}

/// Starts the trace of a request whose `tracing` span is `span`, under the caller's
/// `traceparent` (`incoming`) if any. With the OpenTelemetry layer installed the span takes the
/// caller as its parent and its ids are the trace's; without it, the caller's trace id is kept
/// (or a new one made) and this hop gets a fresh span id.
pub fn start(span: &tracing::Span, incoming: Option<TraceParent>) -> TraceParent {
    if let Some(parent) = incoming {
        // Fails only without the layer (or on a disabled span): then the fallback below.
        let _ = span.set_parent(parent.remote_context());
    }
    let otel = span.context();
    let own = otel.span().span_context().clone();
    if own.is_valid() {
        return TraceParent {
            trace_id: own.trace_id().to_bytes(),
            span_id: own.span_id().to_bytes(),
            sampled: own.is_sampled(),
        };
    }
    TraceParent {
        trace_id: incoming.map_or_else(random, |p| p.trace_id),
        span_id: random(),
        // Nothing records this hop, so it is sampled only if the caller's was.
        sampled: incoming.is_some_and(|p| p.sampled),
    }
}

fn random<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        getrandom::fill(&mut id).expect("the OS random source works");
        if id != [0; N] {
            return id;
        }
    }
}

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// The trace of the request this task works for, if any.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|t| *t).ok()
}

/// Runs `fut` as part of `trace` (what `current` answers inside it).
pub async fn within<F: Future>(trace: TraceParent, fut: F) -> F::Output {
    CURRENT.scope(trace, fut).await
}

/// `tokio::spawn`, keeping the spawning task's trace and `tracing` span: work a request starts
/// in the background (its flight's leader, a job) logs and propagates under the request's ids.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let fut = fut.instrument(tracing::Span::current());
    match current() {
        Some(trace) => tokio::spawn(CURRENT.scope(trace, fut)),
        None => tokio::spawn(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_the_spec_refuses() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert!(p.sampled);
        assert_eq!(p.header_value(), v);
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled);
        // A later version: its first four fields, the rest ignored.
        assert!(TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        let keep = |v: &str| request_id(Some(&http::HeaderValue::from_str(v).unwrap()), || "made".into());
        assert_eq!(keep("abc-123_x.y:z"), "abc-123_x.y:z");
        assert_eq!(keep(&"a".repeat(64)), "a".repeat(64));
        assert_eq!(keep(&"a".repeat(65)), "made");
        assert_eq!(keep(""), "made");
        assert_eq!(keep("a b"), "made");
        assert_eq!(keep("x\"y"), "made");
        assert_eq!(request_id(None, || "made".into()), "made");
    }

    #[tokio::test]
    async fn without_a_subscriber_a_trace_keeps_the_callers_id_and_spawned_tasks_inherit_it() {
        let caller = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let own = start(&tracing::Span::none(), Some(caller));
        assert_eq!(own.trace_id, caller.trace_id);
        assert_ne!(own.span_id, caller.span_id);
        assert!(own.sampled);
        let fresh = start(&tracing::Span::none(), None);
        assert_ne!(fresh.trace_id, [0; 16]);
        assert!(!fresh.sampled);
        assert_eq!(current(), None);
        let seen = within(own, async { spawn(async { current() }).await.unwrap() }).await;
        assert_eq!(seen, Some(own));
    }
}
