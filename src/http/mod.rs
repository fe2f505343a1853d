//! HTTP: the router, its shared state, and the middleware that every request
//! passes (request id, tracing span, metrics). Handlers are thin: they extract
//! the request, call [`crate::ingest`], and map the result to a response through
//! [`error::ApiError`], the one place where errors become status codes.

pub mod admission;
mod callback;
pub mod error;
mod observe;
mod probes;
pub mod server;
pub mod throttle;

pub use observe::Observed;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use self::admission::Admission;
use self::throttle::LineThrottle;
use crate::health::Readiness;
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::outage::OutageLog;

/// Path CSS posts callbacks to.
pub const CALLBACK_PATH: &str = "/css/callback";

/// State shared by every request.
pub struct AppState {
    pub ingestor: Ingestor,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Where refusals for the bridge's own state are summarised.
    pub outage: Arc<OutageLog>,
    /// How many lines refusals the sender must fix may write.
    pub refusal_lines: LineThrottle,
    /// What the callbacks being processed may hold: callbacks, body bytes and
    /// record bytes.
    pub admission: Admission,
    /// Sent as `Retry-After` with a 503.
    pub retry_after: Duration,
    /// Longest time a client may take to send a request body.
    pub body_read_timeout: Duration,
    /// Largest accepted request body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
}

/// The bridge's HTTP API: the routes, with the middleware around them.
pub fn router(state: Arc<AppState>) -> Observed {
    let routes = Router::new()
        .route(CALLBACK_PATH, post(callback::receive))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state.clone());
    Observed::new(routes, state)
}

