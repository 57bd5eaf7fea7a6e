//! How one call into a job ended, as a typed value, and the process exit code
//! that stands for it.
//!
//! Shared by the worker children, the worker parent and the CLI; nothing
//! here runs guest code. The executor produces an [`Outcome`] for every call,
//! in a worker child or in the CLI process for `wasm-jobs exec`; either exits
//! with [`Outcome::exit_code`]. The child also sends the full outcome to the
//! worker parent (on the fork server's event socket), which decides from it
//! what happens to the message.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Exit codes of `wasm-jobs exec` and of a forked worker child, one per outcome.
/// They are part of the CLI's contract: documented in the README, stable.
pub(crate) mod exit_code {
    /// The job returned `ok`.
    pub(crate) const OK: u8 = 0;
    /// wasm-jobs itself failed (I/O, bad configuration); nothing was judged.
    pub(crate) const HOST_ERROR: u8 = 1;
    /// Command-line usage error (clap's own code).
    pub(crate) const USAGE: u8 = 2;
    /// `send --wait`: no outcome arrived within `--timeout`.
    pub(crate) const NO_OUTCOME: u8 = 3;
    /// The job returned `failure::retry`.
    pub(crate) const RETRY: u8 = 10;
    /// The job returned `failure::fatal`.
    pub(crate) const FATAL: u8 = 11;
    /// `on-exit` returned an error.
    pub(crate) const ON_EXIT_FAILED: u8 = 12;
    /// An outcome: the job was stopped by a signal, `on-exit` ran, and the
    /// message was dead-lettered.
    pub(crate) const STOPPED: u8 = 13;
    /// The guest trapped (unreachable, out-of-bounds access, a guest `exit`, ...).
    pub(crate) const TRAP: u8 = 20;
    /// The guest tried to grow its linear memory past the policy's limit.
    pub(crate) const OUT_OF_MEMORY: u8 = 21;
    /// The guest exhausted its call stack (deep or infinite recursion).
    pub(crate) const STACK_OVERFLOW: u8 = 22;
    /// The guest used up the fuel (CPU budget) the policy gave it.
    pub(crate) const OUT_OF_FUEL: u8 = 23;
    /// The call ran past the policy's wall-time limit.
    pub(crate) const TIMEOUT: u8 = 24;
    /// The file is not a component of the `wasm-jobs:job/job` world.
    pub(crate) const INVALID_COMPONENT: u8 = 30;
    /// An outcome: the worker refused the message (policy, module,
    /// signature) and its job never ran.
    pub(crate) const REFUSED: u8 = 31;
}

/// Why a guest trapped. Kinds that a worker operator acts on differently get
/// their own variant; the rest are [`TrapKind::Other`] with the trap text kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapKind {
    /// Grew linear memory past the policy's limit.
    OutOfMemory,
    /// Exhausted the wasm call stack (deep or infinite recursion).
    StackOverflow,
    /// Executed an `unreachable` instruction (Rust panics end here).
    Unreachable,
    /// Accessed linear memory out of bounds.
    MemoryOutOfBounds,
    /// Divided an integer by zero.
    IntegerDivisionByZero,
    /// Integer arithmetic overflowed (signed `INT_MIN / -1`).
    IntegerOverflow,
    /// Used up the fuel (CPU budget) the policy gave it.
    OutOfFuel,
    /// The guest called `wasi:cli/exit` (C `exit()`, Python `sys.exit`) with
    /// this status instead of returning from the export.
    GuestExit(i32),
    /// Any other trap or host-side error raised while the guest ran.
    Other,
}

impl TrapKind {
    /// A stable snake_case label for JSON, logs and metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TrapKind::OutOfMemory => "out_of_memory",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Unreachable => "unreachable",
            TrapKind::MemoryOutOfBounds => "memory_out_of_bounds",
            TrapKind::IntegerDivisionByZero => "integer_division_by_zero",
            TrapKind::IntegerOverflow => "integer_overflow",
            TrapKind::OutOfFuel => "out_of_fuel",
            TrapKind::GuestExit(_) => "guest_exit",
            TrapKind::Other => "other",
        }
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrapKind::OutOfMemory => f.write_str("out of memory"),
            TrapKind::StackOverflow => f.write_str("stack overflow"),
            TrapKind::Unreachable => f.write_str("unreachable"),
            TrapKind::MemoryOutOfBounds => f.write_str("memory out of bounds"),
            TrapKind::IntegerDivisionByZero => f.write_str("integer division by zero"),
            TrapKind::IntegerOverflow => f.write_str("integer overflow"),
            TrapKind::OutOfFuel => f.write_str("out of fuel"),
            TrapKind::GuestExit(code) => write!(f, "guest exit({code})"),
            TrapKind::Other => f.write_str("trap"),
        }
    }
}

/// How one call of `run` or `on-exit` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// `run` or `on-exit` returned `ok`.
    Ok,
    /// `run` returned `failure::retry`.
    Retry {
        /// The job's explanation.
        reason: String,
        /// How long the message should stay invisible before it is tried
        /// again; `None` leaves it to the queue's visibility timeout.
        delay_seconds: Option<u32>,
    },
    /// `run` returned `failure::fatal`.
    Fatal {
        /// The job's explanation.
        reason: String,
    },
    /// `on-exit` returned `err(reason)`.
    OnExitFailed {
        /// The job's explanation.
        reason: String,
    },
    /// The guest trapped.
    Trap {
        /// What kind of trap.
        kind: TrapKind,
        /// The trap text, for logs.
        detail: String,
    },
    /// The call did not finish within the policy's wall-time limit.
    Timeout {
        /// The limit it ran past.
        #[serde(serialize_with = "as_secs_f64", deserialize_with = "from_secs_f64")]
        limit: Duration,
    },
}

