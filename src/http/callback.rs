//! `POST /css/callback`: the endpoint CSS calls.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::Instant;

use super::AppState;
use super::admission::Ticket;
use super::error::ApiError;
use super::observe::RequestId;
use crate::ingest::{Admitted, IngestError, Outcome};
use crate::publish::PublishError;

/// Receives one callback and answers `200 {"code":0}` once every record is in
/// Kafka, or the error that says why not.
pub async fn receive(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Accepted, ApiError> {
    let request_id = RequestId::of(&request);
    let refused = |error: ApiError| refuse(&state, error, request_id.as_ref(), None);
    let overloaded = || ApiError::Overloaded {
        retry_after: state.retry_after,
    };
    // Before the body is read, so that neither bodies nor records pile up in
    // memory beyond the limits (see `admission`).
    let declared = request.body().size_hint().exact();
    // A body that declares more than the limit is refused before it takes
    // room: it would wait for the whole budget, hold it, and be refused anyway.
    if declared.is_some_and(|bytes| bytes > state.max_body_bytes as u64) {
        return Err(refused(too_large(&state)));
    }
    let mut ticket = (state.admission.enter(declared).await).map_err(|_| refused(overloaded()))?;
    let body = read_body(&state, request, &mut ticket)
        .await
        .map_err(refused)?;
    ticket.fit_body(body.len());
    // What the wait for room left of the acknowledgement deadline, from now:
    // the body's read, the sender's part, does not count against it.
    let deadline = Instant::now() + ticket.remaining();
    let admitted = match admit(&state, &mut ticket, &body, deadline).await {
        Ok(admitted) => admitted,
        Err(Refused::Overloaded) => return Err(refused(overloaded())),
        Err(Refused::Ingest(error)) => {
            ticket.release_records();
            let kept = state.ingestor.keep_refused(&error, deadline).await;
            let error = ingest_error(&state, error);
            return Err(refuse(&state, error, request_id.as_ref(), kept.as_ref()));
        }
    };
    // Released before the wait on Kafka: hyper reads the connection while the
    // answer is pending, and a body still alive keeps hyper's read buffer
    // shared, so that each of those reads would allocate a fresh buffer.
    drop(body);
    let outcome = state
        .ingestor
        .publish(admitted, deadline)
        .await
        .map_err(|error| refused(ingest_error(&state, error)))?;
    match outcome {
        Outcome::Published { records } => tracing::debug!(records, "callback published"),
        Outcome::Ignored { event_type } => {
            tracing::debug!(event_type, "callback of another event type acknowledged")
        }
    }
    Ok(Accepted)
}

/// Why [`admit`] did not admit a callback.
enum Refused {
    /// No room for its records by the deadline.
    Overloaded,
    Ingest(IngestError),
}

/// Inspects the callback of `body`, waits for room in admission's record
/// bytes for its records, and encodes them: a waiting callback holds its body
/// and its decoded callback, never records that may be thousands of times its
/// size (see `admission`).
async fn admit(
    state: &AppState,
    ticket: &mut Ticket<'_>,
    body: &[u8],
    deadline: Instant,
) -> Result<Admitted, Refused> {
    let inspected = state.ingestor.inspect(body).map_err(Refused::Ingest)?;
    ticket
        .hold_records(inspected.max_encoded_len(), deadline)
        .await
        .map_err(|_| Refused::Overloaded)?;
    state.ingestor.encode(&inspected).map_err(Refused::Ingest)
}

/// The answer to an ingest error.
fn ingest_error(state: &AppState, error: IngestError) -> ApiError {
    ApiError::Ingest {
        error,
        retry_after: state.retry_after,
    }
}

/// Reads the body within the body-read timeout and the size limit, holding
/// room in admission's body bytes for what has arrived (see
/// [`Ticket::hold_body`]). A wait for that room is the bridge's part, not the
/// sender's: it does not count against the body-read timeout but against the
/// acknowledgement deadline, whose end is a 503, not a 408.
async fn read_body(
    state: &AppState,
    request: Request,
    ticket: &mut Ticket<'_>,
) -> Result<Bytes, ApiError> {
    let mut body = Limited::new(request.into_body(), state.max_body_bytes);
    let mut read_by = Instant::now() + state.body_read_timeout;
    let mut waited = Duration::ZERO;
    let mut chunks = Vec::new();
    let mut len = 0;
    loop {
        let frame = tokio::time::timeout_at(read_by, body.frame())
            .await
            .map_err(|_| body_timed_out(state, waited))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|error| unreadable(state, error))?;
        // Trailers, which no CSS callback has, are not the body.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        len += chunk.len();
        let waiting = Instant::now();
        ticket
            .hold_body(len)
            .await
            .map_err(|_| ApiError::Overloaded {
                retry_after: state.retry_after,
            })?;
        let took = waiting.elapsed();
        read_by += took;
        waited += took;
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
}

/// The answer to a body that did not arrive within the body-read timeout,
/// not counting the bridge's own `waited` for room to hold it.
fn body_timed_out(state: &AppState, waited: Duration) -> ApiError {
    let mut message = format!(
        "request body not received within {:?}",
        state.body_read_timeout
    );
    if !waited.is_zero() {
        message += &format!(" (besides {waited:.1?} the bridge took to make room for it)");
    }
    ApiError::Body {
        status: StatusCode::REQUEST_TIMEOUT,
        message,
    }
}

/// The answer to a body that could not be read.
fn unreadable(state: &AppState, error: axum::BoxError) -> ApiError {
    if error.is::<LengthLimitError>() {
        return too_large(state);
    }
    ApiError::Body {
        status: StatusCode::BAD_REQUEST,
        message: format!("request body could not be read: {error}"),
    }
}

/// The answer to a body over `--max-body-bytes`, declared or sent.
fn too_large(state: &AppState) -> ApiError {
    ApiError::Body {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "request body larger than the limit of {} bytes",
            state.max_body_bytes
        ),
    }
}

