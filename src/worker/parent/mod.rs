//! The worker parent process: the tokio side that owns the queues, leases,
//! heartbeats, exit signals and metrics. It never forks and never runs guest
//! code; calls run in children of the fork server, which it starts and
//! restarts ([`forks`]).
//!
//! - [`intake`]: one receiver per served queue, asking only while its
//!   tenant has room ([`slots`]).
//! - [`job`]: each message's one-way life: admitted once ([`admit`]) →
//!   worker slot → spawned → ended → [`fate`] → applied ([`settle`]);
//!   [`exit`] for the exit-signal sequence.
//! - [`reply`]: the outcome message a `reply-to` asks for.
//! - [`heartbeat`]: leases and batched visibility extensions, per queue;
//!   [`deletes`]: batched deletes, per queue; [`counted`]: every queue call
//!   counted by kind.
//! - [`stats`] and [`metrics`]: counters, and the endpoint that serves them
//!   with the health checks; [`running`]: the jobs running now (`/jobs.json`).

pub(crate) mod admit;
mod counted;
mod deletes;
mod exit;
pub(crate) mod fate;
pub(crate) mod forks;
mod heartbeat;
mod intake;
mod job;
pub(crate) mod metrics;
pub(crate) mod reply;
pub(crate) mod running;
mod settle;
mod slots;
pub(crate) mod stats;

use crate::policy::Policies;
use crate::queue::{Queue, ReceiveRequest};
use crate::worker::protocol::ModuleRef;
use admit::{Modules, QueueTenant};
use forks::ForkServers;
use heartbeat::Heartbeats;
use intake::Intake;
use settle::{JobContext, JobResult, Source};
use slots::Slots;
use stats::WorkerStats;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The worker's settings (see `wasm-jobs worker --help`).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Run this component for every message; else the `module` attribute,
    /// looked up in `registry`.
    pub module: Option<PathBuf>,
    /// Where `module` attributes are looked up.
    pub registry: crate::registry::Registry,
    /// How `oci://` module references are fetched.
    pub oci: crate::registry::oci::OciModules,
    /// Jobs at once, over all queues.
    pub concurrency: usize,
    /// Visibility timeout set on every received message.
    pub visibility_timeout: Duration,
    /// How often leases are extended.
    pub heartbeat: Duration,
    /// Time `on-exit` gets per try.
    pub exit_timeout: Duration,
    /// Long-poll time; `None` uses each queue's ReceiveMessageWaitTimeSeconds.
    pub wait: Option<Duration>,
    /// Every tenant's sandbox, concurrency cap, weight, key and modules.
    pub policies: Policies,
    /// Exit 0 once every queue is empty and every job has ended.
    pub drain: bool,
    /// Messages received beyond the free slots, to wait (heartbeated) for
    /// one: receives then ask for a batch instead of one message per
    /// freed slot.
    pub prefetch: usize,
    /// How long a finished job's delete may wait to share a batch; `None`:
    /// zero on the embedded queue, 20 ms on SQS.
    pub delete_window: Option<Duration>,
    /// Where `reply-to` queues are opened.
    pub reply_queues: reply::ReplyQueues,
}

/// A queue the worker serves and whose messages it carries.
pub struct BoundQueue {
    /// The queue.
    pub queue: Arc<dyn Queue>,
    /// The tenant every message belongs to; `None` for a shared queue of
    /// signed messages.
    pub tenant: Option<String>,
}

/// How a worker run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// `--drain` and the queues are empty.
    Drained,
    /// An exit signal was handled for every in-flight job; the process
    /// should now end as killed by it (or exit 1 if `on-exit` failed twice
    /// for some message).
    Signaled {
        /// The signal to end by.
        signal: i32,
        /// `on-exit` failed twice for some message.
        exit_handling_failed: bool,
    },
    /// The worker cannot go on (queue unreachable, unauthorized, no fork
    /// server can be started).
    Failed(String),
}

/// Refuse settings that would let a message be delivered twice.
pub fn check_config(c: &WorkerConfig) -> Result<(), String> {
    if c.heartbeat >= c.visibility_timeout {
        return Err(format!(
            "--heartbeat ({} s) must be shorter than --visibility-timeout ({} s), or a running job's message could be delivered again",
            c.heartbeat.as_secs_f64(),
            c.visibility_timeout.as_secs_f64()
        ));
    }
    if c.heartbeat.is_zero() {
        return Err("--heartbeat must be positive".into());
    }
    if c.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    crate::queue::validate::visibility(c.visibility_timeout).map_err(|e| e.to_string())?;
    Ok(())
}

