//! Operator commands besides `serve`: `check` (what would a callback file
//! produce?) and `tail` (what is in the topic?). Both print JSON lines.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio::time::Instant;

use crate::avro;
use crate::config::KafkaConfig;
use crate::css::{self, Inbound, Verifier};
use crate::record;

/// Validates the callback in `path` as the service would (without checking its
/// signature) and writes the records it would publish to `out`, one JSON object
/// per line. Returns how many records it wrote.
pub fn check(path: &Path, out: &mut impl Write) -> anyhow::Result<usize> {
    let body = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let received_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let callback = match css::inspect(&body, &Verifier::default(), 0)? {
        Inbound::PushError(callback) => callback,
        Inbound::Ignored { event_type } => {
            bail!(
                "event_type {event_type} is not a push error callback (321): the service would answer 200 and publish nothing"
            )
        }
    };
    let records = record::flatten(&callback, received_at);
    for record in &records {
        // Encode and read back with the schema too, so that `check` also proves
        // the record's bytes are what consumers can read.
        avro::decode_to_json(&avro::encode(record))?;
        serde_json::to_writer(&mut *out, record)?;
        writeln!(out)?;
    }
    Ok(records.len())
}

/// Settings of `tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Start from the oldest record in the topic instead of only new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// Stop when no record arrives for this many seconds (errors, such as a
    /// broker being away, do not count as arrivals).
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
}

/// Consumes the topic and writes each record, decoded, as one JSON line.
pub async fn tail(args: &TailArgs, out: &mut impl Write) -> anyhow::Result<u64> {
    let Some(brokers) = &args.kafka.brokers else {
        bail!("tail needs --kafka-brokers (or BRIDGE_KAFKA_BROKERS)");
    };
    let mut client = ClientConfig::new();
    for (key, value) in args.kafka.properties()? {
        client.set(key, value);
    }
    let group = format!("css-kafka-bridge-tail-{}", std::process::id());
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        );
    let consumer: StreamConsumer = client
        .create()
        .context("cannot create the Kafka consumer")?;
    consumer.subscribe(&[args.kafka.topic.as_str()])?;
    let idle = args.idle_timeout_secs.map(Duration::from_secs);
    // Runs from the last record (or the start), never from an error: while a
    // broker is away the consumer reports errors again and again, and `tail`
    // must still end.
    let mut idle_deadline = idle.map(|idle| Instant::now() + idle);
    // The consumer repeats an error for as long as its cause lasts: each one is
    // written once, until something else happens.
    let mut last_error: Option<String> = None;
    let mut count = 0;
    while args.max_records.is_none_or(|max| count < max) {
        let received = match idle_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(received) => received,
                Err(_) => {
                    tracing::info!(records = count, idle = ?idle.unwrap_or_default(), "no record within the idle timeout: stopping");
                    break;
                }
            },
            None => consumer.recv().await,
        };
        let message = match received {
            Ok(message) => message,
            // Broker hiccups are reported here too; the consumer recovers by itself.
            Err(error) => {
                let text = error.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "consumer error (repeats are not logged)");
                    last_error = Some(text);
                }
                continue;
            }
        };
        last_error = None;
        idle_deadline = idle.map(|idle| Instant::now() + idle);
        match avro::decode_to_json(message.payload().unwrap_or_default()) {
            Ok(record) => writeln!(out, "{record}")?,
            Err(error) => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "message is not a push error record"
            ),
        }
        out.flush()?;
        count += 1;
    }
    Ok(count)
}