/// What serves the port while the bridge starts (see `app::while_starting`):
/// liveness answers, readiness says what it waits for, `metrics` are exposed
/// (`css_bridge_ready` 0, so that the readiness alerts see a replica that
/// takes long), and every other request gets 503 with `Retry-After`. Requests
/// are counted as the bridge's are, and callbacks refused as `starting` in
/// `outage`, whose first summary accounts for them.
pub fn starting_router(
    retry_after: Duration,
    metrics: Arc<Metrics>,
    outage: Arc<OutageLog>,
) -> Router {
    let starting = move || async move { error::ApiError::Starting { retry_after } };
    let scraped = metrics.clone();
    Router::new()
        .route("/healthz", get(probes::healthz_starting))
        .route("/readyz", get(probes::readyz_starting))
        .route(
            "/metrics",
            get(move || std::future::ready(probes::exposition(&scraped))),
        )
        .route(
            CALLBACK_PATH,
            post(move || {
                outage.refused("starting");
                starting()
            }),
        )
        .fallback(starting)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::while_starting,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::wire::{SchemaId, WireFormat};
    use crate::config::{DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_MAX_IN_FLIGHT_RECORDS};
    use crate::css::Verifier;
    use crate::http::admission::Limits;
    use crate::kafka::SendError;
    use crate::publish::{Batch, DeadLetter, Delivery, Load, Publish, PublishError};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use futures::future::BoxFuture;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use std::sync::Mutex;
    use tokio::time::Instant;
    use tower::ServiceExt;

    const SEED: &str = include_str!("../../tests/fixtures/seed-sample.json");

    /// Where the router tests' records go, instead of Kafka: every publication
    /// gets `answer`, and what was handed over is kept for the test to read.
    struct StandIn {
        answer: fn() -> Result<(), PublishError>,
        keeps_dead_letters: bool,
        /// (key, records) of each published batch.
        published: Mutex<Vec<(String, usize)>>,
        /// The time each publication was given, from its deadline.
        given: Mutex<Vec<Duration>>,
        /// (redacted body, reason) of each dead letter written.
        dead_letters: Mutex<Vec<(Vec<u8>, String)>>,
    }

    impl StandIn {
        fn answering(answer: fn() -> Result<(), PublishError>) -> Self {
            Self {
                answer,
                keeps_dead_letters: false,
                published: Mutex::default(),
                given: Mutex::default(),
                dead_letters: Mutex::default(),
            }
        }
    }

    impl StandIn {
        /// Answers as told, keeping what it took.
        fn take(&self, batch: &Batch) -> Result<(), PublishError> {
            let result = (self.answer)();
            if result.is_ok() {
                let published = (batch.key.clone(), batch.len());
                self.published.lock().unwrap().push(published);
            }
            result
        }
    }

    impl Publish for StandIn {
        fn publish<'a>(
            &'a self,
            batch: &'a Batch,
            deadline: Instant,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            let given = deadline.saturating_duration_since(Instant::now());
            self.given.lock().unwrap().push(given);
            Box::pin(std::future::ready(self.take(batch)))
        }

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            let delivery: Delivery<'a> = Box::pin(std::future::ready(self.take(batch)));
            Box::pin(std::future::ready(Ok(delivery)))
        }

        fn keeps_dead_letters(&self) -> bool {
            self.keeps_dead_letters
        }

        fn publish_dead_letter<'a>(
            &'a self,
            letter: DeadLetter<'a>,
            _: Instant,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            let result = (self.answer)();
            if result.is_ok() {
                let kept = (letter.body.to_vec(), letter.reason.to_owned());
                self.dead_letters.lock().unwrap().push(kept);
            }
            Box::pin(std::future::ready(result))
        }

        fn load(&self) -> Load {
            Load::default()
        }
    }

    /// The service's state over a stand-in, and the stand-in, to read what
    /// was handed over. Dereferences to the state (and is not `Clone`, so that
    /// `.clone()` gives the state).
    struct Harness {
        state: Arc<AppState>,
        stand_in: Arc<StandIn>,
    }

    impl std::ops::Deref for Harness {
        type Target = Arc<AppState>;

        fn deref(&self) -> &Arc<AppState> {
            &self.state
        }
    }

    fn nothing_published(harness: &Harness) -> bool {
        harness.stand_in.published.lock().unwrap().is_empty()
    }

    fn delivered() -> Result<(), PublishError> {
        Ok(())
    }

    /// A router whose records are all acknowledged: enough for every answer
    /// that is decided before Kafka is involved.
    fn router_without_kafka(max_body_bytes: usize) -> Observed {
        let mut harness = state_without_kafka(8);
        Arc::get_mut(&mut harness.state).unwrap().max_body_bytes = max_body_bytes;
        router(harness.state)
    }

    fn state_without_kafka(max_in_flight: usize) -> Harness {
        state_with(
            StandIn::answering(delivered),
            WireFormat::Plain,
            max_in_flight,
        )
    }

    fn state_with(publisher: StandIn, wire_format: WireFormat, max_in_flight: usize) -> Harness {
        state_verified_by(Verifier::default(), publisher, wire_format, max_in_flight)
    }

    fn state_verified_by(
        verifier: Verifier,
        publisher: StandIn,
        wire_format: WireFormat,
        max_in_flight: usize,
    ) -> Harness {
        let metrics = Arc::new(Metrics::new(CALLBACK_PATH));
        let stand_in = Arc::new(publisher);
        let state = Arc::new(AppState {
            ingestor: Ingestor::new(
                verifier,
                stand_in.clone(),
                metrics.clone(),
                wire_format,
                DEFAULT_MAX_IN_FLIGHT_RECORDS as usize,
                DEFAULT_MAX_IN_FLIGHT_BYTES as usize,
            ),
            readiness: Arc::new(Readiness::new(metrics.clone(), true)),
            outage: Arc::new(OutageLog::new(
                "test",
                Duration::from_secs(3600),
                metrics.clone(),
            )),
            refusal_lines: LineThrottle::default(),
            metrics,
            admission: Admission::new(Limits {
                callbacks: max_in_flight,
                body_bytes: 8 << 20,
                record_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
                max_body_bytes: 1 << 20,
                deadline: Duration::from_secs(5),
            }),
            retry_after: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
        });
        Harness { state, stand_in }
    }

    /// Posts the seed callback to a router publishing through `publisher`;
    /// returns the status, the `error` kind and the `Retry-After` header.
    async fn post_seed(state: Arc<AppState>) -> (StatusCode, Option<String>, Option<String>) {
        let request = Request::post(CALLBACK_PATH).body(Body::from(SEED)).unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let error = json["error"].as_str().map(str::to_owned);
        (status, error, retry_after)
    }

    mod publishing {
        use super::*;

        fn refused(code: RDKafkaErrorCode) -> PublishError {
            SendError::Retriable(KafkaError::MessageProduction(code)).into()
        }

        #[tokio::test]
        async fn an_acknowledged_callback_gets_200_code_0_with_its_records_keyed_by_stream() {
            let state = state_without_kafka(8);
            let (status, error, _) = post_seed(state.clone()).await;
            assert_eq!((status, error), (StatusCode::OK, None));
            let published = state.stand_in.published.lock().unwrap().clone();
            assert_eq!(published, [("xxxxxx".to_owned(), 4)]);
        }

        #[tokio::test]
        async fn kafka_that_cannot_take_the_records_for_now_gets_503_with_retry_after() {
            let transient: [fn() -> Result<(), PublishError>; 4] = [
                || Err(SendError::Timeout(Duration::from_secs(2)).into()),
                || Err(SendError::QueueFull.into()),
                || Err(refused(RDKafkaErrorCode::NotEnoughReplicas)),
                || {
                    Err(SendError::ProducerFailed(KafkaError::MessageProduction(
                        RDKafkaErrorCode::Fatal,
                    ))
                    .into())
                },
            ];
            for answer in transient {
                let state = state_with(StandIn::answering(answer), WireFormat::Plain, 8);
                let reply = post_seed(state.clone()).await;
                assert_eq!(
                    reply,
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some("kafka_unavailable".into()),
                        Some("5".into())
                    ),
                    "{:?}",
                    answer()
                );
                // The publish wait is observed whatever its answer.
                let text = state.metrics.encode();
                assert!(
                    text.contains("css_bridge_publish_duration_seconds_count 1"),
                    "{text}"
                );
            }
        }

        #[tokio::test]
        async fn kafka_away_and_the_spool_full_or_failing_gets_503_spool_unavailable() {
            let answer = || {
                Err(PublishError::SpoolUnavailable(
                    "the spool is full (1024 bytes)".into(),
                ))
            };
            let state = state_with(StandIn::answering(answer), WireFormat::Plain, 8);
            assert_eq!(
                post_seed(state.clone()).await,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("spool_unavailable".into()),
                    Some("5".into())
                )
            );
        }

        #[tokio::test]
        async fn kafka_that_refuses_the_records_for_good_gets_500() {
            let answer = || {
                Err(SendError::Permanent(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge,
                ))
                .into())
            };
            let state = state_with(StandIn::answering(answer), WireFormat::Plain, 8);
            let (status, error, _) = post_seed(state.clone()).await;
            assert_eq!(
                (status, error.as_deref()),
                (StatusCode::INTERNAL_SERVER_ERROR, Some("kafka_refused"))
            );
        }

        /// A missing ACL or a rejected password is fixed by an operator while
        /// CSS retries: 503, counted apart so that an alert names it.
        #[tokio::test]
        async fn kafka_that_refuses_the_bridge_s_principal_gets_503_counted_as_not_authorized() {
            let answer = || {
                Err(SendError::NotAuthorized(KafkaError::MessageProduction(
                    RDKafkaErrorCode::TopicAuthorizationFailed,
                ))
                .into())
            };
            let state = state_with(StandIn::answering(answer), WireFormat::Plain, 8);
            assert_eq!(
                post_seed(state.clone()).await,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("kafka_not_authorized".into()),
                    Some("5".into())
                )
            );
            assert!(
                state.metrics.encode().contains(
                    r#"css_bridge_failed_callbacks_total{reason="kafka_not_authorized"} 1"#
                )
            );
        }

        #[tokio::test]
        async fn before_the_registry_gives_an_id_callbacks_get_503_and_nothing_is_published() {
            let id = Arc::new(SchemaId::default());
            let state = state_with(
                StandIn::answering(delivered),
                WireFormat::Confluent(id.clone()),
                8,
            );
            let reply = post_seed(state.clone()).await;
            assert_eq!(
                reply,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("schema_unavailable".into()),
                    Some("5".into())
                )
            );
            assert!(nothing_published(&state));
            id.set(7);
            assert_eq!(post_seed(state.clone()).await.0, StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn an_unsigned_callback_gets_401_when_keys_are_configured() {
        let key = crate::css::CallbackKey::parse("a-callback-key-of-some-length").unwrap();
        let verifier = Verifier::new(vec![key], 300, 900);
        let state = state_verified_by(
            verifier,
            StandIn::answering(delivered),
            WireFormat::Plain,
            8,
        );
        let (status, error, _) = post_seed(state.clone()).await;
        assert_eq!(
            (status, error.as_deref()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        assert!(nothing_published(&state));
    }

    mod dead_letters {
        use super::*;

        fn keeping(answer: fn() -> Result<(), PublishError>) -> Harness {
            let publisher = StandIn {
                keeps_dead_letters: true,
                ..StandIn::answering(answer)
            };
            state_with(publisher, WireFormat::Plain, 8)
        }

        const INVALID: &str = r#"{"event_type":321,"appid":"12x","sign":"abc","t":1}"#;

        #[tokio::test]
        async fn an_invalid_callback_is_kept_redacted_and_still_gets_400() {
            let state = keeping(delivered);
            let (status, _) = call(router(state.clone()), "POST", CALLBACK_PATH, INVALID).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let kept = state.stand_in.dead_letters.lock().unwrap().clone();
            assert_eq!(kept.len(), 1);
            let (letter, reason) = &kept[0];
            assert!(reason.starts_with("appid:"), "{reason}");
            let body = String::from_utf8(letter.clone()).unwrap();
            assert!(body.contains(r#""sign":"redacted""#), "{body}");
        }

        #[tokio::test]
        async fn a_callback_the_validation_refuses_is_kept_too() {
            let state = keeping(delivered);
            let body = r#"{"event_type":321,"appid":12,"sign":"abc","t":1}"#;
            let (status, _) = call(router(state.clone()), "POST", CALLBACK_PATH, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let kept = state.stand_in.dead_letters.lock().unwrap().clone();
            let [(letter, _)] = &kept[..] else {
                panic!("{kept:?}")
            };
            let letter = String::from_utf8(letter.clone()).unwrap();
            assert_eq!(
                letter,
                r#"{"event_type":321,"appid":12,"sign":"redacted","t":1}"#
            );
        }

        /// Every record repeats its callback's texts: 600 tiny details under
        /// 4 KiB texts are a body of 30 KB and records of 14 MB, beyond the
        /// default in-flight budget of 8 MiB.
        #[tokio::test]
        async fn a_callback_whose_records_outgrow_the_in_flight_budget_gets_400_and_is_kept() {
            let mut body: serde_json::Value = serde_json::from_str(SEED).unwrap();
            let long = "x".repeat(4000);
            for field in ["domain", "path", "sequence", "user_ip"] {
                body[field] = long.clone().into();
            }
            body["abnormal_event"][0]["detail"] =
                vec![serde_json::json!({"occur_time": 1_670_588_070_569_i64}); 600].into();
            let body = body.to_string();
            assert!(body.len() < 40_000, "{}", body.len());

            let state = keeping(delivered);
            let (status, json) = call(router(state.clone()), "POST", CALLBACK_PATH, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(json["error"], "invalid_callback");
            assert_eq!(json["field"], "abnormal_event");
            let message = json["message"].as_str().unwrap();
            assert!(
                message.contains("602 records") && message.contains("--kafka-max-in-flight-bytes"),
                "{message}"
            );
            assert!(state.stand_in.published.lock().unwrap().is_empty());
            assert_eq!(state.stand_in.dead_letters.lock().unwrap().len(), 1);
        }

        #[tokio::test]
        async fn a_failing_dead_letter_write_is_counted_and_the_answer_stays_400() {
            let state = keeping(|| Err(SendError::QueueFull.into()));
            let (status, _) = call(router(state.clone()), "POST", CALLBACK_PATH, INVALID).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let text = state.metrics.encode();
            assert!(
                text.contains(r#"css_bridge_dead_letters_total{outcome="failed"} 1"#),
                "{text}"
            );
        }
    }

    async fn call(
        router: Observed,
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

    /// It would otherwise wait for the whole body budget, hold it while its
    /// sender takes its time, and be refused anyway.
    #[tokio::test]
    async fn a_body_declaring_more_than_the_limit_gets_413_without_waiting_for_room() {
        let harness = state_without_kafka(16);
        let held: Vec<_> =
            futures::future::join_all((0..8).map(|_| harness.state.admission.enter(Some(1 << 20))))
                .await;
        assert!(held.iter().all(Result::is_ok), "the whole budget held");
        let body = "x".repeat((1 << 20) + 1);
        let (status, json) =
            call(router(harness.state.clone()), "POST", CALLBACK_PATH, &body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["error"], "body_too_large");
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
        let (status, json) = call(router(state.clone()), "GET", "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["blockers"][0], "Kafka topic metadata unreachable");
        state.readiness.set_kafka(true);
        let (status, json) = call(router(state.clone()), "GET", "/readyz", "").await;
        assert_eq!(
            (status, json["ready"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        state.readiness.start_draining();
        let (status, _) = call(router(state.clone()), "GET", "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn over_the_in_flight_limit_gets_503_at_once() {
        let state = state_without_kafka(1);
        let _held = state.admission.enter(Some(0)).await.unwrap();
        let request = Request::post(CALLBACK_PATH)
            .body(Body::from(r#"{"event_type":1}"#))
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "5");
    }

    /// A harness whose callbacks may hold `body_bytes` body bytes in all, with
    /// an acknowledgement deadline of `deadline`.
    fn state_with_body_bytes(body_bytes: u32, deadline: Duration) -> Harness {
        state_with_bytes(body_bytes, DEFAULT_MAX_IN_FLIGHT_BYTES, deadline)
    }

    /// A harness whose callbacks may hold `body_bytes` body bytes and
    /// `record_bytes` encoded record bytes in all, with an acknowledgement
    /// deadline of `deadline`.
    fn state_with_bytes(body_bytes: u32, record_bytes: u32, deadline: Duration) -> Harness {
        let mut harness = state_without_kafka(8);
        Arc::get_mut(&mut harness.state).unwrap().admission = Admission::new(Limits {
            callbacks: 8,
            body_bytes,
            record_bytes,
            max_body_bytes: 1 << 20,
            deadline,
        });
        harness
    }

    /// The room the seed's records take in admission.
    fn seed_record_bytes(state: &AppState) -> u32 {
        let inspected = state.ingestor.inspect(SEED.as_bytes()).unwrap();
        inspected.max_encoded_len() as u32
    }

    #[tokio::test]
    async fn a_callback_without_room_for_its_records_waits_for_it_before_publishing() {
        let record_bytes = seed_record_bytes(&state_without_kafka(8));
        let state = state_with_bytes(1 << 20, record_bytes, Duration::from_secs(5));
        let mut held = state.admission.enter(Some(1)).await.unwrap();
        held.hold_records(1, Instant::now()).await.unwrap();
        let release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(nothing_published(&state), "waits while the room is held");
            drop(held);
        };
        let ((status, error, _), ()) = tokio::join!(post_seed(state.clone()), release);
        assert_eq!((status, error), (StatusCode::OK, None));
        let published = state.stand_in.published.lock().unwrap().clone();
        assert_eq!(published, [("xxxxxx".to_owned(), 4)]);
    }

    #[tokio::test]
    async fn a_callback_that_finds_no_room_for_its_records_by_its_deadline_gets_503() {
        let state = state_with_bytes(1 << 20, 1 << 20, Duration::from_millis(50));
        let mut held = state.admission.enter(Some(1)).await.unwrap();
        held.hold_records(1 << 20, Instant::now()).await.unwrap();
        let (status, error, retry_after) = post_seed(state.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.as_deref(), Some("overloaded"));
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert!(nothing_published(&state));
    }

    /// Holds the callbacks `harness` takes to at most `records` records of
    /// `bytes` encoded.
    fn limit_callback_records(harness: &mut Harness, records: u32, bytes: u32) {
        let stand_in = harness.stand_in.clone();
        let state = Arc::get_mut(&mut harness.state).unwrap();
        state.ingestor = Ingestor::new(
            Verifier::default(),
            stand_in,
            state.metrics.clone(),
            WireFormat::Plain,
            records as usize,
            bytes as usize,
        );
    }

    /// A callback whose texts alone, which each of its records repeats, take
    /// more than the producer may hold gets 400 at once: were it first to
    /// wait for all the room for records, every callback behind it would wait
    /// too.
    #[tokio::test]
    async fn a_callback_whose_records_surely_outgrow_the_limit_gets_400_without_waiting() {
        const LIMIT: u32 = 8_000;
        let mut harness = state_with_bytes(1 << 20, LIMIT, Duration::from_millis(200));
        limit_callback_records(&mut harness, DEFAULT_MAX_IN_FLIGHT_RECORDS, LIMIT);
        let mut held = harness.admission.enter(Some(1)).await.unwrap();
        held.hold_records(1, Instant::now()).await.unwrap();
        let mut body: serde_json::Value = serde_json::from_str(SEED).unwrap();
        body["domain"] = "x".repeat(4000).into(); // in each of its 4 records
        let body = body.to_string();
        let (status, json) =
            call(router(harness.state.clone()), "POST", CALLBACK_PATH, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert_eq!(json["field"], "abnormal_event", "{json}");
        assert!(nothing_published(&harness));
    }

    /// A callback with more records than the producer may hold at once
    /// would never fit in its queue: 400 before anything is sent, where it
    /// would otherwise take the whole budget and be cut off part-way.
    #[tokio::test]
    async fn a_callback_with_more_records_than_the_producer_holds_gets_400_before_anything_is_sent()
    {
        let mut harness = state_without_kafka(8);
        limit_callback_records(&mut harness, 3, DEFAULT_MAX_IN_FLIGHT_BYTES); // the seed has 4
        let (status, json) = call(router(harness.state.clone()), "POST", CALLBACK_PATH, SEED).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert_eq!(json["field"], "abnormal_event", "{json}");
        let message = json["message"].as_str().unwrap();
        assert!(message.contains("its 4 records"), "{message}");
        assert!(nothing_published(&harness));
    }

    #[tokio::test]
    async fn a_callback_beyond_the_body_bytes_in_flight_waits_for_room_instead_of_503() {
        let state = state_with_body_bytes(SEED.len() as u32, Duration::from_secs(5));
        let held = state
            .admission
            .enter(Some(SEED.len() as u64))
            .await
            .unwrap();
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        };
        let ((status, error, _), ()) = tokio::join!(post_seed(state.clone()), release);
        assert_eq!((status, error), (StatusCode::OK, None));
    }

    /// A harness whose body bytes hold two bodies' first room, with a
    /// body-read timeout of 100 ms.
    fn state_with_room_for_two_first_bodies() -> Harness {
        use crate::http::admission::FIRST_BODY_BYTES;
        let mut harness =
            state_with_body_bytes(2 * FIRST_BODY_BYTES as u32, Duration::from_secs(5));
        Arc::get_mut(&mut harness.state).unwrap().body_read_timeout = Duration::from_millis(100);
        harness
    }

    /// Takes one body's first room in `state` at once, and gives it back
    /// `after` that when the returned future is awaited.
    async fn one_first_room_held_for(
        state: &AppState,
        after: Duration,
    ) -> impl Future<Output = ()> + '_ {
        use crate::http::admission::FIRST_BODY_BYTES;
        let held = state.admission.enter(Some(FIRST_BODY_BYTES as u64)).await;
        let held = held.unwrap();
        async move {
            tokio::time::sleep(after).await;
            drop(held);
        }
    }

    #[tokio::test]
    async fn a_body_waiting_for_room_to_grow_is_not_timed_out_as_a_slow_sender() {
        use crate::http::admission::FIRST_BODY_BYTES;
        // The seed padded past its first room: it must grow once read.
        let body = format!("{SEED}{}", " ".repeat(FIRST_BODY_BYTES));
        let state = state_with_room_for_two_first_bodies();
        let release = one_first_room_held_for(&state, Duration::from_millis(300)).await;
        let ((status, json), ()) = tokio::join!(
            call(router(state.clone()), "POST", CALLBACK_PATH, &body),
            release
        );
        assert_eq!(status, StatusCode::OK, "{json}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_that_stops_after_a_wait_for_room_gets_408_naming_both() {
        use crate::http::admission::FIRST_BODY_BYTES;
        use futures::StreamExt;
        let state = state_with_room_for_two_first_bodies();
        let release = one_first_room_held_for(&state, Duration::from_millis(300)).await;
        // More than its first room, then nothing more.
        let first = axum::body::Bytes::from(vec![b' '; FIRST_BODY_BYTES + 1]);
        let stalls = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
            .chain(futures::stream::pending());
        let request = Request::post(CALLBACK_PATH)
            .body(Body::from_stream(stalls))
            .unwrap();
        let (response, ()) = tokio::join!(router(state.clone()).oneshot(request), release);
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let message = json["message"].as_str().unwrap();
        assert_eq!(
            message,
            "request body not received within 100ms \
             (besides 300.0ms the bridge took to make room for it)"
        );
    }

    #[tokio::test]
    async fn the_wait_for_room_counts_against_the_acknowledgement_deadline() {
        let deadline = Duration::from_secs(5);
        let state = state_with_body_bytes(SEED.len() as u32, deadline);
        let held = state
            .admission
            .enter(Some(SEED.len() as u64))
            .await
            .unwrap();
        let waited = Duration::from_millis(300);
        let release = async {
            tokio::time::sleep(waited).await;
            drop(held);
        };
        let ((status, _, _), ()) = tokio::join!(post_seed(state.clone()), release);
        assert_eq!(status, StatusCode::OK);
        let given = state.stand_in.given.lock().unwrap()[0];
        assert!(
            given <= deadline - waited,
            "Kafka gets what the wait left of the deadline, not all of it: {given:?}"
        );
    }

    #[tokio::test]
    async fn a_callback_whose_client_goes_away_before_its_answer_is_counted_as_499() {
        let state = state_with_body_bytes(SEED.len() as u32, Duration::from_secs(5));
        let _held = state.admission.enter(Some(1)).await.unwrap();
        let request = Request::post(CALLBACK_PATH).body(Body::from(SEED)).unwrap();
        let unanswered = router(state.clone()).oneshot(request);
        let gone = tokio::time::timeout(Duration::from_millis(50), unanswered).await;
        assert!(gone.is_err(), "still waiting for room when dropped");
        let text = state.metrics.encode();
        assert!(
            text.contains(
                r#"css_bridge_http_requests_total{route="/css/callback",status="499"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("css_bridge_in_flight_requests 0"), "{text}");
    }

    #[tokio::test]
    async fn a_callback_that_finds_no_room_within_the_wait_gets_503() {
        let state = state_with_body_bytes(SEED.len() as u32, Duration::from_millis(20));
        let _held = state.admission.enter(Some(1)).await.unwrap();
        let (status, error, retry_after) = post_seed(state.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.as_deref(), Some("overloaded"));
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert!(state.stand_in.published.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn refusals_are_counted_by_who_must_act_sender_or_bridge() {
        let state = state_with(
            StandIn::answering(|| Err(SendError::QueueFull.into())),
            WireFormat::Plain,
            1,
        );
        post_seed(state.clone()).await;
        call(
            router(state.clone()),
            "POST",
            CALLBACK_PATH,
            r#"{"event_type":321}"#,
        )
        .await;
        let held = state.admission.enter(Some(0)).await.unwrap();
        post_seed(state.clone()).await;
        drop(held);
        let text = state.metrics.encode();
        for line in [
            r#"css_bridge_failed_callbacks_total{reason="kafka_unavailable"} 1"#,
            r#"css_bridge_failed_callbacks_total{reason="overloaded"} 1"#,
            r#"css_bridge_rejected_callbacks_total{reason="invalid_callback"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"css_bridge_rejected_callbacks_total{reason="kafka_unavailable"}"#)
                && !text
                    .contains(r#"css_bridge_failed_callbacks_total{reason="invalid_callback"}"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn every_response_carries_a_request_id_and_is_counted() {
        let state = state_without_kafka(8);
        let request = Request::post(CALLBACK_PATH)
            .header("x-request-id", "abc-123")
            .body(Body::from("{}"))
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-request-id"], "abc-123");
        let response = router(state.clone())
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let generated = response.headers()["x-request-id"].to_str().unwrap();
        let (prefix, sequence) = generated.split_once('-').expect("prefix-sequence");
        assert_eq!(prefix.len(), 8, "{generated}");
        assert!(u64::from_str_radix(sequence, 16).is_ok(), "{generated}");
        let insane = Request::get("/healthz")
            .header("x-request-id", "has spaces")
            .body(Body::empty())
            .unwrap();
        let response = router(state.clone()).oneshot(insane).await.unwrap();
        let replaced = response.headers()["x-request-id"].to_str().unwrap();
        assert!(
            !replaced.contains(' ') && replaced != generated,
            "{replaced}"
        );
        let (status, text) = call(router(state.clone()), "GET", "/metrics", "").await;
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
        assert!(
            text.contains("css_bridge_in_flight_requests 0"),
            "the scrape does not count itself: {text}"
        );
    }
}
