//! The worker: receives messages and runs each in a fresh forked process.
//!
//! Processes: the tokio parent (this module) owns the queue, heartbeats and
//! exit signals and never runs guest code; a single-threaded [`forkserver`]
//! started before the runtime forks one child per call ([`child`]). The
//! parent learns of every child's start and end as events ([`forks`]), and
//! each message's task ([`job`]) acts on it through [`fate`].

pub mod child;
pub mod fate;
pub mod forks;
pub mod forkserver;
pub mod heartbeat;
pub mod job;
pub mod metrics;
pub mod protocol;
pub mod stats;

use crate::queue::{Queue, QueueError, ReceiveRequest, ReceivedMessage};
use forks::ForkClient;
use heartbeat::Heartbeats;
use job::{JobContext, JobResult};
use stats::WorkerStats;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// The worker's settings (see `wasm-jobs worker --help`).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Run this component for every message; else the `module` attribute,
    /// looked up in `registry`.
    pub module: Option<PathBuf>,
    pub registry: crate::registry::Registry,
    /// Tenant of messages without a `tenant` attribute.
    pub default_tenant: String,
    pub concurrency: usize,
    pub visibility_timeout: Duration,
    pub heartbeat: Duration,
    pub exit_timeout: Duration,
    /// Long-poll time; `None` uses the queue's ReceiveMessageWaitTimeSeconds.
    pub wait: Option<Duration>,
    /// Every tenant's sandbox, concurrency cap and allowed modules.
    pub policies: crate::policy::Policies,
    /// Exit 0 once the queue is empty and every job has ended.
    pub drain: bool,
}

/// How a worker run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// `--drain` and the queue is empty.
    Drained,
    /// An exit signal was handled for every in-flight job; the process
    /// should now end as killed by it (or exit 1 if `on-exit` failed twice
    /// for some message).
    Signaled {
        signal: i32,
        exit_handling_failed: bool,
    },
    /// The worker cannot go on (queue unreachable, unauthorized, fork server gone).
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

enum Intake {
    Messages(Vec<(ReceivedMessage, OwnedSemaphorePermit, Instant)>),
    Empty,
    Failed(QueueError),
}

/// Run the worker until drained, signaled or broken. `signals` yields the
/// exit signals the process receives.
pub async fn run(
    config: WorkerConfig,
    queue: Arc<dyn Queue>,
    forks: Arc<ForkClient>,
    stats: Arc<WorkerStats>,
    mut signals: mpsc::Receiver<i32>,
) -> WorkerExit {
    let attrs = match queue.attributes().await {
        Ok(a) => a,
        Err(e) => return WorkerExit::Failed(format!("cannot use queue {}: {e}", queue.name())),
    };
    let dead_letter_queue = match queue.dead_letter_queue().await {
        Ok(q) => q.map(Arc::from),
        Err(e) => return WorkerExit::Failed(format!("cannot open the dead-letter queue: {e}")),
    };
    let long_poll = config.wait.unwrap_or(attrs.receive_wait);
    tracing::info!(
        queue = queue.name(),
        concurrency = config.concurrency,
        long_poll_s = long_poll.as_secs(),
        retries_allowed = attrs.allows_retries(),
        dead_letter_queue = dead_letter_queue.is_some(),
        "worker started"
    );
    let (exit_tx, exit_rx) = watch::channel(None);
    let ctx = Arc::new(JobContext {
        queue: Arc::clone(&queue),
        dead_letter_queue,
        forks: Arc::clone(&forks),
        heartbeats: Heartbeats::start(
            Arc::clone(&queue),
            config.heartbeat,
            config.visibility_timeout,
            Arc::clone(&stats),
        ),
        module: config.module.clone(),
        registry: config.registry.clone(),
        default_tenant: config.default_tenant.clone(),
        retries_allowed: attrs.allows_retries(),
        long_poll,
        exit_timeout: config.exit_timeout,
        policies: config.policies.clone(),
        tenant_slots: Default::default(),
        exit_signal: exit_rx.clone(),
        stats: Arc::clone(&stats),
    });
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (intake_tx, mut intake) = mpsc::channel(4);
    let receiver = tokio::spawn(receive_loop(
        Arc::clone(&queue),
        Arc::clone(&slots),
        ReceiveRequest {
            max_messages: 10,
            wait: long_poll,
            visibility_timeout: Some(config.visibility_timeout),
        },
        stop_rx,
        intake_tx,
        Arc::clone(&stats),
    ));
    // Stop intake and wait for the receiver to finish its last receive, so
    // nothing it got is left invisible (it releases such messages).
    let stop_receiving = |intake: mpsc::Receiver<Intake>, receiver: tokio::task::JoinHandle<()>| {
        let _ = stop_tx.send(true);
        drop(intake);
        async move {
            let _ = receiver.await;
        }
    };
    let mut jobs: JoinSet<JobResult> = JoinSet::new();
    let mut fork_server_gone = forks.gone();
    let mut signal: Option<i32> = None;
    let mut exit_handling_failed = false;
    let mut saw_empty = false;
    loop {
        if let Some(sig) = signal
            && jobs.is_empty()
        {
            stop_receiving(intake, receiver).await;
            return WorkerExit::Signaled {
                signal: sig,
                exit_handling_failed,
            };
        }
        if config.drain && saw_empty && jobs.is_empty() && signal.is_none() {
            match queue.counts().await {
                Ok(c) if c.visible + c.in_flight + c.delayed == 0 => {
                    stop_receiving(intake, receiver).await;
                    return WorkerExit::Drained;
                }
                _ => saw_empty = false,
            }
        }
        tokio::select! {
            Some(sig) = signals.recv() => {
                if signal.is_none() {
                    tracing::warn!(signal = sig, in_flight = jobs.len(), "exit signal received: stopping intake and handling every in-flight job");
                    signal = Some(sig);
                    let _ = exit_tx.send(Some(sig));
                    let _ = stop_tx.send(true);
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
                    let msgs: Vec<ReceivedMessage> = batch.into_iter().map(|(m, _, _)| m).collect();
                    release(queue.as_ref(), &msgs, &stats).await;
                }
                Intake::Messages(batch) => {
                    saw_empty = false;
                    for (msg, permit, received) in batch {
                        let ctx = Arc::clone(&ctx);
                        jobs.spawn(async move {
                            let r = job::handle(ctx, msg, received).await;
                            drop(permit);
                            r
                        });
                    }
                }
                Intake::Empty => saw_empty = true,
                Intake::Failed(e) => {
                    stop_receiving(intake, receiver).await;
                    return WorkerExit::Failed(format!("queue {}: {e}", queue.name()));
                }
            },
            Ok(()) = fork_server_gone.changed() => {
                if *fork_server_gone.borrow() {
                    stop_receiving(intake, receiver).await;
                    return WorkerExit::Failed("the fork server died".into());
                }
            }
        }
    }
}

