//! The drainer's side of the log: frames read front to back as the writer
//! makes them durable.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::error::SpoolReadError;
use super::frame::{Entry, Scan, resync, scan};
use super::log::{HeldSegments, Position, segment_path};

/// Reads frames front to back, for the drainer. Holds the unread part of one
/// segment in memory (segments are small), read as the writer makes it durable.
pub struct Reader {
    dir: PathBuf,
    held: HeldSegments,
    position: Position,
    /// Bytes of segment `position.segment` from `buffer_start` on.
    buffer: Vec<u8>,
    buffer_start: u64,
    /// Damaged frames skipped so far, each counted once however often the
    /// reader goes back over it.
    pub damaged: u64,
    /// The furthest place a damaged frame was counted at.
    counted_to: Option<Position>,
    /// Segments the log holds that were found missing, with unread frames
    /// possibly in them, since the drainer last took this list (see
    /// [`HeldSegments`]): what was left to read in them is skipped.
    pub missing: Vec<u64>,
    /// How far the losses reported in `missing` reach: going back over them
    /// (a failed window is read again) reports nothing new; frames written
    /// later to a deleted segment being written are a new loss.
    missing_to: Option<Position>,
}

impl Reader {
    /// A reader from `from`, of the segments `held` says the log holds.
    pub fn new(dir: &Path, held: HeldSegments, from: Position) -> Self {
        Self {
            dir: dir.to_owned(),
            held,
            position: from,
            buffer: Vec::new(),
            buffer_start: from.offset,
            damaged: 0,
            counted_to: None,
            missing: Vec::new(),
            missing_to: None,
        }
    }

    /// Where the next frame is read from.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The furthest place a damaged frame was counted at.
    pub fn damaged_to(&self) -> Option<Position> {
        self.counted_to
    }

    /// Counts no damaged frame at or before `position`: an earlier reader
    /// (an earlier `spool drain`) counted those.
    pub fn counted_before(&mut self, position: Position) {
        self.counted_to = self.counted_to.max(Some(position));
    }

    /// Goes back (or forward) to `position`.
    pub fn seek(&mut self, position: Position) {
        self.position = position;
        self.buffer.clear();
        self.buffer_start = position.offset;
    }

    /// The next frame before `end` (the end of what is durably written) and
    /// where it ends; `None` when there is none.
    pub fn next(&mut self, end: Position) -> Result<Option<(Entry, Position)>, SpoolReadError> {
        while self.position < end {
            let at = (self.position.offset - self.buffer_start) as usize;
            let data = self.buffer.get(at..).unwrap_or_default();
            let (scanned, available) = (scan(data), data.len());
            match scanned {
                Scan::Frame { entry, len } => {
                    self.position.offset += len;
                    return Ok(Some((entry, self.position)));
                }
                Scan::Truncated if self.fill(end)? => continue,
                // The search for the next valid frame below looks at the
                // buffer only: it must hold the rest of the segment, or frames
                // written after the buffer was read would be skipped with it.
                Scan::Damaged if self.fill(end)? => continue,
                // Nothing more in this segment.
                Scan::Truncated if available == 0 => {
                    if self.position.segment == end.segment {
                        return Ok(None);
                    }
                    self.next_segment();
                    continue;
                }
                Scan::Truncated | Scan::Damaged => {}
            }
            let at = (self.position.offset - self.buffer_start) as usize;
            let damaged_at = self.buffer.len().saturating_sub(at);
            // A damaged frame: on to the next valid one in this segment, or to
            // the next segment.
            if self
                .counted_to
                .is_none_or(|counted| self.position > counted)
            {
                self.damaged += 1;
                self.counted_to = Some(self.position);
            }
            match resync(self.buffer.get(at..).unwrap_or_default()) {
                Some(skip) => self.position.offset += skip as u64,
                None if self.position.segment == end.segment => {
                    self.position.offset += damaged_at as u64;
                }
                None => self.next_segment(),
            }
        }
        Ok(None)
    }

    /// Reads what the segment holds past the buffer, up to `end`. Returns
    /// whether anything new was read, or the reader moved on from a segment
    /// deleted from under the spool.
    fn fill(&mut self, end: Position) -> Result<bool, SpoolReadError> {
        let path = segment_path(&self.dir, self.position.segment);
        self.fill_from(&path, end)
            .map_err(|source| SpoolReadError { path, source })
    }

    fn fill_from(&mut self, path: &Path, end: Position) -> io::Result<bool> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if !self.held.holds(self.position.segment) {
                    // Released meanwhile, or an id never written: nothing here.
                    return Ok(false);
                }
                // Deleted from under the spool: what it held is gone. On past
                // it; in the segment being written, past what is written (the
                // writer's frames go to the deleted file until it rotates).
                let segment = self.position.segment;
                if segment == end.segment {
                    self.seek(end);
                } else {
                    self.next_segment();
                }
                if self.missing_to.is_none_or(|to| self.position > to) {
                    self.missing.push(segment);
                    self.missing_to = Some(self.position);
                }
                return Ok(true);
            }
            Err(error) => return Err(error),
        };
        let limit = if self.position.segment == end.segment {
            end.offset
        } else {
            file.metadata()?.len()
        };
        // Keep only what is not read yet.
        let at = (self.position.offset - self.buffer_start) as usize;
        if at >= self.buffer.len() {
            self.buffer.clear();
        } else {
            self.buffer.drain(..at);
        }
        self.buffer_start = self.position.offset;
        let from = self.buffer_start + self.buffer.len() as u64;
        if from >= limit {
            return Ok(false);
        }
        file.seek(SeekFrom::Start(from))?;
        let before = self.buffer.len();
        file.take(limit - from).read_to_end(&mut self.buffer)?;
        Ok(self.buffer.len() > before)
    }

    fn next_segment(&mut self) {
        self.seek(Position {
            segment: self.position.segment + 1,
            offset: 0,
        });
    }
}
