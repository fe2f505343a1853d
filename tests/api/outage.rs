//! An outage as the people on call read it: Kafka cut off under a steady load
//! writes a bounded number of log lines, which still account for every refused
//! callback, and the metrics count every event.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BridgeProcess, Broker, fixture};
use serde_json::{Value, json};

/// How long Kafka stays away: a shortened equivalent of a long outage, several
/// summary intervals (below) long.
const OUTAGE: Duration = Duration::from_secs(20);
const SUMMARY_INTERVAL_SECS: &str = "4";
/// Lines an outage of any length may add beyond start-up and shutdown: a few
/// transitions and one summary per interval.
const MAX_OUTAGE_LINES: usize = 20;
/// Concurrent senders, each posting a callback every `PAUSE`.
const SENDERS: usize = 8;
const PAUSE: Duration = Duration::from_millis(20);

/// Statuses the load generator has seen, by class.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    server_errors: AtomicU64,
    other: AtomicU64,
}

/// Posts distinct callbacks from `SENDERS` tasks until `stop` is set.
fn steady_load(
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::new();
    (0..SENDERS)
        .map(|sender| {
            let (http, url, stop, tally) = (http.clone(), url.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut body: Value = serde_json::from_slice(&fixture("seed-sample.json")).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    body["stream_id"] = json!(format!("load-{sender}-{i}"));
                    i += 1;
                    let status = match http.post(&url).body(body.to_string()).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    let class = match status {
                        200 => &tally.ok,
                        500..=599 => &tally.server_errors,
                        _ => &tally.other,
                    };
                    class.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(PAUSE).await;
                }
            })
        })
        .collect()
}

/// The refusals a summary line accounts for: its `refused` field reads
/// `kafka_unavailable=12 overloaded=3`, or `none`.
fn refused_in(line: &Value) -> u64 {
    line["refused"]
        .as_str()
        .unwrap_or("none")
        .split(' ')
        .filter_map(|count| count.split_once('='))
        .map(|(_, n)| n.parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn kafka_unreachable_under_steady_load_writes_a_few_lines_and_counts_every_event() {
    let broker = Broker::start_partitionable();
    let topic = broker.create_topic(3).await;
    let bridge = BridgeProcess::spawn(
        &[
            "--kafka-brokers",
            &broker.bootstrap(),
            "--kafka-topic",
            &topic,
            // Callbacks get 503 three seconds into the outage.
            "--kafka-ack-timeout-ms",
            "3000",
            "--log-summary-interval-secs",
            SUMMARY_INTERVAL_SECS,
        ],
        &[("RUST_LOG", "info")],
    )
    .await;
    let http = reqwest::Client::new();
    let ready = || async {
        http.get(bridge.url("/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let start = Instant::now();
    while ready().await.ok() != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not ready: {:?}",
            bridge.lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start_up_lines = bridge.lines().len();

    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let load = steady_load(bridge.url("/css/callback"), stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.partition();
    tokio::time::sleep(OUTAGE).await;
    broker.heal();
    // Back: callbacks are answered 200 again, by the same producer (records
    // that timed out in flight made librdkafka bump its epoch; Kafka accepts that).
    let healed = Instant::now();
    let ok_at_heal = tally.ok.load(Ordering::Relaxed);
    while tally.ok.load(Ordering::Relaxed) < ok_at_heal + 50 {
        assert!(
            healed.elapsed() < Duration::from_secs(40),
            "callbacks not accepted again after the outage:\n{}",
            bridge.lines()[start_up_lines..].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Callbacks can succeed before the Kafka watcher's next check, which
    // writes the "reachable again" line and turns readiness back on together.
    while ready().await.ok() != Some(200) {
        assert!(
            healed.elapsed() < Duration::from_secs(40),
            "not ready again after the outage:\n{}",
            bridge.lines()[start_up_lines..].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    futures::future::join_all(load).await;
    let metrics = http
        .get(bridge.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, lines) = bridge.stop();
    assert!(status.success(), "clean exit: {status:?}");

    let outage_lines: Vec<Value> = lines[start_up_lines..]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .filter(|line: &Value| {
            !line["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("shutting down")
        })
        .filter(|line| line["message"] != "stopped")
        .collect();
    let server_errors = tally.server_errors.load(Ordering::Relaxed);
    let report = || {
        format!(
            "ok={} 5xx={server_errors} other={}; {} lines:\n{}",
            tally.ok.load(Ordering::Relaxed),
            tally.other.load(Ordering::Relaxed),
            outage_lines.len(),
            outage_lines
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    println!("{}", report());
    assert!(
        server_errors > 0,
        "the outage refused callbacks: {}",
        report()
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{}", report());
    assert!(outage_lines.len() <= MAX_OUTAGE_LINES, "{}", report());
    assert!(
        outage_lines.iter().all(|line| line["level"] != "ERROR"),
        "an outage of Kafka is not an error of the bridge: {}",
        report()
    );

    let with_message = |message: &str| -> Vec<&Value> {
        outage_lines
            .iter()
            .filter(|line| {
                line["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    };
    let down = with_message("Kafka unreachable");
    assert_eq!(down.len(), 1, "one line when Kafka goes: {}", report());
    assert!(
        down[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{}",
        report()
    );
    let back = with_message("Kafka reachable again");
    assert_eq!(back.len(), 1, "one line when Kafka is back: {}", report());
    assert!(
        back[0]["down_for_secs"].as_u64().unwrap() >= 10,
        "{}",
        report()
    );
    assert!(back[0]["refused"].as_u64().unwrap() > 0, "{}", report());
    assert!(
        with_message("Kafka still unreachable").len() >= 2,
        "summaries while it lasts: {}",
        report()
    );
    assert!(
        with_message("callback refused").is_empty(),
        "no line per 503: {}",
        report()
    );

    // The summaries, the last one written at shutdown, account for every 5xx.
    let summarised: u64 = outage_lines.iter().map(refused_in).sum();
    assert_eq!(summarised, server_errors, "{}", report());
    // And the metrics count every event.
    assert_eq!(
        common::family_sum(&metrics, "css_bridge_failed_callbacks_total") as u64,
        server_errors,
        "{metrics}"
    );
    assert_eq!(
        common::metric_value(
            &metrics,
            r#"css_bridge_http_requests_total{route="/css/callback",status="503"}"#
        ) as u64
            + common::metric_value(
                &metrics,
                r#"css_bridge_http_requests_total{route="/css/callback",status="500"}"#
            ) as u64,
        server_errors,
        "{metrics}"
    );
    assert!(
        common::family_sum(&metrics, "css_bridge_kafka_client_errors_total") > 0.0,
        "{metrics}"
    );
    assert_eq!(
        common::metric_value(&metrics, "css_bridge_kafka_reachable"),
        1.0,
        "{metrics}"
    );
}
