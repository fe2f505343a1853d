//! Every setting of the service: a command-line flag with an environment
//! variable (`BRIDGE_*`), so that Kubernetes can configure it through a ConfigMap
//! and Secrets. `css-kafka-bridge serve --help` is the reference;
//! docs/configuration.md mirrors it.
//!
//! One file per group of settings: [`kafka`], [`auth`] (callback keys and the
//! exposure they allow), [`registry`], [`spool`].

mod auth;
mod kafka;
mod registry;
mod spool;

pub use auth::{AuthConfig, AuthConfigError, AuthMode};
pub use kafka::{
    DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_MAX_IN_FLIGHT_RECORDS, InFlightLimits, KafkaConfig,
    KafkaConnection, KafkaProperties, KafkaProperty, MAX_IN_FLIGHT_BYTES, MAX_IN_FLIGHT_RECORDS,
    PropertiesFileError,
};
pub use registry::{RegistryConfig, SubjectStrategy};
pub use spool::{MAX_ACK_TIMEOUT_MS_WITH_SPOOL, SPOOL_WRITE_TIMEOUT, SpoolConfig};

/// `--max-body-bytes`' default: CSS callbacks are a few KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

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
    #[arg(long, env = "BRIDGE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most callbacks processed at once; beyond it the bridge answers 503 at once
    /// instead of queueing, which keeps memory bounded under any load.
    #[arg(long, env = "BRIDGE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Most body bytes of the callbacks processed at once; a callback beyond
    /// it waits for room (up to the Kafka acknowledgement timeout, then 503)
    /// before its body is read (a body over 64 KiB: as its bytes arrive).
    /// Bounds memory when callbacks are big (their records are bounded apart
    /// as well): with the default, 256 connections of 300-detail callbacks
    /// keep the bridge at about 50 MiB.
    #[arg(
        long,
        env = "BRIDGE_MAX_IN_FLIGHT_BODY_BYTES",
        default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_in_flight_body_bytes: u32,

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
    /// terminationGracePeriodSeconds, and at least 1 s above the longest a
    /// callback may take (the body-read timeout, the ack timeout, and 3 s with
    /// a spool; a shorter one is warned of at start-up).
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

    /// Refuses to serve on a network address without Kafka brokers. `serve`
    /// then starts the embedded in-memory cluster, which is for trying the
    /// bridge out: a deployment that forgot or misspelt its brokers would
    /// answer CSS 200 and lose every record at the next restart, so it stops
    /// at start-up instead.
    pub fn check_brokers(&self, listen: SocketAddr) -> Result<(), EmbeddedKafkaExposed> {
        if self.kafka.connection.brokers.is_none() && !listen.ip().is_loopback() {
            return Err(EmbeddedKafkaExposed { listen });
        }
        Ok(())
    }

    /// The longest a callback may take from its head's read to its answer:
    /// the body's read (the sender's part), the acknowledgement deadline (the
    /// wait for room in admission counts against it), then, with a spool,
    /// the spool write.
    pub fn longest_callback(&self) -> Duration {
        let spool_write = if self.spool.dir.is_some() {
            SPOOL_WRITE_TIMEOUT
        } else {
            Duration::ZERO
        };
        Duration::from_secs(self.body_read_timeout_secs) + self.kafka.ack_timeout() + spool_write
    }

    /// The shortest drain timeout that lets every callback in flight at
    /// shutdown finish: [`Config::longest_callback`] and a second for
    /// writing its answer, in whole seconds.
    pub fn least_drain_timeout_secs(&self) -> u64 {
        let least = self.longest_callback() + DRAIN_MARGIN;
        least.as_secs() + u64::from(least.subsec_nanos() > 0)
    }

    /// A drain timeout shorter than [`Config::least_drain_timeout_secs`] (see
    /// [`DrainShorterThanCallbacks`]), for a warning at start-up.
    pub fn check_drain(&self) -> Option<DrainShorterThanCallbacks> {
        let least_secs = self.least_drain_timeout_secs();
        (self.drain_timeout_secs < least_secs).then_some(DrainShorterThanCallbacks {
            drain_timeout_secs: self.drain_timeout_secs,
            least_secs,
        })
    }

    /// A callback that may be answered after CSS stopped waiting (see
    /// [`CallbacksOutlastCss`]), for a warning at start-up.
    pub fn check_callback_window(&self) -> Option<CallbacksOutlastCss> {
        let longest = self.longest_callback();
        (longest >= CSS_ANSWER_WAIT).then_some(CallbacksOutlastCss {
            longest_ms: longest.as_millis(),
        })
    }

    /// Refuses an acknowledgement timeout that, with the spool write after
    /// it, would answer a callback after CSS stopped waiting.
    pub fn check_spool(&self) -> Result<(), AckTimeoutTooLongForSpool> {
        let ack_timeout_ms = self.kafka.ack_timeout_ms;
        if self.spool.dir.is_some() && ack_timeout_ms > MAX_ACK_TIMEOUT_MS_WITH_SPOOL {
            return Err(AckTimeoutTooLongForSpool { ack_timeout_ms });
        }
        Ok(())
    }
}

