//! What happens to a message, decided in the worker parent from how its
//! job ended: one pure function, [`decide`], the rule for a message's last
//! allowed attempt, [`on_attempt`], and the one for after exit handling,
//! [`after_exit_handling`]. The README's fate table is this file.
//! A passing failure (the job, or its `on-exit`, could not start or run for
//! reasons that are not the message's) is never a verdict: the message is
//! left for redelivery.

use crate::outcome::{Outcome, exit_code};
use crate::worker::protocol::ExitStatus;
use std::time::Duration;

/// How the worker child for a message ended, as the parent learned it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WorkerEnd {
    /// The child reported an outcome and exited.
    Reported(Outcome),
    /// The child exited with this code without reporting (a host-side crash).
    ExitCode(i32),
    /// The child was killed by this signal, and the parent received no exit
    /// signal itself.
    Killed(i32),
    /// The module is not a valid job component.
    Unloadable(String),
    /// Refused at admission (tenant mismatch, bad signature, policy, unknown
    /// module); the job never started.
    Refused(String),
    /// The job could not start for a passing reason (fork failed, compile
    /// helper killed or timed out, no fork server).
    NotStarted(String),
    /// The child died with its fork server; no status is known.
    Lost,
    /// The child outlived its timeout plus grace and was killed.
    Overran(Duration),
}

impl std::fmt::Display for WorkerEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerEnd::Reported(o) => write!(f, "{o}"),
            WorkerEnd::ExitCode(c) => write!(f, "exited with code {c} without an outcome"),
            WorkerEnd::Killed(s) if *s == libc::SIGSYS => write!(
                f,
                "killed by signal {s} (SIGSYS: a system call outside the child's seccomp allow-list)"
            ),
            WorkerEnd::Killed(s) => write!(f, "killed by signal {s}"),
            WorkerEnd::Unloadable(why) => write!(f, "module could not be loaded: {why}"),
            WorkerEnd::Refused(why) => write!(f, "refused: {why}"),
            WorkerEnd::NotStarted(why) => write!(f, "could not start: {why}"),
            WorkerEnd::Lost => write!(f, "lost with its fork server"),
            WorkerEnd::Overran(limit) => {
                write!(f, "still running after {} s; killed", limit.as_secs())
            }
        }
    }
}

/// How long a message whose job could not start stays invisible.
pub(crate) const REDELIVER_AFTER: Duration = Duration::from_secs(1);

impl WorkerEnd {
    /// Combine the exit status with the outcome the child reported, if any.
    pub(crate) fn from_process(status: ExitStatus, outcome: Option<Outcome>) -> Self {
        match (status, outcome) {
            (ExitStatus::Signal(sig), _) => WorkerEnd::Killed(sig),
            (ExitStatus::Code(_), Some(outcome)) => WorkerEnd::Reported(outcome),
            (ExitStatus::Code(code), None) => WorkerEnd::ExitCode(code),
        }
    }
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Done: delete it.
    Delete,
    /// Leave it; it comes back when its visibility timeout runs out and the
    /// queue's redrive policy decides whether it is dead-lettered.
    Leave { why: String },
    /// Leave it, invisible for this long first (a job's retry delay).
    RetryAfter { delay: Duration, why: String },
    /// Not a verdict: the job never started for a passing reason. Make it
    /// visible again after `delay`.
    Redeliver { delay: Duration, why: String },
    /// Copy it to the dead-letter queue now, then delete it; if the queue has
    /// none, leave it and log an error.
    DeadLetter { why: String },
    /// The worker died of a signal the parent did not get: run `on-exit` for
    /// this message alone, then requeue or dead-letter it.
    ExitHandling { signal: i32 },
    /// A failure that would be retried, on the last receive the queue's
    /// redrive policy allows: dead-letter it now with `why` (which says so),
    /// rather than leave it for the queue to move without a reason.
    OutOfAttempts { why: String },
}

