//! `POST /css/callback`: the endpoint CSS calls.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::ingest::Outcome;
use crate::metrics::ReasonLabel;

/// Receives one callback and answers `200 {"code":0}` once every record is in
/// Kafka, or the error that says why not.
pub async fn receive(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let result = receive_within_limits(&state, request).await;
    if let Err(error) = &result {
        // One line per refused callback; the messages carry no secrets.
        tracing::warn!(error = %error.message(), "callback refused");
        let (status, reason) = error.status();
        if status.is_client_error() {
            state
                .metrics
                .rejected
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }
    result
}

async fn receive_within_limits(
    state: &AppState,
    request: Request,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"code": 0})))
}
