//! The "parse ceiling": everything the bridge does for a callback except
//! publishing to Kafka.
//!
//! `POST /css/callback` reads the body (same 1 MiB limit as the bridge's
//! default), runs `css::inspect` (decode, authentication with the key in
//! `CEILING_CALLBACK_KEY` when set, as the bridge checks its callback keys,
//! validate) and
//! `ingest::encode_callback` (flatten and Avro-encode every record), drops the
//! batch and answers `200 {"code":0}`, or `400` when the body is refused. Same
//! axum and tokio (multi-threaded runtime) as the bridge. `bench/run` compares the
//! bridge's throughput against this server's: the gap is what publishing and
//! awaiting Kafka's acknowledgement cost.
//!
//! ```sh
//! CEILING_CALLBACK_KEY=secret cargo run --release --example parse_ceiling -- 127.0.0.1:8090
//! LISTEN=127.0.0.1:8090 cargo run --release --example parse_ceiling
//! ```

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use css_kafka_bridge::config::DEFAULT_MAX_IN_FLIGHT_BYTES;
use css_kafka_bridge::css::{self, CallbackKey, Inbound, Verifier};
use css_kafka_bridge::ingest;
use serde_json::json;

/// Signatures are checked with `CEILING_CALLBACK_KEY`, or not at all without it.
static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let keys = std::env::var("CEILING_CALLBACK_KEY").into_iter();
    let keys = keys.map(|key| CallbackKey::parse(&key).expect("a non-blank CEILING_CALLBACK_KEY"));
    // The bridge's defaults: `--max-clock-skew-secs` and the horizon it implies.
    Verifier::new(keys.collect(), 300, Verifier::default_horizon_secs(300))
});

/// The bridge's default `--max-body-bytes`.
const MAX_BODY_BYTES: usize = 1024 * 1024;

async fn receive(body: Bytes) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let callback = match css::inspect(&body, &VERIFIER, now.as_secs() as i64) {
        Ok(Inbound::PushError(callback)) => callback,
        Ok(Inbound::Ignored { .. }) => return Json(json!({"code": 0})).into_response(),
        Err(error) => return refused(error.to_string()),
    };
    let batch = match ingest::encode_callback(
        &callback,
        now.as_millis() as i64,
        None,
        DEFAULT_MAX_IN_FLIGHT_BYTES as usize,
    ) {
        Ok(batch) => batch,
        Err(error) => return refused(error.to_string()),
    };
    // What the bridge would hand to the producer; dropped here.
    std::hint::black_box(batch);
    // The bridge's answer is a constant too.
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"code":0}"#,
    )
        .into_response()
}

fn refused(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"code": 400, "error": "invalid_callback", "message": message})),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let router = Router::new()
        .route("/css/callback", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("parse ceiling listening on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
