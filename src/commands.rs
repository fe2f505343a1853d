//! Operator commands besides `serve`: `check` (what would a callback file
//! produce?), `tail` (what is in the topic?) and `spool drain` (empty the spool
//! of a replica that is gone). They print JSON lines.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::time::Instant;

use crate::avro;
use crate::avro::wire::{Framing, SchemaId};
use crate::config::{
    DEFAULT_MAX_BODY_BYTES, InFlightLimits, KafkaConfig, KafkaConnection, KafkaProperties,
    RegistryConfig,
};
use crate::css::{self, Inbound, Verifier};
use crate::kafka::{self, ConfigError, Publisher};
use crate::metrics::Metrics;
use crate::outage::OutageLog;
use crate::record;
use crate::registry::RegistryClient;
use crate::spool::drain::{self, Drained, Until};
use crate::spool::{Spool, losses};

/// `check`'s arguments: the file, and the service's limits it is held to.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A CSS callback body (JSON).
    pub file: PathBuf,

    /// The service's `--max-body-bytes`: a larger body gets 413.
    #[arg(long, env = "BRIDGE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// The service's in-flight limits: a callback whose records take more
    /// bytes encoded gets 400, as one with more records than the larger of
    /// the records' limit and half the producer's queue.
    #[command(flatten)]
    pub in_flight: InFlightLimits,

    /// The service's Kafka properties, for the producer queue's size
    /// (`queue.buffering.max.messages`), held to the bridge's own checks of
    /// them (librdkafka's come at the service's start-up). A properties file
    /// that cannot be read (its Secret not mounted where `check` runs) is
    /// warned of, and left out.
    #[command(flatten)]
    pub properties: KafkaProperties,
}

/// Validates the callback in `args.file` as the service would (without
/// checking its signature), its size and its records' held to the service's
/// limits, and writes the records it would publish to `out`, one JSON object
/// per line. Returns how many records it wrote.
pub fn check(args: &CheckArgs, out: &mut impl Write) -> anyhow::Result<usize> {
    let path = &args.file;
    let body = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if body.len() > args.max_body_bytes {
        bail!(
            "the service answers 413: the body's {} bytes are over --max-body-bytes ({})",
            body.len(),
            args.max_body_bytes
        );
    }
    let received_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    // The error borrows the body; its message is what `check` reports.
    let inspected = css::inspect(&body, &Verifier::default(), 0).map_err(|e| anyhow!("{e}"))?;
    let callback = match inspected {
        Inbound::PushError(callback) => callback,
        // Not an error: the service acknowledges it, as CSS expects.
        Inbound::Ignored { event_type } => {
            tracing::warn!(
                event_type,
                "not a push error callback (321): the service answers it 200 {{\"code\":0}} and publishes nothing"
            );
            return Ok(0);
        }
    };
    let max_records = max_callback_records(args)?;
    crate::ingest::check_record_count(&callback, max_records)
        .map_err(|too_many| anyhow!("the service answers 400: {too_many}"))?;
    let limit = args.in_flight.max_bytes as usize;
    crate::ingest::encode_callback(&callback, received_at, None, limit)
        .map_err(|too_large| anyhow!("the service answers 400: {too_large}"))?;
    let records = record::flatten(&callback, received_at);
    for (written, record) in records.iter().enumerate() {
        // Encode and read back with the schema too, so that `check` also proves
        // the record's bytes are what consumers can read.
        avro::decode_to_json(&avro::encode(record))?;
        let line = serde_json::to_string(record)?;
        match writeln!(out, "{line}") {
            Err(error) if reader_gone(&error) => return Ok(written),
            result => result?,
        }
    }
    Ok(records.len())
}

