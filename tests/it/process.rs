//! The real `upres serve` binary as a child process, for what only shows from outside the test
//! process: how it reads its environment, and its own peak memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running `upres serve` (Lanczos only, no result store, JSON logs), killed on drop.
pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr; they end when the child's pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

/// How a child server run ended before it listened.
#[derive(Debug)]
pub struct StartFailure {
    pub exit: Option<std::process::ExitStatus>,
    pub log: String,
}

impl ChildServer {
    /// Starts `upres serve` on 127.0.0.1:0 with `origin` as its default origin folder and
    /// `env` added to a copy of this process's environment without any `UPRES_*` or `RUST_LOG`
    /// variable. Returns once the server logged its listening address (it serves from then
    /// on), or the log if it exited first.
    pub fn start(origin: &std::path::Path, env: &[(&str, &str)]) -> Result<ChildServer, StartFailure> {
        ChildServer::start_with(origin, &["--store", ""], None, env)
    }

    /// As `start`, with `args` after `serve` (e.g. `--config <file>`) instead of `--store ""`, and
    /// `models` as the models folder (an empty one when `None`).
    pub fn start_with(
        origin: &std::path::Path,
        args: &[&str],
        models: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Result<ChildServer, StartFailure> {
        let empty_models = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upres"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--origin")
            .arg(format!("file://{}", origin.display()))
            .arg("--models")
            .arg(models.unwrap_or(empty_models.path()));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPRES_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("UPRES_TELEMETRY__LOG_FORMAT", "json").env("UPRES_TELEMETRY__LOG_FILTER", "info");
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the upres binary runs");
        let log = Arc::new(Mutex::new(Vec::new()));
        // stderr is drained on its own thread so the child never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let err_log = log.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_log.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref().map_while(Result::ok) {
            log.lock().unwrap().push(line.clone());
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if v["fields"]["message"] == "listening" {
                addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
                break;
            }
        }
        let Some(addr) = addr else {
            let exit = child.wait().ok();
            // The stderr thread ends when the pipe closes, with the child's last words read.
            let _ = stderr_thread.join();
            let log = log.lock().unwrap().join("\n");
            return Err(StartFailure { exit, log });
        };
        let out_log = log.clone();
        let stdout_thread = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                out_log.lock().unwrap().push(line);
            }
        });
        Ok(ChildServer { child, addr, log, readers: vec![stdout_thread, stderr_thread], _dirs: vec![empty_models] })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The child's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc/<pid>/status");
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kb / 1024
    }

    /// Ends the child the hard way (SIGKILL: no shutdown, nothing flushed or released).
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL reaches the child");
        let _ = self.child.wait();
    }

    /// Stops the child the orderly way (SIGTERM: drain, flush, exit) and returns everything it
    /// logged, to its last line.
    pub fn terminate(mut self) -> String {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM reaches the child");
        let status = self.child.wait().expect("the child exits");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        assert!(status.success(), "upres serve exits cleanly on SIGTERM: {status:?}\n{}", self.log());
        self.log()
    }

    /// Everything the child logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
