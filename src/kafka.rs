//! Kafka: the producer, delivery with a deadline, error classification, and the
//! embedded in-memory cluster for a first run.
//!
//! The bridge answers CSS only after Kafka has acknowledged every record of a
//! callback, so [`Publisher::publish`] enqueues all records, then waits for all
//! delivery reports, bounded by the acknowledgement deadline. librdkafka's own
//! `message.timeout.ms` is set to the same deadline: a record the bridge has given
//! up on is also given up by librdkafka, instead of landing later unannounced.
//! (A record that was acknowledged while the bridge was already answering 503 is
//! possible at the edge; CSS then retries and consumers drop the duplicate by
//! `event_id`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext, Statistics};

use crate::avro::{RecordSchema, SCHEMA_FINGERPRINT_HEADER, SCHEMA_NAME_HEADER};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// Compression used unless configured otherwise: lz4 is cheap on CPU and shrinks
/// these repetitive records several times.
const DEFAULT_COMPRESSION: &str = "lz4";
/// How long librdkafka waits to fill a batch: a trade between latency at low
/// load and CPU at high load, since a linger is paid by every callback.
///
/// Measured against one tansu broker on loopback: 1 ms gives p50 1.9 ms at 32
/// connections where 2 ms gives 3.0 ms, and costs about a tenth of the
/// throughput at 256 connections (`bench/ab`: 46–50k against 54k req/s). Going
/// lower costs the broker: with 0 ms and one request in flight (batches that
/// follow the load exactly), p50 at 32 connections fell to 0.9 ms but the
/// broker's CPU tripled, and at 256 connections p99 rose from 12 to 24 ms,
/// because every produce request then waits for the one before it.
const DEFAULT_LINGER_MS: &str = "1";
/// How often librdkafka reports statistics (broker round-trip times, retries)
/// for the metrics.
const DEFAULT_STATISTICS_INTERVAL_MS: &str = "10000";
/// Upper bound of the producer queue's memory, so the bridge's footprint stays
/// bounded when Kafka slows down (the queue-full error then becomes a 503).
const DEFAULT_QUEUE_MAX_KBYTES: &str = "32768";

/// Properties the delivery guarantee depends on: the bridge sets them, and
/// refuses configuration that would weaken them.
const GUARANTEED: [(&str, &[&str]); 2] =
    [("enable.idempotence", &["true"]), ("acks", &["all", "-1"])];

/// Properties derived from the bridge's own settings; set them through those.
const DERIVED: [(&str, &str); 2] = [
    ("bootstrap.servers", "--kafka-brokers"),
    ("message.timeout.ms", "--kafka-ack-timeout-ms"),
];

/// A records batch could not be published; the caller decides the status.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka is slow, unreachable or refusing writes for now; CSS should retry.
    #[error("Kafka did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("the producer queue is full")]
    QueueFull,
    #[error("Kafka refused the records for now: {0}")]
    Retriable(KafkaError),
    /// Retrying will not help until an operator acts (topic missing, not
    /// authorized, record too large, ...).
    #[error("Kafka refused the records: {0}")]
    Permanent(KafkaError),
}

impl PublishError {
    /// Whether a later retry of the same callback can succeed without anyone
    /// changing anything.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }

    fn classify(error: KafkaError) -> Self {
        use RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::QueueFull) => Self::QueueFull,
            Some(
                Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::UnknownTopic
                | Code::UnknownTopicOrPartition
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::Authentication
                | Code::SaslAuthenticationFailed
                | Code::PolicyViolation
                | Code::InvalidRequiredAcks
                | Code::Fatal,
            ) => Self::Permanent(error),
            _ => Self::Retriable(error),
        }
    }
}

/// The records of one callback, encoded, with their message key.
#[derive(Debug, Default)]
pub struct Batch {
    /// Message key of every record: the stream id, so that one stream's errors
    /// stay in one partition, in order.
    pub key: String,
    /// Encoded records, back to back; `ends[i]` is where record `i` ends.
    pub payloads: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Batch {
    /// The encoded records, in order.
    pub fn payloads(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.payloads[start..self.ends[i]]
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Headers of a dead letter: why the callback was refused.
pub const DEAD_LETTER_REASON_HEADER: &str = "dead_letter.reason";
/// Headers of a dead letter: the JSON path at fault, when known.
pub const DEAD_LETTER_FIELD_HEADER: &str = "dead_letter.field";

/// The producer's side of librdkafka's events: statistics reports go to the
/// metrics, delivery reports to the publication they belong to.
pub struct BridgeContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for BridgeContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.observe_kafka_statistics(&statistics);
    }
}

impl rdkafka::producer::ProducerContext for BridgeContext {
    type DeliveryOpaque = Arc<Acknowledgement>;

