//! Every setting of the service: a command-line flag with an environment
//! variable (`BRIDGE_*`), so that Kubernetes can configure it through a ConfigMap
//! and Secrets. `css-kafka-bridge serve --help` is the reference; the README's
//! configuration table mirrors it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

use crate::css::CallbackKey;

/// Default topic for push error records.
pub const DEFAULT_TOPIC: &str = "css.push-errors";

/// Port the HTTP server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8080;

/// Settings of `serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on. Default: 0.0.0.0:8080 (every
    /// interface) with callback keys configured, 127.0.0.1:8080 (this machine
    /// only) without.
    #[arg(long, env = "BRIDGE_LISTEN")]
    pub listen: Option<SocketAddr>,

    #[command(flatten)]
    pub kafka: KafkaConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub registry: RegistryConfig,

    #[command(flatten)]
    pub spool: SpoolConfig,

    /// Largest accepted callback body, in bytes; larger bodies get 413. CSS
    /// callbacks are a few KiB.
    #[arg(long, env = "BRIDGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most callbacks processed at once; beyond it the bridge answers 503 at once
    /// instead of queueing, which keeps memory bounded under any load.
    #[arg(long, env = "BRIDGE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Seconds a client may take to send its request head; slower connections
    /// are closed.
    #[arg(long, env = "BRIDGE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Seconds a client may take to send its request body; slower requests get
    /// 408.
    #[arg(long, env = "BRIDGE_BODY_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub body_read_timeout_secs: u64,

    /// Seconds sent in `Retry-After` with a 503.
    #[arg(long, env = "BRIDGE_RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish and the
    /// producer to flush before the process exits. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "BRIDGE_DRAIN_TIMEOUT_SECS", default_value_t = 20)]
    pub drain_timeout_secs: u64,

    /// On SIGTERM/SIGINT, how long to keep serving with readiness already false,
    /// so that load balancers stop routing here before the listener closes.
    #[arg(long, env = "BRIDGE_SHUTDOWN_DELAY_SECS", default_value_t = 5)]
    pub shutdown_delay_secs: u64,

    /// While Kafka is unreachable, or callbacks are refused for the bridge's own
    /// state (503), one summary line per this many seconds instead of a line per
    /// event.
    #[arg(
        long,
        env = "BRIDGE_LOG_SUMMARY_INTERVAL_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub log_summary_interval_secs: u64,
}

/// Kafka settings shared by `serve` and `tail`.
#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers (host:port,...). Without it, `serve` starts an
    /// embedded in-memory cluster: for trying the bridge out, not for production.
    #[arg(long = "kafka-brokers", env = "BRIDGE_KAFKA_BROKERS")]
    pub brokers: Option<String>,

    /// Topic that receives one record per push error detail.
    #[arg(long = "kafka-topic", env = "BRIDGE_KAFKA_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,

    /// Any librdkafka client property, as KEY=VALUE (repeatable; in the
    /// environment, separated by `;`), e.g. security.protocol=SASL_SSL.
    #[arg(
        long = "kafka-property",
        env = "BRIDGE_KAFKA_PROPERTIES",
        value_delimiter = ';'
    )]
    pub properties: Vec<KafkaProperty>,

    /// File of librdkafka properties, one KEY=VALUE per line (`#` comments), read
    /// at start-up. Meant for secrets such as sasl.password, mounted from a
    /// Kubernetes Secret; its values are never logged.
    #[arg(long = "kafka-properties-file", env = "BRIDGE_KAFKA_PROPERTIES_FILE")]
    pub properties_file: Option<PathBuf>,

    /// How long to wait for Kafka to acknowledge all records of a callback before
    /// answering 503. CSS gives up on a callback after about 20 s.
    #[arg(
        long = "kafka-ack-timeout-ms",
        env = "BRIDGE_KAFKA_ACK_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub ack_timeout_ms: u64,

    /// Topic that keeps the raw body and the reason of every authenticated
    /// callback refused as invalid (400), so that nothing CSS sent is silently
    /// dropped. Off when unset or empty. The topic must exist.
    #[arg(long = "dead-letter-topic", env = "BRIDGE_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Whether a spool takes the callbacks Kafka does not acknowledge within
    /// the deadline: set from `--spool-dir` (and by `spool drain`), not a flag
    /// of its own. librdkafka then gives up on a record at the deadline, so
    /// that a spooled callback is not also delivered by the producer later
    /// (see `kafka::config::message_timeout`).
    #[arg(skip)]
    pub spooled: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: DEFAULT_TOPIC.to_owned(),
            properties: Vec::new(),
            properties_file: None,
            ack_timeout_ms: 5000,
            dead_letter_topic: None,
            spooled: false,
        }
    }
}