fn from_secs_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs: f64 = serde::Deserialize::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

fn as_secs_f64<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Outcome {
    /// The documented process exit code for this outcome (listed in the
    /// README's "Exit codes").
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Ok => exit_code::OK,
            Outcome::Retry { .. } => exit_code::RETRY,
            Outcome::Fatal { .. } => exit_code::FATAL,
            Outcome::OnExitFailed { .. } => exit_code::ON_EXIT_FAILED,
            Outcome::Trap { kind, .. } => match kind {
                TrapKind::OutOfMemory => exit_code::OUT_OF_MEMORY,
                TrapKind::StackOverflow => exit_code::STACK_OVERFLOW,
                TrapKind::OutOfFuel => exit_code::OUT_OF_FUEL,
                _ => exit_code::TRAP,
            },
            Outcome::Timeout { .. } => exit_code::TIMEOUT,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Retry {
                reason,
                delay_seconds: Some(d),
            } => write!(f, "retry after {d} s: {reason}"),
            Outcome::Retry { reason, .. } => write!(f, "retry: {reason}"),
            Outcome::Fatal { reason } => write!(f, "fatal: {reason}"),
            Outcome::OnExitFailed { reason } => write!(f, "on-exit failed: {reason}"),
            Outcome::Trap { kind, detail } => write!(f, "trap ({kind}): {detail}"),
            Outcome::Timeout { limit } => {
                write!(
                    f,
                    "timeout: still running after {:.3} s",
                    limit.as_secs_f64()
                )
            }
        }
    }
}

impl Outcome {
    /// The outcome of an error raised while the guest ran (or was
    /// instantiated) under `timeout`.
    pub(crate) fn from_guest_error(err: &wasmtime::Error, timeout: Duration) -> Outcome {
        // The root cause says what happened; the full chain (with the wasm
        // backtrace) goes to the debug log.
        let detail = err.root_cause().to_string();
        tracing::debug!(error = %format!("{err:?}"), "guest call failed");
        let kind = if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
            match trap {
                wasmtime::Trap::Interrupt => {
                    return Outcome::Timeout { limit: timeout };
                }
                wasmtime::Trap::StackOverflow => TrapKind::StackOverflow,
                wasmtime::Trap::UnreachableCodeReached => TrapKind::Unreachable,
                wasmtime::Trap::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
                wasmtime::Trap::IntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
                wasmtime::Trap::IntegerOverflow => TrapKind::IntegerOverflow,
                wasmtime::Trap::OutOfFuel => TrapKind::OutOfFuel,
                _ => TrapKind::Other,
            }
        } else if err
            .downcast_ref::<crate::sandbox::MemoryLimitExceeded>()
            .is_some()
            || detail.starts_with("resource limit exceeded")
        {
            // Our budget, or wasmtime's count of instances, tables or memories
            // (the caps of `sandbox::MemoryLimiter`): host memory either way.
            TrapKind::OutOfMemory
        } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            TrapKind::GuestExit(exit.0)
        } else {
            TrapKind::Other
        };
        Outcome::Trap { kind, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_exit_code() {
        let outcomes = [
            Outcome::Ok,
            Outcome::Retry {
                reason: "r".into(),
                delay_seconds: None,
            },
            Outcome::Fatal { reason: "f".into() },
            Outcome::OnExitFailed { reason: "e".into() },
            Outcome::Trap {
                kind: TrapKind::Unreachable,
                detail: String::new(),
            },
            Outcome::Trap {
                kind: TrapKind::OutOfMemory,
                detail: String::new(),
            },
            Outcome::Trap {
                kind: TrapKind::StackOverflow,
                detail: String::new(),
            },
            Outcome::Trap {
                kind: TrapKind::OutOfFuel,
                detail: String::new(),
            },
            Outcome::Timeout {
                limit: Duration::from_secs(1),
            },
        ];
        let mut codes: Vec<u8> = outcomes.iter().map(Outcome::exit_code).collect();
        codes.push(exit_code::INVALID_COMPONENT);
        codes.push(exit_code::HOST_ERROR);
        codes.push(exit_code::USAGE);
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "codes collide: {codes:?}");
    }

    #[test]
    fn outcome_json_is_tagged() {
        let json = serde_json::to_value(Outcome::Retry {
            reason: "busy".into(),
            delay_seconds: Some(5),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"outcome": "retry", "reason": "busy", "delay_seconds": 5})
        );
        let json = serde_json::to_value(Outcome::Trap {
            kind: TrapKind::GuestExit(3),
            detail: "x".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"outcome": "trap", "kind": {"guest_exit": 3}, "detail": "x"})
        );
        let oom = Outcome::Trap {
            kind: TrapKind::OutOfMemory,
            detail: "d".into(),
        };
        let json = serde_json::to_value(&oom).unwrap();
        assert_eq!(json["kind"], "out_of_memory");
        let back: Outcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, oom);
        let timeout = Outcome::Timeout {
            limit: Duration::from_millis(1500),
        };
        let back: Outcome =
            serde_json::from_str(&serde_json::to_string(&timeout).unwrap()).unwrap();
        assert_eq!(back, timeout);
    }
}
