//! The operator commands: `check`, `tail` and `schema`, run as the binary,
//! and the flags each command offers.

use crate::common;

use std::process::Command;

use common::{Broker, TestApp, fixture, repo_path};
use serde_json::Value;

/// The binary, with its default logging whatever the environment's.
fn bridge() -> Command {
    let mut bridge = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"));
    bridge
        .env_remove("RUST_LOG")
        .env_remove("BRIDGE_LOG_FORMAT");
    bridge
}

fn without_received_at(mut record: Value) -> Value {
    record.as_object_mut().unwrap().remove("received_at");
    record
}

fn expected_seed_records() -> Vec<Value> {
    serde_json::from_slice(&fixture("seed-sample.records.json")).unwrap()
}

#[test]
fn check_prints_the_records_a_callback_would_produce() {
    let output = bridge()
        .arg("check")
        .arg(repo_path("tests/fixtures/seed-sample.json"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let records: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| without_received_at(serde_json::from_str(line).unwrap()))
        .collect();
    assert_eq!(records, expected_seed_records());
}

/// CSS sends other event types to the same address: the service answers
/// them 200, and `check` agrees.
#[test]
fn check_of_another_event_type_says_it_is_acknowledged_and_publishes_nothing() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"event_type":1,"appid":1}"#).unwrap();
    let output = bridge().arg("check").arg(file.path()).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(stderr.contains("publishes nothing"), "{stderr}");
    assert!(stderr.contains("records=0"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes in a pipe: {stderr}"
    );
}

