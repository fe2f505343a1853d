//! The spool's files and their writer: [`Spool`] appends callbacks' frames
//! through one writer thread (group commit: one fsync for every frame waiting),
//! keeps the counts the service and the metrics read, and releases what the
//! drainer has published.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::error::{SpoolError, SpoolFramingMismatch, SpoolInUse};
use super::log::{self, HeldSegments, Position, Reader, SegmentLog};
use super::schema::check_schema;
use super::writer;
use crate::avro::wire::Framing;
use crate::metrics::Metrics;
use crate::publish::Batch;

/// Size of a segment file: small enough that drained space is given back
/// soon, large enough that files stay few. A spool smaller than eight of them
/// has segments of an eighth of its size (see [`segment_bytes`]).
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// The smallest segment, for the smallest spools.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// The segment size of a spool of at most `limit` bytes. Space comes back
/// only when a whole segment is drained, and the newest only when the drainer
/// reaches its end between two appends: a spool of one segment, under steady
/// traffic, filled up and answered 503 while Kafka was fine.
fn segment_bytes(limit: u64) -> u64 {
    (limit / 8).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES)
}
/// Room a spool needs to count as not full: a large callback's frame.
const ROOM_FOR_A_CALLBACK: u64 = 64 << 10;
/// Name of the lock file that keeps two processes off one spool.
const LOCK_FILE: &str = "LOCK";
/// How long after a failed write the spool counts as unable to write, unless a
/// write succeeds first (see [`Spool::cannot_write`]).
const WRITE_FAILURE_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// What the writer thread is asked to do.
pub(super) enum Command {
    Append {
        frame: Vec<u8>,
        records: u64,
        spooled_at_ms: i64,
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Every frame before this position is in Kafka.
    Release(Position, ReleasedCounts),
    /// Refuse every append from here on; answered once what came before is
    /// written and counted (see [`Spool::close`]).
    Close(oneshot::Sender<()>),
    /// Keeps the writer busy for that long: a disk that stalls.
    #[cfg(test)]
    Stall(Duration),
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
pub(super) struct Contents {
    /// Where durably written frames end.
    pub(super) end: Position,
    /// Frames and records written and not yet released.
    pub(super) frames: u64,
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) oldest_spooled_at_ms: Option<i64>,
}

/// The longest an append waits for its write (see [`Spool::append`]).
const WRITE_TIMEOUT: Duration = crate::config::SPOOL_WRITE_TIMEOUT;

/// The most appends waiting for the writer: far more than a group commit
/// takes in normal operation (one per callback in flight), a bound on the
/// frames held in memory while the disk stalls.
const MAX_QUEUED_APPENDS: u64 = 4096;

/// The most frame bytes waiting for the writer, the same bound in bytes: the
/// frames of callbacks that gave up on a stalled disk stay in memory until the
/// writer takes them, and their requests' room is given back then, so large
/// callbacks could otherwise hold gigabytes. One frame alone may be larger
/// (up to `--kafka-max-in-flight-bytes`, 48 MiB at most).
const MAX_QUEUED_APPEND_BYTES: u64 = 64 << 20;

/// How long a hand-back lasts (see [`Spool::hand_back`]): a few of Kafka's
/// round trips; more only while Kafka has stopped taking records.
const HAND_BACK_WAIT: Duration = Duration::from_millis(500);

/// The spool: a directory of segment files with a writer thread.
pub struct Spool {
    dir: PathBuf,
    commands: std::sync::mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// Where the first frame not yet released starts: where a drainer begins.
    start: Mutex<Position>,
    /// Where the frames the drainer has read end: it has handed those before
    /// to Kafka, or is about to (see [`Spool::hand_back`]).
    read_upto: Mutex<Position>,
    /// Until when callbacks wait in [`Spool::hand_back`]: the end of the
    /// hand-back that began last.
    hand_back_until: Mutex<Option<Instant>>,
    /// Joined when the spool is dropped, so that the files are left alone
    /// before the lock is released.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Held for the life of the spool: the directory's lock.
    _lock: std::fs::File,
    /// How the records waiting at start-up are framed; `None` when none waits.
    recovered_framing: Option<Framing>,
    /// The segments the writer's log holds, for the drainer's reader.
    held: HeldSegments,
}

/// What the spool and its writer thread share.
pub(super) struct Shared {
    pub(super) limit: u64,
    pub(super) contents: Mutex<Contents>,
    /// Wakes the drainer when frames are written.
    pub(super) written: Notify,
    /// Wakes the callbacks in [`Spool::hand_back`] when the spool is empty.
    pub(super) emptied: Notify,
    pub(super) metrics: Arc<Metrics>,
    /// When the last write failed, until a write succeeds (see
    /// [`Spool::cannot_write`]).
    pub(super) write_failed_at: Mutex<Option<std::time::Instant>>,
    /// Appends handed to the writer and not yet in the counts. The writer
    /// takes them off once it has counted their frames, not the caller once
    /// answered: a caller whose request is dropped (its client went away)
    /// while the writer still has its frame would otherwise let a later
    /// callback of the same stream see an empty spool and go to Kafka first.
    pub(super) appending: AtomicU64,
    /// Their frames' bytes, held in memory until the writer takes them.
    pub(super) appending_bytes: AtomicU64,
}

impl Shared {
    /// Notes the outcome of a write of appends.
    pub(super) fn note_write(&self, succeeded: bool) {
        let mut failed_at = self
            .write_failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *failed_at = (!succeeded).then(std::time::Instant::now);
    }