/// The `--module` file, read and hashed once: every message runs that digest.
fn fixed_module(path: &std::path::Path) -> Result<ModuleRef, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read module {}: {e}", path.display()))?;
    Ok(ModuleRef {
        path: path.to_owned(),
        digest: crate::artifact_cache::content_digest(&bytes),
        label: path.display().to_string(),
    })
}

/// Open each queue's dead-letter queue and attributes, and its heartbeats.
async fn sources(
    config: &WorkerConfig,
    queues: Vec<BoundQueue>,
    stats: &Arc<WorkerStats>,
) -> Result<Vec<Arc<Source>>, String> {
    let mut out = Vec::new();
    for b in queues {
        let q = counted::Counted::wrap(b.queue, stats);
        let attrs = q
            .attributes()
            .await
            .map_err(|e| format!("cannot use queue {}: {e}", q.name()))?;
        let dead_letter_queue = q
            .dead_letter_queue()
            .await
            .map_err(|e| format!("cannot open the dead-letter queue of {}: {e}", q.name()))?
            .map(Arc::from);
        let long_poll = config.wait.unwrap_or(attrs.receive_wait);
        let tenant = b.tenant.map_or(QueueTenant::Shared, QueueTenant::Bound);
        let tenant_label = match &tenant {
            QueueTenant::Bound(t) => t.as_str(),
            QueueTenant::Shared => "(shared: signed messages)",
        };
        let window = config.delete_window.unwrap_or(if q.is_local() {
            Duration::ZERO
        } else {
            deletes::REMOTE_WINDOW
        });
        tracing::info!(
            queue = q.name(),
            tenant = tenant_label,
            long_poll_s = long_poll.as_secs(),
            delete_window_ms = window.as_millis() as u64,
            retries_allowed = attrs.allows_retries(),
            dead_letter_queue = dead_letter_queue.is_some(),
            "serving queue"
        );
        let heartbeats = Heartbeats::start(
            Arc::clone(&q),
            config.heartbeat,
            config.visibility_timeout,
            Arc::clone(stats),
        );
        let deletes = deletes::Deletes::start(Arc::clone(&q), window);
        out.push(Arc::new(Source {
            deletes,
            queue: q,
            dead_letter_queue,
            tenant,
            retries_allowed: attrs.allows_retries(),
            max_receives: attrs.redrive.as_ref().map(|r| r.max_receive_count),
            fifo: attrs.fifo,
            long_poll,
            heartbeats,
        }));
    }
    // Every queue answered its start-up calls: each counts as reached.
    for s in &out {
        stats.queue_call::<()>(s.queue.name(), &Ok(()));
    }
    Ok(out)
}

/// Whether every queue is empty (nothing visible, in flight or delayed).
async fn all_empty(sources: &[Arc<Source>]) -> bool {
    for s in sources {
        match s.queue.counts().await {
            Ok(c) if c.visible + c.in_flight + c.delayed == 0 => {}
            _ => return false,
        }
    }
    true
}

