//! Kafka settings: brokers, topic, librdkafka properties (flags and a file).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::DEFAULT_TOPIC;

/// Records in the producer for callbacks at once, by default: 256 callbacks of
/// 64 details, far above what CSS's usual few details per callback reach.
pub const DEFAULT_MAX_IN_FLIGHT_RECORDS: u32 = 16_384;
/// The most `--kafka-max-in-flight-records` may be: twice it must stay within
/// what librdkafka takes for `queue.buffering.max.messages`, and a million
/// records (about 250 MB of them) is far beyond any memory limit the bridge
/// runs in.
pub const MAX_IN_FLIGHT_RECORDS: u32 = 1_000_000;
/// Encoded record bytes in the producer for callbacks at once, by default (the
/// records are about 250 bytes each).
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u32 = 8 << 20;
/// The most `--kafka-max-in-flight-bytes` may be: it also bounds one
/// callback's records, which must fit in one frame of the spool with their
/// key and record ends (see `spool::frame`).
pub const MAX_IN_FLIGHT_BYTES: u32 = 48 << 20;
/// The longest `--kafka-ack-timeout-ms`: a second within the 20 s CSS waits
/// for an answer (see `KafkaConfig::ack_timeout_ms`).
pub const MAX_ACK_TIMEOUT_MS: u64 = 19_000;

/// Where Kafka is and how to reach it: the settings of every command that
/// talks to Kafka (`serve`, `tail`, `spool drain`).
#[derive(Debug, Clone, Args)]
pub struct KafkaConnection {
    /// Kafka bootstrap servers (host:port,...). Without it, `serve` starts an
    /// embedded in-memory cluster: for trying the bridge out, not for production.
    #[arg(long = "kafka-brokers", env = "BRIDGE_KAFKA_BROKERS")]
    pub brokers: Option<String>,

    /// Topic that receives one record per push error detail.
    #[arg(long = "kafka-topic", env = "BRIDGE_KAFKA_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,

    #[command(flatten)]
    pub properties: KafkaProperties,
}

/// The user's librdkafka properties, as flags and a file: `check` reads them
/// too, for the producer queue's size.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaProperties {
    /// Any librdkafka client property, as KEY=VALUE (repeatable; in the
    /// environment, separated by `;`), e.g. security.protocol=SASL_SSL.
    #[arg(
        id = "kafka_property",
        value_name = "PROPERTIES",
        long = "kafka-property",
        env = "BRIDGE_KAFKA_PROPERTIES",
        value_delimiter = ';',
        hide_env_values = true,
        value_parser = PropertyParser
    )]
    pub flags: Vec<KafkaProperty>,

    /// File of librdkafka properties, one KEY=VALUE per line (`#` comments), read
    /// at start-up. Meant for secrets such as sasl.password, mounted from a
    /// Kubernetes Secret; its values are never logged.
    #[arg(
        id = "kafka_properties_file",
        value_name = "PROPERTIES_FILE",
        long = "kafka-properties-file",
        env = "BRIDGE_KAFKA_PROPERTIES_FILE"
    )]
    pub file: Option<PathBuf>,
}

impl Default for KafkaConnection {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: DEFAULT_TOPIC.to_owned(),
            properties: KafkaProperties::default(),
        }
    }
}

impl KafkaProperties {
    /// The name of a flag property before the one named `name` that holds a
    /// secret (see [`holds_a_secret`]): the first, since a later one may
    /// itself be a piece of the first one's value (`a;x.password=b;y.z=c`).
    /// Any before `name`, not only the one right before: a value with two
    /// `;` leaves two pieces, and either may be the one refused.
    pub fn secret_before(&self, name: &str) -> Option<&str> {
        let at = self.flags.iter().rposition(|flag| flag.key == name)?;
        self.flags[..at]
            .iter()
            .find(|flag| holds_a_secret(&flag.key))
            .map(|flag| flag.key.as_str())
    }

    /// The properties: the file's first, then the flags', so a flag can
    /// override a file entry.
    pub fn read(&self) -> Result<Vec<(String, String)>, PropertiesFileError> {
        let mut properties = Vec::new();
        if let Some(path) = &self.file {
            let file_error = |reason: String| PropertiesFileError {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            for (number, line) in text.lines().map(str::trim).enumerate() {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let property: KafkaProperty = line
                    .parse()
                    .map_err(|e| file_error(format!("line {}: {e}", number + 1)))?;
                properties.push((property.key, property.value));
            }
        }
        properties.extend(self.flags.iter().map(|p| (p.key.clone(), p.value.clone())));
        Ok(properties)
    }
}

/// What the producer may hold at once: the service's bounds on callbacks in
/// flight, and the size of the producer's queue wherever it publishes
/// (`spool drain` too: the spool's frames were bounded by the service's).
#[derive(Debug, Clone, Copy, Args)]
pub struct InFlightLimits {
    /// Records the producer may hold at once, enqueued and not yet
    /// acknowledged; its queue holds at least twice as many. In `serve`, a
    /// callback that would exceed it waits for room (within the
    /// acknowledgement timeout) instead of being refused: it bounds memory
    /// when callbacks carry hundreds of details. Dead letters take room in it
    /// too, at most a quarter of it. One callback may have this
    /// many records, or half the producer's queue when that is more (50,000
    /// by default); beyond it, 400. `spool drain` and `check` take the
    /// service's value. At most a million.
    #[arg(
        id = "kafka_max_in_flight_records",
        value_name = "RECORDS",
        long = "kafka-max-in-flight-records",
        env = "BRIDGE_KAFKA_MAX_IN_FLIGHT_RECORDS",
        default_value_t = DEFAULT_MAX_IN_FLIGHT_RECORDS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_IN_FLIGHT_RECORDS))
    )]
    pub max_records: u32,

    /// Encoded record bytes the producer may hold at once, as
    /// `--kafka-max-in-flight-records`. In `serve`, also the most one
    /// callback's records may take (beyond it, 400). `spool drain` and `check`
    /// take the service's value: the drain's producer queue must hold the
    /// largest callback the service spooled. At most 48 MiB.
    #[arg(
        id = "kafka_max_in_flight_bytes",
        value_name = "BYTES",
        long = "kafka-max-in-flight-bytes",
        env = "BRIDGE_KAFKA_MAX_IN_FLIGHT_BYTES",
        default_value_t = DEFAULT_MAX_IN_FLIGHT_BYTES,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_IN_FLIGHT_BYTES))
    )]
    pub max_bytes: u32,
}