/// The most records the service takes in one callback with these settings:
/// its producer's configuration is built, without connecting, as `serve`
/// builds it.
fn max_callback_records(args: &CheckArgs) -> Result<usize, ConfigError> {
    let mut properties = args.properties.clone();
    if let Err(error) = properties.read() {
        tracing::warn!(
            %error,
            "the file is left out: the record limit is computed from the other properties"
        );
        properties.file = None;
    }
    let service = KafkaConfig {
        connection: KafkaConnection {
            properties,
            ..KafkaConnection::default()
        },
        in_flight: args.in_flight,
        ..KafkaConfig::default()
    };
    let producer = kafka::config::producer_config(&service, "")?;
    Ok(kafka::config::callback_records(&producer, &args.in_flight) as usize)
}

/// Whether a write failed because the reader of the output has gone (`check
/// … | head`): the end of what was asked for, not an error. Rust ignores
/// SIGPIPE, so the write reports it.
fn reader_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

/// A consumer group of its own for each `tail`: it commits nothing, and two
/// runs in one group would split the topic's partitions between them, each
/// printing part of it without a word. The process id alone does not tell
/// them apart: the first process of every container is 1.
fn tail_group_id() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    format!(
        "css-kafka-bridge-tail-{}-{nanos:x}-{run}",
        std::process::id()
    )
}

/// Settings of `tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub kafka: KafkaConnection,
    /// Start from the oldest record in the topic instead of only new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records (messages that do not decode do not
    /// count).
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
    for (key, value) in args.kafka.properties.read()? {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", tail_group_id())
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
        .map_err(|error| ConfigError::of_creation(error, &args.kafka.properties))
        .context("cannot create the Kafka consumer")?;
    consumer.subscribe(&[args.kafka.topic.as_str()])?;
    let idle = args.idle_timeout_secs.map(Duration::from_secs);
    // Runs from the last record (or the start), never from an error: while a
    // broker is away the consumer reports errors again and again, and `tail`
    // must still end.
    let mut idle_deadline = idle.map(|idle| Instant::now() + idle);
    // The consumer repeats an error for as long as its cause lasts: each one is
    // written once, until something else happens.
    let mut last_error: Option<KafkaError> = None;
    let mut count = 0;
    while args.max_records.is_none_or(|max| count < max) {
        let received = match idle_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(received) => received,
                Err(_) => {
                    let idle = idle.unwrap_or_default();
                    if count == 0
                        && let Some(error) = &last_error
                        && let Err(unreadable) = readable(&consumer, &args.kafka.topic, error)
                    {
                        bail!(
                            "no record within the idle timeout ({idle:?}), and the topic cannot \
                             be read: {unreadable} (the consumer's last error: {error})"
                        );
                    }
                    tracing::info!(
                        records = count,
                        ?idle,
                        "no record within the idle timeout: stopping"
                    );
                    break;
                }
            },
            None => consumer.recv().await,
        };
        let message = match received {
            Ok(message) => message,
            // Broker hiccups are reported here too; the consumer recovers by itself.
            Err(error) => {
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "consumer error (repeats are not logged)");
                    last_error = Some(error);
                }
                continue;
            }
        };
        last_error = None;
        idle_deadline = idle.map(|idle| Instant::now() + idle);
        // Checked first: a record of another schema may decode, wrongly.
        if let Some(fingerprint) = written_with_another_schema(&message) {
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                fingerprint,
                this_version = avro::RecordSchema::get().fingerprint(),
                "message written with another schema: read it with the css-kafka-bridge \
                 of that version"
            );
            continue;
        }
        match avro::decode_to_json(message.payload().unwrap_or_default()) {
            Ok(record) => {
                match writeln!(out, "{record}").and_then(|()| out.flush()) {
                    Err(error) if reader_gone(&error) => break,
                    result => result?,
                }
                count += 1;
            }
            Err(error) => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "message is not a push error record"
            ),
        }
    }
    Ok(count)
}

