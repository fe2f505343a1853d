//! Settings of the durable spool.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The longest a callback waits for its spool write (see
/// `crate::spool::Spool::append`): a group commit takes milliseconds, a
/// second on a busy network volume. It comes after the acknowledgement
/// timeout for a callback Kafka did not take in time.
pub const SPOOL_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest `--kafka-ack-timeout-ms` with a spool: with the spool write on
/// top, a callback is still answered within the 19 s that bound the
/// acknowledgement timeout without one (CSS waits about 20 s). A callback
/// that waited behind earlier ones of its stream gets only what is left of
/// that write (see `crate::spool::Spool::append_by`).
pub const MAX_ACK_TIMEOUT_MS_WITH_SPOOL: u64 =
    super::kafka::MAX_ACK_TIMEOUT_MS - SPOOL_WRITE_TIMEOUT.as_millis() as u64;

/// The durable spool (see `crate::spool`): off unless a directory is given.
#[derive(Debug, Clone, Default, Args)]
pub struct SpoolConfig {
    /// Directory of the spool: when Kafka cannot acknowledge a callback, its
    /// records are made durable here and the callback is answered 200; they
    /// reach Kafka once it is back. One directory per replica, on a persistent
    /// volume. Without it, such callbacks get 503 and CSS retries them.
    #[arg(long = "spool-dir", env = "BRIDGE_SPOOL_DIR")]
    pub dir: Option<PathBuf>,

    /// Most bytes the spool may take on disk; a full spool answers 503.
    #[arg(
        long = "spool-max-bytes",
        env = "BRIDGE_SPOOL_MAX_BYTES",
        default_value_t = 1 << 30,
        value_parser = clap::value_parser!(u64).range(1 << 20..)
    )]
    pub max_bytes: u64,
}
