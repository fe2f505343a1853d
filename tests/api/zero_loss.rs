//! The zero-loss proof: every record of every callback answered 200 is in the
//! topic, through broker outages and injected errors. Bounded in count and time,
//! loopback only. Each run prints one line of figures (`lost=... duplicates=...`);
//! `scripts/zero-loss` runs them with the output shown.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Broker, TestApp, fixture};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::{Value, json};

/// Distinct callbacks per run, each of 4 records.
const CALLBACKS: usize = 400;
/// Concurrent senders, like CSS's parallel callbacks.
const SENDERS: usize = 16;

/// A distinct callback: the seed with its own stream and sequence.
fn callback(i: usize) -> String {
    let mut body: Value = serde_json::from_slice(&fixture("seed-sample.json")).unwrap();
    body["stream_id"] = json!(format!("stream-{i}"));
    body["sequence"] = json!(format!("{i:018}"));
    body.to_string()
}

/// Posts every callback once from `SENDERS` concurrent tasks; returns the status
/// of each. `during` runs alongside (the fault to inject).
async fn post_all(app: &TestApp, during: impl std::future::Future<Output = ()>) -> Vec<u16> {
    // Spread the run over a few seconds, so the fault hits its middle.
    post_each(
        app.url("/css/callback"),
        CALLBACKS,
        Duration::from_millis(400),
        during,
    )
    .await
}

/// Posts callbacks `0..count` once each to `url` from `SENDERS` concurrent
/// tasks, each pausing `pause` between posts; returns the status of each (0:
/// no answer). Never retries: a callback not answered 200 is not expected in
/// the topic.
async fn post_each(
    url: String,
    count: usize,
    pause: Duration,
    during: impl std::future::Future<Output = ()>,
) -> Vec<u16> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(vec![0u16; count]));
    let http = reqwest::Client::new();
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (next, statuses) = (next.clone(), statuses.clone());
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let status = match http.post(&url).body(callback(i)).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    statuses.lock().unwrap()[i] = status;
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    let ((), _) = tokio::join!(during, futures::future::join_all(senders));
    Arc::try_unwrap(statuses).unwrap().into_inner().unwrap()
}

/// The `event_id`s of callback `i`'s records.
fn expected_event_ids(i: usize) -> Vec<String> {
    common::event_ids(callback(i).as_bytes())
}

/// Checks the topic against the answers and prints the figures.
fn audit(run: &str, statuses: &[u16], messages: &[common::Consumed]) -> usize {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in messages {
        let event_id = message.record()["event_id"].as_str().unwrap().to_owned();
        *seen.entry(event_id).or_default() += 1;
    }
    let accepted: Vec<usize> = (0..statuses.len())
        .filter(|&i| statuses[i] == 200)
        .collect();
    let expected: HashSet<String> = accepted
        .iter()
        .flat_map(|&i| expected_event_ids(i))
        .collect();
    let lost = expected.iter().filter(|id| !seen.contains_key(*id)).count();
    if lost > 0 {
        explain_loss(&accepted, &seen, messages);
    }
    let duplicates = messages.len() - seen.len();
    let refused = statuses.len() - accepted.len();
    println!(
        "zero-loss [{run}]: callbacks={} answered_200={} answered_other={refused} \
         records_expected={} records_in_topic={} distinct={} lost={lost} duplicates={duplicates}",
        statuses.len(),
        accepted.len(),
        expected.len(),
        messages.len(),
        seen.len(),
    );
    lost
}