/// A command that fails says why in its last log line: with JSON logs, one
/// JSON object like the others (a collector takes raw lines for entries of
/// their own), its causes in it.
#[test]
fn a_command_s_error_is_one_json_log_line_with_its_causes() {
    let output = bridge()
        .args(["--log-format", "json", "check", "/no/such/callback.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let line: Value = serde_json::from_str(stderr.trim()).expect("one JSON line");
    assert_eq!(line["level"], "ERROR", "{stderr}");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("cannot read /no/such/callback.json") && error.contains("No such file"),
        "{error}"
    );
}

/// Where `RUST_LOG` turns the bridge's ERROR lines off, the error is still
/// said, raw.
#[test]
fn a_command_s_error_is_said_whatever_rust_log_says() {
    let output = bridge()
        .env("RUST_LOG", "rdkafka=debug")
        .args(["check", "/no/such/callback.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("Error: cannot read /no/such/callback.json"),
        "{stderr}"
    );
}

/// `check` holds a callback to the limits the service would: its body's
/// size (413) and its records' (400), from the same flags and variables.
#[test]
fn check_holds_a_callback_to_the_service_s_limits() {
    let seed = repo_path("tests/fixtures/seed-sample.json");
    let answer = |flag: &str, limit: &str| {
        let output = bridge()
            .arg("check")
            .arg(&seed)
            .args([flag, limit])
            .output();
        let output = output.unwrap();
        assert_eq!(output.status.code(), Some(1), "{flag} {limit}");
        assert!(output.stdout.is_empty(), "no records: {flag} {limit}");
        String::from_utf8(output.stderr).unwrap()
    };
    let stderr = answer("--max-body-bytes", "100");
    assert!(stderr.contains("the service answers 413"), "{stderr}");
    let stderr = answer("--kafka-max-in-flight-bytes", "100");
    assert!(stderr.contains("the service answers 400"), "{stderr}");
}

/// A callback of more tiny details than the producer's queue takes from one
/// callback (half of it: 50,000 records by default) fits in the body limit,
/// and the service refuses it before sending any; with the service's larger
/// queue (its Kafka properties, read as `serve` reads them) it is taken.
#[test]
fn check_holds_a_callback_to_the_records_the_producer_s_queue_takes() {
    let group = serde_json::json!({
        "type": 1,
        "count": 1001,
        "detail": vec![serde_json::json!({"occur_time": 1}); 1001],
    });
    let mut body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/seed-sample.json")).unwrap(),
    )
    .unwrap();
    body["abnormal_event"] = vec![group; 50].into(); // 50,050 records
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body.to_string()).unwrap();
    let output = bridge()
        .arg("check")
        .arg(file.path())
        .args(["--kafka-max-in-flight-records", "100"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("the service answers 400: its 50050 records are more than the producer's queue takes from one callback, 50000"),
        "{stderr}"
    );

    let output = bridge()
        .arg("check")
        .arg(file.path())
        .env(
            "BRIDGE_KAFKA_PROPERTIES",
            "queue.buffering.max.messages=200000",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        output.stdout.iter().filter(|&&b| b == b'\n').count(),
        50_050
    );

    // A properties file that cannot be read where `check` runs (its Secret
    // not mounted) is warned of and left out.
    let output = bridge()
        .arg("check")
        .arg(file.path())
        .env(
            "BRIDGE_KAFKA_PROPERTIES_FILE",
            "/nonexistent/kafka.properties",
        )
        .args(["--kafka-property", "queue.buffering.max.messages=200000"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("the file is left out"), "{stderr}");

    // A queue the service would refuse to start with is refused here too.
    let output = bridge()
        .arg("check")
        .arg(file.path())
        .args(["--kafka-property", "queue.buffering.max.messages=10"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(
            "`queue.buffering.max.messages` (10 records) is below --kafka-max-in-flight-records"
        ),
        "{stderr}"
    );
}

#[test]
fn check_explains_what_is_wrong_with_a_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"event_type":321,"appid":1}"#).unwrap();
    let output = bridge().arg("check").arg(file.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("stream_id: missing required field"),
        "{stderr}"
    );
}

/// Each command offers the flags it uses and no other: the service's
/// callback deadline and dead-letter topic mean nothing to `tail` or `spool
/// drain`, and the in-flight bounds only to what produces (they size the
/// producer's queue, which must hold the largest callback spooled) and to
/// `check` (they bound one callback's records, with the queue's size from
/// the Kafka properties).
#[test]
fn each_command_offers_only_the_kafka_flags_it_uses() {
    let flags = |command: &[&str]| {
        let output = bridge().args(command).arg("--help").output().unwrap();
        assert!(output.status.success(), "{command:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        [
            "--kafka-brokers",
            "--kafka-property",
            "--kafka-ack-timeout-ms",
            "--kafka-max-in-flight-records",
            "--kafka-max-in-flight-bytes",
            "--dead-letter-topic",
        ]
        .into_iter()
        .filter(|flag| help.contains(&format!("{flag} ")))
        .collect::<Vec<_>>()
    };
    let connection = ["--kafka-brokers", "--kafka-property"];
    let in_flight = [
        "--kafka-max-in-flight-records",
        "--kafka-max-in-flight-bytes",
    ];
    assert_eq!(flags(&["tail"]), connection);
    assert_eq!(
        flags(&["check"]),
        [&["--kafka-property"], &in_flight[..]].concat(),
        "the service's limits"
    );
    assert_eq!(
        flags(&["spool", "drain"]),
        [&connection[..], &in_flight[..]].concat()
    );
    assert_eq!(
        flags(&["serve"]),
        [
            &connection[..],
            &["--kafka-ack-timeout-ms"],
            &in_flight[..],
            &["--dead-letter-topic"]
        ]
        .concat()
    );
}

#[test]
fn schema_prints_the_embedded_avro_schema() {
    let output = bridge().arg("schema").output().unwrap();
    assert!(output.status.success());
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let file: Value = serde_json::from_slice(
        &std::fs::read(repo_path("schemas/push_error_record.avsc")).unwrap(),
    )
    .unwrap();
    assert_eq!(printed, file);
}

#[tokio::test]
async fn tail_prints_the_published_records_as_json_lines() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let app = TestApp::spawn(&broker.bootstrap(), &topic, &[]).await;
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );
    let output = bridge()
        .args([
            "tail",
            "--kafka-brokers",
            &broker.bootstrap(),
            "--kafka-topic",
            &topic,
        ])
        .args([
            "--from-beginning",
            "--max-records",
            "4",
            "--idle-timeout-secs",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| without_received_at(serde_json::from_str(line).unwrap()))
        .collect();
    assert_eq!(records, expected_seed_records());
}

