//! Probes and metrics: `/healthz` (liveness), `/readyz` (readiness), `/metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use crate::metrics::Metrics;

/// The process serves: nothing else is checked, so a Kafka outage never gets
/// replicas restarted.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Liveness while the bridge starts: alive, and saying that it starts (for
/// whoever waits for it to serve: liveness probes read only the status).
pub async fn healthz_starting() -> &'static str {
    "starting"
}

/// Readiness while the bridge starts: not ready, reading its spool.
pub async fn readyz_starting() -> impl IntoResponse {
    let body = json!({
        "ready": false,
        "blockers": ["reading the spool"],
        "kafka": "unreachable",
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

/// 200 when this replica should get callbacks, 503 with the reasons otherwise;
/// the body also says whether Kafka answers, and what the spool holds.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let blockers = state.readiness.blockers();
    let status = if blockers.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = &state.readiness;
    let mut body = json!({
        "ready": blockers.is_empty(),
        "blockers": blockers,
        "kafka": if readiness.kafka_reachable() { "reachable" } else { "unreachable" },
    });
    if let Some(spool) = readiness.spool() {
        body["spool"] =
            json!({"records": spool.records(), "bytes": spool.bytes(), "full": spool.is_full()});
    }
    (status, Json(body))
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state
        .metrics
        .set_producer_load(state.ingestor.publisher().load());
    exposition(&state.metrics)
}

/// `metrics` in the text exposition format, as `/metrics` answers it.
pub fn exposition(metrics: &Metrics) -> impl IntoResponse + use<> {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
