//! Middleware around every request: a request id (taken from `x-request-id` when
//! the caller sends a sane one, generated otherwise, returned in the response and
//! left in the request's `x-request-id` for handlers' log lines, see
//! [`RequestId`]), a debug-level tracing span that carries it, the in-flight
//! gauge, the request counter by route and status (499 for a request whose
//! client went away before its answer), and the callbacks' duration
//! histogram.
//!
//! The span is at debug level on purpose: with an info-level span per request
//! (its fields formatted, the span entered and left on every poll) the load
//! benchmark ran markedly slower in back-to-back runs, while the one line that
//! matters at info level, a refused callback, carries the request id itself.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::{BoxError, Router};
use futures::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use tower::Service;
use tracing::Instrument;

use super::{AppState, CALLBACK_PATH};
use crate::metrics::Metrics;

/// Where the request id travels, both ways.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The router with the middleware around it: the bridge's HTTP service.
///
/// A service around the whole router rather than axum's `Router::layer`, which
/// wraps each route in a boxed service of its own, and `from_fn`, which boxes
/// the rest of the stack again for its `Next`: per request they cost a dozen
/// allocations and two levels of boxed futures. This one boxes its future once.
#[derive(Clone)]
pub struct Observed {
    router: Router,
    state: Arc<AppState>,
}

impl Observed {
    pub fn new(router: Router, state: Arc<AppState>) -> Self {
        Self { router, state }
    }
}

impl<B> Service<axum::http::Request<B>> for Observed
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let state = self.state.clone();
        let router = self.router.clone();
        Box::pin(observe(state, request.map(Body::new), router))
    }
}

async fn observe(
    state: Arc<AppState>,
    mut request: Request,
    mut router: Router,
) -> Result<Response, Infallible> {
    let started = Instant::now();
    let route = route_label(request.uri().path());
    let id = request_id(&mut request);
    let span = tracing::debug_span!(
        "request",
        id = id.to_str().unwrap_or_default(),
        route,
        stream_id = tracing::field::Empty
    );
    let counted = Counted::new(&state.metrics, route);
    // Callbacks only: a scrape of /metrics must not count itself.
    let in_flight = (route == CALLBACK_PATH).then(|| InFlight::enter(state.metrics.in_flight()));
    // No `poll_ready` first: a `Router` is always ready.
    let mut response = router.call(request).instrument(span).await?;
    if let Some(in_flight) = in_flight {
        drop(in_flight);
        state.metrics.observe_callback(started.elapsed());
    }
    counted.answered(response.status().as_u16());
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    Ok(response)
}

/// The request's id: the caller's when sane, else a new one, left in the
/// request's `x-request-id`.
fn request_id(request: &mut Request) -> HeaderValue {
    match request.headers().get(&REQUEST_ID_HEADER) {
        Some(id) if is_sane_request_id(id) => id.clone(),
        _ => {
            let id = new_request_id();
            request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
            id
        }
    }
}

/// The request id and the request counter, for the stand-in that serves
/// while the bridge starts (see `super::starting_router`), which has nothing
/// else to observe.
pub async fn while_starting(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request_id(&mut request);
    let counted = Counted::new(&metrics, route_label(request.uri().path()));
    let mut response = next.run(request).await;
    counted.answered(response.status().as_u16());
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

/// nginx's "client closed request": what a request whose client went away
/// before its answer is counted as.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Counts a request by route and status once answered, or as
/// [`CLIENT_CLOSED_REQUEST`] when hyper drops it unanswered (its client closed
/// the connection): such a callback is in no other count, and CSS sends it
/// again. One whose handler panicked counts as 500.
struct Counted<'a> {
    metrics: &'a Metrics,
    route: &'static str,
    status: u16,
}

impl<'a> Counted<'a> {
    fn new(metrics: &'a Metrics, route: &'static str) -> Self {
        Self {
            metrics,
            route,
            status: CLIENT_CLOSED_REQUEST,
        }
    }

    fn answered(mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        // A handler that panicked is the bridge's failure, not the client's:
        // hyper closes the connection, as for a 500 it could not send.
        let status = if std::thread::panicking() {
            500
        } else {
            self.status
        };
        self.metrics.count_request(self.route, status);
    }
}

/// The request's id, for handlers' log lines: the request's `x-request-id`
/// header, which [`Observed`] sets.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn of(request: &Request) -> Option<Self> {
        request.headers().get(&REQUEST_ID_HEADER).cloned().map(Self)
    }
}

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

/// A process-unique id: a per-process random-ish prefix and a sequence number,
/// written without an intermediate `String`.
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
    let mut id = std::io::Cursor::new([0u8; 8 + 1 + 16]);
    // 25 bytes hold 8 and 16 hex digits and the dash: the write cannot fail.
    let _ = write!(id, "{:08x}-{n:x}", *PREFIX);
    let len = id.position() as usize;
    HeaderValue::from_bytes(&id.get_ref()[..len]).unwrap_or(HeaderValue::from_static("0"))
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
