//! The process's own routes: liveness, readiness and the Prometheus exposition.

use http::request::Parts;
use http::StatusCode;

use crate::app::App;
use crate::respond::{self, get_or_head, Answer, CacheOutcome};

pub fn healthz(head: &Parts) -> Answer {
    get_or_head(head)?;
    Ok((respond::text(StatusCode::OK, "text/plain", "ok\n"), CacheOutcome::None))
}

pub fn metrics(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    Ok((respond::text(StatusCode::OK, "text/plain; version=0.0.4", app.metrics.render()), CacheOutcome::None))
}

/// `/readyz` probes the store in the background when no store call finished for this long.
const READYZ_STORE_STALE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn readyz(app: &App, head: &Parts) -> Answer {
    get_or_head(head)?;
    let models: Vec<String> = app.registry.entries().iter().map(|e| e.engine.id().to_string()).collect();
    // The store's state as its recent calls left it: never awaited here (probes have short
    // timeouts), and never a reason to leave rotation, since a replica computes without it.
    let (store, failures) = match &app.store {
        None => ("disabled".to_string(), 0),
        Some(s) => {
            s.refresh_health(READYZ_STORE_STALE);
            let h = s.health();
            let state = match (&h.last_seen, h.failures_in_a_row, &h.last_error) {
                (None, _, _) => "unknown".to_string(),
                (Some(_), 0, _) => "ok".to_string(),
                (Some(_), _, e) => format!("error: {}", e.as_deref().unwrap_or("unknown")),
            };
            (state, h.failures_in_a_row)
        }
    };
    let ready = app.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({ "ready": ready, "models": models, "store": store, "store_failures_in_a_row": failures });
    Ok((respond::json(status, &body), CacheOutcome::None))
}
