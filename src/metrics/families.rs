//! The metric families, in three groups, each registered where it is
//! declared: what happens to callbacks, Kafka, the spool.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use super::{
    BrokerLabel, CauseLabel, ErrorLabel, ErrorNameLabel, EventTypeLabel, HttpLabels, OutcomeLabel,
    ReasonLabel,
};

/// The label set of a series without labels, in a [`Family`] so that the
/// series can be absent until it is first set.
pub(super) type NoLabels = [(&'static str, &'static str); 0];

/// What happens to callbacks, and the service's own state.
pub(super) struct CallbackMetrics {
    pub(super) http_requests: Family<HttpLabels, Counter>,
    pub(super) records_published: Family<ErrorNameLabel, Counter>,
    pub(super) publish_duration: Histogram,
    /// Head read to answer, per callback; see `http::observe`.
    pub(super) callback_duration: Histogram,
    /// Requests being served; see `http::observe`.
    pub(super) in_flight: Gauge,
    pub(super) signature_failures: Family<ReasonLabel, Counter>,
    pub(super) rejected: Family<ReasonLabel, Counter>,
    pub(super) failed: Family<ReasonLabel, Counter>,
    pub(super) dead_letters: Family<OutcomeLabel, Counter>,
    pub(super) ignored: Family<EventTypeLabel, Counter>,
    pub(super) ready: Gauge,
    /// 1 when callbacks must be signed, 0 when the bridge runs without keys.
    pub(super) callback_auth_enabled: Gauge,
}

impl CallbackMetrics {
    pub(super) fn registered(r: &mut Registry) -> Self {
        Self {
            http_requests: registered(
                r,
                "http_requests",
                "HTTP requests by route and status",
                Family::default(),
            ),
            records_published: registered(
                r,
                "records_published",
                "Records accepted, by error name: acknowledged by Kafka, or written to the spool",
                Family::default(),
            ),
            publish_duration: registered(
                r,
                "publish_duration_seconds",
                "Time from handing a callback's records to the publisher to its answer, whatever \
             the answer (not for a callback whose client went away first): the wait for room in the in-flight budget, Kafka's acknowledgement, and \
             with a spool the spool's write",
                Histogram::new(latency_buckets()),
            ),
            callback_duration: registered(
                r,
                "callback_duration_seconds",
                "Time from a callback's request head being read to its answer, whatever the answer",
                Histogram::new(latency_buckets()),
            ),
            in_flight: registered(
                r,
                "in_flight_requests",
                "Callbacks being processed",
                Gauge::default(),
            ),
            signature_failures: registered(
                r,
                "signature_failures",
                "Callbacks refused by authentication, by reason",
                Family::default(),
            ),
            rejected: registered(
                r,
                "rejected_callbacks",
                "Callbacks refused before publishing (4xx), by reason",
                Family::default(),
            ),
            failed: registered(
                r,
                "failed_callbacks",
                "Callbacks answered 5xx for the bridge's or Kafka's state, not the sender's, by reason",
                Family::default(),
            ),
            dead_letters: registered(
                r,
                "dead_letters",
                "Invalid callbacks written to the dead-letter topic, by outcome",
                Family::default(),
            ),
            ignored: registered(
                r,
                "ignored_callbacks",
                "Callbacks of other CSS event types, acknowledged and not published",
                Family::default(),
            ),
            ready: registered(
                r,
                "ready",
                "1 when the bridge is ready to take callbacks",
                Gauge::default(),
            ),
            callback_auth_enabled: registered(
                r,
                "callback_auth_enabled",
                "1 when callbacks must carry a valid signature, 0 when they are not authenticated",
                Gauge::default(),
            ),
        }
    }
}

