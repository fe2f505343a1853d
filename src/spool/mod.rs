//! The durable spool: when Kafka cannot acknowledge a callback, its records are
//! made durable on local disk instead, the callback is answered 200, and a
//! drainer publishes them once Kafka is back.
//!
//! Without a spool the bridge answers 503 and relies on CSS's retries, which end
//! after about 12 minutes; a longer Kafka outage would lose callbacks. With one:
//!
//! - [`Spooling`] is the [`Publish`] the service uses: Kafka first, as before;
//!   when Kafka does not acknowledge within the deadline (or refuses for now),
//!   the same encoded records go to the spool and the answer waits for their
//!   fsync. While the spool holds anything, new callbacks go to it directly, so
//!   that one stream's records reach Kafka in the order they came.
//! - [`Spool`] owns the files ([`log`]): one writer thread appends the frames of
//!   every callback waiting at that moment and syncs once for all of them (group
//!   commit), and refuses what would take the spool past its size limit (503).
//! - [`drain`] publishes the spool front to back through the same idempotent
//!   producer, releases segments once Kafka has acknowledged all of their
//!   records, and so hands back to the direct path when the spool is empty.
//!
//! A record may reach Kafka twice (a crash between Kafka's acknowledgement and
//! the release; a direct attempt that Kafka stored after the deadline), never
//! zero times once answered 200: consumers drop duplicates by `event_id`.

pub mod drain;
pub mod log;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, oneshot};

use crate::css;
use crate::ingest::Publish;
use crate::kafka::{Batch, PublishError};
use crate::metrics::Metrics;
use log::{Position, SegmentLog};

/// Size of a segment file. Small enough that a crash re-publishes little
/// (the segment being drained is published again from its start), large
/// enough that files stay few.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// Room a spool needs to count as not full: a large callback's frame.
const ROOM_FOR_A_CALLBACK: u64 = 64 << 10;
/// Name of the lock file that keeps two processes off one spool.
const LOCK_FILE: &str = "LOCK";
/// Name of the file that says which schema the spooled records are encoded
/// with (its fingerprint): the drain publishes them with the running version's
/// schema headers, so those must be theirs.
const SCHEMA_FILE: &str = "SCHEMA";

/// Why the spool did not take a callback's records. Either way the callback
/// gets 503, never 200.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({limit} bytes)")]
    Full { limit: u64 },
    #[error("the spool cannot write to disk: {0}")]
    Io(#[from] io::Error),
    #[error("the spool is closed")]
    Closed,
}

/// The spool holds records encoded with another schema than this version's.
#[derive(Debug, thiserror::Error)]
#[error(
    "the spool in {dir} holds records encoded with the schema whose fingerprint is {spooled}, \
     this version encodes with {current}: publish them with the version that wrote them \
     (css-kafka-bridge spool drain --spool-dir ...) before starting this one on that directory"
)]
pub struct SpoolSchemaMismatch {
    pub dir: PathBuf,
    pub spooled: String,
    pub current: String,
}

/// Another process holds the spool directory.
#[derive(Debug, thiserror::Error)]
#[error("the spool in {0} is in use by another process")]
pub struct SpoolInUse(pub PathBuf);

/// What the writer thread is asked to do.
enum Command {
    Append {
        frame: Vec<u8>,
        records: u64,
        spooled_at_ms: i64,
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Every frame before this position is in Kafka.
    Release(Position, ReleasedCounts),
}

/// What a release takes off the spool's counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleasedCounts {
    pub frames: u64,
    pub records: u64,
    /// When the oldest frame still waiting was spooled (`None`: none waits, or
    /// not known yet).
    pub next_oldest_ms: Option<i64>,
}

/// The spool's state as the service sees it.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Where durably written frames end.
    end: Position,
    /// Frames and records written and not yet released.
    frames: u64,
    records: u64,
    bytes: u64,
    oldest_spooled_at_ms: Option<i64>,
}

