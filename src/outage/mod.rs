//! What the log says while the bridge cannot do its job, kept to a few lines
//! however long it lasts and however much traffic there is.
//!
//! An outage reads as transitions, not as a line per event:
//!
//! - one line when Kafka becomes unreachable (with librdkafka's last reason),
//!   one when it is back (how long it was away, how many callbacks were refused
//!   meanwhile), and a summary every interval while it lasts; one more
//!   `Kafka unreachable` line if, during it, the brokers turn out to refuse the
//!   bridge (see below);
//! - callbacks refused for the bridge's own state or Kafka's (503
//!   `kafka_unavailable`, `overloaded`, `schema_unavailable`,
//!   `kafka_not_authorized`, `spool_unavailable`, 500 `kafka_refused`) are
//!   counted by reason and summarised once per interval;
//! - librdkafka's error events (it raises one each time it fails to reach the
//!   brokers) are counted by error code, and its lines about failed broker
//!   connections kept at debug level; the last of each is quoted in the lines
//!   above, none is written one by one;
//! - when the brokers answer but refuse the bridge itself (its credentials,
//!   or a TLS handshake that fails on a certificate), the lines name that
//!   `cause` and quote that refusal, not the "all brokers down" that
//!   librdkafka reports after it: the operator's fix is in the bridge's
//!   configuration, not the network.
//!
//! Every event is still counted in the metrics (`css_bridge_failed_callbacks_total`,
//! `css_bridge_kafka_client_errors_total`, `css_bridge_kafka_reachable`, and the
//! brokers' refusals of the bridge by cause in `css_bridge_kafka_refusals_total`,
//! which the authentication alert watches). Refusals a sender must fix (400,
//! 401, 413) are not summarised: each keeps its own line (see `http::callback`).
//!
//! [`Tracker`] is the pure state machine (it returns the [`Line`]s to write);
//! [`OutageLog`] shares one between the HTTP handlers, the producer's librdkafka
//! thread and the Kafka watcher, and writes its lines.

mod refusal;
mod tracker;

pub use refusal::Refusal;
pub use tracker::{Line, ReasonCounts, Tracker};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// The [`Tracker`] shared by the service, writing its lines and counting every
/// event in the metrics.
pub struct OutageLog {
    topic: String,
    interval: Duration,
    metrics: Arc<Metrics>,
    tracker: Mutex<Tracker>,
    /// What waits while Kafka is away, for the lines to say.
    waiting: Waiting,
}

/// What waits while Kafka is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Callbacks, answered 503 (the replica is not ready).
    Callbacks,
    /// Callbacks, kept in the spool.
    Spooled,
    /// A spool being drained by `spool drain`: no callbacks, no readiness.
    Drain,
}

