//! Shared helpers for the integration tests: a real Kafka-compatible broker
//! process (tansu), the bridge on a random port, and a consumer that reads back
//! what the bridge published.

#![allow(dead_code)] // each test binary uses a different subset

pub mod registry;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use css_kafka_bridge::{App, Config};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::oneshot;

/// The repository root, for fixtures and scripts.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("tests/fixtures/{name}"))).expect("fixture exists")
}

/// A tansu broker process on a free loopback port, in-memory storage, killed
/// when dropped. One per test keeps tests independent and parallel.
pub struct Broker {
    process: Child,
    port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let tansu = std::env::var_os("TANSU").unwrap_or_else(|| "tansu".into());
        let process = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the tansu broker ({e}); `scripts/test` installs it, or set TANSU to its path")
            });
        let broker = Broker { process, port };
        wait_for_port(port, Duration::from_secs(20));
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process (its in-memory data goes with it).
    pub fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Creates a topic with a unique name and returns the name.
    pub async fn create_topic(&self, partitions: i32) -> String {
        let topic = format!("css.push-errors.test-{}", unique_suffix());
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic request");
        for result in results {
            result.expect("topic created");
        }
        topic
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "broker did not open port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unique_suffix() -> String {
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
        let app = App::build(config, brokers).await.expect("app builds");
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

    /// Signals shutdown and waits for the app to finish draining.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.take().unwrap().await.expect("app task")
    }

    /// Every message in the topic, read from the beginning until `expected` are
    /// in or `timeout` passes.
    pub fn consume(&self, expected: usize, timeout: Duration) -> Vec<Consumed> {
        consume(&self.brokers, &self.topic, expected, timeout)
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", unique_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let start = Instant::now();
    while messages.len() < expected && start.elapsed() < timeout {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.expect("consume");
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

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
