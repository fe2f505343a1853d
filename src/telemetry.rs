//! Logging through `tracing`: human-readable by default, JSON for log collectors.
//! The level comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

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
    // Colours only on a terminal (a pod's log, a file or a collector would
    // keep the escape codes as text), and not there either under NO_COLOR.
    let colours = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    if let Some(error) = unreadable {
        tracing::warn!(%error, "RUST_LOG cannot be read: logging at info");
    }
    // Where `RUST_LOG` turns the bridge's own ERROR lines off, the standard
    // hook still says the panic.
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if tracing::enabled!(tracing::Level::ERROR) {
            log_panic(info);
        } else {
            standard(info);
        }
    }));
}

/// Logs a panic at ERROR, with where it was raised, in place of the standard
/// hook's raw lines on stderr: a collector of JSON logs took those for lines
/// of their own, and the line of the code that survives a panic (a request's
/// connection, a background task: see `panics_total`) says what happened
/// next but not where. A backtrace comes with it when `RUST_BACKTRACE` (or
/// `RUST_LIB_BACKTRACE`) asks.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(ToString::to_string);
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    tracing::error!(
        panic = panic_message(info.payload()),
        location,
        thread = thread.name().unwrap_or("unnamed"),
        backtrace,
        "panicked"
    );
}

/// The message a panic was raised with, for the ERROR line of code that
/// survives it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    (panic.downcast_ref::<&str>().copied())
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log that tests read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A panic reaches the log as one JSON line, with where it was raised.
    #[test]
    fn a_panic_is_one_json_line_with_its_location() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        // The hook is the process's, and runs on the panicking thread: this
        // test's panics go to `log_panic`, under the test's subscriber, and
        // the other tests' to the hook they had.
        const THREAD: &str = "panics-into-the-log";
        let previous = Arc::new(std::panic::take_hook());
        let others = previous.clone();
        std::panic::set_hook(Box::new(move |info| match std::thread::current().name() {
            Some(THREAD) => log_panic(info),
            _ => others(info),
        }));
        let panicked = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || tracing::subscriber::with_default(subscriber, || panic!("a bug")))
            .unwrap()
            .join();
        std::panic::set_hook(Box::new(move |info| previous(info)));
        assert!(panicked.is_err());

        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(log.trim()).expect("one JSON line");
        assert_eq!(line["message"], "panicked");
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["panic"], "a bug");
        let location = line["location"].as_str().unwrap();
        assert!(location.starts_with("src/telemetry.rs:"), "{location}");
    }
}
