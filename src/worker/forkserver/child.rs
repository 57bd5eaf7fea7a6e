//! A worker child, forked by the fork server for one call: become the
//! leader of a new process group, die with the fork server, drop every
//! descriptor of the fork server's but its report channel, restore default
//! signal handling, limit itself ([`super::confine`]), prepare the call,
//! lock itself down (Landlock, seccomp), make the call in a fresh instance
//! on a fresh single-threaded runtime, write its outcome on its own
//! channel and exit with its code (see `outcome::exit_code`). It is told its
//! tenant and module label; it works out nothing about the message itself.
//!
//! The child never returns into the fork server's loop.

use super::confine::{Confinement, limit_process};
use super::{EXIT_SIGNALS, die_with_parent};
use crate::contract::JobMessage;
use crate::executor::{Call, Executor, LoadedJob};
use crate::outcome::exit_code;
use crate::sandbox::SandboxPolicy;
use crate::worker::protocol::{CallKind, encode_report, trim_outcome};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, signal, sigprocmask};
use nix::sys::socket::{MsgFlags, send};
use nix::unistd::{Pid, getpid, setpgid};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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
    pub(super) confinement: &'a Confinement,
    /// This child's end of its own report channel.
    pub(super) report: OwnedFd,
    /// The fork server's other descriptors (its sockets to the parent and
    /// every other child's report channel), which the child must not hold.
    pub(super) close: Vec<RawFd>,
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
    for fd in &c.close {
        // SAFETY: these descriptors belong to the fork server's loop, which
        // this process never runs again.
        unsafe { libc::close(*fd) };
    }
    for sig in EXIT_SIGNALS {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Err(e) = limit_process(c.policy.max_memory) {
        tracing::error!(error = %e, "cannot limit the worker child");
        std::process::exit(exit_code::HOST_ERROR.into())
    }

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
    let _in_runtime = runtime.enter();
    let prepared = match c.executor.prepare(&c.message, call, c.policy) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the call could not be made");
            std::process::exit(exit_code::HOST_ERROR.into())
        }
    };
    if let Err(e) = c.confinement.lock_down(c.policy) {
        tracing::error!(error = %e, "cannot confine the worker child");
        std::process::exit(exit_code::HOST_ERROR.into())
    }
    let report = runtime.block_on(c.executor.run_prepared(c.job, prepared));
    tracing::debug!(outcome = %report.outcome, duration_ms = report.duration.as_secs_f64() * 1e3, "call finished");
    let code = report.outcome.exit_code();
    let bytes = encode_report(&trim_outcome(report.outcome));
    // One packet; the fork server reads it when it reaps this process.
    if let Err(e) = send(c.report.as_raw_fd(), &bytes, MsgFlags::empty()) {
        tracing::error!(error = %e, "cannot report the outcome");
    }
    exit_now(code)
}
