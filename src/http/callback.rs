//! `POST /css/callback`: the endpoint CSS calls.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::observe::RequestId;
use crate::ingest::{Outcome, Publish};

/// Receives one callback and answers `200 {"code":0}` once every record is in
/// Kafka, or the error that says why not.
pub async fn receive<P: Publish>(
    State(state): State<Arc<AppState<P>>>,
    request: Request,
) -> Result<Accepted, ApiError> {
    let request_id = request.extensions().get::<RequestId>().cloned();
    let result = receive_within_limits(&state, request).await;
    if let Err(error) = &result {
        // One line per refused callback; the messages carry no secrets.
        let request_id = request_id.as_ref().map(tracing::field::display);
        tracing::warn!(request_id, error = %error.message(), "callback refused");
        let (status, reason) = error.status();
        if status.is_client_error() {
            state.metrics.count_rejection(reason);
        }
    }
    result
}

async fn receive_within_limits<P: Publish>(
    state: &AppState<P>,
    request: Request,
) -> Result<Accepted, ApiError> {
    // Taken before the body is read, so that neither bodies nor records pile up
    // in memory beyond the limit.
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Err(ApiError::Overloaded {
            retry_after: state.retry_after,
        });
    };
    let body = tokio::time::timeout(state.body_read_timeout, Bytes::from_request(request, &()))
        .await
        .map_err(|_| ApiError::Body {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "request body not received within {:?}",
                state.body_read_timeout
            ),
        })?
        .map_err(|rejection| ApiError::Body {
            status: rejection.status(),
            message: rejection.body_text(),
        })?;
    let outcome = state
        .ingestor
        .ingest(&body)
        .await
        .map_err(|error| ApiError::Ingest {
            error,
            retry_after: state.retry_after,
        })?;
    match outcome {
        Outcome::Published { records } => tracing::debug!(records, "callback published"),
        Outcome::Ignored { event_type } => {
            tracing::debug!(event_type, "callback of another event type acknowledged")
        }
    }
    Ok(Accepted)
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
