//! HTTP: the router, its shared state, and the middleware that every request
//! passes (request id, tracing span, metrics). Handlers are thin: they extract
//! the request, call [`crate::ingest`], and map the result to a response through
//! [`error::ApiError`], the one place where errors become status codes.

mod callback;
pub mod error;
mod observe;
mod probes;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::health::Readiness;
use crate::ingest::Ingestor;
use crate::metrics::Metrics;

/// Path CSS posts callbacks to.
pub const CALLBACK_PATH: &str = "/css/callback";

/// State shared by every request.
pub struct AppState {
    pub ingestor: Ingestor,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// One permit per callback being processed; none left means 503 at once.
    pub in_flight: Semaphore,
    /// Sent as `Retry-After` with a 503.
    pub retry_after: Duration,
    /// Longest time a client may take to send a request body.
    pub body_read_timeout: Duration,
}

/// The bridge's HTTP API.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(CALLBACK_PATH, post(callback::receive))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use crate::css::Verifier;
    use crate::kafka::Publisher;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    /// A router whose producer points at a closed port: enough for every answer
    /// that is decided before Kafka is involved.
    fn router_without_kafka(max_body_bytes: usize) -> Router {
        router(state_without_kafka(8), max_body_bytes)
    }

    fn state_without_kafka(max_in_flight: usize) -> Arc<AppState> {
        let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
        let publisher =
            Publisher::new(&KafkaConfig::default(), "127.0.0.1:1", metrics.clone()).unwrap();
        Arc::new(AppState {
            ingestor: Ingestor::new(
                Verifier::default(),
                Arc::new(publisher),
                metrics.clone(),
                crate::avro::wire::WireFormat::Plain,
            ),
            readiness: Arc::new(Readiness::new(metrics.clone(), true)),
            metrics,
            in_flight: Semaphore::new(max_in_flight),
            retry_after: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
        })
    }

    async fn call(
        router: Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into()),
        )
    }

    #[tokio::test]
    async fn invalid_callback_gets_400_with_field_and_message() {
        let body = r#"{"event_type":321,"appid":"12x"}"#;
        let (status, json) = call(router_without_kafka(1024), "POST", CALLBACK_PATH, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["code"], 400);
        assert_eq!(json["error"], "invalid_callback");
        assert_eq!(json["field"], "appid");
        assert_eq!(
            json["message"],
            "appid: invalid value: string \"12x\", expected an integer"
        );
    }

    #[tokio::test]
    async fn oversized_body_gets_413_in_the_bridge_error_format() {
        let body = format!(r#"{{"event_type":1,"pad":"{}"}}"#, "x".repeat(2000));
        let (status, json) = call(router_without_kafka(1024), "POST", CALLBACK_PATH, &body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            (json["code"].as_u64(), json["error"].as_str()),
            (Some(413), Some("body_too_large"))
        );
    }

    #[tokio::test]
    async fn other_event_types_get_code_0() {
        let (status, json) = call(
            router_without_kafka(1024),
            "POST",
            CALLBACK_PATH,
            r#"{"event_type":1}"#,
        )
        .await;
        assert_eq!(
            (status, json),
            (StatusCode::OK, serde_json::json!({"code": 0}))
        );
    }

    #[tokio::test]
    async fn unknown_routes_get_404_in_json() {
        let (status, json) = call(router_without_kafka(1024), "GET", "/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["error"], "not_found");
    }

    #[tokio::test]
    async fn a_wrong_method_gets_405_in_json_with_allow() {
        let request = Request::get(CALLBACK_PATH).body(Body::empty()).unwrap();
        let response = router_without_kafka(1024).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "POST");
        assert_eq!(response.headers()["content-type"], "application/json");
    }

    #[tokio::test]
    async fn liveness_answers_ok() {
        let (status, _) = call(router_without_kafka(1024), "GET", "/healthz", "").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn readiness_is_503_with_its_blockers_until_kafka_is_reachable() {
        let state = state_without_kafka(8);
        let (status, json) = call(router(state.clone(), 1024), "GET", "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["blockers"][0], "Kafka topic metadata unreachable");
        state.readiness.set_kafka(true);
        let (status, json) = call(router(state.clone(), 1024), "GET", "/readyz", "").await;
        assert_eq!(
            (status, json["ready"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        state.readiness.start_draining();
        let (status, _) = call(router(state, 1024), "GET", "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn over_the_in_flight_limit_gets_503_at_once() {
        let state = state_without_kafka(1);
        let _held = state.in_flight.try_acquire().unwrap();
        let request = Request::post(CALLBACK_PATH)
            .body(Body::from(r#"{"event_type":1}"#))
            .unwrap();
        let response = router(state.clone(), 1024).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "5");
    }

    #[tokio::test]
    async fn every_response_carries_a_request_id_and_is_counted() {
        let state = state_without_kafka(8);
        let request = Request::post(CALLBACK_PATH)
            .header("x-request-id", "abc-123")
            .body(Body::from("{}"))
            .unwrap();
        let response = router(state.clone(), 1024).oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "abc-123");
        let response = router(state.clone(), 1024)
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(!response.headers()["x-request-id"].is_empty());
        let (status, text) = call(router(state, 1024), "GET", "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        let text = text.as_str().unwrap().to_owned();
        assert!(
            text.contains(
                r#"css_bridge_http_requests_total{route="/css/callback",status="400"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"css_bridge_rejected_callbacks_total{reason="invalid_callback"} 1"#),
            "{text}"
        );
    }
}
