//! `upres warm`: cache warming. Requests a list of transform URLs from a running upres with
//! bounded concurrency, so their results are computed and stored before users ask for them.
//!
//! Owns the list format (one URL or path per line, `#` comments), the HTTP client (reqwest,
//! plain HTTP to a replica or its Service; TLS belongs to the edge), the progress bar
//! (indicatif, drawn only on a terminal) and the report. Results already stored are not
//! recomputed by the server; `X-Upres-Cache` tells them apart and they are counted as cached.
//! It does not know the URL grammar: the server validates every path and its errors are
//! reported per line.

use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

/// How to warm.
#[derive(Clone, Debug)]
pub struct WarmOptions {
    /// Base URL of a running upres, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// `Accept` sent with every request (`format=auto` results vary on it).
    pub accept: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// One line that did not warm.
#[derive(Debug, PartialEq)]
pub struct Failure {
    pub target: String,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    pub message: String,
}

/// What a warm run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Computed now (`miss` or `coalesced`, or a server without debug headers).
    pub computed: usize,
    /// Already in a cache tier (`hit-memory`, `hit-store`).
    pub cached: usize,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

impl Report {
    pub fn total(&self) -> usize {
        self.computed + self.cached + self.failures.len()
    }
}

/// The targets of a list: trimmed lines, without blanks and `#` comments.
pub fn targets(list: &str) -> Vec<String> {
    list.lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before).trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A target as a URL: absolute `http://` URLs are kept, paths are joined to the server.
pub fn url_for(server: &str, target: &str) -> Result<String, String> {
    if target.starts_with("http://") {
        return Ok(target.to_string());
    }
    if target.contains("://") {
        return Err("only http:// URLs (warm a replica directly; TLS belongs to the edge)".into());
    }
    let server = server.trim_end_matches('/');
    if !server.starts_with("http://") {
        return Err(format!("--server must be an http:// URL, not `{server}`"));
    }
    Ok(format!("{server}/{}", target.trim_start_matches('/')))
}

enum Warmed {
    Computed,
    Cached,
}

/// Requests every target, `opts.concurrency` at a time, with a progress bar on a terminal.
pub async fn run(targets: Vec<String>, opts: &WarmOptions) -> Report {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(opts.timeout)
        .build()
        .expect("an HTTP client without TLS always builds");
    let bar = ProgressBar::new(targets.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}] {per_sec} ETA {eta} {msg}")
            .expect("valid template"),
    );
    let mut report = Report::default();
    let mut results = futures::stream::iter(targets)
        .map(|target| {
            let client = &client;
            async move {
                let outcome = warm_one(client, opts, &target).await;
                (target, outcome)
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    while let Some((target, outcome)) = results.next().await {
        match outcome {
            Ok(Warmed::Computed) => report.computed += 1,
            Ok(Warmed::Cached) => report.cached += 1,
            Err((status, message)) => report.failures.push(Failure { target, status, message }),
        }
        bar.set_message(format!("{} computed, {} cached, {} failed", report.computed, report.cached, report.failures.len()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    report
}

async fn warm_one(client: &reqwest::Client, opts: &WarmOptions, target: &str) -> Result<Warmed, (Option<u16>, String)> {
    let url = url_for(&opts.server, target).map_err(|m| (None, m))?;
    let mut response = client
        .get(&url)
        .header(reqwest::header::ACCEPT, &opts.accept)
        .send()
        .await
        .map_err(|e| (None, error_chain(&e)))?;
    let status = response.status();
    let cache = response
        .headers()
        .get("x-upres-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err((Some(status.as_u16()), error_message(&body)));
    }
    // Read the body to the end (the server finishes its work either way), keeping none of it.
    while let Some(_chunk) = response.chunk().await.map_err(|e| (Some(status.as_u16()), error_chain(&e)))? {}
    Ok(if cache.starts_with("hit-") { Warmed::Cached } else { Warmed::Computed })
}

/// The `message` of upres's JSON error body, else the start of the body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_skip_blanks_and_comments() {
        let list = "# shop\n/x4/shop/cat.png\n\n  x2/w=800/a.jpg   # hero\n#/x4/skipped.png\nhttp://h:1/x2/b.png\n";
        assert_eq!(targets(list), ["/x4/shop/cat.png", "x2/w=800/a.jpg", "http://h:1/x2/b.png"]);
    }

    #[test]
    fn paths_join_the_server_and_only_http_is_spoken() {
        assert_eq!(url_for("http://127.0.0.1:8080/", "x4/a.png").unwrap(), "http://127.0.0.1:8080/x4/a.png");
        assert_eq!(url_for("http://127.0.0.1:8080", "/x4/a.png").unwrap(), "http://127.0.0.1:8080/x4/a.png");
        assert_eq!(url_for("http://s", "http://other:9/x2/a.png").unwrap(), "http://other:9/x2/a.png");
        assert!(url_for("http://s", "https://cdn/x2/a.png").is_err());
        assert!(url_for("https://s", "/x2/a.png").is_err());
    }

    #[test]
    fn error_messages_come_from_the_json_body() {
        let body = br#"{"error":{"code":"bad_request","message":"unknown option `zz`","request_id":"1"}}"#;
        assert_eq!(error_message(body), "unknown option `zz`");
        assert_eq!(error_message(b"plain text\n"), "plain text");
    }
}