/// Whether an idle `tail` that printed nothing and had consumer errors could
/// read `topic`, to tell a topic it never read (exit 1) from an empty one.
/// A refused login or ACL (`Read` on the topic, the consumer group's) says
/// it could not, whatever the metadata says: the bridge's own principal may
/// describe its topic but not read it. Otherwise errors alone do not say it
/// (one broker of several away, a topic created just after the start): the
/// topic's metadata, asked for now, does, each partition with a leader.
fn readable(consumer: &StreamConsumer, topic: &str, error: &KafkaError) -> Result<(), String> {
    use rdkafka::error::RDKafkaErrorCode as Code;
    if let Some(
        code @ (Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication),
    ) = error.rdkafka_error_code()
    {
        return Err(format!("the brokers refuse this principal ({code})"));
    }
    let metadata =
        tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT))
            .map_err(|error| error.to_string())?;
    let Some(found) = metadata.topics().first() else {
        return Err(format!("topic {topic} not in the metadata"));
    };
    if let Some(code) = found.error() {
        return Err(format!("topic {topic}: {}", Code::from(code)));
    }
    if found.partitions().is_empty() {
        return Err(format!("topic {topic} has no partitions"));
    }
    match found
        .partitions()
        .iter()
        .find(|partition| partition.error().is_some() || partition.leader() < 0)
    {
        Some(partition) => Err(format!(
            "topic {topic}, partition {}: no leader to read from",
            partition.id()
        )),
        None => Ok(()),
    }
}

/// The longest `tail` waits for the topic's metadata at its idle timeout.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema fingerprint `message` carries in its header, when it is not
/// this version's.
fn written_with_another_schema(message: &impl Message) -> Option<String> {
    use rdkafka::message::Headers;
    let name = avro::SCHEMA_FINGERPRINT_HEADER.to_str().ok()?;
    let header = message
        .headers()?
        .iter()
        .find(|header| header.key == name)?;
    let fingerprint = String::from_utf8_lossy(header.value?).into_owned();
    (fingerprint != avro::RecordSchema::get().fingerprint()).then_some(fingerprint)
}

/// Settings of `spool drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolDrainArgs {
    #[command(flatten)]
    pub kafka: KafkaConnection,
    // The service's: they size the producer's queue, which must hold the
    // largest callback the service spooled.
    #[command(flatten)]
    pub in_flight: InFlightLimits,
    /// The spool directory to empty: the volume of a replica that was scaled
    /// away. Not one a running bridge uses (the spool's lock refuses that).
    #[arg(long = "spool-dir", env = "BRIDGE_SPOOL_DIR")]
    pub dir: std::path::PathBuf,
    /// The service's registry settings: with a URL, records framed for a
    /// Schema Registry are published with the id it gives the schema now,
    /// as the service's drainer does.
    #[command(flatten)]
    pub registry: RegistryConfig,
}

/// Publishes everything in a spool directory to the topic, as the service's
/// drainer would, and returns once the spool is empty (retrying while Kafka
/// does not take the records), or at a refusal Kafka gives for good.
///
/// With a registry, its schema id is asked for once, after the spool is
/// opened and only if it holds records (an empty spool is drained while the
/// registry is away): a registry that cannot answer stops the command with
/// its reason before anything is published, where the service would wait
/// for it (its operator is here).
pub async fn spool_drain(args: &SpoolDrainArgs) -> anyhow::Result<Drained> {
    let Some(brokers) = &args.kafka.brokers else {
        bail!("spool drain needs --kafka-brokers (or BRIDGE_KAFKA_BROKERS)");
    };
    crate::spool::existing(&args.dir)?;
    let registry = RegistryClient::new(&args.registry, &args.kafka.topic)?;
    let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
    let spool = Spool::open(&args.dir, u64::MAX, metrics.clone())
        .with_context(|| format!("cannot open the spool in {}", args.dir.display()))?;
    spool.check_framing(match registry {
        Some(_) => Framing::Confluent,
        None => Framing::Plain,
    })?;
    let waiting = spool.records();
    tracing::info!(records = waiting, dir = %args.dir.display(), "draining the spool");
    let schema_id = match registry {
        Some(client) if waiting > 0 => Some(framing_id(&client).await?),
        _ => None,
    };
    let outage = Arc::new(
        OutageLog::new(&args.kafka.topic, Duration::from_secs(30), metrics.clone()).draining(),
    );
    // Not `spooled`: nothing here takes over a record librdkafka gives up on,
    // so records keep the delivery timeout that outlasts a leader's failover
    // (`kafka::config::message_timeout`); the deadline's shorter one can write
    // records twice across a failover.
    let producer = KafkaConfig {
        connection: args.kafka.clone(),
        in_flight: args.in_flight,
        ..KafkaConfig::default()
    };
    let publisher = Arc::new(
        Publisher::new(&producer, brokers, metrics, outage.clone())
            .context("cannot create the Kafka producer")?,
    );
    let mut drained = drain_watched(spool, publisher.clone(), schema_id, outage).await;
    let flush = publisher.clone();
    tokio::task::spawn_blocking(move || flush.flush(Duration::from_secs(30)))
        .await?
        .map_err(|error| anyhow::anyhow!("producer flush did not complete: {error}"))?;
    // This drain's losses and the earlier ones': a pod before this one may
    // have found them and ended before the spool was empty.
    match losses::kept(&args.dir) {
        Ok(kept) => drained.lost = kept.losses + drained.unkept,
        Err(error) => tracing::error!(
            %error,
            dir = %args.dir.display(),
            "cannot read the losses earlier drains kept beside the spool: the summary counts this drain's alone"
        ),
    }
    Ok(drained)
}

