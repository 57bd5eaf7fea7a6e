//! What the executor hands back: which export a call makes, the report of
//! a call, and the errors of loading and calling (`crate::executor`). Used
//! wherever the executor is (a worker child, the fork server, the CLI).

use crate::artifact_cache::CacheError;
use crate::capture::CapturedText;
use crate::contract::ContractError;
use crate::http::HttpUsage;
use crate::job_output::Published;
use crate::outcome::Outcome;
use crate::sandbox::SandboxError;
use std::path::PathBuf;
use std::time::Duration;

/// Which export to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `run(msg)`.
    Run,
    /// `on-exit(msg, signal)`.
    OnExit {
        /// The number of the signal that stopped the worker.
        signal: u32,
    },
}

/// Everything one call produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallReport {
    /// How the call ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// What the guest wrote to stdout, up to the policy's cap.
    pub stdout: CapturedText,
    /// What the guest wrote to stderr, up to the policy's cap.
    pub stderr: CapturedText,
    /// The result the job published (`wasm-jobs:job/output`), if any.
    #[serde(flatten)]
    pub output: Option<Published>,
    /// What its HTTP requests did, if it made or tried any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpUsage>,
    /// Wall time of instantiation and call (`duration_ms` in JSON).
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
}

/// Most lines of the guest's stderr a trap's detail ends with.
const STDERR_TAIL_LINES: usize = 8;
/// Most bytes of them.
const STDERR_TAIL_BYTES: usize = 1024;

impl CallReport {
    /// The report, with a trap's detail ending in the last lines the guest
    /// wrote to stderr (a Python traceback, a JavaScript error), so the
    /// log, `exec`, a dead-letter reason and an outcome say what went
    /// wrong. Metrics still count traps by kind only.
    pub(crate) fn explained(mut self) -> Self {
        if let Outcome::Trap { detail, .. } = &mut self.outcome
            && let Some(tail) = last_lines(&self.stderr.text)
        {
            detail.push_str("; the guest's stderr ends: ");
            detail.push_str(&tail);
        }
        self
    }
}

/// Up to [`STDERR_TAIL_LINES`] last non-empty lines of `text`, at most
/// [`STDERR_TAIL_BYTES`] of them (cut at the front), joined by `\n`.
fn last_lines(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        return None;
    }
    let cut = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    Some(if cut == 0 {
        tail
    } else {
        format!("…{}", &tail[tail.ceil_char_boundary(cut)..])
    })
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The component is not a usable job (including failing to compile).
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The artifact cache could not be used.
    #[error(transparent)]
    Cache(CacheError),
}

impl LoadError {
    /// True when the component itself is at fault (not our disk or config).
    pub fn is_invalid_component(&self) -> bool {
        matches!(
            self,
            LoadError::Contract(_) | LoadError::Cache(CacheError::Compile(_))
        )
    }
}

impl From<CacheError> for LoadError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Compile(err) => {
                LoadError::Contract(ContractError::Invalid(format!("{err:#}")))
            }
            other => LoadError::Cache(other),
        }
    }
}

/// Errors of a call that are the host's fault, not the guest's.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The policy's grants could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The policy sets fuel, but the engine does not meter it.
    #[error("the policy sets a fuel budget but the engine was built without fuel metering")]
    FuelNeedsMetering,
    /// The epoch ticker (thread or SIGALRM timer) could not be started.
    #[error("cannot start the epoch ticker: {0}")]
    Ticker(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::TrapKind;

    fn report(outcome: Outcome, stderr: &str) -> CallReport {
        CallReport {
            outcome,
            stdout: CapturedText::default(),
            stderr: CapturedText {
                text: stderr.into(),
                dropped_bytes: 0,
            },
            output: None,
            http: None,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn a_trap_ends_with_the_last_lines_of_stderr() {
        let trap = Outcome::Trap {
            kind: TrapKind::Unreachable,
            detail: "wasm trap: wasm `unreachable` instruction executed".into(),
        };
        let traceback = "starting\nTraceback (most recent call last):\n  File \"app.py\", line 9, in run\nRuntimeError: boom\n\n";
        let explained = report(trap.clone(), traceback).explained();
        assert_eq!(
            explained.outcome.to_string(),
            "trap (unreachable): wasm trap: wasm `unreachable` instruction executed; \
             the guest's stderr ends: starting\nTraceback (most recent call last):\n  \
             File \"app.py\", line 9, in run\nRuntimeError: boom"
        );
        // Only the last lines, and a bounded number of bytes of them.
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let Outcome::Trap { detail, .. } = report(trap.clone(), &many).explained().outcome else {
            panic!("not a trap")
        };
        assert!(
            detail.ends_with(
                "line 92\nline 93\nline 94\nline 95\nline 96\nline 97\nline 98\nline 99"
            ),
            "{detail}"
        );
        assert!(!detail.contains("line 91"));
        let long = "é".repeat(2000);
        let Outcome::Trap { detail, .. } = report(trap.clone(), &long).explained().outcome else {
            panic!("not a trap")
        };
        assert!(
            detail.len() < 1200 && detail.contains('…'),
            "{}",
            detail.len()
        );
        // Nothing on stderr, or not a trap: unchanged.
        assert_eq!(report(trap.clone(), "\n").explained().outcome, trap);
        let fatal = Outcome::Fatal {
            reason: "bad".into(),
        };
        assert_eq!(report(fatal.clone(), "noise").explained().outcome, fatal);
    }
}
