//! The publisher: the producer the requests share, what it sends (records and
//! dead letters) and how a request waits for it. Its replacement when it cannot
//! publish any more is in [`super::renewal`].

use std::ffi::CStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use tokio::time::Instant;

use super::budget::{InFlightBudget, Room};
use super::config::{ConfigError, callback_records, message_timeout, producer_config};
use super::context::{BridgeContext, BridgeProducer};
use super::delivery::{Acknowledgement, SendError, Timing};
use super::events::ServedProducer;
use super::topic::{self, Record};
use crate::avro::{RecordSchema, SCHEMA_FINGERPRINT_HEADER, SCHEMA_NAME_HEADER};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::outage::{OutageLog, Refusal};
use crate::publish::{Batch, DeadLetter, Delivery, Load, Publish, PublishError};

/// Dead letters may hold at most this part of the in-flight budget (1/4; at
/// least one record, and one letter of any size, where the budget is tiny).
const DEAD_LETTER_SHARE: u32 = 4;

/// Headers of a dead letter: why the callback was refused.
pub const DEAD_LETTER_REASON_HEADER: &CStr = c"dead_letter.reason";
/// Headers of a dead letter: the JSON path at fault, when known.
pub const DEAD_LETTER_FIELD_HEADER: &CStr = c"dead_letter.field";

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

/// The least time left before a publication's deadline for its records to be
/// enqueued: a produce request's linger and round trip. With less, they would
/// be acknowledged after the answer that said they were not.
const MIN_ACKNOWLEDGEMENT: Duration = Duration::from_millis(5);

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
    pub(super) producer: std::sync::RwLock<Arc<BridgeProducer>>,
    pub(super) client_config: ClientConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) outage: Arc<OutageLog>,
    /// The topics each producer takes handles on, at `RECORDS_TOPIC` and
    /// `DEAD_LETTER_TOPIC`.
    pub(super) topics: Vec<String>,
    pub(super) ack_timeout: Duration,
    /// What the requests' batches may hold in the producer at once.
    budget: InFlightBudget,
    /// Dead letters' share of the budget, which they take room in first: see
    /// [`Self::publish_dead_letter`].
    dead_letters: InFlightBudget,
    /// See [`Self::max_callback_records`].
    max_callback_records: u32,
    /// librdkafka's own bound on a record (`message.timeout.ms`), for
    /// [`Self::hand_over`].
    message_timeout: Duration,
    pub(super) last_renewal: std::sync::Mutex<Option<std::time::Instant>>,
    /// Woken by every producer's context when it cannot publish any more.
    pub(super) renewal_due: Arc<tokio::sync::Notify>,
}

