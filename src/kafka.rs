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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, PurgeConfig, ThreadedProducer,
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

/// librdkafka's property aliases (its CONFIGURATION.md: "Alias for ..."), as
/// alias → canonical name. Properties are normalised to the canonical name
/// before they are checked or set: rust-rdkafka applies properties in hash
/// order, so with an alias and its canonical name both set, which value won
/// would be down to chance, and a guard on one name would miss the other.
///
/// (librdkafka's topic-level `enable.auto.commit` alias is left out: at the
/// global level, where the bridge sets everything, that name is a property of
/// its own.)
const ALIASES: [(&str, &str); 11] = [
    ("bootstrap.servers", "metadata.broker.list"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("sasl.mechanism", "sasl.mechanisms"),
    (
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.id",
    ),
    (
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.secret",
    ),
    ("max.partition.fetch.bytes", "fetch.message.max.bytes"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("retries", "message.send.max.retries"),
    ("compression.type", "compression.codec"),
    ("acks", "request.required.acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
];

/// librdkafka's canonical name of property `name`.
pub fn canonical_property(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical)
}

/// Properties the delivery guarantee depends on (canonical names): the bridge
/// sets them, and refuses configuration that would weaken them.
const GUARANTEED: [(&str, &[&str]); 2] = [
    ("enable.idempotence", &["true"]),
    ("request.required.acks", &["all", "-1"]),
];

/// Properties derived from the bridge's own settings (canonical names); set
/// them through those.
const DERIVED: [(&str, &str); 2] = [
    ("metadata.broker.list", "--kafka-brokers"),
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
    /// The producer hit a fatal error or was fenced; the bridge replaces it by
    /// itself.
    #[error("the Kafka producer failed and is being replaced: {0}")]
    ProducerFailed(KafkaError),
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
            Some(Code::Fatal) => Self::ProducerFailed(error),
            Some(code) if is_fencing(code) => Self::ProducerFailed(error),
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
                | Code::InvalidRequiredAcks,
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
/// metrics and the idempotence watch, delivery reports to the publication they
/// belong to.
pub struct BridgeContext {
    metrics: Arc<Metrics>,
    idempotence: IdempotenceWatch,
}

impl BridgeContext {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            idempotence: IdempotenceWatch::default(),
        }
    }
}

impl ClientContext for BridgeContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(eos) = &statistics.eos {
            let age = Duration::from_millis(u64::try_from(eos.idemp_stateage).unwrap_or(0));
            self.idempotence
                .observe(&eos.idemp_state, age, Instant::now());
        }
        self.metrics.observe_kafka_statistics(&statistics);
    }
}

impl rdkafka::producer::ProducerContext for BridgeContext {
    type DeliveryOpaque = Arc<Acknowledgement>;

