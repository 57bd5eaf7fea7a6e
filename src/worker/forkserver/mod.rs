//! The fork server process: a single-threaded program, started by the
//! worker parent as `wasm-jobs __fork-server CONFIG` with an empty
//! environment, that holds the wasmtime `Engine` and the loaded components
//! and forks one child per call ([`child`]).
//!
//! It reads [`Command`]s from the parent on [`COMMAND_FD`] and reports
//! [`Event`]s on [`EVENT_FD`] (`Ready`, `Started`, `SpawnFailed`, `Output`,
//! `Exited`). Children never write to the parent: each gets a channel of
//! its own at its fork, on which it reports its outcome, and, when its job
//! publishes results, a result file of its own ([`output`]); this process
//! reads both as soon as the report comes (or when it reaps a child that
//! ended without one) and forwards them (`Output`, then the outcome inside
//! `Exited`: [`reap`]); a child holds no other child's channel or result
//! file. Children are confined ([`confine`]) before guest
//! code runs. Children set up ahead of their calls wait in a pool
//! ([`warm`]) and are handed their call on the same channel, so most calls
//! start without a fork ([`start`]).
//! One `poll` loop waits on the command socket, a signalfd for SIGCHLD and
//! the running children's channels; it wakes on a timer only for a
//! deadline (a compile helper's, a template's answer, a warm child's age).
//!
//! A component not yet compiled on this machine is compiled in a forked
//! helper ([`compile`]) with a deadline and an address-space cap; the loop
//! goes on serving other modules meanwhile, and the calls waiting for that
//! module start when the helper succeeds. Loaded components are kept
//! within a memory budget, the least recently used unloaded past it
//! ([`loaded`]). A call not started yet,
//! waiting for a compile or for a load from the artifact cache, is dropped
//! when the parent cancels it (`Command::Cancel`, on an exit signal;
//! [`commands`]). Only this process signals its children, and only those
//! it has not reaped, so a recycled pid is never signalled. It dies with
//! the parent (PR_SET_PDEATHSIG); its children die with it.

mod child;
mod commands;
mod compile;
mod confine;
mod fdpass;
mod loaded;
mod output;
mod reap;
mod start;
mod template;
mod warm;

use super::protocol::{
    self, COMMAND_FD, Command, EVENT_FD, Event, ForkServerConfig, ModuleRef, Spawn, SpawnFailure,
};
use crate::engine::EngineSettings;
use crate::executor::{Executor, LoadedJob};
use compile::Compiling;
use confine::Confinement;
use loaded::Loaded;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, killpg, signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{MsgFlags, send};
use nix::unistd::{Pid, getpid, getppid};
use output::OutputFile;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Instant;
use warm::{WarmKey, WarmPool};

/// Signals that end a worker; the fork server ignores them (the parent
/// handles them and tells it what to do), children get the default back.
pub(crate) const EXIT_SIGNALS: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGABRT,
    Signal::SIGTERM,
];

/// A new channel to a child: (the fork server's end, the child's end).
/// Sequenced packets: each handover and each report is one whole message.
fn new_channel() -> Result<(OwnedFd, OwnedFd), String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("cannot make a channel: {e}"))
}

/// Die with `parent`: PDEATHSIG, and a check for the race where it already died.
fn die_with_parent(parent: Pid) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if getppid() != parent {
        std::process::exit(1);
    }
}

fn send_event(events: &impl AsFd, event: &Event) {
    let bytes = protocol::encode_event(event);
    match send(events.as_fd().as_raw_fd(), &bytes, MsgFlags::empty()) {
        Ok(_) => {}
        // The parent is gone (it exits while children are being reaped).
        Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNREFUSED) => {}
        Err(e) => tracing::error!(error = %e, "cannot report to the worker parent"),
    }
}

/// What a pid not reaped yet is.
enum Running {
    /// A worker child making a call.
    Call(Call),
    /// A worker child whose report is in and whose end the parent has been
    /// told ([`reap`]): killed, and waiting only to be reaped.
    Reported,
    /// A compile helper for this digest.
    Helper(String),
}

