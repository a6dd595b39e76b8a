//! `upres warm`, the real binary against a live server: counts, failures, exit status.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

/// Runs `upres warm <args>` with `stdin`, off the reactor; (exit success, stderr).
async fn warm(args: Vec<String>, stdin: &str) -> (bool, String) {
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_upres"))
            .arg("warm")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("upres runs");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_computes_a_list_reports_failures_and_then_finds_everything_cached() {
    let s = Setup::new().config(|c| c.ml.warm_up = false).start().await;
    s.put_source("shop/a.png", &png(32, 24));
    s.put_source("shop/b.png", &png(20, 20));
    let list = "# storefront\n/x2/model=lanczos/format=png/shop/a.png\n\
                x2/model=lanczos/w=30/format=webp/shop/b.png   # no leading slash\n\
                \n/x2/zz=1/shop/a.png\n/x2/model=lanczos/shop/missing.png\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), list).unwrap();
    let server = format!("http://{}", s.addr);

    let (ok, stderr) =
        warm(vec![file.path().display().to_string(), "--server".into(), server.clone(), "--concurrency".into(), "2".into()], "").await;
    assert!(!ok, "failures make the exit status non-zero: {stderr}");
    assert!(stderr.contains("failed 400 /x2/zz=1/shop/a.png: "), "{stderr}");
    assert!(stderr.contains("zz"), "the server's message names the option: {stderr}");
    assert!(stderr.contains("failed 404 /x2/model=lanczos/shop/missing.png"), "{stderr}");
    assert!(stderr.contains("4 URLs") && stderr.contains("2 computed, 0 already cached, 2 failed"), "{stderr}");
    let runs = s.engine_runs().await;
    assert!(runs >= 2, "both results were computed ({runs} passes)");

    // The good lines again, from stdin: all cached, nothing recomputed, exit 0.
    let good = "/x2/model=lanczos/format=png/shop/a.png\nx2/model=lanczos/w=30/format=webp/shop/b.png\n";
    let (ok, stderr) = warm(vec!["-".into(), "--server".into(), server], good).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("0 computed, 2 already cached, 0 failed"), "{stderr}");
    assert_eq!(s.engine_runs().await, runs);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fails_clearly_when_no_server_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (ok, stderr) = warm(vec!["-".into(), "--server".into(), format!("http://127.0.0.1:{port}")], "/x2/a.png\n").await;
    assert!(!ok);
    assert!(stderr.contains("failed - /x2/a.png:") && stderr.contains("1 failed"), "{stderr}");
}