/// The spool: a directory of segment files with a writer thread.
pub struct Spool {
    dir: PathBuf,
    commands: std::sync::mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// Appends handed to the writer and not answered yet.
    appending: AtomicU64,
    /// Where the first frame not yet released starts: where a drainer begins.
    start: Mutex<Position>,
    /// Joined when the spool is dropped, so that the files are left alone
    /// before the lock is released.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Held for the life of the spool: the directory's lock.
    _lock: std::fs::File,
}

/// What the spool and its writer thread share.
struct Shared {
    limit: u64,
    counts: Mutex<Counts>,
    /// Wakes the drainer when frames are written.
    written: Notify,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn counts(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_counts(&self, counts: &Counts) {
        self.metrics.set_spool(
            counts.bytes,
            counts.records,
            counts.oldest_spooled_at_ms.map(|ms| ms as f64 / 1000.0),
        );
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Closing the channel ends the writer thread once it has answered what
        // it holds.
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Spool {
    /// Opens the spool in `dir` (creating it), at most `limit` bytes on disk:
    /// locks it, recovers what a crash left (see [`log::SegmentLog::open`]),
    /// and starts the writer thread.
    pub fn open(dir: &Path, limit: u64, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::File::create(dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            return Err(SpoolInUse(dir.to_owned()).into());
        }
        let (log, recovered) = SegmentLog::open(dir, SEGMENT_BYTES)?;
        check_schema(dir, recovered.frames > 0)?;
        if recovered.torn_bytes > 0 {
            tracing::warn!(
                bytes = recovered.torn_bytes,
                "spool: cut off a torn write at the end (never acknowledged)"
            );
        }
        if recovered.damaged > 0 {
            // Counted in the metrics when the drainer skips them.
            tracing::error!(
                frames = recovered.damaged,
                bytes = recovered.damaged_bytes,
                "spool: found damaged data; it is skipped, the rest is kept"
            );
        }
        if recovered.frames > 0 {
            tracing::info!(
                callbacks = recovered.frames,
                records = recovered.records,
                "spool: records waiting for Kafka from before the restart"
            );
        }
        let counts = Counts {
            end: log.end(),
            frames: recovered.frames,
            records: recovered.records,
            bytes: log.bytes(),
            oldest_spooled_at_ms: recovered.oldest_spooled_at_ms,
        };
        let (commands, receiver) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            limit,
            counts: Mutex::new(counts),
            written: Notify::new(),
            metrics,
        });
        shared.publish_counts(&counts);
        shared.metrics.set_spool_capacity(limit);
        let start = log.start();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || write_loop(log, receiver, &shared))?
        };
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            commands,
            shared,
            appending: AtomicU64::new(0),
            start: Mutex::new(start),
            writer: Some(writer),
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the first frame not yet released starts: where a drainer begins
    /// (the service's, and the last one at shutdown).
    pub fn start(&self) -> Position {
        *self.start.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether callbacks must go through the spool: it holds records, or some
    /// are being written.
    pub fn holds_records(&self) -> bool {
        self.appending.load(Ordering::Acquire) > 0 || self.counts().frames > 0
    }

    /// Records waiting for Kafka.
    pub fn records(&self) -> u64 {
        self.counts().records
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.counts().bytes
    }

    /// Whether a callback of ordinary size would no longer fit.
    pub fn is_full(&self) -> bool {
        self.counts().bytes + ROOM_FOR_A_CALLBACK > self.shared.limit
    }

    /// Where durably written frames end.
    pub fn end(&self) -> Position {
        self.counts().end
    }

    /// Appends `batch` and resolves once it is on disk (fsynced together with
    /// whatever else was waiting), or with why not.
    pub async fn append(&self, batch: &Batch) -> Result<(), SpoolError> {
        let spooled_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let mut frame = Vec::with_capacity(batch.payloads.len() + batch.key.len() + 64);
        log::encode_frame(batch, spooled_at_ms, &mut frame);
        let (done, answer) = oneshot::channel();
        self.appending.fetch_add(1, Ordering::AcqRel);
        let _answered = Answered(&self.appending);
        self.commands
            .send(Command::Append {
                frame,
                records: batch.len() as u64,
                spooled_at_ms,
                done,
            })
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// The drainer has every frame before `upto` in Kafka.
    pub fn release(&self, upto: Position, released: ReleasedCounts) {
        {
            let mut start = self.start.lock().unwrap_or_else(|e| e.into_inner());
            *start = (*start).max(upto);
        }
        let _ = self.commands.send(Command::Release(upto, released));
    }

    /// The drainer has read a frame spooled at `spooled_at_ms` as the oldest
    /// one waiting.
    pub fn note_oldest(&self, spooled_at_ms: i64) {
        let mut counts = self.shared.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.frames > 0 {
            counts.oldest_spooled_at_ms = Some(spooled_at_ms);
            let snapshot = *counts;
            drop(counts);
            self.shared.publish_counts(&snapshot);
        }
    }

    /// Resolves when frames may have been written since the call.
    pub async fn written(&self) {
        self.shared.written.notified().await;
    }

    fn counts(&self) -> Counts {
        self.shared.counts()
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

/// Refuses a spool whose records were encoded with another schema (when it
/// holds any), and records this version's schema for the records to come.
fn check_schema(dir: &Path, holds_records: bool) -> anyhow::Result<()> {
    let current = crate::avro::RecordSchema::get().fingerprint();
    let path = dir.join(SCHEMA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(spooled) if holds_records && spooled.trim() != current => {
            return Err(SpoolSchemaMismatch {
                dir: dir.to_owned(),
                spooled: spooled.trim().to_owned(),
                current: current.to_owned(),
            }
            .into());
        }
        Ok(spooled) if spooled.trim() == current => return Ok(()),
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    std::fs::write(&path, current)?;
    std::fs::File::open(&path)?.sync_all()?;
    Ok(())
}

/// Takes one off the appending count when dropped, also when the waiting
/// request is dropped.
struct Answered<'a>(&'a AtomicU64);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The writer thread: takes every command waiting, writes the appends that fit
/// in one go, syncs once, answers them all. Ends when the spool is dropped.
fn write_loop(mut log: SegmentLog, commands: std::sync::mpsc::Receiver<Command>, spool: &Shared) {
    let mut frames = Vec::new();
    let mut accepted = Vec::new();
    while let Ok(first) = commands.recv() {
        frames.clear();
        accepted.clear();
        let mut release: Option<(Position, ReleasedCounts)> = None;
        let mut released = ReleasedCounts::default();
        for command in std::iter::once(first).chain(commands.try_iter()) {
            match command {
                Command::Append {
                    frame,
                    records,
                    spooled_at_ms,
                    done,
                } => {
                    if log.bytes() + (frames.len() + frame.len()) as u64 > spool.limit {
                        let _ = done.send(Err(SpoolError::Full { limit: spool.limit }));
                        continue;
                    }
                    frames.extend_from_slice(&frame);
                    accepted.push((records, spooled_at_ms, done));
                }
                Command::Release(upto, counts) => {
                    released.frames += counts.frames;
                    released.records += counts.records;
                    released.next_oldest_ms = counts.next_oldest_ms;
                    release = Some((upto, released));
                }
            }
        }
        if let Some((upto, _)) = release
            && let Err(error) = log.release(upto)
        {
            tracing::error!(%error, "spool: cannot delete drained segments");
        }
        let written = if accepted.is_empty() {
            Ok(log.end())
        } else {
            let started = Instant::now();
            let written = log.append(&frames);
            spool.metrics.observe_spool_fsync(started.elapsed());
            written
        };
        let mut counts = spool.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((upto, _)) = release {
            if upto >= counts.end {
                // Everything written is drained: whatever the counts say (a
                // damaged frame the reader skipped is never released one by one).
                counts.frames = 0;
                counts.records = 0;
            } else {
                counts.frames -= released.frames.min(counts.frames);
                counts.records -= released.records.min(counts.records);
            }
            if released.next_oldest_ms.is_some() {
                counts.oldest_spooled_at_ms = released.next_oldest_ms;
            }
        }
        let ok = written.is_ok();
        if let Ok(end) = written {
            counts.end = end;
            for (records, spooled_at_ms, _) in &accepted {
                counts.frames += 1;
                counts.records += records;
                counts.oldest_spooled_at_ms.get_or_insert(*spooled_at_ms);
            }
        }
        if counts.frames == 0 {
            counts.oldest_spooled_at_ms = None;
        }
        counts.bytes = log.bytes();
        let snapshot = *counts;
        drop(counts);
        spool.publish_counts(&snapshot);
        match written {
            Ok(_) => {
                spool.metrics.count_spool_appends(accepted.len() as u64);
                for (_, _, done) in accepted.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(%error, callbacks = accepted.len(), "spool: write failed; callbacks answered 503");
                for (_, _, done) in accepted.drain(..) {
                    let _ = done.send(Err(SpoolError::Io(io::Error::new(
                        error.kind(),
                        error.to_string(),
                    ))));
                }
            }
        }
        if ok && !frames.is_empty() {
            spool.written.notify_one();
        }
    }
}

/// The service's [`Publish`]: Kafka directly, and the spool when Kafka cannot
/// take the records (see the module docs). Without a spool it is Kafka alone.
pub struct Spooling<P> {
    inner: Arc<P>,
    spool: Option<Arc<Spool>>,
}

impl<P: Publish> Spooling<P> {
    pub fn new(inner: Arc<P>, spool: Option<Arc<Spool>>) -> Self {
        Self { inner, spool }
    }

    /// Where records go directly: Kafka.
    pub fn inner(&self) -> &Arc<P> {
        &self.inner
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }
}

impl<P: Publish> Publish for Spooling<P> {
    async fn publish(&self, batch: &Batch) -> Result<(), PublishError> {
        let Some(spool) = &self.spool else {
            return self.inner.publish(batch).await;
        };
        if !spool.holds_records() {
            match self.inner.publish(batch).await {
                Ok(()) => return Ok(()),
                Err(error) if !error.is_retriable() => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "Kafka did not take the records: spooling them")
                }
            }
        }
        spool
            .append(batch)
            .await
            .map_err(|error| PublishError::Spool(error.to_string()))
    }

    fn keeps_dead_letters(&self) -> bool {
        self.inner.keeps_dead_letters()
    }

    async fn publish_dead_letter(
        &self,
        letter: &css::redact::DeadLetter,
        reason: &str,
        field: Option<&str>,
    ) -> Result<(), PublishError> {
        self.inner.publish_dead_letter(letter, reason, field).await
    }

    fn queued(&self) -> i32 {
        self.inner.queued()
    }
}

#[cfg(test)]
mod tests {
    use super::drain::{Drained, Until, drain};
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// Kafka as the spool's tests need it: takes batches (keeping their keys)
    /// or, while `down`, refuses them for now.
    #[derive(Default)]
    struct StandIn {
        down: AtomicBool,
        published: Mutex<Vec<String>>,
    }

    impl Publish for StandIn {
        async fn publish(&self, batch: &Batch) -> Result<(), PublishError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(PublishError::Timeout(Duration::from_millis(1)));
            }
            self.published.lock().unwrap().push(batch.key.clone());
            Ok(())
        }

        fn keeps_dead_letters(&self) -> bool {
            false
        }

        async fn publish_dead_letter(
            &self,
            _: &css::redact::DeadLetter,
            _: &str,
            _: Option<&str>,
        ) -> Result<(), PublishError> {
            Ok(())
        }

        fn queued(&self) -> i32 {
            0
        }
    }