/// The runtime [`run`] is meant for: one thread. The parent only waits, on
/// sockets, timers and signals, and does a few tens of microseconds of work
/// per event; a second worker thread cost more in wake-ups handed between
/// the two than it saved (about 10% of a busy worker's CPU at concurrency
/// 2). SQLite transactions that must wait for a lock go to the blocking
/// pool. The CLI and the worker benchmark both build it here, so the
/// benchmark measures what the CLI runs.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Run the worker until drained, signaled or broken. `signals` yields the
/// exit signals the process receives. Run it on [`runtime`].
pub async fn run(
    config: WorkerConfig,
    queues: Vec<BoundQueue>,
    forks: Arc<ForkServers>,
    stats: Arc<WorkerStats>,
    mut signals: mpsc::Receiver<i32>,
) -> WorkerExit {
    let modules = match &config.module {
        Some(path) => match fixed_module(path) {
            Ok(m) => Modules::Fixed(m),
            Err(why) => return WorkerExit::Failed(why),
        },
        None => Modules::Registry {
            registry: config.registry.clone(),
            oci: config.oci.clone(),
        },
    };
    let sources = match sources(&config, queues, &stats).await {
        Ok(s) => s,
        Err(why) => return WorkerExit::Failed(why),
    };
    tracing::info!(
        concurrency = config.concurrency,
        queues = sources.len(),
        "worker started"
    );
    let slots = Slots::new(
        config.concurrency,
        config.prefetch,
        config.policies.slot_settings(),
    );
    let (exit_tx, exit_rx) = watch::channel(None);
    let ctx = Arc::new(JobContext {
        forks: Arc::clone(&forks),
        modules,
        policies: config.policies.clone(),
        slots: slots.clone(),
        exit_timeout: config.exit_timeout,
        exit_signal: exit_rx,
        stats: Arc::clone(&stats),
        replies: reply::Replies::new(
            config.reply_queues.clone(),
            sources.iter().map(|s| s.queue.name().to_owned()).collect(),
            Arc::clone(&stats),
        ),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (intake_tx, mut intake) = mpsc::channel(4);
    let mut receivers = JoinSet::new();
    for (index, source) in sources.iter().enumerate() {
        let request = ReceiveRequest {
            max_messages: 10,
            wait: source.long_poll,
            visibility_timeout: Some(config.visibility_timeout),
        };
        receivers.spawn(intake::receive_loop(
            index,
            Arc::clone(source),
            slots.clone(),
            request,
            stop_rx.clone(),
            intake_tx.clone(),
            Arc::clone(&stats),
        ));
    }
    drop(intake_tx);
    // Stop intake and wait for the receivers' last receives, so nothing they
    // got is left invisible: they release what they can no longer hand over,
    // and batches already handed over but not taken are released here.
    // Receivers start no receive after this, and the long polls under way
    // end where that loses nothing (`Queue::stop_waiting`).
    let stop_intake = || {
        let _ = stop_tx.send(true);
        for s in &sources {
            s.queue.stop_waiting();
        }
    };
    let stop_receiving = async |mut intake: mpsc::Receiver<Intake>, mut receivers: JoinSet<()>| {
        stop_intake();
        intake.close();
        while let Some(batch) = intake.recv().await {
            if let Intake::Messages(batch) = batch {
                intake::release_handed(batch, &stats).await;
            }
        }
        while receivers.join_next().await.is_some() {}
    };
    let mut jobs: JoinSet<JobResult> = JoinSet::new();
    let mut fork_servers_failed = forks.failed();
    let mut signal: Option<i32> = None;
    let mut exit_handling_failed = false;
    let mut empty = vec![false; sources.len()];
    loop {
        if let Some(sig) = signal
            && jobs.is_empty()
        {
            stop_receiving(intake, receivers).await;
            return WorkerExit::Signaled {
                signal: sig,
                exit_handling_failed,
            };
        }
        if config.drain && signal.is_none() && jobs.is_empty() && empty.iter().all(|e| *e) {
            if all_empty(&sources).await {
                // Drained: abandon the long polls under way instead of
                // waiting them out, so the worker exits within one long
                // poll of its last job. Every queue was just empty; a
                // message sent in this instant to a poll being dropped is
                // not lost, only invisible until its visibility timeout.
                stop_intake();
                drop(intake);
                receivers.shutdown().await;
                return WorkerExit::Drained;
            }
            empty.fill(false);
        }
        tokio::select! {
            Some(sig) = signals.recv() => {
                if signal.is_none() {
                    tracing::warn!(signal = sig, in_flight = jobs.len(), "exit signal received: stopping intake and handling every in-flight job");
                    signal = Some(sig);
                    let _ = exit_tx.send(Some(sig));
                    stop_intake();
                } else {
                    tracing::warn!(signal = sig, "already handling an exit signal; ignoring this one");
                }
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                match done {
                    Ok(r) => exit_handling_failed |= r.exit_handling_failed,
                    Err(e) => tracing::error!(error = %e, "a job task failed"),
                }
            }
            Some(batch) = intake.recv() => match batch {
                Intake::Messages(batch) if signal.is_some() => {
                    intake::release_handed(batch, &stats).await;
                }
                Intake::Messages(batch) => {
                    for (d, ticket) in batch {
                        empty[sources.iter().position(|s| Arc::ptr_eq(s, &d.source)).unwrap_or(0)] = false;
                        jobs.spawn(job::handle(Arc::clone(&ctx), d, ticket));
                    }
                }
                Intake::Empty(index) => empty[index] = true,
                Intake::Failed(why) => {
                    stop_receiving(intake, receivers).await;
                    return WorkerExit::Failed(why);
                }
            },
            Ok(()) = fork_servers_failed.changed() => {
                let why = fork_servers_failed.borrow().clone();
                if let Some(why) = why {
                    stop_receiving(intake, receivers).await;
                    return WorkerExit::Failed(why);
                }
            }
        }
    }
}