/// A worker child's call, as the fork server tracks it.
struct Call {
    /// The parent's number for the call.
    process: u64,
    /// The fork server's end of the child's channel, where its report comes.
    channel: OwnedFd,
    /// The call's result file, when the job publishes results.
    output: Option<OutputFile>,
    /// Whether the channel may still bring the report: false once it was
    /// readable without one (the child is ending without a word).
    listening: bool,
}

struct Server {
    config: ForkServerConfig,
    executor: Executor,
    confinement: Confinement,
    events: OwnedFd,
    commands: UnixStream,
    sigfd: SignalFd,
    /// Loaded components by digest, within their budget ([`loaded`]).
    modules: Loaded<LoadedJob>,
    running: HashMap<Pid, Running>,
    /// Compiles under way by digest, with the calls waiting for them.
    compiling: HashMap<String, Compiling>,
    /// Children set up ahead of their calls.
    warm: WarmPool,
    /// The template process for the expected key ([`template`]).
    template: Option<template::Template>,
    /// The last key whose template died before it was ready, and when.
    template_failed: Option<(WarmKey, Instant)>,
    /// Calls waiting for the template's next copy, oldest first.
    awaiting_copy: VecDeque<start::Assigned>,
    /// Commands read and not yet acted on, oldest first ([`Server::read_commands`]).
    pending: VecDeque<Command>,
    /// The command stream ended (0) or broke (1): the exit code to shut down with.
    commands_ended: Option<i32>,
    /// Where reports are read, zero between reads ([`reap`]).
    report_buf: Box<[u8]>,
}

/// In a process just forked from the fork server: let go of the calls it
/// was not forked for (commands read and not acted on, calls waiting for a
/// template's copy or for a compile), so that no child, template or compile
/// helper holds another call's message. They are wiped as they are freed
/// ([`crate::wipe`]); what the fork server freed before the fork already
/// was. Nothing the process frees after this is another call's, so it
/// stops wiping: children that went on wiping cost about 4% more CPU per
/// trivial job, where the fork server's own wiping costs none measurable.
fn shed_other_calls(
    pending: &mut VecDeque<Command>,
    awaiting_copy: &mut VecDeque<start::Assigned>,
    compiling: &mut HashMap<String, Compiling>,
) {
    pending.clear();
    awaiting_copy.clear();
    for c in compiling.values_mut() {
        c.waiting.clear();
    }
    crate::wipe::wipe_freed_memory(false);
}

/// The fork server's `main`: `config` is the JSON [`ForkServerConfig`];
/// the sockets are at [`COMMAND_FD`] and [`EVENT_FD`]. Returns the exit code.
pub(crate) fn main(config: &str) -> i32 {
    let config: ForkServerConfig = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fork server: bad configuration: {e}");
            return 2;
        }
    };
    crate::wipe::wipe_freed_memory(true);
    die_with_parent(Pid::from_raw(config.parent));
    match crate::hugepages::move_program_to_huge_pages() {
        Ok(bytes) => tracing::debug!(
            bytes,
            "fork server: code and read-only data moved to huge pages"
        ),
        Err(e) => tracing::info!(error = %e, "fork server: code stays in small pages"),
    }
    // SAFETY: the parent put these two sockets at these numbers for us
    // (dup2 in its pre_exec) and nothing else in this process owns them.
    let (commands, events) = unsafe {
        (
            UnixStream::from_raw_fd(COMMAND_FD),
            OwnedFd::from_raw_fd(EVENT_FD),
        )
    };
    for fd in [commands.as_fd(), events.as_fd()] {
        let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        let _ = nix::fcntl::fcntl(fd, cloexec);
    }
    for sig in EXIT_SIGNALS {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None) {
        tracing::error!(error = %e, "fork server: cannot block SIGCHLD");
        return 1;
    }
    let sigfd = match SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "fork server: cannot create a signalfd");
            return 1;
        }
    };
    let settings = EngineSettings {
        fuel_metering: config.fuel_metering,
    };
    let executor = match Executor::new(settings, &config.cache_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fork server: cannot build the engine");
            return 1;
        }
    };
    let confinement = match Confinement::new() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "fork server: cannot prepare the children's confinement");
            return 1;
        }
    };
    let warm_children = config.warm_children;
    let budget = config.loaded_modules_memory;
    let mut server = Server {
        config,
        executor,
        confinement,
        events,
        commands,
        sigfd,
        modules: Loaded::new(budget),
        running: HashMap::new(),
        compiling: HashMap::new(),
        warm: WarmPool::new(warm_children),
        template: None,
        template_failed: None,
        awaiting_copy: VecDeque::new(),
        pending: VecDeque::new(),
        commands_ended: None,
        report_buf: vec![0u8; protocol::MAX_EVENT_BYTES].into_boxed_slice(),
    };
    if let Err(e) = server.confinement.confine_fork_server() {
        tracing::error!(error = %e, "fork server: cannot install its seccomp filter");
        return 1;
    }
    let pid = getpid().as_raw();
    tracing::info!(pid, "fork server ready");
    send_event(&server.events, &Event::Ready { pid });
    server.serve()
}

