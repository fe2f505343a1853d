//! Settings of the durable spool.

use std::path::PathBuf;

use clap::Args;

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