/// Counts and logs a refusal, and returns it to be answered.
///
/// A refusal the sender must fix (4xx) gets a line of its own, with the request
/// id and the stream id the body names: someone has to find that sender (at
/// most a few a second per reason, the next line saying how many were not
/// written: see `throttle`). The same line says how the body's dead letter
/// went (`dead_letter`, when it was kept), so that a failing dead-letter topic
/// does not double the lines. A refusal for the bridge's own state or Kafka's
/// (5xx) is only counted: at production rates an outage would otherwise write
/// thousands of lines a second; [`crate::outage`] summarises them by reason.
/// Neither carries secrets: messages never quote a signature or a key.
fn refuse(
    state: &AppState,
    error: ApiError,
    request_id: Option<&RequestId>,
    dead_letter: Option<&Result<(), PublishError>>,
) -> ApiError {
    let (status, reason) = error.status();
    if status.is_client_error() {
        state.metrics.count_rejection(reason);
        let now = std::time::Instant::now();
        let Some(suppressed) = state.refusal_lines.allow(reason, now) else {
            return error;
        };
        let stream_id = error.claimed_stream_id();
        tracing::warn!(
            request_id = request_id.map(tracing::field::display),
            stream_id,
            status = status.as_u16(),
            reason,
            suppressed = (suppressed > 0).then_some(suppressed),
            error = %error.message(),
            dead_letter = dead_letter.map(|written| match written {
                Ok(()) => "written",
                Err(_) => "failed",
            }),
            dead_letter_error = dead_letter
                .and_then(|written| written.as_ref().err())
                .map(tracing::field::display),
            "callback refused"
        );
    } else {
        state.outage.refused(reason);
    }
    error
}

/// The answer to an accepted callback, `200 {"code":0}`: a constant, so the hot
/// path serializes nothing.
pub struct Accepted;

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            r#"{"code":0}"#,
        )
            .into_response()
    }
}
