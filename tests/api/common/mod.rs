//! Shared helpers for the integration tests: Apache Kafka (`kafka`), Schema
//! Registries (the stand-in `registry`, Apicurio `apicurio`), the
//! bridge on a random port, and a consumer that reads back what the bridge
//! published.

pub mod apicurio;
pub mod kafka;
pub mod registry;

pub use kafka::{Broker, Cluster, SecuredCluster, TcpProxy};

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use css_kafka_bridge::{App, Config};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::oneshot;

/// The repository root, for fixtures and scripts.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The Python with the test packages: `BRIDGE_TEST_PYTHON`, else the `.venv`
/// that `scripts/test` prepares, else `python3`.
pub fn python() -> String {
    std::env::var("BRIDGE_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = repo_path(".venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".to_owned()
        }
    })
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("tests/fixtures/{name}"))).expect("fixture exists")
}

/// The `event_id`s of a valid callback's records, derived by the bridge's own
/// flattening (an id is a function of the callback's content only).
pub fn event_ids(body: &[u8]) -> Vec<String> {
    let wire = css_kafka_bridge::css::decode(body).unwrap();
    let callback = css_kafka_bridge::css::validate::validate(wire).unwrap();
    css_kafka_bridge::record::flatten(&callback, 0)
        .iter()
        .map(|record| record.event_id.to_string())
        .collect()
}

/// A loopback port free now, for a child process to bind: below the
/// kernel's ephemeral range, as `scripts/free-ports` chooses them, so that no
/// process binding port 0 (every other test's sockets) takes it before the
/// child does.
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000, ephemeral_start.max(11_000));
    // Any spread will do: start where the clock and the pid say, then walk.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let span = u32::from(high - low);
    (0..span)
        .map(|step| low + ((seed.wrapping_add(step.wrapping_mul(7_919))) % span) as u16)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range")
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Parses `serve` flags into a [`Config`], as the binary would.
#[derive(Parser)]
struct ServeFlags {
    #[command(flatten)]
    config: Config,
}