/// The acknowledgement timeout leaves no time for a spool write.
#[derive(Debug, thiserror::Error)]
#[error(
    "--kafka-ack-timeout-ms {ack_timeout_ms} (BRIDGE_KAFKA_ACK_TIMEOUT_MS) is too long with a \
     spool: a callback Kafka has not acknowledged by then is written to the spool, which may take \
     up to {write:?} more, and CSS waits about 20 s for the answer. With --spool-dir, set it to \
     {most} or less",
    write = SPOOL_WRITE_TIMEOUT,
    most = MAX_ACK_TIMEOUT_MS_WITH_SPOOL
)]
pub struct AckTimeoutTooLongForSpool {
    pub ack_timeout_ms: u64,
}

/// How long CSS waits for the answer to a callback before it gives up on it
/// and sends it again later.
pub const CSS_ANSWER_WAIT: Duration = Duration::from_secs(20);

/// A callback whose body arrives slowly may be answered after CSS stopped
/// waiting: its records may still land, and CSS sends it again, so they
/// reach Kafka twice (with one `event_id`). Nothing is lost and CSS sends its
/// small bodies at once, so this is a warning, not a refusal.
#[derive(Debug, thiserror::Error)]
#[error(
    "a callback may take up to {longest_ms} ms from its request head \
     (--body-read-timeout-secs, then --kafka-ack-timeout-ms, then 3 s for the spool write with \
     --spool-dir), and CSS waits about 20 s for the answer: one whose body arrives slowly may be \
     answered after CSS gave up on it, and sent again. Keep their sum under 20 s, lowering \
     --body-read-timeout-secs (CSS sends its bodies at once) or --kafka-ack-timeout-ms"
)]
pub struct CallbacksOutlastCss {
    pub longest_ms: u128,
}

/// What [`Config::least_drain_timeout_secs`] adds to the longest callback:
/// time to write its answer once its work is done.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// Shutdown's drain timeout is shorter than a callback may take, so that a
/// callback still in flight when it ends is cut off: answered 503, or its
/// connection closed, and CSS sends it again (its records may then reach
/// Kafka twice, with one `event_id`). Nothing answered 200 is lost, so this
/// is a warning, not a refusal.
#[derive(Debug, thiserror::Error)]
#[error(
    "--drain-timeout-secs {drain_timeout_secs} (BRIDGE_DRAIN_TIMEOUT_SECS) leaves a callback less \
     time than it may take from its request head (--body-read-timeout-secs, then \
     --kafka-ack-timeout-ms, then 3 s for the spool write with --spool-dir, and 1 s to answer): a \
     callback still in flight when shutdown's drain ends is cut off, answered 503 or its \
     connection closed, and CSS sends it again. Set it to {least_secs} or more, with the pod's \
     terminationGracePeriodSeconds above it"
)]
pub struct DrainShorterThanCallbacks {
    pub drain_timeout_secs: u64,
    pub least_secs: u64,
}

/// No Kafka brokers are configured for a bridge on a network address.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Kafka brokers are configured (BRIDGE_KAFKA_BROKERS, --kafka-brokers) and {listen} is not a \
     loopback address: the embedded in-memory Kafka that serves without brokers would answer CSS \
     and lose every record when the process exits. Set the brokers, or listen on loopback \
     (--listen 127.0.0.1:8080) to try the bridge out on the embedded cluster"
)]
pub struct EmbeddedKafkaExposed {
    pub listen: SocketAddr,
}