/// The producer and the brokers, from librdkafka's events and statistics.
pub(super) struct KafkaMetrics {
    pub(super) producer_queue: Gauge,
    /// 1 while the Kafka watcher gets answers to its metadata requests; no
    /// series until its first verdict (a family without labels, so that it
    /// can be absent): while the spool is read at start-up, which can take
    /// minutes, nothing has checked Kafka, and a 0 would page the operator
    /// with `CssBridgeKafkaUnreachable` for a Kafka that is fine.
    pub(super) kafka_reachable: Family<NoLabels, Gauge>,
    pub(super) kafka_client_errors: Family<ErrorLabel, Counter>,
    /// The brokers refusing the bridge itself, by cause: what the
    /// authentication alert watches, since a refused client certificate is a
    /// transport failure by its error code (see `outage::Refusal::of`).
    pub(super) kafka_refusals: Family<CauseLabel, Counter>,
    /// The fuller of librdkafka's two queue limits (messages, bytes), 0..1.
    pub(super) producer_queue_fill: Gauge<f64, AtomicU64>,
    /// The fuller of the in-flight budget's two limits, 0..1: the bound the
    /// requests meet before librdkafka's queue (see `kafka::budget`).
    pub(super) producer_budget_fill: Gauge<f64, AtomicU64>,
    /// Enqueue to the last delivery report, per callback: the part of
    /// `publish_duration` that is Kafka's and librdkafka's (and the serving
    /// of its reports), apart from the wait of the request to run again.
    pub(super) acknowledgement: Histogram,
    pub(super) broker_rtt: Family<BrokerLabel, Gauge<f64, AtomicU64>>,
    /// The tail of the same round trips: an average hides the slow produce
    /// requests a callback's p99 waits for.
    pub(super) broker_rtt_p99: Family<BrokerLabel, Gauge<f64, AtomicU64>>,
    /// How long records wait in librdkafka before they go out to a broker:
    /// with the round trips, where a slow acknowledgement's time goes.
    pub(super) broker_queue_latency_p99: Family<BrokerLabel, Gauge<f64, AtomicU64>>,
    /// The brokers the last statistics report listed, of whichever producer
    /// (a replaced one reports beside its successor until it is gone, on the
    /// same cluster): the gauges of those a later report no longer lists (a
    /// broker decommissioned, gone from the metadata) are removed, rather
    /// than showing their last value for ever.
    pub(super) brokers_reported: std::sync::Mutex<Vec<String>>,
    pub(super) tx_retries: Counter,
    pub(super) tx_errors: Counter,
    pub(super) producer_renewals: Family<ReasonLabel, Counter>,
}

impl KafkaMetrics {
    pub(super) fn registered(r: &mut Registry) -> Self {
        Self {
            producer_queue: registered(
                r,
                "producer_queue_messages",
                "Records in the producer queue, not yet acknowledged",
                Gauge::default(),
            ),
            kafka_reachable: registered(
                r,
                "kafka_reachable",
                "1 while Kafka answers the bridge's metadata requests for its topic; absent \
                 until the first check",
                Family::default(),
            ),
            kafka_client_errors: registered(
                r,
                "kafka_client_errors",
                "Error events of the Kafka client (librdkafka), by error code",
                Family::default(),
            ),
            kafka_refusals: registered(
                r,
                "kafka_refusals",
                "Signs that the brokers refuse the bridge itself, by cause: authentication (its SASL \
             credentials), tls (a certificate, the broker's or its own), authorization (its \
             principal may not describe the topic, or a publication was refused its write)",
                Family::default(),
            ),
            producer_queue_fill: registered(
                r,
                "producer_queue_fill_ratio",
                "How full the producer queue is, 0 to 1: the fuller of its message and byte limits \
             (librdkafka statistics); at 1 callbacks get 503",
                Gauge::default(),
            ),
            producer_budget_fill: registered(
                r,
                "producer_budget_fill_ratio",
                "How full the in-flight budget is, 0 to 1: the fuller of its record and byte limits \
             (--kafka-max-in-flight-records, --kafka-max-in-flight-bytes); near 1 callbacks wait \
             for room, and get 503 at their deadline when none comes",
                Gauge::default(),
            ),
            acknowledgement: registered(
                r,
                "kafka_acknowledgement_seconds",
                "Time from enqueueing a callback's records to the delivery report of the last one \
             (dead letters and the spool's drained batches are not counted); publish_duration \
             adds the wait for the request to run again",
                Histogram::new(latency_buckets()),
            ),
            broker_rtt: registered(
                r,
                "kafka_broker_rtt_seconds",
                "Average request round-trip time to each broker (librdkafka statistics)",
                Family::default(),
            ),
            broker_rtt_p99: registered(
                r,
                "kafka_broker_rtt_p99_seconds",
                "99th percentile of the request round-trip times to each broker over the last \
             statistics interval (librdkafka statistics)",
                Family::default(),
            ),
            broker_queue_latency_p99: registered(
                r,
                "kafka_broker_queue_latency_p99_seconds",
                "99th percentile of the time records wait in the producer's queue for each broker \
             (the linger included) over the last statistics interval (librdkafka statistics)",
                Family::default(),
            ),
            brokers_reported: std::sync::Mutex::default(),
            tx_retries: registered(
                r,
                "kafka_tx_retries",
                "Produce request retries (librdkafka statistics)",
                Counter::default(),
            ),
            tx_errors: registered(
                r,
                "kafka_tx_errors",
                "Produce transmission errors (librdkafka statistics)",
                Counter::default(),
            ),
            producer_renewals: registered(
                r,
                "kafka_producer_renewals",
                "Kafka producers replaced because the one in use could not publish any more, \
             by reason (fatal, fenced, no_producer_id)",
                Family::default(),
            ),
        }
    }
}

