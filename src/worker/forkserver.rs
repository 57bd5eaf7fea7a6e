//! The fork server: a single-threaded process, forked from the worker before
//! any runtime or thread exists, that holds the wasmtime `Engine` and the
//! loaded components and forks one child per call.
//!
//! It reads [`Command`]s from the parent, reports [`Event`]s back (`Started`,
//! `SpawnFailed`, `Exited`), and reaps its children as SIGCHLD arrives
//! (through a signalfd, so there is no polling loop). It compiles a component
//! it has not seen in a short-lived forked helper, so its own process never
//! starts compiler threads. It dies with the parent (PR_SET_PDEATHSIG), and
//! its children die with it.

use super::child;
use super::protocol::{self, Command, Event, ExitStatus};
use crate::engine::EngineSettings;
use crate::executor::{Executor, LoadedJob};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, send, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

/// Signals that end a worker; the fork server ignores them (the parent
/// handles them and tells it what to do), children get the default back.
pub const EXIT_SIGNALS: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGABRT,
    Signal::SIGTERM,
];

/// What the parent keeps of a started fork server.
pub struct ForkServerHandle {
    pub pid: Pid,
    pub commands: UnixStream,
    pub events: OwnedFd,
}

/// What the fork server needs to run jobs.
#[derive(Debug, Clone)]
pub struct ForkServerConfig {
    pub engine: EngineSettings,
    pub cache_dir: PathBuf,
}

/// Fork the fork server. Call this while the process is single-threaded:
/// before any tokio runtime, thread pool or epoch ticker exists.
pub fn start(config: ForkServerConfig) -> std::io::Result<ForkServerHandle> {
    let (cmd_parent, cmd_server) = UnixStream::pair()?;
    let (ev_parent, ev_server) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let parent = getpid();
    // SAFETY: the caller guarantees there is only one thread, so the child
    // starts with no locks held by threads that do not exist in it.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(ForkServerHandle {
            pid: child,
            commands: cmd_parent,
            events: ev_parent,
        }),
        ForkResult::Child => {
            drop(cmd_parent);
            drop(ev_parent);
            let code = serve(parent, cmd_server, ev_server, config);
            std::process::exit(code)
        }
    }
}

/// Die with `parent`: PDEATHSIG, and a check for the race where it already died.
pub(super) fn die_with_parent(parent: Pid) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if getppid() != parent {
        std::process::exit(1);
    }
}

pub(super) fn send_event(events: &impl AsFd, event: &Event) {
    let bytes = protocol::encode_event(event);
    match send(events.as_fd().as_raw_fd(), &bytes, MsgFlags::empty()) {
        Ok(_) => {}
        // The parent is gone (it exits while children are being reaped).
        Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNREFUSED) => {}
        Err(e) => tracing::error!(error = %e, "cannot report to the worker parent"),
    }
}

struct Server {
    executor: Executor,
    events: OwnedFd,
    modules: HashMap<PathBuf, (ModuleStamp, Rc<LoadedJob>)>,
    running: HashMap<Pid, u64>,
}

/// A module file's identity for reuse: path, size and modification time.
type ModuleStamp = (u64, Option<SystemTime>);

fn serve(parent: Pid, commands: UnixStream, events: OwnedFd, config: ForkServerConfig) -> i32 {
    die_with_parent(parent);
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
    let executor = match Executor::new(config.engine, &config.cache_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fork server: cannot build the engine");
            return 1;
        }
    };
    let mut server = Server {
        executor,
        events,
        modules: HashMap::new(),
        running: HashMap::new(),
    };
    let mut commands = commands;
    tracing::debug!(pid = getpid().as_raw(), "fork server ready");
    loop {
        let (cmd_ready, chld_ready) = {
            let mut fds = [
                PollFd::new(commands.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "fork server: poll failed");
                    return 1;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if chld_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            server.reap();
        }
        if cmd_ready {
            match protocol::read_command(&mut commands) {
                Ok(Some(cmd)) => server.handle(cmd, &sigfd, &commands),
                Ok(None) => return server.shutdown(),
                Err(e) => {
                    tracing::error!(error = %e, "fork server: bad command stream");
                    return server.shutdown();
                }
            }
        }
    }
}

