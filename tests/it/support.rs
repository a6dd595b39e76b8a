//! Test harness: start upres on 127.0.0.1:0 with temp folders; engines with knobs for timing.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use image::{DynamicImage, ImageFormat, RgbImage};
use tempfile::TempDir;
use tokio::sync::oneshot;

use upres::app::App;
use upres::config::Config;
use upres::engine::lanczos::Lanczos;
use upres::engine::registry::ModelEntry;
use upres::engine::{Engine, EngineId, GenParams, InferError, RunContext, Tile, Tiling};

pub struct TestServer {
    pub addr: SocketAddr,
    pub origin: Arc<TempDir>,
    pub store: Arc<TempDir>,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a test server is built from.
pub struct Setup {
    pub origin: Arc<TempDir>,
    pub store: Arc<TempDir>,
    pub models: Vec<ModelEntry>,
    pub tweak: Box<dyn FnOnce(&mut Config) + Send>,
}

impl Setup {
    pub fn new() -> Self {
        Setup {
            origin: Arc::new(tempfile::tempdir().unwrap()),
            store: Arc::new(tempfile::tempdir().unwrap()),
            models: lanczos(),
            tweak: Box::new(|_| {}),
        }
    }

    pub fn models(mut self, models: Vec<ModelEntry>) -> Self {
        self.models = models;
        self
    }

    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Box::new(f);
        self
    }

    /// Another server on the same origin and store (a restart, or a second replica).
    pub fn sharing(server: &TestServer) -> Self {
        Setup { origin: server.origin.clone(), store: server.store.clone(), ..Setup::new() }
    }

    pub async fn start(self) -> TestServer {
        let mut cfg = Config::default();
        cfg.origins.get_mut("default").unwrap().url = format!("file://{}", self.origin.path().display());
        cfg.cache.store.url = format!("file://{}", self.store.path().display());
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        // Every test client is 127.0.0.1: the default upload limit (10/min per IP) would turn the
        // API tests into 429s. tests/it/guards.rs sets the limits it tests in its tweak.
        cfg.rate_limit.uploads.per_minute = 0;
        (self.tweak)(&mut cfg);
        let app = App::build_with_models(cfg, self.models).expect("app builds");
        app.warm_up().await.expect("warm-up");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = upres::server::tls_acceptor(&app.cfg.tls).expect("tls config");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(upres::server::run(listener, tls, app.clone(), async move {
            let _ = stopped.await;
        }));
        TestServer { addr, origin: self.origin, store: self.store, app, stop: Some(stop), task: Some(task) }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Setup::new().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn put_source(&self, name: &str, bytes: &[u8]) {
        let path = self.origin.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// `upres_engine_runs_total` summed over models, read from /metrics like an operator would.
    pub async fn engine_runs(&self) -> u64 {
        let text = client().get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric_sum(&text, "upres_engine_runs_total")
    }

    pub async fn metric(&self, name_and_labels: &str) -> u64 {
        let text = client().get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric_sum(&text, name_and_labels)
    }

    /// Resolves once the results this server computed are written to its store (writes run
    /// after the responses).
    pub async fn stored(&self) {
        self.app.store_writes.settled().await;
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Sums every sample line starting with `prefix` (a name, or a name with a label set prefix).
pub fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

pub fn lanczos() -> Vec<ModelEntry> {
    [2, 3, 4].into_iter().map(|s| entry("lanczos", Arc::new(Lanczos::new(s, 2)))).collect()
}

pub fn entry(name: &str, engine: Arc<dyn Engine>) -> ModelEntry {
    ModelEntry { name: name.into(), aliases: vec![], rank: 1, engine, description: String::new() }
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    encode(DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]))), ImageFormat::Png)
}

pub fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("response is an image");
    (img.width(), img.height())
}

/// An engine that takes `delay` per forward pass (checking cancellation every 10 ms), then
/// upscales by nearest neighbour. Counts passes and records whether it saw cancellation.
/// `gated()` makes every pass wait until the test calls `open`: tests order events with
/// `started`, `cancelled` and `open` instead of racing a delay.
pub struct SlowEngine {
    id: EngineId,
    pub delay: Duration,
    pub passes: AtomicU32,
    pub saw_cancel: AtomicBool,
    gate: tokio::sync::watch::Sender<bool>,
    changed: tokio::sync::watch::Sender<()>,
}

impl SlowEngine {
    pub fn new(delay: Duration) -> Arc<SlowEngine> {
        Arc::new(SlowEngine {
            id: EngineId::new("slow-x2", "test"),
            delay,
            passes: AtomicU32::new(0),
            saw_cancel: AtomicBool::new(false),
            gate: tokio::sync::watch::Sender::new(true),
            changed: tokio::sync::watch::Sender::new(()),
        })
    }

    /// Every pass waits for `open` (or a cancel).
    pub fn gated() -> Arc<SlowEngine> {
        let e = SlowEngine::new(Duration::ZERO);
        e.gate.send_replace(false);
        e
    }

    /// Lets waiting and later passes finish.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until `n` passes have started.
    pub async fn started(&self, n: u32) {
        self.until(&format!("{n} passes started"), |e| e.passes.load(Ordering::SeqCst) >= n).await
    }

    /// Waits until a pass saw its job cancelled.
    pub async fn cancelled(&self) {
        self.until("the engine was told to stop", |e| e.saw_cancel.load(Ordering::SeqCst)).await
    }

