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

/// Most descriptors a child may hold (the guest's open files, sockets and
/// preopens, plus the runtime's own).
const MAX_OPEN_FILES: u64 = 256;
/// Largest file a child may write (into a read-write preopen).
const MAX_FILE_SIZE: u64 = 1 << 30;

/// Below wasmtime's sandbox, the process's own: no privilege can be gained
/// through exec (`no_new_privs`), no core dump (it would hold the guest's
/// memory and the fork server's), and bounded open files and file sizes.
/// The environment is already empty (the fork server's is cleared).
fn confine() -> nix::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integers and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES)?;
    setrlimit(Resource::RLIMIT_FSIZE, MAX_FILE_SIZE, MAX_FILE_SIZE)?;
    Ok(())
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
    if let Err(e) = confine() {
        tracing::error!(error = %e, "cannot confine the worker child");
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
