//! Prometheus metrics, served at `GET /metrics`.
//!
//! Every label has a bounded set of values (routes, status codes, error names,
//! reasons, known event types, broker names); per-stream values such as
//! `stream_id` are never labels. All names carry the `css_bridge_` prefix.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use rdkafka::Statistics;

use crate::publish::Load;

mod families;

use families::{CallbackMetrics, KafkaMetrics, SpoolMetrics};

/// Panics survived, by task (see [`count_panic`]). Process-wide, because the
/// code that survives them (the serving of the Kafka client's events, generic
/// over the producer's context; the restarting of background tasks) holds no
/// [`Metrics`]; one process has one `Metrics`, which registers it.
static PANICS: LazyLock<Family<TaskLabel, Counter>> = LazyLock::new(Family::default);

/// The tasks that survive panics, whose series are exposed from the start (at
/// 0: a counter that first appears at 1 shows no increase to an alert).
pub const PANIC_TASKS: [&str; 7] = [
    "http",
    "kafka_events",
    "spool_drainer",
    "kafka_watcher",
    "registration",
    "log_summaries",
    "refusal_lines",
];

/// The label values of the other counters alerts take `increase()` of,
/// exposed at 0 from the start for the same reason as [`PANIC_TASKS`]: the
/// first dead letter, or the first callback failed for Kafka's authorization,
/// would otherwise show no increase. `failed_callbacks`' reasons are the
/// kinds of a 5xx answer (`http::error::ApiError::status`).
pub const FAILED_CALLBACK_REASONS: [&str; 7] = [
    "kafka_unavailable",
    "kafka_refused",
    "kafka_not_authorized",
    "schema_unavailable",
    "spool_unavailable",
    "overloaded",
    "starting",
];
/// `dead_letters`' outcomes (see [`PANIC_TASKS`]).
pub const DEAD_LETTER_OUTCOMES: [&str; 2] = ["written", "failed"];
/// `kafka_refusals`' causes, `outage::Refusal::name` (see [`PANIC_TASKS`]).
pub const KAFKA_REFUSAL_CAUSES: [&str; 3] = ["authentication", "tls", "authorization"];

/// Counts one panic survived in `task`: `http` (a request's handling, its
/// connection closed), `kafka_events` (the handling of the Kafka client's
/// events), or a background task restarted after it (see [`PANIC_TASKS`]).
pub fn count_panic(task: &'static str) {
    PANICS.get_or_create(&TaskLabel { task }).inc();
}

