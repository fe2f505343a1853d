//! The publisher: the producer the requests share, its replacement when it
//! cannot publish any more, and dead letters.

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{DeliveryResult, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Statistics};

use super::config::{ConfigError, message_timeout, producer_config};
use super::delivery::{Acknowledgement, Batch, PublishError, is_fencing};
use super::events::ServedProducer;
use super::topic::{self, Record};
use crate::avro::{RecordSchema, SCHEMA_FINGERPRINT_HEADER, SCHEMA_NAME_HEADER};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::outage::OutageLog;

/// Headers of a dead letter: why the callback was refused.
pub const DEAD_LETTER_REASON_HEADER: &CStr = c"dead_letter.reason";
/// Headers of a dead letter: the JSON path at fault, when known.
pub const DEAD_LETTER_FIELD_HEADER: &CStr = c"dead_letter.field";

/// The producer's side of librdkafka's events: statistics reports go to the
/// metrics and the idempotence watch, delivery reports to the publication they
/// belong to, error events to the outage log. A fatal error or a fencing
/// refusal also wakes the Kafka watcher (`renewal_due`), which replaces the
/// producer then rather than at its next tick.
pub struct BridgeContext {
    metrics: Arc<Metrics>,
    outage: Arc<OutageLog>,
    idempotence: IdempotenceWatch,
    renewal_due: Arc<tokio::sync::Notify>,
}

impl BridgeContext {
    fn new(
        metrics: Arc<Metrics>,
        outage: Arc<OutageLog>,
        renewal_due: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            metrics,
            outage,
            idempotence: IdempotenceWatch::default(),
            renewal_due,
        }
    }
}

impl ClientContext for BridgeContext {
    /// librdkafka raises an error event each time it fails to reach a broker,
    /// dozens a second while Kafka is away: they are counted and summarised (see
    /// [`crate::outage`]), not logged one by one as rdkafka's default does.
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // librdkafka raises a fatal error as an error event with the error's
        // own code (rdkafka does not expose the event's fatal flag). For a
        // producer, the idempotence errors come as error events only when they
        // are fatal (otherwise in delivery reports); waking the watcher for
        // nothing would cost one metadata request.
        if code.is_some_and(|code| {
            code == RDKafkaErrorCode::Fatal
                || code == RDKafkaErrorCode::OutOfOrderSequenceNumber
                || code == RDKafkaErrorCode::UnknownProducerId
                || is_fencing(code)
        }) {
            self.renewal_due.notify_one();
        }
        let code = code.map_or_else(|| "Unknown".to_owned(), |code| format!("{code:?}"));
        self.outage.client_error(&code, reason);
    }

    /// librdkafka writes a `FAIL` line for each broker connection it loses or
    /// cannot open: kept for the outage log's lines, written at debug level
    /// only. Everything else as rdkafka does by default.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "FAIL" {
            self.outage.connection_failed(message);
            tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}");
        } else {
            DefaultClientContext.log(level, facility, message);
        }
    }

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
        if self.idempotence.delivered(result) {
            self.renewal_due.notify_one();
        }
        acknowledgement.report(result);
    }
}

/// The headers every record carries: the name and fingerprint of the schema it
/// is encoded with, for consumers without a Schema Registry.
pub fn record_headers() -> [(&'static CStr, &'static [u8]); 2] {
    let schema = RecordSchema::get();
    [
        (SCHEMA_NAME_HEADER, schema.full_name().as_bytes()),
        (SCHEMA_FINGERPRINT_HEADER, schema.fingerprint().as_bytes()),
    ]
}

// Where the producer's handle on each topic is (see `ServedProducer::topics`):
// the records topic, then the dead-letter topic if there is one.
const RECORDS_TOPIC: usize = 0;
const DEAD_LETTER_TOPIC: usize = 1;