impl Publisher {
    /// The most records one callback may have (see
    /// [`super::config::max_callback_records`]), with the producer's queue as
    /// configured.
    pub fn max_callback_records(&self) -> u32 {
        self.max_callback_records
    }

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
        let topics: Vec<String> = std::iter::once(&config.connection.topic)
            .chain(dead_letter_topic)
            .cloned()
            .collect();
        let renewal_due = Arc::new(tokio::sync::Notify::new());
        let context = BridgeContext::new(metrics.clone(), outage.clone(), renewal_due.clone());
        let producer = Self::create_producer(&client_config, context, &topics)
            .map_err(|error| ConfigError::of_creation(error, &config.connection.properties))?;
        let max_callback_records = callback_records(&client_config, &config.in_flight);
        Ok(Self {
            producer: std::sync::RwLock::new(producer),
            client_config,
            metrics,
            outage,
            topics,
            ack_timeout: config.ack_timeout(),
            budget: InFlightBudget::new(config.in_flight.max_records, config.in_flight.max_bytes),
            dead_letters: InFlightBudget::new(
                config.in_flight.max_records / DEAD_LETTER_SHARE,
                config.in_flight.max_bytes / DEAD_LETTER_SHARE,
            ),
            max_callback_records,
            message_timeout: message_timeout(config),
            last_renewal: std::sync::Mutex::new(None),
            renewal_due,
        })
    }

    /// A producer with handles on `topics`, its events served on the runtime.
    pub(super) fn create_producer(
        config: &ClientConfig,
        context: BridgeContext,
        topics: &[String],
    ) -> KafkaResult<Arc<BridgeProducer>> {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        ServedProducer::create(config, context, &topics)
    }

    /// Has librdkafka raise a fatal error on the producer in use, as a broker
    /// that lost the producer's sequence would.
    #[cfg(test)]
    pub(crate) fn fail_fatally_for_test(&self) {
        let reason = std::ffi::CString::new("injected by the test").unwrap();
        // SAFETY: the producer is alive for the call; librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                self.producer().client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// The current producer.
    pub(super) fn producer(&self) -> Arc<BridgeProducer> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is intact.
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn topic(&self) -> &str {
        &self.topics[RECORDS_TOPIC]
    }

    /// Sends every record of `batch` once the in-flight budget has room for
    /// it, and resolves once Kafka has acknowledged all of them, or fails at
    /// the first refusal, a full queue, or `deadline` (the callback's), which
    /// the wait for room counts against (librdkafka may still deliver the
    /// records after that, holding their room: see `MIN_MESSAGE_TIMEOUT_MS`).
    pub async fn publish(&self, batch: &Batch, deadline: Instant) -> Result<(), SendError> {
        let given = deadline.saturating_duration_since(Instant::now());
        let room = self.budget.room_for(batch.len(), batch.payloads.len());
        let room = tokio::time::timeout_at(deadline, room)
            .await
            .map_err(|_| SendError::NoRoom(given))?;
        self.send_records(batch, room, deadline, Timing::Observed)
            .await
    }

    /// Hands the records of `batch` to librdkafka once the in-flight budget
    /// has room for them, and returns their delivery: librdkafka's final
    /// answer on every record rather than the acknowledgement deadline. For
    /// the spool's drainer, which hands batches over in the spool's order and
    /// publishes a batch again when its delivery fails, so that a batch is not
    /// sent again while librdkafka still delivers any of it. The answer comes
    /// within `message.timeout.ms` of the records' enqueueing.
    pub async fn hand_over(&self, batch: &Batch) -> Result<Enqueued, SendError> {
        let room = self
            .budget
            .room_for(batch.len(), batch.payloads.len())
            .await;
        // The margin covers a report that comes late.
        let deadline = Instant::now() + self.message_timeout + Duration::from_secs(5);
        self.enqueue_records(batch, room, deadline, Timing::Unobserved)
            .await
    }

    /// Sends the records of `batch`, which `room` was taken for, by `deadline`.
    async fn send_records(
        &self,
        batch: &Batch,
        room: Room,
        deadline: Instant,
        timing: Timing,
    ) -> Result<(), SendError> {
        (self.enqueue_records(batch, room, deadline, timing).await?)
            .acknowledged()
            .await
    }

    /// Enqueues the records of `batch` on the records topic, holding `room`
    /// until they are reported.
    async fn enqueue_records(
        &self,
        batch: &Batch,
        room: Room,
        deadline: Instant,
        timing: Timing,
    ) -> Result<Enqueued, SendError> {
        let sending = Sending {
            room,
            deadline,
            timing,
        };
        let headers = record_headers();
        let key = Some(batch.key.as_bytes());
        self.enqueue_all(RECORDS_TOPIC, key, batch.payloads(), &headers, sending)
            .await
    }

    /// Whether invalid callbacks are kept in a dead-letter topic.
    pub fn has_dead_letter_topic(&self) -> bool {
        self.topics.len() > DEAD_LETTER_TOPIC
    }

    /// Writes a refused callback to the dead-letter topic under its key, with
    /// the reason in headers, once the in-flight budget has room for it, and
    /// waits for the acknowledgement until `deadline`. The caller makes the
    /// body safe to keep (see `css::redact`). Does nothing (and succeeds)
    /// without a dead-letter topic.
    ///
    /// A letter takes room like a record: a flood of invalid callbacks,
    /// each up to a whole body, would otherwise fill the producer's queue
    /// behind the budget's back, and a valid callback the budget let in would
    /// meet that full queue part-way, its first records published on every
    /// retry. It takes room in the letters' share first, a quarter of the
    /// budget: letters that Kafka holds (a dead-letter topic without a
    /// leader keeps each for `message.timeout.ms`) never take more than that
    /// from valid callbacks. A letter that finds no room by `deadline` is not
    /// written (`NoRoom`, counted as failed): its callback is refused all the
    /// same.
    pub async fn publish_dead_letter(
        &self,
        letter: DeadLetter<'_>,
        deadline: Instant,
    ) -> Result<(), SendError> {
        if !self.has_dead_letter_topic() {
            return Ok(());
        }
        let reason = (DEAD_LETTER_REASON_HEADER, letter.reason.as_bytes());
        let field = letter
            .field
            .map(|field| (DEAD_LETTER_FIELD_HEADER, field.as_bytes()));
        let headers = [reason].into_iter().chain(field).collect::<Vec<_>>();
        let key = Some(letter.key.as_bytes());
        let given = deadline.saturating_duration_since(Instant::now());
        let room = async {
            let share = self.dead_letters.room_for(1, letter.body.len()).await;
            let room = self.budget.room_for(1, letter.body.len()).await;
            room.within(share)
        };
        let room = tokio::time::timeout_at(deadline, room)
            .await
            .map_err(|_| SendError::NoRoom(given))?;
        let body = std::iter::once(letter.body);
        let sending = Sending {
            room,
            deadline,
            timing: Timing::Unobserved,
        };
        (self
            .enqueue_all(DEAD_LETTER_TOPIC, key, body, &headers, sending)
            .await?)
            .acknowledged()
            .await
    }

    /// Enqueues `payloads` for `topic` (`RECORDS_TOPIC` or
    /// `DEAD_LETTER_TOPIC`), each with `key` and `headers`; their
    /// acknowledgement is awaited through what it returns.
    async fn enqueue_all<'p>(
        &self,
        topic: usize,
        key: Option<&[u8]>,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
        headers: &[(&CStr, &[u8])],
        sending: Sending,
    ) -> Result<Enqueued, SendError> {
        let Sending {
            room,
            deadline,
            timing,
        } = sending;
        let given = deadline.saturating_duration_since(Instant::now());
        // Records enqueued with no time left for their acknowledgement would
        // be answered as timed out and still go out, and the sender's retry
        // (or the spool's) would duplicate them for certain.
        if given < MIN_ACKNOWLEDGEMENT {
            return Err(SendError::Timeout(given));
        }
        let records = payloads.len();
        let acknowledgement = Acknowledgement::expecting(records, timing, Some(room));
        let mut enqueued = 0;
        let mut refused = None;
        {
            // The lock is held while enqueueing, not a clone of the producer
            // taken before: a renewal swaps the producer under the write lock,
            // so every record enqueued on the replaced one was enqueued before
            // the swap, and the retiring thread's purge, which comes after it,
            // reaches it if it is still in the producer's queue. Never held
            // across a wait (nor is the producer: a replaced producer must be
            // dropped by its retiring thread, since dropping one blocks).
            let producer = self.producer.read().unwrap_or_else(|e| e.into_inner());
            let topic = &producer.topics()[topic];
            for payload in payloads {
                let record = Record {
                    key,
                    payload,
                    headers,
                };
                match topic::send(&producer, topic, &record, acknowledgement.clone()) {
                    Ok(()) => enqueued += 1,
                    Err(error) => {
                        refused = Some(SendError::classify(error));
                        break;
                    }
                }
            }
        }
        if let Some(refused) = refused {
            // Records already enqueued still go out; the retry CSS makes
            // after our 503 duplicates them, which `event_id` lets consumers
            // undo. A spooled batch is sent again only once none of it is in
            // librdkafka any more: the failure waits for their reports.
            if timing == Timing::Unobserved && enqueued > 0 {
                acknowledgement.abandon(records - enqueued);
                let reported = acknowledgement.all_delivered();
                let _ = tokio::time::timeout_at(deadline, reported).await;
            }
            return Err(refused);
        }
        Ok(Enqueued {
            acknowledgement,
            deadline,
            given,
        })
    }

    /// Records enqueued and not yet acknowledged.
    pub fn queue_len(&self) -> i32 {
        self.producer().in_flight_count()
    }

    /// Fetches the topic's metadata: Ok when the cluster answers and the topic
    /// exists with partitions. Blocking; for the readiness watcher. A topic
    /// the bridge's principal may not describe is told to the outage log as
    /// an authorization refusal, which its line then names.
    pub fn check_metadata(&self, timeout: Duration) -> Result<(), String> {
        let metadata = self
            .producer()
            .client()
            .fetch_metadata(Some(self.topic()), timeout)
            .map_err(|e| e.to_string())?;
        match metadata.topics().first() {
            Some(topic) if topic.error().is_none() && !topic.partitions().is_empty() => Ok(()),
            Some(topic) => {
                let code = topic.error().map(RDKafkaErrorCode::from);
                let reason = match code {
                    Some(code) => format!("topic {}: {code}", self.topic()),
                    None => format!("topic {} has no partitions", self.topic()),
                };
                if code == Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
                    self.outage
                        .refused_by_kafka(Refusal::Authorization, &reason);
                }
                Err(reason)
            }
            None => Err(format!("topic {} not in metadata", self.topic())),
        }
    }

    /// Waits until every enqueued record is delivered or `timeout` passes; for
    /// shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }
}

