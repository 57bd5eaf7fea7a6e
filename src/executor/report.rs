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
