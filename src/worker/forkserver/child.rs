//! A worker child, forked by the fork server for one call: become the
//! leader of a new process group, die with the fork server, drop every
//! descriptor of the fork server's but its own channel, restore default
//! signal handling, limit itself ([`super::confine`]), make its store, lock
//! itself down (Landlock, seccomp), then make the call in a fresh instance
//! on a fresh single-threaded runtime, write its outcome on its channel and
//! exit with its code (see `outcome::exit_code`).
//!
//! A child forked for a call already made is handed that call at its fork
//! (and inherits the call's result file, [`super::output`]).
//! A pre-forked child ([`super::warm`]) does everything up to the call and
//! then waits on its channel for a [`Handover`]; end of stream (the fork
//! server retiring it) makes it exit quietly. Either way it is told its
//! tenant and module label and works out nothing about the message itself;
//! the epoch timer that enforces the timeout starts when the call does.
//!
//! The child never returns into the fork server's loop.

use super::confine::{Confinement, limit_process};
use super::fdpass;
use super::{EXIT_SIGNALS, die_with_parent};
use crate::executor::{Call, CallReport, Executor, LoadedJob};
use crate::outcome::exit_code;
use crate::sandbox::SandboxPolicy;
use crate::worker::protocol::{
    CallKind, Handover, MAX_HANDOVER_BYTES, Report, decode_handover, encode_report, trim_outcome,
};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, signal, sigprocmask};
use nix::sys::socket::{MsgFlags, send};
use nix::unistd::{Pid, getpid, setpgid};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Everything a child needs, borrowed from the fork server's memory.
pub(super) struct ChildSetup<'a> {
    pub(super) fork_server: Pid,
    pub(super) job: &'a LoadedJob,
    /// The module's label for logs.
    pub(super) module: &'a str,
    pub(super) tenant: &'a str,
    pub(super) executor: &'a Executor,
    pub(super) policy: &'a SandboxPolicy,
    pub(super) confinement: &'a Confinement,
    /// This child's end of its own channel: the handover in, its report out.
    pub(super) channel: OwnedFd,
    /// The fork server's other descriptors (its sockets to the parent and
    /// every other child's channel), which the child must not hold.
    pub(super) close: Vec<RawFd>,
}

/// Leave at once: no atexit handlers, no destructors. The child shares
/// copies of the fork server's state, none of which needs tearing down.
pub(super) fn exit_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process immediately; nothing runs after it.
    unsafe { libc::_exit(code.into()) }
}

/// Log `what` and leave with a host error: the message (if one was handed
/// over) is left for another try.
pub(super) fn host_error(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %error, "{what}");
    exit_now(exit_code::HOST_ERROR)
}

/// The span every log line of a call carries (see `logging`).
pub(super) fn job_span(module: &str, tenant: &str, h: &Handover, pid: i32) -> tracing::Span {
    tracing::info_span!(
        "job",
        message_id = %h.message.id,
        module = %module,
        tenant = %tenant,
        attempt = h.message.receive_count,
        trace_id = %h.trace.trace_id,
        span_id = %h.trace.span_id,
        pid,
        process = h.process,
    )
}

/// What every process forked from the fork server does first: lead a new
/// process group, die with the fork server, drop the fork server's
/// descriptors, restore default signal handling.
pub(super) fn leave_fork_server(c: &ChildSetup<'_>) {
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
}

/// A fresh single-threaded runtime whose blocking threads leave the epoch
/// timer's signal to this thread.
pub(super) fn child_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(crate::engine::block_tick_signal)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => host_error("cannot start the child's runtime", &e),
    }
}