/// librdkafka's producer, its delivery reports served on the runtime (see
/// [`super::events`]).
type BridgeProducer = ServedProducer<BridgeContext>;

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
    /// the producer fenced, a delivered record clears the mark. Returns whether
    /// the report was such a refusal.
    pub fn delivered(&self, result: Result<(), &KafkaError>) -> bool {
        match result {
            // Loaded first: the delivery path then writes nothing shared.
            Ok(()) if self.fenced.load(Ordering::Relaxed) => {
                self.fenced.store(false, Ordering::Relaxed);
                false
            }
            Err(KafkaError::MessageProduction(code)) if is_fencing(*code) => {
                self.fenced.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
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

impl Renewal {
    /// The reason as the metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            Renewal::Fatal(_) => "fatal",
            Renewal::Fenced => "fenced",
            Renewal::NoProducerId => "no_producer_id",
        }
    }
}

/// Publishes batches to the push error topic and waits for their acknowledgement.
///
/// The producer can be replaced while requests use it, when it is unusable:
/// after a fatal error, when the broker fences it, or when it stays without a
/// producer id although Kafka answers. Rather than needing a restart, the bridge then starts a fresh
/// producer (new producer id) and retires the old one (see `retire`). It
/// never does so for backpressure (a full queue, a slow broker) or for a
/// failing dead-letter topic: the same producer id is what lets the broker
/// drop duplicates of retried records and keeps one stream's records in order.
pub struct Publisher {
    producer: std::sync::RwLock<Arc<BridgeProducer>>,
    client_config: ClientConfig,
    metrics: Arc<Metrics>,
    outage: Arc<OutageLog>,
    /// The topics each producer takes handles on, at `RECORDS_TOPIC` and
    /// `DEAD_LETTER_TOPIC`.
    topics: Vec<String>,
    ack_timeout: Duration,
    /// librdkafka's own bound on a record (`message.timeout.ms`), for
    /// [`Self::deliver`].
    message_timeout: Duration,
    last_renewal: std::sync::Mutex<Option<Instant>>,
    /// Woken by every producer's context when it cannot publish any more.
    renewal_due: Arc<tokio::sync::Notify>,
}

impl Publisher {
    /// Creates the producer. No network I/O happens here; librdkafka connects in
    /// the background. Called in a tokio runtime, where its delivery reports
    /// are served.
    pub fn new(
        config: &KafkaConfig,
        brokers: &str,
        metrics: Arc<Metrics>,
        outage: Arc<OutageLog>,
    ) -> Result<Self, ConfigError> {
        let client_config = producer_config(config, brokers)?;
        let dead_letter_topic = config.dead_letter_topic.iter().filter(|t| !t.is_empty());
        let topics: Vec<String> = std::iter::once(&config.topic)
            .chain(dead_letter_topic)
            .cloned()
            .collect();
        let renewal_due = Arc::new(tokio::sync::Notify::new());
        let context = BridgeContext::new(metrics.clone(), outage.clone(), renewal_due.clone());
        let producer = Self::create_producer(&client_config, context, &topics)?;
        Ok(Self {
            producer: std::sync::RwLock::new(producer),
            client_config,
            metrics,
            outage,
            topics,
            ack_timeout: config.ack_timeout(),
            message_timeout: message_timeout(config),
            last_renewal: std::sync::Mutex::new(None),
            renewal_due,
        })
    }

    /// A producer with handles on `topics`, its events served on the runtime.
    fn create_producer(
        config: &ClientConfig,
        context: BridgeContext,
        topics: &[String],
    ) -> KafkaResult<Arc<BridgeProducer>> {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        ServedProducer::create(config, context, &topics)
    }

    /// Resolves when the producer has shown that it cannot publish any more (a
    /// fatal error, a fencing refusal): the moment for [`Self::renew_if_stuck`]
    /// rather than the watcher's next tick. A signal given while nobody waits
    /// is kept for the next wait.
    pub async fn renewal_due(&self) {
        self.renewal_due.notified().await;
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
        let context = BridgeContext::new(
            self.metrics.clone(),
            self.outage.clone(),
            self.renewal_due.clone(),
        );
        let fresh = match Self::create_producer(&self.client_config, context, &self.topics) {
            Ok(fresh) => fresh,
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
        self.metrics.count_producer_renewal(renewal.reason());
        retire(old, self.ack_timeout);
        Some(renewal)
    }

    pub fn topic(&self) -> &str {
        &self.topics[RECORDS_TOPIC]
    }

    /// Sends every record of `batch` and resolves once Kafka has acknowledged all
    /// of them, or fails at the first refusal, a full queue, or the
    /// acknowledgement deadline (librdkafka may still deliver the records
    /// after that: see `MIN_MESSAGE_TIMEOUT_MS`).
    pub async fn publish(&self, batch: &Batch) -> Result<(), PublishError> {
        self.send_records(batch, self.ack_timeout).await
    }

    /// [`Self::publish`], waiting for librdkafka's final answer on every record
    /// (at most `message.timeout.ms`) rather than the acknowledgement deadline:
    /// for the spool's drainer, which publishes a batch again when this fails,
    /// so that a batch is not sent again while librdkafka still delivers it.
    pub async fn deliver(&self, batch: &Batch) -> Result<(), PublishError> {
        // The margin covers a report that comes late.
        let deadline = self.message_timeout + Duration::from_secs(5);
        self.send_records(batch, deadline).await
    }

    async fn send_records(&self, batch: &Batch, deadline: Duration) -> Result<(), PublishError> {
        self.send_all(
            RECORDS_TOPIC,
            Some(batch.key.as_bytes()),
            batch.payloads(),
            &record_headers(),
            deadline,
        )
        .await
    }

    /// Whether invalid callbacks are kept in a dead-letter topic.
    pub fn has_dead_letter_topic(&self) -> bool {
        self.topics.len() > DEAD_LETTER_TOPIC
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
        if !self.has_dead_letter_topic() {
            return Ok(());
        }
        let reason = (DEAD_LETTER_REASON_HEADER, reason.as_bytes());
        let field = field.map(|field| (DEAD_LETTER_FIELD_HEADER, field.as_bytes()));
        let headers = [reason].into_iter().chain(field).collect::<Vec<_>>();
        let key = Some(key.as_bytes());
        let body = std::iter::once(body);
        self.send_all(DEAD_LETTER_TOPIC, key, body, &headers, self.ack_timeout)
            .await
    }

    /// Sends `payloads` to `topic` (`RECORDS_TOPIC` or `DEAD_LETTER_TOPIC`),
    /// each with `key` and `headers`, and waits for every acknowledgement, at
    /// most `deadline`.
    async fn send_all<'p>(
        &self,
        topic: usize,
        key: Option<&[u8]>,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
        headers: &[(&CStr, &[u8])],
        deadline: Duration,
    ) -> Result<(), PublishError> {
        let acknowledgement = Acknowledgement::expecting(payloads.len());
        {
            // Held only while enqueueing, never across the wait below: a
            // replaced producer must be dropped by its retiring thread, since
            // dropping one blocks, never by a request on an async worker.
            let producer = self.producer();
            let topic = &producer.topics()[topic];
            for payload in payloads {
                let record = Record {
                    key,
                    payload,
                    headers,
                };
                // Records already enqueued still go out; the retry CSS makes after
                // our 503 duplicates them, which `event_id` lets consumers undo.
                topic::send(&producer, topic, &record, acknowledgement.clone())
                    .map_err(PublishError::classify)?;
            }
        }
        tokio::time::timeout(deadline, acknowledgement.all_delivered())
            .await
            .map_err(|_| PublishError::Timeout(deadline))?
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
            .fetch_metadata(Some(self.topic()), timeout)
            .map_err(|e| e.to_string())?;
        match metadata.topics().first() {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => Ok(()),
            Some(topic) => Err(format!("topic {}: {:?}", self.topic(), topic.error())),
            None => Err(format!("topic {} not in metadata", self.topic())),
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

#[cfg(test)]
mod tests {
    use super::*;

    mod renewal {
        use super::*;
        use futures::FutureExt;
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
            let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
            let outage = Arc::new(OutageLog::new(TOPIC, AN_HOUR, metrics.clone()));
            Publisher::new(&config, brokers, metrics, outage).unwrap()
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
            // The watcher is woken for it, not left to its next tick (the
            // timeout only bounds a failing test).
            tokio::time::timeout(Duration::from_secs(10), publisher.renewal_due())
                .await
                .expect("a fatal error asks for a renewal");

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
            assert!(
                publisher.renewal_due().now_or_never().is_none(),
                "a healthy producer asks for nothing"
            );

            cluster.request_errors(
                rdkafka::types::RDKafkaApiKey::Produce,
                &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
            );
            let error = publisher.publish(&batch(2)).await.unwrap_err();
            assert!(
                publisher.renewal_due().now_or_never().is_some(),
                "the refusal asked for a renewal at once"
            );
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

        use rdkafka::error::RDKafkaErrorCode;

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
}
