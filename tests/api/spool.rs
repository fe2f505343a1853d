//! The durable spool against a real broker: callbacks answered 200 while Kafka
//! is away reach it afterwards, in order, and `spool drain` empties a spool
//! left behind, framing its records with the registry's schema id of now.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::registry::TestRegistry;
use common::{Broker, TestApp, fixture};
use css_kafka_bridge::avro::SCHEMA_JSON;
use css_kafka_bridge::avro::wire::confluent_header;
use css_kafka_bridge::metrics::Metrics;
use css_kafka_bridge::publish::Batch;
use css_kafka_bridge::spool::Spool;
use serde_json::{Value, json};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The seed callback for `stream`, number `i` of it.
fn callback(stream: &str, i: usize) -> String {
    let mut body: Value = serde_json::from_slice(&fixture("seed-sample.json")).unwrap();
    body["stream_id"] = json!(stream);
    body["sequence"] = json!(format!("{i:018}"));
    body.to_string()
}

/// `/readyz`'s body.
async fn readiness(app: &TestApp) -> (u16, Value) {
    let reply = app.get("/readyz").await;
    (reply.status, reply.body.clone())
}

#[tokio::test]
async fn callbacks_taken_while_kafka_is_away_reach_it_afterwards_in_order() {
    let broker = Broker::start_partitionable();
    let topic = broker.create_topic(3).await;
    let spool = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        &broker.bootstrap(),
        &topic,
        &[
            "--kafka-ack-timeout-ms",
            "1500",
            "--spool-dir",
            spool.path().to_str().unwrap(),
        ],
    )
    .await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    assert_eq!(app.post_callback(callback("before", 0)).await.status, 200);

    broker.partition();
    for i in 0..5 {
        let reply = app.post_callback(callback("during", i)).await;
        assert_eq!(reply.status, 200, "taken by the spool: {:?}", reply.body);
    }
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "ready while the spool has room: {body}");
    assert_eq!(body["spool"]["records"], 20, "{body}");

    broker.heal();
    let start = Instant::now();
    loop {
        let (_, body) = readiness(&app).await;
        if body["spool"]["records"] == 0 && body["kafka"] == "reachable" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the spool is not drained: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.post_callback(callback("after", 0)).await.status, 200);

    let messages = app.consume(28, READ_TIMEOUT);
    let during: Vec<String> = messages
        .iter()
        .filter(|m| m.key.as_deref() == Some("during"))
        .map(|m| m.record()["sequence"].as_str().unwrap().to_owned())
        .collect();
    // One stream, one partition: its records in the order they came.
    let expected: Vec<String> = (0..5)
        .flat_map(|i| std::iter::repeat_n(format!("{i:018}"), 4))
        .collect();
    assert_eq!(during, expected);
    for key in ["before", "after"] {
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.key.as_deref() == Some(key))
                .count(),
            4,
            "{key}"
        );
    }
    let metrics = app.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("css_bridge_spool_appends_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("css_bridge_spool_drained_records_total 20"),
        "{metrics}"
    );
}

/// `count` batches of one record each, keyed `left-0`, `left-1`, ...
fn left_behind(count: usize) -> Vec<Batch> {
    (0..count)
        .map(|i| Batch {
            key: format!("left-{i}"),
            payloads: b"not avro, but bytes".to_vec(),
            ends: vec![19],
        })
        .collect()
}

/// The keys of the first `count` records in `topic`.
fn keys_in(broker: &Broker, topic: &str, count: usize) -> Vec<String> {
    common::consume(&broker.bootstrap(), topic, count, READ_TIMEOUT)
        .into_iter()
        .filter_map(|m| m.key)
        .collect()
}

/// A spool in `dir` left behind with `batches`, as a replica scaled away
/// leaves it.
async fn leave_spool(dir: &std::path::Path, batches: &[Batch]) {
    let spool = Spool::open(dir, 1 << 30, Arc::new(Metrics::new("/css/callback"))).unwrap();
    for batch in batches {
        spool.append(batch).await.unwrap();
    }
}

