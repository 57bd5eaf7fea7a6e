//! A worker child, forked by the fork server for one call: become the
//! leader of a new process group, die with the fork server, restore default
//! signal handling, make one call in a fresh instance on a fresh
//! single-threaded runtime, report the outcome to the parent and exit with
//! its code (see `outcome::exit_code`). It is told its tenant and module
//! label; it works out nothing about the message itself.
//!
//! The child never returns into the fork server's loop.

use super::{EXIT_SIGNALS, die_with_parent, send_event};
use crate::contract::JobMessage;
use crate::executor::{Call, Executor, LoadedJob};
use crate::outcome::exit_code;
use crate::sandbox::SandboxPolicy;
use crate::worker::protocol::{CallKind, Event, trim_outcome};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, signal, sigprocmask};
use nix::unistd::{Pid, getpid, setpgid};
use std::os::fd::{OwnedFd, RawFd};

/// Everything a child needs, borrowed from the fork server's memory.
pub(super) struct ChildCall<'a> {
    pub(super) fork_server: Pid,
    pub(super) process: u64,
    pub(super) job: &'a LoadedJob,
    /// The module's label for logs.
    pub(super) module: &'a str,
    pub(super) tenant: &'a str,
    pub(super) executor: &'a Executor,
    pub(super) message: JobMessage,
    pub(super) call: CallKind,
    pub(super) policy: &'a SandboxPolicy,
    pub(super) events: &'a OwnedFd,
    /// The fork server's own descriptors, which the child must not hold.
    pub(super) close: &'a [RawFd],
}

/// Leave at once: no atexit handlers, no destructors. The child shares
/// copies of the fork server's state, none of which needs tearing down.
fn exit_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process immediately; nothing runs after it.
    unsafe { libc::_exit(code.into()) }
}

pub(super) fn run_child(c: ChildCall<'_>) -> ! {
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    die_with_parent(c.fork_server);
    for fd in c.close {
        // SAFETY: these descriptors belong to the fork server's loop, which
        // this process never runs again.
        unsafe { libc::close(*fd) };
    }
    for sig in EXIT_SIGNALS {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);

    let pid = getpid().as_raw();
    let call = match c.call {
        CallKind::Run => Call::Run,
        CallKind::OnExit { signal } => Call::OnExit { signal },
    };
    let span = tracing::info_span!(
        "job",
        message_id = %c.message.id,
        module = %c.module,
        tenant = %c.tenant,
        attempt = c.message.receive_count,
        pid,
        process = c.process,
    );
    let _entered = span.enter();
    // One call, then exit: a SIGALRM timer ticks the epoch, cheaper than a
    // thread; the runtime's blocking threads leave the signal to this one.
    if let Err(e) = c.executor.use_timer_signal_ticks() {
        tracing::error!(error = %e, "cannot start the epoch timer");
        std::process::exit(exit_code::HOST_ERROR.into())
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(crate::engine::block_tick_signal)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the child's runtime");
            std::process::exit(exit_code::HOST_ERROR.into())
        }
    };
    let report = runtime.block_on(c.executor.call(c.job, &c.message, call, c.policy));
    match report {
        Ok(report) => {
            tracing::debug!(outcome = %report.outcome, duration_ms = report.duration.as_secs_f64() * 1e3, "call finished");
            let code = report.outcome.exit_code();
            send_event(
                c.events,
                &Event::Finished {
                    process: c.process,
                    outcome: trim_outcome(report.outcome),
                    duration_ms: report.duration.as_secs_f64() * 1e3,
                },
            );
            exit_now(code)
        }
        Err(e) => {
            tracing::error!(error = %e, "the call could not be made");
            std::process::exit(exit_code::HOST_ERROR.into())
        }
    }
}
