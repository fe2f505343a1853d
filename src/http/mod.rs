//! HTTP: the router and its shared state. Handlers are thin: they extract the
//! request, call [`crate::ingest`], and map the result to a response through
//! [`error::ApiError`], the one place where errors become status codes.

mod callback;
pub mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::ingest::Ingestor;

/// Path CSS posts callbacks to.
pub const CALLBACK_PATH: &str = "/css/callback";

/// State shared by every request.
pub struct AppState {
    pub ingestor: Ingestor,
    /// Sent as `Retry-After` with a 503.
    pub retry_after: Duration,
}

/// The bridge's HTTP API.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(CALLBACK_PATH, post(callback::receive))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
