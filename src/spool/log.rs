//! The spool on disk: a log of frames in numbered segment files.
//!
//! One frame holds one callback's encoded records (the [`Batch`](crate::publish::Batch) as it would go
//! to Kafka) and when it was spooled:
//!
//! ```text
//! frame   magic "CSB1" | body length u32 LE | CRC-32 of body u32 LE | body
//! body    spooled_at_ms i64 | key length u32 | key | records u32 |
//!         records × end offset u32 | payloads
//! ```
//!
//! Segments are `<segment id, 20 digits>.spool` (ids counting up), written
//! in order, each up to a size; the drainer reads them front to back and a
//! segment is deleted once every frame in it is in Kafka. Within the first
//! segment, the **release cursor**
//! (`released`: segment, offset and their CRC-32) says how far Kafka has
//! everything, so that a restart resumes there instead of at the segment's
//! start: what a crash makes the drainer publish again is bounded by what it
//! had in flight, not by the segment's size. A cursor that is damaged, or that
//! does not fit the segments found, is ignored: the segment is published again
//! from its start (duplicates, never a gap). The checksum finds what a crash or the disk damaged:
//! at open, a torn write at the end of the last segment (one that ends short
//! of a whole frame) is cut off; on reading, a damaged frame anywhere, a whole
//! one at the end too, is skipped up to the next valid frame and counted.
//! Neither stops the rest from being read.
//!
//! Everything here is synchronous file I/O on one thread at a time: the
//! [`SegmentLog`] (appending, syncing, deleting) belongs to the spool's writer
//! thread, a [`Reader`] to the drainer.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::cursor::{CURSOR_FILE, read_cursor, write_cursor};
pub use super::frame::{Entry, encode_frame, frame_len};
use super::frame::{Scan, holds_whole_frame, resync, scan};
pub use super::reader::Reader;
use crate::avro::wire::Framing;

const EXTENSION: &str = "spool";

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.{EXTENSION}"))
}

/// The segment ids in `dir`, oldest first.
pub(super) fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == EXTENSION)
            && let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes the creation or removal of files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The ids of the segments the log holds, shared with the drainer's
/// [`Reader`]: a segment file that is missing and not held was released, or
/// never written (a gap between ids that an empty segment deleted at open
/// leaves); one that is missing and still held was deleted from under the
/// spool, and the callbacks in it, answered 200, are lost. The log takes a
/// segment out of the set before it deletes the file, so a held segment is
/// never missing by the log's own doing.
#[derive(Debug, Clone, Default)]
pub struct HeldSegments(Arc<Mutex<BTreeSet<u64>>>);

impl HeldSegments {
    /// Whether the log holds segment `id`.
    pub fn holds(&self, id: u64) -> bool {
        self.ids().contains(&id)
    }

    fn insert(&self, id: u64) {
        self.ids().insert(id);
    }