/// The schema id the registry gives now, which `spool drain` frames every
/// record with.
async fn framing_id(client: &RegistryClient) -> anyhow::Result<Arc<SchemaId>> {
    let id = client
        .current_schema_id()
        .await
        .with_context(|| format!("cannot get the schema id of subject {}", client.subject()))?;
    tracing::info!(
        subject = client.subject(),
        id,
        "spooled records are framed with this schema id"
    );
    let schema_id = Arc::new(SchemaId::default());
    schema_id.set(id);
    Ok(schema_id)
}

/// `spool drain`'s exit code when the spool is empty but callbacks answered
/// 200 were lost from it (damaged frames, missing segments), found by this
/// drain or an earlier one (see [`losses`]). Not 1: a Job retried on it would
/// drain the empty spool and succeed, and the volume be deleted on the
/// strength of that success; the Job's `podFailurePolicy` fails the Job at
/// once on this code instead.
pub const LOST_CALLBACKS: u8 = 3;

/// `spool drain`'s exit code when Kafka refused records for good (the topic
/// deleted, a record over its size limit): they and every record after them
/// stay in the spool until an operator fixes the topic. Not 1, which a Job
/// retries: each retry would send again the other streams' records Kafka
/// stored after the refused one. The Job fails at once on it.
pub const REFUSED_FOR_GOOD: u8 = 4;

/// `spool drain`'s exit after its summary line: 0 once the spool is empty and
/// nothing was lost from it, [`LOST_CALLBACKS`] when it is empty but
/// callbacks were lost, [`REFUSED_FOR_GOOD`] when records were refused for
/// good (whatever was lost: a later drain says so once the spool is empty).
pub fn spool_drain_exit(drained: &Drained) -> ExitCode {
    if let Some(refusal) = &drained.refused {
        tracing::error!(
            refusal,
            "Kafka refuses the oldest spooled records until the topic is fixed: they and every \
             record after them stay in the spool; fix the topic, then drain it again"
        );
        return ExitCode::from(REFUSED_FOR_GOOD);
    }
    if drained.lost.any() {
        tracing::error!(
            damaged_frames = drained.lost.damaged_frames,
            missing_segments = drained.lost.missing_segments,
            "the spool is empty, but callbacks answered 200 were lost from it (the ERROR lines of \
             the drain that found them say where)"
        );
        return ExitCode::from(LOST_CALLBACKS);
    }
    ExitCode::SUCCESS
}