/// The bridge running in this process on a random port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub topic: String,
    pub brokers: String,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts the bridge against `brokers` and `topic`, with extra `serve` flags.
    pub async fn spawn(brokers: &str, topic: &str, flags: &[&str]) -> TestApp {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            topic,
        ];
        if !flags.contains(&"--shutdown-delay-secs") {
            // Tests have no load balancer to wait for.
            args.extend_from_slice(&["--shutdown-delay-secs", "0"]);
        }
        args.extend_from_slice(flags);
        let config = ServeFlags::try_parse_from(args)
            .expect("valid flags")
            .config;
        let app = App::build(config).await.expect("app builds");
        let addr = app.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async {
            let _ = signal.await;
        }));
        TestApp {
            addr,
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
            http: reqwest::Client::new(),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs `body` to the callback endpoint.
    pub async fn post_callback(&self, body: impl Into<reqwest::Body>) -> Reply {
        let response = self
            .http
            .post(self.url("/css/callback"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        Reply::read(response).await
    }

    /// Signals shutdown, as SIGTERM would, without waiting for it to finish.
    pub fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Signals shutdown and waits for the app to finish draining.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.signal_shutdown();
        self.task.take().unwrap().await.expect("app task")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        Reply::read(response).await
    }

    /// Polls `/readyz` until it answers `status`, for at most `timeout`.
    pub async fn wait_until_readiness_is(&self, status: u16, timeout: Duration) {
        let start = Instant::now();
        loop {
            let reply = self.get("/readyz").await;
            if reply.status == status {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "/readyz still {} after {timeout:?}: {:?}",
                reply.status,
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message in the topic, read from the beginning until `expected` are
    /// in or `timeout` passes.
    pub fn consume(&self, expected: usize, timeout: Duration) -> Vec<Consumed> {
        consume(&self.brokers, &self.topic, expected, timeout)
    }

    /// Every message the topic holds now (up to its partitions' end offsets
    /// at the call), however long the read takes within `timeout`: for a test
    /// that proves nothing else was published, rather than a read that stops
    /// at a count it may not reach in time on a loaded machine.
    pub fn consume_all(&self, timeout: Duration) -> Vec<Consumed> {
        consume_to_end(&self.brokers, &self.topic, timeout).0
    }
}

/// An HTTP response, read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// One message as read from the topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Consumed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The payload decoded with the bridge's schema.
    pub fn record(&self) -> serde_json::Value {
        css_kafka_bridge::avro::decode_to_json(&self.payload)
            .expect("payload is a push error record")
    }
}

/// Reads `topic` from the beginning with a fresh consumer group, independent of
/// the bridge's producer.
pub fn consume(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Consumed> {
    consume_until(brokers, topic, timeout, |messages| {
        messages.len() >= expected
    })
}

/// Reads `topic` from the beginning until `done` says so or `timeout` passes.
///
/// Every partition is assigned from its first offset, without a consumer
/// group: a group's rebalance (its coordinator moving after a broker restart)
/// would start the read over, and a message read twice would pass for a
/// duplicate in the topic.
pub fn consume_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let start = Instant::now();
    let partitions = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) if metadata.topics()[0].error().is_none() => {
                break metadata.topics()[0]
                    .partitions()
                    .iter()
                    .map(|p| p.id())
                    .collect::<Vec<_>>();
            }
            _ if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(100)),
            result => panic!("no metadata for {topic}: {:?}", result.err()),
        }
    };
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&assignment).expect("assign");
    let mut messages = Vec::new();
    while !done(&messages) && start.elapsed() < timeout {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        // Transient consumer errors (a broker that just restarted) are retried.
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                eprintln!("consumer: {error}");
                continue;
            }
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        messages.push(Consumed {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    messages
}

/// Reads `topic` from the beginning until every partition is read up to the
/// end offset it had when the call started, or `timeout` passes. Returns the messages and, per
/// partition, (messages read, end offset); a caller that finds a record
/// missing then knows it is not in the topic, rather than not read yet.
pub fn consume_to_end(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> (Vec<Consumed>, std::collections::BTreeMap<i32, (usize, i64)>) {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", unique_suffix()))
        .create()
        .expect("consumer");
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut ends = std::collections::BTreeMap::new();
    for partition in metadata.topics()[0].partitions() {
        let (_, high) = probe
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .expect("end offsets");
        ends.insert(partition.id(), high);
    }
    let mut read: std::collections::BTreeMap<i32, i64> = ends.keys().map(|&p| (p, 0)).collect();
    let mut seen = 0;
    let messages = consume_until(brokers, topic, timeout, |messages| {
        for message in &messages[seen..] {
            let next = read.entry(message.partition).or_default();
            *next = (*next).max(message.offset + 1);
        }
        seen = messages.len();
        ends.iter().all(|(partition, end)| read[partition] >= *end)
    });
    let counts = ends
        .iter()
        .map(|(&partition, &end)| {
            let count = messages.iter().filter(|m| m.partition == partition).count();
            (partition, (count, end))
        })
        .collect();
    (messages, counts)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The bridge's binary as operators run it, on a free loopback port, with JSON
/// logs: every line it writes to stderr is collected, for tests that read the
/// logs.
pub struct BridgeProcess {
    pub port: u16,
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BridgeProcess {
    /// Starts `serve --log-format json` with `args` on a port the system
    /// gives it (the one its "listening" line names: a port found free and
    /// then bound by the child could be taken between the two), and waits
    /// until it answers HTTP.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> BridgeProcess {
        Self::spawn_on(0, args, env).await
    }

    /// [`BridgeProcess::spawn`] on `port`: to start a bridge again where
    /// callers already send.
    pub async fn spawn_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> BridgeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"))
            .args([
                "serve",
                "--log-format",
                "json",
                "--shutdown-delay-secs",
                "0",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the bridge binary starts");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut process = BridgeProcess {
            port,
            child,
            lines,
            reader: Some(reader),
        };
        let start = Instant::now();
        loop {
            if process.port == 0 {
                process.port = process.listening_port().unwrap_or(0);
            }
            // "starting" while it reads its spool, a stand-in on its port.
            if process.port != 0 && process.serves().await {
                return process;
            }
            if let Some(status) = process.child.try_wait().expect("the child's status") {
                panic!("the bridge exited ({status}): {:?}", process.lines());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the bridge did not serve within 20 s: {:?}",
                process.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port of its "listening for CSS callbacks" line, once written.
    fn listening_port(&self) -> Option<u16> {
        self.lines().iter().find_map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).ok()?;
            if line["message"] != "listening for CSS callbacks" {
                return None;
            }
            let addr: std::net::SocketAddr = line["addr"].as_str()?.parse().ok()?;
            Some(addr.port())
        })
    }

    /// Whether it answers `/healthz` with "ok".
    async fn serves(&self) -> bool {
        let Ok(healthz) = reqwest::get(self.url("/healthz")).await else {
            return false;
        };
        healthz.text().await.is_ok_and(|text| text == "ok")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// POSTs `body` to the callback endpoint.
    pub async fn post_callback(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/css/callback"))
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM, as Kubernetes stops a pod; returns how it exited and every line
    /// it wrote. Killed if it has not exited within 30 s.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = terminate(&mut self.child, Duration::from_secs(30));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.lines())
    }
}

impl BridgeProcess {
    /// SIGKILL: the process ends at once, mid-write if it was writing. Returns
    /// every line it wrote.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the series `name` (with its labels, as exposed) in a scrape of
/// `/metrics`; 0 when absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap_or(0.0))
}

/// The sum of every labelled series of `family` in a scrape of `/metrics`.
pub fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .fold(0.0, |sum, value| sum + value)
}

/// Kafka producers the bridge replaced so far, from a scrape of `metrics_url`.
pub async fn producer_renewals(metrics_url: &str) -> f64 {
    let text = reqwest::get(metrics_url)
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    family_sum(&text, "css_bridge_kafka_producer_renewals_total")
}

/// Waits for `process` to exit, at most `timeout`; `None` when it still runs
/// (the caller decides: kill it, or fail).
pub fn exit_within(process: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.try_wait().expect("process status") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, as Kubernetes stops a pod, then SIGKILL if `process` has not
/// exited within `grace`; returns how it exited.
pub fn terminate(process: &mut Child, grace: Duration) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status();
    exit_within(process, grace).unwrap_or_else(|| {
        let _ = process.kill();
        process.wait().expect("process status")
    })
}
