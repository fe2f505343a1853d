//! The hot path of one callback, stage by stage, with the canonical sample
//! (`tests/fixtures/seed-sample.json`, 4 records). Kafka is not involved.
//!
//! ```sh
//! cargo bench --bench hot_path              # full run
//! cargo bench --bench hot_path -- --quick   # a quick look
//! cargo bench --bench hot_path -- inspect   # only the benchmarks matching "inspect"
//! ```
//!
//! Throughput is reported in records (elements): every benchmark handles one
//! callback, which yields [`RECORDS`] records, so "elem/s" reads as records per
//! second and one core's ceiling for that stage. Callbacks per second are that
//! divided by 4.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use css_kafka_bridge::css::signature::expected_sign;
use css_kafka_bridge::css::{self, CallbackKey, Inbound, Verifier};
use css_kafka_bridge::{avro, ingest, record};

const SEED: &[u8] = include_bytes!("../tests/fixtures/seed-sample.json");
/// Records the seed sample yields (2 error groups × 2 details).
const RECORDS: u64 = 4;
/// A fixed "now" (Unix seconds), so results do not depend on the wall clock.
const NOW_SECS: i64 = 1_670_588_075;
const RECEIVED_AT_MS: i64 = NOW_SECS * 1000;
const KEY: &str = "bench-callback-key";
/// The bridge's default bound on a callback's encoded records.
const LIMIT: usize = css_kafka_bridge::config::DEFAULT_MAX_IN_FLIGHT_BYTES as usize;

/// The seed sample with a valid `sign`/`t` for [`KEY`], as CSS sends it when a
/// callback key is configured (`t` is when the signature expires).
fn signed_seed() -> Vec<u8> {
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(SEED).expect("the seed sample is a JSON object");
    let t = NOW_SECS + 600;
    body.insert("t".into(), t.into());
    body.insert("sign".into(), expected_sign(KEY, t).into());
    serde_json::to_vec(&body).expect("serializable")
}

fn push_error<'a>(
    inbound: Result<Inbound<'a>, css::InboundError<'a>>,
) -> css::PushErrorCallback<'a> {
    match inbound.expect("the sample is accepted") {
        Inbound::PushError(callback) => callback,
        Inbound::Ignored { event_type } => panic!("the sample is a push error, not {event_type}"),
    }
}

fn hot_path(c: &mut Criterion) {
    let no_keys = Verifier::default();
    // The bridge's defaults: 300 s of clock skew, CSS's 600 s ahead plus the skew.
    let key = CallbackKey::parse(KEY).expect("a key");
    let one_key = Verifier::new(vec![key], 300, Verifier::default_horizon_secs(300));
    let signed = signed_seed();

    // Check once, outside the timed loops, that every benchmark does the real work.
    let callback = push_error(css::inspect(SEED, &no_keys, NOW_SECS));
    push_error(css::inspect(&signed, &one_key, NOW_SECS));
    let records = record::flatten(&callback, RECEIVED_AT_MS);
    assert_eq!(records.len() as u64, RECORDS);
    let batch = ingest::encode_callback(&callback, RECEIVED_AT_MS, None, LIMIT).unwrap();
    assert_eq!(batch.len() as u64, RECORDS);

    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(RECORDS));

    // JSON body → wire model (borrowing strings from the body).
    group.bench_function("decode", |b| {
        b.iter(|| css::decode(black_box(SEED)).expect("decodes"))
    });

    // decode + (disabled) authentication + validation: what a request without
    // callback keys does before flattening.
    group.bench_function("inspect", |b| {
        b.iter(|| css::inspect(black_box(SEED), &no_keys, NOW_SECS).expect("accepted"))
    });

    // The same with one callback key: adds md5(key + t) and a constant-time compare.
    group.bench_function("inspect_signed", |b| {
        b.iter(|| css::inspect(black_box(&signed), &one_key, NOW_SECS).expect("accepted"))
    });

    // Validated callback → 4 records (event_id SHA-256, interval parsing, ...).
    group.bench_function("flatten", |b| {
        b.iter(|| record::flatten(black_box(&callback), RECEIVED_AT_MS))
    });

    // 4 records → 4 Avro payloads.
    group.bench_function("encode", |b| {
        b.iter(|| {
            for record in black_box(&records) {
                black_box(avro::encode(record));
            }
        })
    });

    // Everything a request does except HTTP and Kafka: inspect, bound the
    // records' size (for admission's room), then flatten and encode into the
    // batch the publisher would send.
    group.bench_function("end_to_end_without_kafka", |b| {
        b.iter(|| {
            let callback = push_error(css::inspect(black_box(SEED), &no_keys, NOW_SECS));
            black_box(ingest::max_batch_len(&callback, false));
            ingest::encode_callback(&callback, RECEIVED_AT_MS, None, LIMIT).unwrap()
        })
    });

    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