    async fn until(&self, what: &str, done: impl Fn(&SlowEngine) -> bool) {
        let mut changes = self.changed.subscribe();
        let wait = async {
            while !done(self) {
                changes.changed().await.expect("the engine lives");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or_else(|_| panic!("not within 10 s: {what}"));
    }
}

/// Waits (10 s at most) until `done` holds: for in-process state that has no event of its own
/// (flight waiters, queue depth). The assertion that follows does not depend on timing.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Engine for SlowEngine {
    fn id(&self) -> &EngineId {
        &self.id
    }
    fn scale(&self) -> u32 {
        2
    }
    fn tiling(&self) -> Option<Tiling> {
        None
    }
    fn upscale(&self, tiles: &[Tile], _: &[GenParams], ctx: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        self.changed.send_replace(());
        let until = std::time::Instant::now() + self.delay;
        while std::time::Instant::now() < until || !*self.gate.borrow() {
            if ctx.cancelled() {
                self.saw_cancel.store(true, Ordering::SeqCst);
                self.changed.send_replace(());
                return Err(InferError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(tiles.iter().map(nearest_x2).collect())
    }
}

/// An engine whose passes wait until `release` (checking cancellation every 10 ms and once more
/// after the gate opens), then upscale ×2 by nearest neighbour. `started` is notified when a pass
/// begins, so a test knows a run is in the engine without sleeping.
pub struct GatedEngine {
    id: EngineId,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    pub started: tokio::sync::Notify,
    pub passes: AtomicU32,
    pub saw_cancel: AtomicBool,
}

impl GatedEngine {
    pub fn new() -> Arc<GatedEngine> {
        Arc::new(GatedEngine {
            id: EngineId::new("gated-x2", "test"),
            open: std::sync::Mutex::new(false),
            opened: std::sync::Condvar::new(),
            started: tokio::sync::Notify::new(),
            passes: AtomicU32::new(0),
            saw_cancel: AtomicBool::new(false),
        })
    }

    pub fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Engine for GatedEngine {
    fn id(&self) -> &EngineId {
        &self.id
    }
    fn scale(&self) -> u32 {
        2
    }
    fn tiling(&self) -> Option<Tiling> {
        None
    }
    fn upscale(&self, tiles: &[Tile], _: &[GenParams], ctx: &dyn RunContext) -> Result<Vec<Tile>, InferError> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        let mut open = self.open.lock().unwrap();
        while !*open && !ctx.cancelled() {
            open = self.opened.wait_timeout(open, Duration::from_millis(10)).unwrap().0;
        }
        if ctx.cancelled() {
            self.saw_cancel.store(true, Ordering::SeqCst);
            return Err(InferError::Cancelled);
        }
        Ok(tiles.iter().map(nearest_x2).collect())
    }
}

/// Nearest-neighbour ×2 of a tile's RGB planes: the test engines' upscaler.
pub fn nearest_x2(t: &Tile) -> Tile {
    let (w, h) = (t.width * 2, t.height * 2);
    let mut data = Vec::with_capacity(t.data.len() * 4);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                data.push(t.data[c * t.plane_len() + ((y / 2) * t.width + x / 2) as usize]);
            }
        }
    }
    Tile::new(w, h, data)
}

/// Tells the registry that entry `index` takes `per_pixel` per input pixel, as a warm-up probe
/// would have measured, so the first-hit budget judges it slow.
pub fn measured_slow(app: &App, index: usize, per_pixel: Duration) {
    app.registry.record_speed(index, per_pixel, 1);
}

// === S3: a real S3 endpoint (moto's server) on 127.0.0.1 ===

/// moto's S3 server in a child process on a free port, with one empty bucket; killed on drop.
/// Needs `moto[server]` for one of the interpreters `python()` tries (`scripts/install-moto.sh`).
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    child: std::process::Child,
}

/// The interpreter with moto: `$TEST_S3_PYTHON`, `.venv/bin/python`, then `python3`.
pub fn python() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let candidates = [std::env::var("TEST_S3_PYTHON").ok(), Some(venv.to_string()), Some("python3".to_string())];
    for py in candidates.into_iter().flatten() {
        let ok = std::process::Command::new(&py)
            .args(["-c", "import moto.server, yaml"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py;
        }
    }
    panic!(
        "no Python with moto[server] (a real S3 server for the fleet tests) and PyYAML: \
         run `sh scripts/install-moto.sh` (installs moto[server] into .venv), or set TEST_S3_PYTHON"
    );
}

impl S3Server {
    pub async fn start() -> S3Server {
        let py = python();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = std::process::Command::new(&py)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto server starts");
        let mut s3 = S3Server { endpoint: format!("http://127.0.0.1:{port}"), bucket: "upres-results".into(), child };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // Creating the bucket is the readiness probe (moto checks no credentials).
            match client().put(format!("{}/{}", s3.endpoint, s3.bucket)).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => panic!("creating the bucket: {}", r.status()),
                Err(_) if std::time::Instant::now() < deadline => {
                    if let Ok(Some(status)) = s3.child.try_wait() {
                        panic!("moto server exited early: {status}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("moto server did not answer within 30 s: {e}"),
            }
        }
        s3
    }

    pub fn options(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The bucket through upres's own opener, to inspect and tamper with objects.
    pub fn bucket(&self) -> upres::objects::Bucket {
        upres::objects::Bucket::open(&format!("s3://{}", self.bucket), &self.options(), false).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one HTTP/1.1 request (headers, then a `content-length` body) from a callback
/// receiver's socket and answers `200` with no body. Returns the headers (names lower-cased) and
/// the body.
pub async fn answer_one_request(socket: tokio::net::TcpStream) -> (Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut reader = BufReader::new(socket);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.unwrap();
    reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
    (headers, body)
}
