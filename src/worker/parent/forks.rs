//! The parent's side of the fork server, in the worker parent process:
//! start it ([`mod@launch`]: `wasm-jobs __fork-server`, an empty environment, its own
//! process group, the two sockets at fixed descriptors), send `Spawn` and
//! `Signal` commands, read events as they arrive (no polling), hand each
//! process's start and end to the task that asked for it, and restart the
//! fork server when it dies.
//!
//! A fork server that dies takes its children with it (PDEATHSIG): their
//! tasks see [`ProcessEnd`] never arrive and treat the job as killed. The
//! supervisor starts a new one at once, then with back-off; only when
//! [`MAX_START_FAILURES`] starts in a row fail does [`ForkServers::failed`]
//! say the worker cannot go on. Spawning from a tokio worker thread matters:
//! PDEATHSIG fires when the *thread* that forked exits, and runtime workers
//! live as long as the runtime.

mod launch;

use super::stats::WorkerStats;
use crate::contract::JobMessage;
use crate::http::HttpUsage;
use crate::logging::LogSettings;
use crate::outcome::Outcome;
use crate::sandbox::SandboxPolicy;
use crate::trace_context::TraceContext;
use crate::worker::protocol::{
    self, CallKind, Command, Event, ExitStatus, ForkServerConfig, ModuleRef, Spawn, SpawnFailure,
};
use launch::launch;
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

/// Starts in a row that may fail before the worker gives up.
pub(crate) const MAX_START_FAILURES: u32 = 5;
/// How long a new fork server gets to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a spawn waits for a fork server to be up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A fork server that dies sooner than this after starting is restarted
/// after a growing pause (100 ms, doubling to 3.2 s), so a crash loop does
/// not spin; the first restart is immediate.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// How a forked process ended, with the outcome it reported if it got that
/// far, and the result its job published, if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessEnd {
    pub(crate) status: ExitStatus,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) output: Option<Vec<u8>>,
    pub(crate) http: Option<HttpUsage>,
}

/// Why a call could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SpawnError {
    /// The component is not a valid job component: a verdict on the message.
    #[error("{0}")]
    InvalidComponent(String),
    /// A passing failure (fork failed, compile helper killed or timed out,
    /// module file changed): not a verdict; leave the message.
    #[error("{0}")]
    Passing(String),
    /// No fork server is up (it died and has not been replaced in time).
    #[error("the fork server is gone")]
    ForkServerGone,
    /// Not started: `stop` came while the call waited for its module's
    /// compile ([`ForkServers::spawn`]).
    #[error("{0}")]
    Cancelled(String),
}

/// How to start a fork server.
#[derive(Debug, Clone)]
pub struct ForkServerSettings {
    /// The `wasm-jobs` executable (it runs `wasm-jobs __fork-server`).
    pub exe: PathBuf,
    /// The compiled-artifact cache.
    pub cache_dir: PathBuf,
    /// Fuel metering for the whole engine (some tenant has a fuel budget).
    pub fuel_metering: bool,
    /// A compile helper is killed after this long.
    pub compile_timeout: Duration,
    /// A compile helper's address-space limit, in bytes.
    pub compile_memory: u64,
    /// Log format and filter for the fork server and its children.
    pub log: LogSettings,
    /// At most this many children kept forked and set up ahead of their
    /// calls, for the module the fork server expects next (the worker's
    /// concurrency); 0 forks every call on demand.
    pub warm_children: usize,
    /// The fork server's budget for loaded components (their code and
    /// what loading them allocated), in bytes: past it the least recently
    /// used are unloaded, and loaded again from the artifact cache when a
    /// call needs them.
    pub loaded_modules_memory: u64,
}

impl ForkServerSettings {
    fn config(&self) -> ForkServerConfig {
        ForkServerConfig {
            fuel_metering: self.fuel_metering,
            cache_dir: self.cache_dir.clone(),
            compile_timeout: self.compile_timeout,
            compile_memory: self.compile_memory,
            parent: std::process::id() as i32,
            warm_children: self.warm_children,
            loaded_modules_memory: self.loaded_modules_memory,
        }
    }
}

struct Pending {
    started: Option<oneshot::Sender<Result<(Pid, bool), SpawnError>>>,
    ended: Option<oneshot::Sender<ProcessEnd>>,
    /// The result received so far ([`Event::Output`]), and its limit.
    output: Option<Vec<u8>>,
    max_output: usize,
}

/// One running fork server.
struct Conn {
    pid: Pid,
    commands: tokio::sync::Mutex<tokio::net::UnixStream>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Set (under the `pending` lock) once the fork server is gone, so a
    /// spawn racing with its death cannot wait for ever.
    dead: std::sync::atomic::AtomicBool,
    ready: Mutex<Option<oneshot::Sender<()>>>,
}

