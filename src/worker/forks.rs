//! The parent's side of the fork server: send `Spawn` commands, read events
//! as they arrive (no polling), and hand each process's start and end to the
//! task that asked for it. Also watches the fork server itself.

use super::forkserver::ForkServerHandle;
use super::protocol::{self, CallKind, Command, Event, ExitStatus};
use crate::contract::JobMessage;
use crate::outcome::Outcome;
use crate::sandbox::SandboxPolicy;
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{MsgFlags, recv};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};

/// How a forked process ended, with the outcome it reported if it got that far.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessEnd {
    pub status: ExitStatus,
    pub outcome: Option<Outcome>,
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    /// The module could not be loaded; `invalid_component` when the file is at fault.
    #[error("{error}")]
    Load {
        error: String,
        invalid_component: bool,
    },
    #[error("the fork server is gone")]
    ForkServerGone,
}

/// A started process: its pid (= its process group) and its end.
pub struct Spawned {
    pub pid: Pid,
    pub end: oneshot::Receiver<ProcessEnd>,
}

impl Spawned {
    /// Signal the whole process group.
    pub fn signal_group(&self, sig: Signal) {
        if let Err(e) = killpg(self.pid, sig) {
            tracing::debug!(pid = self.pid.as_raw(), signal = ?sig, error = %e, "killpg failed");
        }
    }
}

#[derive(Default)]
struct Pending {
    started: Option<oneshot::Sender<Result<Pid, SpawnError>>>,
    finished: Option<(Outcome, Duration)>,
    ended: Option<oneshot::Sender<ProcessEnd>>,
}

struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    gone: watch::Sender<bool>,
}

/// Talks to one fork server.
pub struct ForkClient {
    commands: tokio::sync::Mutex<tokio::net::UnixStream>,
    shared: Arc<Shared>,
    next: AtomicU64,
    pub fork_server_pid: Pid,
}

struct EventFd(OwnedFd);
impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl ForkClient {
    /// Take over a started fork server. Must run inside the tokio runtime.
    pub fn new(handle: ForkServerHandle) -> std::io::Result<Arc<Self>> {
        handle.commands.set_nonblocking(true)?;
        let commands = tokio::net::UnixStream::from_std(handle.commands)?;
        let (gone, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            gone,
        });
        nix::fcntl::fcntl(
            &handle.events,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: `EventFd` owns the descriptor for the `AsyncFd`'s lifetime.
        let events =
            unsafe { AsyncFd::register(EventFd(handle.events)) }.map_err(std::io::Error::from)?;
        tokio::spawn(read_events(events, Arc::clone(&shared)));
        let pid = handle.pid;
        let watcher = Arc::clone(&shared);
        // The fork server is our child: wait for it on a blocking thread.
        tokio::task::spawn_blocking(move || {
            let status = nix::sys::wait::waitpid(pid, None);
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {
                    tracing::debug!(pid = pid.as_raw(), "the fork server stopped")
                }
                _ => tracing::error!(pid = pid.as_raw(), ?status, "the fork server died"),
            }
            fail_all(&watcher);
        });
        Ok(Arc::new(ForkClient {
            commands: tokio::sync::Mutex::new(commands),
            shared,
            next: AtomicU64::new(1),
            fork_server_pid: pid,
        }))
    }

    /// A receiver that turns true when the fork server is gone.
    pub fn gone(&self) -> watch::Receiver<bool> {
        self.shared.gone.subscribe()
    }

    /// Fork a process that loads `module` and makes `call`; resolves once it
    /// has started (or failed to).
    pub async fn spawn(
        &self,
        module: PathBuf,
        message: JobMessage,
        call: CallKind,
        policy: SandboxPolicy,
    ) -> Result<Spawned, SpawnError> {
        if *self.shared.gone.borrow() {
            return Err(SpawnError::ForkServerGone);
        }
        let process = self.next.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(
            process,
            Pending {
                started: Some(started_tx),
                finished: None,
                ended: Some(ended_tx),
            },
        );
        let mut frame = Vec::new();
        protocol::write_command(
            &mut frame,
            &Command::Spawn {
                process,
                module,
                message,
                call,
                policy,
            },
        )
        .map_err(|_| SpawnError::ForkServerGone)?;
        {
            let mut w = self.commands.lock().await;
            if w.write_all(&frame).await.is_err() {
                self.shared.pending.lock().unwrap().remove(&process);
                return Err(SpawnError::ForkServerGone);
            }
        }
        let pid = started_rx
            .await
            .unwrap_or(Err(SpawnError::ForkServerGone))?;
        Ok(Spawned { pid, end: ended_rx })
    }
}

fn fail_all(shared: &Shared) {
    let _ = shared.gone.send(true);
    let mut pending = shared.pending.lock().unwrap();
    for (_, p) in pending.drain() {
        if let Some(s) = p.started {
            let _ = s.send(Err(SpawnError::ForkServerGone));
        }
        // Dropping `ended` wakes its waiter with an error.
    }
}

async fn read_events(fd: AsyncFd<EventFd>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; protocol::MAX_EVENT_BYTES];
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(_) => break,
        };
        match recv(fd.get_ref().as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => break,
            Ok(n) => match serde_json::from_slice::<Event>(&buf[..n]) {
                Ok(event) => dispatch(&shared, event),
                Err(e) => tracing::error!(error = %e, "unreadable event from the fork server"),
            },
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                tracing::error!(error = %e, "reading fork server events failed");
                break;
            }
        }
    }
    fail_all(&shared);
}

fn dispatch(shared: &Shared, event: Event) {
    let mut pending = shared.pending.lock().unwrap();
    match event {
        Event::Started { process, pid } => {
            if let Some(s) = pending.get_mut(&process).and_then(|p| p.started.take()) {
                let _ = s.send(Ok(Pid::from_raw(pid)));
            }
        }
        Event::SpawnFailed {
            process,
            error,
            invalid_component,
        } => {
            if let Some(mut p) = pending.remove(&process)
                && let Some(s) = p.started.take()
            {
                let _ = s.send(Err(SpawnError::Load {
                    error,
                    invalid_component,
                }));
            }
        }
        Event::Finished {
            process,
            outcome,
            duration_ms,
        } => {
            if let Some(p) = pending.get_mut(&process) {
                p.finished = Some((outcome, Duration::from_secs_f64(duration_ms.max(0.0) / 1e3)));
            }
        }
        Event::Exited { process, status } => {
            if let Some(mut p) = pending.remove(&process)
                && let Some(s) = p.ended.take()
            {
                let (outcome, duration) = p.finished.take().unzip();
                let _ = s.send(ProcessEnd {
                    status,
                    outcome,
                    duration,
                });
            }
        }
    }
}