/// A publication's records, enqueued: their acknowledgement to await.
pub struct Enqueued {
    acknowledgement: Arc<Acknowledgement>,
    deadline: Instant,
    /// The time the publication was given, for its timeout's error.
    given: Duration,
}

impl Enqueued {
    /// Resolves once Kafka has acknowledged every record, or fails at the
    /// first failure (an unobserved publication's once every report has
    /// come) or at the deadline.
    pub async fn acknowledged(self) -> Result<(), SendError> {
        tokio::time::timeout_at(self.deadline, self.acknowledgement.all_delivered())
            .await
            .map_err(|_| SendError::Timeout(self.given))?
            .map_err(SendError::classify)
    }
}

/// How [`Publisher::enqueue_all`] sends a publication.
struct Sending {
    /// Its room in the in-flight budget, held until its records are reported.
    room: Room,
    /// When its request stops waiting for them.
    deadline: Instant,
    timing: Timing,
}

impl Publisher {
    /// Counts a publication the brokers refused for the bridge's principal's
    /// ACLs (`kafka_refusals{cause="authorization"}`, what
    /// `CssBridgeKafkaNotAuthorized` watches): with a spool such callbacks
    /// are spooled and answered 200, and the spool's drain is refused the
    /// same way, so no 503 says it. The watcher's metadata check counts a
    /// refused Describe; this counts a refused Write. A refused login, also
    /// [`SendError::NotAuthorized`], is not counted here: librdkafka's error
    /// events count it as `authentication`, whose alert names the right fix.
    pub(super) fn count_refusal<T>(&self, result: Result<T, SendError>) -> Result<T, SendError> {
        if let Err(SendError::NotAuthorized(error)) = &result
            && matches!(
                error.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                )
            )
        {
            self.metrics
                .count_kafka_refusal(Refusal::Authorization.name());
        }
        result
    }
}

/// Kafka as the service's seam sees it: [`SendError`]s become
/// [`PublishError`]s by what the caller should do.
impl Publish for Publisher {
    fn publish<'a>(
        &'a self,
        batch: &'a Batch,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let published = Publisher::publish(self, batch, deadline).await;
            Ok(self.count_refusal(published)?)
        })
    }

    fn hand_over<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
        Box::pin(async move {
            let enqueued = self.count_refusal(Publisher::hand_over(self, batch).await)?;
            let delivery: Delivery<'a> =
                Box::pin(async move { Ok(self.count_refusal(enqueued.acknowledged().await)?) });
            Ok(delivery)
        })
    }

    fn keeps_dead_letters(&self) -> bool {
        self.has_dead_letter_topic()
    }

    fn publish_dead_letter<'a>(
        &'a self,
        letter: DeadLetter<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move { Ok(Publisher::publish_dead_letter(self, letter, deadline).await?) })
    }

    fn load(&self) -> Load {
        Load {
            queued: self.queue_len(),
            fill: self.budget.fill(),
        }
    }
}
