//! The drainer: publishes the spool front to back and releases what Kafka has
//! acknowledged.
//!
//! It reads a window of frames, hands them to the producer one after the
//! other in the spool's order as the in-flight budget has room (the
//! idempotent producer keeps that order per partition), and awaits their
//! deliveries together: librdkafka's final answer on each record
//! ([`Publish::hand_over`]), not the callbacks' deadline, so that a window is
//! not sent again while the producer still delivers it. Everything up to the
//! first failure is released; from there it starts again after a pause. A
//! drain starts, and starts again after a failure, handing a stream's
//! batches over one at a time, until a window goes through whole (see
//! [`publish_window`]). Frames after a failure that Kafka did store are
//! remembered, and not published again when the next window reads them (a
//! partition without a leader for minutes would otherwise have the rest of
//! each window published every few seconds); a restart forgets them, and
//! publishes them again: duplicates with the same `event_id`, never a gap.

use std::collections::BTreeSet;
use std::collections::hash_map::{self, HashMap};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use super::log::{Entry, Position, Reader, segment_path};
use super::losses::{self, Losses};
use super::{ReleasedCounts, Spool, SpoolReadError};
use crate::avro::wire::{self, SchemaId};
use crate::publish::{Batch, Delivery, Publish, PublishError};

/// Callbacks published at once: enough to keep the producer's batches full,
/// few enough to hold in memory.
const WINDOW: usize = 512;
/// Record bytes read at once, whatever the callbacks' size: twice what the
/// producer holds by default (`--kafka-max-in-flight-bytes`), so that it is
/// kept busy. 512 callbacks of records near the most one may have (8 MiB by
/// default) would be gigabytes.
const WINDOW_BYTES: usize = 16 << 20;
/// Pause after a failed window before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Pause before looking again for a schema id the registry has not given yet.
const ID_PAUSE: Duration = Duration::from_millis(200);

/// When the drainer stops.
#[derive(Debug, Clone)]
pub enum Until {
    /// When the spool is empty, or at a refusal Kafka gives for good (the
    /// topic deleted, a record over its `max.message.bytes`): `spool drain`,
    /// whose operator fixes the topic and runs it again, where a Job retrying
    /// every second would never end. The refused records and every one after
    /// them stay in the spool.
    Empty,
    /// Once told to stop, when the spool is empty: the service's drainer,
    /// which waits for new frames until then. Shutdown tells this drainer to
    /// finish rather than starting another: a second drainer would send again
    /// the window the first still had in librdkafka.
    Stopped(watch::Receiver<bool>),
}

impl Until {
    fn ends_when_empty(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Stopped(stop) => *stop.borrow(),
        }
    }
}

/// What one run of the drainer did: published, lost, and why it stopped
/// early (what `spool drain` prints, so that a Job's output says all three).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drained {
    pub callbacks: u64,
    pub records: u64,
    /// Damaged frames skipped, and segment files found gone before they were
    /// drained (see [`HeldSegments`](super::log::HeldSegments)).
    #[serde(flatten)]
    pub lost: Losses,
    /// Those of `lost` not kept beside the spool yet (see [`losses`]): the
    /// write failed. Tried again with the next losses found; `spool drain`
    /// adds what is left to what is kept.
    #[serde(skip)]
    pub unkept: Losses,
    /// Kafka's refusal for good that ended an [`Until::Empty`] drain with
    /// records left in the spool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Publishes the spool through `publisher` until `until`. With `schema_id`
