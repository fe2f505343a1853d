//! Counts the messages in a topic, for `bench/run`'s "nothing lost" check.
//!
//! Reads every partition from the beginning to its end (librdkafka's partition
//! EOF) and prints the number of messages on stdout. With `--decode`, every
//! value is also decoded as a push error record, and the count of distinct
//! `event_id`s goes to stderr. Faster than `css-kafka-bridge tail | wc -l`,
//! which decodes and prints every record.
//!
//! ```sh
//! cargo run --release --example count_topic -- --brokers 127.0.0.1:9092 --topic css.push-errors
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use css_kafka_bridge::avro;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

struct Args {
    brokers: String,
    topic: String,
    decode: bool,
    /// Give up when no message and no end of partition arrives for this long.
    idle: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut brokers = None;
    let mut topic = None;
    let mut decode = false;
    let mut idle = Duration::from_secs(10);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--brokers" => brokers = args.next(),
            "--topic" => topic = args.next(),
            "--decode" => decode = true,
            "--idle-timeout-secs" => {
                idle = Duration::from_secs(args.next().context("a number")?.parse()?)
            }
            other => bail!(
                "unknown argument {other}; usage: count_topic --brokers HOST:PORT --topic NAME [--decode] [--idle-timeout-secs N]"
            ),
        }
    }
    Ok(Args {
        brokers: brokers.context("--brokers is required")?,
        topic: topic.context("--topic is required")?,
        decode,
        idle,
    })
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("count-topic-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .context("cannot create the consumer")?;

    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .context("cannot read the topic's metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == args.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {} not found or has no partitions", args.topic);
    }
    let mut assignment = TopicPartitionList::new();
    let mut watermark_total = 0;
    for &partition in &partitions {
        assignment.add_partition_offset(&args.topic, partition, Offset::Beginning)?;
        let (low, high) =
            consumer.fetch_watermarks(&args.topic, partition, Duration::from_secs(10))?;
        watermark_total += high - low;
    }
    consumer.assign(&assignment)?;

    let started = Instant::now();
    let mut count: u64 = 0;
    let mut undecodable: u64 = 0;
    let mut event_ids = HashSet::new();
    let mut at_end = HashSet::new();
    let mut last_progress = Instant::now();
    while at_end.len() < partitions.len() {
        match consumer.poll(Duration::from_millis(500)) {
            None => {
                if last_progress.elapsed() > args.idle {
                    bail!(
                        "no progress for {:?}: {count} messages read, {} of {} partitions at their end",
                        args.idle,
                        at_end.len(),
                        partitions.len()
                    );
                }
            }
            Some(Ok(message)) => {
                last_progress = Instant::now();
                count += 1;
                if args.decode {
                    match avro::decode_to_json(message.payload().unwrap_or_default()) {
                        Ok(record) => {
                            if let Some(id) = record.get("event_id").and_then(|v| v.as_str()) {
                                event_ids.insert(id.to_owned());
                            }
                        }
                        Err(_) => undecodable += 1,
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(error).context("fetch failed"),
        }
    }
    eprintln!(
        "{count} messages in {} partitions of {} (offsets span {watermark_total}), read in {:.1?}",
        partitions.len(),
        args.topic,
        started.elapsed()
    );
    if args.decode {
        eprintln!(
            "{} distinct event_id, {undecodable} not decodable as a push error record",
            event_ids.len()
        );
    }
    println!("{count}");
    Ok(())
}
