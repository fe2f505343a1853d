//! The producer's librdkafka configuration: the bridge's defaults, the
//! properties users add, and the guards that keep the delivery guarantee
//! (`acks=all`, idempotence, a message timeout derived from the
//! acknowledgement deadline) whatever name a property is given.

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;

use crate::config::{InFlightLimits, KafkaConfig, KafkaProperties, PropertiesFileError};

/// Least time librdkafka keeps trying to deliver a record (`message.timeout.ms`),
/// even after the callback was answered 503 at the acknowledgement deadline:
/// longer than a leader failover takes (a broker that dies unannounced is
/// fenced after Kafka's `broker.session.timeout.ms`, 9 s by default, then a
/// new leader is elected). A record that times out while its produce request
/// may have been stored makes librdkafka bump the producer's epoch, and records
/// it sends again across that bump can be written twice (librdkafka issue
/// #4953): measured on three Apache Kafka nodes with the leader SIGKILLed,
/// duplicates in 2 of 4 runs with the timeout at the 3 s deadline, none with
/// this floor. A record the bridge answered 503 for may so still reach the
/// topic; CSS's retry of it then carries the same `event_id`.
const MIN_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// How long librdkafka tries to deliver a record before it reports it failed:
/// the acknowledgement deadline, or [`MIN_MESSAGE_TIMEOUT_MS`] if longer. With
/// a spool, the deadline itself: a callback Kafka did not acknowledge in time
/// goes to the spool, and its records left in the producer would reach the
/// topic twice; the spool mode's duplicates carry the same `event_id` by
/// design, and a failover's are among them.
pub fn message_timeout(config: &KafkaConfig) -> std::time::Duration {
    let floor = if config.spooled {
        0
    } else {
        MIN_MESSAGE_TIMEOUT_MS
    };
    std::time::Duration::from_millis(config.ack_timeout_ms.max(floor))
}

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
/// because every produce request then waits for the one before it. On Apache
/// Kafka with five requests in flight, 0 ms is cheaper at 200 callbacks/s but
/// costs bridge and broker 55 % more CPU at 8,000 (docs/performance.md,
/// "Batches and linger").
const DEFAULT_LINGER_MS: &str = "1";
/// Produce requests in flight per broker connection: 5, the most an
/// idempotent producer may have (and librdkafka's and the Java client's
/// default), set here so that the choice is visible.
///
/// librdkafka sends one partition per produce request, so every partition a
/// broker leads shares this window: with fewer, a broker leading many
/// partitions makes their batches queue behind each other. Publishing alone
/// against one Apache Kafka node at 90,000 records/s over 24 partitions (the
/// scale profile's records, four runs each): p99.9 8.1–8.8 ms with 5 against
/// 10.3–53.1 with 2, p99 4.1–5.1 against 5.6–19.0, the same CPU per record.
/// `bench/ab` of the bridge there (three rounds at 256 connections): 42.5 CPU
/// µs per callback against 47.3 and p99 26.5 against 27.3 ms, medians. With 3
/// partitions publishing alone's p99 is 1–1.5 ms higher on a warm broker, the
/// bridge's figures alike within the noise; bench/results/measurements.md
/// ("Produce requests in flight") has the table. (2, measured cheaper against
/// the in-memory stand-in broker of earlier benchmarks, was the default
/// before.)
const DEFAULT_MAX_IN_FLIGHT: &str = "5";
/// How often librdkafka reports statistics (broker round-trip times, retries)
/// for the metrics.
const DEFAULT_STATISTICS_INTERVAL_MS: &str = "10000";
/// Upper bound of the producer queue's memory, so the bridge's footprint stays
/// bounded when Kafka slows down (the queue-full error then becomes a 503):
/// 32 MiB, or twice `--kafka-max-in-flight-bytes` when that is more (see
/// [`queue_kbytes`]).
const DEFAULT_QUEUE_MAX_KBYTES: u32 = 32 << 10;

/// The producer queue's bound in KiB: twice what the in-flight budget lets in
/// (the records of callbacks and spooled batches, and dead letters, from
/// their enqueueing to their report: see [`super::budget`]), so that the
/// budget fills first and makes requests wait. librdkafka counts payloads only against this
/// bound, not keys or headers (`rd_kafka_curr_msgs_add` in its
/// `rdkafka_msg.c`), as the budget does. A queue smaller than the budget would
/// refuse the records of a callback the budget let in, on every retry: one
/// whose records alone pass the queue's bound would never be published (nor,
/// spooled, drained).
fn queue_kbytes(config: &KafkaConfig) -> u32 {
    DEFAULT_QUEUE_MAX_KBYTES.max(config.in_flight.max_bytes.div_ceil(1024).saturating_mul(2))
}

