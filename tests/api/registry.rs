//! Schema Registry: the bridge registers its schema under the configured subject,
//! frames every record in the Confluent wire format, and stays not-ready (with
//! the reason logged) while the registry refuses or cannot be reached. The
//! registry is a stand-in that follows the published REST API
//! (`common/registry.rs`).

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::registry::TestRegistry;
use common::{Broker, TestApp, fixture, repo_path};
use css_kafka_bridge::avro::SCHEMA_JSON;
use serde_json::Value;

const READ_TIMEOUT: Duration = Duration::from_secs(20);

async fn bridge(broker: &Broker, registry: &TestRegistry, extra: &[&str]) -> TestApp {
    let topic = broker.create_topic(1).await;
    let url = registry.url();
    let mut flags = vec!["--schema-registry-url", url.as_str()];
    flags.extend_from_slice(extra);
    TestApp::spawn(&broker.bootstrap(), &topic, &flags).await
}

#[tokio::test]
async fn registers_under_topic_value_and_frames_records_with_the_schema_id() {
    let broker = Broker::shared();
    let registry = TestRegistry::start().await;
    let app = bridge(&broker, &registry, &[]).await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    let ids = registry.versions(&format!("{}-value", app.topic));
    assert_eq!(ids.len(), 1, "registered under <topic>-value");
    assert_eq!(
        registry
            .schema(ids[0])
            .map(|s| serde_json::from_str::<Value>(&s).unwrap()),
        Some(serde_json::from_str::<Value>(SCHEMA_JSON).unwrap())
    );

    let before = registry.request_count();
    for _ in 0..5 {
        assert_eq!(
            app.post_callback(fixture("seed-sample.json")).await.status,
            200
        );
    }
    assert_eq!(
        registry.request_count(),
        before,
        "the registry is not on the request path"
    );

    let messages = app.consume(20, READ_TIMEOUT);
    assert_eq!(messages.len(), 20);
    for message in &messages {
        assert_eq!(message.payload[0], 0, "magic byte");
        assert_eq!(
            u32::from_be_bytes(message.payload[1..5].try_into().unwrap()),
            ids[0]
        );
        assert_eq!(message.record()["stream_id"], "xxxxxx");
    }
}

#[tokio::test]
async fn a_stock_confluent_consumer_decodes_the_records_through_the_registry() {
    let broker = Broker::shared();
    let registry = TestRegistry::start().await;
    registry.require_basic_auth("bridge", "s3cret");
    let app = bridge(
        &broker,
        &registry,
        &[
            "--schema-registry-username",
            "bridge",
            "--schema-registry-password",
            "s3cret",
        ],
    )
    .await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );
    let ours: Vec<Value> = app
        .consume(4, READ_TIMEOUT)
        .iter()
        .map(|m| m.record())
        .collect();

    let python = common::python();
    let output = Command::new(&python)
        .arg(repo_path("tests/python/confluent_consume.py"))
        .args([
            "--bootstrap",
            &app.brokers,
            "--topic",
            &app.topic,
            "--registry",
            &registry.url(),
        ])
        .args([
            "--registry-auth",
            "bridge:s3cret",
            "--count",
            "4",
            "--timeout",
            "60",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        output.status.success(),
        "confluent_consume.py failed (scripts/test installs its packages into .venv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(theirs, ours);
}

#[tokio::test]
async fn subject_strategies_name_the_subject_like_confluent_serializers() {
    let broker = Broker::shared();
    let registry = TestRegistry::start().await;
    let record = bridge(
        &broker,
        &registry,
        &["--schema-registry-subject-strategy", "record"],
    )
    .await;
    record
        .wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    assert_eq!(registry.versions("css.push_error.PushErrorRecord").len(), 1);

    let topic_record = bridge(
        &broker,
        &registry,
        &["--schema-registry-subject-strategy", "topic-record"],
    )
    .await;
    topic_record
        .wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    let subject = format!("{}-css.push_error.PushErrorRecord", topic_record.topic);
    assert_eq!(registry.versions(&subject).len(), 1);
}

#[tokio::test]
async fn without_auto_registration_an_existing_schema_is_looked_up() {
    let broker = Broker::shared();
    let registry = TestRegistry::start().await;
    let topic = broker.create_topic(1).await;
    let id = registry.register(&format!("{topic}-value"), SCHEMA_JSON);
    let url = registry.url();
    let flags = [
        "--schema-registry-url",
        url.as_str(),
        "--schema-registry-auto-register",
        "false",
    ];
    let app = TestApp::spawn(&broker.bootstrap(), &topic, &flags).await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r == &format!("POST /subjects/{topic}-value"))
    );
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );
    let message = &app.consume(1, READ_TIMEOUT)[0];
    assert_eq!(message.payload[1..5], id.to_be_bytes());
}

mod not_ready {
    use super::*;

    /// The bridge stays not-ready, says why, and answers callbacks 503 (CSS
    /// retries) rather than publishing unframed records.
    async fn assert_not_ready(app: &TestApp) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let reply = app.get("/readyz").await;
        assert_eq!(reply.status, 503);
        assert!(
            reply.body["blockers"]
                .as_array()
                .unwrap()
                .contains(&"schema not registered".into()),
            "{:?}",
            reply.body
        );
        let reply = app.post_callback(fixture("seed-sample.json")).await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (503, Some("schema_unavailable"))
        );
    }

    #[tokio::test]
    async fn when_the_registry_rejects_the_schema_as_incompatible() {
        let broker = Broker::shared();
        let registry = TestRegistry::start().await;
        registry.set_incompatible("css.push_error.PushErrorRecord");
        let app = bridge(
            &broker,
            &registry,
            &["--schema-registry-subject-strategy", "record"],
        )
        .await;
        assert_not_ready(&app).await;
    }

    #[tokio::test]
    async fn when_the_credentials_are_wrong() {
        let broker = Broker::shared();
        let registry = TestRegistry::start().await;
        registry.require_basic_auth("bridge", "right");
        let flags = [
            "--schema-registry-username",
            "bridge",
            "--schema-registry-password",
            "wrong",
        ];
        let app = bridge(&broker, &registry, &flags).await;
        assert_not_ready(&app).await;
    }

    #[tokio::test]
    async fn when_lookup_finds_no_schema() {
        let broker = Broker::shared();
        let registry = TestRegistry::start().await;
        let app = bridge(
            &broker,
            &registry,
            &["--schema-registry-auto-register", "false"],
        )
        .await;
        assert_not_ready(&app).await;
    }

    #[tokio::test]
    async fn when_the_registry_is_unreachable() {
        let broker = Broker::shared();
        let topic = broker.create_topic(1).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let app = TestApp::spawn(
            &broker.bootstrap(),
            &topic,
            &["--schema-registry-url", &url],
        )
        .await;
        assert_not_ready(&app).await;
    }
}

#[tokio::test]
async fn transient_registry_errors_are_retried_until_it_answers() {
    let broker = Broker::shared();
    let registry = TestRegistry::start().await;
    registry.fail_next(3, 500);
    let app = bridge(&broker, &registry, &[]).await;
    app.wait_until_readiness_is(200, Duration::from_secs(15))
        .await;
    let attempts = registry
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /subjects/"))
        .count();
    assert_eq!(
        attempts,
        5,
        "three failed lookups, then a lookup that finds no schema and the registration: {:?}",
        registry.requests()
    );
}
