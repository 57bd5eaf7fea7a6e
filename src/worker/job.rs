//! One message's life in the worker parent: admit it (its tenant's policy,
//! the module it names in the registry, the tenant's concurrency cap), fork
//! its worker, keep its lease alive, act on how it ended ([`fate::decide`]),
//! and on an exit signal run the exit-handling sequence: extend visibility,
//! suspend the worker's group, call `on-exit` in a fresh process (twice at
//! most, killing the worker before the second try), requeue or dead-letter,
//! kill the group.

use super::fate::{self, ExitHandlingFate, Fate, WorkerEnd};
use super::forks::{ForkClient, ProcessEnd, SpawnError, Spawned};
use super::heartbeat::Heartbeats;
use super::protocol::CallKind;
use super::stats::WorkerStats;
use crate::contract::JobMessage;
use crate::outcome::Outcome;
use crate::queue::{AttributeValue, OutgoingMessage, Queue, QueueError, ReceivedMessage, limits};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Attribute a dead-lettered copy carries to say why.
pub const DEAD_LETTER_REASON_ATTRIBUTE: &str = "wasm-jobs.dead-letter-reason";
/// Message attribute naming the component to run when no --module is given.
pub const MODULE_ATTRIBUTE: &str = "module";
/// Message attribute naming the job's tenant (its policy, logs, metrics).
pub const TENANT_ATTRIBUTE: &str = "tenant";
/// Extra time a job gets past its own timeout before the parent kills it.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// The message's tenant: its `tenant` attribute, else the worker's default.
pub fn tenant_of(ctx: &JobContext, m: &ReceivedMessage) -> String {
    match m.attributes.get(TENANT_ATTRIBUTE) {
        Some(v) if !v.as_text().is_empty() => v.as_text(),
        _ => ctx.default_tenant.clone(),
    }
}

/// What every job task shares.
pub struct JobContext {
    pub queue: Arc<dyn Queue>,
    pub dead_letter_queue: Option<Arc<dyn Queue>>,
    pub forks: Arc<ForkClient>,
    pub heartbeats: Heartbeats,
    pub module: Option<PathBuf>,
    /// Where `module` attributes are looked up (for the message's tenant).
    pub registry: crate::registry::Registry,
    pub default_tenant: String,
    pub retries_allowed: bool,
    pub long_poll: Duration,
    pub exit_timeout: Duration,
    /// Every tenant's sandbox, concurrency cap and allowed modules.
    pub policies: crate::policy::Policies,
    /// One semaphore per tenant that has a concurrency cap.
    pub tenant_slots:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub exit_signal: watch::Receiver<Option<i32>>,
    pub stats: Arc<WorkerStats>,
}

/// How a job task ended, for the worker's own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobResult {
    /// `on-exit` failed twice and the message was dead-lettered.
    pub exit_handling_failed: bool,
}

fn job_message(m: &ReceivedMessage) -> JobMessage {
    JobMessage {
        id: m.message_id.clone(),
        body: m.body.clone(),
        attributes: m
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_text()))
            .collect(),
        receive_count: m.receive_count,
    }
}

/// The component file for a message: the worker's `--module`, else the
/// registry module its `module` attribute names (`NAME` or
/// `NAME@sha256:HEX`) for its tenant.
/// Returns the file and the label logs and metrics use for it.
fn module_for(ctx: &JobContext, m: &ReceivedMessage) -> Result<(PathBuf, String), String> {
    if let Some(module) = &ctx.module {
        return Ok((module.clone(), module.display().to_string()));
    }
    match m.attributes.get(MODULE_ATTRIBUTE) {
        Some(AttributeValue::String(reference)) if !reference.is_empty() => ctx
            .registry
            .resolve(reference, &tenant_of(ctx, m))
            .map(|r| (r.path, reference.clone()))
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "the message has no `{MODULE_ATTRIBUTE}` attribute and the worker has no --module"
        )),
    }
}