/// A started process: its number, pid (= its process group) and its end.
pub(crate) struct Spawned {
    process: u64,
    conn: Arc<Conn>,
    pub(crate) pid: Pid,
    /// A pre-forked process was handed the call (no fork on its path).
    pub(crate) warm: bool,
    pub(crate) end: oneshot::Receiver<ProcessEnd>,
}

impl Spawned {
    /// Signal the process's group, through the fork server that reaps it (so
    /// a pid already reaped, and perhaps reused, is never signalled).
    pub(crate) async fn signal_group(&self, sig: nix::sys::signal::Signal) {
        let cmd = Command::Signal {
            process: self.process,
            signal: sig as i32,
        };
        if let Err(e) = self.conn.send(&cmd).await {
            tracing::debug!(pid = self.pid.as_raw(), error = %e, "cannot signal: the fork server is gone");
        }
    }
}

/// The worker's fork server, replaced when it dies.
pub struct ForkServers {
    launcher: ForkServerSettings,
    current: watch::Sender<Option<Arc<Conn>>>,
    failed: watch::Sender<Option<String>>,
    next: AtomicU64,
    stats: Arc<WorkerStats>,
}

impl ForkServers {
    /// Start the first fork server and its supervisor. Must run inside the
    /// tokio runtime.
    pub async fn start(
        launcher: ForkServerSettings,
        stats: Arc<WorkerStats>,
    ) -> std::io::Result<Arc<Self>> {
        let (conn, child) = launch(&launcher).await?;
        let servers = Arc::new(ForkServers {
            launcher,
            current: watch::Sender::new(Some(Arc::clone(&conn))),
            failed: watch::Sender::new(None),
            next: AtomicU64::new(1),
            stats,
        });
        tokio::spawn(Arc::clone(&servers).supervise(conn, child));
        Ok(servers)
    }

    /// Turns `Some(why)` when no fork server can be started any more.
    pub(crate) fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// The pid of the fork server that is up now.
    pub fn pid(&self) -> Option<i32> {
        self.current.borrow().as_ref().map(|c| c.pid.as_raw())
    }

    async fn supervise(self: Arc<Self>, mut conn: Arc<Conn>, mut child: tokio::process::Child) {
        let mut started = Instant::now();
        let mut quick_deaths = 0u32;
        loop {
            let status = child.wait().await;
            self.current.send_replace(None);
            conn.fail_all();
            tracing::error!(
                pid = conn.pid.as_raw(),
                ?status,
                "the fork server died; starting a new one"
            );
            // One that dies soon after starting is restarted more slowly each
            // time (a crash loop must not spin), but is not a failed start.
            quick_deaths = if started.elapsed() < STABLE_AFTER {
                quick_deaths + 1
            } else {
                0
            };
            let mut failures = 0u32;
            loop {
                if failures >= MAX_START_FAILURES {
                    let why =
                        format!("the fork server could not be started ({failures} tries in a row)");
                    self.failed.send_replace(Some(why));
                    return;
                }
                let tries = quick_deaths + failures;
                if tries > 1 {
                    let pause = Duration::from_millis(100 << (tries - 2).min(5));
                    tokio::time::sleep(pause).await;
                }
                match launch(&self.launcher).await {
                    Ok((c, ch)) => {
                        (conn, child, started) = (c, ch, Instant::now());
                        self.stats.fork_server_restarts.inc();
                        tracing::info!(pid = conn.pid.as_raw(), "fork server restarted");
                        self.current.send_replace(Some(Arc::clone(&conn)));
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, attempt = failures, "cannot start a fork server");
                    }
                }
            }
        }
    }

    /// The fork server that is up, waiting for a restart in progress.
    async fn connection(&self) -> Result<Arc<Conn>, SpawnError> {
        let mut rx = self.current.subscribe();
        let mut failed = self.failed.subscribe();
        let wait = async {
            tokio::select! {
                c = rx.wait_for(Option::is_some) => c.ok().and_then(|c| c.clone()),
                _ = failed.wait_for(Option::is_some) => None,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, wait)
            .await
            .ok()
            .flatten()
            .ok_or(SpawnError::ForkServerGone)
    }

    /// Ask for a process that makes `call` with `module` for `tenant`;
    /// resolves once the fork server has the request. [`Starting::started`]
    /// then waits for the process.
    pub(crate) async fn spawn(
        &self,
        module: ModuleRef,
        tenant: &str,
        message: JobMessage,
        call: CallKind,
        policy: SandboxPolicy,
        trace: TraceContext,
    ) -> Result<Starting, SpawnError> {
        let conn = self.connection().await?;
        let process = self.next.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        {
            let mut pending = conn.lock_pending();
            if conn.dead.load(Ordering::Relaxed) {
                return Err(SpawnError::ForkServerGone);
            }
            let p = Pending {
                started: Some(started_tx),
                ended: Some(ended_tx),
                output: None,
                max_output: policy.max_job_output,
            };
            pending.insert(process, p);
        }
        let cmd = Command::Spawn(Spawn {
            process,
            module,
            tenant: tenant.to_owned(),
            message,
            call,
            policy,
            trace,
        });
        if conn.send(&cmd).await.is_err() {
            conn.lock_pending().remove(&process);
            return Err(SpawnError::ForkServerGone);
        }
        Ok(Starting {
            process,
            conn,
            started: started_rx,
            end: ended_rx,
        })
    }
}