/// Flips one byte of the record in frame `n` (from 0) of the spool in `dir`,
/// whose frames are `left_behind`'s, but for the last.
fn damage_frame(dir: &std::path::Path, n: usize) {
    let segment = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "spool"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let record = b"not avro, but bytes";
    let at = (bytes.windows(record.len()).enumerate())
        .filter(|(_, window)| *window == record)
        .nth(n)
        .map(|(at, _)| at)
        .expect("the frame's record");
    bytes[at + 3] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
}

/// Runs `css-kafka-bridge spool drain` on `dir` with `extra` flags, expects
/// it to succeed, and returns what it printed.
fn spool_drain(broker: &Broker, topic: &str, dir: &std::path::Path, extra: &[&str]) -> String {
    let (code, printed, stderr) = spool_drain_ending(broker, topic, dir, extra);
    assert_eq!(code, Some(0), "{stderr}");
    printed
}

/// Runs `css-kafka-bridge spool drain` on `dir` with `extra` flags and
/// returns its exit code, what it printed and its log.
fn spool_drain_ending(
    broker: &Broker,
    topic: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args(["spool", "drain", "--spool-dir", dir.to_str().unwrap()])
        .args([
            "--kafka-brokers",
            &broker.bootstrap(),
            "--kafka-topic",
            topic,
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap().trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A mistyped `--spool-dir`, or the wrong volume mounted there, is refused:
/// drained as it is, it would be reported empty, and the volume that holds
/// the records deleted on the strength of it. Nothing is created there.
#[test]
fn spool_drain_refuses_a_directory_that_holds_no_spool() {
    let parent = tempfile::tempdir().unwrap();
    let mistyped = parent.path().join("spool-typo");
    let empty_volume = tempfile::tempdir().unwrap();
    for dir in [mistyped.as_path(), empty_volume.path()] {
        let output = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
            .args(["spool", "drain", "--spool-dir", dir.to_str().unwrap()])
            .args(["--kafka-brokers", "127.0.0.1:9"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}: {stderr}", dir.display());
        assert!(stderr.contains("holds no spool"), "{stderr}");
        assert!(output.stdout.is_empty(), "no summary");
    }
    assert!(!mistyped.exists(), "not created");
    assert_eq!(std::fs::read_dir(empty_volume.path()).unwrap().count(), 0);
}

/// A Job's log is all an operator has: `spool drain` against a Kafka it
/// cannot reach says so, with the reason, as the service does, instead of
/// waiting without a word.
#[tokio::test]
async fn spool_drain_says_when_kafka_is_unreachable() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    leave_spool(dir.path(), &left_behind(1)).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args([
            "spool",
            "drain",
            "--spool-dir",
            dir.path().to_str().unwrap(),
        ])
        .args(["--kafka-brokers", "127.0.0.1:1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let said = std::thread::spawn(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("Kafka unreachable"))
    });
    let started = std::time::Instant::now();
    while !said.is_finished() && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    common::terminate(&mut child, std::time::Duration::from_secs(10));
    let line = said.join().unwrap().expect("a `Kafka unreachable` line");
    assert!(line.contains("reason"), "{line}");
    assert!(
        line.contains("the spool waits") && !line.contains("503"),
        "a drain has no callbacks to answer: {line}"
    );
}

#[tokio::test]
async fn spool_drain_empties_a_spool_left_behind() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let dir = tempfile::tempdir().unwrap();
    leave_spool(dir.path(), &left_behind(3)).await;

    let printed = spool_drain(&broker, &topic, dir.path(), &[]);

    assert_eq!(
        printed,
        r#"{"callbacks":3,"records":3,"damaged_frames":0,"missing_segments":0}"#
    );
    assert_eq!(keys_in(&broker, &topic, 3), ["left-0", "left-1", "left-2"]);
    let spool = Spool::open(dir.path(), 1 << 30, Arc::new(Metrics::new("/css/callback"))).unwrap();
    assert_eq!(spool.records(), 0, "drained for good");
}

#[tokio::test]
async fn spool_drain_says_what_it_found_damaged() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let dir = tempfile::tempdir().unwrap();
    leave_spool(dir.path(), &left_behind(3)).await;
    damage_frame(dir.path(), 1);

    let (code, printed, stderr) = spool_drain_ending(&broker, &topic, dir.path(), &[]);

    assert_eq!(
        printed,
        r#"{"callbacks":2,"records":2,"damaged_frames":1,"missing_segments":0}"#
    );
    assert_eq!(keys_in(&broker, &topic, 2), ["left-0", "left-2"]);
    // Not 0, nor 1 (a Job would retry it, drain the empty spool and succeed):
    // the drain Job's podFailurePolicy fails the Job on this one.
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("were lost from it"), "{stderr}");
}