    pub(super) fn contents(&self) -> Contents {
        *self.contents.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn publish_counts(&self, counts: &Contents) {
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
        let (log, recovered) = SegmentLog::open(dir, segment_bytes(limit))?;
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
        let counts = Contents {
            end: log.end(),
            frames: recovered.frames,
            records: recovered.records,
            bytes: log.bytes(),
            oldest_spooled_at_ms: recovered.oldest_spooled_at_ms,
        };
        let (commands, receiver) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            limit,
            contents: Mutex::new(counts),
            written: Notify::new(),
            emptied: Notify::new(),
            metrics,
            write_failed_at: Mutex::new(None),
            appending: AtomicU64::new(0),
            appending_bytes: AtomicU64::new(0),
        });
        shared.publish_counts(&counts);
        shared.metrics.set_spool_capacity(limit);
        let start = log.start();
        let held = log.held();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer::write_loop(log, receiver, &shared))?
        };
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            commands,
            shared,
            start: Mutex::new(start),
            read_upto: Mutex::new(start),
            hand_back_until: Mutex::new(None),
            writer: Some(writer),
            _lock: lock,
            recovered_framing: recovered.framing,
            held,
        }))
    }

    /// Refuses a spool whose waiting records are framed otherwise than
    /// `current`, this process's framing: the drain publishes records as they
    /// were spooled, and a topic's readers expect one framing (Flink's
    /// `avro-confluent` fails on a plain record, Spark's example drops it).
    /// Called before anything drains, after a change of `--schema-registry-url`
    /// or a `spool drain` run without the service's settings.
    pub fn check_framing(&self, current: Framing) -> Result<(), SpoolFramingMismatch> {
        let describe = |framing| match framing {
            Framing::Plain => "in plain Avro",
            Framing::Confluent => "in the Confluent wire format",
        };
        match self.recovered_framing {
            Some(spooled) if spooled != current => Err(SpoolFramingMismatch {
                dir: self.dir.clone(),
                spooled: describe(spooled),
                current: describe(current),
                advice: match spooled {
                    Framing::Plain => "without --schema-registry-url",
                    Framing::Confluent => "with the service's --schema-registry-* settings",
                },
            }),
            _ => Ok(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A reader of the spool from `from`, for a drainer.
    pub fn reader(&self, from: Position) -> Reader {
        Reader::new(&self.dir, self.held.clone(), from)
    }

    /// Where the first frame not yet released starts: where a drainer begins
    /// (the service's, and the last one at shutdown).
    pub fn start(&self) -> Position {
        *self.start.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether callbacks must go through the spool: it holds records, or some
    /// are being written.
    pub fn holds_records(&self) -> bool {
        self.shared.appending.load(Ordering::Acquire) > 0 || self.contents().frames > 0
    }

    /// Waits, at most until `deadline`, for the spool to empty while the
    /// drainer has every frame in hand, so that the callback can go to Kafka
    /// directly; returns at once otherwise.
    ///
    /// A callback that comes while the spool holds records goes to the spool,
    /// behind them, to keep its stream's order. Under steady traffic that
    /// would go on for ever after any outage: a new frame is written during
    /// each of the drainer's round trips, so the spool is never empty again,
    /// and every callback pays a write, a sync and a read. So once the drainer
    /// has read every frame written (they are with Kafka, about to be
    /// acknowledged), a hand-back begins: for [`HAND_BACK_WAIT`], callbacks
    /// that come wait instead of adding to the spool, the spool empties, and
    /// they go to Kafka, after the spooled ones. When it does not empty in
    /// that time (Kafka stopped taking records), they go to the spool, and so
    /// do the next ones until the drainer has caught up again.
    pub async fn hand_back(&self, deadline: Instant) {
        if !self.holds_records() {
            return;
        }
        let until = {
            let mut until = (self.hand_back_until.lock()).unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match *until {
                Some(end) if now < end => end,
                _ if self.drainer_has_everything() => *until.insert(now + HAND_BACK_WAIT),
                _ => return,
            }
        };
        loop {
            let emptied = self.shared.emptied.notified();
            let mut emptied = std::pin::pin!(emptied);
            emptied.as_mut().enable();
            if !self.holds_records() {
                return;
            }
            if tokio::time::timeout_at(until.min(deadline), emptied)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Whether the drainer has read every frame the spool holds, and none
    /// is being written: not when the spool only has an append in progress
    /// (the first callback Kafka did not take), whose frame the drainer
    /// cannot have.
    fn drainer_has_everything(&self) -> bool {
        let read_upto = *self.read_upto.lock().unwrap_or_else(|e| e.into_inner());
        let contents = self.contents();
        self.shared.appending.load(Ordering::Acquire) == 0
            && contents.frames > 0
            && read_upto >= contents.end
    }

    /// The drainer has read every frame before `upto`.
    pub fn note_read(&self, upto: Position) {
        *self.read_upto.lock().unwrap_or_else(|e| e.into_inner()) = upto;
    }

    /// Records waiting for Kafka.
    pub fn records(&self) -> u64 {
        self.contents().records
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.contents().bytes
    }

    /// Whether a callback of ordinary size would no longer fit.
    pub fn is_full(&self) -> bool {
        self.contents().bytes + ROOM_FOR_A_CALLBACK > self.shared.limit
    }

    /// Has the writer stall for `duration`, as on a disk that hangs.
    #[cfg(test)]
    pub(crate) fn stall_writes_for_test(&self, duration: Duration) {
        let _ = self.commands.send(Command::Stall(duration));
    }

    /// As if a write had just failed.
    #[cfg(test)]
    pub(crate) fn fail_writes_for_test(&self) {
        self.shared.note_write(false);
    }

    /// Whether a write failed within the last [`WRITE_FAILURE_HOLD`] and no
    /// write succeeded since (a full or failing disk, below the spool's own
    /// limit): readiness then turns false while the spool is needed. The hold
    /// lets the replica be tried again: a replica out of the Service gets no
    /// callbacks, so no write could tell it that the disk is back.
    pub fn cannot_write(&self) -> bool {
        let failed_at = *self
            .shared
            .write_failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        failed_at.is_some_and(|at| at.elapsed() < WRITE_FAILURE_HOLD)
    }

    /// Where durably written frames end.
    pub fn end(&self) -> Position {
        self.contents().end
    }

    /// Appends `batch` and resolves once it is on disk (fsynced together with
    /// whatever else was waiting), or with why not: also when the write has
    /// not completed within [`WRITE_TIMEOUT`]. A disk that stalls (a network
    /// volume that hangs) would otherwise hold the callback past the time
    /// CSS waits, unanswered, with its room in the bridge; the replica then
    /// counts as unable to write (see [`Self::cannot_write`]). The write may
    /// still complete: its records are then drained as well, and CSS's retry
    /// publishes them again, with the same `event_id`.
    pub async fn append(&self, batch: &Batch) -> Result<(), SpoolError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.append_unbounded(batch)).await {
            Ok(written) => written,
            Err(_) => {
                self.shared.note_write(false);
                Err(SpoolError::Slow(WRITE_TIMEOUT))
            }
        }
    }

    /// Appends `batch` as [`Self::append`] does, but answers by `answer_by`
    /// when that comes first: a callback that waited past its deadline behind
    /// earlier ones of its stream (each of them up to a write bound on a disk
    /// that stalls) must still be answered before CSS stops waiting. Only a
    /// write given the whole bound and not done counts against the disk.
    pub async fn append_by(&self, batch: &Batch, answer_by: Instant) -> Result<(), SpoolError> {
        let left = answer_by.saturating_duration_since(Instant::now());
        if left >= WRITE_TIMEOUT {
            return self.append(batch).await;
        }
        if left.is_zero() {
            return Err(SpoolError::TooLate);
        }
        match tokio::time::timeout(left, self.append_unbounded(batch)).await {
            Ok(written) => written,
            Err(_) => Err(SpoolError::TooLate),
        }
    }

    async fn append_unbounded(&self, batch: &Batch) -> Result<(), SpoolError> {
        // Appends the writer has not taken yet: all but a few when the disk
        // stalls, their frames in memory. Beyond the bounds, refused at once.
        if self.shared.appending.load(Ordering::Acquire) >= MAX_QUEUED_APPENDS {
            return Err(SpoolError::Slow(WRITE_TIMEOUT));
        }
        // Reserved before it is checked, so that appends that come together
        // cannot all find room that only one of them has.
        let frame_bytes = log::frame_len(batch) as u64;
        let queued_bytes = (self.shared.appending_bytes).fetch_add(frame_bytes, Ordering::AcqRel);
        if queued_bytes > 0 && queued_bytes + frame_bytes > MAX_QUEUED_APPEND_BYTES {
            (self.shared.appending_bytes).fetch_sub(frame_bytes, Ordering::AcqRel);
            return Err(SpoolError::Backlog {
                bytes: queued_bytes,
            });
        }
        let spooled_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let mut frame = Vec::with_capacity(frame_bytes as usize);
        log::encode_frame(batch, spooled_at_ms, &mut frame);
        let (done, answer) = oneshot::channel();
        self.shared.appending.fetch_add(1, Ordering::AcqRel);
        let sent = self.commands.send(Command::Append {
            frame,
            records: batch.len() as u64,
            spooled_at_ms,
            done,
        });
        if sent.is_err() {
            // The writer thread is gone: no append can be written any more.
            self.shared.appending.fetch_sub(1, Ordering::AcqRel);
            (self.shared.appending_bytes).fetch_sub(frame_bytes, Ordering::AcqRel);
            self.shared.note_write(false);
            return Err(SpoolError::Closed);
        }
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Has the writer refuse every later append (503), and waits at most
    /// `within` for it to have written and counted those before. Returns
    /// whether it did: [`Self::records`] is then what the spool holds for
    /// good, since no callback can be answered 200 from it any more. For the
    /// end of shutdown, whose last line says what is left, while requests cut
    /// off by the drain timeout may still be running.
    pub async fn close(&self, within: Duration) -> bool {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_err() {
            // The writer thread is gone: nothing is written any more.
            return true;
        }
        tokio::time::timeout(within, closed).await.is_ok()
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
        let mut counts = self
            .shared
            .contents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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

    pub(super) fn contents(&self) -> Contents {
        self.shared.contents()
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_spool_has_segments_of_an_eighth_of_its_size() {
        assert_eq!(segment_bytes(1 << 20), 128 << 10, "the smallest limit");
        assert_eq!(segment_bytes(16 << 20), 2 << 20);
        assert_eq!(segment_bytes(2 << 30), SEGMENT_BYTES);
        assert_eq!(segment_bytes(0), MIN_SEGMENT_BYTES);
    }
}
