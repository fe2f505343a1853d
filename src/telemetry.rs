//! Logging through `tracing`: human-readable by default, JSON for log collectors.
//! The level comes from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stderr. Call once, from `main`.
/// A `RUST_LOG` that cannot be read is said once, at `info`, the level used
/// instead.
pub fn init(format: LogFormat) {
    let (filter, unreadable) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => (
            EnvFilter::new("info"),
            std::env::var_os(EnvFilter::DEFAULT_ENV).map(|_| error),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    if let Some(error) = unreadable {
        tracing::warn!(%error, "RUST_LOG cannot be read: logging at info");
    }
}

/// The message a panic was raised with, for the ERROR line of code that
/// survives it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    (panic.downcast_ref::<&str>().copied())
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
