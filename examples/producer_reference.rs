//! The publishing reference for `bench/run`: librdkafka alone, doing the
//! publishing part of the bridge's work and nothing else.
//!
//! A `BaseProducer` with the bridge's own producer configuration
//! (`kafka::producer_config`: idempotent, `acks=all`, lz4, `linger.ms=1`, ...)
//! publishes the records of the benchmark's load, encoded once up front exactly
//! as the bridge encodes them: the callbacks `bench/callback.lua` sends, one per
//! stream id (`--streams`, 64 by default) and each a body of the mix (`--mix`,
//! the CSS sample by default), so keys and payloads differ as in that load and
//! compress alike. It sends them with the bridge's two headers, as the bridge
//! sends them (through a topic handle, `kafka::topic::send`), callback after
//! callback, each callback's records under its stream id. It
//! runs a closed loop: as many records in flight as the HTTP load has (256
//! callbacks × 4 records by default), a new one sent for each delivery report,
//! counted in the delivery callback. What it costs per record is what
//! publishing costs at best; the bridge's CPU per callback is compared against
//! the parse ceiling's plus this, records per callback times.
//!
//! With `--rate R` it runs an open loop instead, sending R records a second
//! (what is due every 100 µs or more, a callback's records together)
//! whatever comes back: librdkafka's cost per
//! record depends on its rate (the records each produce request carries), so
//! `bench/run` also measures it at the rate the bridge achieved, and
//! `bench/latency` at the rates it offers the bridge: each record's delivery
//! latency (from its send to its delivery report) is publishing's share of a
//! callback's latency.
//!
//! ```sh
//! cargo run --release --example producer_reference -- \
//!     --brokers 127.0.0.1:9092 --topic bench --seconds 10 [--in-flight 1024 | --rate 50000] \
//!     [--mix "PATH=WEIGHT ..."] [--streams 64] [--property KEY=VALUE ...]
//! ```
//!
//! `--property` sets a librdkafka property over the bridge's defaults, as the
//! bridge's own flag does, so that a setting is measured on both alike.
//!
//! Prints one line: `REFERENCE records=N seconds=S records_per_sec=R
//! cpu_us_per_record=C ctx_per_record=X p50_ms=A p99_ms=B p999_ms=C max_ms=D
//! queue_p99_ms=Q rtt_p99_ms=T` (CPU and context switches of this process, all
//! threads, from /proc; delivery latency percentiles of the delivered records;
//! librdkafka's p99 of its last statistics window, as the bridge exports them:
//! the records' wait in the producer's queue, the broker's round trips).

use std::ffi::CStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use css_kafka_bridge::config::{
    DEFAULT_MAX_IN_FLIGHT_BYTES, KafkaConfig, KafkaConnection, KafkaProperties, KafkaProperty,
};
use css_kafka_bridge::css::{self, Inbound, Verifier};
use css_kafka_bridge::ingest::encode_callback;
use css_kafka_bridge::kafka::topic::{self, Record, TopicHandle};
use css_kafka_bridge::kafka::{ConfigError, producer_config, record_headers};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Window;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Statistics};

struct Args {
    brokers: String,
    topic: String,
    seconds: f64,
    in_flight: u64,
    /// Records a second in an open loop; 0 for the closed loop.
    rate: f64,
    /// Bodies and their weights, as `bench/callback.lua` takes them.
    mix: Vec<(String, usize)>,
    streams: usize,
    /// librdkafka properties over the bridge's defaults, as the bridge's
    /// `--kafka-property` takes them.
    properties: Vec<KafkaProperty>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        brokers: String::new(),
        topic: String::new(),
        seconds: 10.0,
        in_flight: 1024,
        rate: 0.0,
        mix: vec![("tests/fixtures/seed-sample.json".into(), 1)],
        streams: 64,
        properties: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => args.brokers = value,
            "--topic" => args.topic = value,
            "--seconds" => args.seconds = value.parse()?,
            "--in-flight" => args.in_flight = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--streams" => args.streams = value.parse()?,
            "--property" => args
                .properties
                .push(value.parse().map_err(|e: String| anyhow!(e))?),
            "--mix" => {
                args.mix = value
                    .split_whitespace()
                    .map(|item| {
                        let (path, weight) =
                            item.split_once('=').context("--mix takes PATH=WEIGHT")?;
                        Ok((path.to_owned(), weight.parse()?))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    if args.brokers.is_empty() || args.topic.is_empty() {
        bail!("--brokers and --topic are required");
    }
    Ok(args)
}

/// Counts delivery reports; a failed one is counted too (and reported at the
/// end), since the loop must go on. Each record's opaque is when it was sent
/// (µs since `started`), so a delivered record's latency is kept too.
struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
    started: Instant,
    /// Delivery latencies in µs, of delivered records.
    latencies: Mutex<Vec<u32>>,
    /// librdkafka's queue latency and broker round trip, p99 in µs.
    librdkafka_p99: Mutex<(i64, i64)>,
}

impl Counting {
    fn new() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
            latencies: Mutex::new(Vec::with_capacity(1 << 20)),
            librdkafka_p99: Mutex::new((0, 0)),
        }
    }