/// Run as a worker child: `handed` is the call if it is already known,
/// `None` for a pre-forked child that waits for it.
pub(super) fn run_child(c: ChildSetup<'_>, handed: Option<Handed>) -> ! {
    leave_fork_server(&c);
    let pid = getpid().as_raw();
    let setup_span = match &handed {
        Some(h) => job_span(c.module, c.tenant, &h.handover, pid),
        None => tracing::info_span!("warm", module = %c.module, tenant = %c.tenant, pid),
    };
    let setup_entered = setup_span.enter();
    if let Err(e) = limit_process(c.policy.max_memory) {
        host_error("cannot limit the worker child", &e)
    }
    let runtime = child_runtime();
    let _in_runtime = runtime.enter();
    let store = match c.executor.prepare_store(c.policy) {
        Ok(s) => s,
        Err(e) => host_error("the call could not be made", &e),
    };
    if let Err(e) = c.confinement.lock_down(c.policy) {
        host_error("cannot confine the worker child", &e)
    }
    let (handed, span) = match handed {
        Some(h) => (h, setup_span.clone()),
        None => {
            let h = wait_for_call(&c.channel);
            let span = job_span(c.module, c.tenant, &h.handover, pid);
            (h, span)
        }
    };
    drop(setup_entered);
    let _entered = span.enter();
    // One call, then exit: a SIGALRM timer ticks the epoch, cheaper than a
    // thread.
    if let Err(e) = c.executor.use_timer_signal_ticks() {
        host_error("cannot start the epoch timer", &e)
    }
    let Handed { handover, output } = handed;
    let mut store = store;
    store.set_traceparent(handover.trace.traceparent());
    let mut prepared = store.for_message(&handover.message, call_of(&handover));
    let report = runtime.block_on(c.executor.run_prepared(c.job, &mut prepared));
    // `prepared` is never dropped: the exit unmaps it.
    report_and_exit(&c.channel, report, output)
}

/// The executor's name for the call a handover asks for.
pub(super) fn call_of(h: &Handover) -> Call {
    match h.call {
        CallKind::Run => Call::Run,
        CallKind::OnExit { signal } => Call::OnExit { signal },
    }
}

/// A call as the child receives it: the handover and, when the job
/// publishes results, the file to write its result to.
pub(super) struct Handed {
    pub(super) handover: Handover,
    pub(super) output: Option<OwnedFd>,
}

/// Write the call's result (if it published one) and its outcome on
/// `channel`, and exit with the outcome's code.
pub(super) fn report_and_exit(channel: &OwnedFd, report: CallReport, output: Option<OwnedFd>) -> ! {
    tracing::debug!(outcome = %report.outcome, duration_ms = report.duration.as_secs_f64() * 1e3, "call finished");
    match (report.output, output) {
        (Some(published), Some(fd)) => {
            let file = std::fs::File::from(fd);
            if let Err(e) = super::output::write_result(&file, &published.0) {
                tracing::error!(error = %e, "the job's result is lost");
            }
        }
        (Some(_), None) => {
            tracing::error!("the job published a result but has no result file; it is lost")
        }
        (None, _) => {}
    }
    let code = report.outcome.exit_code();
    let bytes = encode_report(&Report {
        outcome: trim_outcome(report.outcome),
        http: report.http,
    });
    // One packet; once the fork server has read it, it kills this process
    // (see `reap`), so nothing after this line may matter.
    if let Err(e) = send(channel.as_raw_fd(), &bytes, MsgFlags::empty()) {
        tracing::error!(error = %e, "cannot report the outcome");
    }
    exit_now(code)
}

/// Block until the fork server hands this pre-forked child its call (and
/// the call's result file, if the job publishes results). End of stream
/// means it was retired: leave without a word.
pub(super) fn wait_for_call(channel: &OwnedFd) -> Handed {
    match fdpass::recv_whole(channel.as_fd(), MAX_HANDOVER_BYTES) {
        Ok((packet, _)) if packet.is_empty() => exit_now(0),
        Ok((packet, output)) => match decode_handover(&packet) {
            Some(handover) => Handed { handover, output },
            None => host_error("bad handover", &"not a call"),
        },
        Err(e) => host_error("cannot read the handover", &e),
    }
}