    fn delivery(&self, result: &DeliveryResult<'_>, acknowledgement: Arc<Acknowledgement>) {
        let result = result.as_ref().map(drop).map_err(|(error, _)| error);
        self.idempotence.delivered(result);
        acknowledgement.report(result);
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

/// Least time between two renewals, so that a flapping cluster does not make the
/// bridge churn through producers.
const RENEWAL_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long an idempotent producer may go without a producer id while Kafka
/// answers, beyond the acknowledgement deadline, before it is replaced. After
/// records time out, librdkafka first waits up to that deadline for the
/// requests in flight, then bumps its epoch, which takes one round trip.
const NO_PRODUCER_ID_GRACE: Duration = Duration::from_secs(10);

/// What the latest statistics report said about the idempotent producer's
/// producer id.
///
/// After records time out, librdkafka bumps the producer's epoch by itself
/// (state `DrainBump`, then `Assigned` again) and, against a healthy cluster,
/// has a usable id again within moments. A producer that stays without one
/// while the cluster answers cannot publish and must be replaced. One that is
/// slow, backpressured or failing for other reasons must not: a new producer id
/// defeats the broker's de-duplication of the old one's retries.
///
/// It also keeps whether the broker refused the producer's identity (fenced
/// it) since the last successful delivery: librdkafka keeps such a producer,
/// and every record it sends is refused again.
#[derive(Debug, Default)]
pub struct IdempotenceWatch {
    latest: std::sync::Mutex<Option<IdempotenceReport>>,
    fenced: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct IdempotenceReport {
    /// When the report was taken.
    at: Instant,
    /// Since when the producer has had no usable producer id; `None` while it
    /// has one.
    without_id_since: Option<Instant>,
}

impl IdempotenceWatch {
    /// Takes the `idemp_state` and `idemp_stateage` of a report taken at `now`.
    pub fn observe(&self, state: &str, state_age: Duration, now: Instant) {
        let without_id_since =
            (state != "Assigned").then(|| now.checked_sub(state_age).unwrap_or(now));
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(IdempotenceReport {
            at: now,
            without_id_since,
        });
    }

    /// Takes one delivery report: a refusal of the producer's id or epoch marks
    /// the producer fenced, a delivered record clears the mark.
    pub fn delivered(&self, result: Result<(), &KafkaError>) {
        match result {
            // Loaded first: the delivery path then writes nothing shared.
            Ok(()) if self.fenced.load(Ordering::Relaxed) => {
                self.fenced.store(false, Ordering::Relaxed);
            }
            Err(KafkaError::MessageProduction(code)) if is_fencing(*code) => {
                self.fenced.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Whether the broker refused the producer's identity since its last
    /// delivered record.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Whether the latest report saw the producer without a producer id for at
    /// least `grace` of a time during which Kafka was reachable (continuously
    /// since `reachable_since`). A state that began in an outage counts only
    /// from the outage's end: the producer gets its chance to recover.
    pub fn is_stuck(&self, reachable_since: Instant, grace: Duration) -> bool {
        match *self.latest.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(IdempotenceReport {
                at,
                without_id_since: Some(since),
            }) => at.saturating_duration_since(since.max(reachable_since)) >= grace,
            _ => false,
        }
    }
}

/// Errors by which the broker refuses the producer's identity: its id is taken
/// over or unknown, or its epoch is stale. Only a new producer id repairs them.
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}

/// Why a producer was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// librdkafka raised a fatal error: the producer cannot publish any more.
    Fatal(String),
    /// The broker refused the producer's id or epoch, and no record has been
    /// delivered since (for instance after an epoch bump the broker did not
    /// accept).
    Fenced,
    /// The idempotent producer stayed without a producer id while Kafka
    /// answered (an epoch bump that did not clear).
    NoProducerId,
}

/// Publishes batches to the push error topic and waits for their acknowledgement.
///
/// The producer can be replaced while requests use it, when it is unusable:
/// after a fatal error, when the broker fences it, or when it stays without a
/// producer id although Kafka answers. Rather than needing a restart, the bridge then starts a fresh
/// producer (new producer id) and retires the old one (see [`retire`]). It
/// never does so for backpressure (a full queue, a slow broker) or for a
/// failing dead-letter topic: the same producer id is what lets the broker
/// drop duplicates of retried records and keeps one stream's records in order.
pub struct Publisher {
    producer: std::sync::RwLock<Arc<BridgeProducer>>,
    client_config: ClientConfig,
    metrics: Arc<Metrics>,
    topic: String,
    dead_letter_topic: Option<String>,
    ack_timeout: Duration,
    headers: OwnedHeaders,
    last_renewal: std::sync::Mutex<Option<Instant>>,
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
        let producer = client_config.create_with_context(BridgeContext::new(metrics.clone()))?;
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

    /// Replaces the producer when it cannot publish any more: it hit a fatal
    /// error, the broker fenced it (refused its id or epoch, with nothing
    /// delivered since), or it has been without a producer id for a while
    /// although Kafka has been reachable since `reachable_since` (`None`: not reachable now).
    /// Called by the readiness watcher, which knows about reachability; blocks
    /// briefly (creating a producer), so it runs off the async workers. Returns
    /// why it renewed, if it did.
    pub fn renew_if_stuck(&self, reachable_since: Option<Instant>) -> Option<Renewal> {
        let current = self.producer();
        let grace = self.ack_timeout + NO_PRODUCER_ID_GRACE;
        let renewal = if let Some((_, reason)) = current.client().fatal_error() {
            Renewal::Fatal(reason)
        } else if current.context().idempotence.is_fenced() {
            Renewal::Fenced
        } else if reachable_since
            .is_some_and(|since| current.context().idempotence.is_stuck(since, grace))
        {
            Renewal::NoProducerId
        } else {
            return None;
        };
        drop(current);
        let mut last_renewal = self.last_renewal.lock().unwrap_or_else(|e| e.into_inner());
        if last_renewal.is_some_and(|at| at.elapsed() < RENEWAL_MIN_INTERVAL) {
            return None;
        }
        let fresh = match self
            .client_config
            .create_with_context(BridgeContext::new(self.metrics.clone()))
        {
            Ok(fresh) => Arc::new(fresh),
            Err(error) => {
                tracing::error!(%error, "cannot create a replacement Kafka producer");
                return None;
            }
        };
        tracing::warn!(
            ?renewal,
            "replacing the Kafka producer, which cannot publish any more"
        );
        let old = std::mem::replace(
            &mut *self.producer.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        *last_renewal = Some(Instant::now());
        retire(old, self.ack_timeout);
        Some(renewal)
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

    /// Writes a refused callback to the dead-letter topic under `key`, with the
    /// reason in headers, and waits for the acknowledgement. The caller makes
    /// `body` safe to keep (see `css::redact`). Does nothing (and succeeds)
    /// without a dead-letter topic.
    pub async fn publish_dead_letter(
        &self,
        key: &str,
        body: &[u8],
        reason: &str,
        field: Option<&str>,
    ) -> Result<(), PublishError> {
        let Some(topic) = &self.dead_letter_topic else {
            return Ok(());
        };
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
        self.send_all(topic, Some(key), std::iter::once(body), &headers)
            .await
    }

    async fn send_all<'p>(
        &self,
        topic: &str,
        key: Option<&str>,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
        headers: &OwnedHeaders,
    ) -> Result<(), PublishError> {
        let acknowledgement = Acknowledgement::expecting(payloads.len());
        {
            // Held only while enqueueing, never across the wait below: a
            // replaced producer must be dropped by its retiring thread, since
            // dropping one blocks, never by a request on an async worker.
            let producer = self.producer();
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

/// Ends a replaced producer on a thread of its own. It first purges what the
/// producer still holds, queued or in flight, so that none of its retries can
/// reach Kafka after the new producer's records of the same stream (the
/// requests waiting for them answer 503, and CSS retries); then it serves the
/// purge's delivery reports, and drops the producer once no request holds it
/// any more, since dropping a producer blocks.
fn retire(old: Arc<BridgeProducer>, timeout: Duration) {
    let retiring = std::thread::Builder::new()
        .name("retire-producer".into())
        .spawn(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            let _ = old.flush(timeout);
            drop_when_unshared(old);
        });
    if let Err(error) = retiring {
        tracing::error!(%error, "cannot start a thread to retire the replaced producer");
    }
}

/// Drops `shared`'s value on the calling thread, once the caller holds the
/// last reference.
fn drop_when_unshared<T>(mut shared: Arc<T>) {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(value) => return drop(value),
            Err(still_shared) => {
                shared = still_shared;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Settings that cannot produce a working producer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Kafka property `{0}` is set by the bridge from {1}; use that instead")]
    Derived(String, &'static str),
    #[error(
        "Kafka property `{key}={value}` would weaken delivery guarantees; the bridge requires {canonical}={required}"
    )]
    Weakened {
        key: String,
        value: String,
        canonical: &'static str,
        required: &'static str,
    },
    /// Values are not shown: they may be secrets.
    #[error(
        "Kafka properties `{first}` and `{second}` are two names of `{canonical}` with different values; set only one"
    )]
    Conflict {
        first: String,
        second: String,
        canonical: String,
    },
    #[error("cannot use Kafka properties file {path}: {reason}")]
    PropertiesFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("invalid Kafka client configuration: {0}")]
    Client(#[from] KafkaError),
}

/// The bridge's defaults, by canonical name.
const DEFAULTS: [(&str, &str); 5] = [
    ("client.id", "css-kafka-bridge"),
    ("compression.codec", DEFAULT_COMPRESSION),
    ("queue.buffering.max.ms", DEFAULT_LINGER_MS),
    ("queue.buffering.max.kbytes", DEFAULT_QUEUE_MAX_KBYTES),
    ("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS),
];

/// The librdkafka configuration of the bridge's producer: the bridge's defaults,
/// then the user's properties, then the settings the guarantee depends on. Every
/// name is librdkafka's canonical one, so each property is set exactly once.
///
/// A property set twice under the same name keeps the later value (a flag
/// overrides the properties file); set under two names of one property with
/// different values, it is refused.
pub fn producer_config(config: &KafkaConfig, brokers: &str) -> Result<ClientConfig, ConfigError> {
    // (canonical name, name as written, value), in the order first set.
    let mut user: Vec<(String, String, String)> = Vec::new();
    for (key, value) in config.properties()? {
        let canonical = canonical_property(&key).to_owned();
        if let Some((_, flag)) = DERIVED.iter().find(|(derived, _)| *derived == canonical) {
            return Err(ConfigError::Derived(key, flag));
        }
        if let Some((guaranteed, allowed)) = GUARANTEED
            .iter()
            .find(|(guaranteed, _)| *guaranteed == canonical)
            && !allowed.contains(&value.as_str())
        {
            return Err(ConfigError::Weakened {
                key,
                value,
                canonical: guaranteed,
                required: allowed[0],
            });
        }
        match user.iter_mut().find(|(c, _, _)| *c == canonical) {
            Some((_, written, previous)) if *written != key && *previous != value => {
                return Err(ConfigError::Conflict {
                    first: written.clone(),
                    second: key,
                    canonical,
                });
            }
            Some((_, written, previous)) => (*written, *previous) = (key, value),
            None => user.push((canonical, key, value)),
        }
    }
    let mut client = ClientConfig::new();
    for (key, value) in DEFAULTS {
        client.set(key, value);
    }
    for (canonical, _, value) in user {
        client.set(canonical, value);
    }
    for (key, allowed) in GUARANTEED {
        client.set(key, allowed[0]);
    }
    client.set("metadata.broker.list", brokers).set(
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

    /// Producer properties the embedded cluster needs: one produce request in
    /// flight per connection. The mock cluster does not check idempotent
    /// sequence numbers, so with several in flight, a batch it failed could be
    /// followed by a later one it stored, and librdkafka would then take the
    /// failed batch as delivered too (an "implicit ack") where real Kafka
    /// answers OUT_OF_ORDER_SEQUENCE_NUMBER. One in flight costs throughput,
    /// which does not matter for a cluster that is there to try the bridge out.
    pub fn producer_properties() -> [crate::config::KafkaProperty; 1] {
        [crate::config::KafkaProperty {
            key: "max.in.flight.requests.per.connection".to_owned(),
            value: "1".to_owned(),
        }]
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
        assert_eq!(
            get(&client, "request.required.acks").as_deref(),
            Some("all")
        );
        assert_eq!(get(&client, "compression.codec").as_deref(), Some("lz4"));
        assert_eq!(get(&client, "queue.buffering.max.ms").as_deref(), Some("1"));
        assert_eq!(
            get(&client, "metadata.broker.list").as_deref(),
            Some("b:9092")
        );
        assert_eq!(get(&client, "message.timeout.ms").as_deref(), Some("5000"));
    }

    #[test]
    fn any_librdkafka_property_passes_through_under_its_canonical_name() {
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
            get(&client, "sasl.mechanisms").as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(get(&client, "compression.codec").as_deref(), Some("zstd"));
    }

    #[test]
    fn no_property_is_set_under_an_alias() {
        let client = producer_config(
            &kafka_config(&["linger.ms=5", "retries=3", "max.in.flight=2", "acks=-1"]),
            "b:9092",
        )
        .unwrap();
        for (name, _) in client.config_map() {
            assert_eq!(canonical_property(name), name, "{name} is an alias");
        }
        assert_eq!(get(&client, "queue.buffering.max.ms").as_deref(), Some("5"));
        assert_eq!(
            get(&client, "max.in.flight.requests.per.connection").as_deref(),
            Some("2")
        );
    }

    #[test]
    fn the_alias_table_is_librdkafka_s() {
        // librdkafka itself resolves each alias: a value set under the alias is
        // read back under the canonical name.
        let values = [
            "b:1", "3", "PLAIN", "id", "secret", "2048", "7", "4", "zstd", "1", "7000",
        ];
        let mut checked = 0;
        for ((alias, canonical), value) in ALIASES.iter().zip(values) {
            let native = match ClientConfig::new()
                .set(*alias, value)
                .create_native_config()
            {
                Ok(native) => native,
                // OAuth/OIDC needs libcurl, which this build of librdkafka lacks.
                Err(e) if e.to_string().contains("not supported in this build") => continue,
                Err(e) => panic!("{alias}: {e}"),
            };
            assert_eq!(
                native.get(canonical).as_deref().ok(),
                Some(value),
                "{alias} -> {canonical}"
            );
            checked += 1;
        }
        assert!(checked >= 9, "only {checked} aliases checked");
    }

    #[test]
    fn weakening_the_guarantee_is_refused_under_any_name() {
        for property in [
            "acks=1",
            "request.required.acks=0",
            "enable.idempotence=false",
        ] {
            let error = producer_config(&kafka_config(&[property]), "b").unwrap_err();
            assert!(
                matches!(error, ConfigError::Weakened { .. }),
                "{property}: {error}"
            );
        }
        assert!(producer_config(&kafka_config(&["acks=-1"]), "b").is_ok());
        assert!(producer_config(&kafka_config(&["request.required.acks=all"]), "b").is_ok());
    }

    #[test]
    fn derived_properties_are_refused_under_any_name_with_the_flag_to_use() {
        for (property, flag) in [
            ("bootstrap.servers=x:1", "--kafka-brokers"),
            ("metadata.broker.list=x:1", "--kafka-brokers"),
            ("message.timeout.ms=60000", "--kafka-ack-timeout-ms"),
            ("delivery.timeout.ms=60000", "--kafka-ack-timeout-ms"),
        ] {
            let error = producer_config(&kafka_config(&[property]), "b").unwrap_err();
            assert!(error.to_string().contains(flag), "{property}: {error}");
        }
    }

    #[test]
    fn two_names_of_one_property_with_different_values_are_refused() {
        let error = producer_config(
            &kafka_config(&["linger.ms=5", "queue.buffering.max.ms=10"]),
            "b",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Kafka properties `linger.ms` and `queue.buffering.max.ms` are two names of \
             `queue.buffering.max.ms` with different values; set only one"
        );
        // The same value twice is no conflict, and one name set twice keeps the
        // later value (a flag overrides the properties file).
        assert!(
            producer_config(
                &kafka_config(&["linger.ms=5", "queue.buffering.max.ms=5"]),
                "b"
            )
            .is_ok()
        );
        let client = producer_config(&kafka_config(&["linger.ms=5", "linger.ms=9"]), "b").unwrap();
        assert_eq!(get(&client, "queue.buffering.max.ms").as_deref(), Some("9"));
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

    #[test]
    fn a_fatal_producer_error_is_retriable_since_the_producer_is_replaced() {
        let fatal = PublishError::classify(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal));
        assert!(
            matches!(fatal, PublishError::ProducerFailed(_)),
            "{fatal:?}"
        );
        assert!(fatal.is_retriable());
    }

    mod renewal {
        use super::*;
        use rdkafka::mocking::MockCluster;

        const AN_HOUR: Duration = Duration::from_secs(3600);

        const TOPIC: &str = "renewal-test";

        fn publisher(brokers: &str, ack_timeout_ms: u64, properties: &[&str]) -> Publisher {
            let config = KafkaConfig {
                topic: TOPIC.into(),
                properties: properties.iter().map(|p| p.parse().unwrap()).collect(),
                ack_timeout_ms,
                dead_letter_topic: Some("dead-letters".into()),
                ..KafkaConfig::default()
            };
            Publisher::new(&config, brokers, Arc::new(Metrics::new())).unwrap()
        }

        fn batch(records: usize) -> Batch {
            Batch {
                key: "stream".into(),
                payloads: vec![0; records],
                ends: (1..=records).collect(),
            }
        }

        #[tokio::test]
        async fn backpressure_and_dead_letter_failures_never_replace_the_producer() {
            // Nothing listens on port 1: every publication fails.
            let publisher = publisher("127.0.0.1:1", 300, &["queue.buffering.max.messages=2"]);
            for _ in 0..5 {
                let full = publisher.publish(&batch(4)).await.unwrap_err();
                assert!(matches!(full, PublishError::QueueFull), "{full:?}");
                let dead_letter = publisher.publish_dead_letter("k", b"{}", "r", None).await;
                assert!(dead_letter.is_err());
            }
            let reachable_for_an_hour = Instant::now().checked_sub(AN_HOUR);
            assert_eq!(publisher.renew_if_stuck(reachable_for_an_hour), None);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_fatal_error_is_retriable_and_the_producer_is_replaced() {
            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let publisher = publisher(&cluster.bootstrap_servers(), 5000, &[]);
            publisher.publish(&batch(2)).await.expect("published");

            let reason = std::ffi::CString::new("injected by the test").unwrap();
            // SAFETY: the producer is alive for the call; librdkafka copies the reason.
            unsafe {
                rdkafka::bindings::rd_kafka_test_fatal_error(
                    publisher.producer().client().native_ptr(),
                    rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                    reason.as_ptr(),
                );
            }
            let error = publisher.publish(&batch(2)).await.unwrap_err();
            assert!(error.is_retriable(), "{error:?}");

            let renewal = tokio::task::spawn_blocking({
                let publisher = Arc::new(publisher);
                move || (publisher.renew_if_stuck(None), publisher)
            });
            let (renewal, publisher) = renewal.await.unwrap();
            assert!(matches!(renewal, Some(Renewal::Fatal(_))), "{renewal:?}");
            publisher
                .publish(&batch(2))
                .await
                .expect("published by the new producer");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_fenced_producer_is_replaced() {
            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let publisher = publisher(&cluster.bootstrap_servers(), 5000, &[]);
            publisher.publish(&batch(2)).await.expect("published");
            assert_eq!(publisher.renew_if_stuck(None), None, "healthy");

            cluster.request_errors(
                rdkafka::types::RDKafkaApiKey::Produce,
                &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
            );
            let error = publisher.publish(&batch(2)).await.unwrap_err();
            assert!(
                matches!(error, PublishError::ProducerFailed(_)),
                "{error:?}"
            );

            let renewal = tokio::task::spawn_blocking({
                let publisher = Arc::new(publisher);
                move || (publisher.renew_if_stuck(None), publisher)
            });
            let (renewal, publisher) = renewal.await.unwrap();
            assert_eq!(renewal, Some(Renewal::Fenced));
            publisher
                .publish(&batch(2))
                .await
                .expect("published by the new producer");
        }
    }

    mod idempotence_watch {
        use super::*;

        fn refused(code: RDKafkaErrorCode) -> KafkaError {
            KafkaError::MessageProduction(code)
        }

        #[test]
        fn a_fencing_refusal_marks_the_producer_until_a_record_is_delivered() {
            let watch = IdempotenceWatch::default();
            assert!(!watch.is_fenced());
            watch.delivered(Err(&refused(RDKafkaErrorCode::ProducerFenced)));
            assert!(watch.is_fenced());
            watch.delivered(Err(&refused(RDKafkaErrorCode::MessageTimedOut)));
            assert!(watch.is_fenced(), "other failures leave the mark");
            watch.delivered(Ok(()));
            assert!(!watch.is_fenced());
        }

        #[test]
        fn only_refusals_of_the_producer_s_identity_fence() {
            let watch = IdempotenceWatch::default();
            for code in [
                RDKafkaErrorCode::QueueFull,
                RDKafkaErrorCode::MessageTimedOut,
                RDKafkaErrorCode::NotEnoughReplicas,
                RDKafkaErrorCode::AllBrokersDown,
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ] {
                watch.delivered(Err(&refused(code)));
                assert!(!watch.is_fenced(), "{code:?}");
            }
            for code in [
                RDKafkaErrorCode::InvalidProducerEpoch,
                RDKafkaErrorCode::InvalidProducerIdMapping,
            ] {
                watch.delivered(Ok(()));
                watch.delivered(Err(&refused(code)));
                assert!(watch.is_fenced(), "{code:?}");
            }
        }

        const GRACE: Duration = Duration::from_secs(10);

        fn secs(n: u64) -> Duration {
            Duration::from_secs(n)
        }

        #[test]
        fn a_producer_with_an_id_is_never_stuck() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            assert!(!watch.is_stuck(start, GRACE), "no report yet");
            watch.observe("Assigned", secs(600), start + secs(600));
            assert!(!watch.is_stuck(start, GRACE));
        }

        #[test]
        fn an_epoch_bump_that_clears_within_the_grace_is_not_stuck() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            watch.observe("DrainBump", secs(3), start + secs(20));
            assert!(!watch.is_stuck(start, GRACE));
        }

        #[test]
        fn no_id_for_longer_than_the_grace_while_reachable_is_stuck() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            watch.observe("WaitPID", secs(30), start + secs(40));
            assert!(watch.is_stuck(start, GRACE));
        }

        #[test]
        fn time_spent_in_an_outage_does_not_count() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            // Without an id since t=10, Kafka back at t=35, report at t=40.
            watch.observe("RequestPID", secs(30), start + secs(40));
            assert!(!watch.is_stuck(start + secs(35), GRACE));
            watch.observe("RequestPID", secs(40), start + secs(50));
            assert!(watch.is_stuck(start + secs(35), GRACE));
        }
    }

    #[test]
    fn a_retired_value_is_dropped_by_the_retiring_thread_once_unshared() {
        struct Probe(Arc<std::sync::Mutex<Option<std::thread::ThreadId>>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = Some(std::thread::current().id());
            }
        }
        let dropped_on = Arc::new(std::sync::Mutex::new(None));
        let retired = Arc::new(Probe(dropped_on.clone()));
        let held_by_a_request = retired.clone();
        let retiring = std::thread::spawn(move || drop_when_unshared(retired));
        let retiring_id = retiring.thread().id();
        std::thread::sleep(Duration::from_millis(50));
        drop(held_by_a_request);
        retiring.join().unwrap();
        assert_eq!(*dropped_on.lock().unwrap(), Some(retiring_id));
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
