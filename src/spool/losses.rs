//! What `spool drain` found lost in a spool, kept beside it (the file `LOST`).
//!
//! A drain Job's pod can end before the spool is empty: Kafka refusing
//! records, an eviction, a signal. The frames it skipped as damaged, and the
//! segments it found gone, are released with the rest, so that the next pod,
//! draining what is left, would not see them and would end in success: the
//! volume would then be deleted without anyone having read the loss. Kept
//! here before the release, they make every later drain of the spool say so
//! (exit code 3).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::log::Position;

const LOSSES_FILE: &str = "LOST";
const LOSSES_TMP_FILE: &str = "LOST.tmp";

/// Callbacks answered 200 that a drain found lost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Frames skipped because their checksum failed.
    pub damaged_frames: u64,
    /// Segment files found gone before they were drained.
    pub missing_segments: u64,
}

impl Losses {
    pub fn any(&self) -> bool {
        self.damaged_frames > 0 || self.missing_segments > 0
    }
}

impl std::ops::Add for Losses {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            damaged_frames: self.damaged_frames + other.damaged_frames,
            missing_segments: self.missing_segments + other.missing_segments,
        }
    }
}

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Kept {
    #[serde(flatten)]
    pub losses: Losses,
    /// The furthest damaged frame counted, as (segment, offset): a pod that
    /// ended before releasing it leaves it to the next one, which must not
    /// count it again. (A missing segment is not found twice: a new process
    /// does not know of it.)
    damaged_to: Option<(u64, u64)>,
}

impl Kept {
    pub fn damaged_to(&self) -> Option<Position> {
        self.damaged_to
            .map(|(segment, offset)| Position { segment, offset })
    }
}

/// What the drains of the spool in `dir` have found lost so far.
pub fn kept(dir: &Path) -> io::Result<Kept> {
    match fs::read(dir.join(LOSSES_FILE)) {
        Ok(data) => {
            serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Kept::default()),
        Err(error) => Err(error),
    }
}

/// Adds `found` to the losses kept for the spool in `dir`, with the furthest
/// damaged frame counted so far: written to a file of its own, synced, and
/// renamed over the old one. Kept once renamed; a failed sync of the
/// directory after it is said, not returned (it would have the losses kept
/// twice).
pub fn add(dir: &Path, found: Losses, damaged_to: Option<Position>) -> io::Result<()> {
    let kept = kept(dir)?;
    let total = Kept {
        losses: kept.losses + found,
        damaged_to: damaged_to
            .map(|to| (to.segment, to.offset))
            .max(kept.damaged_to),
    };
    let tmp = dir.join(LOSSES_TMP_FILE);
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(&total).map_err(io::Error::other)?)?;
    file.sync_data()?;
    fs::rename(tmp, dir.join(LOSSES_FILE))?;
    if let Err(error) = File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::warn!(%error, "spool: the losses kept may not survive a crash (directory not synced)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_add_up_across_drains_and_none_is_no_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kept(dir.path()).unwrap().losses, Losses::default());
        let at = |segment, offset| Some(Position { segment, offset });
        let damaged = Losses {
            damaged_frames: 2,
            missing_segments: 0,
        };
        add(dir.path(), damaged, at(3, 100)).unwrap();
        let missing = Losses {
            damaged_frames: 0,
            missing_segments: 1,
        };
        add(dir.path(), missing, at(2, 500)).unwrap();
        let kept = kept(dir.path()).unwrap();
        assert_eq!(
            kept.losses,
            Losses {
                damaged_frames: 2,
                missing_segments: 1
            }
        );
        assert_eq!(kept.damaged_to(), at(3, 100), "the furthest is kept");
    }
}
