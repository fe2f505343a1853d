//! The spool's store, measured: the bridge's own segment log (`spool::log`, the
//! real `Spool` with its group-commit writer thread) against redb, a well-kept
//! embedded B-tree store, used the same way (one writer thread taking every
//! waiting append into one durable transaction). The workload is the spool's:
//! 256 concurrent callbacks appending 4-record frames of the sample's size,
//! each answered only once durable; then the drain, reading everything in
//! order and deleting it.
//!
//! ```sh
//! cargo run --release --example spool_store -- [SECONDS] [DIRECTORY]
//! ```
//!
//! Prints one line per store: appends/s, durable commits (fsync groups),
//! bytes on disk when full and after the drain, drain frames/s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use css_kafka_bridge::metrics::Metrics;
use css_kafka_bridge::publish::{Batch, DeadLetter, Delivery, Load, Publish, PublishError};
use css_kafka_bridge::spool::Spool;
use css_kafka_bridge::spool::drain::{Until, drain};
use futures::future::BoxFuture;
use redb::{ReadableDatabase, TableDefinition};
use tokio::sync::oneshot;

const CONCURRENCY: usize = 256;
const RECORDS: usize = 4;
/// About the size of one encoded record of the CSS sample.
const RECORD_BYTES: usize = 300;

/// A callback's batch: records that compress like real ones do not matter
/// here (nothing is compressed), only their size.
fn batch(i: u64) -> Batch {
    let mut payloads = Vec::with_capacity(RECORDS * RECORD_BYTES);
    let mut ends = Vec::with_capacity(RECORDS);
    for r in 0..RECORDS {
        payloads.extend((0..RECORD_BYTES).map(|b| (i as usize + r * 31 + b) as u8));
        ends.push(payloads.len());
    }
    Batch {
        key: format!("stream-{}", i % 64),
        payloads,
        ends,
    }
}

/// Where the drain publishes: nowhere, at once.
struct Nowhere;

impl Publish for Nowhere {
    fn publish<'a>(
        &'a self,
        _: &'a Batch,
        _: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn hand_over<'a>(&'a self, _: &'a Batch) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
        let delivery: Delivery<'a> = Box::pin(std::future::ready(Ok(())));
        Box::pin(std::future::ready(Ok(delivery)))
    }
    fn keeps_dead_letters(&self) -> bool {
        false
    }
    fn publish_dead_letter<'a>(
        &'a self,
        _: DeadLetter<'a>,
        _: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn load(&self) -> Load {
        Load::default()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct Figures {
    appends: u64,
    seconds: f64,
    commits: u64,
    full_bytes: u64,
    drained_bytes: u64,
    drain_seconds: f64,
}

impl Figures {
    fn print(&self, store: &str) {
        println!(
            "{store:<12} appends/s {:>8.0}  callbacks per fsync {:>6.1}  on disk {:>6.1} MiB full, {:>6.1} MiB drained  drain frames/s {:>9.0}",
            self.appends as f64 / self.seconds,
            self.appends as f64 / self.commits.max(1) as f64,
            self.full_bytes as f64 / 1048576.0,
            self.drained_bytes as f64 / 1048576.0,
            self.appends as f64 / self.drain_seconds,
        );
    }
}

/// Runs `CONCURRENCY` tasks calling `append` for `seconds`; returns how many
/// appends completed.
async fn load<F, Fut>(seconds: f64, append: F) -> u64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (stop, count, append) = (stop.clone(), count.clone(), append.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = count.fetch_add(1, Ordering::Relaxed);
                    append(i).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed)
}

async fn segment_log(dir: PathBuf, seconds: f64) -> Figures {
    let metrics = Arc::new(Metrics::new("/css/callback"));
    let spool = Spool::open(&dir, u64::MAX, metrics.clone()).unwrap();
    let started = Instant::now();
    let appender = spool.clone();
    let appends = load(seconds, move |i| {
        let spool = appender.clone();
        async move { spool.append(&batch(i)).await.unwrap() }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let commits = metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("css_bridge_spool_fsync_duration_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let full_bytes = dir_bytes(&dir);
    let started = Instant::now();
    drain(spool.clone(), Arc::new(Nowhere), Until::Empty, None).await;
    while spool.bytes() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    Figures {
        appends,
        seconds: elapsed,
        commits,
        full_bytes,
        drained_bytes: dir_bytes(&dir),
        drain_seconds,
    }
}

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

type Append = (Vec<u8>, oneshot::Sender<()>);

async fn redb_store(dir: PathBuf, seconds: f64) -> Figures {
    std::fs::create_dir_all(&dir).unwrap();
    let db = Arc::new(redb::Database::create(dir.join("spool.redb")).unwrap());
    let (sender, receiver) = std::sync::mpsc::channel::<Append>();
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, commits) = (db.clone(), commits.clone());
        std::thread::spawn(move || {
            let mut next = 0u64;
            while let Ok(first) = receiver.recv() {
                let group: Vec<Append> =
                    std::iter::once(first).chain(receiver.try_iter()).collect();
                let txn = db.begin_write().unwrap();
                {
                    let mut table = txn.open_table(TABLE).unwrap();
                    for (frame, _) in &group {
                        table.insert(next, frame.as_slice()).unwrap();
                        next += 1;
                    }
                }
                txn.commit().unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
                for (_, done) in group {
                    let _ = done.send(());
                }
            }
        })
    };
    let started = Instant::now();
    let appends = load(seconds, move |i| {
        let sender = sender.clone();
        async move {
            // The same bytes the segment log writes: the spool's frame.
            let mut frame = Vec::new();
            css_kafka_bridge::spool::log::encode_frame(&batch(i), 0, &mut frame);
            let (done, answer) = oneshot::channel();
            sender.send((frame, done)).unwrap();
            answer.await.unwrap();
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    writer.join().unwrap();
    let full_bytes = dir_bytes(&dir);
    // The drain: read a window in order, then delete it, as the drainer does.
    let started = Instant::now();
    let mut from = 0u64;
    loop {
        let keys: Vec<u64> = {
            let read = db.begin_read().unwrap();
            let table = read.open_table(TABLE).unwrap();
            table
                .range(from..)
                .unwrap()
                .take(512)
                .map(|entry| {
                    let (key, value) = entry.unwrap();
                    std::hint::black_box(value.value().len());
                    key.value()
                })
                .collect()
        };
        let Some(&last) = keys.last() else { break };
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            table.retain_in(from..=last, |_, _| false).unwrap();
        }
        txn.commit().unwrap();
        from = last + 1;
    }
    Figures {
        appends,
        seconds: elapsed,
        commits: commits.load(Ordering::Relaxed),
        full_bytes,
        drained_bytes: dir_bytes(&dir),
        drain_seconds: started.elapsed().as_secs_f64(),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(5.0, |s| s.parse().expect("SECONDS"));
    let base = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("spool-store-{}", std::process::id()));
    println!(
        "{CONCURRENCY} concurrent appends of {RECORDS} x {RECORD_BYTES}-byte records for {seconds} s each, in {}",
        dir.display()
    );
    let figures = segment_log(dir.join("segments"), seconds).await;
    figures.print("segment log");
    let figures = redb_store(dir.join("redb"), seconds).await;
    figures.print("redb");
    let _ = std::fs::remove_dir_all(&dir);
}
