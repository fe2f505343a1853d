//! What the log says while the bridge cannot do its job, kept to a few lines
//! however long it lasts and however much traffic there is.
//!
//! An outage reads as transitions, not as a line per event:
//!
//! - one line when Kafka becomes unreachable (with librdkafka's last reason),
//!   one when it is back (how long it was away, how many callbacks were refused
//!   meanwhile), and a summary every interval while it lasts;
//! - callbacks refused for the bridge's own state or Kafka's (503 `kafka_unavailable`,
//!   `overloaded`, `schema_unavailable`, 500 `kafka_refused`) are counted by reason
//!   and summarised once per interval;
//! - librdkafka's error events (it raises one each time it fails to reach the
//!   brokers) are counted by error code, and its lines about failed broker
//!   connections kept at debug level; the last of each is quoted in the lines
//!   above, none is written one by one.
//!
//! Every event is still counted in the metrics (`css_bridge_failed_callbacks_total`,
//! `css_bridge_kafka_client_errors_total`, `css_bridge_kafka_reachable`). Refusals
//! a sender must fix (400, 401, 413) are not summarised: each keeps its own line
//! (see `http::callback`).
//!
//! [`Tracker`] is the pure state machine (it returns the [`Line`]s to write);
//! [`OutageLog`] shares one between the HTTP handlers, the producer's librdkafka
//! thread and the Kafka watcher, and writes its lines.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::css::rejection::cut_to;
use crate::metrics::Metrics;

/// Longest librdkafka reason kept for a line; its messages are short, this only
/// bounds what a line can carry.
const MAX_REASON_BYTES: usize = 512;

/// A line the log should carry, with its facts.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Kafka answered for the first time since start-up.
    Reachable,
    /// Kafka stopped answering; callbacks get 503 until it is back, or go to
    /// the spool when there is one.
    Unreachable {
        reason: String,
        connection_failure: Option<String>,
    },
    /// Kafka answers again after an outage.
    Back {
        down_for: Duration,
        refused: u64,
        client_errors: u64,
    },
    /// Kafka is still unreachable: the periodic summary during an outage.
    StillUnreachable {
        down_for: Duration,
        refused: ReasonCounts,
        client_errors: ReasonCounts,
        reason: String,
        connection_failure: Option<String>,
    },
    /// What happened in the last interval while Kafka was reachable: refusals by
    /// reason, librdkafka errors by code (say, one broker of three away).
    Summary {
        interval: Duration,
        refused: ReasonCounts,
        client_errors: ReasonCounts,
        last_client_error: Option<String>,
    },
}

/// ReasonCounts by name, written `a=3 b=1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasonCounts(BTreeMap<String, u64>);

