//! The outage log's pure state machine: events in, the [`Line`]s to write out.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::Refusal;
use crate::css::rejection::cut_to;

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
        /// The brokers answer but refuse the bridge (see [`Refusal`]).
        cause: Option<Refusal>,
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
        cause: Option<Refusal>,
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
        /// The refusal the lines have named so far.
        cause: Option<Refusal>,
    },
}

/// One of librdkafka's latest words, aged by the summaries written while Kafka
/// answers: it is kept through the summary after it is said and goes at the
/// next, unless said again. So it still names an outage that begins seconds
/// after a summary, and never one that begins long after its cause.
#[derive(Debug, Default)]
struct Recent {
    text: Option<String>,
    /// A summary went by since it was said.
    aged: bool,
}

impl Recent {
    fn set(&mut self, text: String) {
        (self.text, self.aged) = (Some(text), false);
    }

    fn get(&self) -> Option<String> {
        self.text.clone()
    }

    fn age(&mut self) {
        if self.aged {
            self.text = None;
        }
        self.aged = self.text.is_some();
    }
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
    last_client_error: Recent,
    /// librdkafka's latest word on a broker connection (its `FAIL` log line),
    /// which names the broker and what failed.
    last_connection_failure: Recent,
    /// The watcher's latest error, while Kafka does not answer it.
    last_check_error: Option<String>,
    /// librdkafka's latest error event that was a [`Refusal`], `code: reason`,
    /// since Kafka last answered.
    last_refusal: Option<(Refusal, String)>,
    last_summary: Instant,
}

impl Tracker {
    pub fn new(now: Instant) -> Self {
        Self {
            kafka: Kafka::Unknown,
            refused: ReasonCounts::default(),
            client_errors: ReasonCounts::default(),
            last_client_error: Recent::default(),
            last_connection_failure: Recent::default(),
            last_check_error: None,
            last_refusal: None,
            last_summary: now,
        }
    }

    /// librdkafka reported an error event: counted, its reason kept. Returns
    /// the refusal of the bridge it stands for, if any.
    pub fn client_error(&mut self, code: &str, reason: &str) -> Option<Refusal> {
        self.client_errors.add(code);
        let error = cut_to(format!("{code}: {reason}"), MAX_REASON_BYTES);
        let refusal = Refusal::of(code, reason);
        if let Some(refusal) = refusal {
            self.last_refusal = Some((refusal, error.clone()));
        }
        self.last_client_error.set(error);
        if let Kafka::Unreachable { client_errors, .. } = &mut self.kafka {
            *client_errors += 1;
        }
        refusal
    }

    /// The brokers refused the bridge for `refusal`, as the Kafka watcher
    /// found (not a librdkafka error event, so not counted as one).
    pub fn refused_by_kafka(&mut self, refusal: Refusal, reason: &str) {
        self.last_refusal = Some((refusal, cut_to(reason.to_owned(), MAX_REASON_BYTES)));
    }