/// A spool left behind with `left_behind(count)`'s callbacks, but for the
/// one at `big`, whose record is over librdkafka's default
/// `message.max.bytes` (1,000,000) and within the topic's limit once
/// compressed, and with the `damaged`-th of the others damaged on disk.
async fn spool_with_a_big_record(count: usize, big: usize, damaged: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut batches = left_behind(count);
    batches[big].payloads = vec![b'x'; 1_500_000];
    batches[big].ends = vec![1_500_000];
    leave_spool(dir.path(), &batches).await;
    damage_frame(dir.path(), damaged);
    dir
}

/// Drains `dir` until Kafka refuses its big record for good (exit code 4),
/// then with a producer that takes it: the exit code and summary of each.
fn drain_past_a_refusal(broker: &Broker, topic: &str, dir: &std::path::Path) -> [(i32, Value); 2] {
    let bigger = ["--kafka-property", "message.max.bytes=2000000"];
    [&[][..], &bigger[..]].map(|extra| {
        let (code, printed, stderr) = spool_drain_ending(broker, topic, dir, extra);
        let code = code.unwrap_or_else(|| panic!("killed: {stderr}"));
        (code, serde_json::from_str(&printed).unwrap())
    })
}

/// A pod that skipped a damaged frame, released it with the frames after it,
/// and then stopped before the spool was empty (here Kafka refusing a record
/// for good) leaves the loss beside the spool: the drain that empties it
/// later, which reads no damaged frame, still says so, and fails.
#[tokio::test]
async fn a_loss_an_earlier_drain_released_is_still_said_when_a_later_one_empties_the_spool() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let dir = spool_with_a_big_record(5, 3, 1).await;

    let [(first, _), (second, summary)] = drain_past_a_refusal(&broker, &topic, dir.path());

    assert_eq!(first, 4, "refused for good");
    assert_eq!(second, 3, "{summary}");
    assert_eq!(
        summary["callbacks"], 2,
        "the big one and the last: {summary}"
    );
    assert_eq!(summary["damaged_frames"], 1, "{summary}");
}

/// A damaged frame an earlier drain counted, but had not released when its
/// pod ended, is read again by the next drain: counted once.
#[tokio::test]
async fn a_damaged_frame_two_drains_read_is_counted_once() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let dir = spool_with_a_big_record(3, 2, 1).await;

    let [(first, summary_1), (second, summary_2)] =
        drain_past_a_refusal(&broker, &topic, dir.path());

    assert_eq!((first, second), (4, 3));
    assert_eq!(summary_1["damaged_frames"], 1, "{summary_1}");
    assert_eq!(summary_2["damaged_frames"], 1, "{summary_2}");
}

/// A refusal Kafka gives for good (here a record over the producer's
/// `message.max.bytes`) ends `spool drain` with exit code 4 and the reason,
/// where retrying it every second would keep its Job running for ever; the
/// refused callback and those after it stay in the spool for the drain that
/// follows the fix.
#[tokio::test]
async fn spool_drain_stops_at_a_refusal_for_good_and_keeps_what_it_refused() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut batches = left_behind(3);
    // Over librdkafka's default `message.max.bytes` (1,000,000).
    batches[1].payloads = vec![b'x'; 1_500_000];
    batches[1].ends = vec![1_500_000];
    leave_spool(dir.path(), &batches).await;

    let (code, printed, stderr) = spool_drain_ending(&broker, &topic, dir.path(), &[]);

    assert_eq!(code, Some(4), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(summary["callbacks"], 1, "{printed}");
    let refused = summary["refused"]
        .as_str()
        .expect("the refusal, in the summary");
    assert!(refused.contains("MessageSizeTooLarge"), "{refused}");
    assert!(stderr.contains("stay in the spool"), "{stderr}");
    assert_eq!(keys_in(&broker, &topic, 1), ["left-0"]);
    let spool = Spool::open(dir.path(), 1 << 30, Arc::new(Metrics::new("/css/callback"))).unwrap();
    assert!(
        spool.records() >= 2,
        "the refused callback and the next stay"
    );
}