/// librdkafka's own default bound on the records in its queue.
const DEFAULT_QUEUE_MAX_MESSAGES: u32 = 100_000;

/// The producer queue's bound in records, for the same reasons as
/// [`queue_kbytes`]: librdkafka's default, or twice the records' budget when
/// that is more. A smaller bound would refuse, part way through, the records
/// of a callback the budget let in: those enqueued before the refusal would
/// still be published, and published again with every retry.
fn queue_messages(config: &KafkaConfig) -> u32 {
    default_queue_messages(&config.in_flight)
}

/// [`queue_messages`] for these limits, the records' bound of a producer
/// queue left at the bridge's default.
pub fn default_queue_messages(in_flight: &InFlightLimits) -> u32 {
    DEFAULT_QUEUE_MAX_MESSAGES.max(in_flight.max_records.saturating_mul(2))
}

/// The most records one callback may have, with a producer queue of
/// `queue_messages` records: the in-flight budget, or half the queue when
/// that is more. A callback beyond the budget waits for all of it, so that
/// its records are alone in the queue (dead letters take room in the budget
/// too), and the other half is a margin; one beyond what the queue holds
/// would be refused part-way on every retry (see `ingest::TooManyRecords`).
pub fn max_callback_records(in_flight: &InFlightLimits, queue_messages: u32) -> u32 {
    in_flight.max_records.max(queue_messages / 2)
}

/// [`max_callback_records`] with the queue `client_config` sets (it always
/// sets one: see [`producer_config`]).
pub fn callback_records(client_config: &ClientConfig, in_flight: &InFlightLimits) -> u32 {
    let queue = client_config.get("queue.buffering.max.messages");
    let queue = queue.and_then(|value| value.trim().parse().ok());
    max_callback_records(
        in_flight,
        queue.unwrap_or_else(|| default_queue_messages(in_flight)),
    )
}

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

/// A property the bridge cannot work with, with some values or any.
struct Unsupported {
    /// Its canonical name.
    name: &'static str,
    /// Whether a value is refused.
    refused: fn(&str) -> bool,
    why: &'static str,
}

/// Properties the bridge cannot work with, whatever else is set.
const UNSUPPORTED: [Unsupported; 4] = [
    Unsupported {
        name: "transactional.id",
        refused: |_| true,
        why: "the bridge publishes with an idempotent producer, not in transactions; \
              a transactional producer would refuse every record",
    },
    Unsupported {
        name: "statistics.interval.ms",
        refused: |value| value.trim().parse::<u64>() == Ok(0),
        why: "the bridge's Kafka metrics and its check for a producer left without a \
              producer id read librdkafka's statistics",
    },
    Unsupported {
        name: "delivery.report.only.error",
        refused: librdkafka_true,
        why: "a callback is answered only once every record is reported delivered; \
              without reports of success every callback would get 503 and be sent again",
    },
    Unsupported {
        name: "partitioner",
        refused: |value| value.trim() == "random",
        why: "a stream's records are kept in order by going to the partition of their \
              key, stream_id; a random partition ignores the key",
    },
];