/// An empty topic is not a failure, even after consumer errors: here the
/// topic is created once `tail` has reported it missing. `tail` ends at its
/// idle timeout, exit code 0.
#[tokio::test]
async fn tail_of_a_topic_created_after_it_started_ends_empty_at_its_idle_timeout() {
    use std::io::BufRead;

    let broker = Broker::shared();
    let topic = format!("css.push-errors.test-late-{}", common::unique_suffix());
    let mut child = bridge()
        .args(["tail", "--kafka-brokers", &broker.bootstrap()])
        .args(["--kafka-topic", &topic, "--from-beginning"])
        .args(["--idle-timeout-secs", "8"])
        .args(["--kafka-property", "topic.metadata.refresh.interval.ms=500"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its log lines as they come: the topic is created only after the
    // consumer said it was missing, however long its start takes.
    let (lines, logged) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut log = Vec::new();
    let waited = tokio::task::spawn_blocking(move || {
        while let Ok(line) = logged.recv_timeout(std::time::Duration::from_secs(30)) {
            let missing = line.contains("consumer error");
            log.push(line);
            if missing {
                break;
            }
        }
        (logged, log)
    });
    let (logged, mut log) = waited.await.unwrap();
    assert!(
        log.iter().any(|line| line.contains("consumer error")),
        "the consumer reported the missing topic: {log:?}"
    );
    broker.create_named_topic(&topic, 1).await;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    reader.join().unwrap();
    log.extend(logged.try_iter());
    assert!(output.status.success(), "{log:?}");
    assert!(output.stdout.is_empty(), "no record");
}

/// `tail … | head`: once its reader has gone, `tail` ends at its next record,
/// exit code 0, as a reader that had what it wanted expects.
#[tokio::test]
async fn tail_ends_quietly_when_its_reader_goes() {
    use std::io::BufRead;

    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let app = TestApp::spawn(&broker.bootstrap(), &topic, &[]).await;
    let mut child = bridge()
        .args(["tail", "--kafka-brokers", &broker.bootstrap()])
        .args(["--kafka-topic", &topic, "--from-beginning"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seed = fixture("seed-sample.json");
    assert_eq!(app.post_callback(seed.clone()).await.status, 200);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"event_id\""), "{first}");
    drop(stdout);
    // Records after the reader went: writing the first of them fails.
    assert_eq!(app.post_callback(seed).await.status, 200);
    let Some(status) = common::exit_within(&mut child, std::time::Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("tail kept running with no one reading it");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
}

/// `tail` waiting for records ends at SIGTERM, exit code 0: as the first
/// process of a container (compose's `tail` service) it would otherwise
/// ignore the signal until killed.
#[tokio::test]
async fn tail_ends_at_sigterm() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let mut child = bridge()
        .args(["tail", "--kafka-brokers", &broker.bootstrap()])
        .args(["--kafka-topic", &topic])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let status = common::terminate(&mut child, std::time::Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

/// A broker that accepts connections and closes them at once, retried every
/// 100 ms: the consumer reports errors faster than the idle timeout, which must
/// not keep `tail` alive; and a `tail` that never read the topic fails, so
/// that a script can tell it from an empty topic.
#[test]
fn tail_fails_at_its_idle_timeout_while_the_consumer_only_gets_errors() {
    let proxy = common::TcpProxy::start();
    proxy.cut();
    let mut child = bridge()
        .args([
            "tail",
            "--kafka-brokers",
            &format!("127.0.0.1:{}", proxy.port),
        ])
        .args(["--idle-timeout-secs", "3"])
        .args(["--kafka-property", "reconnect.backoff.ms=100"])
        .args(["--kafka-property", "reconnect.backoff.max.ms=100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = common::exit_within(&mut child, std::time::Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("tail did not end within 30 s of a 3 s idle timeout");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("the topic cannot be read"),
        "it says why: {stderr}"
    );
    assert!(
        stderr.contains("consumer error"),
        "it did get errors: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .filter(|l| l.contains("consumer error"))
            .count()
            <= 3,
        "a repeated error is written once: {stderr}"
    );
}

/// A message another version wrote (another schema's fingerprint in its
/// header) is named as such, not counted as a record.
#[tokio::test]
async fn tail_names_a_message_written_with_another_schema() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "avro.schema.fingerprint",
        value: Some("sha256:0123"),
    });
    let record = BaseRecord::to(&topic)
        .key("s")
        .payload(&b"@a record of a later schema"[..])
        .headers(headers);
    producer.send(record).map_err(|(error, _)| error).unwrap();
    producer.flush(std::time::Duration::from_secs(10)).unwrap();
    let output = bridge()
        .args(["tail", "--kafka-brokers", &broker.bootstrap()])
        .args(["--kafka-topic", &topic, "--from-beginning"])
        .args(["--max-records", "1", "--idle-timeout-secs", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "not counted as a record");
    assert!(
        stderr.contains("written with another schema") && stderr.contains("sha256:0123"),
        "{stderr}"
    );
}
