//! Pressure from outside: quiet connections that would hold every connection permit, a result
//! store that hangs, and a burst of large jobs against a memory budget.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_and_lone_h2_prefaces_do_not_lock_clients_out() {
    let header_timeout = Duration::from_millis(800);
    let s = Setup::new()
        .config(move |c| {
            c.server.max_connections = 32;
            c.server.header_read_timeout = header_timeout;
            // Shorter than the head timeout, which hyper also applies to an idle HTTP/1 connection.
            c.server.idle_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    s.put_source("a.png", &png(8, 8));
    // 48 sockets, more than the cap: most say nothing, every fourth sends only the HTTP/2
    // preface, every fourth the preface and an empty SETTINGS frame (an HTTP/2 handshake, then
    // no request).
    let mut quiet = Vec::new();
    for i in 0..48 {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        match i % 4 {
            0 => sock.write_all(H2_PREFACE).await.unwrap(),
            1 => sock.write_all(&[H2_PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat()).await.unwrap(),
            _ => {}
        }
        quiet.push(sock);
    }
    let started = Instant::now();
    let r = tokio::time::timeout(header_timeout * 10, client().get(s.url("/x2/a.png")).send())
        .await
        .expect("a new client is served while quiet sockets are open")
        .unwrap();
    assert_eq!(r.status(), 200);
    let waited = started.elapsed();
    assert!(waited < header_timeout + Duration::from_secs(1), "served after {waited:?}");
    // The server closed the quiet sockets it had accepted (EOF, or a reset) and counted them.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), quiet[2].read(&mut buf)).await.expect("closed by the server");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(s.metric("upres_connections_dropped_total{reason=\"header_timeout\"}").await >= 32);

    // A keep-alive connection that goes quiet after a request is closed after `idle_timeout`.
    let mut keep = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(header_timeout * 5, keep.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    assert!(s.metric("upres_connections_dropped_total{reason=\"idle\"}").await >= 1);
    drop(quiet);
    s.stop().await;
}

/// A TCP server on 127.0.0.1 that accepts every connection and never answers.
async fn hanging_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_result_store_delays_misses_boundedly_and_readyz_stays_200() {
    let (addr, hang) = hanging_server().await;
    let store_timeout = Duration::from_millis(300);
    let deadline = Duration::from_secs(8);
    let setup = Setup::new().config(move |c| {
        // The store is an S3 endpoint that never answers (configured as tests/it/fleet.rs does moto).
        c.cache.store.url = "s3://stalled".into();
        c.cache.store.options = [
            ("aws_endpoint", format!("http://{addr}")),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        c.cache.store.timeout = store_timeout;
        c.server.request_deadline = deadline;
        c.ml.warm_up = false;
    });
    let s = tokio::time::timeout(Duration::from_secs(10), setup.start()).await.expect("starts despite the store");
    s.put_source("a.png", &png(16, 12));

    let ready = tokio::time::timeout(Duration::from_secs(1), client().get(s.url("/readyz")).send())
        .await
        .expect("/readyz answers without waiting on the store")
        .unwrap();
    assert_eq!(ready.status(), 200);
    let json: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(json["ready"], true);
    assert!(json["store"].as_str().unwrap().starts_with("error: "), "{json}");
    assert!(json["store"].as_str().unwrap().contains("took longer than"), "{json}");

    // A miss: the store read and the claim each time out, the result is computed and served.
    let started = Instant::now();
    let r = tokio::time::timeout(deadline, client().get(s.url("/x2/format=png/a.png")).send())
        .await
        .expect("the miss answers within the request deadline")
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upres-cache"], "miss");
    let etag = r.headers()["etag"].to_str().unwrap().trim_matches('"').to_string();
    assert_eq!(dimensions(&r.bytes().await.unwrap()), (32, 24));
    let took = started.elapsed();
    assert!(took < store_timeout * 2 + Duration::from_secs(3), "a miss took {took:?} with a hanging store");
    // The write runs after the response; while it is in flight /r/ serves the result from it.
    assert_eq!(client().get(s.url(&format!("/r/{etag}.png"))).send().await.unwrap().status(), 200);
    // The second request is a memory hit: the hanging store is not on its path.
    let again = client().get(s.url("/x2/format=png/a.png")).send().await.unwrap();
    assert_eq!(again.headers()["x-upres-cache"], "hit-memory");

    // The write failed, was retried once, failed again, and says so.
    tokio::time::timeout(Duration::from_secs(5), s.stored()).await.expect("writes end within their timeouts");
    assert_eq!(s.metric("upres_cache_events_total{event=\"write_retried\",tier=\"store\"}").await, 1);
    assert_eq!(s.metric("upres_cache_events_total{event=\"write_failed\",tier=\"store\"}").await, 1);
    assert_eq!(s.metric("upres_store_writes_pending").await, 0);
    // /r/ now asks the store, which times out: a bounded 404, not a hang.
    let started = Instant::now();
    assert_eq!(client().get(s.url(&format!("/r/{etag}.png"))).send().await.unwrap().status(), 404);
    assert!(started.elapsed() < store_timeout + Duration::from_secs(2));

    let ready = client().get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let json: serde_json::Value = ready.json().await.unwrap();
    assert!(json["store_failures_in_a_row"].as_u64().unwrap() >= 2, "{json}");
    s.stop().await;
    hang.abort();
}

/// `VmRSS`/`VmHWM` of a process from /proc, in bytes.
fn proc_memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// `upres serve` as a child process (its memory is its own, not shared with other tests).
struct ChildServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl ChildServer {
    async fn start(config: &std::path::Path) -> ChildServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_upres"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("upres serve starts");
        let mut server = ChildServer { child, addr };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client().get(server.url("/readyz")).send().await {
                if r.status() == 200 {
                    return server;
                }
            }
            assert!(server.child.try_wait().unwrap().is_none(), "upres serve exited during start-up");
            assert!(Instant::now() < until, "upres serve not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_large_jobs_stays_within_the_memory_budget() {
    // One x2 Lanczos job on a 16 MP source is estimated at about 1.8 GiB: the budget admits one.
    const BUDGET: u64 = 2560 << 20;
    // Above the budget: the requests' source bytes, the allocator's slack, the runtime.
    const MARGIN: u64 = 512 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (origin, models) = (dir.path().join("origin"), dir.path().join("models"));
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::create_dir_all(&models).unwrap();
    let big = image::RgbImage::from_fn(4000, 4000, |x, y| image::Rgb([(x / 16) as u8, (y / 16) as u8, ((x + y) / 32) as u8]));
    std::fs::write(origin.join("big.jpg"), encode(image::DynamicImage::ImageRgb8(big), image::ImageFormat::Jpeg)).unwrap();
    std::fs::write(origin.join("small.png"), png(16, 16)).unwrap();
    let config = dir.path().join("upres.toml");
    std::fs::write(
        &config,
        format!(
            "[origins.default]\nurl = \"file://{}\"\n[cache.store]\nurl = \"\"\n[ml]\nmodels_dir = \"{}\"\n\
             [limits]\nmemory_budget = {BUDGET}\n[engine]\nqueue_capacity = 1000\nlanczos_workers = 2\n",
            origin.display(),
            models.display()
        ),
    )
    .unwrap();
    let server = ChildServer::start(&config).await;
    let pid = server.pid();
    let baseline = proc_memory(pid, "VmRSS:").unwrap();
    let bound = baseline + BUDGET + MARGIN;

    // A watchdog ends the server as soon as it passes the bound, so a failing run cannot take
    // the machine's memory with it.
    let (stop_watch, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watchdog = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            let rss = proc_memory(pid, "VmRSS:").unwrap_or(0);
            peak = peak.max(rss);
            if rss > bound {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
                return Some(rss);
            }
            tokio::select! {
                _ = &mut stopped => return None,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });

    let burst: Vec<_> = (0..100)
        .map(|i| {
            let url = server.url(&format!("/x2/w={}/model=lanczos/format=jpeg/big.jpg", 2000 + i));
            tokio::spawn(async move {
                let r = client().get(url).send().await.expect("the server answers");
                let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), retry_after)
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for task in burst {
        let (status, retry_after) = tokio::time::timeout(Duration::from_secs(120), task).await.expect("bounded").unwrap();
        *statuses.entry(status).or_default() += 1;
        if status == 503 {
            assert!(retry_after.is_some(), "a 503 says when to retry");
        }
    }
    let _ = stop_watch.send(());
    let killed_at = watchdog.await.unwrap();
    let peak = proc_memory(pid, "VmHWM:").unwrap_or(u64::MAX);
    let mib = |b: u64| b >> 20;
    eprintln!(
        "memory burst: baseline {} MiB, peak {} MiB, budget {} MiB, margin {} MiB, statuses {statuses:?}",
        mib(baseline),
        mib(peak),
        mib(BUDGET),
        mib(MARGIN)
    );
    assert_eq!(killed_at, None, "RSS passed budget + margin ({} MiB); statuses {statuses:?}", mib(bound));
    assert!(peak <= bound, "peak RSS {} MiB over budget + margin {} MiB", mib(peak), mib(bound));
    assert!(statuses.keys().all(|s| [200, 503].contains(s)), "{statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) >= 1, "{statuses:?}");
    assert!(statuses.get(&503).copied().unwrap_or(0) >= 50, "the excess is refused: {statuses:?}");
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric_sum(&metrics, "upres_memory_admitted_bytes"), 0, "every job gave its bytes back");
    assert!(metric_sum(&metrics, "upres_memory_refused_total") >= 50);
    // Healthy afterwards.
    let after = client().get(server.url("/x2/format=png/small.png")).send().await.unwrap();
    assert_eq!(after.status(), 200);
}