impl ReasonCounts {
    fn add(&mut self, name: &str) {
        match self.0.get_mut(name) {
            Some(count) => *count += 1,
            None => {
                self.0.insert(name.to_owned(), 1);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ReasonCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, count) in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{name}={count}")?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// Kafka as the watcher last saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kafka {
    /// Not checked yet.
    Unknown,
    Reachable,
    Unreachable {
        since: Instant,
        /// Refusals since `since`.
        refused: u64,
        /// librdkafka error events since `since`.
        client_errors: u64,
    },
}

/// The events of an outage folded into the few [`Line`]s worth writing. Pure:
/// time comes in as arguments, lines go out as return values.
#[derive(Debug)]
pub struct Tracker {
    kafka: Kafka,
    /// Since the last summary.
    refused: ReasonCounts,
    client_errors: ReasonCounts,
    /// librdkafka's latest error event, `code: reason`.
    last_client_error: Option<String>,
    /// librdkafka's latest word on a broker connection (its `FAIL` log line),
    /// which names the broker and what failed.
    last_connection_failure: Option<String>,
    last_summary: Instant,
}

impl Tracker {
    pub fn new(now: Instant) -> Self {
        Self {
            kafka: Kafka::Unknown,
            refused: ReasonCounts::default(),
            client_errors: ReasonCounts::default(),
            last_client_error: None,
            last_connection_failure: None,
            last_summary: now,
        }
    }

    /// librdkafka reported an error event: counted, its reason kept.
    pub fn client_error(&mut self, code: &str, reason: &str) {
        self.client_errors.add(code);
        self.last_client_error = Some(cut_to(format!("{code}: {reason}"), MAX_REASON_BYTES));
        if let Kafka::Unreachable { client_errors, .. } = &mut self.kafka {
            *client_errors += 1;
        }
    }

    /// librdkafka lost or could not open a connection to a broker.
    pub fn connection_failed(&mut self, message: &str) {
        self.last_connection_failure = Some(cut_to(message.to_owned(), MAX_REASON_BYTES));
    }

    /// A callback was refused for the bridge's or Kafka's state, for `reason`.
    pub fn refused(&mut self, reason: &str) {
        self.refused.add(reason);
        if let Kafka::Unreachable { refused, .. } = &mut self.kafka {
            *refused += 1;
        }
    }

    /// The watcher checked Kafka (its topic's metadata): `Err` carries why it
    /// did not answer. Returns a line on a change only.
    pub fn kafka_checked(&mut self, result: Result<(), &str>, now: Instant) -> Option<Line> {
        match (self.kafka, result) {
            (Kafka::Unknown, Ok(())) => {
                self.kafka = Kafka::Reachable;
                Some(Line::Reachable)
            }
            (Kafka::Reachable, Ok(())) | (Kafka::Unreachable { .. }, Err(_)) => None,
            (
                Kafka::Unreachable {
                    since,
                    refused,
                    client_errors,
                },
                Ok(()),
            ) => {
                self.kafka = Kafka::Reachable;
                Some(Line::Back {
                    down_for: now.saturating_duration_since(since),
                    refused,
                    client_errors,
                })
            }
            (Kafka::Unknown | Kafka::Reachable, Err(error)) => {
                self.kafka = Kafka::Unreachable {
                    since: now,
                    refused: 0,
                    client_errors: 0,
                };
                Some(Line::Unreachable {
                    reason: self.reason(error),
                    connection_failure: self.last_connection_failure.clone(),
                })
            }
        }
    }

    /// The summary of the interval that ends `now`, if there is anything to
    /// say; starts the next interval.
    pub fn summarise(&mut self, now: Instant) -> Option<Line> {
        let interval = now.saturating_duration_since(self.last_summary);
        self.last_summary = now;
        let refused = std::mem::take(&mut self.refused);
        let client_errors = std::mem::take(&mut self.client_errors);
        match self.kafka {
            Kafka::Unreachable { since, .. } => Some(Line::StillUnreachable {
                down_for: now.saturating_duration_since(since),
                refused,
                client_errors,
                reason: self.reason("no answer to metadata requests"),
                connection_failure: self.last_connection_failure.clone(),
            }),
            _ if refused.is_empty() && client_errors.is_empty() => None,
            _ => Some(Line::Summary {
                interval,
                refused,
                last_client_error: self.last_client_error.clone(),
                client_errors,
            }),
        }
    }

    /// librdkafka's last reason, which names the broker and what failed; the
    /// watcher's own error when librdkafka has said nothing.
    fn reason(&self, fallback: &str) -> String {
        self.last_client_error
            .clone()
            .unwrap_or_else(|| fallback.to_owned())
    }
}

/// The [`Tracker`] shared by the service, writing its lines and counting every
/// event in the metrics.
pub struct OutageLog {
    topic: String,
    interval: Duration,
    metrics: Arc<Metrics>,
    tracker: Mutex<Tracker>,
    /// Whether callbacks Kafka cannot take go to the spool (not 503).
    spooled: bool,
}

impl OutageLog {
    /// Summaries every `interval` (see [`OutageLog::run_summaries`]).
    pub fn new(topic: &str, interval: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            topic: topic.to_owned(),
            interval,
            metrics,
            tracker: Mutex::new(Tracker::new(Instant::now())),
            spooled: false,
        }
    }

    /// Callbacks Kafka cannot take go to a spool: the lines say so.
    pub fn spooled(mut self, spooled: bool) -> Self {
        self.spooled = spooled;
        self
    }

    /// librdkafka's error event (`ClientContext::error`). Called on librdkafka's
    /// threads; never blocks for long.
    pub fn client_error(&self, code: &str, reason: &str) {
        self.metrics.count_kafka_client_error(code);
        self.tracker().client_error(code, reason);
    }

    /// A callback answered 5xx for `reason` (the error kind of its answer).
    pub fn refused(&self, reason: &'static str) {
        self.metrics.count_failed_callback(reason);
        self.tracker().refused(reason);
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
            } if self.spooled => tracing::warn!(
                topic,
                reason,
                connection_failure,
                "Kafka unreachable: callbacks are kept in the spool until it is back"
            ),
            Line::Unreachable {
                reason,
                connection_failure,
            } => tracing::warn!(
                topic,
                reason,
                connection_failure,
                "Kafka unreachable: not ready, callbacks are answered 503 until it is back"
            ),
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
            } => tracing::warn!(
                topic,
                down_for_secs = down_for.as_secs(),
                refused = %refused,
                client_errors = %client_errors,
                reason,
                connection_failure,
                "Kafka still unreachable"
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

    const S: Duration = Duration::from_secs(1);

    fn tracker() -> (Tracker, Instant) {
        let start = Instant::now();
        (Tracker::new(start), start)
    }

    #[test]
    fn an_outage_is_two_transitions_whatever_happens_in_between() {
        let (mut d, t0) = tracker();
        assert_eq!(d.kafka_checked(Ok(()), t0), Some(Line::Reachable));
        assert_eq!(d.kafka_checked(Ok(()), t0 + S), None);

        d.connection_failed("b1:9092/1: Connect to ipv4#10.0.0.1:9092 failed");
        d.client_error("AllBrokersDown", "1/1 brokers are down");
        let line = d.kafka_checked(Err("metadata timed out"), t0 + 2 * S);
        assert_eq!(
            line,
            Some(Line::Unreachable {
                reason: "AllBrokersDown: 1/1 brokers are down".into(),
                connection_failure: Some("b1:9092/1: Connect to ipv4#10.0.0.1:9092 failed".into()),
            }),
            "librdkafka's reason, not the watcher's"
        );
        for _ in 0..1000 {
            d.client_error("BrokerTransportFailure", "Connect failed");
            d.refused("kafka_unavailable");
            assert_eq!(d.kafka_checked(Err("metadata timed out"), t0 + 3 * S), None);
        }
        let back = d.kafka_checked(Ok(()), t0 + 62 * S);
        assert_eq!(
            back,
            Some(Line::Back {
                down_for: 60 * S,
                refused: 1000,
                client_errors: 1000
            })
        );
    }

    #[test]
    fn without_a_librdkafka_reason_the_watchers_error_is_the_reason() {
        let (mut d, t0) = tracker();
        assert_eq!(
            d.kafka_checked(Err("Meta data fetch error: timed out"), t0),
            Some(Line::Unreachable {
                reason: "Meta data fetch error: timed out".into(),
                connection_failure: None,
            })
        );
    }

    #[test]
    fn the_summary_during_an_outage_counts_the_interval_by_reason_and_code() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Err("timed out"), t0);
        d.refused("kafka_unavailable");
        d.refused("kafka_unavailable");
        d.refused("overloaded");
        d.client_error("AllBrokersDown", "1/1 brokers are down");
        let Some(Line::StillUnreachable {
            down_for,
            refused,
            client_errors,
            reason,
            ..
        }) = d.summarise(t0 + 30 * S)
        else {
            panic!("a summary while Kafka is away");
        };
        assert_eq!(down_for, 30 * S);
        assert_eq!(refused.to_string(), "kafka_unavailable=2 overloaded=1");
        assert_eq!(client_errors.to_string(), "AllBrokersDown=1");
        assert_eq!(reason, "AllBrokersDown: 1/1 brokers are down");