    fn delivery(&self, result: &DeliveryResult<'_>, acknowledgement: Arc<Acknowledgement>) {
        acknowledgement.report(result.as_ref().map(drop).map_err(|(error, _)| error));
    }
}

/// The delivery reports one publication (a callback's records, or one dead
/// letter) still waits for, shared by its records as their delivery opaque.
///
/// librdkafka's polling thread counts the reports in, and the waiting request is
/// woken once: when the last record is acknowledged, or at the first failure.
/// This costs one allocation per publication, where a future per record
/// (rdkafka's `FutureProducer`) costs a channel and a box per record and a
/// wake-up of the request per report.
#[derive(Debug, Default)]
pub struct Acknowledgement {
    remaining: AtomicUsize,
    failure: OnceLock<KafkaError>,
    waker: AtomicWaker,
}

impl Acknowledgement {
    fn expecting(records: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(records),
            ..Self::default()
        })
    }

    /// One record's delivery report.
    fn report(&self, result: Result<(), &KafkaError>) {
        match result {
            Ok(()) => {
                if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.waker.wake();
                }
            }
            Err(error) => {
                let _ = self.failure.set(error.clone());
                self.waker.wake();
            }
        }
    }

    /// Resolves once every record is acknowledged, or with the first failure.
    async fn all_delivered(&self) -> Result<(), KafkaError> {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if let Some(error) = self.failure.get() {
                Poll::Ready(Err(error.clone()))
            } else if self.remaining.load(Ordering::Acquire) == 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// librdkafka's producer with a thread of its own that serves delivery reports.
type BridgeProducer = ThreadedProducer<BridgeContext>;

/// Consecutive failed publications after which the producer is replaced while
/// Kafka answers metadata requests (see [`Publisher::renew_if_stuck`]).
const RENEWAL_FAILURE_THRESHOLD: u32 = 3;
/// Least time between two renewals, so that a flapping cluster does not make the
/// bridge churn through producers.
const RENEWAL_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Publishes batches to the push error topic and waits for their acknowledgement.
///
/// The producer can be replaced while requests use it: after an outage, an
/// idempotent producer whose records timed out must bump its epoch, and a
/// producer that hit a fatal error is unusable for good. Rather than needing a
/// restart, the bridge then starts a fresh producer (new producer id) and lets
/// the old one finish in the background.
pub struct Publisher {
    producer: std::sync::RwLock<Arc<BridgeProducer>>,
    client_config: ClientConfig,
    metrics: Arc<Metrics>,
    topic: String,
    dead_letter_topic: Option<String>,
    ack_timeout: Duration,
    headers: OwnedHeaders,
    consecutive_failures: std::sync::atomic::AtomicU32,
    last_renewal: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Publisher {
    /// Creates the producer. No network I/O happens here; librdkafka connects in
    /// the background.
    pub fn new(
        config: &KafkaConfig,
        brokers: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let client_config = producer_config(config, brokers)?;
        let producer = client_config.create_with_context(BridgeContext {
            metrics: metrics.clone(),
        })?;
        let schema = RecordSchema::get();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: SCHEMA_NAME_HEADER,
                value: Some(schema.full_name()),
            })
            .insert(Header {
                key: SCHEMA_FINGERPRINT_HEADER,
                value: Some(schema.fingerprint()),
            });
        Ok(Self {
            producer: std::sync::RwLock::new(Arc::new(producer)),
            client_config,
            metrics,
            topic: config.topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone().filter(|t| !t.is_empty()),
            ack_timeout: config.ack_timeout(),
            headers,
            consecutive_failures: Default::default(),
            last_renewal: std::sync::Mutex::new(None),
        })
    }

    /// The current producer.
    fn producer(&self) -> Arc<BridgeProducer> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is intact.
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the producer when Kafka is reachable and the producer is not
    /// fit to use it: it hit a fatal error, it failed repeatedly, or it failed
    /// during an outage that just ended (`recovered`). Called by the readiness
    /// watcher, which knows about reachability. Returns whether it renewed.
    pub fn renew_if_stuck(&self, reachable: bool, recovered: bool) -> bool {
        let fatal = self.producer().client().fatal_error();
        let failures = self.consecutive_failures.load(Ordering::Relaxed);
        let stuck =
            fatal.is_some() || failures >= RENEWAL_FAILURE_THRESHOLD || (recovered && failures > 0);
        if !(reachable && stuck) {
            return false;
        }
        let mut last_renewal = self.last_renewal.lock().unwrap_or_else(|e| e.into_inner());
        if last_renewal.is_some_and(|at| at.elapsed() < RENEWAL_MIN_INTERVAL) {
            return false;
        }
        let context = BridgeContext {
            metrics: self.metrics.clone(),
        };
        let fresh = match self.client_config.create_with_context(context) {
            Ok(fresh) => Arc::new(fresh),
            Err(error) => {
                tracing::error!(%error, "cannot create a replacement Kafka producer");
                return false;
            }
        };
        tracing::warn!(
            failures,
            ?fatal,
            "replacing the Kafka producer after repeated failures"
        );
        let old = std::mem::replace(
            &mut *self.producer.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        *last_renewal = Some(std::time::Instant::now());
        self.consecutive_failures.store(0, Ordering::Relaxed);
        // The old producer's queued records get their own deadline to finish;
        // dropping it blocks, so it happens off the async workers.
        let timeout = self.ack_timeout;
        std::thread::spawn(move || {
            let _ = old.flush(timeout);
        });
        true
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every record of `batch` and resolves once Kafka has acknowledged all
    /// of them, or fails at the first refusal, a full queue, or the deadline.
    pub async fn publish(&self, batch: &Batch) -> Result<(), PublishError> {
        self.send_all(
            &self.topic,
            Some(&batch.key),
            batch.payloads(),
            &self.headers,
        )
        .await
    }

    /// Whether invalid callbacks are kept in a dead-letter topic.
    pub fn has_dead_letter_topic(&self) -> bool {
        self.dead_letter_topic.is_some()
    }

    /// Writes a refused callback's raw body to the dead-letter topic, with the
    /// reason in headers, and waits for the acknowledgement. The key is the
    /// body's SHA-256, so the copies that CSS's retries produce share one key.
    /// Does nothing (and succeeds) without a dead-letter topic.
    pub async fn publish_dead_letter(
        &self,
        body: &[u8],
        reason: &str,
        field: Option<&str>,
    ) -> Result<(), PublishError> {
        use sha2::{Digest, Sha256};
        let Some(topic) = &self.dead_letter_topic else {
            return Ok(());
        };
        let key = hex::encode(Sha256::digest(body));
        let mut headers = OwnedHeaders::new_with_capacity(2).insert(Header {
            key: DEAD_LETTER_REASON_HEADER,
            value: Some(reason),
        });
        if let Some(field) = field {
            headers = headers.insert(Header {
                key: DEAD_LETTER_FIELD_HEADER,
                value: Some(field),
            });
        }
        self.send_all(topic, Some(&key), std::iter::once(body), &headers)
            .await
    }

    async fn send_all<'p>(
        &self,
        topic: &str,
        key: Option<&str>,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
        headers: &OwnedHeaders,
    ) -> Result<(), PublishError> {
        let result = self.try_send_all(topic, key, payloads, headers).await;
        let failures = &self.consecutive_failures;
        match &result {
            Ok(()) => failures.store(0, Ordering::Relaxed),
            Err(_) => drop(failures.fetch_add(1, Ordering::Relaxed)),
        }
        result
    }

    async fn try_send_all<'p>(
        &self,
        topic: &str,
        key: Option<&str>,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
        headers: &OwnedHeaders,
    ) -> Result<(), PublishError> {
        let producer = self.producer();
        let acknowledgement = Acknowledgement::expecting(payloads.len());
        for payload in payloads {
            let mut record = BaseRecord::with_opaque_to(topic, acknowledgement.clone())
                .payload(payload)
                .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            // Records already enqueued still go out; the retry CSS makes after
            // our 503 duplicates them, which `event_id` lets consumers undo.
            producer
                .send(record)
                .map_err(|(error, _)| PublishError::classify(error))?;
        }
        // librdkafka gives up on a record after the same deadline
        // (`message.timeout.ms`) and reports it; this bound covers a report that
        // comes late.
        tokio::time::timeout(self.ack_timeout, acknowledgement.all_delivered())
            .await
            .map_err(|_| PublishError::Timeout(self.ack_timeout))?
            .map_err(PublishError::classify)
    }

    /// Records enqueued and not yet acknowledged.
    pub fn queue_len(&self) -> i32 {
        self.producer().in_flight_count()
    }

    /// Fetches the topic's metadata: Ok when the cluster answers and the topic
    /// exists with partitions. Blocking; for the readiness watcher.
    pub fn check_metadata(&self, timeout: Duration) -> Result<(), String> {
        let metadata = self
            .producer()
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| e.to_string())?;
        match metadata.topics().first() {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => Ok(()),
            Some(topic) => Err(format!("topic {}: {:?}", self.topic, topic.error())),
            None => Err(format!("topic {} not in metadata", self.topic)),
        }
    }

    /// Waits until every enqueued record is delivered or `timeout` passes; for
    /// shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }
}