/// Drains `spool` until it is empty, with the Kafka watcher beside it, as in
/// the service: a producer that cannot publish any more (a fatal error,
/// fenced) is replaced. The drain takes its refusals for retriable, since a
/// new producer takes them, and would otherwise retry the dead one for ever.
///
/// The watcher's verdicts and librdkafka's errors reach the log as the
/// service's do (`Kafka unreachable` with its reason, then a summary every
/// interval): a Job's log is all an operator has to see why it does not end
/// (a wrong password, a certificate, a broker away).
async fn drain_watched(
    spool: Arc<Spool>,
    publisher: Arc<Publisher>,
    schema_id: Option<Arc<SchemaId>>,
    outage: Arc<OutageLog>,
) -> Drained {
    let checked = outage.clone();
    let watcher = tokio::spawn(crate::kafka::watch::watch(
        publisher.clone(),
        move |result| checked.kafka_checked(result),
    ));
    let summary = outage.clone();
    let summaries = tokio::spawn(async move { outage.run_summaries().await });
    let drained = drain::drain(spool, publisher, Until::Empty, schema_id).await;
    watcher.abort();
    summaries.abort();
    let _ = watcher.await;
    let _ = summaries.await;
    // Emptied, the spool says that Kafka took every record, whatever the
    // watcher last saw. Said before the last interval's client errors, as
    // the service's shutdown writes them, so that the last line is not a
    // `Kafka still unreachable` of a check made before the drain's end. Not
    // after a refusal: Kafka answered, and said no.
    if drained.refused.is_none() {
        summary.kafka_checked(Ok(()));
    }
    summary.summarise();
    drained
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Batch;
    use rdkafka::mocking::MockCluster;

    /// An output whose reader goes after `lines` lines.
    struct ReaderGoneAfter {
        lines: usize,
    }

    impl Write for ReaderGoneAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.lines == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.lines -= buf.iter().filter(|&&byte| byte == b'\n').count();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn check_piped_into_a_reader_that_goes_stops_without_an_error() {
        use std::path::Path;
        let seed = CheckArgs {
            file: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-sample.json"),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            in_flight: InFlightLimits {
                max_records: crate::config::DEFAULT_MAX_IN_FLIGHT_RECORDS,
                max_bytes: crate::config::DEFAULT_MAX_IN_FLIGHT_BYTES,
            },
            properties: KafkaProperties::default(),
        };
        let written = check(&seed, &mut ReaderGoneAfter { lines: 1 }).unwrap();
        assert_eq!(written, 1, "one record of the seed's four got out");
    }

    #[test]
    fn each_tail_has_a_consumer_group_of_its_own_even_with_one_process_id() {
        let (first, second) = (tail_group_id(), tail_group_id());
        assert_ne!(first, second);
        let pid = format!("-{}-", std::process::id());
        assert!(
            first.contains(&pid) && second.contains(&pid),
            "{first} {second}"
        );
    }

    /// `spool drain` replaces a producer that cannot publish any more, as the
    /// service does, rather than retrying it until the Job is stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spool_drain_replaces_a_producer_that_cannot_publish() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
        let config = KafkaConfig {
            connection: KafkaConnection {
                topic: "t".into(),
                properties: KafkaProperties {
                    flags: crate::kafka::EmbeddedKafka::producer_properties().into(),
                    file: None,
                },
                ..KafkaConnection::default()
            },
            spooled: true,
            ..KafkaConfig::default()
        };
        let outage = Arc::new(OutageLog::new(
            "t",
            Duration::from_secs(30),
            metrics.clone(),
        ));
        let publisher = Arc::new(
            Publisher::new(
                &config,
                &cluster.bootstrap_servers(),
                metrics.clone(),
                outage.clone(),
            )
            .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics).unwrap();
        let batch = Batch {
            key: "s".into(),
            payloads: b"@record".to_vec(),
            ends: vec![7],
        };
        spool.append(&batch).await.unwrap();
        publisher.fail_fatally_for_test();
        let drained = tokio::time::timeout(
            Duration::from_secs(60),
            drain_watched(spool.clone(), publisher, None, outage),
        )
        .await
        .expect("drained by a new producer");
        assert_eq!(drained.records, 1);
        assert_eq!(spool.records(), 0);
    }
}