impl Server {
    fn serve(&mut self) -> i32 {
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .map_or(PollTimeout::NONE, |left| {
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                });
            let (cmd_ready, chld_ready, template_ready, reported) = {
                let reports = self.listening();
                let mut fds = vec![
                    PollFd::new(self.commands.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(t) = &self.template {
                    fds.push(PollFd::new(t.channel(), PollFlags::POLLIN));
                }
                let first_report = fds.len();
                fds.extend(
                    reports
                        .iter()
                        .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN)),
                );
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "fork server: poll failed");
                        return self.shutdown(1);
                    }
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let reported: Vec<Pid> = reports
                    .iter()
                    .zip(&fds[first_report..])
                    .filter(|(_, f)| ready(f))
                    .map(|((pid, _), _)| *pid)
                    .collect();
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    self.template.is_some() && ready(&fds[2]),
                    reported,
                )
            };
            // Commands first: a cancel read now reaches calls that would
            // otherwise start below, when their compile ends.
            if cmd_ready {
                self.read_commands();
            }
            if template_ready {
                self.template_said();
            }
            // Reports before reaping: a call whose report is in has ended,
            // whatever its process does next.
            for pid in reported {
                self.report_arrived(pid);
            }
            if chld_ready {
                while let Ok(Some(_)) = self.sigfd.read_signal() {}
                self.reap();
            }
            self.expire_compiles();
            while let Some(command) = self.pending.pop_front() {
                match command {
                    Command::Spawn(req) => self.spawn(req),
                    Command::Signal { process, signal } => self.signal(process, signal),
                    // Never queued: applied as read.
                    Command::Cancel { .. } => {}
                }
            }
            if let Some(code) = self.commands_ended {
                return self.shutdown(code);
            }
            self.top_up();
        }
    }

    fn fail(&self, process: u64, failure: SpawnFailure, error: String) {
        send_event(
            &self.events,
            &Event::SpawnFailed {
                process,
                error,
                failure,
            },
        );
    }

    /// Fork the call now if its module is loaded or in the cache; else
    /// start (or join) the compile of its module.
    fn spawn(&mut self, req: Spawn) {
        let key = WarmKey::of(&req);
        self.warm.expect(&key, Instant::now());
        if let Some(job) = self.modules.get(&req.module.digest) {
            return self.start_call(req, &key, &job);
        }
        if let Some(c) = self.compiling.get_mut(&req.module.digest) {
            c.waiting.push(req);
            return;
        }
        let bytes = match compile::read_verified(&req.module) {
            Ok(b) => b,
            Err(why) => return self.fail(req.process, SpawnFailure::Passing, why),
        };
        match self.load(&req.module, &bytes) {
            Ok(Some(_)) => {
                // A load takes up to a few hundred milliseconds: what the
                // parent said meanwhile (a cancel for this very call, on an
                // exit signal) is read before the call starts, next in turn.
                self.pending.push_front(Command::Spawn(req));
                return self.read_commands();
            }
            Ok(None) => {}
            Err((failure, why)) => return self.fail(req.process, failure, why),
        }
        let digest = req.module.digest.clone();
        let close: Vec<RawFd> = [self.commands.as_raw_fd(), self.sigfd.as_raw_fd()]
            .into_iter()
            .chain(self.channels())
            .collect();
        let shed = || {
            shed_other_calls(
                &mut self.pending,
                &mut self.awaiting_copy,
                &mut self.compiling,
            )
        };
        let process = req.process;
        match compile::start(&self.executor, bytes, &self.config, &close, req, shed) {
            Ok(c) => {
                tracing::info!(helper_pid = c.helper.as_raw(), %digest, "compile helper started");
                self.running
                    .insert(c.helper, Running::Helper(digest.clone()));
                self.compiling.insert(digest, c);
            }
            Err(why) => self.fail(process, SpawnFailure::Passing, why),
        }
    }

    /// Load a compiled component from the cache, verified (quick next to a
    /// compile); `None` when it must be compiled first.
    fn load(
        &mut self,
        module: &ModuleRef,
        bytes: &[u8],
    ) -> Result<Option<Rc<LoadedJob>>, (SpawnFailure, String)> {
        let heap_before = loaded::heap_in_use();
        let job = self.executor.load_cached(bytes).map_err(|e| {
            let failure = if e.is_invalid_component() {
                SpawnFailure::InvalidComponent
            } else {
                SpawnFailure::Passing
            };
            (failure, e.to_string())
        })?;
        let Some(job) = job else { return Ok(None) };
        // What loading it cost this process: its code, and the metadata
        // the load allocated.
        let bytes = job.code_bytes() + loaded::heap_in_use().saturating_sub(heap_before);
        tracing::info!(module = %module.label, digest = %job.digest, source = ?job.source, bytes, "module loaded");
        let job = Rc::new(job);
        // Calls waiting for the template's copies may yet need its module
        // (to fork on demand should the template go).
        let pinned = self
            .template
            .as_ref()
            .filter(|_| !self.awaiting_copy.is_empty())
            .map(|t| t.key.module.digest.as_str());
        let let_go = self.modules.insert(
            module.digest.clone(),
            module.label.clone(),
            Rc::clone(&job),
            bytes,
            pinned,
        );
        for m in let_go {
            tracing::info!(
                module = %m.label,
                digest = %m.digest,
                bytes = m.bytes,
                loaded = m.left.0,
                loaded_bytes = m.left.1,
                budget = self.config.loaded_modules_memory,
                "module unloaded: the loaded modules are over their memory budget"
            );
        }
        Ok(Some(job))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let compiles = self.compiling.values().map(|c| c.deadline);
        let template = self
            .template
            .as_ref()
            .map(|t| t.deadline().unwrap_or(t.since + warm::MAX_AGE));
        compiles
            .chain(self.warm.next_deadline())
            .chain(template)
            .min()
    }

    /// Kill helpers past their deadline; reaping them fails their calls.
    fn expire_compiles(&mut self) {
        let now = Instant::now();
        for c in self.compiling.values_mut() {
            if c.deadline <= now && !c.timed_out {
                tracing::warn!(
                    helper_pid = c.helper.as_raw(),
                    timeout_s = self.config.compile_timeout.as_secs_f64(),
                    "compile helper timed out; killing it"
                );
                c.timed_out = true;
                let _ = nix::sys::signal::kill(c.helper, Signal::SIGKILL);
            }
        }
    }

    /// The parent is gone (or the loop broke): take every child down with us.
    fn shutdown(&mut self, code: i32) -> i32 {
        for (pid, r) in &self.running {
            let _ = match r {
                Running::Call(_) | Running::Reported => killpg(*pid, Signal::SIGKILL),
                Running::Helper(_) => nix::sys::signal::kill(*pid, Signal::SIGKILL),
            };
        }
        for pid in self.warm.drain() {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        if let Some(t) = self.template.take() {
            let _ = killpg(t.pid, Signal::SIGKILL);
        }
        code
    }
}