pub(crate) fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.trim().to_owned()))
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
    fn a_malformed_kafka_property_is_refused_without_its_text() {
        let error = serve(&["--kafka-property", "sasl.password: hunter2"])
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--kafka-property") && error.contains("KEY=VALUE"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");

        // Java's syntax, with an `=` of the secret's own (base64's padding):
        // what comes before it is no name.
        for line in ["sasl.password: hunter2", "sasl.password: aHVudGVyMg=="] {
            let file = keys_file(&format!("# secrets\n{line}\n"));
            let properties = KafkaProperties {
                file: Some(file.path().to_owned()),
                ..KafkaProperties::default()
            };
            let error = properties.read().unwrap_err().to_string();
            assert!(
                error.contains("line 2") && error.contains("KEY=VALUE"),
                "{error}"
            );
            assert!(
                !error.contains("hunter2") && !error.contains("aHVudGVyMg"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_in_flight_bytes_stay_within_what_one_spool_frame_holds() {
        let most = MAX_IN_FLIGHT_BYTES.to_string();
        let config = serve(&["--kafka-max-in-flight-bytes", &most]).unwrap();
        assert_eq!(config.kafka.in_flight.max_bytes, MAX_IN_FLIGHT_BYTES);
        let beyond = (MAX_IN_FLIGHT_BYTES + 1).to_string();
        let error = serve(&["--kafka-max-in-flight-bytes", &beyond]).map(drop);
        assert!(error.is_err());
        let beyond = (MAX_IN_FLIGHT_RECORDS + 1).to_string();
        assert!(serve(&["--kafka-max-in-flight-records", &beyond]).is_err());
    }

    #[test]
    fn the_ack_timeout_is_one_librdkafka_keeps_and_css_waits_for() {
        for refused in ["0", "99", "19001", "60000"] {
            assert!(
                serve(&["--kafka-ack-timeout-ms", refused]).is_err(),
                "{refused}"
            );
        }
        for taken in ["100", "5000", "19000"] {
            assert!(serve(&["--kafka-ack-timeout-ms", taken]).is_ok(), "{taken}");
        }
    }

    #[test]
    fn with_a_spool_the_ack_timeout_leaves_time_for_the_spool_write() {
        let spooled = |ack: &str| serve(&["--spool-dir", "/spool", "--kafka-ack-timeout-ms", ack]);
        assert!(spooled("16000").unwrap().check_spool().is_ok());
        let error = spooled("16001")
            .unwrap()
            .check_spool()
            .unwrap_err()
            .to_string();
        assert!(error.contains("set it to 16000 or less"), "{error}");
        let unspooled = serve(&["--kafka-ack-timeout-ms", "19000"]).unwrap();
        assert!(unspooled.check_spool().is_ok(), "without a spool, 19 s");
    }

    #[test]
    fn the_default_drain_timeout_outlasts_the_longest_callback_with_or_without_a_spool() {
        let direct = serve(&[]).unwrap();
        assert_eq!(direct.longest_callback(), Duration::from_secs(15));
        assert_eq!(direct.least_drain_timeout_secs(), 16);
        assert!(direct.check_drain().is_none());
        let spooled = serve(&["--spool-dir", "/spool"]).unwrap();
        assert_eq!(spooled.longest_callback(), Duration::from_secs(18));
        assert_eq!(spooled.least_drain_timeout_secs(), 19);
        assert!(spooled.check_drain().is_none());
    }

    #[test]
    fn a_callback_that_may_outlast_css_s_wait_is_warned_of() {
        let outlasts = |args: &[&str]| serve(args).unwrap().check_callback_window();
        assert!(
            outlasts(&[]).is_none(),
            "10 s of body, 5 s of acknowledgement"
        );
        assert!(
            outlasts(&["--spool-dir", "/spool"]).is_none(),
            "and 3 s of spool write"
        );
        let warning = outlasts(&["--kafka-ack-timeout-ms", "10000"]).expect("10 s + 10 s");
        assert_eq!(warning.longest_ms, 20_000);
        assert!(
            warning
                .to_string()
                .contains("lowering --body-read-timeout-secs"),
            "{warning}"
        );
        let spooled = ["--spool-dir", "/spool", "--kafka-ack-timeout-ms", "7000"];
        assert!(outlasts(&spooled).is_some(), "10 s + 7 s + 3 s");
        let quick_bodies = ["--body-read-timeout-secs", "2"];
        assert!(outlasts(&[&spooled[..], &quick_bodies].concat()).is_none());
    }

    #[test]
    fn a_drain_timeout_shorter_than_the_longest_callback_is_warned_of_with_what_to_set() {
        let drained_in = |secs: &str| {
            let spooled = ["--spool-dir", "/spool", "--kafka-ack-timeout-ms", "15500"];
            serve(&[&spooled[..], &["--drain-timeout-secs", secs]].concat()).unwrap()
        };
        // 10 s of body, 15.5 s of acknowledgement, 3 s of spool write, 1 s
        // to answer: 29.5 s.
        let warning = drained_in("29").check_drain().expect("29 s < 29.5 s");
        assert_eq!(warning.least_secs, 30);
        let text = warning.to_string();
        assert!(
            text.contains("--drain-timeout-secs 29") && text.contains("Set it to 30 or more"),
            "{text}"
        );
        assert!(drained_in("30").check_drain().is_none());
    }

    #[test]
    fn kafka_property_debug_hides_the_value() {
        let p: KafkaProperty = "sasl.password=hunter2".parse().unwrap();
        assert_eq!(format!("{p:?}"), "sasl.password=<redacted>");
    }

    /// No command formats its settings today; one that did, in a log line or
    /// a panic, must not print a secret.
    #[test]
    fn the_settings_debug_form_shows_no_secret() {
        let config = serve(&[
            "--callback-keys",
            "k3y-one,k3y-two",
            "--kafka-property",
            "sasl.password=p4ssw0rd",
            "--schema-registry-url",
            "https://registry-user:registry-p4ss@registry:8081/apis/ccompat/v7",
            "--schema-registry-password",
            "other-p4ss",
        ])
        .unwrap();
        let shown = format!("{config:?}");
        for secret in [
            "k3y-one",
            "k3y-two",
            "p4ssw0rd",
            "registry-p4ss",
            "other-p4ss",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("https://redacted@registry:8081/apis/ccompat/v7"),
            "{shown}"
        );

        for not_http in [
            "registry-p4ss@registry:8081",
            "user:registry-p4ss@registry:8081",
        ] {
            let config = serve(&["--schema-registry-url", not_http]).unwrap();
            assert!(
                !format!("{config:?}").contains("registry-p4ss"),
                "{not_http}"
            );
        }
    }

    #[test]
    fn properties_file_comes_before_flags() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "# secrets\nsasl.username=u\n\nsasl.password=p\n",
        )
        .unwrap();
        let properties = KafkaProperties {
            flags: vec!["sasl.username=v".parse().unwrap()],
            file: Some(file.path().to_owned()),
        };
        let pairs: Vec<_> = properties.read().unwrap();
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
    fn a_placeholder_key_left_from_the_examples_is_refused_at_start_up() {
        let error = serve(&["--callback-keys", "REPLACE-ME-css-callback-key"])
            .map(drop)
            .unwrap_err();
        assert!(error.to_string().contains("placeholder"), "{error}");
        let file = keys_file("# the key\nREPLACE-ME-css-callback-key\n");
        let config = serve(&["--callback-keys-file", file.path().to_str().unwrap()]).unwrap();
        let error = config.auth.keys().unwrap_err();
        assert!(
            matches!(error, AuthConfigError::KeyInFile { .. })
                && error.to_string().contains("placeholder"),
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
    fn without_brokers_only_a_loopback_address_serves_on_the_embedded_kafka() {
        let config = serve(&["--callback-keys", "k"]).unwrap();
        let (listen, _) = config.exposure(true).unwrap();
        let message = config.check_brokers(listen).unwrap_err().to_string();
        assert!(
            message.contains("BRIDGE_KAFKA_BROKERS") && message.contains("--listen 127.0.0.1"),
            "says what to set: {message}"
        );
        for loopback in ["127.0.0.1:8080", "[::1]:8080"] {
            assert!(config.check_brokers(loopback.parse().unwrap()).is_ok());
        }
        let config = serve(&["--callback-keys", "k", "--kafka-brokers", "kafka:9092"]).unwrap();
        assert!(config.check_brokers(listen).is_ok());
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
