//! The spool's writer thread: group commit of appends, releases of drained
//! segments, and the counts they change.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::error::SpoolError;
use super::log::{Position, SegmentLog};
use super::store::{Command, ReleasedCounts, Shared};
use crate::metrics::Metrics;

/// The writer thread: takes every command waiting, writes the appends that fit
/// in one go, syncs once, answers them all. Ends when the spool is dropped.
pub(super) fn write_loop(
    mut log: SegmentLog,
    commands: std::sync::mpsc::Receiver<Command>,
    spool: &Shared,
) {
    let mut round = Round::default();
    let mut failures = FailureLines::default();
    while let Ok(first) = commands.recv() {
        round.clear();
        for command in std::iter::once(first).chain(commands.try_iter()) {
            round.take(command, log.bytes(), spool.limit);
        }
        if let Some(upto) = round.release_upto
            && let Err(error) = log.release(upto)
        {
            tracing::error!(%error, "spool: cannot delete drained segments");
        }
        let written = if round.accepted.is_empty() {
            Ok(log.end())
        } else {
            let started = Instant::now();
            let written = log.append(&round.frames);
            spool.metrics.observe_spool_fsync(started.elapsed());
            spool.note_write(written.is_ok());
            match &written {
                Ok(_) => failures.recovered(),
                Err(error) => failures.failed(error, round.accepted.len()),
            }
            written
        };
        spool.account(&round, written.as_ref().ok().copied(), log.bytes());
        // Counted (or refused): no longer appending.
        (spool.appending_bytes).fetch_sub(round.append_bytes, Ordering::AcqRel);
        let appending = spool.appending.fetch_sub(round.appends, Ordering::AcqRel) - round.appends;
        if appending == 0 && spool.contents().frames == 0 {
            spool.emptied.notify_waiters();
        }
        let wrote_frames = written.is_ok() && !round.frames.is_empty();
        round.answer(written, &spool.metrics);
        if wrote_frames {
            spool.written.notify_one();
        }
        for closed in round.closing.drain(..) {
            let _ = closed.send(());
        }
    }
}

/// How often a failing disk is logged: each failed write would be a line,
/// as many as callbacks come.
const FAILURE_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The ERROR lines of failed writes: the first, then one per
/// [`FAILURE_LINE_EVERY`] at most, with the callbacks refused meanwhile.
#[derive(Default)]
struct FailureLines {
    last_line: Option<Instant>,
    /// Callbacks answered 503 since the last line.
    refused: usize,
}

impl FailureLines {
    fn failed(&mut self, error: &io::Error, callbacks: usize) {
        self.refused += callbacks;
        if self
            .last_line
            .is_some_and(|at| at.elapsed() < FAILURE_LINE_EVERY)
        {
            return;
        }
        tracing::error!(
            %error,
            callbacks = self.refused,
            "spool: write failed; callbacks answered 503"
        );
        self.last_line = Some(Instant::now());
        self.refused = 0;
    }

    /// A write succeeded: says so once after failures.
    fn recovered(&mut self) {
        if self.last_line.take().is_some() {
            tracing::info!(
                callbacks_refused_since_the_last_line = self.refused,
                "spool: writes succeed again"
            );
            self.refused = 0;
        }
    }
}

/// Where an append's outcome goes.
type Answer = oneshot::Sender<Result<(), SpoolError>>;

/// The commands the writer takes in one go.
#[derive(Default)]
struct Round {
    /// The frames of the appends that fit, back to back.
    frames: Vec<u8>,
    /// (records, spooled at, answer) of each of those appends.
    accepted: Vec<(u64, i64, Answer)>,
    /// Appends taken, accepted or refused, and their frames' bytes.
    appends: u64,
    append_bytes: u64,
    /// The furthest release asked for, and what the releases take off.
    release_upto: Option<Position>,
    released: ReleasedCounts,
    /// Closed: every append from now on is refused (kept across rounds).
    closed: bool,
    /// Those waiting for this round to end, having closed the spool.
    closing: Vec<oneshot::Sender<()>>,
}

impl Round {
    fn clear(&mut self) {
        self.frames.clear();
        self.accepted.clear();
        self.appends = 0;
        self.append_bytes = 0;
        self.release_upto = None;
        self.released = ReleasedCounts::default();
    }

    /// Takes one command; an append that would take a spool of `bytes` past
    /// `limit` is refused at once.
    fn take(&mut self, command: Command, bytes: u64, limit: u64) {
        match command {
            Command::Append {
                frame,
                records,
                spooled_at_ms,
                done,
            } => {
                self.appends += 1;
                self.append_bytes += frame.len() as u64;
                // Its caller is gone (it gave up on a stalled disk, or its
                // client went away): never answered 200, so not written,
                // rather than published besides the sender's retry.
                if done.is_closed() {
                    return;
                }
                if self.closed {
                    let _ = done.send(Err(SpoolError::Closed));
                    return;
                }
                if bytes + (self.frames.len() + frame.len()) as u64 > limit {
                    let _ = done.send(Err(SpoolError::Full { limit }));
                    return;
                }
                self.frames.extend_from_slice(&frame);
                self.accepted.push((records, spooled_at_ms, done));
            }
            Command::Close(done) => {
                self.closed = true;
                self.closing.push(done);
            }
            #[cfg(test)]
            Command::Stall(duration) => std::thread::sleep(duration),
            Command::Release(upto, counts) => {
                self.released.frames += counts.frames;
                self.released.records += counts.records;
                self.released.next_oldest_ms = counts.next_oldest_ms;
                self.release_upto = Some(upto);
            }
        }
    }

    /// Answers the accepted appends with the outcome of their write.
    fn answer(&mut self, written: io::Result<Position>, metrics: &Metrics) {
        match written {
            Ok(_) => {
                // Only the callbacks still waiting get their 200: one that
                // gave up on a stalled disk was answered 503 (its records,
                // written, are drained all the same).
                let answered = self.accepted.drain(..);
                let answered = answered.map(|(_, _, done)| done.send(Ok(())).is_ok());
                metrics.count_spool_appends(answered.filter(|&sent| sent).count() as u64);
            }
            Err(error) => {
                for (_, _, done) in self.accepted.drain(..) {
                    let _ = done.send(Err(SpoolError::Io(io::Error::new(
                        error.kind(),
                        error.to_string(),
                    ))));
                }
            }
        }
    }
}

impl Shared {
    /// Brings the counts up to date after a round: its releases, and its
    /// appends if they were written (`end`: where the log ends now), and
    /// publishes them to the metrics.
    fn account(&self, round: &Round, end: Option<Position>, bytes: u64) {
        let mut counts = self.contents.lock().unwrap_or_else(|e| e.into_inner());
        let released = &round.released;
        if let Some(upto) = round.release_upto {
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
        if let Some(end) = end {
            counts.end = end;
            for (records, spooled_at_ms, _) in &round.accepted {
                counts.frames += 1;
                counts.records += records;
                counts.oldest_spooled_at_ms.get_or_insert(*spooled_at_ms);
            }
        }
        if counts.frames == 0 {
            counts.oldest_spooled_at_ms = None;
        }
        counts.bytes = bytes;
        let snapshot = *counts;
        drop(counts);
        self.publish_counts(&snapshot);
    }
}