    fn remove(&self, id: u64) {
        self.ids().remove(&id);
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What opening the spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Valid frames, records and bytes of frames waiting to be drained.
    pub frames: u64,
    pub records: u64,
    /// When the oldest waiting frame was spooled.
    pub oldest_spooled_at_ms: Option<i64>,
    /// How the oldest waiting frame's records are framed.
    pub framing: Option<Framing>,
    /// Bytes cut off the end of the last segment: a write the crash tore.
    pub torn_bytes: u64,
    /// Damaged frames skipped elsewhere, and their bytes.
    pub damaged: u64,
    pub damaged_bytes: u64,
}

/// The spool's files, for the one thread that writes them.
pub struct SegmentLog {
    dir: PathBuf,
    /// Segment ids and sizes, oldest first; the last is written to.
    segments: VecDeque<(u64, u64)>,
    current: File,
    segment_bytes: u64,
    /// Everything before this is in Kafka (see the module's release cursor);
    /// `Position::default()` when nothing is released within a segment.
    released: Position,
    /// The ids in `segments`, for the reader.
    held: HeldSegments,
    /// A write failed: the next frames go to a new segment (see `append`).
    rotate_first: bool,
}

impl SegmentLog {
    /// Opens (or creates) the spool in `dir`: scans every segment, cuts a torn
    /// write off the last one, and counts what is waiting after the release
    /// cursor. New frames go to a segment of its own, so that a damaged old one
    /// is never appended to.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut ids = segment_ids(dir)?;
        let released = Self::valid_cursor(dir, &ids);
        // Segments wholly before the cursor: released before a crash that came
        // before their deletion.
        for &id in ids.iter().filter(|&&id| id < released.segment) {
            fs::remove_file(segment_path(dir, id))?;
        }
        ids.retain(|&id| id >= released.segment);
        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            // Not skipped: its callbacks were answered 200. The process stops
            // naming it, until an operator makes it readable.
            let data = fs::read(&path).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot read spool segment {}: {error}", path.display()),
                )
            })?;
            if data.is_empty() {
                // Started and never written to (each start begins a segment).
                fs::remove_file(&path)?;
                continue;
            }
            let mut at = 0;
            while at < data.len() {
                match scan(&data[at..]) {
                    Scan::Frame { entry, len } => {
                        let waiting = Position {
                            segment: id,
                            offset: at as u64,
                        } >= released;
                        if waiting {
                            recovered.frames += 1;
                            recovered.records += entry.batch.len() as u64;
                            recovered
                                .oldest_spooled_at_ms
                                .get_or_insert(entry.spooled_at_ms);
                            if recovered.framing.is_none() {
                                recovered.framing =
                                    entry.batch.payloads().next().and_then(Framing::of);
                            }
                        }
                        at += len as usize;
                    }
                    // A frame that runs past the end is a torn write only
                    // when no valid frame follows it: a damaged length field
                    // reads the same way, and the frames after it were
                    // acknowledged.
                    Scan::Truncated | Scan::Damaged => match resync(&data[at..]) {
                        Some(skip) => {
                            recovered.damaged += 1;
                            recovered.damaged_bytes += skip as u64;
                            at += skip;
                        }
                        // The end of the last segment, cut off below as torn:
                        // a crash stops a write short of a whole frame. A
                        // whole frame whose checksum fails was written whole
                        // and then damaged, most likely after its callback
                        // was answered 200: it is kept and counted as damage
                        // anywhere else is (only a power loss during its
                        // write makes one that was never acknowledged).
                        None if i + 1 == ids.len() && !holds_whole_frame(&data[at..]) => break,
                        None => {
                            recovered.damaged += 1;
                            recovered.damaged_bytes += (data.len() - at) as u64;
                            at = data.len();
                        }
                    },
                }
            }
            if at < data.len() {
                // The end of the last segment: a write the crash tore. The
                // cut is made durable before frames follow it in a new
                // segment: otherwise a second crash could bring the torn bytes
                // back, then in the middle of the spool, as a damaged frame.
                recovered.torn_bytes = (data.len() - at) as u64;
                let segment = OpenOptions::new().write(true).open(&path)?;
                segment.set_len(at as u64)?;
                segment.sync_all()?;
            }
            segments.push_back((id, at as u64));
        }
        let next = ids.last().map_or(1, |id| id + 1);
        let current = Self::create(dir, next)?;
        segments.push_back((next, 0));
        let held = HeldSegments::default();
        for &(id, _) in &segments {
            held.insert(id);
        }
        let log = Self {
            dir: dir.to_owned(),
            segments,
            current,
            segment_bytes,
            released,
            held,
            rotate_first: false,
        };
        Ok((log, recovered))
    }

    /// The release cursor, if it fits the segments `ids` found: its segment is
    /// no later than the last one and, when still there, at least as long as
    /// the offset. Otherwise (damaged, or segments removed by hand and their
    /// ids begun anew) it is deleted and nothing counts as released.
    fn valid_cursor(dir: &Path, ids: &[u64]) -> Position {
        let Some(cursor) = read_cursor(dir) else {
            let _ = fs::remove_file(dir.join(CURSOR_FILE));
            return Position::default();
        };
        let fits = ids.last().is_some_and(|&last| cursor.segment <= last)
            && (!ids.contains(&cursor.segment)
                || fs::metadata(segment_path(dir, cursor.segment))
                    .is_ok_and(|meta| meta.len() >= cursor.offset));
        if fits {
            cursor
        } else {
            tracing::warn!(
                ?cursor,
                "spool: the release cursor does not fit the segments; publishing them from the start"
            );
            let _ = fs::remove_file(dir.join(CURSOR_FILE));
            Position::default()
        }
    }

    /// A new, empty segment `id`, its name durable. An empty file of that
    /// name is one an earlier `create` made before its directory sync
    /// failed (every segment on disk at open is in the log): it is taken, or
    /// the log could never start another segment, and every append would
    /// fail once the current one is full.
    fn create(dir: &Path, id: u64) -> io::Result<File> {
        let path = segment_path(dir, id);
        let file = match OpenOptions::new().create_new(true).append(true).open(&path) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new().append(true).open(&path)?;
                if file.metadata()?.len() > 0 {
                    return Err(error);
                }
                file
            }
            created => created?,
        };
        sync_dir(dir)?;
        Ok(file)
    }

    /// The segments this log holds, as the drainer's [`Reader`] needs them.
    pub fn held(&self) -> HeldSegments {
        self.held.clone()
    }

    /// Where the spool starts: the first frame not yet released.
    pub fn start(&self) -> Position {
        let (segment, _) = self.segments[0];
        Position { segment, offset: 0 }.max(self.released)
    }

    /// Where the next frame will be written.
    pub fn end(&self) -> Position {
        let &(segment, offset) = self.segments.back().expect("a current segment");
        Position { segment, offset }
    }

    /// Bytes on disk, in every segment.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(_, len)| len).sum()
    }

    /// Writes `frames` (whole frames, back to back) and makes them durable;
    /// returns where they end. A new segment is started first when the current
    /// one is full. On an error the segment is cut back to where it was, as far
    /// as the disk lets it, and the next frames go to a new segment: what was
    /// not written durably was never acknowledged.
    pub fn append(&mut self, frames: &[u8]) -> io::Result<Position> {
        let (_, len) = *self.segments.back().expect("a current segment");
        if self.rotate_first || (len > 0 && len + frames.len() as u64 > self.segment_bytes) {
            // Until a new segment starts, nothing is written: after a write
            // that failed and could not be cut back, frames written to the
            // same file would land after its bytes, where the log's offsets,
            // short by them, do not look.
            self.rotate()?;
            self.rotate_first = false;
        }
        // Where this write starts, in the segment it goes to.
        let (_, len) = *self.segments.back().expect("a current segment");
        let result = self
            .current
            .write_all(frames)
            .and_then(|()| self.current.sync_data());
        match result {
            Ok(()) => {
                let last = self.segments.back_mut().expect("a current segment");
                last.1 += frames.len() as u64;
                Ok(self.end())
            }
            Err(error) => {
                // Synced, or a crash could bring the frames back in the middle
                // of the spool (whole, after the next segment's start), to be
                // published although they were answered 503.
                let cut_back = self
                    .current
                    .set_len(len)
                    .and_then(|()| self.current.sync_data());
                // A file that failed a write takes no more, unless it is
                // empty again: a disk that stays full would otherwise leave
                // an empty segment behind per failed write.
                self.rotate_first = cut_back.is_err() || len > 0;
                Err(error)
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let (id, _) = *self.segments.back().expect("a current segment");
        self.current = Self::create(&self.dir, id + 1)?;
        self.segments.push_back((id + 1, 0));
        self.held.insert(id + 1);
        Ok(())
    }

    /// The drainer has every frame before `upto` in Kafka: moves the release
    /// cursor there, then deletes the segments that hold only such frames.
    /// When `upto` is the end of the spool, the current segment goes too and a
    /// fresh one starts: an empty spool takes no disk.
    pub fn release(&mut self, upto: Position) -> io::Result<()> {
        // First the segments wholly released, then the cursor. On a full
        // disk the cursor's new file needs the room their deletion makes (the
        // cursor first left the spool unable to shrink for good). A crash
        // between the two leaves the old cursor, in a segment that is gone or
        // before the first one left: opening then resumes at the first one
        // left (see `valid_cursor`), publishing again at most what this
        // release covers in the segments that remain.
        let mut removed = false;
        while let Some(&(id, len)) = self.segments.front() {
            let last = self.segments.len() == 1;
            let drained = id < upto.segment || (id == upto.segment && upto.offset >= len);
            if !drained || (last && len == 0) {
                break;
            }
            if last {
                self.rotate()?;
            }
            // Out of the set first: the reader must not take the deletion
            // for one from under the spool. A file already gone (deleted by
            // hand, which the reader reports) is released all the same, or
            // the cursor could never move past it.
            self.held.remove(id);
            match fs::remove_file(segment_path(&self.dir, id)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    self.held.insert(id);
                    return Err(error);
                }
                _ => {}
            }
            self.segments.pop_front();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if upto > self.released {
            write_cursor(&self.dir, upto)?;
            sync_dir(&self.dir)?;
            self.released = upto;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::HEADER_BYTES;
    use super::*;
    use crate::publish::Batch;

    fn batch(key: &str, records: &[&[u8]]) -> Batch {
        let mut batch = Batch {
            key: key.into(),
            ..Batch::default()
        };
        for record in records {
            batch.payloads.extend_from_slice(record);
            batch.ends.push(batch.payloads.len());
        }
        batch
    }

    fn frame(key: &str, records: &[&[u8]], at: i64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&batch(key, records), at, &mut out);
        out
    }

    /// A frame read back: key, records, spooled at.
    type Read = (String, Vec<Vec<u8>>, i64);

    /// Every frame from `from` to `end`, and how many damaged ones were skipped.
    fn read_all(log: &SegmentLog, from: Position, end: Position) -> (Vec<Read>, u64) {
        let mut reader = Reader::new(&log.dir, log.held(), from);
        let mut frames = Vec::new();
        while let Some((entry, _)) = reader.next(end).unwrap() {
            let records = entry.batch.payloads().map(<[u8]>::to_vec).collect();
            frames.push((entry.batch.key, records, entry.spooled_at_ms));
        }
        (frames, reader.damaged)
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        segment_ids(dir).unwrap()
    }

    #[test]
    fn a_frame_takes_the_bytes_its_length_says() {
        let records: &[&[u8]] = &[b"one", b"record two"];
        assert_eq!(
            frame_len(&batch("key", records)),
            frame("key", records, 1).len()
        );
    }

    #[test]
    fn frames_read_back_as_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered, Recovered::default());
        let start = log.start();
        let mut group = frame("s1", &[b"a", b"bb"], 1);
        group.extend(frame("s2", &[b"ccc"], 2));
        log.append(&group).unwrap();
        let end = log.append(&frame("s1", &[], 3)).unwrap();
        let (frames, damaged) = read_all(&log, start, end);
        assert_eq!(damaged, 0);
        assert_eq!(
            frames,
            [
                ("s1".into(), vec![b"a".to_vec(), b"bb".to_vec()], 1),
                ("s2".into(), vec![b"ccc".to_vec()], 2),
                ("s1".into(), vec![], 3),
            ]
        );
    }

    /// Appends `count` frames keyed `k0`, `k1`, ..., `reader` reading what
    /// is written after each (`after_read` given where each frame read ends);
    /// returns the keys read.
    fn write_and_follow(
        log: &mut SegmentLog,
        reader: &mut Reader,
        count: i64,
        mut after_read: impl FnMut(&mut SegmentLog, Position),
    ) -> Vec<String> {
        let mut keys = Vec::new();
        for i in 0..count {
            let end = log
                .append(&frame(&format!("k{i}"), &[b"record"], i))
                .unwrap();
            while let Some((entry, upto)) = reader.next(end).unwrap() {
                keys.push(entry.batch.key);
                after_read(log, upto);
            }
        }
        keys
    }

    #[test]
    fn the_reader_follows_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64).unwrap();
        let mut reader = Reader::new(dir.path(), log.held(), log.start());
        let keys = write_and_follow(&mut log, &mut reader, 20, |_, _| {});
        assert_eq!(keys, (0..20).map(|i| format!("k{i}")).collect::<Vec<_>>());
        assert!(segment_files(dir.path()).len() > 1, "small segments rotate");
    }

    #[test]
    fn restarts_leave_no_empty_segments_behind() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            drop(SegmentLog::open(dir.path(), 1 << 20).unwrap());
        }
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn reopening_finds_every_waiting_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("s", &[b"x", b"y"], 10)).unwrap();
        log.append(&frame("t", &[b"z"], 11)).unwrap();
        drop(log);
        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            recovered,
            Recovered {
                frames: 2,
                records: 3,
                oldest_spooled_at_ms: Some(10),
                framing: Some(Framing::Plain),
                ..Recovered::default()
            }
        );
        let (frames, _) = read_all(&log, log.start(), log.end());
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn a_restart_resumes_after_the_last_release_not_at_the_segment_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        let ends: Vec<Position> = (0..5)
            .map(|i| log.append(&frame(&format!("k{i}"), &[b"r"], i)).unwrap())
            .collect();
        log.release(ends[2]).unwrap();
        drop(log);
        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.start(), ends[2]);
        assert_eq!(
            (recovered.frames, recovered.oldest_spooled_at_ms),
            (2, Some(3))
        );
        let (frames, _) = read_all(&log, log.start(), log.end());
        let keys: Vec<&str> = frames.iter().map(|(key, _, _)| key.as_str()).collect();
        assert_eq!(keys, ["k3", "k4"]);
    }

    #[test]
    fn a_damaged_release_cursor_publishes_the_segment_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        let first = log.append(&frame("k0", &[b"r"], 0)).unwrap();
        log.append(&frame("k1", &[b"r"], 1)).unwrap();
        log.release(first).unwrap();
        drop(log);
        let cursor = dir.path().join(CURSOR_FILE);
        let mut bytes = fs::read(&cursor).unwrap();
        bytes[3] ^= 0xff;
        fs::write(&cursor, bytes).unwrap();
        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.frames, 2, "both again: a duplicate, never a gap");
        assert_eq!(log.start().offset, 0);
    }

    #[test]
    fn a_cursor_left_behind_by_segments_removed_by_hand_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("old", &[b"r"], 0)).unwrap();
        let end = log.append(&frame("old", &[b"r"], 1)).unwrap();
        log.release(Position {
            offset: end.offset / 2 + 1,
            ..end
        })
        .unwrap();
        drop(log);
        // An operator empties the spool but leaves the cursor: segment ids
        // begin anew, and the cursor must not hide the new frames.
        for id in segment_files(dir.path()) {
            fs::remove_file(segment_path(dir.path(), id)).unwrap();
        }
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("new", &[b"r"], 2)).unwrap();
        log.append(&frame("new", &[b"r"], 3)).unwrap();
        drop(log);
        let (_, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.frames, 2);
    }

    /// A write that failed and whose cut back failed too left its bytes in
    /// the segment, and the next segment could not be started then: nothing
    /// is written until one is, so the next frames never land after those
    /// bytes, beyond the offsets the log knows.
    #[test]
    fn after_a_write_that_could_not_be_cut_back_frames_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        let first = log.append(&frame("first", &[b"record"], 1)).unwrap();
        let path = segment_path(dir.path(), first.segment);
        // The failing write got half a frame out, and neither it nor the cut
        // back can go on (a read-only handle fails both); nor can a new
        // segment start (a non-empty file has its name).
        let torn = frame("answered 503", &[b"record"], 2);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        let next = segment_path(dir.path(), first.segment + 1);
        fs::write(&next, b"x").unwrap();
        log.current = File::open(&path).unwrap();
        assert!(log.append(&torn).is_err());
        assert!(log.append(&frame("refused", &[b"record"], 3)).is_err());

        // The disk is back.
        log.current = OpenOptions::new().append(true).open(&path).unwrap();
        fs::remove_file(&next).unwrap();
        let end = log.append(&frame("after", &[b"record"], 4)).unwrap();
        assert_eq!(end.segment, first.segment + 1, "{end:?}");
        let (frames, damaged) = read_all(&log, log.start(), end);
        let keys: Vec<_> = frames.into_iter().map(|(key, ..)| key).collect();
        assert_eq!(keys, ["first", "after"]);
        assert_eq!(damaged, 1, "the half frame: a false alarm, no loss");
    }

    #[test]
    fn an_empty_segment_left_by_a_failed_start_of_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64).unwrap();
        let first = log.append(&frame("s", &[b"record"], 1)).unwrap();
        // What a `create` whose directory sync failed leaves behind.
        File::create(segment_path(dir.path(), first.segment + 1)).unwrap();
        let second = log.append(&frame("s", &[b"record"], 2)).unwrap();
        assert_eq!(second.segment, first.segment + 1, "a new segment started");
        // One that holds frames is never written over.
        fs::write(segment_path(dir.path(), second.segment + 1), b"x").unwrap();
        assert!(log.append(&frame("s", &[b"record"], 3)).is_err());
    }

    #[test]
    fn a_torn_write_at_the_end_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("kept", &[b"record"], 1)).unwrap();
        let torn = frame("torn", &[b"record"], 2);
        let path = segment_path(dir.path(), log.end().segment);
        drop(log);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let (mut log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.frames, 1);
        assert_eq!(recovered.torn_bytes, (torn.len() / 2) as u64);
        assert_eq!(recovered.damaged, 0);
        let end = log.append(&frame("after", &[b"record"], 3)).unwrap();
        let (frames, damaged) = read_all(&log, log.start(), end);
        let keys: Vec<_> = frames.into_iter().map(|(key, ..)| key).collect();
        assert_eq!(
            (keys, damaged),
            (vec!["kept".to_owned(), "after".to_owned()], 0)
        );
    }

    /// A spool of three frames, "first", "second" and "third", whose second
    /// frame `damage` then changes on disk, given the segment's bytes and
    /// where the second frame starts.
    fn second_of_three_damaged(damage: impl FnOnce(&mut [u8], usize)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        let first = frame("first", &[b"record"], 1);
        log.append(&first).unwrap();
        log.append(&frame("second", &[b"record"], 2)).unwrap();
        log.append(&frame("third", &[b"record"], 3)).unwrap();
        let path = segment_path(dir.path(), log.end().segment);
        drop(log);
        let mut data = fs::read(&path).unwrap();
        damage(&mut data, first.len());
        fs::write(&path, &data).unwrap();
        dir
    }

    #[test]
    fn a_damaged_frame_is_skipped_and_the_rest_is_read() {
        // One bit flipped in the second frame's payload.
        let dir = second_of_three_damaged(|data, second| data[second + HEADER_BYTES + 10] ^= 0x20);

        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovered.frames, recovered.damaged), (2, 1));
        let (frames, damaged) = read_all(&log, log.start(), log.end());
        let keys: Vec<_> = frames.into_iter().map(|(key, ..)| key).collect();
        assert_eq!(keys, ["first", "third"]);
        assert_eq!(damaged, 1);

        // Read again after going back (a failed drain window): counted once.
        let mut reader = Reader::new(dir.path(), log.held(), log.start());
        while reader.next(log.end()).unwrap().is_some() {}
        reader.seek(log.start());
        while reader.next(log.end()).unwrap().is_some() {}
        assert_eq!(reader.damaged, 1);
    }

    /// The reader had read the segment up to a damaged frame when frames were
    /// written after it, and then a segment after it: the frames after the
    /// damaged one are read, not skipped with the rest of the segment.
    #[test]
    fn frames_written_after_a_damaged_one_was_read_are_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<u8>> = ["first", "second", "third", "fourth"]
            .iter()
            .zip(1..)
            .map(|(key, at)| frame(key, &[b"record"], at))
            .collect();
        let segment_bytes: usize = frames.iter().map(Vec::len).sum();
        let (mut log, _) = SegmentLog::open(dir.path(), segment_bytes as u64).unwrap();
        log.append(&frames[0]).unwrap();
        let second_ends = log.append(&frames[1]).unwrap();
        let path = segment_path(dir.path(), second_ends.segment);
        let mut data = fs::read(&path).unwrap();
        data[frames[0].len() + HEADER_BYTES + 10] ^= 0x20;
        fs::write(&path, &data).unwrap();
        let mut reader = Reader::new(dir.path(), log.held(), log.start());
        let first = reader.next(second_ends).unwrap().unwrap().0;
        assert_eq!(first.batch.key, "first");

        log.append(&frames[2]).unwrap();
        log.append(&frames[3]).unwrap();
        let next_segment = log.append(&frame("fifth", &[b"record"], 5)).unwrap();
        assert!(next_segment.segment > second_ends.segment);

        let mut keys = Vec::new();
        while let Some((entry, _)) = reader.next(log.end()).unwrap() {
            keys.push(entry.batch.key);
        }
        assert_eq!(keys, ["third", "fourth", "fifth"]);
        assert_eq!(reader.damaged, 1);
    }

    #[test]
    fn a_damaged_length_in_the_last_segment_loses_none_of_the_frames_after_it() {
        // The second frame's length now runs past the end of the segment.
        let dir = second_of_three_damaged(|data, second| data[second + 6] = 0x10);

        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            (recovered.frames, recovered.damaged, recovered.torn_bytes),
            (2, 1, 0)
        );
        let (frames, _) = read_all(&log, log.start(), log.end());
        let keys: Vec<_> = frames.into_iter().map(|(key, ..)| key).collect();
        assert_eq!(keys, ["first", "third"]);
    }

    #[test]
    fn a_segment_that_cannot_be_read_stops_the_open_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        fs::create_dir(&path).unwrap(); // unreadable as a file, even by root
        let error = SegmentLog::open(dir.path(), 1 << 20).err().unwrap();
        let text = error.to_string();
        assert!(
            text.contains("cannot read spool segment") && text.contains(&*path.to_string_lossy()),
            "{text}"
        );
    }

    #[test]
    fn garbage_instead_of_a_segment_does_not_stop_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), b"not a spool segment at all").unwrap();
        fs::write(segment_path(dir.path(), 2), frame("next", &[b"record"], 1)).unwrap();
        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((recovered.frames, recovered.damaged), (1, 1));
        let (frames, damaged) = read_all(&log, log.start(), log.end());
        assert_eq!((frames.len(), damaged), (1, 1));
        assert_eq!(frames[0].0, "next");
    }

    /// A whole frame whose checksum fails at the very end was written whole
    /// and damaged since: its callback was answered 200, so it counts as
    /// lost rather than vanishing as a torn write would.
    #[test]
    fn a_whole_frame_damaged_at_the_end_is_counted_not_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("kept", &[b"record"], 1)).unwrap();
        let end = log.append(&frame("damaged", &[b"record"], 2)).unwrap();
        let path = segment_path(dir.path(), end.segment);
        drop(log);
        let mut data = fs::read(&path).unwrap();
        *data.last_mut().unwrap() ^= 0x20; // in its record
        fs::write(&path, &data).unwrap();

        let (log, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            (recovered.frames, recovered.damaged, recovered.torn_bytes),
            (1, 1, 0)
        );
        assert_eq!(fs::read(&path).unwrap(), data, "left as it is");
        let (frames, damaged) = read_all(&log, log.start(), log.end());
        let keys: Vec<_> = frames.into_iter().map(|(key, ..)| key).collect();
        assert_eq!((keys, damaged), (vec!["kept".to_owned()], 1));
    }

    #[test]
    fn garbage_at_the_end_of_the_last_segment_is_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = frame("kept", &[b"record"], 1);
        data.extend_from_slice(&[0; 100]);
        fs::write(segment_path(dir.path(), 1), data).unwrap();
        let (_, recovered) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            (recovered.frames, recovered.damaged, recovered.torn_bytes),
            (1, 0, 100)
        );
    }

    #[test]
    fn released_segments_are_deleted_and_an_empty_spool_takes_no_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64).unwrap();
        let mut ends = Vec::new();
        for i in 0..6 {
            ends.push(log.append(&frame("k", &[b"record-bytes"], i)).unwrap());
        }
        let segments = segment_files(dir.path()).len();
        assert!(segments >= 3, "{segments}");
        let bytes = log.bytes();

        // The first frames' segments, not the one still partly waiting.
        log.release(ends[2]).unwrap();
        assert!(segment_files(dir.path()).len() < segments);
        assert!(log.bytes() < bytes);
        let (frames, _) = read_all(&log, log.start(), log.end());
        assert!(
            frames.len() >= 3,
            "what is not released stays: {}",
            frames.len()
        );

        log.release(log.end()).unwrap();
        assert_eq!(log.bytes(), 0);
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "one empty segment to write to"
        );
        let end = log.append(&frame("again", &[b"r"], 9)).unwrap();
        let (frames, _) = read_all(&log, log.start(), end);
        assert_eq!(frames.len(), 1);
    }

    /// Reads every frame from `reader` before `end`, by key.
    fn keys_read(reader: &mut Reader, end: Position) -> Vec<String> {
        std::iter::from_fn(|| reader.next(end).unwrap())
            .map(|(entry, _)| entry.batch.key)
            .collect()
    }

    #[test]
    fn a_segment_deleted_from_under_the_spool_is_reported_missing_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 bytes: one frame each.
        let (mut log, _) = SegmentLog::open(dir.path(), 64).unwrap();
        for i in 0..3 {
            log.append(&frame(&format!("k{i}"), &[b"a record of some length"], i))
                .unwrap();
        }
        let ids = segment_files(dir.path());
        assert_eq!(ids.len(), 3);
        fs::remove_file(segment_path(dir.path(), ids[1])).unwrap();

        let mut reader = Reader::new(dir.path(), log.held(), log.start());
        assert_eq!(keys_read(&mut reader, log.end()), ["k0", "k2"]);
        // Read again, as after a failed window: reported once.
        reader.seek(log.start());
        assert_eq!(keys_read(&mut reader, log.end()), ["k0", "k2"]);
        assert_eq!(reader.missing, [ids[1]]);
        // Released all the same: the spool empties.
        log.release(log.end()).unwrap();
        assert_eq!((log.bytes(), segment_files(dir.path()).len()), (0, 1));
    }

    #[test]
    fn the_segment_being_written_deleted_from_under_the_spool_is_missing_up_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("k0", &[b"r"], 0)).unwrap();
        let end = log.append(&frame("k1", &[b"r"], 1)).unwrap();
        fs::remove_file(segment_path(dir.path(), end.segment)).unwrap();

        let mut reader = Reader::new(dir.path(), log.held(), log.start());
        assert!(keys_read(&mut reader, end).is_empty());
        assert_eq!(
            (reader.position(), reader.missing.clone()),
            (end, vec![end.segment])
        );
        // Written after, to the deleted file: lost too, a second report.
        let later = log.append(&frame("k2", &[b"r"], 2)).unwrap();
        assert!(keys_read(&mut reader, later).is_empty());
        assert_eq!(reader.missing, [end.segment, end.segment]);
        reader.seek(log.start());
        assert!(keys_read(&mut reader, later).is_empty());
        assert_eq!(reader.missing.len(), 2, "read again, nothing new");
    }

    /// The drainer's reader follows the log's releases (each to the end
    /// deletes the segment it read last) and a gap between ids that opening
    /// leaves, without taking either for a segment deleted from under it.
    #[test]
    fn segments_the_log_released_or_never_wrote_are_not_missing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), frame("before", &[b"r"], 0)).unwrap();
        // Begun by a start that never wrote: deleted at open, its id skipped.
        fs::write(segment_path(dir.path(), 2), b"").unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64).unwrap();
        assert_eq!(segment_files(dir.path()), [1, 3]);

        let mut reader = Reader::new(dir.path(), log.held(), log.start());
        let keys = write_and_follow(&mut log, &mut reader, 6, |log, upto| {
            log.release(upto).unwrap();
        });
        assert_eq!(keys, ["before", "k0", "k1", "k2", "k3", "k4", "k5"]);
        assert!(reader.missing.is_empty(), "{:?}", reader.missing);
    }

    /// A release deletes the segments it empties, then writes its cursor: a
    /// crash between the two leaves the old cursor, and opening publishes
    /// every frame of the segments left.
    #[test]
    fn a_crash_between_a_release_and_its_cursor_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 64).unwrap();
        let ends: Vec<Position> = (0..6)
            .map(|i| log.append(&frame("k", &[b"record-bytes"], i)).unwrap())
            .collect();
        log.release(ends[0]).unwrap();
        // The next release, up to ends[2], deleted its segments and crashed.
        for id in segment_files(dir.path()) {
            if id < ends[2].segment {
                fs::remove_file(segment_path(dir.path(), id)).unwrap();
            }
        }
        drop(log);

        let (log, recovered) = SegmentLog::open(dir.path(), 64).unwrap();

        let left = ends
            .iter()
            .filter(|end| end.segment >= ends[2].segment)
            .count();
        assert!(left >= 3, "{left}");
        assert_eq!(recovered.frames, left as u64);
        let (frames, damaged) = read_all(&log, log.start(), log.end());
        assert_eq!((frames.len(), damaged), (left, 0));
    }

    #[test]
    fn a_failing_disk_fails_the_append_and_the_next_one_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&frame("before", &[b"r"], 1)).unwrap();
        // A disk that is full: every write fails.
        log.current = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let error = log.append(&frame("lost", &[b"r"], 2)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
        let end = log.append(&frame("after", &[b"r"], 3)).unwrap();
        let (frames, damaged) = read_all(&log, log.start(), end);
        let keys: Vec<_> = frames.into_iter().map(|(key, ..)| key).collect();
        assert_eq!(
            (keys, damaged),
            (vec!["before".to_owned(), "after".to_owned()], 0)
        );
    }

    #[test]
    fn a_frame_with_contradicting_fields_is_damaged() {
        let mut bad = frame("k", &[b"abc"], 1);
        // Record end beyond the payloads, checksum recomputed: a writer defect.
        let body = HEADER_BYTES;
        let end_at = body + 8 + 4 + 1 + 4;
        bad[end_at..end_at + 4].copy_from_slice(&99u32.to_le_bytes());
        let checksum = crc32fast::hash(&bad[body..]);
        bad[8..12].copy_from_slice(&checksum.to_le_bytes());
        assert!(matches!(scan(&bad), Scan::Damaged));
        assert!(matches!(scan(&bad[..5]), Scan::Truncated));
        assert!(matches!(scan(b"XXXXXXXXXXXXXXXX"), Scan::Damaged));
    }
}
