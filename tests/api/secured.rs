//! A secured cluster end to end, as production clusters are (MSK, Confluent
//! Cloud and Strimzi default to it): SASL_SSL with SCRAM-SHA-512, mutual TLS,
//! and ACLs that let the bridge's principal write its own topics and nothing
//! else, on Apache Kafka that `scripts/kafka start --listener ...` secures
//! (see [`SecuredCluster`]). The password, the CA and the client certificate
//! come from files, as Kubernetes mounts a Secret.
//!
//! Each failure is asserted as the operator meets it: readiness, the log line
//! that names the cause, the answer CSS gets, the metrics; and no secret (the
//! password, the private key, the callback key) in any of them.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{BridgeProcess, SecuredCluster, fixture};
use css_kafka_bridge::css::signature::expected_sign;
use serde_json::{Value, json};

/// The bridge's SCRAM user, and so its principal `User:css-kafka-bridge`.
const USER: &str = "css-kafka-bridge";
const PASSWORD: &str = "scram-password-5b1e9c04";
const CALLBACK_KEY: &str = "callback-key-c7a2e9f1";
/// The bridge's client certificate is for `CN=css-kafka-bridge`, which Kafka's
/// default mapping makes the principal `User:CN=css-kafka-bridge`.
const CERTIFICATE_NAME: &str = "css-kafka-bridge";
const CERTIFICATE_PRINCIPAL: &str = "User:CN=css-kafka-bridge";
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// What the bridge's principal needs, and nothing more: Write and Describe on
/// its topic and its dead-letter topic, IdempotentWrite on the cluster (its
/// producer is idempotent).
fn bridge_acls(topic: &str, dead_letters: &str) -> Vec<String> {
    vec![
        format!("topic:{topic}=write,describe"),
        format!("topic:{dead_letters}=write,describe"),
        "cluster=idempotent_write".to_owned(),
    ]
}

/// The bridge's topic and its dead-letter topic, created by the harness (a
/// super user), as an operator creates them: the bridge may not.
async fn topics(cluster: &SecuredCluster) -> (String, String) {
    let suffix = common::unique_suffix();
    let (topic, dead_letters) = (
        format!("css.push-errors.secured-{suffix}"),
        format!("css.push-errors.dead-letters-{suffix}"),
    );
    for name in [&topic, &dead_letters] {
        common::kafka::create_topic(cluster.admin(), name, 1, 1, &[]).await;
    }
    (topic, dead_letters)
}

/// A Kubernetes Secret as the pod sees it: a directory with a file per key.
struct MountedSecret {
    dir: PathBuf,
}