        // The next interval starts empty, and is summarised as long as the
        // outage lasts, even with nothing refused.
        let Some(Line::StillUnreachable {
            down_for, refused, ..
        }) = d.summarise(t0 + 60 * S)
        else {
            panic!("a summary while Kafka is away");
        };
        assert_eq!((down_for, refused.total()), (60 * S, 0));
    }

    #[test]
    fn a_quiet_interval_writes_nothing_and_a_busy_one_one_line() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Ok(()), t0);
        assert_eq!(d.summarise(t0 + 30 * S), None);
        for _ in 0..500 {
            d.refused("overloaded");
        }
        d.refused("schema_unavailable");
        d.client_error("BrokerTransportFailure", "b3:9092/3: Connect failed");
        assert_eq!(
            d.summarise(t0 + 60 * S),
            Some(Line::Summary {
                interval: 30 * S,
                refused: ReasonCounts(
                    [("overloaded".into(), 500), ("schema_unavailable".into(), 1)].into()
                ),
                client_errors: ReasonCounts([("BrokerTransportFailure".into(), 1)].into()),
                last_client_error: Some("BrokerTransportFailure: b3:9092/3: Connect failed".into()),
            })
        );
        assert_eq!(d.summarise(t0 + 90 * S), None);
    }

    #[test]
    fn refusals_before_the_outage_is_seen_are_not_counted_as_during_it() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Ok(()), t0);
        d.refused("kafka_unavailable");
        d.kafka_checked(Err("timed out"), t0 + S);
        d.refused("kafka_unavailable");
        let Some(Line::Back { refused, .. }) = d.kafka_checked(Ok(()), t0 + 2 * S) else {
            panic!("back");
        };
        assert_eq!(refused, 1);
    }

    #[test]
    fn a_long_reason_is_cut() {
        let (mut d, t0) = tracker();
        d.client_error("Fail", &"é".repeat(1000));
        d.connection_failed(&"ü".repeat(1000));
        let Some(Line::Unreachable {
            reason,
            connection_failure,
        }) = d.kafka_checked(Err("x"), t0)
        else {
            panic!("unreachable");
        };
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(connection_failure.unwrap().len() <= MAX_REASON_BYTES);
    }
}