impl Default for InFlightLimits {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_MAX_IN_FLIGHT_RECORDS,
            max_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
        }
    }
}

/// The producer's settings: the service's, and (with its defaults for the
/// rest) `spool drain`'s.
#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    #[command(flatten)]
    pub connection: KafkaConnection,

    /// A callback's deadline: how long it may wait for room in the in-flight
    /// bounds and for Kafka to acknowledge all its records, together, before
    /// it is answered 503 (its body's read comes on top). CSS gives up on a
    /// callback after about 20 s, so 19 s at most (a callback CSS gave up on
    /// is sent again while its records may still land), 16 s with a spool
    /// (its write comes on top); 100 ms at least, since librdkafka reads a
    /// timeout of 0 as none.
    #[arg(
        long = "kafka-ack-timeout-ms",
        env = "BRIDGE_KAFKA_ACK_TIMEOUT_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(100..=MAX_ACK_TIMEOUT_MS)
    )]
    pub ack_timeout_ms: u64,

    #[command(flatten)]
    pub in_flight: InFlightLimits,

    /// Topic that keeps the raw body and the reason of every authenticated
    /// callback refused as invalid (400), so that nothing CSS sent is silently
    /// dropped. Off when unset or empty. The topic must exist.
    #[arg(long = "dead-letter-topic", env = "BRIDGE_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Whether a spool takes the callbacks Kafka does not acknowledge within
    /// the deadline: set from `--spool-dir`, not a flag of its own.
    /// librdkafka then gives up on a record at the deadline, so that a
    /// spooled callback is not also delivered by the producer later (see
    /// `kafka::config::message_timeout`).
    #[arg(skip)]
    pub spooled: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            connection: KafkaConnection::default(),
            ack_timeout_ms: 5000,
            in_flight: InFlightLimits::default(),
            dead_letter_topic: None,
            spooled: false,
        }
    }
}

impl KafkaConfig {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

/// The Kafka properties file cannot be read, or has a line that is not
/// `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("cannot use Kafka properties file {path}: {reason}")]
pub struct PropertiesFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// One librdkafka property, `KEY=VALUE`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    pub key: String,
    pub value: String,
}

impl std::fmt::Debug for KafkaProperty {
    /// Values may be passwords: only keys are printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<redacted>", self.key)
    }
}

impl FromStr for KafkaProperty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((key, value)) if is_property_name(key.trim()) => Ok(Self {
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            }),
            // The text is not quoted: a line such as `sasl.password: secret`
            // (Java's syntax) holds a secret, and so does its part before an
            // `=` of the secret's own (`sasl.password: c2VjcmV0=`), which is
            // why a name must look like one.
            _ => Err(NOT_KEY_VALUE.to_owned()),
        }
    }
}

const NOT_KEY_VALUE: &str =
    "expected KEY=VALUE (the text given is not shown: it may hold a secret)";

/// Whether property `name` may hold a secret: the ones librdkafka itself
/// treats as sensitive, and any name with a word of a secret in it (the Java
/// client's `sasl.jaas.config`, PEM certificates: telling them apart is not
/// worth the risk), in any case.
fn holds_a_secret(name: &str) -> bool {
    const SENSITIVE: [&str; 4] = [
        "sasl.username",
        "sasl.oauthbearer.config",
        "ssl.key.location",
        "sasl.oauthbearer.assertion.private.key.file",
    ];
    let name = name.to_ascii_lowercase();
    SENSITIVE.contains(&name.as_str())
        || ["password", "secret", "passphrase", ".pem", "jaas"]
            .iter()
            .any(|part| name.contains(part))
}

/// Whether `key` can be a librdkafka property name: letters, digits, `.`,
/// `_` and `-`, as all of them are.
fn is_property_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `--kafka-property` for clap without quoting a malformed value in the
/// error, as clap's own parsers do: it may hold a secret.
#[derive(Clone)]
struct PropertyParser;

impl clap::builder::TypedValueParser for PropertyParser {
    type Value = KafkaProperty;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<KafkaProperty, clap::Error> {
        let name = arg.map_or_else(|| "--kafka-property".to_owned(), ToString::to_string);
        value
            .to_str()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("a value of {name} is not KEY=VALUE (it is not shown: it may hold a secret)\n"),
                )
                .with_cmd(cmd)
            })
    }
}