/// (the Confluent wire format), records are framed with the id the registry
/// gives the schema now, whatever id they were spooled with: a registry
/// rebuilt since may have given the schema another id, and the old one to
/// another schema. Until the registry has given it, nothing is published.
pub async fn drain(
    spool: Arc<Spool>,
    publisher: Arc<dyn Publish>,
    until: Until,
    schema_id: Option<Arc<SchemaId>>,
) -> Drained {
    let mut reader = Some(spool.reader(spool.start()));
    if matches!(until, Until::Empty) {
        // Damaged frames an earlier `spool drain` counted, and had not
        // released when its pod ended, are not counted again.
        match losses::kept(spool.dir()) {
            Ok(kept) => {
                if kept.losses.any() {
                    tracing::warn!(
                        damaged_frames = kept.losses.damaged_frames,
                        missing_segments = kept.losses.missing_segments,
                        "spool: earlier drains found callbacks lost from this spool (its file LOST): \
                         this drain's summary counts them, and its exit code is 3 once the spool is empty"
                    );
                }
                if let (Some(reader), Some(to)) = (reader.as_mut(), kept.damaged_to()) {
                    reader.counted_before(to);
                }
            }
            Err(error) => tracing::error!(%error, "spool: cannot read the losses kept beside it"),
        }
    }
    spool.note_read(spool.start());
    let mut drained = Drained::default();
    let mut paused = false;
    // Whether a stream's batches go one at a time (see `publish_window`):
    // from the start and whenever the spool was empty (records are spooled
    // only when Kafka did not take them), and after a failed window, until a
    // window goes through whole.
    let mut careful = true;
    let mut waiting_for_id = false;
    // Where frames end that Kafka acknowledged after an earlier frame failed.
    let mut delivered = BTreeSet::new();
    let mut read_failures = ReadFailures::default();
    loop {
        let end = spool.end();
        let position = reader.as_ref().expect("the reader is back").position();
        if position >= end {
            // Every frame before `end` was released (a failed window sends
            // the reader back), but damaged ones the reader skipped since the
            // last release: released now, or the spool would count them as
            // waiting, and take every callback, until a frame after them is.
            if spool.start() < end {
                spool.release(end, ReleasedCounts::default());
            }
            if until.ends_when_empty() && !spool.holds_records() {
                return drained;
            }
            careful = true;
            // Woken by the writer; the timeout covers a wake-up between the
            // check above and the wait.
            let _ = tokio::time::timeout(Duration::from_millis(200), spool.written()).await;
            continue;
        }
        // Read once for the whole window, so that one the registry's check
        // forgets meanwhile (it names another schema now) does not leave the
        // window with the ids it was spooled with. (A window framed just
        // before the check still goes out with the forgotten id, as the
        // callbacks encoded then do.)
        let framing_id = schema_id.as_ref().map(|id| id.get());
        if framing_id == Some(None) {
            // The registry has not given the id yet: the records' own may
            // now be another schema's, so they wait for it (as callbacks do,
            // refused until then), or for the next start when told to stop.
            if matches!(until, Until::Stopped(_)) && until.ends_when_empty() {
                return drained;
            }
            if !waiting_for_id {
                tracing::info!("spool: draining waits for the schema registry's id");
                waiting_for_id = true;
            }
            tokio::time::sleep(ID_PAUSE).await;
            continue;
        }
        waiting_for_id = false;
        let reader_back = reader.take().expect("the reader is back");
        let (back, mut window, read_error) = read_window(reader_back, end, WINDOW_BYTES).await;
        match read_error {
            Some(error) => {
                spool.metrics().count_spool_read_error();
                read_failures.failed(&error, spool.records(), std::time::Instant::now());
            }
            None => read_failures.read(),
        }
        if let Some(Some(id)) = framing_id {
            for (entry, _) in &mut window {
                reframe(&mut entry.batch, id);
            }
        }
        spool.note_read(back.position());
        reader = Some(back);
        let reader = reader.as_mut().expect("just put back");
        let mut found = Losses::default();
        // The reader's count is this drain's: it began with it.
        if reader.damaged > drained.lost.damaged_frames {
            let frames = reader.damaged - drained.lost.damaged_frames;
            tracing::error!(
                frames,
                "spool: skipped damaged frames (checksum mismatch); the rest is published"
            );
            spool.metrics().count_spool_damaged(frames);
            found.damaged_frames = frames;
        }
        for segment in reader.missing.drain(..) {
            tracing::error!(
                path = %segment_path(spool.dir(), segment).display(),
                "spool: a segment file is gone before it was drained (deleted from under the bridge); the callbacks in it, answered 200, are lost; the rest is published"
            );
            spool.metrics().count_spool_missing_segment();
            found.missing_segments += 1;
        }
        if found.any() {
            drained.lost = drained.lost + found;
            // `spool drain`: kept before the release that follows (see
            // `losses`). Rare and small: written here, on the worker.
            // With those an earlier write failed to keep: the furthest damaged
            // frame kept must not pass frames whose count is not.
            if matches!(until, Until::Empty) {
                let pending = drained.unkept + found;
                drained.unkept = match losses::add(spool.dir(), pending, reader.damaged_to()) {
                    Ok(()) => Losses::default(),
                    Err(error) => {
                        tracing::error!(%error, "spool: cannot keep the losses beside the spool; a later drain will not know of them");
                        pending
                    }
                };
            }
        }
        let Some((oldest, _)) = window.first() else {
            // Nothing readable before `end`: the reader went on to the segment
            // that `end` is the start of (a release to the end starts one), or
            // skipped damage; the top of the loop sees the end. Otherwise a
            // read error, tried again in a moment (nothing is skipped: the
            // records wait for the disk, with `ReadFailures`' lines).
            if reader.position() < end {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            continue;
        };
        spool.note_oldest(oldest.spooled_at_ms);
        let (released, upto, failure) =
            publish_window(&*publisher, &window, &mut delivered, careful).await;
        careful = failure.is_some();
        let next_oldest_ms = window
            .get(released.frames as usize)
            .map(|(entry, _)| entry.spooled_at_ms);
        if released.frames > 0 {
            spool.release(
                upto,
                ReleasedCounts {
                    next_oldest_ms,
                    ..released
                },
            );
            spool.metrics().count_spool_drained(released.records);
            drained.callbacks += released.frames;
            drained.records += released.records;
        }
        match failure {
            None => {
                if paused {
                    tracing::info!(waiting = spool.records(), "spool: draining again");
                    paused = false;
                }
            }
            Some(error) if !error.is_retriable() && matches!(until, Until::Empty) => {
                tracing::error!(%error, waiting = spool.records(), "spool: Kafka refuses the oldest spooled records until the topic is fixed; the drain stops, and they and every record after them stay in the spool");
                drained.refused = Some(error.to_string());
                return drained;
            }
            Some(error) => {
                if !paused {
                    paused_by(&error, spool.records());
                    paused = true;
                }
                // From the first frame Kafka did not acknowledge.
                reader.seek(if released.frames > 0 { upto } else { position });
                spool.note_read(reader.position());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// The line that says the drain paused. A refusal Kafka gives for good (the
/// topic deleted, a record over the topic's `max.message.bytes`) is an
/// error: every later frame waits behind that one, and new callbacks go to
/// the spool after them, until an operator fixes the topic (nothing is
/// dropped here, so nothing answered 200 is lost).
fn paused_by(error: &PublishError, waiting: u64) {
    if error.is_retriable() {
        tracing::warn!(%error, waiting, "spool: Kafka does not take the records; draining paused, retried every second");
    } else {
        tracing::error!(%error, waiting, "spool: Kafka refuses the oldest spooled records until the topic is fixed; draining paused, retried every second");
    }
}

/// How often a spool that still cannot be read is said again.
const READ_FAILURE_LINE_EVERY: Duration = Duration::from_secs(60);

/// The drainer's lines about failed reads. A segment that cannot be read (an
/// I/O error, a permission taken away) is tried again every second for as
/// long as it takes, since skipping it would lose callbacks answered 200: one
/// ERROR line at the first failure, then one a minute with the count, and one
/// when the spool reads again. Every failure is counted in
/// `css_bridge_spool_read_errors_total`, which the `CssBridgeSpoolUnreadable`
/// alert watches.
#[derive(Debug, Default)]
struct ReadFailures {
    /// Failures since the spool last read, and when a line last said so.
    failing: Option<(u64, std::time::Instant)>,
}

impl ReadFailures {
    /// Counts a failed read; returns whether a line said so.
    fn failed(&mut self, error: &SpoolReadError, waiting: u64, now: std::time::Instant) -> bool {
        let (failures, said_at) = self.failing.get_or_insert((0, now));
        *failures += 1;
        if *failures == 1 {
            tracing::error!(%error, waiting, "spool: cannot read the spooled records; the records from this segment on wait, tried again every second");
        } else if now.duration_since(*said_at) >= READ_FAILURE_LINE_EVERY {
            tracing::error!(%error, waiting, failures = *failures, "spool: still cannot read the spooled records");
            *said_at = now;
        } else {
            return false;
        }
        true
    }

    fn read(&mut self) {
        if let Some((failures, _)) = self.failing.take() {
            tracing::info!(failures, "spool: reads again; draining goes on");
        }
    }
}

/// Frames every record of `batch` with schema `id` (see [`wire::reframe`]).
fn reframe(batch: &mut Batch, id: u32) {
    let mut start = 0;
    for &end in &batch.ends {
        wire::reframe(&mut batch.payloads[start..end], id);
        start = end;
    }
}

/// Reads up to [`WINDOW`] frames before `end`, off the async workers, and
/// stops early once they hold `max_bytes` of records (the first frame is read
/// whatever its size), or at a read error, given with the frames read before it.
async fn read_window(
    mut reader: Reader,
    end: Position,
    max_bytes: usize,
) -> (Reader, Vec<(Entry, Position)>, Option<SpoolReadError>) {
    let read = tokio::task::spawn_blocking(move || {
        let mut window = Vec::with_capacity(WINDOW);
        let mut bytes = 0;
        while window.len() < WINDOW && bytes < max_bytes {
            match reader.next(end) {
                Ok(Some(frame)) => {
                    bytes += frame.0.batch.payloads.len();
                    window.push(frame);
                }
                Ok(None) => break,
                Err(error) => return (reader, window, Some(error)),
            }
        }
        (reader, window, None)
    });
    read.await.expect("the spool reader does not panic")
}

/// Publishes the window's batches and awaits them. Returns what can be
/// released (up to the first failure), where that ends, and the failure if
/// there was one. Frames whose end is in `delivered` are not published
/// (Kafka has them); those Kafka acknowledges after a failure are added to
/// it, and what is released leaves it.
///
/// Batches are handed over one after the other, in the spool's order, each
/// as soon as the in-flight budget has room for it, while the deliveries of
/// those handed over are awaited together. So the producer is kept fed: a
/// window of more records than the budget holds (512 callbacks of 40
/// details) goes on as room comes back, whichever delivery gave it, and a
/// slow partition does not hold up the others (unless `careful`, below). The
/// whole window is driven outside tokio's cooperative budget (a task gets
/// about 128 operations a turn), so that every batch with room is handed
/// over at once; it ends with the window.
///
/// A batch refused at once stops the handing over: the frames after it, of
/// its stream among them, must not reach Kafka before it. After a delivery
/// fails, its stream's later batches are not handed over (they would land
/// before the failed batch's next attempt), nor released; those of its
/// batches already handed over are awaited all the same and go again after
/// it. The other deliveries are awaited: what Kafka acknowledges after the
/// failure is remembered in `delivered`.
///
/// That still lets a stream's later batch, handed over while an earlier one
/// waits for a partition without a leader, be stored when the leader is back
/// just after the earlier one timed out: the earlier one then lands after it.
/// So `careful` (Kafka was in trouble: the drain is starting, or the window
/// before failed) hands a stream's batch over only once the one before it is
/// answered. The batches behind it in the window wait too, to keep the
/// spool's order, up to `message.timeout.ms` behind a partition without a
/// leader. A leader lost in the middle of a healthy drain can still reorder
/// a stream once, in that window.
async fn publish_window(
    publisher: &dyn Publish,
    window: &[(Entry, Position)],
    delivered: &mut BTreeSet<Position>,
    careful: bool,
) -> (ReleasedCounts, Position, Option<PublishError>) {
    let stream = |i: usize| window[i].0.batch.key.as_str();
    // Each batch's result, in window order, as far as batches were handed
    // over; `None` for a failed stream's batch not handed over.
    let mut results: Vec<Option<Result<(), PublishError>>> = Vec::with_capacity(window.len());
    let mut failed: Vec<&str> = Vec::new();
    // Deliveries awaited per stream.
    let mut unanswered: HashMap<&str, usize> = HashMap::new();
    let mut handing: Option<BoxFuture<'_, Result<Delivery<'_>, PublishError>>> = None;
    let mut refused_at_once = false;
    let mut deliveries = FuturesUnordered::new();
    let drive = std::future::poll_fn(|cx| {
        loop {
            // Hand over the next batches, in order, while there is room.
            while !refused_at_once && results.len() < window.len() {
                let i = results.len();
                let (entry, end) = &window[i];
                if delivered.contains(end) {
                    results.push(Some(Ok(())));
                    continue;
                }
                if failed.contains(&stream(i)) {
                    handing = None;
                    results.push(None);
                    continue;
                }
                if careful && handing.is_none() && unanswered.contains_key(stream(i)) {
                    break;
                }
                let hand_over = handing.get_or_insert_with(|| publisher.hand_over(&entry.batch));
                match hand_over.as_mut().poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(handed) => {
                        handing = None;
                        match handed {
                            Ok(delivery) => {
                                *unanswered.entry(stream(i)).or_default() += 1;
                                deliveries.push(delivery.map(move |result| (i, result)));
                                results.push(None);
                            }
                            Err(error) => {
                                refused_at_once = true;
                                results.push(Some(Err(error)));
                            }
                        }
                    }
                }
            }
            match deliveries.poll_next_unpin(cx) {
                Poll::Ready(Some((i, result))) => {
                    if let hash_map::Entry::Occupied(mut left) = unanswered.entry(stream(i)) {
                        *left.get_mut() -= 1;
                        if *left.get() == 0 {
                            left.remove();
                        }
                    }
                    if result.is_err() && !failed.contains(&stream(i)) {
                        failed.push(stream(i));
                    }
                    results[i] = Some(result);
                }
                Poll::Ready(None) if handing.is_none() => return Poll::Ready(()),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    });
    tokio::task::unconstrained(drive).await;
    let mut released = ReleasedCounts::default();
    let mut upto = None;
    let mut failure = None;
    let mut failed_streams: Vec<&str> = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        let (entry, end) = &window[i];
        if failed_streams.contains(&stream(i)) {
            continue;
        }
        let result = result.expect("only a failed stream's batches are left out");
        match (result, &failure) {
            (Ok(()), None) => {
                released.frames += 1;
                released.records += entry.batch.len() as u64;
                upto = Some(*end);
            }
            (Ok(()), Some(_)) => {
                delivered.insert(*end);
            }
            (Err(error), None) => {
                failed_streams.push(stream(i));
                failure = Some(error);
            }
            (Err(_), Some(_)) => failed_streams.push(stream(i)),
        }
    }
    if let Some(upto) = upto {
        *delivered = delivered.split_off(&upto);
        delivered.remove(&upto);
    }
    (released, upto.unwrap_or_default(), failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_spool_that_cannot_be_read_is_said_at_once_then_once_a_minute() {
        let mut failures = ReadFailures::default();
        let error = SpoolReadError {
            path: "00000000000000000001.spool".into(),
            source: std::io::Error::other("input/output error"),
        };
        let start = std::time::Instant::now();
        assert!(failures.failed(&error, 4, start), "the first failure");
        let second = |secs| start + Duration::from_secs(secs);
        assert!(!failures.failed(&error, 4, second(1)));
        assert!(!failures.failed(&error, 4, second(59)));
        assert!(failures.failed(&error, 4, second(60)), "a minute on");
        assert!(!failures.failed(&error, 4, second(61)));
        failures.read();
        assert!(
            failures.failed(&error, 4, second(62)),
            "after reading again, the next failure is a new one"
        );
    }

    #[tokio::test]
    async fn a_window_stops_at_its_bytes_but_holds_one_frame_at_least() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
        let spool = Spool::open(dir.path(), 1 << 20, metrics).unwrap();
        for key in ["a", "b", "c", "d", "e"] {
            let batch = Batch {
                key: key.into(),
                payloads: vec![0; 1000],
                ends: vec![1000],
            };
            spool.append(&batch).await.unwrap();
        }
        let frames = |max_bytes| {
            let (reader, end) = (spool.reader(spool.start()), spool.end());
            async move { read_window(reader, end, max_bytes).await.1.len() }
        };
        assert_eq!(frames(usize::MAX).await, 5);
        assert_eq!(frames(2_500).await, 3, "stops once 2,500 bytes are read");
        assert_eq!(frames(1).await, 1, "the first frame whatever its size");
    }
}