/// Which receive of a message this is, among those its queue allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// The receive count: 1 on the first delivery.
    pub(crate) number: u32,
    /// The redrive policy's maxReceiveCount; `None` without one.
    pub(crate) allowed: Option<u32>,
}

/// `fate` on `attempt`: a failure that would be left for another try is,
/// on the last try the queue allows, dead-lettered by the worker with its
/// reason ("attempt 3 of 3: ..."). Passing failures stay no verdict, and a
/// queue without a redrive policy changes nothing.
pub(crate) fn on_attempt(fate: Fate, attempt: Attempt) -> Fate {
    match (fate, attempt.allowed) {
        (Fate::Leave { why } | Fate::RetryAfter { why, .. }, Some(allowed))
            if attempt.number >= allowed =>
        {
            Fate::OutOfAttempts {
                why: format!("attempt {} of {allowed}: {why}", attempt.number),
            }
        }
        (fate, _) => fate,
    }
}

/// The fate of a message whose worker ended on its own.
pub(crate) fn decide(end: &WorkerEnd) -> Fate {
    match end {
        WorkerEnd::Reported(Outcome::Ok) => Fate::Delete,
        WorkerEnd::Reported(Outcome::Retry {
            reason,
            delay_seconds: Some(d),
        }) => Fate::RetryAfter {
            delay: Duration::from_secs((*d).into()),
            why: reason.clone(),
        },
        WorkerEnd::Reported(Outcome::Retry {
            reason,
            delay_seconds: None,
        }) => Fate::Leave {
            why: format!("job asked to retry: {reason}"),
        },
        WorkerEnd::Reported(Outcome::Fatal { reason }) => Fate::DeadLetter {
            why: format!("job failed fatally: {reason}"),
        },
        WorkerEnd::Reported(other @ (Outcome::Trap { .. } | Outcome::Timeout { .. })) => {
            Fate::Leave {
                why: other.to_string(),
            }
        }
        // `run` never returns an on-exit failure; treat it as a crash.
        WorkerEnd::Reported(other @ Outcome::OnExitFailed { .. }) => Fate::Leave {
            why: other.to_string(),
        },
        WorkerEnd::ExitCode(code) if *code == i32::from(exit_code::INVALID_COMPONENT) => {
            Fate::DeadLetter {
                why: "module is not a valid job component".into(),
            }
        }
        WorkerEnd::ExitCode(code) => Fate::Leave {
            why: format!("worker exited with code {code} without reporting an outcome"),
        },
        WorkerEnd::Killed(signal) => Fate::ExitHandling { signal: *signal },
        WorkerEnd::Unloadable(why) => Fate::DeadLetter {
            why: format!("module could not be loaded: {why}"),
        },
        WorkerEnd::Refused(why) => Fate::DeadLetter { why: why.clone() },
        WorkerEnd::NotStarted(why) => Fate::Redeliver {
            delay: REDELIVER_AFTER,
            why: why.clone(),
        },
        // Its process is gone as if killed: clean up as for a signal.
        WorkerEnd::Lost => Fate::ExitHandling {
            signal: libc::SIGKILL,
        },
        WorkerEnd::Overran(_) => Fate::Leave {
            why: end.to_string(),
        },
    }
}

/// How an `on-exit` try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnExitTry {
    /// It returned ok.
    Finished,
    /// It ran and did not succeed: returned an error, trapped, was killed,
    /// or overran the exit timeout. A verdict on the job's cleanup.
    Failed,
    /// It never ran to an end for a passing reason: no fork server could
    /// start it, or it was lost with its fork server. Not a verdict.
    NotRun,
}

