//! Middleware around every request: a request id (taken from `x-request-id` when
//! the caller sends a sane one, generated otherwise, returned in the response and
//! handed to handlers as a [`RequestId`] extension for their log lines), a
//! debug-level tracing span that carries it, the in-flight gauge, and the request
//! counter by route and status.
//!
//! The span is at debug level on purpose: with an info-level span per request
//! (its fields formatted, the span entered and left on every poll) the load
//! benchmark ran markedly slower in back-to-back runs, while the one line that
//! matters at info level, a refused callback, carries the request id itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::gauge::Gauge;
use tracing::Instrument;

use super::{AppState, CALLBACK_PATH};
use crate::ingest::Publish;

const REQUEST_ID_HEADER: &str = "x-request-id";

pub async fn observe<P: Publish>(
    State(state): State<Arc<AppState<P>>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.uri().path());
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|id| is_sane_request_id(id))
        .cloned()
        .unwrap_or_else(new_request_id);
    let span = tracing::debug_span!(
        "request",
        id = id.to_str().unwrap_or_default(),
        route,
        stream_id = tracing::field::Empty
    );
    let mut request = request;
    request.extensions_mut().insert(RequestId(id.clone()));
    // Callbacks only: a scrape of /metrics must not count itself.
    let in_flight = (route == CALLBACK_PATH).then(|| InFlight::enter(&state.metrics.in_flight));
    let mut response = next.run(request).instrument(span).await;
    drop(in_flight);
    let status = response.status().as_u16();
    state.metrics.count_request(route, status);
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

/// The request's id, for handlers' log lines.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

/// The route as a metric label: one of a fixed set, never the raw path.
fn route_label(path: &str) -> &'static str {
    match path {
        CALLBACK_PATH => CALLBACK_PATH,
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// Short printable ASCII only: the id ends up in logs.
fn is_sane_request_id(id: &HeaderValue) -> bool {
    id.len() <= 128 && !id.is_empty() && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique id: a per-process random-ish prefix and a sequence number.
fn new_request_id() -> HeaderValue {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        nanos ^ std::process::id().rotate_left(16)
    });
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:08x}-{n:x}", *PREFIX))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// Counts a request in the in-flight gauge until dropped, also when the client
/// goes away and the request future is dropped mid-way.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
