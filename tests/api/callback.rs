//! `POST /css/callback` end to end: the bridge in this process, a real broker
//! process, and an independent consumer reading back what was published.

use crate::common;

use std::time::{Duration, Instant};

use common::{Broker, TestApp, fixture, now_ms, repo_path};
use css_kafka_bridge::css::signature::expected_sign;
use serde_json::{Value, json};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn seed() -> Value {
    serde_json::from_slice(&fixture("seed-sample.json")).unwrap()
}

fn expected_seed_records() -> Vec<Value> {
    serde_json::from_slice(&fixture("seed-sample.records.json")).unwrap()
}

/// The seed sample with `stream_id` replaced, to tell callbacks apart in a topic.
fn seed_for_stream(stream_id: &str) -> Value {
    let mut body = seed();
    body["stream_id"] = json!(stream_id);
    body
}

fn signed(mut body: Value, key: &str, t: i64) -> Value {
    body["t"] = json!(t);
    body["sign"] = json!(expected_sign(key, t));
    body
}

async fn broker_and_app(flags: &[&str]) -> (Broker, TestApp) {
    let broker = Broker::shared();
    let topic = broker.create_topic(3).await;
    let app = TestApp::spawn(&broker.bootstrap(), &topic, flags).await;
    (broker, app)
}

/// Posts a valid callback for stream `sentinel`, then reads the whole topic: if
/// only the sentinel's records are there, nothing before it was published.
async fn assert_topic_holds_only_sentinel(app: &TestApp) {
    let reply = app
        .post_callback(seed_for_stream("sentinel").to_string())
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let messages = app.consume_all(READ_TIMEOUT);
    let keys: Vec<_> = messages
        .iter()
        .map(|m| m.key.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        keys, ["sentinel"; 4],
        "only the sentinel's four records may be in the topic"
    );
}

#[tokio::test]
async fn publishes_one_record_per_detail_with_every_field_key_and_headers() {
    let (_broker, app) = broker_and_app(&[]).await;
    let before = now_ms();
    let reply = app.post_callback(fixture("seed-sample.json")).await;
    let after = now_ms();
    assert_eq!(
        (reply.status, reply.body.clone()),
        (200, json!({"code": 0}))
    );

    let messages = app.consume(4, READ_TIMEOUT);
    assert_eq!(messages.len(), 4);
    // One stream, one partition: the records keep their document order.
    assert!(
        messages
            .iter()
            .all(|m| m.partition == messages[0].partition)
    );
    let mut records = Vec::new();
    for message in &messages {
        assert_eq!(message.key.as_deref(), Some("xxxxxx"));
        assert_eq!(
            message.header("avro.schema.name"),
            Some("css.push_error.PushErrorRecord")
        );
        let fingerprint = message.header("avro.schema.fingerprint").unwrap();
        assert_eq!(
            fingerprint,
            css_kafka_bridge::avro::RecordSchema::get().fingerprint()
        );
        let mut record = message.record();
        let received_at = record["received_at"].as_i64().unwrap();
        assert!(
            (before..=after).contains(&received_at),
            "received_at {received_at} not in [{before}, {after}]"
        );
        record.as_object_mut().unwrap().remove("received_at");
        records.push(record);
    }
    assert_eq!(records, expected_seed_records());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn published_bytes_are_standard_avro_read_by_fastavro() {
    let (_broker, app) = broker_and_app(&[]).await;
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );
    let messages = app.consume(4, READ_TIMEOUT);
    assert_eq!(messages.len(), 4);

    let payloads: Vec<String> = messages.iter().map(|m| hex::encode(&m.payload)).collect();
    let decoded = run_fastavro(&payloads);
    let ours: Vec<Value> = messages.iter().map(|m| m.record()).collect();
    assert_eq!(decoded, ours);
    assert_eq!(decoded[0]["interval_ms"], json!(3046));

    // The schema fingerprint header is the one fastavro computes for the .avsc.
    let fingerprint = std::process::Command::new(common::python())
        .args(["-c", FASTAVRO_FINGERPRINT])
        .arg(repo_path("schemas/push_error_record.avsc"))
        .output()
        .unwrap();
    assert!(
        fingerprint.status.success(),
        "{}",
        String::from_utf8_lossy(&fingerprint.stderr)
    );
    let fastavro = format!(
        "sha256:{}",
        String::from_utf8(fingerprint.stdout).unwrap().trim()
    );
    assert_eq!(
        messages[0].header("avro.schema.fingerprint"),
        Some(fastavro.as_str())
    );
}

