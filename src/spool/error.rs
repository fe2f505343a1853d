//! Why the spool did not take records, or cannot be opened.

use std::io;
use std::path::PathBuf;

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
    #[error("the spool's disk did not complete a write within {0:?}")]
    Slow(std::time::Duration),
    /// The appends waiting for the writer already hold as many frames in
    /// memory as they may: the disk is slower than callbacks come.
    #[error("the records waiting for the spool's disk take {bytes} bytes already")]
    Backlog { bytes: u64 },
    /// The callback waited behind an earlier one of its stream until no time
    /// was left for its write before the sender stops waiting.
    #[error("no time was left to write the records to the spool before the sender stops waiting")]
    TooLate,
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

/// The spool holds records framed otherwise than this process frames them:
/// published as they are, they would reach readers that expect the other
/// framing.
#[derive(Debug, thiserror::Error)]
#[error(
    "the spool in {dir} holds records {spooled}, and this process publishes records {current}: \
     publish them with the settings that wrote them (css-kafka-bridge spool drain \
     --spool-dir ..., {advice}) before starting this one on that directory"
)]
pub struct SpoolFramingMismatch {
    pub dir: PathBuf,
    pub spooled: &'static str,
    pub current: &'static str,
    pub advice: &'static str,
}

/// A directory given to `spool drain` holds no spool: neither the schema file
/// every spool gets when it is first opened nor a segment. Drained as it is,
/// it would be reported empty, and the volume that really holds the records
/// (the path mistyped, the wrong volume mounted) deleted on the strength of
/// it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0} holds no spool (no {schema} file, no segment): check the path and the volume mounted \
     there; a spool the bridge opened always has the {schema} file",
    schema = super::SCHEMA_FILE
)]
pub struct NoSpool(pub PathBuf);

/// Another process holds the spool directory.
#[derive(Debug, thiserror::Error)]
#[error("the spool in {0} is in use by another process")]
pub struct SpoolInUse(pub PathBuf);

/// A spool segment the drainer could not read (an I/O error, a permission
/// taken away). Nothing is skipped: the drainer tries again every second, and
/// the records wait until the disk reads again.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the spool segment {path}: {source}")]
pub struct SpoolReadError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}