    /// The opaque of a record sent now.
    fn now(&self) -> usize {
        self.started.elapsed().as_micros() as usize
    }

    /// Forgets what was counted: for the record sent before the clock starts.
    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.latencies.lock().unwrap().clear();
    }

    /// Delivery latency percentiles in ms: p50, p99, p99.9, max.
    fn percentiles(&self) -> [f64; 4] {
        let mut latencies = self.latencies.lock().unwrap().clone();
        latencies.sort_unstable();
        let at = |q: f64| {
            let index =
                ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(index).map_or(0.0, |&us| us as f64 / 1000.0)
        };
        [at(0.50), at(0.99), at(0.999), at(1.0)]
    }
}

impl ClientContext for Counting {
    /// Keeps librdkafka's p99 of the last statistics window, in µs, as the
    /// bridge's metrics do: the records' wait in the producer's queue and the
    /// broker's round trips (the slowest broker's of each).
    fn stats(&self, statistics: Statistics) {
        let brokers = || {
            statistics
                .brokers
                .values()
                .filter(|broker| broker.nodeid >= 0)
        };
        let p99 = |window: Option<&Window>| window.map_or(0, |window| window.p99);
        let queue = brokers().map(|b| p99(b.int_latency.as_ref())).max();
        let rtt = brokers().map(|b| p99(b.rtt.as_ref())).max();
        *self.librdkafka_p99.lock().unwrap() = (queue.unwrap_or(0), rtt.unwrap_or(0));
    }
}

impl ProducerContext for Counting {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        match result {
            Ok(_) => {
                let latency = self.now().saturating_sub(sent_us);
                let latency = u32::try_from(latency).unwrap_or(u32::MAX);
                self.latencies.lock().unwrap().push(latency);
                self.delivered.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The callbacks of the load, encoded as the bridge encodes them: (key,
/// records) per stream id, stream `i` (from 1) a copy of the body whose weight
/// bucket holds `i - 1` modulo the weights' sum, as in `bench/callback.lua`.
fn encoded(mix: &[(String, usize)], streams: usize) -> anyhow::Result<Vec<(String, Vec<Vec<u8>>)>> {
    let bodies = mix
        .iter()
        .map(|(path, weight)| {
            let body = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            Ok((serde_json::from_str::<serde_json::Value>(&body)?, *weight))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let weights: usize = bodies.iter().map(|(_, weight)| weight).sum();
    let body_for = |i: usize| {
        let mut slot = (i - 1) % weights.max(1);
        for (body, weight) in &bodies {
            if slot < *weight {
                return body;
            }
            slot -= weight;
        }
        unreachable!("the slot is below the weights' sum")
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut encoded = Vec::with_capacity(streams);
    for i in 1..=streams {
        let mut body = body_for(i).clone();
        body["stream_id"] = format!("bench-stream-{i}").into();
        let body = body.to_string();
        let inspected = css::inspect(body.as_bytes(), &Verifier::default(), 0);
        let Inbound::PushError(callback) = inspected.map_err(|e| anyhow!("{e}"))? else {
            bail!("{body} is not a push error callback");
        };
        let batch = encode_callback(&callback, now, None, DEFAULT_MAX_IN_FLIGHT_BYTES as usize)?;
        let records = batch.payloads().map(<[u8]>::to_vec).collect();
        encoded.push((batch.key.clone(), records));
    }
    Ok(encoded)
}

/// CPU time (user + system) of this process, all threads, and its context
/// switches (voluntary and involuntary, all threads).
fn usage() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    let cpu = Duration::from_millis(ticks * 10);
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            switches += status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches")
                        || l.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (cpu, switches)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let callbacks = encoded(&args.mix, args.streams)?;
    let kafka = KafkaConfig {
        connection: KafkaConnection {
            topic: args.topic.clone(),
            properties: KafkaProperties {
                flags: args.properties.clone(),
                file: None,
            },
            ..KafkaConnection::default()
        },
        ..KafkaConfig::default()
    };
    let producer: BaseProducer<Counting> = producer_config(&kafka, &args.brokers)?
        .create_with_context(Counting::new())
        .map_err(|error| ConfigError::of_creation(error, &kafka.connection.properties))?;
    let headers = record_headers();
    let handle = TopicHandle::new(producer.client(), &args.topic)?;
    // Connected, and the topic's metadata known, before the clock starts.
    producer
        .client()
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .context("no metadata for the topic")?;
    let context = producer.context();
    // And one record delivered, so that the idempotent producer has its id:
    // a broker can take hundreds of ms to hand out the first one, which the
    // bridge pays once at start-up, not per run.
    let (first_key, first_records) = &callbacks[0];
    let first = Record {
        key: Some(first_key.as_bytes()),
        payload: &first_records[0],
        headers: &headers,
    };
    topic::send(&producer, &handle, &first, context.now())
        .context("the first record was not sent")?;
    while context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed) == 0 {
        producer.poll(Duration::from_millis(10));
    }
    context.reset();

    // Delivery reports are served on a thread of their own, as the bridge
    // serves them apart from the requests that send. Not by this loop's
    // `poll(1 ms)`: rdkafka rounds what is left of a poll's timeout down to
    // whole ms, so each such call ends in a busy loop of zero-ms polls, a core
    // spent waiting that publishing does not need (and that the bridge's
    // event-driven polling does not spend).
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // The same rounding spins the last part of a ms here: 1 % of
                // the time at most.
                producer.poll(Duration::from_millis(100));
            }
        });
        let result = publish(&args, &producer, &handle, &callbacks, &headers);
        stop.store(true, Ordering::Relaxed);
        result
    })
}

