//! The accept loop: TCP → (rustls) → hyper-util auto (HTTP/1.1 and HTTP/2) → `routes::handle`,
//! with a connection cap and graceful shutdown. The only module that knows hyper's server API.
//!
//! Hardening, following hyper-util's graceful example and axum's serve loop:
//! - accept errors never end the loop (1 s pause unless it is a per-connection error);
//! - TLS handshakes run inside the connection task, bounded by the header-read timeout;
//! - `header_read_timeout` is set on HTTP/1 (with a timer, which hyper requires for it), and the
//!   request head is capped by `server.max_header_bytes` (HTTP/1 read buffer, HTTP/2 header list);
//! - a quiet connection gives its permit back: one that starts no request within
//!   `header_read_timeout` of opening (silent sockets, a lone HTTP/2 preface, a dribbled head —
//!   hyper-util's protocol sniffing has no timer of its own) or has none in flight for
//!   `idle_timeout` after its last one (HTTP/1 keep-alive and HTTP/2 alike) is closed and counted
//!   in `upres_connections_dropped_total{reason}`; HTTP/2 also pings an idle peer;
//! - the peer address travels to `routes::handle` as a `guard::Peer` request extension;
//! - on shutdown the listener closes at once and in-flight requests get `drain_timeout`.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::TlsConfig;
use crate::guard::Peer;
use crate::routes;

/// Serves until `shutdown` resolves, then drains.
pub async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.cfg.server.header_read_timeout)
        .max_buf_size(app.cfg.server.max_header_bytes);
    let max_header_list = u32::try_from(app.cfg.server.max_header_bytes).unwrap_or(u32::MAX);
    builder
        .http2()
        .max_header_list_size(max_header_list)
        .timer(TokioTimer::new())
        .keep_alive_interval(app.cfg.server.idle_timeout)
        .keep_alive_timeout(app.cfg.server.header_read_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(app.cfg.server.max_connections));
    let handshake_timeout = app.cfg.server.header_read_timeout;
    let quiet = QuietLimits { first_request: app.cfg.server.header_read_timeout, idle: app.cfg.server.idle_timeout };
    tokio::pin!(shutdown);
    // Other replicas' purges, applied for as long as this server runs.
    let _purges = app.purge_bus.clone().map(|bus| {
        let target = app.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(bus.listen(move |origin, keys| {
            crate::api::purge::apply(&target, origin, keys);
        })))
    });
    // Jobs whose replica died, taken over from the shared store.
    let _job_sweep = (!app.cfg.jobs.sweep_interval.is_zero())
        .then(|| tokio_util::task::AbortOnDropHandle::new(tokio::spawn(crate::jobs::takeover::sweep_forever(app.clone()))));

    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !is_connection_error(&e) {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                let (app, active) = (app.clone(), activity.begin());
                async move {
                    let response = routes::handle(&app, req).await;
                    // The request stays active until its body is sent (event streams run long).
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        body.map_frame(move |frame| {
                            let _ = &active;
                            frame
                        })
                    }))
                }
            })
        };
        let metrics = app.metrics.clone();
        match &tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    tokio::select! {
                        ended = conn => if let Err(e) = ended {
                            debug!(%peer, error = %e, "connection ended with an error");
                        },
                        reason = activity.quiet_too_long(quiet) => {
                            metrics.connections_dropped.with_label_values(&[reason]).inc();
                            debug!(%peer, reason, "closed a quiet connection");
                        }
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls_stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            metrics.connections_dropped.with_label_values(&["header_timeout"]).inc();
                            return debug!(%peer, "TLS handshake timed out");
                        }
                    };
                    activity.restart();
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service).into_owned();
                    tokio::select! {
                        ended = watcher.watch(conn) => if let Err(e) = ended {
                            debug!(%peer, error = %e, "connection ended with an error");
                        },
                        reason = activity.quiet_too_long(quiet) => {
                            metrics.connections_dropped.with_label_values(&[reason]).inc();
                            debug!(%peer, reason, "closed a quiet connection");
                        }
                    }
                    drop(permit);
                });
            }
        }
    }

    drop(listener);
    info!("shutting down: draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => info!("drained"),
        _ = tokio::time::sleep(app.cfg.server.drain_timeout) => warn!("drain timeout passed; closing remaining connections"),
    }
    // Results computed just before shutdown are still being written to the store.
    let unwritten = app.store_writes.drain(app.cfg.server.drain_timeout).await;
    if unwritten > 0 {
        warn!(unwritten, "shutting down with result-store writes unfinished; those results are not stored");
    }
}

/// How long a connection may stay without a request in flight.
#[derive(Clone, Copy)]
struct QuietLimits {
    /// From opening (or the TLS handshake) to the first request's head.
    first_request: Duration,
    /// From the end of the last request to the next one.
    idle: Duration,
}

/// One connection's requests, as its idle watchdog sees them.
struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last became quiet (opened, or its last request ended).
    quiet_since: parking_lot::Mutex<Instant>,
    served: std::sync::atomic::AtomicBool,
    /// Signalled when a request ends (a stored permit: no lost wake-ups).
    ended: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            quiet_since: parking_lot::Mutex::new(Instant::now()),
            served: false.into(),
            ended: Notify::new(),
        })
    }

    /// The clock starts again (after the TLS handshake, which has its own timeout).
    fn restart(&self) {
        *self.quiet_since.lock() = Instant::now();
    }

    fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.store(true, Ordering::SeqCst);
        Active(self.clone())
    }

    /// Resolves with the reason (`header_timeout` or `idle`) once the connection has had no
    /// request in flight for longer than its limit.
    async fn quiet_too_long(&self, limits: QuietLimits) -> &'static str {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                self.ended.notified().await;
                continue;
            }
            let (limit, reason) = if self.served.load(Ordering::SeqCst) {
                (limits.idle, "idle")
            } else {
                (limits.first_request, "header_timeout")
            };
            let deadline = *self.quiet_since.lock() + limit;
            if Instant::now() >= deadline {
                return reason;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = self.ended.notified() => {}
            }
            // Re-check: a request may have started (or ended) meanwhile.
            if self.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() >= *self.quiet_since.lock() + limit {
                return reason;
            }
        }
    }
}

/// A request in flight on its connection; dropped when its response body is done.
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.quiet_since.lock() = Instant::now();
        }
        self.0.ended.notify_one();
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Builds the TLS acceptor from PEM files, advertising h2 and http/1.1 by ALPN.
pub fn tls_acceptor(cfg: &TlsConfig) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else { return Ok(None) };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("tls.cert {}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("tls.cert: {e}"))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("tls.key: {e}"))?
    .ok_or("tls.key holds no private key")?;
    let mut server = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("tls: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    info!("shutdown signal received");
}