/// Receive while there are free slots; hand messages over with their slots.
/// A batch that arrives after an exit signal is released at once.
async fn receive_loop(
    queue: Arc<dyn Queue>,
    slots: Arc<Semaphore>,
    request: ReceiveRequest,
    stop: watch::Receiver<bool>,
    out: mpsc::Sender<Intake>,
    stats: Arc<WorkerStats>,
) {
    let backoff = crate::queue::retry::Backoff::default();
    let mut transient_failures = 0u32;
    loop {
        let Ok(first) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut permits = vec![first];
        while permits.len() < request.max_messages {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if *stop.borrow() {
            return;
        }
        let req = ReceiveRequest {
            max_messages: permits.len(),
            ..request
        };
        let batch = match queue.receive(req).await {
            Ok(b) => {
                transient_failures = 0;
                b
            }
            Err(e) if e.is_transient() => {
                transient_failures += 1;
                let delay = backoff.delay(transient_failures.min(6));
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "receive failed; backing off");
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => {
                let _ = out.send(Intake::Failed(e)).await;
                return;
            }
        };
        let received = Instant::now();
        if *stop.borrow() {
            release(queue.as_ref(), &batch, &stats).await;
            return;
        }
        stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if batch.is_empty() {
            drop(permits);
            if out.send(Intake::Empty).await.is_err() {
                return;
            }
            if request.wait.is_zero() {
                // Short polling: do not spin on an empty queue.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        }
        let items: Vec<_> = batch
            .into_iter()
            .zip(permits)
            .map(|(m, p)| (m, p, received))
            .collect();
        if let Err(mpsc::error::SendError(Intake::Messages(items))) =
            out.send(Intake::Messages(items)).await
        {
            let msgs: Vec<ReceivedMessage> = items.into_iter().map(|(m, _, _)| m).collect();
            release(queue.as_ref(), &msgs, &stats).await;
            return;
        }
    }
}

/// Make messages visible again at once (received after an exit signal).
async fn release(queue: &dyn Queue, batch: &[ReceivedMessage], stats: &WorkerStats) {
    for m in batch {
        match queue
            .change_visibility(&m.receipt_handle, Duration::ZERO)
            .await
        {
            Ok(()) => {
                stats.released.fetch_add(1, Ordering::Relaxed);
                tracing::info!(message_id = %m.message_id, "released a message received after the exit signal");
            }
            Err(e) => {
                tracing::error!(message_id = %m.message_id, error = %e, "could not release a message")
            }
        }
    }
}