/// The shortest pause of the sending loop.
const TICK: Duration = Duration::from_micros(100);

/// Publishes the records for `args.seconds`, in a closed or an open loop,
/// and prints the result line.
fn publish(
    args: &Args,
    producer: &BaseProducer<Counting>,
    handle: &TopicHandle<'_>,
    callbacks: &[(String, Vec<Vec<u8>>)],
    headers: &[(&CStr, &[u8])],
) -> anyhow::Result<()> {
    let context = producer.context();
    let mut sent = 0u64;
    // The next record to send: callback `next.0`, its record `next.1`.
    let mut next = (0usize, 0usize);
    let (cpu0, switches0) = usage();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    while Instant::now() < deadline {
        let done =
            context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed);
        // Closed loop: up to `in_flight` unacknowledged. Open loop: what the
        // rate makes due by now.
        let due = if args.rate > 0.0 {
            (started.elapsed().as_secs_f64() * args.rate) as u64
        } else {
            done + args.in_flight
        };
        // A callback's records go together, as the bridge enqueues them: at
        // low rates, records sent one by one as each falls due would each make
        // a produce request of their own, which the bridge's do not.
        while sent < due || next.1 > 0 {
            let (key, records) = &callbacks[next.0];
            let payload = &records[next.1];
            let record = Record {
                key: Some(key.as_bytes()),
                payload,
                headers,
            };
            match topic::send(producer, handle, &record, context.now()) {
                Ok(()) => {
                    sent += 1;
                    next.1 += 1;
                    if next.1 == records.len() {
                        next = ((next.0 + 1) % callbacks.len(), 0);
                    }
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => break,
                Err(error) => bail!("send failed: {error}"),
            }
        }
        // Until the next record is due (open loop) or one is acknowledged
        // (closed loop), checked every 100 µs to 1 ms: a wake-up per record
        // at high rates would cost more than publishing it.
        let pause = if args.rate > 0.0 {
            Duration::from_secs_f64((sent + 1) as f64 / args.rate)
                .saturating_sub(started.elapsed())
                .clamp(TICK, Duration::from_millis(1))
        } else {
            TICK
        };
        std::thread::sleep(pause);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, switches1) = usage();
    let delivered = context.delivered.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    let _ = producer.flush(Duration::from_secs(10));
    if failed > 0 {
        eprintln!("{failed} delivery reports were failures");
    }
    let [p50, p99, p999, max] = context.percentiles();
    let (queue_p99, rtt_p99) = *context.librdkafka_p99.lock().unwrap();
    println!(
        "REFERENCE records={delivered} seconds={elapsed:.3} records_per_sec={:.0} cpu_us_per_record={:.3} ctx_per_record={:.4} p50_ms={p50:.2} p99_ms={p99:.2} p999_ms={p999:.2} max_ms={max:.2} queue_p99_ms={:.2} rtt_p99_ms={:.2}",
        delivered as f64 / elapsed,
        (cpu1 - cpu0).as_secs_f64() * 1e6 / delivered.max(1) as f64,
        (switches1 - switches0) as f64 / delivered.max(1) as f64,
        queue_p99 as f64 / 1000.0,
        rtt_p99 as f64 / 1000.0,
    );
    Ok(())
}