impl MountedSecret {
    fn new(cluster: &SecuredCluster, name: &str) -> Self {
        MountedSecret {
            dir: cluster.scratch(name),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Writes `key`, replacing it at once, as the kubelet swaps a Secret's
    /// files when the Secret changes.
    fn write(&self, key: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(key);
        let next = self.dir.join(format!(".{key}.next"));
        std::fs::write(&next, contents).unwrap();
        std::fs::rename(&next, &path).unwrap();
        path
    }

    /// SCRAM over TLS as [`USER`]: `kafka.properties` with the password, and
    /// the CA beside it (`ca.crt`).
    fn scram(cluster: &SecuredCluster, name: &str, password: &str, ca: &Path) -> Self {
        Self::scram_as(cluster, name, USER, password, ca)
    }

    fn scram_as(
        cluster: &SecuredCluster,
        name: &str,
        user: &str,
        password: &str,
        ca: &Path,
    ) -> Self {
        let secret = MountedSecret::new(cluster, name);
        let ca = secret.write("ca.crt", &std::fs::read(ca).unwrap());
        secret.write_scram_properties(user, password, &ca);
        secret
    }

    fn write_scram_properties(&self, user: &str, password: &str, ca: &Path) {
        let properties = format!(
            "# The bridge's Kafka credentials (a Secret, mounted)\n\
             security.protocol=SASL_SSL\n\
             sasl.mechanism=SCRAM-SHA-512\n\
             sasl.username={user}\n\
             sasl.password={password}\n\
             ssl.ca.location={}\n",
            ca.display()
        );
        self.write("kafka.properties", properties.as_bytes());
    }

    /// Mutual TLS: the CA (`ca.crt`) and, when given, the client certificate
    /// and key (`tls.crt`, `tls.key`, as in a `kubernetes.io/tls` Secret).
    fn mtls(cluster: &SecuredCluster, name: &str, client: Option<(&Path, &Path)>) -> Self {
        let secret = MountedSecret::new(cluster, name);
        let ca = secret.write("ca.crt", &std::fs::read(cluster.ca()).unwrap());
        let mut properties = format!(
            "security.protocol=SSL\n\
             ssl.ca.location={}\n",
            ca.display()
        );
        if let Some((certificate, key)) = client {
            let certificate = secret.write("tls.crt", &std::fs::read(certificate).unwrap());
            let key = secret.write("tls.key", &std::fs::read(key).unwrap());
            properties += &format!(
                "ssl.certificate.location={}\nssl.key.location={}\n",
                certificate.display(),
                key.display()
            );
        }
        secret.write("kafka.properties", properties.as_bytes());
        secret
    }
}

/// The bridge's binary against `bootstrap`, its Kafka properties from the
/// secret's `kafka.properties` (`BRIDGE_KAFKA_PROPERTIES_FILE`), callbacks
/// signed with [`CALLBACK_KEY`].
async fn start_bridge(
    bootstrap: &str,
    topic: &str,
    secret: &MountedSecret,
    flags: &[&str],
) -> BridgeProcess {
    start_bridge_on(None, bootstrap, topic, secret, flags).await
}

async fn start_bridge_on(
    port: Option<u16>,
    bootstrap: &str,
    topic: &str,
    secret: &MountedSecret,
    flags: &[&str],
) -> BridgeProcess {
    let properties = secret.path("kafka.properties");
    let mut args = vec![
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        topic,
        "--callback-keys",
        CALLBACK_KEY,
        "--kafka-ack-timeout-ms",
        "2000",
    ];
    args.extend_from_slice(flags);
    let env = [
        ("BRIDGE_KAFKA_PROPERTIES_FILE", properties.to_str().unwrap()),
        ("RUST_LOG", "info"),
    ];
    match port {
        Some(port) => BridgeProcess::spawn_on(port, &args, &env).await,
        None => BridgeProcess::spawn(&args, &env).await,
    }
}

/// The seed's callback for `stream_id`, signed as CSS signs it.
fn signed_callback(stream_id: &str) -> String {
    let t = common::now_ms() / 1000 + 600;
    let mut body: Value = serde_json::from_slice(&fixture("seed-sample.json")).unwrap();
    body["stream_id"] = json!(stream_id);
    body["t"] = json!(t);
    body["sign"] = json!(expected_sign(CALLBACK_KEY, t));
    body.to_string()
}

/// A signed callback the bridge refuses as invalid (400), to keep as a dead
/// letter.
fn signed_invalid_callback(stream_id: &str) -> String {
    let mut body: Value = serde_json::from_str(&signed_callback(stream_id)).unwrap();
    body["abnormal_event"][0]["count"] = json!(-3);
    body.to_string()
}

/// What the bridge answered a callback.
#[derive(Debug)]
struct Answer {
    status: u16,
    error: Option<String>,
    retry_after: Option<String>,
}

async fn post(bridge: &BridgeProcess, body: String) -> Answer {
    let response = bridge.post_callback(body).await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        error: body["error"].as_str().map(str::to_owned),
        retry_after,
    }
}

async fn get(bridge: &BridgeProcess, path: &str) -> (u16, String) {
    let response = reqwest::get(bridge.url(path)).await.expect("request sent");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// Polls `/readyz` until it answers `status`; returns its body.
async fn wait_for_readiness(bridge: &BridgeProcess, status: u16, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let (answered, body) = get(bridge, "/readyz").await;
        if answered == status {
            return body;
        }
        assert!(
            start.elapsed() < timeout,
            "/readyz still {answered} after {timeout:?}: {body}\n{}",
            bridge.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines (JSON) the bridge wrote with `message` starting so.
fn lines_starting(lines: &[String], message: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

/// Waits until the bridge has written a line starting with `message`.
async fn wait_for_line(bridge: &BridgeProcess, message: &str, timeout: Duration) {
    let start = Instant::now();
    while lines_starting(&bridge.lines(), message).is_empty() {
        assert!(
            start.elapsed() < timeout,
            "no `{message}` line after {timeout:?}:\n{}",
            bridge.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of a PEM private key's body: none may be seen anywhere.
fn private_key_lines(key: &Path) -> Vec<String> {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 16)
        .map(str::to_owned)
        .collect()
}

/// Once ready, `bridge` answers a signed callback of `stream_id` 200 and an
/// invalid one 400, and both reach their topics: the records and the dead
/// letter, written over the secured listener.
async fn publishes_a_callback_and_a_dead_letter(
    bridge: &BridgeProcess,
    cluster: &SecuredCluster,
    topic: &str,
    dead_letters: &str,
    stream_id: &str,
) {
    wait_for_readiness(bridge, 200, Duration::from_secs(20)).await;
    let answer = post(bridge, signed_callback(stream_id)).await;
    assert_eq!(
        answer.status,
        200,
        "{answer:?}\n{}",
        bridge.lines().join("\n")
    );
    assert_eq!(
        post(bridge, signed_invalid_callback("invalid"))
            .await
            .status,
        400
    );
    assert_eq!(records_of(cluster, topic, stream_id), 4);
    let kept = common::consume(cluster.admin(), dead_letters, 1, READ_TIMEOUT);
    assert_eq!(kept.len(), 1, "the dead letter is written too");
}

/// Scrapes `/metrics` and `/readyz`, kills the bridge, and asserts that none
/// of `secrets` is in the scrape, the probe's answer or any line it wrote.
/// Returns the lines and the scrape.
async fn stop_and_assert_no_secret(
    bridge: BridgeProcess,
    secrets: &[String],
) -> (Vec<String>, String) {
    let (_, metrics) = get(&bridge, "/metrics").await;
    let (_, readiness) = get(&bridge, "/readyz").await;
    let lines = bridge.kill();
    let logs = lines.join("\n");
    for secret in secrets {
        for (what, text) in [
            ("log", &logs),
            ("metrics", &metrics),
            ("/readyz", &readiness),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "`{secret}` is in the {what}:\n{text}"
            );
        }
    }
    (lines, metrics)
}

fn secrets(extra: &[String]) -> Vec<String> {
    let mut secrets = vec![PASSWORD.to_owned(), CALLBACK_KEY.to_owned()];
    secrets.extend_from_slice(extra);
    secrets
}

/// Reads the topic (as the harness's super user) until the seed's four
/// records of `stream_id` are in.
fn records_of(cluster: &SecuredCluster, topic: &str, stream_id: &str) -> usize {
    let of_stream = |messages: &[common::Consumed]| {
        messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(stream_id))
            .count()
    };
    let messages = common::consume_until(cluster.admin(), topic, READ_TIMEOUT, |messages| {
        of_stream(messages) >= 4
    });
    of_stream(&messages)
}

#[tokio::test]
async fn publishes_and_reads_back_over_sasl_ssl_with_the_password_and_the_ca_from_mounted_files() {
    let cluster = SecuredCluster::start(&[&format!("{USER}={PASSWORD}")], &[]);
    let (topic, dead_letters) = topics(&cluster).await;
    cluster.grant(&format!("User:{USER}"), &bridge_acls(&topic, &dead_letters));
    let secret = MountedSecret::scram(&cluster, "kafka-credentials", PASSWORD, &cluster.ca());
    let flags = ["--dead-letter-topic", &dead_letters];
    let bridge = start_bridge(&cluster.sasl_ssl(), &topic, &secret, &flags).await;

    publishes_a_callback_and_a_dead_letter(
        &bridge,
        &cluster,
        &topic,
        &dead_letters,
        "over-sasl-ssl",
    )
    .await;
    let (_, metrics) = stop_and_assert_no_secret(bridge, &secrets(&[])).await;
    assert!(
        metrics.contains(r#"css_bridge_dead_letters_total{outcome="written"} 1"#),
        "{metrics}"
    );

    // The bridge's principal may describe and write its topic, not read it:
    // `tail` with its credentials says so, exit code 1, rather than taking
    // the topic for empty.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
        .args([
            "tail",
            "--kafka-brokers",
            &cluster.sasl_ssl(),
            "--kafka-topic",
            &topic,
        ])
        .args(["--from-beginning", "--idle-timeout-secs", "5"])
        .env(
            "BRIDGE_KAFKA_PROPERTIES_FILE",
            secret.path("kafka.properties"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("refuse this principal"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing read");
}

#[tokio::test]
async fn publishes_and_reads_back_over_mutual_tls_with_the_client_certificate_and_key_from_mounted_files()
 {
    let cluster = SecuredCluster::start(&[], &[]);
    let (topic, dead_letters) = topics(&cluster).await;
    cluster.grant(CERTIFICATE_PRINCIPAL, &bridge_acls(&topic, &dead_letters));
    let (certificate, key) = cluster.issue_client_certificate(CERTIFICATE_NAME);
    let secret = MountedSecret::mtls(&cluster, "kafka-tls", Some((&certificate, &key)));
    let flags = ["--dead-letter-topic", &dead_letters];
    let bridge = start_bridge(&cluster.mtls(), &topic, &secret, &flags).await;

    publishes_a_callback_and_a_dead_letter(
        &bridge,
        &cluster,
        &topic,
        &dead_letters,
        "over-mutual-tls",
    )
    .await;
    stop_and_assert_no_secret(bridge, &secrets(&private_key_lines(&key))).await;
}

/// One way of getting the connection wrong, and what the operator should see.
struct Misconfiguration {
    name: &'static str,
    bootstrap: String,
    secret: MountedSecret,
    /// The `cause` the "Kafka unreachable" line names.
    cause: &'static str,
    /// In the line's `reason`: librdkafka's own words, or the watcher's.
    reason: &'static str,
    /// The librdkafka error code the reason starts with, counted in
    /// `css_bridge_kafka_client_errors_total`; none when the broker answers
    /// and the watcher finds the refusal in its metadata.
    error_code: Option<&'static str>,
    /// The error kind of the 503 a callback gets: `kafka_unavailable` when no
    /// broker lets the bridge in (the records wait until the deadline),
    /// `kafka_not_authorized` when one refuses its principal the topic.
    answered: &'static str,
}

#[tokio::test]
async fn a_wrong_password_certificate_or_topic_acl_leaves_the_bridge_not_ready_with_one_line_naming_the_cause()
 {
    /// A user the cluster knows, granted nothing: not even Describe.
    const UNGRANTED_USER: &str = "css-kafka-bridge-ungranted";
    let cluster = SecuredCluster::start(
        &[
            &format!("{USER}={PASSWORD}"),
            &format!("{UNGRANTED_USER}={PASSWORD}"),
        ],
        &[],
    );
    let (topic, dead_letters) = topics(&cluster).await;
    cluster.grant(&format!("User:{USER}"), &bridge_acls(&topic, &dead_letters));
    cluster.grant(CERTIFICATE_PRINCIPAL, &bridge_acls(&topic, &dead_letters));
    let (certificate, key) = cluster.issue_client_certificate(CERTIFICATE_NAME);
    let foreign_ca = cluster.foreign_ca();
    let untrusting_mtls =
        MountedSecret::mtls(&cluster, "untrusted-mtls", Some((&certificate, &key)));
    untrusting_mtls.write("ca.crt", &std::fs::read(&foreign_ca).unwrap());
    let cases = [
        Misconfiguration {
            name: "wrong password",
            bootstrap: cluster.sasl_ssl(),
            secret: MountedSecret::scram(
                &cluster,
                "wrong-password",
                "not-the-password",
                &cluster.ca(),
            ),
            cause: "authentication",
            reason: "SASL authentication error",
            answered: "kafka_unavailable",
            error_code: Some("Authentication"),
        },
        Misconfiguration {
            name: "broker certificate signed by a CA the bridge does not trust",
            bootstrap: cluster.sasl_ssl(),
            secret: MountedSecret::scram(&cluster, "untrusted", PASSWORD, &foreign_ca),
            cause: "tls",
            reason: "certificate verify failed",
            answered: "kafka_unavailable",
            error_code: Some("SSL"),
        },
        Misconfiguration {
            name: "broker certificate for another host name (localhost, not 127.0.0.1)",
            bootstrap: cluster.sasl_ssl().replace("localhost", "127.0.0.1"),
            secret: MountedSecret::scram(&cluster, "mismatch", PASSWORD, &cluster.ca()),
            cause: "tls",
            reason: "certificate verify failed",
            answered: "kafka_unavailable",
            error_code: Some("SSL"),
        },
        Misconfiguration {
            name: "mutual TLS, the broker's certificate signed by a CA the bridge does not trust",
            bootstrap: cluster.mtls(),
            secret: untrusting_mtls,
            cause: "tls",
            reason: "certificate verify failed",
            answered: "kafka_unavailable",
            error_code: Some("SSL"),
        },
        Misconfiguration {
            name: "a principal without Describe on the topic",
            bootstrap: cluster.sasl_ssl(),
            secret: MountedSecret::scram_as(
                &cluster,
                "ungranted",
                UNGRANTED_USER,
                PASSWORD,
                &cluster.ca(),
            ),
            cause: "authorization",
            reason: "TopicAuthorizationFailed",
            answered: "kafka_not_authorized",
            error_code: None,
        },
        Misconfiguration {
            name: "no client certificate where the broker requires one",
            bootstrap: cluster.mtls(),
            secret: MountedSecret::mtls(&cluster, "no-client-certificate", None),
            cause: "tls",
            reason: "bad certificate",
            answered: "kafka_unavailable",
            error_code: Some("BrokerTransportFailure"),
        },
    ];
    // The key is loaded by the bridge in the mutual-TLS case above.
    let never_shown = secrets(&private_key_lines(&key));

    let mut bridges = Vec::new();
    for case in &cases {
        let flags = ["--dead-letter-topic", &dead_letters];
        bridges.push(start_bridge(&case.bootstrap, &topic, &case.secret, &flags).await);
    }
    for (case, bridge) in cases.iter().zip(bridges) {
        let name = case.name;
        let readiness = wait_for_readiness(&bridge, 503, Duration::from_secs(15)).await;
        assert!(
            readiness.contains("Kafka topic metadata unreachable"),
            "{name}: {readiness}"
        );
        wait_for_line(&bridge, "Kafka unreachable", Duration::from_secs(15)).await;
        let answer = post(&bridge, signed_callback("refused")).await;
        assert_eq!(
            (answer.status, answer.error.as_deref()),
            (503, Some(case.answered)),
            "{name}: CSS retries it: {answer:?}"
        );
        assert!(answer.retry_after.is_some(), "{name}: {answer:?}");

        let (lines, metrics) = stop_and_assert_no_secret(bridge, &never_shown).await;
        let unreachable = lines_starting(&lines, "Kafka unreachable");
        assert_eq!(
            unreachable.len(),
            1,
            "{name}: one line:\n{}",
            lines.join("\n")
        );
        let line = &unreachable[0];
        assert_eq!(line["cause"], case.cause, "{name}: {line}");
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with(case.error_code.unwrap_or("topic ")) && reason.contains(case.reason),
            "{name}: the refusal, not `AllBrokersDown`: {line}"
        );
        println!("{name}: {line}");
        assert!(
            metrics.contains("css_bridge_kafka_reachable 0"),
            "{name}: {metrics}"
        );
        if let Some(code) = case.error_code {
            let counted = format!("css_bridge_kafka_client_errors_total{{error=\"{code}\"}}");
            assert!(
                common::metric_value(&metrics, &counted) > 0.0,
                "{name}: {counted} in:\n{metrics}"
            );
        }
        // What the authentication alert watches, whatever librdkafka's code.
        let refusals = format!(
            "css_bridge_kafka_refusals_total{{cause=\"{}\"}}",
            case.cause
        );
        assert!(
            common::metric_value(&metrics, &refusals) > 0.0,
            "{name}: {refusals} in:\n{metrics}"
        );
    }
}

/// Posts distinct signed callbacks, one every `PAUSE`, until `stop` is set;
/// returns each stream id with the status it was answered.
fn steady_callbacks(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, u16)>> {
    const PAUSE: Duration = Duration::from_millis(100);
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut answers = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let stream_id = format!("steady-{i}");
            i += 1;
            let status = match http
                .post(&url)
                .body(signed_callback(&stream_id))
                .send()
                .await
            {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            };
            answers.push((stream_id, status));
            tokio::time::sleep(PAUSE).await;
        }
        answers
    })
}

/// The topic's Write ACL taken back while the bridge publishes (or forgotten):
/// the principal may still describe the topic, so the bridge stays ready, and
/// every callback is answered 503 `kafka_not_authorized`, so that
/// CSS retries it while the operator grants the ACL (an answer it does not
/// retry would lose it), counted by that reason for the alert. The
/// dead-letter topic's Write ACL missing leaves the 400 a 400, the dead letter
/// counted failed. Granted again while callbacks keep arriving, publishing
/// resumes with the same producer, without a restart, and every callback
/// answered 200 is in the topic.
// Two workers: the callbacks keep going while the grant (a JVM) blocks one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_write_acl_is_answered_503_not_authorized_and_publishing_resumes_once_granted_without_a_restart()
 {
    let cluster = SecuredCluster::start(&[&format!("{USER}={PASSWORD}")], &[]);
    let (topic, dead_letters) = topics(&cluster).await;
    let principal = format!("User:{USER}");
    cluster.grant(&principal, &bridge_acls(&topic, &dead_letters));
    let secret = MountedSecret::scram(&cluster, "kafka-credentials", PASSWORD, &cluster.ca());
    let flags = [
        "--dead-letter-topic",
        &dead_letters,
        "--log-summary-interval-secs",
        "2",
    ];
    let bridge = start_bridge(&cluster.sasl_ssl(), &topic, &secret, &flags).await;
    wait_for_readiness(&bridge, 200, Duration::from_secs(20)).await;
    assert_eq!(post(&bridge, signed_callback("granted")).await.status, 200);

    let write = [
        format!("topic:{topic}=write"),
        format!("topic:{dead_letters}=write"),
    ];
    cluster.revoke(&principal, &write);
    // The broker applies the change within moments of the controller.
    let revoked = Instant::now();
    let answer = loop {
        let answer = post(&bridge, signed_callback("not-authorized")).await;
        if answer.status != 200 || revoked.elapsed() > Duration::from_secs(10) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (answer.status, answer.error.as_deref()),
        (503, Some("kafka_not_authorized")),
        "{answer:?}"
    );
    assert!(answer.retry_after.is_some(), "{answer:?}");
    let (status, readiness) = get(&bridge, "/readyz").await;
    assert_eq!(status, 200, "the topic's metadata is readable: {readiness}");
    assert_eq!(
        post(&bridge, signed_invalid_callback("invalid"))
            .await
            .status,
        400,
        "the dead letter's failure never changes the answer"
    );
    let (_, metrics) = get(&bridge, "/metrics").await;
    for counted in [
        r#"css_bridge_failed_callbacks_total{reason="kafka_not_authorized"} 1"#,
        r#"css_bridge_dead_letters_total{outcome="failed"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in:\n{metrics}");
    }
    wait_for_line(&bridge, "callbacks refused", Duration::from_secs(10)).await;
    let summary = &lines_starting(&bridge.lines(), "callbacks refused")[0];
    assert_eq!(summary["refused"], "kafka_not_authorized=1", "{summary}");

    // Callbacks keep arriving while the operator grants Write on both topics.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_callbacks(bridge.url("/css/callback"), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Blocking for seconds: the load's requests must not stall meanwhile, or
    // the bridge's body-read timeout cuts them off.
    tokio::task::block_in_place(|| cluster.grant(&principal, &write));
    let granted = Instant::now();
    let mut resumed = None;
    while resumed.is_none() && granted.elapsed() < Duration::from_secs(30) {
        if post(&bridge, signed_callback("after-the-grant"))
            .await
            .status
            == 200
        {
            resumed = Some(granted.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resumed = resumed.expect("publishing resumes within 30 s of the grant");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    assert_eq!(
        post(&bridge, signed_invalid_callback("invalid"))
            .await
            .status,
        400
    );

    let accepted: Vec<&str> = answers
        .iter()
        .filter(|(_, status)| *status == 200)
        .map(|(stream_id, _)| stream_id.as_str())
        .collect();
    assert!(
        answers
            .iter()
            .all(|(_, status)| [200, 503].contains(status)),
        "{answers:?}"
    );
    assert_eq!(answers.last().map(|(_, status)| *status), Some(200));
    println!(
        "Write granted: 200 again {resumed:?} later; during the grant {} callbacks, {} answered 200",
        answers.len(),
        accepted.len()
    );
    let messages = common::consume_until(cluster.admin(), &topic, READ_TIMEOUT, |messages| {
        accepted.iter().all(|stream_id| {
            messages
                .iter()
                .filter(|m| m.key.as_deref() == Some(stream_id))
                .count()
                >= 4
        })
    });
    for stream_id in &accepted {
        let records = messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(stream_id))
            .count();
        assert!(
            records >= 4,
            "{stream_id} was answered 200: {records} records"
        );
    }
    let kept = common::consume(cluster.admin(), &dead_letters, 1, READ_TIMEOUT);
    assert_eq!(kept.len(), 1, "the dead letter is written once granted");
    assert_eq!(
        common::producer_renewals(&bridge.url("/metrics")).await,
        0.0,
        "the same producer publishes again"
    );
    stop_and_assert_no_secret(bridge, &secrets(&[])).await;
}

/// A principal granted Describe but never Write, the usual slip at a first
/// deployment. Its producer never gets a producer id: the broker refuses
/// InitProducerId (`ClusterAuthorizationFailed`, since neither Write on a
/// topic nor IdempotentWrite is granted), which librdkafka makes fatal for an
/// idempotent producer. Callbacks are answered 503 `kafka_not_authorized`
/// (the few in flight when the error comes, 503 `kafka_unavailable`), the
/// refusal is counted where the alert watches, readiness says the producer
/// failed, and the producer is replaced until one gets an id: once Write is
/// granted, publishing starts without a restart.
#[tokio::test]
async fn a_principal_never_granted_write_is_answered_503_not_authorized_until_granted_then_publishes()
 {
    let cluster = SecuredCluster::start(&[&format!("{USER}={PASSWORD}")], &[]);
    let (topic, dead_letters) = topics(&cluster).await;
    let principal = format!("User:{USER}");
    let describe = [
        format!("topic:{topic}=describe"),
        format!("topic:{dead_letters}=describe"),
    ];
    cluster.grant(&principal, &describe);
    let secret = MountedSecret::scram(&cluster, "kafka-credentials", PASSWORD, &cluster.ca());
    let flags = ["--dead-letter-topic", &dead_letters];
    let bridge = start_bridge(&cluster.sasl_ssl(), &topic, &secret, &flags).await;

    let started = Instant::now();
    let answer = loop {
        let answer = post(&bridge, signed_callback("never-granted")).await;
        assert_eq!(answer.status, 503, "{answer:?}");
        if answer.error.as_deref() == Some("kafka_not_authorized")
            || started.elapsed() > Duration::from_secs(15)
        {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        answer.error.as_deref(),
        Some("kafka_not_authorized"),
        "{answer:?}"
    );
    assert!(answer.retry_after.is_some(), "{answer:?}");
    // Ready again for a moment after each renewal, until the new producer
    // is refused its id in turn.
    let readiness = wait_for_readiness(&bridge, 503, Duration::from_secs(15)).await;
    assert!(
        readiness.contains("Kafka producer failed, being replaced"),
        "{readiness}"
    );

    cluster.grant(&principal, &bridge_acls(&topic, &dead_letters));
    let granted = Instant::now();
    let resumed = loop {
        let answer = post(&bridge, signed_callback("granted")).await;
        if answer.status == 200 {
            break granted.elapsed();
        }
        assert!(
            granted.elapsed() < Duration::from_secs(40),
            "publishing resumes within 40 s of the grant: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("Write granted: 200 {resumed:?} later");
    assert!(records_of(&cluster, &topic, "granted") >= 4);
    let (_, metrics) = get(&bridge, "/metrics").await;
    for (family, why) in [
        (
            r#"css_bridge_kafka_refusals_total{cause="authorization"}"#,
            "what CssBridgeKafkaNotAuthorized watches",
        ),
        (
            r#"css_bridge_kafka_producer_renewals_total{reason="fatal"}"#,
            "the producer without an id is replaced",
        ),
    ] {
        assert!(
            common::metric_value(&metrics, family) > 0.0,
            "{why}: {family} in:\n{metrics}"
        );
    }
    stop_and_assert_no_secret(bridge, &secrets(&[])).await;
}

/// Rotation, measured. Kafka keeps one SCRAM password per user and mechanism,
/// so a rotation changes it on the cluster and in the mounted Secret. The
/// bridge reads its properties file once, at start-up, and librdkafka cannot
/// be handed a new password: when the broker makes it authenticate again (a
/// reconnect, or `connections.max.reauth.ms`, here 3 s), the running bridge
/// offers the old password and is refused, not ready and answering 503 for as
/// long as it runs, although the file holds the new one. Started again (a
/// rolling restart) on the same file, it publishes.
#[tokio::test]
async fn a_rotated_scram_password_is_taken_up_by_a_restart_of_the_bridge_not_by_the_running_one() {
    const NEW_PASSWORD: &str = "scram-password-rotated-61d0a3";
    let cluster = SecuredCluster::start(
        &[&format!("{USER}={PASSWORD}")],
        &["--set", "connections.max.reauth.ms=3000"],
    );
    let (topic, dead_letters) = topics(&cluster).await;
    cluster.grant(&format!("User:{USER}"), &bridge_acls(&topic, &dead_letters));
    let secret = MountedSecret::scram(&cluster, "kafka-credentials", PASSWORD, &cluster.ca());
    let bridge = start_bridge(&cluster.sasl_ssl(), &topic, &secret, &[]).await;
    wait_for_readiness(&bridge, 200, Duration::from_secs(20)).await;
    assert_eq!(post(&bridge, signed_callback("before")).await.status, 200);

    cluster.set_password(USER, NEW_PASSWORD);
    secret.write_scram_properties(USER, NEW_PASSWORD, &secret.path("ca.crt"));
    let rotated = Instant::now();
    wait_for_readiness(&bridge, 503, Duration::from_secs(20)).await;
    let refused_after = rotated.elapsed();
    // Well past several re-authentications: the new file is not taken up.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (status, readiness) = get(&bridge, "/readyz").await;
    assert_eq!(status, 503, "{readiness}");
    assert_eq!(post(&bridge, signed_callback("stale")).await.status, 503);
    let port = bridge.port;
    let (lines, _) = stop_and_assert_no_secret(
        bridge,
        &[
            PASSWORD.to_owned(),
            NEW_PASSWORD.to_owned(),
            CALLBACK_KEY.to_owned(),
        ],
    )
    .await;
    let unreachable = lines_starting(&lines, "Kafka unreachable");
    assert_eq!(unreachable.len(), 1, "{}", lines.join("\n"));
    assert_eq!(
        unreachable[0]["cause"], "authentication",
        "{}",
        unreachable[0]
    );

    let restarted = Instant::now();
    let bridge = start_bridge_on(Some(port), &cluster.sasl_ssl(), &topic, &secret, &[]).await;
    wait_for_readiness(&bridge, 200, Duration::from_secs(20)).await;
    assert_eq!(post(&bridge, signed_callback("after")).await.status, 200);
    println!(
        "password rotated: refused {refused_after:?} later (re-authentication every 3 s); \
         restarted: ready and publishing {:?} after the start",
        restarted.elapsed()
    );
    assert_eq!(records_of(&cluster, &topic, "after"), 4);
    stop_and_assert_no_secret(
        bridge,
        &[
            PASSWORD.to_owned(),
            NEW_PASSWORD.to_owned(),
            CALLBACK_KEY.to_owned(),
        ],
    )
    .await;
}

/// Rotation of the client certificate, measured. The renewed certificate is
/// for another subject here, `CN=css-kafka-bridge-renewed`, with the ACLs
/// moved to it, so that which certificate the bridge presents shows in what it
/// may do. Written into the mounted files, it is not presented by the running
/// bridge, not even on the connections it opens after a broker restart:
/// librdkafka loaded the certificate when the producer was created. Started
/// again on the same files, the bridge presents it and publishes.
#[tokio::test]
async fn a_renewed_client_certificate_is_presented_after_a_restart_of_the_bridge_not_by_the_running_one()
 {
    const RENEWED_NAME: &str = "css-kafka-bridge-renewed";
    const RENEWED_PRINCIPAL: &str = "User:CN=css-kafka-bridge-renewed";
    let cluster = SecuredCluster::start(&[], &[]);
    let (topic, dead_letters) = topics(&cluster).await;
    cluster.grant(CERTIFICATE_PRINCIPAL, &bridge_acls(&topic, &dead_letters));
    let (certificate, key) = cluster.issue_client_certificate(CERTIFICATE_NAME);
    let secret = MountedSecret::mtls(&cluster, "kafka-tls", Some((&certificate, &key)));
    let bridge = start_bridge(&cluster.mtls(), &topic, &secret, &[]).await;
    wait_for_readiness(&bridge, 200, Duration::from_secs(20)).await;
    assert_eq!(post(&bridge, signed_callback("before")).await.status, 200);

    let (renewed, renewed_key) = cluster.issue_client_certificate(RENEWED_NAME);
    secret.write("tls.crt", &std::fs::read(&renewed).unwrap());
    secret.write("tls.key", &std::fs::read(&renewed_key).unwrap());
    cluster.grant(RENEWED_PRINCIPAL, &bridge_acls(&topic, &dead_letters));
    cluster.revoke(CERTIFICATE_PRINCIPAL, &bridge_acls(&topic, &dead_letters));
    cluster.restart();
    let back = Instant::now();
    // The broker is back: the bridge connects again, with the old certificate.
    let answer = loop {
        let answer = post(&bridge, signed_callback("stale")).await;
        if answer.error.as_deref() != Some("kafka_unavailable")
            || back.elapsed() > Duration::from_secs(30)
        {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        (answer.status, answer.error.as_deref()),
        (503, Some("kafka_not_authorized")),
        "the old certificate's principal: {answer:?}"
    );
    let readiness = wait_for_readiness(&bridge, 503, Duration::from_secs(10)).await;
    assert!(readiness.contains("metadata unreachable"), "{readiness}");
    // The outage began with the broker's restart or with the refusal,
    // whichever the watcher saw first; either way, once its next check meets
    // the refusal, a line names it.
    let named = Instant::now();
    while !lines_starting(&bridge.lines(), "Kafka unreachable")
        .iter()
        .any(|line| line["cause"] == "authorization")
    {
        assert!(
            named.elapsed() < Duration::from_secs(15),
            "no line names the refusal:\n{}",
            bridge.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let port = bridge.port;
    let never_shown = secrets(&[private_key_lines(&key), private_key_lines(&renewed_key)].concat());
    let (lines, _) = stop_and_assert_no_secret(bridge, &never_shown).await;
    assert_eq!(
        lines_starting(&lines, "Kafka unreachable")
            .iter()
            .filter(|line| line["cause"] == "authorization")
            .count(),
        1,
        "the refusal is named once"
    );

    let restarted = Instant::now();
    let bridge = start_bridge_on(Some(port), &cluster.mtls(), &topic, &secret, &[]).await;
    wait_for_readiness(&bridge, 200, Duration::from_secs(20)).await;
    assert_eq!(post(&bridge, signed_callback("after")).await.status, 200);
    println!(
        "certificate renewed: refused as the old principal after the broker restart; \
         restarted: ready and publishing {:?} after the start",
        restarted.elapsed()
    );
    assert_eq!(records_of(&cluster, &topic, "after"), 4);
    stop_and_assert_no_secret(bridge, &never_shown).await;
}