/// Whether librdkafka reads `value` of a boolean property as true
/// (`rd_kafka_anyconf_set_prop0` in its `rdkafka_conf.c`).
fn librdkafka_true(value: &str) -> bool {
    let value = value.trim();
    ["true", "t", "1"]
        .iter()
        .any(|truth| value.eq_ignore_ascii_case(truth))
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
    /// The value is not shown: it may be a secret.
    #[error("Kafka property `{key}` cannot be used here: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error(transparent)]
    PropertiesFile(#[from] PropertiesFileError),
    /// librdkafka does not know the property. Only the name is shown, and
    /// only a dotted lowercase one, as librdkafka's are: any other may be a
    /// piece of a secret, such as the part after a `;` in a password that
    /// `BRIDGE_KAFKA_PROPERTIES` split there (`sasl.password=p4ss;w0rd=x`).
    #[error(
        "Kafka property {} is unknown to librdkafka, whose names differ from the Java \
         client's (docs/security.md shows SASL and TLS in librdkafka's names)",
        shown_if_a_name(.0)
    )]
    UnknownProperty(String),
    /// Any of the above for a property after one that holds a secret in the
    /// flags' order: whatever its name looks like, it may be the rest of that
    /// secret (`sasl.password=p4ss;acks=0`). Only the secret property's name
    /// is shown (see [`ConfigError::in_context`]).
    #[error(
        "a Kafka property after `{secret}` in --kafka-property or BRIDGE_KAFKA_PROPERTIES is \
         refused (neither its name nor why is shown: it may be the rest of that value, which \
         BRIDGE_KAFKA_PROPERTIES splits at every `;`; a value with one belongs in \
         BRIDGE_KAFKA_PROPERTIES_FILE)"
    )]
    AfterSecret { secret: String },
    /// librdkafka refuses the value. Neither the value nor librdkafka's
    /// description, which quotes it, is shown: it may be a secret.
    #[error("Kafka property `{0}` has a value librdkafka does not accept (the value is not shown)")]
    InvalidValue(String),
    #[error(
        "Kafka property `{key}` ({kbytes} KiB) is below --kafka-max-in-flight-bytes ({budget} KiB): \
         the producer would refuse the records of a callback the bridge let in"
    )]
    QueueBelowBudget {
        key: String,
        kbytes: u64,
        budget: u32,
    },
    #[error(
        "Kafka property `{key}` ({messages} records) is below --kafka-max-in-flight-records \
         ({budget}): the producer would refuse the records of a callback the bridge let in"
    )]
    QueueMessagesBelowBudget {
        key: String,
        messages: u64,
        budget: u32,
    },
    #[error("invalid Kafka client configuration: {0}")]
    Client(KafkaError),
}

/// An unknown property's name, quoted, if it looks like one of librdkafka's
/// (lowercase, with a dot); otherwise a sentence that says why it is not
/// shown.
fn shown_if_a_name(key: &str) -> String {
    let dotted = key.contains('.')
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
    if dotted {
        format!("`{key}`")
    } else {
        "(its name is not shown: it does not look like one of librdkafka's, and may be \
         part of a secret; BRIDGE_KAFKA_PROPERTIES splits at every `;`, so a value with \
         one belongs in BRIDGE_KAFKA_PROPERTIES_FILE)"
            .to_owned()
    }
}

impl ConfigError {
    /// The error, given the properties it is about: one that names a
    /// property after a secret one among the flags becomes
    /// [`Self::AfterSecret`], which names neither it nor its value.
    pub fn in_context(self, properties: &KafkaProperties) -> Self {
        let secret = self
            .properties_named()
            .into_iter()
            .find_map(|name| properties.secret_before(name));
        match secret {
            Some(secret) => Self::AfterSecret {
                secret: secret.to_owned(),
            },
            None => self,
        }
    }

    /// A client's creation error, in the context of its properties (see
    /// [`Self::in_context`]).
    pub fn of_creation(error: KafkaError, properties: &KafkaProperties) -> Self {
        Self::from(error).in_context(properties)
    }

    /// The names of the properties the error's message shows.
    fn properties_named(&self) -> Vec<&str> {
        match self {
            Self::Derived(key, _)
            | Self::Weakened { key, .. }
            | Self::Unsupported { key, .. }
            | Self::UnknownProperty(key)
            | Self::InvalidValue(key)
            | Self::QueueBelowBudget { key, .. }
            | Self::QueueMessagesBelowBudget { key, .. } => vec![key],
            Self::Conflict { first, second, .. } => vec![first, second],
            Self::AfterSecret { .. } | Self::PropertiesFile(_) | Self::Client(_) => Vec::new(),
        }
    }
}

impl From<KafkaError> for ConfigError {
    /// rdkafka's own message for a refused property quotes its value: it is
    /// kept out of the error, which start-up prints.
    fn from(error: KafkaError) -> Self {
        match error {
            KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, _, key, _) => {
                Self::UnknownProperty(key)
            }
            KafkaError::ClientConfig(_, _, key, _) => Self::InvalidValue(key),
            error => Self::Client(error),
        }
    }
}