    /// librdkafka lost or could not open a connection to a broker.
    pub fn connection_failed(&mut self, message: &str) {
        self.last_connection_failure
            .set(cut_to(message.to_owned(), MAX_REASON_BYTES));
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
        match result {
            // Let in: whatever was refused before is fixed.
            Ok(()) => (self.last_refusal, self.last_check_error) = (None, None),
            Err(error) => self.last_check_error = Some(cut_to(error.to_owned(), MAX_REASON_BYTES)),
        }
        match (self.kafka, result) {
            (Kafka::Unknown, Ok(())) => {
                self.kafka = Kafka::Reachable;
                Some(Line::Reachable)
            }
            (Kafka::Reachable, Ok(())) => None,
            (Kafka::Unreachable { cause: named, .. }, Err(error)) => {
                // An outage that began for another reason (a broker restart)
                // and goes on because the brokers refuse the bridge: one more
                // line, naming the refusal, since the operator's fix is now
                // elsewhere.
                let cause = self.cause();
                if cause.is_none() || cause == named {
                    return None;
                }
                if let Kafka::Unreachable { cause: named, .. } = &mut self.kafka {
                    *named = cause;
                }
                Some(Line::Unreachable {
                    reason: self.reason(error),
                    connection_failure: self.last_connection_failure.get(),
                    cause,
                })
            }
            (
                Kafka::Unreachable {
                    since,
                    refused,
                    client_errors,
                    ..
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
                    cause: self.cause(),
                };
                Some(Line::Unreachable {
                    reason: self.reason(error),
                    connection_failure: self.last_connection_failure.get(),
                    cause: self.cause(),
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
        if let Kafka::Unreachable { since, .. } = self.kafka {
            return Some(Line::StillUnreachable {
                down_for: now.saturating_duration_since(since),
                refused,
                client_errors,
                reason: self.reason("no answer to metadata requests"),
                connection_failure: self.last_connection_failure.get(),
                cause: self.cause(),
            });
        }
        let last_client_error = self.last_client_error.get();
        // Kafka answers: librdkafka's words age, so that a later outage's
        // lines do not quote a cause long gone.
        self.last_client_error.age();
        self.last_connection_failure.age();
        if refused.is_empty() && client_errors.is_empty() {
            return None;
        }
        Some(Line::Summary {
            interval,
            refused,
            last_client_error: last_client_error.filter(|_| !client_errors.is_empty()),
            client_errors,
        })
    }

    /// Why Kafka is away: the brokers' refusal of the bridge when there was
    /// one (librdkafka reports "all brokers down" after it, which would hide
    /// it); else librdkafka's last reason, which names the broker and what
    /// failed; the watcher's own error when librdkafka has said nothing.
    fn reason(&self, fallback: &str) -> String {
        self.last_refusal
            .as_ref()
            .map(|(_, reason)| reason.clone())
            .or_else(|| self.last_client_error.get())
            .or_else(|| self.last_check_error.clone())
            .unwrap_or_else(|| fallback.to_owned())
    }

    /// The refusal behind the outage, if the brokers refused the bridge.
    fn cause(&self) -> Option<Refusal> {
        self.last_refusal.as_ref().map(|(refusal, _)| *refusal)
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
                cause: None,
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
                cause: None,
            })
        );
    }

    /// librdkafka said why just before a summary; the watcher finds Kafka
    /// away just after it: the outage is named by librdkafka's words.
    #[test]
    fn librdkafka_s_words_just_before_a_summary_still_name_the_outage() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Ok(()), t0);
        d.connection_failed("b1:9092/1: Connect to ipv4#10.0.0.1:9092 failed");
        d.client_error("BrokerTransportFailure", "b1:9092/1: Connection refused");
        assert!(d.summarise(t0 + 30 * S).is_some());
        assert_eq!(
            d.kafka_checked(Err("metadata timed out"), t0 + 33 * S),
            Some(Line::Unreachable {
                reason: "BrokerTransportFailure: b1:9092/1: Connection refused".into(),
                connection_failure: Some("b1:9092/1: Connect to ipv4#10.0.0.1:9092 failed".into()),
                cause: None,
            })
        );
    }

    /// A broker restart long ago left librdkafka's words behind: today's
    /// outage is named by its own cause, the watcher's error.
    #[test]
    fn an_old_librdkafka_error_does_not_name_a_later_outage() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Ok(()), t0);
        d.connection_failed("b2:9092/2: Connect to ipv4#10.0.0.2:9092 failed");
        d.client_error("BrokerTransportFailure", "b2:9092/2: Connect failed");
        assert!(d.summarise(t0 + 30 * S).is_some(), "that interval's line");
        assert_eq!(d.summarise(t0 + 60 * S), None);
        d.refused("kafka_unavailable");
        let Some(Line::Summary {
            last_client_error, ..
        }) = d.summarise(t0 + 90 * S)
        else {
            panic!("a summary of the refusal");
        };
        assert_eq!(last_client_error, None, "no client error in the interval");
        assert_eq!(
            d.kafka_checked(Err("topic t: UnknownTopicOrPartition"), t0 + 100 * S),
            Some(Line::Unreachable {
                reason: "topic t: UnknownTopicOrPartition".into(),
                connection_failure: None,
                cause: None,
            })
        );
        let Some(Line::StillUnreachable { reason, .. }) = d.summarise(t0 + 120 * S) else {
            panic!("a summary while Kafka is away");
        };
        assert_eq!(reason, "topic t: UnknownTopicOrPartition");
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
    fn brokers_that_refuse_the_bridge_are_named_as_the_cause_not_hidden_by_all_brokers_down() {
        for (code, reason, cause) in [
            (
                "Authentication",
                "sasl_ssl://b1:9093/bootstrap: SASL authentication error: Authentication failed",
                Refusal::Authentication,
            ),
            (
                "SSL",
                "ssl://b1:9093/bootstrap: SSL handshake failed: certificate verify failed",
                Refusal::Tls,
            ),
            (
                "BrokerTransportFailure",
                "ssl://b1:9093/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 \
                 alert bad certificate: SSL alert number 42",
                Refusal::Tls,
            ),
        ] {
            let (mut d, t0) = tracker();
            d.client_error(code, reason);
            d.client_error("AllBrokersDown", "1/1 brokers are down");
            let Some(Line::Unreachable {
                reason: line_reason,
                cause: line_cause,
                ..
            }) = d.kafka_checked(Err("timed out"), t0)
            else {
                panic!("unreachable");
            };
            assert_eq!(line_cause, Some(cause));
            assert_eq!(line_reason, format!("{code}: {reason}"));
            let Some(Line::StillUnreachable { cause: still, .. }) = d.summarise(t0 + 30 * S) else {
                panic!("a summary while Kafka is away");
            };
            assert_eq!(still, Some(cause), "the summaries name it too");

            // Fixed, then away for another reason (a transport failure that is
            // no TLS alert): no stale cause.
            d.kafka_checked(Ok(()), t0 + 40 * S);
            d.client_error("BrokerTransportFailure", "Connect failed");
            let Some(Line::Unreachable { cause, .. }) = d.kafka_checked(Err("x"), t0 + 50 * S)
            else {
                panic!("unreachable");
            };
            assert_eq!(cause, None);
        }
    }

    #[test]
    fn a_refusal_found_during_an_outage_gets_one_line_of_its_own() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Ok(()), t0);
        d.client_error("AllBrokersDown", "1/1 brokers are down");
        let Some(Line::Unreachable { cause: None, .. }) = d.kafka_checked(Err("x"), t0 + S) else {
            panic!("a broker restart: unreachable, no cause");
        };
        assert_eq!(d.kafka_checked(Err("x"), t0 + 2 * S), None);
        // Back up, but it no longer lets the bridge's principal describe the topic.
        let reason = "topic t: TopicAuthorizationFailed";
        d.refused_by_kafka(Refusal::Authorization, reason);
        assert_eq!(
            d.kafka_checked(Err(reason), t0 + 3 * S),
            Some(Line::Unreachable {
                reason: reason.into(),
                connection_failure: None,
                cause: Some(Refusal::Authorization),
            })
        );
        d.refused_by_kafka(Refusal::Authorization, reason);
        assert_eq!(d.kafka_checked(Err(reason), t0 + 4 * S), None, "named once");
    }

    #[test]
    fn a_topic_the_principal_may_not_describe_is_named_as_an_authorization_cause() {
        let (mut d, t0) = tracker();
        d.kafka_checked(Ok(()), t0);
        let reason = "topic t: TopicAuthorizationFailed";
        d.refused_by_kafka(Refusal::Authorization, reason);
        assert_eq!(
            d.kafka_checked(Err(reason), t0 + S),
            Some(Line::Unreachable {
                reason: reason.into(),
                connection_failure: None,
                cause: Some(Refusal::Authorization),
            })
        );
        assert!(d.client_errors.is_empty(), "no librdkafka error event");
        d.refused_by_kafka(Refusal::Authorization, reason);
        let Some(Line::Back { client_errors, .. }) = d.kafka_checked(Ok(()), t0 + 2 * S) else {
            panic!("back");
        };
        assert_eq!(client_errors, 0, "nor counted as one during the outage");
    }

    #[test]
    fn a_long_reason_is_cut() {
        let (mut d, t0) = tracker();
        d.client_error("Fail", &"é".repeat(1000));
        d.connection_failed(&"ü".repeat(1000));
        let Some(Line::Unreachable {
            reason,
            connection_failure,
            ..
        }) = d.kafka_checked(Err("x"), t0)
        else {
            panic!("unreachable");
        };
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(connection_failure.unwrap().len() <= MAX_REASON_BYTES);
    }
}
