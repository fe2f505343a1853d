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
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use futures::FutureExt;
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
            // A panic while serving a request ends its connection (the client
            // gets no answer; CSS sends the callback again). Caught here so
            // that it is logged and counted like the background tasks' panics,
            // not only written raw to stderr.
            match AssertUnwindSafe(connection).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "connection ended with an error"),
                Err(panic) => {
                    crate::metrics::count_panic("http");
                    tracing::error!(
                        panic = crate::telemetry::panic_message(&*panic),
                        "a request panicked; its connection is closed without an answer"
                    );
                }
            }
        });
    }
    // Closing the listener refuses new connections at once.
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A defect that panics in a handler is counted and logged, and the
    /// connection closed; the server serves on.
    #[tokio::test]
    async fn a_request_that_panics_is_counted_and_its_connection_closed() {
        async fn a_defect() -> &'static str {
            panic!("a defect in a handler")
        }
        let router = axum::Router::new()
            .route("/panic", axum::routing::get(a_defect))
            .route("/ok", axum::routing::get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            router,
            Duration::from_secs(5),
            std::future::pending(),
        ));
        let ask = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer).await;
            answer
        };
        assert_eq!(ask("/panic").await, "", "no answer");
        assert!(ask("/ok").await.starts_with("HTTP/1.1 200"), "serving on");
        let text = crate::metrics::Metrics::new("/css/callback").encode();
        assert!(
            text.contains(r#"css_bridge_panics_total{task="http"} 1"#),
            "{text}"
        );
    }
}
