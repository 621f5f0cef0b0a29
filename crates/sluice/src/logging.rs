//! Log setup: JSON (one object per line) or text on stdout, filtered by `RUST_LOG` or the
//! config's level, written by a background thread so a slow stdout never stalls a request.
//! Under extreme pressure the writer drops lines rather than block; the ledger, not the log,
//! is the record of every call.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Keep the guard alive until exit so buffered lines are written.
pub fn init(format: &str, default_level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
    guard
}