impl KafkaConfig {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// The user's librdkafka properties: the file's first, then the flags', so a
    /// flag can override a file entry.
    pub fn properties(&self) -> Result<Vec<(String, String)>, PropertiesFileError> {
        let mut properties = Vec::new();
        if let Some(path) = &self.properties_file {
            let file_error = |reason: String| PropertiesFileError {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let property: KafkaProperty = line.parse().map_err(file_error)?;
                properties.push((property.key, property.value));
            }
        }
        properties.extend(
            self.properties
                .iter()
                .map(|p| (p.key.clone(), p.value.clone())),
        );
        Ok(properties)
    }
}

/// How the subject name is derived, as in Confluent's serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SubjectStrategy {
    /// `<topic>-value` (TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
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
            Some((key, value)) if !key.trim().is_empty() => Ok(Self {
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            }),
            _ => Err(format!(
                "expected KEY=VALUE, got `{}`",
                s.split('=').next().unwrap_or_default()
            )),
        }
    }
}

/// The durable spool (see `crate::spool`): off unless a directory is given.
#[derive(Debug, Clone, Default, Args)]
pub struct SpoolConfig {
    /// Directory of the spool: when Kafka cannot acknowledge a callback, its
    /// records are made durable here and the callback is answered 200; they
    /// reach Kafka once it is back. One directory per replica, on a persistent
    /// volume. Without it, such callbacks get 503 and CSS retries them.
    #[arg(long = "spool-dir", env = "BRIDGE_SPOOL_DIR")]
    pub dir: Option<PathBuf>,

    /// Most bytes the spool may take on disk; a full spool answers 503.
    #[arg(
        long = "spool-max-bytes",
        env = "BRIDGE_SPOOL_MAX_BYTES",
        default_value_t = 1 << 30,
        value_parser = clap::value_parser!(u64).range(1 << 20..)
    )]
    pub max_bytes: u64,
}

/// Callback authentication settings.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Callback keys (the "callback key" of the CSS callback template), separated
    /// by commas. Several keys are accepted at once during a key rotation. A
    /// blank key is refused. Without any key, callbacks are not authenticated,
    /// which the bridge allows on a loopback address only, unless
    /// --insecure-no-callback-auth says otherwise.
    #[arg(long, env = "BRIDGE_CALLBACK_KEYS", value_delimiter = ',', hide_env_values = true,
          value_parser = CallbackKey::parse)]
    pub callback_keys: Vec<CallbackKey>,

    /// File holding callback keys, one per line (e.g. a mounted Kubernetes Secret).
    /// Adds to --callback-keys.
    #[arg(long, env = "BRIDGE_CALLBACK_KEYS_FILE")]
    pub callback_keys_file: Option<PathBuf>,

    /// How many seconds past its `t` a signature is still accepted. CSS sets `t`
    /// ten minutes ahead and may retry a callback for about twelve minutes, so a
    /// few minutes keeps late retries from being refused.
    #[arg(long, env = "BRIDGE_MAX_CLOCK_SKEW_SECS", default_value_t = 300)]
    pub max_clock_skew_secs: u64,

    /// How many seconds ahead of now a signature's `t` may lie. `sign` does not
    /// cover the body, so a captured signature with a far-future `t` could be
    /// replayed with any body until then. Default: the ten minutes CSS sets `t`
    /// ahead, plus --max-clock-skew-secs.
    #[arg(long, env = "BRIDGE_MAX_SIGNATURE_HORIZON_SECS")]
    pub max_signature_horizon_secs: Option<u64>,

    /// Accept callbacks without checking signatures on a non-loopback address,
    /// when no callback key is configured: anyone who can reach the bridge can
    /// then publish to Kafka. For demos and closed test networks only.
    #[arg(
        long,
        env = "BRIDGE_INSECURE_NO_CALLBACK_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub insecure_no_callback_auth: bool,
}

/// Why the authentication settings cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read the callback keys file {path}: {source}")]
    KeysFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the callback keys file {path} holds no key; put the key of the CSS callback template in it"
    )]
    EmptyKeysFile { path: PathBuf },
    #[error(
        "no callback key is configured and {listen} is not a loopback address, so anyone who can \
         reach it could publish to Kafka. Set BRIDGE_CALLBACK_KEYS (--callback-keys) or \
         BRIDGE_CALLBACK_KEYS_FILE (--callback-keys-file) to the key of the CSS callback template; \
         or listen on a loopback address only; or, to accept unsigned callbacks from anyone, set \
         BRIDGE_INSECURE_NO_CALLBACK_AUTH=true (--insecure-no-callback-auth)"
    )]
    Unauthenticated { listen: SocketAddr },
}