/// Prints what a failed audit needs to be understood: which accepted callbacks
/// have records missing (their key is `stream-<index>`), and how far each
/// partition was read.
fn explain_loss(accepted: &[usize], seen: &HashMap<String, usize>, messages: &[common::Consumed]) {
    for &i in accepted {
        let ids = expected_event_ids(i);
        let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing > 0 {
            let partition = messages
                .iter()
                .find(|m| m.key.as_deref() == Some(&format!("stream-{i}")))
                .map(|m| m.partition);
            eprintln!(
                "callback {i} (key stream-{i}): {missing} of {} records missing; \
                 other records of its key seen in partition {partition:?}",
                ids.len()
            );
        }
    }
    let mut partitions: HashMap<i32, (usize, i64)> = HashMap::new();
    for message in messages {
        let entry = partitions.entry(message.partition).or_insert((0, -1));
        entry.0 += 1;
        entry.1 = entry.1.max(message.offset);
    }
    eprintln!("read per partition (messages, highest offset): {partitions:?}");
}

/// Reads every partition of the topic up to its end offset, taken once every
/// answer is in: what is not found then is not in the topic.
fn read_everything(brokers: &str, topic: &str) -> Vec<common::Consumed> {
    let (messages, partitions) = common::consume_to_end(brokers, topic, Duration::from_secs(120));
    for (partition, (read, end)) in &partitions {
        assert!(
            *read as i64 >= *end,
            "partition {partition}: read {read} messages, below its end offset {end}"
        );
    }
    messages
}

/// A network partition against a broker that stays up: the bridge's
/// connections cut, the broker's state intact. (Broker restarts and failovers
/// are `failover.rs`'s, on three nodes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_record_is_lost_through_a_network_partition() {
    let broker = Broker::start_partitionable();
    let topic = broker.create_topic(3).await;
    let app = TestApp::spawn(
        &broker.bootstrap(),
        &topic,
        &["--kafka-ack-timeout-ms", "2000"],
    )
    .await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;

    let started = Instant::now();
    let outage = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        broker.partition();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        broker.heal();
    };
    let statuses = post_all(&app, outage).await;
    let messages = read_everything(&app.brokers, &app.topic);
    let lost = audit("Kafka cut off by a network partition", &statuses, &messages);
    println!("zero-loss [partition]: run took {:?}", started.elapsed());
    assert_eq!(lost, 0);
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "the fault hit the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_record_is_lost_under_injected_request_errors_and_a_broker_outage() {
    let cluster = MockCluster::new(3).unwrap();
    let topic = "css.push-errors";
    cluster.create_topic(topic, 3, 3).unwrap();
    let brokers = cluster.bootstrap_servers();
    // One produce request in flight: the mock cluster does not check idempotent
    // sequence numbers, so with several in flight, a batch it failed can be
    // followed by a later batch it stores, and librdkafka then reports the
    // failed one as delivered too ("implicit ack"), where real Kafka would
    // answer OUT_OF_ORDER_SEQUENCE_NUMBER. The bridge's embedded cluster runs
    // the same way (`EmbeddedKafka::producer_properties`).
    let flags = [
        "--kafka-ack-timeout-ms",
        "2000",
        "--kafka-property",
        "max.in.flight.requests.per.connection=1",
    ];
    let app = TestApp::spawn(&brokers, topic, &flags).await;
    app.wait_until_readiness_is(200, Duration::from_secs(10))
        .await;

    let faults = async {
        use RDKafkaRespErr::*;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Retriable produce errors, which librdkafka retries within the deadline.
        let errors = [
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        ];
        cluster.request_errors(RDKafkaApiKey::Produce, &errors.repeat(20));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // Every broker down, then back.
        cluster.broker_down(-1).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cluster.broker_up(-1).unwrap();
    };
    let statuses = post_all(&app, faults).await;
    let messages = read_everything(&brokers, topic);
    let lost = audit(
        "mock cluster: request errors, brokers down and up",
        &statuses,
        &messages,
    );
    assert_eq!(lost, 0);
    assert!(statuses.contains(&503), "the fault hit the run");
}

/// A sample of the bridge's metrics: the value of `name` (0 when absent or the
/// bridge does not answer).
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(response) = http.get(url).send().await else {
        return 0.0;
    };
    common::metric_value(&response.text().await.unwrap_or_default(), name)
}