const FASTAVRO_FINGERPRINT: &str = "import json, sys, fastavro.schema as s
print(s.fingerprint(s.to_parsing_canonical_form(s.parse_schema(json.load(open(sys.argv[1])))), 'SHA-256'))";

/// Runs `tests/python/decode_avro.py` with the Python that `scripts/test` prepares.
fn run_fastavro(payloads: &[String]) -> Vec<Value> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let python = common::python();
    let mut child = Command::new(&python)
        .arg(repo_path("tests/python/decode_avro.py"))
        .arg(repo_path("schemas/push_error_record.avsc"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(payloads).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "fastavro decoding failed (run scripts/test to set up .venv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn malformed_json_gets_400_and_nothing_is_published() {
    let (_broker, app) = broker_and_app(&[]).await;
    let reply = app
        .post_callback("{\"event_type\": 321, \"abnormal_event\": [")
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["code"], 400);
    assert_eq!(reply.body["error"], "invalid_callback");
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .starts_with("body is truncated"),
        "{:?}",
        reply.body
    );
    assert_topic_holds_only_sentinel(&app).await;
}

#[tokio::test]
async fn missing_required_field_gets_400_naming_it() {
    let (_broker, app) = broker_and_app(&[]).await;
    let mut body = seed();
    body["abnormal_event"][1]["detail"][0]
        .as_object_mut()
        .unwrap()
        .remove("occur_time");
    let reply = app.post_callback(body.to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.body["field"],
        "abnormal_event[1].detail[0].occur_time"
    );
    assert_eq!(
        reply.body["message"],
        "abnormal_event[1].detail[0].occur_time: missing required field"
    );
    assert_topic_holds_only_sentinel(&app).await;
}

#[tokio::test]
async fn wrong_type_gets_400_naming_the_field_and_the_expected_type() {
    let (_broker, app) = broker_and_app(&[]).await;
    let mut body = seed();
    body["abnormal_event"][1]["detail"][0]["occur_time"] = json!("yesterday");
    let reply = app.post_callback(body.to_string()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.body["field"],
        "abnormal_event[1].detail[0].occur_time"
    );
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .ends_with("expected an integer"),
        "{:?}",
        reply.body
    );
    assert_topic_holds_only_sentinel(&app).await;
}

#[tokio::test]
async fn other_event_types_get_200_and_are_not_published() {
    let (_broker, app) = broker_and_app(&[]).await;
    for event_type in [0, 1, 100, 200, 317] {
        let body = json!({"event_type": event_type, "appid": 1, "stream_id": "other", "app": "x"});
        let reply = app.post_callback(body.to_string()).await;
        assert_eq!(
            (reply.status, reply.body),
            (200, json!({"code": 0})),
            "event_type {event_type}"
        );
    }
    // A field of an unexpected type in an ignored event kind must not make CSS retry.
    let body = json!({"event_type": 100, "appid": "not a number", "abnormal_event": "n/a"});
    assert_eq!(app.post_callback(body.to_string()).await.status, 200);
    assert_topic_holds_only_sentinel(&app).await;
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let (_broker, app) = broker_and_app(&["--max-body-bytes", "1024"]).await;
    let mut body = seed();
    body["padding"] = json!("x".repeat(2048));
    let reply = app.post_callback(body.to_string()).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.body["error"], "body_too_large");
    assert_topic_holds_only_sentinel(&app).await;
}

mod signatures {
    use super::*;

    const KEYS: [&str; 2] = ["--callback-keys", "old-key,new-key"];

    fn in_ten_minutes() -> i64 {
        now_ms() / 1000 + 600
    }

    #[tokio::test]
    async fn a_valid_signature_with_any_configured_key_is_accepted() {
        let (_broker, app) = broker_and_app(&KEYS).await;
        for key in ["old-key", "new-key"] {
            let reply = app
                .post_callback(signed(seed(), key, in_ten_minutes()).to_string())
                .await;
            assert_eq!(reply.status, 200, "{key}: {:?}", reply.body);
        }
        assert_eq!(app.consume(8, READ_TIMEOUT).len(), 8);
    }