    fn batch(key: &str) -> Batch {
        Batch {
            key: key.into(),
            payloads: b"one record".to_vec(),
            ends: vec![10],
        }
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(crate::http::CALLBACK_PATH))
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = metrics();
        let spool = Spool::open(dir.path(), 1 << 30, metrics.clone()).unwrap();
        let appends: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&batch(&format!("s{i}"))).await })
            })
            .collect();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        assert_eq!((spool.records(), spool.counts().frames), (200, 200));
        let text = metrics.encode();
        let fsyncs: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("css_bridge_spool_fsync_duration_seconds_count "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            fsyncs < 200,
            "group commit: {fsyncs} fsyncs for 200 appends"
        );
        assert!(
            text.contains("css_bridge_spool_appends_total 200"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_never_grows_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 200, metrics()).unwrap();
        let mut taken = 0;
        for i in 0..10 {
            match spool.append(&batch(&format!("s{i}"))).await {
                Ok(()) => taken += 1,
                Err(SpoolError::Full { limit: 200 }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert!(taken > 0 && taken < 10, "{taken}");
        assert!(spool.bytes() <= 200, "{}", spool.bytes());
        assert!(spool.is_full());
    }

    #[tokio::test]
    async fn records_of_another_schema_are_refused_until_drained() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
            spool.append(&batch("old")).await.unwrap();
        }
        // Written by a version with another schema.
        std::fs::write(dir.path().join(SCHEMA_FILE), "another-fingerprint").unwrap();
        let error = Spool::open(dir.path(), 1 << 20, metrics()).err().unwrap();
        assert!(error.to_string().contains("spool drain"), "{error}");

        // Empty, the spool takes this version's schema.
        std::fs::write(
            dir.path().join(SCHEMA_FILE),
            crate::avro::RecordSchema::get().fingerprint(),
        )
        .unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        drain(spool.clone(), Arc::new(StandIn::default()), Until::Empty).await;
        drop(spool);
        std::fs::write(dir.path().join(SCHEMA_FILE), "another-fingerprint").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert_eq!(spool.records(), 0);
        let written = std::fs::read_to_string(dir.path().join(SCHEMA_FILE)).unwrap();
        assert_eq!(written, crate::avro::RecordSchema::get().fingerprint());
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        let error = Spool::open(dir.path(), 1 << 20, metrics()).err().unwrap();
        assert!(error.to_string().contains("in use"), "{error}");
    }

    #[tokio::test]
    async fn the_drainer_publishes_in_order_and_empties_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for i in 0..1500 {
            spool.append(&batch(&format!("s{i}"))).await.unwrap();
        }
        let kafka = Arc::new(StandIn::default());
        let drained = drain(spool.clone(), kafka.clone(), Until::Empty).await;
        assert_eq!(
            drained,
            Drained {
                callbacks: 1500,
                records: 1500
            }
        );
        let published = kafka.published.lock().unwrap().clone();
        assert_eq!(
            published,
            (0..1500).map(|i| format!("s{i}")).collect::<Vec<_>>()
        );
        // The release reaches the writer thread asynchronously.
        for _ in 0..100 {
            if !spool.holds_records() && spool.bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!spool.holds_records());
        assert_eq!(spool.bytes(), 0, "an empty spool takes no disk");
    }

    /// Kafka as slow as during a failover: every acknowledgement comes after
    /// the callbacks' deadline, but comes.
    struct SlowerThanTheDeadline(StandIn);

    impl Publish for SlowerThanTheDeadline {
        async fn publish(&self, _: &Batch) -> Result<(), PublishError> {
            Err(PublishError::Timeout(Duration::from_millis(1)))
        }

        async fn deliver(&self, batch: &Batch) -> Result<(), PublishError> {
            self.0.publish(batch).await
        }

        fn keeps_dead_letters(&self) -> bool {
            false
        }

        async fn publish_dead_letter(
            &self,
            _: &css::redact::DeadLetter,
            _: &str,
            _: Option<&str>,
        ) -> Result<(), PublishError> {
            Ok(())
        }

        fn queued(&self) -> i32 {
            0
        }
    }

    #[tokio::test]
    async fn the_drainer_waits_for_the_final_answer_not_the_callbacks_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for i in 0..3 {
            spool.append(&batch(&format!("s{i}"))).await.unwrap();
        }
        let kafka = Arc::new(SlowerThanTheDeadline(StandIn::default()));
        let drained = drain(spool.clone(), kafka.clone(), Until::Empty).await;
        assert_eq!(drained.callbacks, 3, "each published once, none sent again");
        assert_eq!(kafka.0.published.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn while_kafka_is_away_callbacks_wait_in_the_spool_and_follow_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        let kafka = Arc::new(StandIn::default());
        let spooling = Spooling::new(kafka.clone(), Some(spool.clone()));
        spooling.publish(&batch("direct")).await.unwrap();
        kafka.down.store(true, Ordering::Relaxed);
        spooling.publish(&batch("spooled-1")).await.unwrap();
        kafka.down.store(false, Ordering::Relaxed);
        // Kafka is back, but the spool holds records: this one queues behind.
        spooling.publish(&batch("spooled-2")).await.unwrap();
        assert_eq!(*kafka.published.lock().unwrap(), ["direct"]);
        assert_eq!(spool.records(), 2);

        let drained = drain(spool.clone(), kafka.clone(), Until::Empty).await;
        assert_eq!(drained.callbacks, 2);
        assert_eq!(
            *kafka.published.lock().unwrap(),
            ["direct", "spooled-1", "spooled-2"]
        );
    }

    #[tokio::test]
    async fn a_frame_damaged_on_disk_is_skipped_and_the_spool_still_empties() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for key in ["first", "second", "third"] {
            spool.append(&batch(key)).await.unwrap();
        }
        // One byte of the second frame's payload, flipped on disk.
        let segment = spool.end().segment;
        let path = dir.path().join(format!("{segment:020}.spool"));
        let frame = std::fs::metadata(&path).unwrap().len() / 3;
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(frame + frame - 3)).unwrap();
        file.write_all(b"X").unwrap();
        drop(file);

        let kafka = Arc::new(StandIn::default());
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            drain(spool.clone(), kafka.clone(), Until::Empty),
        )
        .await
        .expect("the drain ends");
        assert_eq!(drained.callbacks, 2);
        assert_eq!(*kafka.published.lock().unwrap(), ["first", "third"]);
        for _ in 0..100 {
            if !spool.holds_records() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !spool.holds_records(),
            "the damaged frame does not hold the spool"
        );
        let text = spool.metrics().encode();
        assert!(
            text.contains("css_bridge_spool_damaged_frames_total 1"),
            "counted once: {text}"
        );
    }

    #[tokio::test]
    async fn a_second_drainer_starts_where_the_first_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        let kafka = Arc::new(StandIn::default());
        spool.append(&batch("first")).await.unwrap();
        drain(spool.clone(), kafka.clone(), Until::Empty).await;
        spool.append(&batch("second")).await.unwrap();
        drain(spool.clone(), kafka.clone(), Until::Empty).await;
        assert_eq!(
            *kafka.published.lock().unwrap(),
            ["first", "second"],
            "nothing twice"
        );
    }

    #[tokio::test]
    async fn records_survive_reopening_and_a_failed_drain_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
            for i in 0..3 {
                spool.append(&batch(&format!("s{i}"))).await.unwrap();
            }
        }
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        assert_eq!(spool.records(), 3);
        let kafka = Arc::new(StandIn::default());
        kafka.down.store(true, Ordering::Relaxed);
        let draining = tokio::spawn(drain(spool.clone(), kafka.clone(), Until::Empty));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(kafka.published.lock().unwrap().is_empty());
        assert_eq!(spool.records(), 3, "nothing released while Kafka refuses");
        kafka.down.store(false, Ordering::Relaxed);
        assert_eq!(draining.await.unwrap().callbacks, 3);
        assert_eq!(*kafka.published.lock().unwrap(), ["s0", "s1", "s2"]);
    }
}
