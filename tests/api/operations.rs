//! What operators rely on: readiness that follows Kafka and shutdown, metrics
//! that move, dead letters, and logs without secrets.

use crate::common;

use std::time::Duration;

use common::{Broker, TestApp, fixture};
use css_kafka_bridge::css::signature::expected_sign;
use serde_json::{Value, json};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn seed() -> Value {
    serde_json::from_slice(&fixture("seed-sample.json")).unwrap()
}

/// The keys of the topic's records, read until the four records of the
/// seed's callback on stream `key` are in.
fn keys_until_the_four_records_of(app: &TestApp, key: &str) -> Vec<String> {
    let four = |messages: &[common::Consumed]| {
        messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .count()
            >= 4
    };
    common::consume_until(&app.brokers, &app.topic, READ_TIMEOUT, four)
        .into_iter()
        .filter_map(|m| m.key)
        .collect()
}

/// A network partition between the bridge and a broker that stays up. The
/// producer is kept through it: its epoch bumped by librdkafka for the records
/// that timed out in flight, its producer id unchanged.
#[tokio::test]
async fn readiness_follows_kafka_and_publishing_resumes_after_a_network_partition() {
    let broker = Broker::start_partitionable();
    let topic = broker.create_topic(3).await;
    let app = TestApp::spawn(
        &broker.bootstrap(),
        &topic,
        &["--kafka-ack-timeout-ms", "1500"],
    )
    .await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );

    broker.partition();
    app.wait_until_readiness_is(503, Duration::from_secs(15))
        .await;
    let reply = app.post_callback(fixture("seed-sample.json")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);

    broker.heal();
    app.wait_until_readiness_is(200, Duration::from_secs(20))
        .await;
    let mut body = seed();
    body["stream_id"] = json!("after-outage");
    // Sent again on 503, as CSS would: the producer may still be getting its
    // new epoch.
    let mut reply = app.post_callback(body.to_string()).await;
    for _ in 0..20 {
        if reply.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        reply = app.post_callback(body.to_string()).await;
    }
    assert_eq!(
        reply.status, 200,
        "the bridge resumes without a restart: {:?}",
        reply.body
    );
    let renewals = common::producer_renewals(&app.url("/metrics")).await;
    assert_eq!(renewals, 0.0, "no new producer for a network partition");

    let keys = keys_until_the_four_records_of(&app, "after-outage");
    // The callback answered 503 during the partition may be in the topic too:
    // librdkafka keeps trying past the deadline (see `MIN_MESSAGE_TIMEOUT_MS`
    // in `kafka::config`), and CSS's retry of it carries the same event ids.
    let before = keys.iter().filter(|k| *k == "xxxxxx").count();
    assert!(before == 4 || before == 8, "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| *k == "after-outage").count(),
        4,
        "{keys:?}"
    );
}

/// A broker stopped (SIGTERM) and started again on its data, as in
/// maintenance: readiness follows it, and the same producer publishes again,
/// since Kafka keeps the producer's state (id, epoch, sequences) across a
/// restart.
#[tokio::test]
async fn readiness_follows_a_broker_restart_and_the_producer_is_kept() {
    let broker = Broker::dedicated();
    let topic = broker.create_topic(3).await;
    let app = TestApp::spawn(
        &broker.bootstrap(),
        &topic,
        &["--kafka-ack-timeout-ms", "1500"],
    )
    .await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );

    broker.stop();
    app.wait_until_readiness_is(503, Duration::from_secs(15))
        .await;
    let reply = app.post_callback(fixture("seed-sample.json")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);

    broker.restart();
    let back = std::time::Instant::now();
    let mut body = seed();
    body["stream_id"] = json!("after-restart");
    let mut reply = app.post_callback(body.to_string()).await;
    while reply.status == 503 && back.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reply = app.post_callback(body.to_string()).await;
    }
    assert_eq!(reply.status, 200, "after the restart: {:?}", reply.body);
    println!(
        "broker restart: 200 again {:?} after the broker was back",
        back.elapsed()
    );
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;

    let renewals = common::producer_renewals(&app.url("/metrics")).await;
    assert_eq!(renewals, 0.0, "no new producer for a broker restart");
    let keys = keys_until_the_four_records_of(&app, "after-restart");
    assert_eq!(
        keys.iter().filter(|k| *k == "after-restart").count(),
        4,
        "{keys:?}"
    );
}

