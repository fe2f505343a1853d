//! The release cursor: how far in the first segment Kafka has everything, so
//! that a restart resumes there (see [`super::log`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::log::Position;

/// The release cursor's file, and the one it is written to before a rename.
pub(super) const CURSOR_FILE: &str = "released";
const CURSOR_TMP_FILE: &str = "released.tmp";

/// Reads the release cursor; `None` when there is none or it is damaged.
pub(super) fn read_cursor(dir: &Path) -> Option<Position> {
    let data = fs::read(dir.join(CURSOR_FILE)).ok()?;
    let (fields, checksum) = data.split_first_chunk::<16>()?;
    if checksum != crc32fast::hash(fields).to_le_bytes() {
        return None;
    }
    let (segment, offset) = fields.split_at(8);
    Some(Position {
        segment: u64::from_le_bytes(segment.try_into().ok()?),
        offset: u64::from_le_bytes(offset.try_into().ok()?),
    })
}

/// Writes the release cursor: to a file of its own, synced, then renamed over
/// the old one. A crash leaves the old cursor or the new one, and either is
/// safe (the old one only means more to publish again). The rename is durable
/// once the caller syncs the directory.
pub(super) fn write_cursor(dir: &Path, at: Position) -> io::Result<()> {
    let mut data = Vec::with_capacity(20);
    data.extend_from_slice(&at.segment.to_le_bytes());
    data.extend_from_slice(&at.offset.to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
    let tmp = dir.join(CURSOR_TMP_FILE);
    let mut file = File::create(&tmp)?;
    file.write_all(&data)?;
    file.sync_data()?;
    fs::rename(tmp, dir.join(CURSOR_FILE))
}
