//! The connection loop: accepts TCP connections and serves HTTP/1.1 on them with
//! limits against slow clients, and shuts down gracefully.
//!
//! axum's own `serve` has no header-read timeout, so a client that opens
//! connections and trickles bytes could hold them forever. Here a client must
//! send its request head within the header timeout (hyper closes the connection
//! otherwise); the body timeout is applied where the body is read
//! (the callback handler).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

/// The most a connection's read buffer grows to, and so the longest request
/// head accepted (a longer one gets 431).
///
/// hyper grows a connection's read buffer with the reads that fill it, up to
/// 400 KiB by default, and keeps it for the connection's life: with callbacks
/// of 300 details (36 KiB) the buffers of 256 connections held 30 MiB of the
/// bridge's 105 MiB. Capped here, a big body takes a few more reads (no cost
/// measurable in `bench/ab`, docs/performance.md); CSS's request heads are
/// well under 1 KiB.
const MAX_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `service` (the bridge's [`super::router`]) on `listener` until
/// `shutdown` resolves, then stops accepting, closes idle connections, and
/// returns once every in-flight request is answered.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_READ_BUFFER_BYTES);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    // Closing the listener refuses new connections at once.
    drop(listener);
    graceful.shutdown().await;
}