impl Server {
    fn handle(&mut self, cmd: Command, sigfd: &SignalFd, commands: &UnixStream) {
        let Command::Spawn {
            process,
            module,
            message,
            call,
            policy,
        } = cmd;
        let job = match self.load(&module) {
            Ok(job) => job,
            Err((error, invalid_component)) => {
                send_event(
                    &self.events,
                    &Event::SpawnFailed {
                        process,
                        error,
                        invalid_component,
                    },
                );
                return;
            }
        };
        let me = getpid();
        // SAFETY: this process is single-threaded (see module docs).
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                // Also set the group here, so it exists before anyone signals it.
                let _ = nix::unistd::setpgid(child, child);
                self.running.insert(child, process);
                send_event(
                    &self.events,
                    &Event::Started {
                        process,
                        pid: child.as_raw(),
                    },
                );
            }
            Ok(ForkResult::Child) => {
                let fds_to_close = [commands.as_raw_fd(), sigfd.as_raw_fd()];
                child::run_child(child::ChildCall {
                    fork_server: me,
                    process,
                    job: &job,
                    module: &module,
                    executor: &self.executor,
                    message,
                    call,
                    policy: &policy,
                    events: &self.events,
                    close: &fds_to_close,
                })
            }
            Err(e) => send_event(
                &self.events,
                &Event::SpawnFailed {
                    process,
                    error: format!("fork failed: {e}"),
                    invalid_component: false,
                },
            ),
        }
    }

    /// Load (and on first sight compile) a module; errors carry whether the
    /// component itself is at fault.
    fn load(&mut self, path: &Path) -> Result<Rc<LoadedJob>, (String, bool)> {
        let meta = std::fs::metadata(path)
            .map_err(|e| (format!("cannot read module {}: {e}", path.display()), true))?;
        let stamp = (meta.len(), meta.modified().ok());
        if let Some((s, job)) = self.modules.get(path)
            && *s == stamp
        {
            return Ok(Rc::clone(job));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| (format!("cannot read module {}: {e}", path.display()), true))?;
        if !self
            .executor
            .cache()
            .contains(self.executor.engine(), &bytes)
        {
            compile_in_helper(&self.executor, &bytes)?;
        }
        let job = self
            .executor
            .load_bytes(&bytes)
            .map_err(|e| (e.to_string(), e.is_invalid_component()))?;
        tracing::info!(module = %path.display(), digest = %job.digest, source = ?job.source, "module loaded");
        let job = Rc::new(job);
        self.modules
            .insert(path.to_owned(), (stamp, Rc::clone(&job)));
        Ok(job)
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.ended(pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.ended(pid, ExitStatus::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn ended(&mut self, pid: Pid, status: ExitStatus) {
        if let Some(process) = self.running.remove(&pid) {
            send_event(&self.events, &Event::Exited { process, status });
        }
    }

    /// The parent is gone: take every child down with us.
    fn shutdown(&mut self) -> i32 {
        for pid in self.running.keys() {
            let _ = nix::sys::signal::killpg(*pid, Signal::SIGKILL);
        }
        0
    }
}

/// Compile `bytes` into the artifact cache in a forked helper process, so
/// the fork server never starts compiler threads.
fn compile_in_helper(executor: &Executor, bytes: &[u8]) -> Result<(), (String, bool)> {
    let (mut read_end, write_end) = std::io::pipe().map_err(|e| (e.to_string(), false))?;
    let me = getpid();
    // SAFETY: this process is single-threaded (see module docs).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(read_end);
            die_with_parent(me);
            let code = match executor.load_bytes(bytes) {
                Ok(_) => 0,
                Err(e) => {
                    use std::io::Write;
                    let mut w = write_end;
                    let _ = write!(w, "{e}");
                    if e.is_invalid_component() { 30 } else { 1 }
                }
            };
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write_end);
            let mut error = String::new();
            let _ = read_end.read_to_string(&mut error);
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(WaitStatus::Exited(_, 30)) => Err((error, true)),
                other => Err((
                    format!("compiling the module failed ({other:?}): {error}"),
                    false,
                )),
            }
        }
        Err(e) => Err((format!("fork failed: {e}"), false)),
    }
}