/// The durable spool.
pub(super) struct SpoolMetrics {
    pub(super) spool_bytes: Gauge,
    pub(super) spool_capacity: Gauge,
    pub(super) spool_records: Gauge,
    /// Unix time (seconds) at which the oldest waiting record was spooled; 0
    /// when none waits.
    pub(super) spool_oldest: Gauge<f64, AtomicU64>,
    pub(super) spool_appends: Counter,
    pub(super) spool_drained: Counter,
    pub(super) spool_damaged: Counter,
    pub(super) spool_missing_segments: Counter,
    pub(super) spool_read_errors: Counter,
    pub(super) spool_fsync: Histogram,
}

impl SpoolMetrics {
    pub(super) fn registered(r: &mut Registry) -> Self {
        Self {
            spool_bytes: registered(
                r,
                "spool_bytes",
                "Bytes the spool takes on disk",
                Gauge::default(),
            ),
            spool_capacity: registered(
                r,
                "spool_capacity_bytes",
                "The spool's size limit; a full spool answers 503",
                Gauge::default(),
            ),
            spool_records: registered(
                r,
                "spool_records",
                "Records in the spool waiting for Kafka",
                Gauge::default(),
            ),
            spool_oldest: registered(
                r,
                "spool_oldest_record_timestamp_seconds",
                "When the oldest record waiting in the spool was spooled (Unix time); 0 when none waits",
                Gauge::default(),
            ),
            spool_appends: registered(
                r,
                "spool_appends",
                "Callbacks written to the spool and answered 200",
                Counter::default(),
            ),
            spool_drained: registered(
                r,
                "spool_drained_records",
                "Spooled records acknowledged by Kafka",
                Counter::default(),
            ),
            spool_damaged: registered(
                r,
                "spool_damaged_frames",
                "Damaged spool frames skipped (a torn write at the end is not counted)",
                Counter::default(),
            ),
            spool_missing_segments: registered(
                r,
                "spool_missing_segments",
                "Times the drainer found a spool segment file gone before it was drained (deleted from under the bridge); the callbacks in it are lost",
                Counter::default(),
            ),
            spool_read_errors: registered(
                r,
                "spool_read_errors",
                "Reads of the spool that failed (tried again every second); the records wait until the disk reads again",
                Counter::default(),
            ),
            // 50 µs .. ~6.6 s: an fsync on a fast disk takes well under a
            // millisecond, on a busy network volume tens of them, and one
            // past the write bound (3 s) must still show as such.
            spool_fsync: registered(
                r,
                "spool_fsync_duration_seconds",
                "Time to write and sync one group of spooled callbacks",
                Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            ),
        }
    }
}

/// `metric`, registered under `name` with `help`.
fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// The buckets of the callbacks' latency histograms (`publish_duration`,
/// `callback_duration`, `kafka_acknowledgement`, alike so that they compare
/// bucket by bucket): 0.5 ms to 32.8 s, doubling. A healthy acknowledgement
/// takes a few milliseconds; a callback may take up to about 20 s (CSS's
/// wait), and one at its deadline must land in a bucket of its own, not past
/// the last.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 17)
}