/// The tenant's policy and the module to run, or why the message is refused.
fn admit(
    ctx: &JobContext,
    msg: &ReceivedMessage,
) -> Result<(crate::policy::TenantPolicy, PathBuf, String), String> {
    let tenant = tenant_of(ctx, msg);
    let policy = ctx
        .policies
        .for_tenant(&tenant)
        .cloned()
        .ok_or_else(|| format!("tenant `{tenant}` has no policy on this worker"))?;
    if ctx.module.is_none()
        && let Some(AttributeValue::String(reference)) = msg.attributes.get(MODULE_ATTRIBUTE)
        && let Ok((name, _)) = crate::registry::parse_reference(reference)
        && !policy.allows_module(&name)
    {
        return Err(format!("tenant `{tenant}` may not run module `{name}`"));
    }
    let (module, label) = module_for(ctx, msg)?;
    Ok((policy, module, label))
}

/// Handle one received message to the end.
pub async fn handle(ctx: Arc<JobContext>, msg: ReceivedMessage, received: Instant) -> JobResult {
    let ok = JobResult {
        exit_handling_failed: false,
    };
    let (policy, module, label) = match admit(&ctx, &msg) {
        Ok(a) => a,
        Err(why) => {
            let end = WorkerEnd::Unloadable(why);
            record_failure(&ctx, &end);
            apply(&ctx, &msg, fate::decide(&end)).await;
            return ok;
        }
    };
    let span = tracing::info_span!(
        "job",
        message_id = %msg.message_id,
        module = %label,
        tenant = %tenant_of(&ctx, &msg),
        attempt = msg.receive_count,
        pid = tracing::field::Empty,
    );
    run_job(&ctx, &msg, &policy, module, &label, received)
        .instrument(span)
        .await
}

/// Wait for a slot of the tenant's concurrency cap, if it has one.
async fn tenant_slot(
    ctx: &JobContext,
    tenant: &str,
    cap: Option<usize>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let cap = cap?;
    let sem = Arc::clone(
        ctx.tenant_slots
            .lock()
            .unwrap()
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(cap))),
    );
    sem.acquire_owned().await.ok()
}

/// Count a failed job by reason (and trap kind) for the metrics.
fn record_failure(ctx: &JobContext, end: &WorkerEnd) {
    let (reason, kind) = match end {
        WorkerEnd::Reported(Outcome::Ok) => return,
        WorkerEnd::Reported(Outcome::Retry { .. }) => ("retry", String::new()),
        WorkerEnd::Reported(Outcome::Fatal { .. }) => ("fatal", String::new()),
        WorkerEnd::Reported(Outcome::Trap { kind, .. }) => ("trap", kind.label().to_owned()),
        WorkerEnd::Reported(Outcome::Timeout { .. }) => ("timeout", String::new()),
        WorkerEnd::Reported(Outcome::OnExitFailed { .. }) | WorkerEnd::ExitCode(_) => {
            ("crash", String::new())
        }
        WorkerEnd::Killed(_) => ("signal", String::new()),
        WorkerEnd::Unloadable(_) => ("unloadable", String::new()),
    };
    ctx.stats.job_failed(reason, &kind);
}

