//! Logging set-up for the binary: `tracing` events to stderr, filtered by
//! `RUST_LOG` or the command's default level, as JSON lines or pretty text.
//!
//! In JSON each line is one object: the event's fields at the top level and
//! the fields of the job span it happened in (`message_id`, `module`,
//! `tenant`, `attempt`, `pid`) under `"span"`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Pretty,
}

impl LogFormat {
    /// The default: JSON when stdout is not a terminal (a service manager, a
    /// pipe, a file), pretty text when a person is watching.
    pub fn auto() -> Self {
        if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

/// Install the global subscriber. `default_level` applies when `RUST_LOG` is
/// unset, e.g. `"warn"` for `exec` (guest output is printed directly there).
pub fn init(default_level: &str, format: Option<LogFormat>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format.unwrap_or_else(LogFormat::auto) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