/// Settings that cannot produce a working producer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Kafka property `{0}` is set by the bridge from {1}; use that instead")]
    Derived(String, &'static str),
    #[error(
        "Kafka property `{key}={value}` would weaken delivery guarantees; the bridge requires {key}={required}"
    )]
    Weakened {
        key: String,
        value: String,
        required: &'static str,
    },
    #[error("cannot use Kafka properties file {path}: {reason}")]
    PropertiesFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("invalid Kafka client configuration: {0}")]
    Client(#[from] KafkaError),
}

/// The librdkafka configuration of the bridge's producer: the bridge's defaults,
/// then the user's properties, then the settings the guarantee depends on.
pub fn producer_config(config: &KafkaConfig, brokers: &str) -> Result<ClientConfig, ConfigError> {
    let mut client = ClientConfig::new();
    client
        .set("client.id", "css-kafka-bridge")
        .set("compression.type", DEFAULT_COMPRESSION)
        .set("linger.ms", DEFAULT_LINGER_MS)
        .set("queue.buffering.max.kbytes", DEFAULT_QUEUE_MAX_KBYTES)
        .set("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS);
    for (key, value) in config.properties()? {
        if let Some((_, flag)) = DERIVED.iter().find(|(derived, _)| *derived == key) {
            return Err(ConfigError::Derived(key, flag));
        }
        if let Some((_, allowed)) = GUARANTEED.iter().find(|(guaranteed, _)| *guaranteed == key)
            && !allowed.contains(&value.as_str())
        {
            return Err(ConfigError::Weakened {
                key,
                value,
                required: allowed[0],
            });
        }
        client.set(key, value);
    }
    for (key, allowed) in GUARANTEED {
        client.set(key, allowed[0]);
    }
    client.set("bootstrap.servers", brokers).set(
        "message.timeout.ms",
        config.ack_timeout().as_millis().to_string(),
    );
    Ok(client)
}

/// An in-process Kafka cluster (librdkafka's mock cluster) for running the bridge
/// with no Kafka at hand. It keeps data in memory only, for as long as the
/// process lives.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with `topic` created (3 partitions).
    pub fn start(topic: &str) -> Result<Self, KafkaError> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic(topic, 3, 1)?;
        Ok(Self { cluster })
    }

    /// Address to give clients as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_config(properties: &[&str]) -> KafkaConfig {
        KafkaConfig {
            properties: properties.iter().map(|p| p.parse().unwrap()).collect(),
            ..KafkaConfig::default()
        }
    }

    fn get(config: &ClientConfig, key: &str) -> Option<String> {
        config.get(key).map(str::to_owned)
    }

    #[test]
    fn guarantees_and_defaults_are_set() {
        let client = producer_config(&kafka_config(&[]), "b:9092").unwrap();
        assert_eq!(get(&client, "enable.idempotence").as_deref(), Some("true"));
        assert_eq!(get(&client, "acks").as_deref(), Some("all"));
        assert_eq!(get(&client, "compression.type").as_deref(), Some("lz4"));
        assert_eq!(get(&client, "linger.ms").as_deref(), Some("1"));
        assert_eq!(get(&client, "bootstrap.servers").as_deref(), Some("b:9092"));
        assert_eq!(get(&client, "message.timeout.ms").as_deref(), Some("5000"));
    }

    #[test]
    fn any_librdkafka_property_passes_through() {
        let client = producer_config(
            &kafka_config(&[
                "security.protocol=SASL_SSL",
                "sasl.mechanism=SCRAM-SHA-512",
                "compression.type=zstd",
            ]),
            "b:9092",
        )
        .unwrap();
        assert_eq!(
            get(&client, "security.protocol").as_deref(),
            Some("SASL_SSL")
        );
        assert_eq!(
            get(&client, "sasl.mechanism").as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(get(&client, "compression.type").as_deref(), Some("zstd"));
    }

    #[test]
    fn weakening_the_guarantee_is_refused() {
        for property in ["acks=1", "enable.idempotence=false"] {
            let error = producer_config(&kafka_config(&[property]), "b").unwrap_err();
            assert!(
                matches!(error, ConfigError::Weakened { .. }),
                "{property}: {error}"
            );
        }
        assert!(producer_config(&kafka_config(&["acks=-1"]), "b").is_ok());
    }

    #[test]
    fn derived_properties_are_refused_with_the_flag_to_use() {
        let error = producer_config(&kafka_config(&["bootstrap.servers=x:1"]), "b").unwrap_err();
        assert!(error.to_string().contains("--kafka-brokers"), "{error}");
    }

    #[test]
    fn errors_are_classified_by_what_the_caller_should_do() {
        let production = |code| PublishError::classify(KafkaError::MessageProduction(code));
        assert!(matches!(
            production(RDKafkaErrorCode::QueueFull),
            PublishError::QueueFull
        ));
        assert!(production(RDKafkaErrorCode::MessageTimedOut).is_retriable());
        assert!(production(RDKafkaErrorCode::NotEnoughReplicas).is_retriable());
        assert!(production(RDKafkaErrorCode::AllBrokersDown).is_retriable());
        assert!(!production(RDKafkaErrorCode::MessageSizeTooLarge).is_retriable());
        assert!(!production(RDKafkaErrorCode::TopicAuthorizationFailed).is_retriable());
        assert!(!production(RDKafkaErrorCode::UnknownTopicOrPartition).is_retriable());
    }

    mod acknowledgement {
        use super::*;

        const TIMED_OUT: KafkaError =
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);

        #[tokio::test]
        async fn resolves_when_the_last_record_is_delivered() {
            let acknowledgement = Acknowledgement::expecting(3);
            acknowledgement.report(Ok(()));
            acknowledgement.report(Ok(()));
            let waiting = acknowledgement.all_delivered();
            let mut waiting = std::pin::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            acknowledgement.report(Ok(()));
            assert!(waiting.await.is_ok());
        }

        #[tokio::test]
        async fn fails_at_the_first_failed_record() {
            let acknowledgement = Acknowledgement::expecting(3);
            acknowledgement.report(Ok(()));
            acknowledgement.report(Err(&TIMED_OUT));
            let result = acknowledgement.all_delivered().await;
            assert!(matches!(result, Err(TIMED_OUT)), "{result:?}");
        }

        #[tokio::test]
        async fn the_waiting_request_is_woken_by_reports_from_another_thread() {
            let acknowledgement = Acknowledgement::expecting(2);
            let reporter = acknowledgement.clone();
            std::thread::spawn(move || {
                for _ in 0..2 {
                    std::thread::sleep(Duration::from_millis(20));
                    reporter.report(Ok(()));
                }
            });
            let delivered =
                tokio::time::timeout(Duration::from_secs(10), acknowledgement.all_delivered());
            assert!(delivered.await.expect("woken").is_ok());
        }
    }

    #[test]
    fn batch_payloads_are_split_at_their_ends() {
        let batch = Batch {
            key: "s".into(),
            payloads: b"aabccc".to_vec(),
            ends: vec![2, 3, 6],
        };
        assert_eq!(
            batch.payloads().collect::<Vec<_>>(),
            [&b"aa"[..], b"b", b"ccc"]
        );
    }
}