/// A process the fork server was asked for and has not started yet.
pub(crate) struct Starting {
    process: u64,
    conn: Arc<Conn>,
    started: oneshot::Receiver<Result<(Pid, bool), SpawnError>>,
    end: oneshot::Receiver<ProcessEnd>,
}

impl Starting {
    /// Wait for the process to start. If `stop` comes first, ask the fork
    /// server not to start it ([`Command::Cancel`]): a call still waiting
    /// for its module's compile or load then fails with
    /// [`SpawnError::Cancelled`];
    /// one the fork server already started (or starts before it reads the
    /// request) starts, and is returned as usual.
    pub(crate) async fn started(
        mut self,
        stop: impl Future<Output = ()>,
    ) -> Result<Spawned, SpawnError> {
        let started = tokio::select! {
            biased;
            started = &mut self.started => started,
            () = stop => {
                let cancel = Command::Cancel { process: self.process };
                if self.conn.send(&cancel).await.is_err() {
                    tracing::debug!("cannot cancel a spawn: the fork server is gone");
                }
                // The fork server answers either way.
                (&mut self.started).await
            }
        };
        let (pid, warm) = started.unwrap_or(Err(SpawnError::ForkServerGone))?;
        Ok(Spawned {
            process: self.process,
            conn: self.conn,
            pid,
            warm,
            end: self.end,
        })
    }
}

impl Conn {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, cmd: &Command) -> std::io::Result<()> {
        let mut frame = Vec::new();
        protocol::write_command(&mut frame, cmd)?;
        self.commands.lock().await.write_all(&frame).await
    }

    /// The fork server is gone: every waiter learns it.
    fn fail_all(&self) {
        let mut pending = self.lock_pending();
        self.dead.store(true, Ordering::Relaxed);
        for (_, p) in pending.drain() {
            if let Some(s) = p.started {
                let _ = s.send(Err(SpawnError::ForkServerGone));
            }
            // Dropping `ended` wakes its waiter with an error.
        }
    }
}

impl Pending {
    /// Append a chunk of the process's result, within its limit (the fork
    /// server already enforces it; this side trusts no more than it must).
    fn add_output(&mut self, process: u64, chunk: &str) {
        use base64::Engine as _;
        let bytes = match base64::engine::general_purpose::STANDARD.decode(chunk) {
            Ok(b) => b,
            Err(e) => {
                return tracing::error!(process, error = %e, "unreadable result chunk; dropped");
            }
        };
        let so_far = self.output.get_or_insert_with(Vec::new);
        if so_far.len() + bytes.len() > self.max_output {
            tracing::error!(
                process,
                limit = self.max_output,
                "a result longer than its limit; dropped"
            );
            self.output = None;
            self.max_output = 0;
            return;
        }
        so_far.extend_from_slice(&bytes);
    }
}

impl Conn {
    fn dispatch(&self, event: Event) {
        let mut pending = self.lock_pending();
        match event {
            Event::Ready { .. } => {
                if let Some(tx) = self.ready.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(());
                }
            }
            Event::Started { process, pid, warm } => {
                if let Some(s) = pending.get_mut(&process).and_then(|p| p.started.take()) {
                    let _ = s.send(Ok((Pid::from_raw(pid), warm)));
                }
            }
            Event::SpawnFailed {
                process,
                error,
                failure,
            } => {
                if let Some(mut p) = pending.remove(&process)
                    && let Some(s) = p.started.take()
                {
                    let _ = s.send(Err(match failure {
                        SpawnFailure::InvalidComponent => SpawnError::InvalidComponent(error),
                        SpawnFailure::Passing => SpawnError::Passing(error),
                        SpawnFailure::Cancelled => SpawnError::Cancelled(error),
                    }));
                }
            }
            Event::Output { process, chunk } => {
                if let Some(p) = pending.get_mut(&process) {
                    p.add_output(process, &chunk);
                }
            }
            Event::Exited {
                process,
                status,
                outcome,
                http,
            } => {
                if let Some(mut p) = pending.remove(&process)
                    && let Some(s) = p.ended.take()
                {
                    let output = p.output.take();
                    let _ = s.send(ProcessEnd {
                        status,
                        outcome,
                        output,
                        http,
                    });
                }
            }
        }
    }
}