/// The bridge's defaults, by canonical name (and the queue's bound, from
/// [`queue_kbytes`]).
const DEFAULTS: [(&str, &str); 5] = [
    ("client.id", "css-kafka-bridge"),
    ("compression.codec", DEFAULT_COMPRESSION),
    ("queue.buffering.max.ms", DEFAULT_LINGER_MS),
    (
        "max.in.flight.requests.per.connection",
        DEFAULT_MAX_IN_FLIGHT,
    ),
    ("statistics.interval.ms", DEFAULT_STATISTICS_INTERVAL_MS),
];

/// The librdkafka configuration of the bridge's producer: the bridge's defaults,
/// then the user's properties, then the settings the guarantee depends on. Every
/// name is librdkafka's canonical one, so each property is set exactly once.
///
/// A property set twice under the same name keeps the later value (a flag
/// overrides the properties file); set under two names of one property with
/// different values, it is refused.
///
/// An error about a property after a secret one is told without its name
/// (see [`ConfigError::in_context`]).
pub fn producer_config(config: &KafkaConfig, brokers: &str) -> Result<ClientConfig, ConfigError> {
    checked_producer_config(config, brokers)
        .map_err(|error| error.in_context(&config.connection.properties))
}

/// [`producer_config`], its errors naming any property.
fn checked_producer_config(
    config: &KafkaConfig,
    brokers: &str,
) -> Result<ClientConfig, ConfigError> {
    // (canonical name, name as written, value), in the order first set.
    let mut user: Vec<(String, String, String)> = Vec::new();
    for (key, value) in config.connection.properties.read()? {
        let canonical = canonical_property(&key).to_owned();
        if let Some((_, flag)) = DERIVED.iter().find(|(derived, _)| *derived == canonical) {
            return Err(ConfigError::Derived(key, flag));
        }
        if let Some(unsupported) = UNSUPPORTED
            .iter()
            .find(|unsupported| unsupported.name == canonical && (unsupported.refused)(&value))
        {
            return Err(ConfigError::Unsupported {
                key,
                why: unsupported.why,
            });
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
        if canonical == "queue.buffering.max.kbytes" {
            let budget = config.in_flight.max_bytes.div_ceil(1024);
            // A value that is no number is librdkafka's to refuse.
            if let Ok(kbytes) = value.trim().parse::<u64>()
                && kbytes < u64::from(budget)
            {
                return Err(ConfigError::QueueBelowBudget {
                    key,
                    kbytes,
                    budget,
                });
            }
        }
        if canonical == "queue.buffering.max.messages" {
            let budget = config.in_flight.max_records;
            if let Ok(messages) = value.trim().parse::<u64>()
                && messages < u64::from(budget)
            {
                return Err(ConfigError::QueueMessagesBelowBudget {
                    key,
                    messages,
                    budget,
                });
            }
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
    client.set(
        "queue.buffering.max.kbytes",
        queue_kbytes(config).to_string(),
    );
    client.set(
        "queue.buffering.max.messages",
        queue_messages(config).to_string(),
    );
    for (canonical, _, value) in user {
        client.set(canonical, value);
    }
    for (key, allowed) in GUARANTEED {
        client.set(key, allowed[0]);
    }
    client.set("metadata.broker.list", brokers).set(
        "message.timeout.ms",
        message_timeout(config).as_millis().to_string(),
    );
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InFlightLimits, KafkaConnection, KafkaProperties};

    fn kafka_config(properties: &[&str]) -> KafkaConfig {
        KafkaConfig {
            connection: KafkaConnection {
                properties: KafkaProperties {
                    flags: properties.iter().map(|p| p.parse().unwrap()).collect(),
                    file: None,
                },
                ..KafkaConnection::default()
            },
            ..KafkaConfig::default()
        }
    }

    fn get(config: &ClientConfig, key: &str) -> Option<String> {
        config.get(key).map(str::to_owned)
    }

    /// A callback beyond the budget is alone in the queue but for dead
    /// letters: it may take half of it, and never less than the budget.
    #[test]
    fn a_callback_may_have_the_budget_s_records_or_half_the_queue() {
        let limits = |max_records| InFlightLimits {
            max_records,
            ..InFlightLimits::default()
        };
        let default = limits(16_384);
        let queue = default_queue_messages(&default);
        assert_eq!(max_callback_records(&default, queue), 50_000);
        let large = limits(60_000);
        let queue = default_queue_messages(&large);
        assert_eq!(max_callback_records(&large, queue), 60_000);
        assert_eq!(
            max_callback_records(&default, 20_000),
            16_384,
            "a smaller queue"
        );
    }

    #[test]
    fn the_producer_queue_holds_at_least_twice_the_in_flight_budget() {
        let queue = |max_bytes, properties: &[&str]| {
            let config = KafkaConfig {
                in_flight: InFlightLimits {
                    max_bytes,
                    ..InFlightLimits::default()
                },
                ..kafka_config(properties)
            };
            producer_config(&config, "b:9092")
                .map(|client| get(&client, "queue.buffering.max.kbytes").unwrap())
        };
        assert_eq!(queue(8 << 20, &[]).unwrap(), "32768", "32 MiB by default");
        assert_eq!(queue(48 << 20, &[]).unwrap(), "98304", "twice 48 MiB");
        assert_eq!(
            queue(8 << 20, &["queue.buffering.max.kbytes=65536"]).unwrap(),
            "65536"
        );
        let error = queue(48 << 20, &["queue.buffering.max.kbytes=32768"]).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::QueueBelowBudget {
                    kbytes: 32768,
                    budget: 49152,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn the_producer_queue_holds_at_least_twice_the_records_budget() {
        let queue = |max_records, properties: &[&str]| {
            let config = KafkaConfig {
                in_flight: InFlightLimits {
                    max_records,
                    ..InFlightLimits::default()
                },
                ..kafka_config(properties)
            };
            producer_config(&config, "b:9092")
                .map(|client| get(&client, "queue.buffering.max.messages").unwrap())
        };
        assert_eq!(
            queue(16_384, &[]).unwrap(),
            "100000",
            "librdkafka's default"
        );
        assert_eq!(queue(200_000, &[]).unwrap(), "400000", "twice the budget");
        assert_eq!(
            queue(16_384, &["queue.buffering.max.messages=20000"]).unwrap(),
            "20000"
        );
        let error = queue(16_384, &["queue.buffering.max.messages=2"]).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::QueueMessagesBelowBudget {
                    messages: 2,
                    budget: 16_384,
                    ..
                }
            ),
            "{error}"
        );
        // The largest budget still makes a queue librdkafka takes.
        assert!(queue(crate::config::MAX_IN_FLIGHT_RECORDS, &[]).is_ok());
    }

    #[test]
    fn with_a_spool_the_message_timeout_is_the_acknowledgement_deadline() {
        let config = KafkaConfig {
            spooled: true,
            ..kafka_config(&[])
        };
        let client = producer_config(&config, "b:9092").unwrap();
        assert_eq!(get(&client, "message.timeout.ms").as_deref(), Some("5000"));
    }

    #[test]
    fn the_message_timeout_is_the_acknowledgement_deadline_when_longer_than_a_failover() {
        let config = KafkaConfig {
            ack_timeout_ms: 45_000,
            ..kafka_config(&[])
        };
        let client = producer_config(&config, "b:9092").unwrap();
        assert_eq!(get(&client, "message.timeout.ms").as_deref(), Some("45000"));
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
            get(&client, "max.in.flight.requests.per.connection").as_deref(),
            Some("5")
        );
        assert_eq!(
            get(&client, "metadata.broker.list").as_deref(),
            Some("b:9092")
        );
        assert_eq!(
            get(&client, "message.timeout.ms").as_deref(),
            Some("30000"),
            "a leader failover fits in it, whatever the acknowledgement deadline"
        );
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
    fn properties_the_bridge_cannot_work_with_are_refused_saying_why() {
        for (property, why) in [
            ("transactional.id=bridge-1", "not in transactions"),
            ("statistics.interval.ms=0", "statistics"),
            ("statistics.interval.ms=00", "statistics"),
            ("delivery.report.only.error=true", "reported delivered"),
            ("delivery.report.only.error=T", "reported delivered"),
            ("delivery.report.only.error=1", "reported delivered"),
            ("partitioner=random", "in order"),
        ] {
            let error = producer_config(&kafka_config(&[property]), "b").unwrap_err();
            assert!(
                matches!(error, ConfigError::Unsupported { .. }) && error.to_string().contains(why),
                "{property}: {error}"
            );
            assert!(!error.to_string().contains("bridge-1"), "{error}");
        }
        for allowed in [
            "statistics.interval.ms=5000",
            "delivery.report.only.error=false",
            "partitioner=murmur2_random",
        ] {
            assert!(
                producer_config(&kafka_config(&[allowed]), "b").is_ok(),
                "{allowed}"
            );
        }
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
    fn a_property_librdkafka_refuses_is_named_without_its_value() {
        for (property, name, why) in [
            (
                "sasl.pasword=hunter2",
                "sasl.pasword",
                "unknown to librdkafka",
            ),
            (
                "compression.type=hunter2",
                "compression.codec",
                "does not accept",
            ),
        ] {
            let client = producer_config(&kafka_config(&[property]), "b").unwrap();
            let Err(refused) = client.create_native_config() else {
                panic!("{property} accepted");
            };
            assert!(
                refused.to_string().contains("hunter2"),
                "rdkafka's own: {refused}"
            );
            let shown = ConfigError::from(refused).to_string();
            assert!(shown.contains(name) && shown.contains(why), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    /// `BRIDGE_KAFKA_PROPERTIES` splits at every `;`: a password with one
    /// leaves its second half as a property of its own, and its name, a
    /// piece of the password, is not shown.
    #[test]
    fn an_unknown_name_that_may_be_part_of_a_secret_is_not_shown() {
        let split: Vec<crate::config::KafkaProperty> = "sasl.password=p4ss;W0rd=x"
            .split(';')
            .map(|p| p.parse().unwrap())
            .collect();
        let config = KafkaConfig {
            connection: KafkaConnection {
                properties: KafkaProperties {
                    flags: split,
                    file: None,
                },
                ..KafkaConnection::default()
            },
            ..KafkaConfig::default()
        };
        let client = producer_config(&config, "b").unwrap();
        let Err(refused) = client.create_native_config() else {
            panic!("accepted");
        };
        let shown = ConfigError::from(refused).to_string();
        assert!(shown.contains("unknown to librdkafka"), "{shown}");
        assert!(!shown.contains("W0rd"), "{shown}");
        assert!(shown.contains("BRIDGE_KAFKA_PROPERTIES_FILE"), "{shown}");
    }

    /// A piece that looks like one of librdkafka's names is not shown either
    /// when it comes after a secret, whatever it is refused for: it may be the
    /// rest of it. One that comes after none is, for the typo it most likely
    /// is.
    #[test]
    fn a_property_after_a_secret_is_not_shown_whatever_it_looks_like() {
        let refusal = |properties: &str| {
            let properties = KafkaProperties {
                flags: properties.split(';').map(|p| p.parse().unwrap()).collect(),
                file: None,
            };
            let config = KafkaConfig {
                connection: KafkaConnection {
                    properties: properties.clone(),
                    ..KafkaConnection::default()
                },
                ..KafkaConfig::default()
            };
            let client = producer_config(&config, "b").unwrap();
            let Err(refused) = client.create_native_config() else {
                panic!("accepted: {properties:?}");
            };
            ConfigError::of_creation(refused, &properties).to_string()
        };
        // The bridge's own refusals too: a piece that weakens a guarantee.
        let config = kafka_config(&["sasl.password=p4ss", "acks=0"]);
        let shown = producer_config(&config, "b").unwrap_err().to_string();
        assert!(!shown.contains("acks"), "{shown}");
        assert!(shown.contains("after `sasl.password`"), "{shown}");
        for secret in ["sasl.password", "ssl.key.password", "ssl.key.pem"] {
            let shown = refusal(&format!("{secret}=p4ss;my.s3cret=x"));
            assert!(!shown.contains("my.s3cret"), "{shown}");
            assert!(shown.contains(&format!("after `{secret}`")), "{shown}");
        }
        // The Java client's name, unknown itself: librdkafka names either.
        let shown = refusal("sasl.jaas.config=p4ss;my.s3cret=x");
        assert!(
            !shown.contains("my.s3cret") && !shown.contains("p4ss"),
            "{shown}"
        );
        // Two pieces: librdkafka names one of them, in its hash map's order;
        // the secret named is the first, not a piece that looks like one.
        let shown = refusal("sasl.password=p4ss;x.password=y;more.s3cret=z");
        assert!(
            !shown.contains("s3cret") && !shown.contains("x.password"),
            "{shown}"
        );
        assert!(shown.contains("after `sasl.password`"), "{shown}");
        let shown = refusal("security.protocol=SASL_SSL;sasl.mechanisms.typo=x");
        assert!(shown.contains("`sasl.mechanisms.typo`"), "{shown}");
    }
}
