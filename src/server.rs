//! The accept loop: TCP → (rustls) → hyper-util auto (HTTP/1.1 and HTTP/2) → `pipeline::handle`,
//! with a connection cap and graceful shutdown. The only module that knows hyper's server API.
//!
//! Hardening, following hyper-util's graceful example and axum's serve loop:
//! - accept errors never end the loop (1 s pause unless it is a per-connection error);
//! - TLS handshakes run inside the connection task, bounded by the header-read timeout;
//! - `header_read_timeout` is set on HTTP/1 (with a timer, which hyper requires for it), and the
//!   request head is capped by `server.max_header_bytes` (HTTP/1 read buffer, HTTP/2 header list);
//! - the peer address travels to `pipeline::handle` as a `guard::Peer` request extension;
//! - on shutdown the listener closes at once and in-flight requests get `drain_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::TlsConfig;
use crate::guard::Peer;
use crate::pipeline;

/// Serves until `shutdown` resolves, then drains.
pub async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.cfg.server.header_read_timeout)
        .max_buf_size(app.cfg.server.max_header_bytes);
    let max_header_list = u32::try_from(app.cfg.server.max_header_bytes).unwrap_or(u32::MAX);
    builder.http2().max_header_list_size(max_header_list).timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(app.cfg.server.max_connections));
    let handshake_timeout = app.cfg.server.header_read_timeout;
    tokio::pin!(shutdown);

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
        let app = app.clone();
        let service = service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(pipeline::handle(&app, req).await) }
        });
        match &tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
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
                        Err(_) => return debug!(%peer, "TLS handshake timed out"),
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        debug!(%peer, error = %e, "connection ended with an error");
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
