//! `POST /css/callback`: the endpoint CSS calls.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::ingest::Outcome;

/// Receives one callback and answers `200 {"code":0}` once every record is in
/// Kafka, or the error that says why not.
pub async fn receive(
    State(state): State<Arc<AppState>>,
    CallbackBody(body): CallbackBody,
) -> Result<Json<Value>, ApiError> {
    match state.ingestor.ingest(&body).await {
        Ok(outcome) => {
            match outcome {
                Outcome::Published { records } => tracing::debug!(records, "callback published"),
                Outcome::Ignored { event_type } => {
                    tracing::info!(event_type, "callback of another event type ignored")
                }
            }
            Ok(Json(json!({"code": 0})))
        }
        Err(error) => {
            // One line per refused callback; the messages carry no secrets.
            tracing::warn!(%error, "callback refused");
            Err(ApiError::Ingest {
                error,
                retry_after: state.retry_after,
            })
        }
    }
}

/// The raw request body, read within the configured size limit, with failures
/// answered in the bridge's JSON error format rather than axum's plain text.
pub struct CallbackBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for CallbackBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(CallbackBody)
            .map_err(|rejection| {
                tracing::warn!(error = %rejection.body_text(), "callback body unreadable");
                ApiError::Body {
                    status: rejection.status(),
                    message: rejection.body_text(),
                }
            })
    }
}
