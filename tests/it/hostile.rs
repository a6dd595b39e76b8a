//! The hostile-file corpus (tests/fixtures/hostile/, made by scripts/make_hostile_corpus.py):
//! every file through a transform URL gets the status EXPECTED lists for it, within a bounded
//! time, and the server stays healthy with bounded memory.

use std::time::{Duration, Instant};

use crate::support::*;

/// Per file, generous for an unoptimised debug build on a loaded 2-core machine.
const PER_FILE: Duration = Duration::from_secs(20);

fn corpus() -> Vec<(String, u16, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let list = std::fs::read_to_string(dir.join("EXPECTED")).expect("tests/fixtures/hostile/EXPECTED");
    list.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let name = parts.next().unwrap().to_string();
            let status = parts.next().unwrap().parse().expect("status");
            (name, status, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Resident memory of this process (the server runs in it), in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    kb / 1024
}

#[tokio::test]
async fn every_hostile_file_gets_its_status_quickly_and_the_server_survives() {
    let s = TestServer::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let files = corpus();
    assert!(files.len() >= 30, "the corpus lost files");
    for (name, _, _) in &files {
        s.put_source(&format!("hostile/{name}"), &std::fs::read(dir.join(name)).unwrap());
    }
    let before = rss_mib();
    let mut failures = Vec::new();
    for (name, want, why) in &files {
        let started = Instant::now();
        let r = client().get(s.url(&format!("/x2/model=lanczos/format=png/hostile/{name}"))).send().await.unwrap();
        let status = r.status().as_u16();
        let json = r.headers().get("content-type").is_some_and(|v| v == "application/json");
        let took = started.elapsed();
        if status != *want || took > PER_FILE || (status >= 400 && !json) {
            let body: String = r.text().await.unwrap_or_default().chars().take(200).collect();
            failures.push(format!("{name} ({why}): got {status} in {took:?}, json={json}; want {want}: {body}"));
        }
    }
    assert!(failures.is_empty(), "hostile files:\n{}", failures.join("\n"));
    let grown = rss_mib().saturating_sub(before);
    // Bombs are refused from their headers; nothing here may make the process balloon.
    assert!(grown < 512, "RSS grew by {grown} MiB over the corpus");
    assert_eq!(client().get(s.url("/healthz")).send().await.unwrap().status(), 200);
    s.put_source("ok.png", &png(4, 4));
    assert_eq!(client().get(s.url("/x2/ok.png")).send().await.unwrap().status(), 200);
    s.stop().await;
}
