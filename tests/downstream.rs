//! Downstream consumers of the topic: the generated Flink tables in
//! `examples/` stay what `css-kafka-bridge schema` prints, and a stock Confluent
//! Python consumer decodes registry-framed records through the Schema Registry
//! stand-in.
//!
//! `BLESS=1 cargo test --test downstream` rewrites the generated blocks of the
//! examples after a schema change.

mod common;

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use common::registry::TestRegistry;
use common::{Broker, fixture, now_ms, repo_path};
use css_kafka_bridge::avro::{self, SCHEMA_JSON};
use css_kafka_bridge::css::{decode, validate::validate};
use css_kafka_bridge::downstream::{SchemaArgs, render};
use css_kafka_bridge::record::flatten;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const FLINK_EXAMPLE: &str = "examples/flink/push_errors.sql";
const BEGIN: &str = "-- >>> generated: ";
const END: &str = "-- <<< generated";

#[derive(Parser)]
#[command(name = "css-kafka-bridge schema")]
struct SchemaCommand {
    #[command(flatten)]
    args: SchemaArgs,
}

/// `text` with every generated block replaced by what its marker's command
/// prints now.
fn regenerate(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive('\n');
    let mut blocks = 0;
    while let Some(line) = lines.next() {
        out.push_str(line);
        let Some(command) = line.trim_end().strip_prefix(BEGIN) else {
            continue;
        };
        let args = command
            .strip_prefix("css-kafka-bridge schema")
            .unwrap_or_else(|| panic!("not a schema command: {command}"));
        let args =
            SchemaCommand::try_parse_from(std::iter::once("schema").chain(args.split_whitespace()))
                .unwrap_or_else(|e| panic!("{command}: {e}"))
                .args;
        out.push_str(&render(args.format, &args.flink).unwrap());
        for skipped in lines.by_ref() {
            if skipped.trim_end() == END {
                out.push_str(skipped);
                break;
            }
        }
        assert!(
            out.ends_with(&format!("{END}\n")),
            "unterminated block: {command}"
        );
        blocks += 1;
    }
    assert!(blocks > 0, "no generated block");
    out
}

#[test]
fn flink_example_tables_are_generated_from_the_schema() {
    let path = repo_path(FLINK_EXAMPLE);
    let text = std::fs::read_to_string(&path).unwrap();
    let fresh = regenerate(&text);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    assert!(
        text == fresh,
        "{FLINK_EXAMPLE} is out of date with the schema: run `BLESS=1 cargo test --test downstream`"
    );
    assert!(text.contains("'value.format' = 'avro-confluent'"));
    assert!(text.contains("'value.format' = 'avro'"));
}

#[test]
fn spark_example_reads_the_schema_file_itself() {
    let script =
        std::fs::read_to_string(repo_path("examples/spark/push_errors_stream.py")).unwrap();
    assert!(script.contains("schemas/push_error_record.avsc"));
    assert!(script.contains("substring(value, 6, length(value) - 5)"));
}

/// The interpreter `scripts/test` prepares (`.venv`), or `BRIDGE_TEST_PYTHON`.
fn python() -> String {
    std::env::var("BRIDGE_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = repo_path(".venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".to_owned()
        }
    })
}

/// Frames an Avro payload as Confluent's serializers do: magic byte 0, the
/// schema id as 4 big-endian bytes, the Avro binary.
fn confluent_frame(schema_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + payload.len());
    framed.push(0);
    framed.extend_from_slice(&schema_id.to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

#[tokio::test]
async fn confluent_python_consumer_decodes_registry_framed_records() {
    let broker = Broker::start();
    let topic = broker.create_topic(1).await;
    let registry = TestRegistry::start().await;
    let subject = format!("{topic}-value");
    let id = registry.register(&subject, SCHEMA_JSON);
    registry.require_basic_auth("reader", "secret");

    let seed = fixture("seed-sample.json");
    let callback = validate(decode(&seed).unwrap()).unwrap();
    let records = flatten(&callback, now_ms());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("producer");
    let mut expected = Vec::new();
    for record in &records {
        let payload = avro::encode(record).unwrap();
        expected.push(avro::decode_to_json(&payload).unwrap());
        let framed = confluent_frame(id, &payload);
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(record.stream_id)
                    .payload(&framed),
                Duration::from_secs(10),
            )
            .await
            .expect("record delivered");
    }

    let python = python();
    let output = Command::new(&python)
        .arg(repo_path("tests/python/confluent_consume.py"))
        .args(["--bootstrap", &broker.bootstrap(), "--topic", &topic])
        .args(["--registry", &registry.url()])
        .args(["--registry-auth", "reader:secret"])
        .args(["--count", &records.len().to_string(), "--timeout", "60"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        output.status.success(),
        "confluent_consume.py failed (its packages come from tests/python/requirements.txt, \
         which scripts/test installs into .venv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoded: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(decoded, expected);
    // The writer schema came from the registry, by the id in the frame.
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.starts_with(&format!("GET /schemas/ids/{id}"))),
        "{:?}",
        registry.requests()
    );
}