/// CSS event types documented to reach a callback URL; any other value is
/// counted as `other`, so a sender cannot grow the label set.
const KNOWN_EVENT_TYPES: [i64; 8] = [0, 1, 100, 200, 317, 321, 329, 330];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorNameLabel {
    pub error_name: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabel {
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// One producer's cumulative totals in its last librdkafka statistics report:
/// the tx counters grow by the difference to the previous report of the same
/// producer. Each producer keeps its own, since a replaced producer reports
/// beside its successor until it is gone.
#[derive(Debug, Default)]
pub struct StatisticsTotals {
    tx_retries: AtomicI64,
    tx_errors: AtomicI64,
}

/// The bridge's metrics. One instance per process, shared through `Arc`.
pub struct Metrics {
    registry: Registry,
    callbacks: CallbackMetrics,
    kafka: KafkaMetrics,
    spool: SpoolMetrics,
    /// Handles of the counters every callback touches, looked up once here
    /// instead of hashing label sets on every request.
    callback_route: &'static str,
    callback_status: Vec<(u16, Counter)>,
    records_by_type: Vec<Counter>,
}

/// Statuses of `POST /css/callback` whose counters are kept at hand.
const CALLBACK_STATUSES: [u16; 7] = [200, 400, 401, 413, 499, 500, 503];
/// Error types whose counters are kept at hand: the documented 1..=11 (index 0
/// and anything else count as `unknown`).
const KNOWN_ERROR_TYPES: i32 = 11;

impl Metrics {
    /// The metrics, with the counters of `callback_route` (the route every
    /// callback takes) looked up once, here.
    pub fn new(callback_route: &'static str) -> Self {
        let mut registry = Registry::with_prefix("css_bridge");
        let callbacks = CallbackMetrics::registered(&mut registry);
        let kafka = KafkaMetrics::registered(&mut registry);
        let spool = SpoolMetrics::registered(&mut registry);
        registry.register(
            "panics",
            "Panics survived, by task: http (a request's handling: its connection is closed \
             without an answer, and CSS sends the callback again), kafka_events (the handling \
             of the Kafka client's events: \
             the delivery reports being handled are lost, so their callbacks get 503 at their \
             deadline, and after a panic outside a single report the in-flight budget's room \
             they held stays taken until the process restarts), or a background task started \
             again after it (spool_drainer, kafka_watcher, registration, log_summaries, \
             refusal_lines); each is logged at ERROR and is a defect to report",
            PANICS.clone(),
        );
        for task in PANIC_TASKS {
            drop(PANICS.get_or_create(&TaskLabel { task }));
        }
        for reason in FAILED_CALLBACK_REASONS {
            drop(callbacks.failed.get_or_create(&ReasonLabel { reason }));
        }
        for outcome in DEAD_LETTER_OUTCOMES {
            drop(
                callbacks
                    .dead_letters
                    .get_or_create(&OutcomeLabel { outcome }),
            );
        }
        for cause in KAFKA_REFUSAL_CAUSES {
            drop(kafka.kafka_refusals.get_or_create(&CauseLabel { cause }));
        }
        registry.register(
            "build",
            "Build information",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        registry.register(
            "start_time_seconds",
            "When the process started, Unix seconds: for the alerts on losses a replica finds \
             as it starts, whose counters begin above 0",
            started,
        );
        let callback_status = CALLBACK_STATUSES
            .iter()
            .map(|&status| {
                let labels = HttpLabels {
                    route: callback_route,
                    status,
                };
                (status, callbacks.http_requests.get_or_create_owned(&labels))
            })
            .collect();
        let records_by_type = (0..=KNOWN_ERROR_TYPES)
            .map(|error_type| {
                let error_name = crate::css::error_name(error_type);
                callbacks
                    .records_published
                    .get_or_create_owned(&ErrorNameLabel { error_name })
            })
            .collect();
        Self {
            registry,
            callbacks,
            kafka,
            spool,
            callback_route,
            callback_status,
            records_by_type,
        }
    }

    /// Requests being served; see `http::observe`.
    pub fn in_flight(&self) -> &Gauge {
        &self.callbacks.in_flight
    }

    /// Counts one replacement of the Kafka producer.
    pub fn count_producer_renewal(&self, reason: &'static str) {
        self.kafka
            .producer_renewals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one answered request.
    pub fn count_request(&self, route: &'static str, status: u16) {
        if route == self.callback_route
            && let Some((_, counter)) = self.callback_status.iter().find(|(s, _)| *s == status)
        {
            counter.inc();
            return;
        }
        self.callbacks
            .http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    /// Counts `records` acknowledged records of CSS error type `error_type`.
    pub fn count_records(&self, error_type: i32, records: u64) {
        let index = usize::try_from(error_type)
            .ok()
            .filter(|&i| i < self.records_by_type.len())
            .unwrap_or(0);
        self.records_by_type[index].inc_by(records);
    }

    /// Counts a callback refused for its signature, by `reason`.
    pub fn count_signature_failure(&self, reason: &'static str) {
        self.callbacks
            .signature_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a callback refused for the sender to fix (4xx), by `reason`.
    pub fn count_rejection(&self, reason: &'static str) {
        self.callbacks
            .rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a callback answered 5xx for the bridge's or Kafka's state, by
    /// `reason` (the error kind of the answer).
    pub fn count_failed_callback(&self, reason: &'static str) {
        self.callbacks
            .failed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an error event of the Kafka client, by librdkafka's error code.
    pub fn count_kafka_client_error(&self, code: &str) {
        let labels = ErrorLabel {
            error: code.to_owned(),
        };
        self.kafka.kafka_client_errors.get_or_create(&labels).inc();
    }

    /// Counts one sign that the brokers refuse the bridge itself, by cause
    /// (`authentication`, `tls`, `authorization`: see `outage::Refusal`).
    pub fn count_kafka_refusal(&self, cause: &'static str) {
        self.kafka
            .kafka_refusals
            .get_or_create(&CauseLabel { cause })
            .inc();
    }

    pub fn set_kafka_reachable(&self, reachable: bool) {
        self.kafka
            .kafka_reachable
            .get_or_create(&[])
            .set(i64::from(reachable));
    }

    /// The spool's size on disk, waiting records, and when the oldest of them
    /// was spooled (Unix seconds; `None` when none waits).
    pub fn set_spool(&self, bytes: u64, records: u64, oldest: Option<f64>) {
        self.spool.spool_bytes.set(bytes as i64);
        self.spool.spool_records.set(records as i64);
        self.spool.spool_oldest.set(oldest.unwrap_or(0.0));
    }

    pub fn set_spool_capacity(&self, bytes: u64) {
        self.spool.spool_capacity.set(bytes as i64);
    }

    pub fn observe_spool_fsync(&self, took: std::time::Duration) {
        self.spool.spool_fsync.observe(took.as_secs_f64());
    }

    pub fn count_spool_appends(&self, callbacks: u64) {
        self.spool.spool_appends.inc_by(callbacks);
    }

    pub fn count_spool_drained(&self, records: u64) {
        self.spool.spool_drained.inc_by(records);
    }

    pub fn count_spool_damaged(&self, frames: u64) {
        self.spool.spool_damaged.inc_by(frames);
    }

    pub fn count_spool_missing_segment(&self) {
        self.spool.spool_missing_segments.inc();
    }

    pub fn count_spool_read_error(&self) {
        self.spool.spool_read_errors.inc();
    }

    /// Counts a dead-letter write, by `outcome` (`written`, `failed`).
    pub fn count_dead_letter(&self, outcome: &'static str) {
        self.callbacks
            .dead_letters
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Records how long Kafka took to acknowledge a callback's records.
    pub fn observe_publish(&self, took: std::time::Duration) {
        self.callbacks.publish_duration.observe(took.as_secs_f64());
    }

    /// How long the bridge took to answer a callback, from its request head
    /// being read: the time the sender waits, but for the network and the wait
    /// for a worker to read the head.
    pub fn observe_callback(&self, took: std::time::Duration) {
        self.callbacks.callback_duration.observe(took.as_secs_f64());
    }

    /// How long a callback's records took from their enqueueing to the
    /// delivery report of the last one (see `acknowledgement_seconds`).
    pub fn observe_acknowledged(&self, took: std::time::Duration) {
        self.kafka.acknowledgement.observe(took.as_secs_f64());
    }

    pub fn set_ready(&self, ready: bool) {
        self.callbacks.ready.set(i64::from(ready));
    }

    pub fn set_callback_auth_enabled(&self, enabled: bool) {
        self.callbacks.callback_auth_enabled.set(i64::from(enabled));
    }

    /// What the producer holds now: records enqueued and not acknowledged
    /// yet, and how full its in-flight budget is.
    pub fn set_producer_load(&self, load: Load) {
        self.kafka.producer_queue.set(i64::from(load.queued));
        self.kafka.producer_budget_fill.set(load.fill);
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a callback of an event type the bridge does not publish.
    pub fn count_ignored(&self, event_type: i64) {
        let event_type = if KNOWN_EVENT_TYPES.contains(&event_type) {
            event_type.to_string()
        } else {
            "other".to_owned()
        };
        self.callbacks
            .ignored
            .get_or_create(&EventTypeLabel { event_type })
            .inc();
    }

    /// Takes a librdkafka statistics report of the producer whose previous
    /// totals are `totals`.
    pub fn observe_kafka_statistics(&self, statistics: &Statistics, totals: &StatisticsTotals) {
        let fill = |used: u64, limit: u64| used as f64 / limit.max(1) as f64;
        self.kafka.producer_queue_fill.set(
            fill(statistics.msg_cnt, statistics.msg_max)
                .max(fill(statistics.msg_size, statistics.msg_size_max)),
        );
        let (mut retries, mut errors) = (0i64, 0i64);
        let mut reported = Vec::with_capacity(statistics.brokers.len());
        for broker in statistics.brokers.values() {
            retries += broker.txretries as i64;
            errors += broker.txerrs as i64;
            // Bootstrap pseudo-brokers (nodeid -1) have no meaningful rtt.
            if let Some(rtt) = broker.rtt.as_ref().filter(|_| broker.nodeid >= 0) {
                let label = BrokerLabel {
                    broker: broker.name.clone(),
                };
                let set = |family: &Family<BrokerLabel, Gauge<f64, AtomicU64>>, micros: i64| {
                    family.get_or_create(&label).set(micros as f64 / 1e6);
                };
                set(&self.kafka.broker_rtt, rtt.avg);
                set(&self.kafka.broker_rtt_p99, rtt.p99);
                if let Some(queue) = &broker.int_latency {
                    set(&self.kafka.broker_queue_latency_p99, queue.p99);
                }
                reported.push(label.broker);
            }
        }
        // A new producer's first reports know only the bootstrap servers: they
        // say nothing of the brokers.
        if !reported.is_empty() {
            let mut last = (self.kafka.brokers_reported.lock()).unwrap_or_else(|e| e.into_inner());
            for gone in last.iter().filter(|name| !reported.contains(name)) {
                let label = BrokerLabel {
                    broker: gone.clone(),
                };
                self.kafka.broker_rtt.remove(&label);
                self.kafka.broker_rtt_p99.remove(&label);
                self.kafka.broker_queue_latency_p99.remove(&label);
            }
            *last = reported;
        }
        let grow = |counter: &Counter, last: &AtomicI64, total: i64| {
            let previous = last.swap(total, Ordering::Relaxed);
            if total > previous {
                counter.inc_by((total - previous) as u64);
            }
        };
        grow(&self.kafka.tx_retries, &totals.tx_retries, retries);
        grow(&self.kafka.tx_errors, &totals.tx_errors, errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_exposed_for_the_alerts_on_losses_found_at_start() {
        let text = Metrics::new("/css/callback").encode();
        let started = text
            .lines()
            .find_map(|line| line.strip_prefix("css_bridge_start_time_seconds "))
            .and_then(|value| value.parse::<f64>().ok())
            .expect("css_bridge_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - started).abs() < 60.0, "{started} against {now}");
    }

    /// While the spool is read at start-up nothing has checked Kafka: no
    /// series, rather than a 0 that pages the operator for a Kafka that is
    /// fine. The first verdict brings it, without labels.
    #[test]
    fn kafka_reachable_is_absent_until_kafka_is_checked() {
        let metrics = Metrics::new("/css/callback");
        assert!(!metrics.encode().contains("css_bridge_kafka_reachable "));
        metrics.set_kafka_reachable(false);
        assert!(
            metrics
                .encode()
                .contains("\ncss_bridge_kafka_reachable 0\n")
        );
        metrics.set_kafka_reachable(true);
        assert!(
            metrics
                .encode()
                .contains("\ncss_bridge_kafka_reachable 1\n")
        );
    }

    /// An alert's `increase()` sees a counter's first event only if the
    /// series was there, at 0, before it.
    #[test]
    fn the_counters_alerts_watch_are_exposed_at_zero_from_the_start() {
        let text = Metrics::new("/css/callback").encode();
        let series =
            FAILED_CALLBACK_REASONS
                .map(|reason| format!("css_bridge_failed_callbacks_total{{reason=\"{reason}\"}} 0"))
                .into_iter()
                .chain(DEAD_LETTER_OUTCOMES.map(|outcome| {
                    format!("css_bridge_dead_letters_total{{outcome=\"{outcome}\"}} 0")
                }))
                .chain(KAFKA_REFUSAL_CAUSES.map(|cause| {
                    format!("css_bridge_kafka_refusals_total{{cause=\"{cause}\"}} 0")
                }));
        for series in series {
            assert!(text.contains(&series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn exposition_lists_every_metric_with_its_prefix() {
        let metrics = Metrics::new("/css/callback");
        metrics
            .callbacks
            .http_requests
            .get_or_create(&HttpLabels {
                route: "/css/callback",
                status: 200,
            })
            .inc();
        metrics
            .callbacks
            .records_published
            .get_or_create(&ErrorNameLabel {
                error_name: "video_frame_late",
            })
            .inc_by(2);
        let text = metrics.encode();
        for name in [
            "css_bridge_http_requests_total{route=\"/css/callback\",status=\"200\"} 1",
            "css_bridge_records_published_total{error_name=\"video_frame_late\"} 2",
            "css_bridge_publish_duration_seconds_bucket",
            "css_bridge_callback_duration_seconds_bucket",
            "css_bridge_producer_queue_messages",
            "css_bridge_in_flight_requests",
            "css_bridge_ready",
            "css_bridge_callback_auth_enabled 0",
            "css_bridge_kafka_tx_retries_total",
            "css_bridge_kafka_tx_errors_total",
            "css_bridge_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn cached_counters_are_the_labelled_series() {
        let metrics = Metrics::new("/css/callback");
        metrics.count_request("/css/callback", 200);
        metrics.count_request("/css/callback", 418);
        metrics.count_records(6, 3);
        metrics.count_records(99, 1);
        let text = metrics.encode();
        for line in [
            r#"css_bridge_http_requests_total{route="/css/callback",status="200"} 1"#,
            r#"css_bridge_http_requests_total{route="/css/callback",status="418"} 1"#,
            r#"css_bridge_records_published_total{error_name="video_frame_late"} 3"#,
            r#"css_bridge_records_published_total{error_name="unknown"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn unknown_event_types_share_one_label() {
        let metrics = Metrics::new("/css/callback");
        for event_type in [1, 100, 99999, -5, 123456] {
            metrics.count_ignored(event_type);
        }
        let text = metrics.encode();
        assert!(
            text.contains("css_bridge_ignored_callbacks_total{event_type=\"other\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("css_bridge_ignored_callbacks_total{event_type=\"100\"} 1"),
            "{text}"
        );
    }

    /// A librdkafka statistics report, trimmed to one broker, `b1`, with
    /// `retries` requests retried and `edit` made to the broker.
    fn statistics(retries: u64, edit: impl FnOnce(&mut serde_json::Value)) -> Statistics {
        let mut doc: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/librdkafka-statistics.json"
        ))
        .unwrap();
        let broker = &mut doc["brokers"]["b1"];
        broker["txretries"] = retries.into();
        edit(broker);
        serde_json::from_value(doc).expect("a statistics report")
    }

    #[test]
    fn kafka_statistics_feed_rtt_its_tail_and_counters() {
        let metrics = Metrics::new("/css/callback");
        let report = |retries| {
            statistics(retries, |broker| {
                broker["rtt"]["p99"] = 9000.into();
                broker["int_latency"] = broker["rtt"].clone();
                broker["int_latency"]["p99"] = 3000.into();
            })
        };
        let totals = StatisticsTotals::default();
        metrics.observe_kafka_statistics(&report(3), &totals);
        metrics.observe_kafka_statistics(&report(5), &totals);
        let text = metrics.encode();
        assert!(
            text.contains("css_bridge_kafka_tx_retries_total 5"),
            "{text}"
        );
        assert!(
            text.contains("css_bridge_kafka_broker_rtt_seconds{broker=\"b1:9092/1\"} 0.0025"),
            "{text}"
        );
        assert!(
            text.contains("css_bridge_kafka_broker_rtt_p99_seconds{broker=\"b1:9092/1\"} 0.009"),
            "{text}"
        );
        assert!(
            text.contains(
                "css_bridge_kafka_broker_queue_latency_p99_seconds{broker=\"b1:9092/1\"} 0.003"
            ),
            "{text}"
        );
    }

    /// A broker gone from the reports (decommissioned, out of the metadata)
    /// loses its gauges, rather than showing its last round trip for ever,
    /// whichever producer reported it (a replaced one's successor may never
    /// have); a report that knows only the bootstrap servers removes none.
    #[test]
    fn a_broker_no_longer_reported_loses_its_gauges() {
        let metrics = Metrics::new("/css/callback");
        let (old, new) = (StatisticsTotals::default(), StatisticsTotals::default());
        metrics.observe_kafka_statistics(&statistics(0, |_| {}), &old);
        assert!(metrics.encode().contains("broker=\"b1:9092/1\""));

        let mut bootstrap_only = statistics(0, |_| {});
        bootstrap_only
            .brokers
            .values_mut()
            .for_each(|b| b.nodeid = -1);
        metrics.observe_kafka_statistics(&bootstrap_only, &new);
        assert!(metrics.encode().contains("broker=\"b1:9092/1\""), "kept");

        let mut b2_instead = statistics(0, |_| {});
        let mut b2 = b2_instead.brokers.remove("b1").unwrap();
        b2.name = "b2:9092/2".into();
        b2.nodeid = 2;
        b2_instead.brokers.insert("b2".into(), b2);
        metrics.observe_kafka_statistics(&b2_instead, &new);

        let text = metrics.encode();
        assert!(!text.contains("b1:9092/1"), "{text}");
        assert!(text.contains("broker=\"b2:9092/2\""), "{text}");
    }

    /// A replaced producer reports beside its successor until it is gone:
    /// each one's growth counts once.
    #[test]
    fn tx_counters_count_each_producer_s_growth_once() {
        let metrics = Metrics::new("/css/callback");
        let report = |retries| statistics(retries, |_| {});
        let (old, new) = (StatisticsTotals::default(), StatisticsTotals::default());
        metrics.observe_kafka_statistics(&report(1000), &old);
        metrics.observe_kafka_statistics(&report(5), &new);
        metrics.observe_kafka_statistics(&report(1000), &old);
        metrics.observe_kafka_statistics(&report(7), &new);
        let text = metrics.encode();
        assert!(
            text.contains("css_bridge_kafka_tx_retries_total 1007"),
            "{text}"
        );
    }
}