async fn run_job(
    ctx: &JobContext,
    msg: &ReceivedMessage,
    policy: &crate::policy::TenantPolicy,
    module: PathBuf,
    label: &str,
    received: Instant,
) -> JobResult {
    let ok = JobResult {
        exit_handling_failed: false,
    };
    let lease = ctx
        .heartbeats
        .lease(&msg.message_id, &msg.receipt_handle, received);
    // Heartbeats hold the message while it waits for its tenant's slot.
    let tenant = tenant_of(ctx, msg);
    let mut exit_signal = ctx.exit_signal.clone();
    let _slot = tokio::select! {
        slot = tenant_slot(ctx, &tenant, policy.max_concurrency) => slot,
        _ = async { exit_signal.wait_for(Option::is_some).await.map(|_| ()) } => {
            drop(lease);
            let visibility = fate::requeue_visibility(ctx.long_poll);
            report_queue_error(ctx, &msg.message_id, ctx.queue.change_visibility(&msg.receipt_handle, visibility).await);
            ctx.stats.released.fetch_add(1, Ordering::Relaxed);
            return ok;
        }
    };
    let spawned = match ctx
        .forks
        .spawn(
            module.clone(),
            job_message(msg),
            CallKind::Run,
            policy.sandbox.clone(),
        )
        .await
    {
        Ok(s) => s,
        Err(SpawnError::Load { error, .. }) => {
            drop(lease);
            let end = WorkerEnd::Unloadable(error);
            record_failure(ctx, &end);
            apply(ctx, msg, fate::decide(&end)).await;
            return ok;
        }
        Err(e @ SpawnError::ForkServerGone) => {
            drop(lease);
            tracing::error!(error = %e, "cannot start the worker; leaving the message");
            return ok;
        }
    };
    let pid = spawned.pid.as_raw();
    tracing::Span::current().record("pid", pid);
    tracing::info!("worker child started");
    let started = Instant::now();
    let _in_flight = ctx.stats.job_started(label, &tenant_of(ctx, msg));
    if msg.sent_timestamp_ms > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ctx.stats.queue_to_start.observe(Duration::from_millis(
            now.saturating_sub(msg.sent_timestamp_ms),
        ));
    }
    let Spawned { pid: group, end } = spawned;
    let mut end = end;
    let hard_limit = tokio::time::sleep(policy.sandbox.timeout + KILL_GRACE);
    tokio::pin!(hard_limit);
    tokio::select! {
        ended = &mut end => {
            drop(lease);
            let Ok(ProcessEnd { status, outcome, .. }) = ended else {
                tracing::error!("lost track of the worker (fork server gone); leaving the message");
                return ok;
            };
            let ended_at = Instant::now();
            ctx.stats.job_duration.observe(started.elapsed());
            let end = WorkerEnd::from_process(status, outcome);
            record_failure(ctx, &end);
            tracing::info!(end = ?end, run_ms = started.elapsed().as_secs_f64() * 1e3, "worker child ended");
            match fate::decide(&end) {
                Fate::ExitHandling { signal } => exit_handling(ctx, msg, None, signal).await,
                other => {
                    apply(ctx, msg, other).await;
                    ctx.stats.record_exit_to_settled(ended_at.elapsed());
                    ok
                }
            }
        }
        Ok(signal) = async {
            exit_signal
                .wait_for(Option::is_some)
                .await
                .map(|s| (*s).unwrap_or(libc::SIGTERM))
        } => {
            drop(lease);
            let worker = Spawned { pid: group, end };
            exit_handling(ctx, msg, Some(worker), signal).await
        }
        _ = &mut hard_limit => {
            drop(lease);
            tracing::error!("worker outlived its timeout; killing its process group");
            ctx.stats.job_failed("timeout", "");
            let worker = Spawned { pid: group, end };
            worker.signal_group(Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), worker.end).await;
            ctx.stats.left.fetch_add(1, Ordering::Relaxed);
            ok
        }
    }
}

/// Act on a fate decided for a message whose worker ended on its own.
async fn apply(ctx: &JobContext, msg: &ReceivedMessage, fate: Fate) {
    let id = &msg.message_id;
    let result = match fate {
        Fate::Delete => {
            let r = ctx.queue.delete(&msg.receipt_handle).await;
            if r.is_ok() {
                ctx.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(message_id = %id, "job succeeded; message deleted");
            }
            r
        }
        Fate::Leave { why } => {
            ctx.stats.left.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = %id, %why, "job did not succeed; leaving the message for redelivery");
            Ok(())
        }
        Fate::RetryAfter { delay, why } => {
            ctx.stats.left.fetch_add(1, Ordering::Relaxed);
            let delay = delay.min(limits::MAX_VISIBILITY);
            tracing::info!(message_id = %id, %why, delay_s = delay.as_secs(), "job asked for a retry");
            ctx.queue
                .change_visibility(&msg.receipt_handle, delay)
                .await
        }
        Fate::DeadLetter { why } => dead_letter(ctx, msg, &why).await,
        Fate::ExitHandling { .. } => unreachable!("handled by the caller"),
    };
    report_queue_error(ctx, id, result);
}

fn report_queue_error(ctx: &JobContext, message_id: &str, result: Result<(), QueueError>) {
    match result {
        Ok(()) => {}
        Err(QueueError::StaleReceipt | QueueError::NotInFlight) => {
            ctx.stats.stale_receipts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%message_id, "receipt handle is stale; the message was redelivered elsewhere");
        }
        Err(e) => {
            ctx.stats.queue_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%message_id, error = %e, "queue call failed");
        }
    }
}