#[tokio::test]
async fn spool_drain_frames_records_with_the_schema_id_the_registry_gives_now() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    // The registry was rebuilt since the records were spooled: the schema
    // that had id 7 now has the first id it gives.
    let registry = TestRegistry::start().await;
    let id = registry.register(&format!("{topic}-value"), SCHEMA_JSON);
    assert_ne!(id, 7);
    let dir = tempfile::tempdir().unwrap();
    let spooled_with_7 = [&confluent_header(7)[..], b"avro"].concat();
    let batch = Batch {
        key: "left".into(),
        payloads: [&spooled_with_7[..], &spooled_with_7[..]].concat(),
        ends: vec![9, 18],
    };
    leave_spool(dir.path(), &[batch]).await;

    let url = registry.url();
    let printed = spool_drain(
        &broker,
        &topic,
        dir.path(),
        &["--schema-registry-url", &url],
    );

    assert_eq!(
        printed,
        r#"{"callbacks":1,"records":2,"damaged_frames":0,"missing_segments":0}"#
    );
    let payloads: Vec<Vec<u8>> = common::consume(&broker.bootstrap(), &topic, 2, READ_TIMEOUT)
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let framed_now = [&confluent_header(id)[..], b"avro"].concat();
    assert_eq!(payloads, [framed_now.clone(), framed_now]);
}

/// A replica stopped with callbacks in its spool says how many in its last
/// line: on the strength of it, the volume of a replica scaled away is
/// drained, or deleted.
#[tokio::test]
async fn a_replica_stopped_with_records_in_its_spool_says_so_in_its_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = common::BridgeProcess::spawn(
        &[
            "--kafka-brokers",
            "127.0.0.1:1",
            "--spool-dir",
            dir.path().to_str().unwrap(),
            "--kafka-ack-timeout-ms",
            "300",
            "--drain-timeout-secs",
            "1",
        ],
        &[],
    )
    .await;
    let response = bridge.post_callback(fixture("seed-sample.json")).await;
    assert_eq!(response.status(), 200, "spooled: Kafka is not there");

    let (_, lines) = bridge.stop();
    let last: Value = serde_json::from_str(lines.last().expect("a last line")).unwrap();
    assert_eq!(
        (&last["level"], &last["message"], &last["records"]),
        (
            &json!("WARN"),
            &json!("stopped with records in the spool: they are published at the next start"),
            &json!(4)
        ),
        "{lines:#?}"
    );
}

/// A spool left empty (its replica drained it before it went) is drained
/// while the registry is away: it has nothing to frame.
#[tokio::test]
async fn spool_drain_of_an_empty_spool_needs_no_registry() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let dir = tempfile::tempdir().unwrap();
    leave_spool(dir.path(), &[]).await;

    let printed = spool_drain(
        &broker,
        &topic,
        dir.path(),
        &["--schema-registry-url", "http://127.0.0.1:1"],
    );

    assert_eq!(
        printed,
        r#"{"callbacks":0,"records":0,"damaged_frames":0,"missing_segments":0}"#
    );
}

/// SIGTERM while the bridge still reads its spool at start-up (minutes for
/// gigabytes) stops it at once, exit code 0. Not listened to until serving,
/// it would be ignored by a container's first process, and the pod wait out
/// its grace period before being killed.
#[tokio::test]
async fn a_shutdown_signal_while_the_spool_is_read_at_start_stops_the_bridge_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A segment that is a named pipe: its read waits for a writer that never
    // comes, as on a disk that hangs.
    let segment = dir.path().join(format!("{:020}.spool", 1));
    let made = Command::new("mkfifo").arg(&segment).status().unwrap();
    assert!(made.success());
    let port = common::free_port();
    let mut bridge = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--kafka-brokers", "127.0.0.1:1"])
        .args(["--spool-dir", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its stand-in answers while the spool is read.
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let started = Instant::now();
    loop {
        if let Ok(answer) = reqwest::get(&healthz).await {
            assert_eq!(answer.text().await.unwrap(), "starting");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no stand-in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = common::terminate(&mut bridge, Duration::from_secs(5));

    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bridge.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert!(stderr.contains("stopped while starting"), "{stderr}");
}
