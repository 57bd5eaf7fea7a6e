//! Logging set-up for the binary: `tracing` events to stderr, filtered by
//! `RUST_LOG` or the command's default level, as JSON lines or pretty text.
//!
//! Every process logs this way. The CLI process (and so the worker parent)
//! calls `init`; the fork server, which starts with an empty environment,
//! `install`s the settings the parent hands it; worker children and
//! compile helpers inherit the fork server's subscriber.
//!
//! In JSON each line is one object: the event's fields at the top level and
//! the fields of the job span it happened in (`message_id`, `module`,
//! `tenant`, `attempt`, `pid`) under `"span"`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields};
use tracing_subscriber::fmt::{MakeWriter, SubscriberBuilder};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Pretty,
}

/// The effective logging settings, handed on to the fork server (which
/// starts with an empty environment, so it cannot read `RUST_LOG` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// JSON or pretty.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `wasm_jobs=debug`.
    pub filter: String,
}

impl LogFormat {
    /// The name `--log-format` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        }
    }

    /// The default: JSON when stdout is not a terminal (a service manager, a
    /// pipe, a file), pretty text when a person is watching.
    fn auto() -> Self {
        if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        }
    }
}

/// Install the global subscriber. `default_level` applies when `RUST_LOG` is
/// unset, e.g. `"warn"` for `exec` (guest output is printed directly there).
/// Returns the settings in force.
pub(crate) fn init(default_level: &str, format: Option<LogFormat>) -> LogSettings {
    let directive = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| default_level.to_owned());
    let settings = LogSettings {
        format: format.unwrap_or_else(LogFormat::auto),
        filter: directive,
    };
    install(&settings);
    settings
}

/// Install the global subscriber with exactly these settings.
pub(crate) fn install(settings: &LogSettings) {
    let _ = match settings.format {
        LogFormat::Json => json(&settings.filter, std::io::stderr).try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(env_filter(&settings.filter))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// The JSON subscriber the binary logs with, filtered by `filter` and
/// writing to `writer` instead of stderr: for the worker benchmark, which
/// measures what logging costs a worker.
pub fn json_subscriber<W>(filter: &str, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    json(filter, writer).finish()
}

fn json<W>(filter: &str, writer: W) -> SubscriberBuilder<JsonFields, Format<Json>, EnvFilter, W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(env_filter(filter))
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}

fn env_filter(filter: &str) -> EnvFilter {
    EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}