/// Copy the message to the dead-letter queue, then delete the original. The
/// original is never deleted before the copy was accepted.
async fn dead_letter(ctx: &JobContext, msg: &ReceivedMessage, why: &str) -> Result<(), QueueError> {
    let Some(dlq) = &ctx.dead_letter_queue else {
        ctx.stats.left.fetch_add(1, Ordering::Relaxed);
        tracing::error!(message_id = %msg.message_id, %why, "message should be dead-lettered but the queue has no dead-letter queue; leaving it");
        return Ok(());
    };
    let mut attributes = msg.attributes.clone();
    if attributes.len() < limits::MAX_ATTRIBUTES {
        let mut reason: String = why.chars().take(1024).collect();
        reason.retain(|c| c != '\0');
        attributes.insert(
            DEAD_LETTER_REASON_ATTRIBUTE.into(),
            AttributeValue::String(reason),
        );
    }
    let copy = OutgoingMessage {
        body: msg.body.clone(),
        attributes,
        delay: None,
        group_id: msg.group_id.clone(),
        // FIFO: the original id dedups a copy sent twice after a crash.
        dedup_id: msg.group_id.as_ref().map(|_| msg.message_id.clone()),
    };
    dlq.send(&copy).await?;
    ctx.queue.delete(&msg.receipt_handle).await?;
    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(message_id = %msg.message_id, %why, "message dead-lettered");
    Ok(())
}

/// Run `on-exit(msg, signal)` in a fresh process, bounded by the exit timeout.
async fn try_on_exit(ctx: &JobContext, msg: &ReceivedMessage, signal: i32, attempt: u32) -> bool {
    let Ok((policy, module, _)) = admit(ctx, msg) else {
        return false;
    };
    let call = CallKind::OnExit {
        signal: signal as u32,
    };
    let spawned = match ctx
        .forks
        .spawn(module, job_message(msg), call, policy.sandbox)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(on_exit_try = attempt, error = %e, "cannot start on-exit");
            return false;
        }
    };
    let pid = spawned.pid.as_raw();
    let mut end = spawned.end;
    match tokio::time::timeout(ctx.exit_timeout, &mut end).await {
        Ok(Ok(ProcessEnd {
            outcome: Some(Outcome::Ok),
            ..
        })) => {
            tracing::info!(on_exit_try = attempt, pid, "on-exit finished");
            true
        }
        Ok(Ok(end)) => {
            tracing::warn!(on_exit_try = attempt, pid, ?end, "on-exit failed");
            false
        }
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!(
                attempt,
                pid,
                timeout_s = ctx.exit_timeout.as_secs_f64(),
                "on-exit did not finish in time; killing it"
            );
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            false
        }
    }
}

/// The exit-handling sequence for one message. `worker` is the still-running
/// worker when the parent got the signal, `None` when the worker itself was
/// killed by it.
async fn exit_handling(
    ctx: &JobContext,
    msg: &ReceivedMessage,
    worker: Option<Spawned>,
    signal: i32,
) -> JobResult {
    let id = &msg.message_id;
    tracing::warn!(message_id = %id, signal, "exit handling");
    let hold = ctx.exit_timeout + Duration::from_secs(5);
    report_queue_error(
        ctx,
        id,
        ctx.queue.change_visibility(&msg.receipt_handle, hold).await,
    );
    if let Some(w) = &worker {
        w.signal_group(Signal::SIGSTOP);
        tracing::info!(message_id = %id, pid = w.pid.as_raw(), "worker suspended");
    }
    let mut cleaned = try_on_exit(ctx, msg, signal, 1).await;
    if !cleaned {
        if let Some(w) = &worker {
            tracing::warn!(message_id = %id, pid = w.pid.as_raw(), "killing the worker before the second on-exit try");
            w.signal_group(Signal::SIGKILL);
        }
        cleaned = try_on_exit(ctx, msg, signal, 2).await;
    }
    match fate::after_exit_handling(cleaned, ctx.retries_allowed) {
        ExitHandlingFate::Requeue => {
            let visibility = fate::requeue_visibility(ctx.long_poll);
            let r = ctx
                .queue
                .change_visibility(&msg.receipt_handle, visibility)
                .await;
            if r.is_ok() {
                ctx.stats.requeued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(message_id = %id, visibility_s = visibility.as_secs(), "message returned to the queue");
            }
            report_queue_error(ctx, id, r);
        }
        ExitHandlingFate::DeadLetter { why } => {
            let r = dead_letter(ctx, msg, &why).await;
            report_queue_error(ctx, id, r);
        }
    }
    if let Some(w) = worker {
        w.signal_group(Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), w.end).await;
    }
    JobResult {
        exit_handling_failed: !cleaned,
    }
}