#[tokio::test]
async fn readiness_turns_false_first_on_shutdown_while_requests_are_still_served() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let mut app =
        TestApp::spawn(&broker.bootstrap(), &topic, &["--shutdown-delay-secs", "2"]).await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;

    app.signal_shutdown();
    app.wait_until_readiness_is(503, Duration::from_secs(1))
        .await;
    let reply = app.get("/readyz").await;
    assert_eq!(reply.body["blockers"][0], "draining for shutdown");
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200,
        "still serving while draining"
    );

    let addr = app.addr;
    app.stop().await.unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed after the drain"
    );
}

#[tokio::test]
async fn metrics_count_requests_records_rejections_and_ignored_events() {
    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let app = TestApp::spawn(&broker.bootstrap(), &topic, &[]).await;
    assert_eq!(
        app.post_callback(fixture("seed-sample.json")).await.status,
        200
    );
    assert_eq!(app.post_callback("{").await.status, 400);
    assert_eq!(
        app.post_callback(r#"{"event_type":1,"stream_id":"s"}"#)
            .await
            .status,
        200
    );

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap();
    for line in [
        r#"css_bridge_http_requests_total{route="/css/callback",status="200"} 2"#,
        r#"css_bridge_http_requests_total{route="/css/callback",status="400"} 1"#,
        r#"css_bridge_records_published_total{error_name="video_frame_late"} 2"#,
        r#"css_bridge_records_published_total{error_name="audio_frame_late"} 2"#,
        r#"css_bridge_rejected_callbacks_total{reason="invalid_callback"} 1"#,
        r#"css_bridge_ignored_callbacks_total{event_type="1"} 1"#,
        "css_bridge_publish_duration_seconds_count 1",
        // Every callback answered, whatever the answer, and no scrape.
        "css_bridge_callback_duration_seconds_count 3",
        // Its records' acknowledgement: Kafka's part of that wait.
        "css_bridge_kafka_acknowledgement_seconds_count 1",
        "css_bridge_in_flight_requests 0", // callbacks only, not this scrape
        "css_bridge_producer_queue_messages ",
        "css_bridge_callback_auth_enabled 0", // no key, on loopback
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("css_bridge_build_info{version="));
    assert!(!text.contains("xxxxxx"), "stream ids are never labels");

    // Every callback answered and every record reported: the room comes back
    // as the task serving the reports lets go of the last one, a moment
    // after the answer.
    let empty = "css_bridge_producer_budget_fill_ratio 0.0\n";
    let mut text = text.to_owned();
    for _ in 0..100 {
        if text.contains(empty) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = app.get("/metrics").await.body.as_str().unwrap().to_owned();
    }
    assert!(text.contains(empty), "room still held in:\n{text}");
}

mod dead_letters {
    use super::*;

    #[tokio::test]
    async fn an_invalid_callback_is_kept_without_its_secrets_and_still_gets_400() {
        const KEY: &str = "dead-letter-test-key";
        const TX_SECRET: &str = "f5828cd4a8a09109304b060172fb3960"; // in the seed's stream_param
        let broker = Broker::shared();
        let topic = broker.create_topic(1).await;
        let dead_letters = broker.create_topic(1).await;
        let flags = ["--dead-letter-topic", &dead_letters, "--callback-keys", KEY];
        let app = TestApp::spawn(&broker.bootstrap(), &topic, &flags).await;
        let signed_invalid = |t: i64| {
            let mut body = seed();
            body["abnormal_event"][0]["count"] = json!(-3);
            body["t"] = json!(t);
            body["sign"] = json!(expected_sign(KEY, t));
            body
        };
        let t = common::now_ms() / 1000 + 600;
        let (first, retry) = (signed_invalid(t), signed_invalid(t + 60));
        assert_eq!(app.post_callback(first.to_string()).await.status, 400);
        assert_eq!(app.post_callback(retry.to_string()).await.status, 400);

        let kept = common::consume(&app.brokers, &dead_letters, 2, READ_TIMEOUT);
        assert_eq!(kept.len(), 2);
        for (letter, sent) in kept.iter().zip([&first, &retry]) {
            let text = String::from_utf8(letter.payload.clone()).unwrap();
            let sign = sent["sign"].as_str().unwrap();
            assert!(!text.contains(TX_SECRET), "the push secret is kept: {text}");
            assert!(!text.contains(sign), "the signature is kept: {text}");
            let mut expected = sent.clone();
            expected["sign"] = json!("redacted");
            let stream_param = sent["stream_param"].as_str().unwrap();
            expected["stream_param"] =
                json!(stream_param.replace(&format!("txSecret={TX_SECRET}"), "txSecret=redacted"));
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                expected,
                "everything else is kept, to repair and replay"
            );
            assert_eq!(
                letter.header("dead_letter.reason"),
                Some("abnormal_event[0].count: must not be negative, got -3")
            );
            assert_eq!(
                letter.header("dead_letter.field"),
                Some("abnormal_event[0].count")
            );
        }
        assert_eq!(kept[0].key, kept[1].key, "CSS's retries share one key");
        let metrics = app.get("/metrics").await;
        let metrics = metrics.body.as_str().unwrap();
        assert!(metrics.contains(r#"css_bridge_dead_letters_total{outcome="written"} 2"#));
        assert!(
            metrics.contains("css_bridge_kafka_acknowledgement_seconds_count 0"),
            "a dead letter is no callback's acknowledgement: {metrics}"
        );
        assert!(
            metrics.contains("css_bridge_callback_auth_enabled 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn unauthenticated_bodies_are_not_kept() {
        let broker = Broker::shared();
        let topic = broker.create_topic(1).await;
        let dead_letters = broker.create_topic(1).await;
        let flags = ["--dead-letter-topic", &dead_letters, "--callback-keys", "k"];
        let app = TestApp::spawn(&broker.bootstrap(), &topic, &flags).await;
        // No signature can be read from it: 401, as for a wrong one.
        assert_eq!(app.post_callback("not json").await.status, 401);
        let mut wrongly_signed = seed();
        wrongly_signed["t"] = json!(4_000_000_000_i64);
        wrongly_signed["sign"] = json!(expected_sign("other", 4_000_000_000));
        wrongly_signed["data_time"] = json!("bad");
        assert_eq!(
            app.post_callback(wrongly_signed.to_string()).await.status,
            401
        );
        assert!(common::consume(&app.brokers, &dead_letters, 1, Duration::from_secs(3)).is_empty());
    }

    #[tokio::test]
    async fn a_failing_dead_letter_write_keeps_the_400_and_its_one_line() {
        let broker = Broker::shared();
        let topic = broker.create_topic(1).await;
        let bridge = common::BridgeProcess::spawn(
            &[
                "--kafka-brokers",
                &broker.bootstrap(),
                "--kafka-topic",
                &topic,
                "--dead-letter-topic",
                "no-such-topic",
                "--kafka-ack-timeout-ms",
                "1000",
                "--drain-timeout-secs",
                "1",
            ],
            &[],
        )
        .await;
        let response = bridge.post_callback(r#"{"event_type":321}"#).await;
        assert_eq!(response.status(), 400);
        let metrics = reqwest::get(bridge.url("/metrics")).await.unwrap();
        let metrics = metrics.text().await.unwrap();
        assert!(metrics.contains(r#"css_bridge_dead_letters_total{outcome="failed"} 1"#));

        let (_, lines) = bridge.stop();
        let lines: Vec<Value> = lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let refused: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"] == "callback refused")
            .collect();
        assert_eq!(refused.len(), 1, "{lines:?}");
        assert_eq!(refused[0]["dead_letter"], "failed");
        assert!(
            refused[0]["dead_letter_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "why the dead letter failed: {}",
            refused[0]
        );
        let serving = lines.iter().take_while(|l| {
            !l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("shutting down"))
        });
        assert!(
            !serving.clone().any(|l| l["level"] == "ERROR"),
            "no line of its own for the dead letter: {lines:?}"
        );
    }
}

/// A second SIGTERM or SIGINT ends the process at once: the first one's
/// shutdown delay (a minute here) is not waited out.
#[test]
fn a_second_shutdown_signal_ends_the_process_at_once() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args([
            "serve",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json", "--shutdown-delay-secs", "60"])
        .env_remove("BRIDGE_CALLBACK_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let until = |text: &str| {
        let line = (received.iter())
            .find(|line| line.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?}"));
        // The listener the line follows is in place by now.
        std::thread::sleep(Duration::from_millis(200));
        line
    };
    let kill = |pid: u32| {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    };
    until("listening for CSS callbacks");
    kill(child.id());
    until("shutting down: not ready");
    // Sent again until it ends: the listener for the second signal is set up
    // by a task that a loaded machine may run late, and a signal before it
    // is not seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        kill(child.id());
        let status = common::exit_within(&mut child, Duration::from_millis(500));
        if status.is_some() || std::time::Instant::now() > deadline {
            break status;
        }
    };
    let _ = child.kill();
    let status = status.expect("the process ended at the second signal");
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// Start-up refuses bad settings, saying why, and those that would let anyone
/// publish.
mod start_up {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// Runs `serve` with `args` and `env` against a Kafka that is never reached,
    /// expecting it to stop within seconds; returns what it wrote to stderr.
    fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
        refused_without_brokers(&[&["--kafka-brokers", "127.0.0.1:1"], args].concat(), env)
    }

    /// [`refused`] with no Kafka brokers unless `args` gives them.
    fn refused_without_brokers(args: &[&str], env: &[(&str, &str)]) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
            .arg("serve")
            .args(args)
            .env_remove("BRIDGE_CALLBACK_KEYS")
            .env_remove("BRIDGE_KAFKA_BROKERS")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let Some(status) = crate::common::exit_within(&mut child, Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("serve started with {args:?} {env:?}");
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "serve succeeded with {args:?} {env:?}");
        stderr
    }

    #[test]
    fn a_trailing_comma_in_the_callback_keys_stops_start_up() {
        let stderr = refused(
            &["--listen", "127.0.0.1:0"],
            &[("BRIDGE_CALLBACK_KEYS", "secretkey,")],
        );
        assert!(stderr.contains("must not be blank"), "{stderr}");
        let stderr = refused(&["--listen", "127.0.0.1:0", "--callback-keys", ""], &[]);
        assert!(stderr.contains("must not be blank"), "{stderr}");
    }

    /// A bad value in a `BRIDGE_*` variable stops the pod before it logs
    /// anything else: with JSON logs, the reason is a JSON line too, for the
    /// log collector to show.
    #[test]
    fn a_bad_setting_is_refused_in_the_log_format_asked_for() {
        let refusal = |env: &[(&str, &str)]| {
            let output = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
                .arg("serve")
                .envs(env.iter().copied())
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{output:?}");
            String::from_utf8(output.stderr).unwrap()
        };
        let bad_timeout = ("BRIDGE_KAFKA_ACK_TIMEOUT_MS", "5s");

        let json = refusal(&[bad_timeout, ("BRIDGE_LOG_FORMAT", "json")]);
        let line: serde_json::Value = serde_json::from_str(json.trim_end())
            .unwrap_or_else(|e| panic!("one JSON line ({e}): {json}"));
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(line["message"], "invalid command line", "{line}");
        let error = line["error"].as_str().unwrap();
        assert!(
            error.starts_with("invalid value '5s' for '--kafka-ack-timeout-ms"),
            "{error}"
        );

        let text = refusal(&[bad_timeout]);
        assert!(text.starts_with("error: invalid value '5s'"), "{text}");
        let silenced = [
            bad_timeout,
            ("BRIDGE_LOG_FORMAT", "json"),
            ("RUST_LOG", "off"),
        ];
        let text = refusal(&silenced);
        assert!(text.contains("invalid value '5s'"), "never silent: {text}");
    }

    /// A list given with spaces leaves values without their flag: clap
    /// would quote them, and they may be secrets.
    #[test]
    fn a_value_without_its_flag_is_refused_without_being_shown() {
        for format in ["text", "json"] {
            let output = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
                .args(["--log-format", format, "serve", "--callback-keys"])
                .args(["first-key-6b1f", "second-key-93ac"])
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{output:?}");
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert!(!stderr.contains("second-key-93ac"), "{stderr}");
            assert!(stderr.contains("not shown"), "{stderr}");
        }
        let output = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
            .args(["serve", "--kafka-brokr", "kafka:9092"])
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains("'--kafka-brokr'"),
            "a flag is named: {stderr}"
        );
    }

    #[test]
    fn help_shows_no_value_of_a_setting_that_may_hold_a_secret() {
        let output = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
            .args(["serve", "--help"])
            .envs([
                ("BRIDGE_CALLBACK_KEYS", "secret-callback-key"),
                ("BRIDGE_KAFKA_PROPERTIES", "sasl.password=secret-sasl"),
                (
                    "BRIDGE_SCHEMA_REGISTRY_URL",
                    "https://u:secret-url@registry",
                ),
                ("BRIDGE_SCHEMA_REGISTRY_PASSWORD", "secret-registry"),
            ])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("BRIDGE_SCHEMA_REGISTRY_URL"), "{help}");
        assert!(!help.contains("secret-"), "{help}");
    }

    #[test]
    fn without_brokers_a_network_address_stops_start_up_saying_what_to_set() {
        let stderr = refused_without_brokers(
            &["--listen", "0.0.0.0:0"],
            &[("BRIDGE_CALLBACK_KEYS", "callback-key")],
        );
        assert!(stderr.contains("BRIDGE_KAFKA_BROKERS"), "{stderr}");
    }

    #[test]
    fn without_keys_a_network_address_stops_start_up_saying_what_to_set() {
        let stderr = refused(&["--listen", "0.0.0.0:0"], &[]);
        for advice in [
            "BRIDGE_CALLBACK_KEYS",
            "BRIDGE_CALLBACK_KEYS_FILE",
            "BRIDGE_INSECURE_NO_CALLBACK_AUTH",
        ] {
            assert!(stderr.contains(advice), "{advice} in: {stderr}");
        }
    }
}

/// Runs the real binary with JSON logs at debug level, sends it signed, invalid
/// and wrongly signed callbacks, stops it with SIGTERM, and reads everything it
/// logged.
#[tokio::test]
async fn logs_are_json_lines_with_request_ids_and_never_carry_secrets() {
    const KEY: &str = "callback-key-3f9a1c";
    const SASL_PASSWORD: &str = "sasl-password-77d2e0";
    const TX_SECRET: &str = "f5828cd4a8a09109304b060172fb3960"; // in the seed's stream_param

    let broker = Broker::shared();
    let topic = broker.create_topic(1).await;
    let sasl = format!("sasl.password={SASL_PASSWORD}");
    let bridge = common::BridgeProcess::spawn(
        &[
            "--kafka-brokers",
            &broker.bootstrap(),
            "--kafka-topic",
            &topic,
            "--callback-keys",
            KEY,
            "--kafka-property",
            &sasl,
        ],
        &[("RUST_LOG", "debug")],
    )
    .await;
    let url = bridge.url("/css/callback");
    let http = reqwest::Client::new();
    let post = |body: String| {
        let request = http.post(&url).body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let t = common::now_ms() / 1000 + 600;
    let mut signed = seed();
    signed["t"] = json!(t);
    signed["sign"] = json!(expected_sign(KEY, t));
    assert_eq!(post(signed.to_string()).await, 200);
    let mut invalid = signed.clone();
    invalid["appid"] = json!("twelve");
    assert_eq!(post(invalid.to_string()).await, 400);
    let mut wrong = signed.clone();
    wrong["sign"] = json!(expected_sign("guess", t));
    assert_eq!(post(wrong.to_string()).await, 401);

    let (status, lines) = bridge.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let logs = lines.join("\n");

    for secret in [KEY, SASL_PASSWORD, TX_SECRET, "txSecret"] {
        assert!(
            !logs.contains(secret),
            "`{secret}` appears in the logs:\n{logs}"
        );
    }
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "callback refused")
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "one line per refused callback: {refused:?}"
    );
    for line in refused {
        assert_eq!(line["level"], "WARN");
        assert!(
            line["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "request id: {line}"
        );
        assert_eq!(
            line["stream_id"], "xxxxxx",
            "the stream the body names: {line}"
        );
    }
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}

/// A sender with a wrong key refuses at its own rate: the log gets a few lines
/// a second, which with the `suppressed` counts they and the lines for the
/// rest carry still account for every refusal.
#[tokio::test]
async fn a_flood_of_refusals_writes_a_few_lines_a_second_that_account_for_all() {
    const REFUSALS: u64 = 200;
    let bridge =
        common::BridgeProcess::spawn(&["--callback-keys", "callback-key-3f9a1c"], &[]).await;
    let url = bridge.url("/css/callback");
    let http = reqwest::Client::new();
    let t = common::now_ms() / 1000 + 600;
    let mut wrong = seed();
    wrong["t"] = json!(t);
    wrong["sign"] = json!(expected_sign("guess", t));
    let started = std::time::Instant::now();
    for _ in 0..REFUSALS {
        let response = http.post(&url).body(wrong.to_string()).send().await;
        assert_eq!(response.unwrap().status().as_u16(), 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // The lines for those not written come within a second or two.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (_, lines) = bridge.stop();
    let lines: Vec<Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect();
    let refused = lines
        .iter()
        .filter(|line| line["message"] == "callback refused")
        .count() as u64;
    let suppressed: u64 = lines
        .iter()
        .filter(|line| line["reason"] == "unauthorized")
        .map(|line| line["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        refused <= (seconds + 1) * 10,
        "{refused} lines in {seconds} s"
    );
    assert_eq!(
        refused + suppressed,
        REFUSALS,
        "lines and their suppressed counts account for every refusal"
    );
}