    #[tokio::test]
    async fn missing_wrong_expired_or_far_future_signatures_get_401_and_nothing_is_published() {
        let (_broker, app) =
            broker_and_app(&[KEYS[0], KEYS[1], "--max-clock-skew-secs", "30"]).await;
        let expired = now_ms() / 1000 - 31;
        // CSS sets t ten minutes ahead; with 30 s of skew, 630 s is the horizon.
        let beyond_the_horizon = now_ms() / 1000 + 3600;
        let mut wrong_t = signed(seed(), "new-key", in_ten_minutes());
        wrong_t["t"] = json!(in_ten_minutes() + 1);
        for (case, body) in [
            ("unsigned", seed()),
            ("unknown key", signed(seed(), "other-key", in_ten_minutes())),
            ("sign for another t", wrong_t),
            ("expired", signed(seed(), "new-key", expired)),
            (
                "t beyond the horizon",
                signed(seed(), "new-key", beyond_the_horizon),
            ),
        ] {
            let reply = app.post_callback(body.to_string()).await;
            assert_eq!(reply.status, 401, "{case}: {:?}", reply.body);
            assert_eq!(reply.body["error"], "unauthorized", "{case}");
        }
        let reply = app
            .post_callback(
                signed(seed_for_stream("sentinel"), "new-key", in_ten_minutes()).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200);
        let keys: Vec<_> = app
            .consume_all(READ_TIMEOUT)
            .into_iter()
            .map(|m| m.key.unwrap())
            .collect();
        assert_eq!(keys, ["sentinel"; 4]);
        let metrics = app.get("/metrics").await;
        let metrics = metrics.body.as_str().unwrap();
        for reason in ["missing", "mismatch", "expired", "future"] {
            let line = format!("css_bridge_signature_failures_total{{reason=\"{reason}\"}}");
            assert!(metrics.contains(&line), "{line} in:\n{metrics}");
        }
    }

    #[tokio::test]
    async fn an_invalid_body_with_a_wrong_signature_gets_401_not_400() {
        let (_broker, app) = broker_and_app(&KEYS).await;
        let mut body = signed(seed(), "other-key", in_ten_minutes());
        body["data_time"] = json!("not a time");
        assert_eq!(app.post_callback(body.to_string()).await.status, 401);
        // A stream_id named twice: JSON that serde_json's map cannot hold,
        // so the body is written by hand.
        let text = body.to_string();
        let twice = text.replacen('{', r#"{"stream_id":"again","#, 1);
        assert_eq!(app.post_callback(twice).await.status, 401);
    }
}

mod kafka_unavailable {
    use super::*;

    #[tokio::test]
    async fn broker_stopped_gets_503_with_retry_after_within_the_deadline() {
        let broker = Broker::dedicated();
        let topic = broker.create_topic(3).await;
        let flags = ["--kafka-ack-timeout-ms", "1500", "--retry-after-secs", "9"];
        let app = TestApp::spawn(&broker.bootstrap(), &topic, &flags).await;
        assert_eq!(
            app.post_callback(fixture("seed-sample.json")).await.status,
            200
        );
        broker.stop();

        let started = Instant::now();
        let reply = app.post_callback(fixture("seed-sample.json")).await;
        let took = started.elapsed();
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.body["error"], "kafka_unavailable");
        assert_eq!(reply.headers.get("retry-after").unwrap(), "9");
        // Not a timing benchmark: only that the answer comes at the deadline,
        // far inside CSS's 20 s, rather than never.
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
    }

    #[tokio::test]
    async fn unreachable_kafka_gets_503() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let brokers = format!("127.0.0.1:{port}"); // nothing listens there
        let app = TestApp::spawn(
            &brokers,
            "css.push-errors",
            &["--kafka-ack-timeout-ms", "1000"],
        )
        .await;
        let reply = app.post_callback(fixture("seed-sample.json")).await;
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert!(reply.headers.contains_key("retry-after"));
    }
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_flushes() {
    let (_broker, app) = broker_and_app(&[]).await;
    let http = app.http.clone();
    let url = app.url("/css/callback");
    let in_flight: Vec<_> = (0..8)
        .map(|i| {
            let request = http
                .post(&url)
                .body(seed_for_stream(&format!("s{i}")).to_string())
                .send();
            tokio::spawn(request)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let brokers = app.brokers.clone();
    let topic = app.topic.clone();
    app.stop().await.unwrap();
    let mut accepted = 0;
    for request in in_flight {
        match request.await.unwrap() {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                accepted += 1;
            }
            // A request that had not reached the server before it stopped accepting.
            Err(error) => assert!(error.is_connect() || error.is_request(), "{error}"),
        }
    }
    let messages = common::consume(&brokers, &topic, accepted * 4, READ_TIMEOUT);
    assert_eq!(
        messages.len(),
        accepted * 4,
        "every accepted callback's records are in the topic"
    );
}