impl OutageLog {
    /// Summaries every `interval` (see [`OutageLog::run_summaries`]).
    pub fn new(topic: &str, interval: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            topic: topic.to_owned(),
            interval,
            metrics,
            tracker: Mutex::new(Tracker::new(Instant::now())),
            waiting: Waiting::Callbacks,
        }
    }

    /// Callbacks Kafka cannot take go to a spool: the lines say so.
    pub fn spooled(mut self, spooled: bool) -> Self {
        if spooled {
            self.waiting = Waiting::Spooled;
        }
        self
    }

    /// For `spool drain`, which serves no callbacks: the lines say that the
    /// spool waits.
    pub fn draining(mut self) -> Self {
        self.waiting = Waiting::Drain;
        self
    }

    /// librdkafka's error event (`ClientContext::error`). Called on librdkafka's
    /// threads; never blocks for long.
    pub fn client_error(&self, code: &str, reason: &str) {
        self.metrics.count_kafka_client_error(code);
        let refusal = self.tracker().client_error(code, reason);
        if let Some(refusal) = refusal {
            self.metrics.count_kafka_refusal(refusal.name());
        }
    }

    /// A callback answered 5xx for `reason` (the error kind of its answer).
    pub fn refused(&self, reason: &'static str) {
        self.metrics.count_failed_callback(reason);
        self.tracker().refused(reason);
    }

    /// The Kafka watcher found the brokers refusing the bridge for `refusal`;
    /// its check's result follows.
    pub fn refused_by_kafka(&self, refusal: Refusal, reason: &str) {
        self.metrics.count_kafka_refusal(refusal.name());
        self.tracker().refused_by_kafka(refusal, reason);
    }

    /// librdkafka's log line about a failed broker connection
    /// (`ClientContext::log`, facility `FAIL`).
    pub fn connection_failed(&self, message: &str) {
        self.tracker().connection_failed(message);
    }

    /// The Kafka watcher's result.
    pub fn kafka_checked(&self, result: Result<(), &str>) {
        self.metrics.set_kafka_reachable(result.is_ok());
        let line = self.tracker().kafka_checked(result, Instant::now());
        if let Some(line) = line {
            self.write(&line);
        }
    }

    /// Writes a summary every interval, for as long as the process lives.
    pub async fn run_summaries(&self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.summarise();
        }
    }

    /// Writes what the current interval holds, if anything: at shutdown, so that
    /// the summaries account for every refusal.
    pub fn summarise(&self) {
        let line = self.tracker().summarise(Instant::now());
        if let Some(line) = line {
            self.write(&line);
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        // A panic while holding the lock leaves counts, nothing inconsistent.
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, line: &Line) {
        let topic = self.topic.as_str();
        match line {
            Line::Reachable => tracing::info!(topic, "Kafka reachable"),
            Line::Unreachable {
                reason,
                connection_failure,
                cause,
            } => {
                let cause = cause.map(Refusal::name);
                match self.waiting {
                    Waiting::Callbacks => tracing::warn!(
                        topic,
                        cause,
                        reason,
                        connection_failure,
                        "Kafka unreachable: not ready, callbacks are answered 503 until it is back"
                    ),
                    Waiting::Spooled => tracing::warn!(
                        topic,
                        cause,
                        reason,
                        connection_failure,
                        "Kafka unreachable: callbacks are kept in the spool until it is back"
                    ),
                    Waiting::Drain => tracing::warn!(
                        topic,
                        cause,
                        reason,
                        connection_failure,
                        "Kafka unreachable: the spool waits, and is drained once it is back"
                    ),
                }
            }
            Line::Back {
                down_for,
                refused,
                client_errors,
            } => tracing::info!(
                topic,
                down_for_secs = down_for.as_secs(),
                refused,
                client_errors,
                "Kafka reachable again"
            ),
            Line::StillUnreachable {
                down_for,
                refused,
                client_errors,
                reason,
                connection_failure,
                cause,
            } => tracing::warn!(
                topic,
                cause = cause.map(Refusal::name),
                down_for_secs = down_for.as_secs(),
                refused = %refused,
                client_errors = %client_errors,
                reason,
                connection_failure,
                "Kafka still unreachable"
            ),
            // `spool drain` answers no callbacks: its summary has none.
            Line::Summary {
                interval,
                client_errors,
                last_client_error,
                ..
            } if self.waiting == Waiting::Drain => tracing::warn!(
                interval_secs = interval.as_secs(),
                client_errors = %client_errors,
                last_client_error,
                "Kafka client errors in the last interval"
            ),
            Line::Summary {
                interval,
                refused,
                client_errors,
                last_client_error,
            } => tracing::warn!(
                interval_secs = interval.as_secs(),
                refused = %refused,
                client_errors = %client_errors,
                last_client_error,
                "callbacks refused or Kafka client errors in the last interval"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (OutageLog, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new("/css/callback"));
        let log = OutageLog::new("css.push-errors", Duration::from_secs(60), metrics.clone());
        (log, metrics)
    }

    #[test]
    fn a_refused_client_certificate_is_counted_as_a_tls_refusal_not_only_as_a_transport_failure() {
        let (log, metrics) = log();
        log.client_error(
            "BrokerTransportFailure",
            "ssl://b1:9093/1: SSL handshake failed: SSL alert number 42 (bad certificate)",
        );
        log.client_error("BrokerTransportFailure", "b2:9093/2: Connect failed");
        let text = metrics.encode();
        assert!(
            text.contains(r#"css_bridge_kafka_refusals_total{cause="tls"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"css_bridge_kafka_client_errors_total{error="BrokerTransportFailure"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn wrong_credentials_and_a_missing_acl_are_counted_by_cause() {
        let (log, metrics) = log();
        log.client_error("SaslAuthenticationFailed", "Authentication failed");
        log.refused_by_kafka(
            Refusal::Authorization,
            "topic css.push-errors: TopicAuthorizationFailed",
        );
        let text = metrics.encode();
        for line in [
            r#"css_bridge_kafka_refusals_total{cause="authentication"} 1"#,
            r#"css_bridge_kafka_refusals_total{cause="authorization"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