/// The spool's proof. Kafka is cut off for longer than the senders keep trying
/// (they never retry: a callback not answered 200 is given up, as CSS gives up
/// after its retries), so whatever is answered 200 meanwhile can only reach
/// Kafka through the spool. The bridge is SIGKILLed once while Kafka is away
/// and once while it drains the spool, and started again each time on the
/// same spool; every record of every callback answered 200 must be in the
/// topic. Duplicates are allowed (the same `event_id`): a killed drainer
/// publishes its segment again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_no_acknowledged_record_is_lost_through_a_long_outage_and_two_kills() {
    const SPOOLED_CALLBACKS: usize = 2400;
    let broker = Broker::start_partitionable();
    let topic = broker.create_topic(3).await;
    let spool = tempfile::tempdir().unwrap();
    let bootstrap = broker.bootstrap();
    let args = [
        "--kafka-brokers",
        &bootstrap,
        "--kafka-topic",
        &topic,
        "--kafka-ack-timeout-ms",
        "1000",
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ];
    let bridge = common::BridgeProcess::spawn(&args, &[]).await;
    let port = bridge.port;
    let metrics_url = bridge.url("/metrics");
    let http = reqwest::Client::new();

    let started = Instant::now();
    let (kills_tx, kills_rx) = std::sync::mpsc::channel::<&str>();
    let faults = async {
        let mut bridge = bridge;
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.partition();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // Killed while Kafka is away, with callbacks in the spool.
        let spooled = metric(&http, &metrics_url, "css_bridge_spool_records").await;
        bridge.kill();
        kills_tx
            .send(if spooled > 0.0 {
                "mid-outage"
            } else {
                "mid-outage, spool empty"
            })
            .unwrap();
        bridge = common::BridgeProcess::spawn_on(port, &args, &[]).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        broker.heal();
        // Killed while the spool drains: some records drained, some waiting.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let drained = metric(
                &http,
                &metrics_url,
                "css_bridge_spool_drained_records_total",
            )
            .await;
            let waiting = metric(&http, &metrics_url, "css_bridge_spool_records").await;
            if drained > 0.0 && waiting > 0.0 {
                bridge.kill();
                kills_tx.send("mid-drain").unwrap();
                break;
            }
            if drained > 0.0 && waiting == 0.0 || Instant::now() > deadline {
                kills_tx
                    .send("no kill: the drain was over before it was seen")
                    .unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        common::BridgeProcess::spawn_on(port, &args, &[]).await
    };
    let url = format!("http://127.0.0.1:{port}/css/callback");
    let (statuses, bridge) = {
        let (bridge_tx, bridge_rx) = tokio::sync::oneshot::channel();
        let faults = async {
            let _ = bridge_tx.send(faults.await);
        };
        let statuses = post_each(url, SPOOLED_CALLBACKS, Duration::from_millis(60), faults).await;
        (statuses, bridge_rx.await.unwrap())
    };
    // Everything in the spool reaches Kafka.
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(&http, &metrics_url, "css_bridge_spool_records").await > 0.0
        || metric(&http, &metrics_url, "css_bridge_kafka_reachable").await < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the spool is not drained: {:?}",
            bridge.lines()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kills: Vec<&str> = kills_rx.try_iter().collect();
    let messages = read_everything(&broker.bootstrap(), &topic);
    let lost = audit(
        "spool: Kafka cut off, bridge killed twice",
        &statuses,
        &messages,
    );
    println!(
        "zero-loss [spool]: kills: {kills:?}; run took {:?}",
        started.elapsed()
    );
    drop(bridge);
    assert_eq!(lost, 0);
    assert_eq!(
        kills,
        ["mid-outage", "mid-drain"],
        "both kills hit what they aim at"
    );
    let answered_during_outage = statuses.iter().filter(|&&s| s == 200).count();
    assert!(answered_during_outage > 0);
}