/// How callbacks are authenticated, as decided at start-up from the keys, the
/// listen address and the opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Callback keys are configured: every callback must be signed.
    Signed,
    /// No key, and reachable from this machine only: for trying the bridge out.
    UnsignedLoopback,
    /// No key, reachable from the network, by explicit opt-in.
    UnsignedExposed,
}

impl AuthConfig {
    /// All configured keys: the flag's, then the file's (blank lines and `#`
    /// comments skipped). A keys file without any key is an error: it is most
    /// likely an empty Secret, and serving unauthenticated instead would be the
    /// wrong way to fail.
    pub fn keys(&self) -> Result<Vec<CallbackKey>, AuthConfigError> {
        let mut keys = self.callback_keys.clone();
        if let Some(path) = &self.callback_keys_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| AuthConfigError::KeysFile {
                    path: path.clone(),
                    source,
                })?;
            let from_file: Vec<CallbackKey> = text
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .filter_map(|line| CallbackKey::parse(line).ok())
                .collect();
            if from_file.is_empty() {
                return Err(AuthConfigError::EmptyKeysFile { path: path.clone() });
            }
            keys.extend(from_file);
        }
        Ok(keys)
    }

    /// The signature horizon in force: the configured one, or CSS's ten minutes
    /// plus the clock skew.
    pub fn max_signature_horizon_secs(&self) -> u64 {
        self.max_signature_horizon_secs
            .unwrap_or_else(|| crate::css::Verifier::default_horizon_secs(self.max_clock_skew_secs))
    }
}

impl Config {
    /// The address to listen on and how callbacks are authenticated there.
    ///
    /// Safe by default: without callback keys the bridge listens on loopback
    /// only, and refuses a non-loopback address unless the insecure opt-in is
    /// set, so that a forgotten key never opens Kafka to anyone who can reach
    /// the port.
    pub fn exposure(
        &self,
        keys_configured: bool,
    ) -> Result<(SocketAddr, AuthMode), AuthConfigError> {
        let port_on = |ip: Ipv4Addr| SocketAddr::from((ip, DEFAULT_PORT));
        if keys_configured {
            return Ok((
                self.listen.unwrap_or(port_on(Ipv4Addr::UNSPECIFIED)),
                AuthMode::Signed,
            ));
        }
        let listen = self.listen.unwrap_or(port_on(Ipv4Addr::LOCALHOST));
        if listen.ip().is_loopback() {
            Ok((listen, AuthMode::UnsignedLoopback))
        } else if self.auth.insecure_no_callback_auth {
            Ok((listen, AuthMode::UnsignedExposed))
        } else {
            Err(AuthConfigError::Unauthenticated { listen })
        }
    }
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.trim().to_owned()))
}

/// Confluent Schema Registry settings. Without a URL, records are plain Avro.
#[derive(Debug, Clone, Args)]
pub struct RegistryConfig {
    /// Schema Registry URL (http or https). When set, the schema is registered at
    /// start-up and every record is framed in the Confluent wire format (magic
    /// byte 0, 4-byte schema id, Avro binary).
    #[arg(long = "schema-registry-url", env = "BRIDGE_SCHEMA_REGISTRY_URL")]
    pub url: Option<String>,