/// After exit handling, from how the last `on-exit` try ended (the second
/// when the first did not finish): requeue when cleanup finished and
/// retries are allowed; dead-letter when it failed, or finished on a queue
/// that allows no retries; leave the message for redelivery when `on-exit`
/// could not run, as for any passing failure.
pub(crate) fn after_exit_handling(last_try: OnExitTry, retries_allowed: bool) -> ExitHandlingFate {
    match (last_try, retries_allowed) {
        (OnExitTry::Finished, true) => ExitHandlingFate::Requeue,
        (OnExitTry::Finished, false) => ExitHandlingFate::DeadLetter {
            why: "stopped by a signal and the queue allows no retries".into(),
        },
        (OnExitTry::Failed, _) => ExitHandlingFate::DeadLetter {
            why: "on-exit did not finish after two tries; cleanup cannot be guaranteed".into(),
        },
        (OnExitTry::NotRun, _) => ExitHandlingFate::Redeliver {
            why: "on-exit could not run: its fork server was lost or could not start it".into(),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExitHandlingFate {
    /// Make it visible again: after long-poll seconds + 1 (0 without long
    /// polling), so a long poll of our own cannot take it straight back.
    Requeue,
    DeadLetter {
        why: String,
    },
    /// Not a verdict: make it visible again as for a requeue, without
    /// counting it requeued.
    Redeliver {
        why: String,
    },
}

/// The visibility a requeued message gets.
pub(crate) fn requeue_visibility(long_poll: Duration) -> Duration {
    if long_poll.is_zero() {
        Duration::ZERO
    } else {
        long_poll + Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::TrapKind;

    #[test]
    fn success_deletes_and_failures_leave() {
        assert_eq!(decide(&WorkerEnd::Reported(Outcome::Ok)), Fate::Delete);
        let trap = Outcome::Trap {
            kind: TrapKind::OutOfMemory,
            detail: "x".into(),
        };
        assert!(matches!(
            decide(&WorkerEnd::Reported(trap)),
            Fate::Leave { .. }
        ));
        let timeout = Outcome::Timeout {
            limit: Duration::from_secs(1),
        };
        assert!(matches!(
            decide(&WorkerEnd::Reported(timeout)),
            Fate::Leave { .. }
        ));
        assert!(matches!(
            decide(&WorkerEnd::ExitCode(1)),
            Fate::Leave { .. }
        ));
        assert!(matches!(
            decide(&WorkerEnd::ExitCode(101)),
            Fate::Leave { .. }
        ));
    }

    #[test]
    fn retry_with_a_delay_sets_visibility() {
        let end = WorkerEnd::Reported(Outcome::Retry {
            reason: "busy".into(),
            delay_seconds: Some(30),
        });
        assert_eq!(
            decide(&end),
            Fate::RetryAfter {
                delay: Duration::from_secs(30),
                why: "busy".into()
            }
        );
        let end = WorkerEnd::Reported(Outcome::Retry {
            reason: "busy".into(),
            delay_seconds: None,
        });
        assert!(matches!(decide(&end), Fate::Leave { .. }));
    }

    #[test]
    fn fatal_and_unloadable_dead_letter() {
        let end = WorkerEnd::Reported(Outcome::Fatal {
            reason: "bad".into(),
        });
        assert!(matches!(decide(&end), Fate::DeadLetter { .. }));
        assert!(matches!(
            decide(&WorkerEnd::Unloadable("gone".into())),
            Fate::DeadLetter { .. }
        ));
        assert!(matches!(
            decide(&WorkerEnd::ExitCode(30)),
            Fate::DeadLetter { .. }
        ));
    }

    #[test]
    fn a_worker_killed_by_a_signal_goes_through_exit_handling() {
        assert_eq!(
            decide(&WorkerEnd::Killed(15)),
            Fate::ExitHandling { signal: 15 }
        );
        // The signal wins over a reported outcome: the process did not end on its own.
        assert_eq!(
            WorkerEnd::from_process(ExitStatus::Signal(9), Some(Outcome::Ok)),
            WorkerEnd::Killed(9)
        );
        assert_eq!(
            WorkerEnd::from_process(ExitStatus::Code(0), Some(Outcome::Ok)),
            WorkerEnd::Reported(Outcome::Ok)
        );
        assert_eq!(
            WorkerEnd::from_process(ExitStatus::Code(1), None),
            WorkerEnd::ExitCode(1)
        );
    }

    #[test]
    fn refusals_dead_letter_and_passing_failures_are_not_verdicts() {
        let why = "tenant attribute \"acme\" does not match the queue's tenant \"trial\"";
        assert_eq!(
            decide(&WorkerEnd::Refused(why.into())),
            Fate::DeadLetter { why: why.into() }
        );
        assert_eq!(
            decide(&WorkerEnd::NotStarted(
                "the compile helper was killed by signal 9".into()
            )),
            Fate::Redeliver {
                delay: REDELIVER_AFTER,
                why: "the compile helper was killed by signal 9".into()
            }
        );
        assert_eq!(
            decide(&WorkerEnd::Lost),
            Fate::ExitHandling {
                signal: libc::SIGKILL
            }
        );
        assert!(matches!(
            decide(&WorkerEnd::Overran(Duration::from_secs(910))),
            Fate::Leave { why } if why.contains("910 s")
        ));
    }

    #[test]
    fn the_last_allowed_attempt_dead_letters_what_would_be_retried() {
        let trap = WorkerEnd::Reported(Outcome::Trap {
            kind: TrapKind::Unreachable,
            detail: "Error: boom".into(),
        });
        let retry = WorkerEnd::Reported(Outcome::Retry {
            reason: "busy".into(),
            delay_seconds: Some(30),
        });
        let of = |number, allowed| Attempt { number, allowed };
        // Before the last attempt, and without a redrive policy: unchanged.
        assert_eq!(on_attempt(decide(&trap), of(2, Some(3))), decide(&trap));
        assert_eq!(on_attempt(decide(&trap), of(9, None)), decide(&trap));
        // On it (or past it, after a policy change): dead-lettered, saying why.
        assert_eq!(
            on_attempt(decide(&trap), of(3, Some(3))),
            Fate::OutOfAttempts {
                why: "attempt 3 of 3: trap (unreachable): Error: boom".into()
            }
        );
        assert_eq!(
            on_attempt(decide(&retry), of(4, Some(3))),
            Fate::OutOfAttempts {
                why: "attempt 4 of 3: busy".into()
            }
        );
        // Passing failures, verdicts and successes are what they were.
        for end in [
            WorkerEnd::NotStarted("fork failed".into()),
            WorkerEnd::Reported(Outcome::Ok),
            WorkerEnd::Reported(Outcome::Fatal {
                reason: "bad".into(),
            }),
            WorkerEnd::Killed(15),
        ] {
            assert_eq!(on_attempt(decide(&end), of(3, Some(3))), decide(&end));
        }
    }

    #[test]
    fn exit_handling_requeues_only_with_retries_and_clean_exit() {
        use OnExitTry::*;
        assert_eq!(
            after_exit_handling(Finished, true),
            ExitHandlingFate::Requeue
        );
        assert!(matches!(
            after_exit_handling(Finished, false),
            ExitHandlingFate::DeadLetter { .. }
        ));
        for retries in [true, false] {
            assert!(matches!(
                after_exit_handling(Failed, retries),
                ExitHandlingFate::DeadLetter { .. }
            ));
        }
    }

    #[test]
    fn on_exit_that_could_not_run_is_no_verdict() {
        for retries in [true, false] {
            assert!(matches!(
                after_exit_handling(OnExitTry::NotRun, retries),
                ExitHandlingFate::Redeliver { .. }
            ));
        }
    }

    #[test]
    fn requeue_visibility_outlasts_our_own_long_poll() {
        assert_eq!(requeue_visibility(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            requeue_visibility(Duration::from_secs(20)),
            Duration::from_secs(21)
        );
    }
}