    /// How the subject name is derived: topic (`<topic>-value`), record (the
    /// record's full name) or topic-record (`<topic>-<record full name>`).
    #[arg(
        long = "schema-registry-subject-strategy",
        env = "BRIDGE_SCHEMA_REGISTRY_SUBJECT_STRATEGY",
        value_enum,
        default_value_t
    )]
    pub subject_strategy: SubjectStrategy,

    /// Register the schema if the subject lacks it (true), or only look it up and
    /// stay not-ready until someone registers it (false).
    #[arg(
        long = "schema-registry-auto-register",
        env = "BRIDGE_SCHEMA_REGISTRY_AUTO_REGISTER",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub auto_register: bool,

    /// Basic-auth user for the registry.
    #[arg(
        long = "schema-registry-username",
        env = "BRIDGE_SCHEMA_REGISTRY_USERNAME"
    )]
    pub username: Option<String>,

    /// Basic-auth password for the registry.
    #[arg(
        long = "schema-registry-password",
        env = "BRIDGE_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub password: Option<SecretString>,

    /// PEM file of the CA that signs the registry's TLS certificate, when it is
    /// not in the system's trust store.
    #[arg(
        long = "schema-registry-ca-file",
        env = "BRIDGE_SCHEMA_REGISTRY_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_property_parses_key_and_value() {
        let p: KafkaProperty = "sasl.password = a=b".parse().unwrap();
        assert_eq!((p.key.as_str(), p.value.as_str()), ("sasl.password", "a=b"));
        assert!("novalue".parse::<KafkaProperty>().is_err());
        assert!("=x".parse::<KafkaProperty>().is_err());
    }

    #[test]
    fn kafka_property_debug_hides_the_value() {
        let p: KafkaProperty = "sasl.password=hunter2".parse().unwrap();
        assert_eq!(format!("{p:?}"), "sasl.password=<redacted>");
    }

    #[test]
    fn properties_file_comes_before_flags() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "# secrets\nsasl.username=u\n\nsasl.password=p\n",
        )
        .unwrap();
        let config = KafkaConfig {
            properties: vec!["sasl.username=v".parse().unwrap()],
            properties_file: Some(file.path().to_owned()),
            ..KafkaConfig::default()
        };
        let pairs: Vec<_> = config.properties().unwrap();
        let expected: Vec<(String, String)> = [
            ("sasl.username", "u"),
            ("sasl.password", "p"),
            ("sasl.username", "v"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expected);
    }

    /// Parses `serve` flags as the binary does.
    fn serve(args: &[&str]) -> Result<Config, clap::Error> {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            config: Config,
        }
        let args = std::iter::once("serve").chain(args.iter().copied());
        <Serve as clap::Parser>::try_parse_from(args).map(|serve| serve.config)
    }

    fn keys_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn callback_keys_come_from_flag_and_file() {
        let file = keys_file("key-b\n\n# comment\n  key-c \n");
        let path = file.path().to_str().unwrap();
        let config = serve(&["--callback-keys", "key-a", "--callback-keys-file", path]).unwrap();
        let keys = config.auth.keys().unwrap();
        let expected: Vec<String> = ["key-a", "key-b", "key-c"]
            .iter()
            .map(|k| crate::css::signature::expected_sign(k, 1))
            .collect();
        let verifier = crate::css::Verifier::new(keys, 0, u64::MAX);
        for sign in &expected {
            assert_eq!(verifier.verify(Some(1), Some(sign), 0), Ok(()));
        }
    }

    #[test]
    fn a_blank_callback_key_is_refused_at_start_up() {
        for value in ["secretkey,", ",secretkey", "a,,b", " ", ""] {
            let error = serve(&["--callback-keys", value]).map(drop).unwrap_err();
            assert!(
                error.to_string().contains("must not be blank"),
                "{value:?}: {error}"
            );
        }
    }

    #[test]
    fn a_keys_file_without_a_key_is_refused() {
        let file = keys_file("\n  \n# only a comment\n");
        let config = serve(&["--callback-keys-file", file.path().to_str().unwrap()]).unwrap();
        let error = config.auth.keys().unwrap_err();
        assert!(
            matches!(error, AuthConfigError::EmptyKeysFile { .. }),
            "{error}"
        );
    }

    #[test]
    fn without_keys_the_default_is_loopback_only() {
        let config = serve(&[]).unwrap();
        assert_eq!(
            config.exposure(false).unwrap(),
            (
                "127.0.0.1:8080".parse().unwrap(),
                AuthMode::UnsignedLoopback
            )
        );
    }

    #[test]
    fn with_keys_the_default_is_every_interface() {
        let config = serve(&["--callback-keys", "k"]).unwrap();
        assert_eq!(
            config.exposure(true).unwrap(),
            ("0.0.0.0:8080".parse().unwrap(), AuthMode::Signed)
        );
    }

    #[test]
    fn without_keys_a_network_address_needs_the_insecure_opt_in() {
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:80"] {
            let error = serve(&["--listen", listen])
                .unwrap()
                .exposure(false)
                .unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains("BRIDGE_CALLBACK_KEYS")
                    && message.contains("BRIDGE_INSECURE_NO_CALLBACK_AUTH"),
                "says what to set: {message}"
            );
            let config = serve(&["--listen", listen, "--insecure-no-callback-auth"]).unwrap();
            assert_eq!(
                config.exposure(false).unwrap(),
                (listen.parse().unwrap(), AuthMode::UnsignedExposed)
            );
        }
        for loopback in ["127.0.0.1:9000", "[::1]:9000"] {
            let config = serve(&["--listen", loopback]).unwrap();
            assert_eq!(
                config.exposure(false).unwrap().1,
                AuthMode::UnsignedLoopback
            );
        }
    }

    #[test]
    fn the_signature_horizon_defaults_to_css_lifetime_plus_skew() {
        assert_eq!(serve(&[]).unwrap().auth.max_signature_horizon_secs(), 900);
        let skewed = serve(&["--max-clock-skew-secs", "60"]).unwrap();
        assert_eq!(skewed.auth.max_signature_horizon_secs(), 660);
        let set = serve(&["--max-signature-horizon-secs", "120"]).unwrap();
        assert_eq!(set.auth.max_signature_horizon_secs(), 120);
    }
}
