//! Settling messages, in the worker parent: what every job task shares
//! ([`JobContext`], [`Delivery`]) and the queue side of a fate: delete,
//! leave, make visible later, or dead-letter (copy, then delete). Used by
//! [`super::job`] and [`super::exit`], which do not use each other's insides.

use super::admit::{self, QueueTenant, Sanitized};
use super::deletes::Deletes;
use super::fate::{self, Fate, WorkerEnd};
use super::forks::ForkServers;
use super::heartbeat::Heartbeats;
use super::reply::{About, Ending, Replies, ReplyTo, Told};
use super::slots::Slots;
use super::stats::WorkerStats;
use crate::contract::JobMessage;
use crate::outcome::Outcome;
use crate::policy::Policies;
use crate::queue::{AttributeValue, OutgoingMessage, Queue, QueueError, ReceivedMessage, limits};
use crate::trace_context::TraceContext;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One queue the worker serves, with what it needs to settle its messages.
pub(crate) struct Source {
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) dead_letter_queue: Option<Arc<dyn Queue>>,
    pub(crate) tenant: QueueTenant,
    pub(crate) retries_allowed: bool,
    /// A FIFO queue: never prefetched, so its messages start in order.
    pub(crate) fifo: bool,
    /// The redrive policy's maxReceiveCount: the receive after it moves a
    /// message to the dead-letter queue.
    pub(crate) max_receives: Option<u32>,
    pub(crate) long_poll: Duration,
    pub(crate) heartbeats: Heartbeats,
    pub(crate) deletes: Deletes,
}

/// What every job task shares.
pub(crate) struct JobContext {
    pub(crate) forks: Arc<ForkServers>,
    pub(crate) modules: admit::Modules,
    pub(crate) policies: Policies,
    pub(crate) slots: Slots,
    pub(crate) exit_timeout: Duration,
    pub(crate) exit_signal: watch::Receiver<Option<i32>>,
    pub(crate) stats: Arc<WorkerStats>,
    /// Where outcomes go ([`reply`]).
    pub(crate) replies: Replies,
}

/// A received message on its way through the worker.
pub(crate) struct Delivery {
    pub(crate) source: Arc<Source>,
    pub(crate) msg: ReceivedMessage,
    /// The attributes as the job sees them.
    pub(crate) attributes: Sanitized,
    pub(crate) received: Instant,
    /// Where its outcome goes, once admission has checked its `reply-to`.
    pub(crate) reply: Option<ReplyTo>,
    /// The job's span under the sender's `traceparent`, if it sent one.
    pub(crate) trace: TraceContext,
}

/// How a job task ended, for the worker's own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct JobResult {
    /// `on-exit` failed twice and the message was dead-lettered.
    pub(crate) exit_handling_failed: bool,
}

impl JobContext {
    /// The exit signal, once one has come (never, if the run loop is gone
    /// without one).
    pub(super) async fn exit_signalled(&self) -> i32 {
        let mut exit_signal = self.exit_signal.clone();
        let signal = exit_signal
            .wait_for(Option::is_some)
            .await
            .map(|signal| (*signal).unwrap_or(libc::SIGTERM));
        match signal {
            Ok(signal) => signal,
            Err(_) => std::future::pending().await,
        }
    }

    /// Fork a process that makes `call` for this admitted message: the
    /// digest, tenant and sandbox decided at admission. If `stop` comes
    /// while the call waits for its module's compile, it is not started
    /// ([`super::forks::Starting::started`]).
    pub(super) async fn spawn(
        &self,
        d: &Delivery,
        a: &super::admit::Admitted,
        call: crate::worker::protocol::CallKind,
        stop: impl Future<Output = ()>,
    ) -> Result<super::forks::Spawned, super::forks::SpawnError> {
        let policy = a.policy.sandbox.clone();
        let message = d.job_message();
        let starting = (self.forks)
            .spawn(
                a.module.clone(),
                &a.tenant,
                message,
                call,
                policy,
                d.trace.clone(),
            )
            .await?;
        let spawned = starting.started(stop).await?;
        self.stats.process_started(spawned.warm);
        Ok(spawned)
    }
}

impl Delivery {
    /// Make the message visible again as a requeue does
    /// ([`fate::requeue_visibility`]): the visibility it was given, and
    /// what the queue said.
    pub(crate) async fn requeue(&self) -> (Duration, Result<(), QueueError>) {
        let visibility = fate::requeue_visibility(self.source.long_poll);
        let r = self
            .source
            .queue
            .change_visibility(&self.msg.receipt_handle, visibility)
            .await;
        (visibility, r)
    }

    /// Which receive this is, among those the queue allows.
    pub(crate) fn attempt(&self) -> fate::Attempt {
        fate::Attempt {
            number: self.msg.receive_count,
            allowed: self.source.max_receives,
        }
    }

    /// The message as the job sees it (sanitized attributes).
    pub(crate) fn job_message(&self) -> JobMessage {
        JobMessage {
            id: self.msg.message_id.clone(),
            body: self.msg.body.clone(),
            attributes: self
                .attributes
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.as_text()))
                .collect(),
            receive_count: self.msg.receive_count,
        }
    }
}

/// Decide and apply the fate of a message that never ran.
pub(super) async fn never_ran(ctx: &JobContext, d: &Delivery, end: &WorkerEnd) {
    record_failure(ctx, end);
    let fate = fate::on_attempt(fate::decide(end), d.attempt());
    apply(ctx, d, fate, &Ending::of(end, None, None)).await;
}

/// Tell `d`'s sender how its message ended, if it asked ([`super::reply`]).
pub(super) async fn tell(
    ctx: &JobContext,
    d: &Delivery,
    told: Told,
    reason: Option<&str>,
    e: &Ending,
) {
    if let Some(reply) = &d.reply {
        let about = About {
            msg: &d.msg,
            queue: d.source.queue.name(),
            trace_id: &d.trace.trace_id,
        };
        ctx.replies.tell(reply, about, told, reason, e).await;
    }
}

impl Source {
    /// Whether `receive_count` is the last receive the redrive policy
    /// allows: a message left now is dead-lettered by the queue next.
    pub(crate) fn last_receive(&self, receive_count: u32) -> bool {
        self.max_receives.is_some_and(|max| receive_count >= max)
    }
}

/// Count a failed job by reason (and trap kind) for the metrics.
pub(super) fn record_failure(ctx: &JobContext, end: &WorkerEnd) {
    let (reason, kind) = match end {
        WorkerEnd::Reported(Outcome::Ok) => return,
        WorkerEnd::Reported(Outcome::Retry { .. }) => ("retry", String::new()),
        WorkerEnd::Reported(Outcome::Fatal { .. }) => ("fatal", String::new()),
        WorkerEnd::Reported(Outcome::Trap { kind, .. }) => ("trap", kind.label().to_owned()),
        WorkerEnd::Reported(Outcome::Timeout { .. }) | WorkerEnd::Overran(_) => {
            ("timeout", String::new())
        }
        WorkerEnd::Reported(Outcome::OnExitFailed { .. }) | WorkerEnd::ExitCode(_) => {
            ("crash", String::new())
        }
        WorkerEnd::Killed(_) | WorkerEnd::Lost => ("signal", String::new()),
        WorkerEnd::Unloadable(_) => ("unloadable", String::new()),
        WorkerEnd::Refused(_) => ("refused", String::new()),
        WorkerEnd::NotStarted(_) => ("not_started", String::new()),
    };
    ctx.stats.job_failed(reason, &kind);
}

/// Act on a fate decided for a message whose worker ended on its own;
/// `ending` is how, for its outcome message. An outcome is sent before the
/// message is deleted ([`reply`]).
pub(super) async fn apply(ctx: &JobContext, d: &Delivery, fate: Fate, ending: &Ending) {
    let (id, queue, receipt) = (&d.msg.message_id, &d.source.queue, &d.msg.receipt_handle);
    let last = d.source.last_receive(d.msg.receive_count);
    match &fate {
        Fate::Delete => tell(ctx, d, Told::Ok, None, ending).await,
        Fate::Leave { why } | Fate::RetryAfter { why, .. } | Fate::Redeliver { why, .. }
            if last =>
        {
            // Only a passing failure gets here on the last receive
            // (`fate::on_attempt`): the queue moves it next.
            tell(ctx, d, Told::RetriesExhausted, Some(why), ending).await;
        }
        _ => {}
    }
    let result = match fate {
        Fate::Delete => {
            let r = d.source.deletes.delete(receipt).await;
            if r.is_ok() {
                ctx.stats.succeeded.inc();
                tracing::info!(message_id = %id, run_ms = ending.run_ms(), "job succeeded; message deleted");
            }
            r
        }
        Fate::Leave { why } => {
            ctx.stats.left.inc();
            tracing::warn!(message_id = %id, %why, "job did not succeed; leaving the message for redelivery");
            Ok(())
        }
        Fate::RetryAfter { delay, why } => {
            ctx.stats.left.inc();
            let delay = delay.min(limits::MAX_VISIBILITY);
            tracing::info!(message_id = %id, %why, delay_s = delay.as_secs(), "job asked for a retry");
            queue.change_visibility(receipt, delay).await
        }
        Fate::Redeliver { delay, why } => {
            ctx.stats.left.inc();
            tracing::warn!(message_id = %id, %why, delay_ms = delay.as_millis() as u64, "job could not start; the message is left for redelivery");
            queue.change_visibility(receipt, delay).await
        }
        Fate::DeadLetter { why } => {
            let told = match ending.reported() {
                Some(Outcome::Fatal { reason }) => (Told::Fatal, reason.as_str()),
                _ => (Told::DeadLettered, why.as_str()),
            };
            dead_letter(ctx, d, &why, told, ending).await
        }
        Fate::OutOfAttempts { why } => {
            dead_letter(ctx, d, &why, (Told::RetriesExhausted, &why), ending).await
        }
        Fate::ExitHandling { signal } => {
            tracing::error!(signal, "exit handling is decided by the caller");
            Ok(())
        }
    };
    report_queue_error(ctx, id, result);
}

pub(super) fn report_queue_error(
    ctx: &JobContext,
    message_id: &str,
    result: Result<(), QueueError>,
) {
    match result {
        Ok(()) => {}
        Err(QueueError::StaleReceipt | QueueError::NotInFlight) => {
            ctx.stats.stale_receipts.inc();
            tracing::warn!(%message_id, "receipt handle is stale; the message was redelivered elsewhere");
        }
        Err(e) => {
            ctx.stats.queue_errors.inc();
            tracing::error!(%message_id, error = %e, "queue call failed");
        }
    }
}

/// Copy the message to the dead-letter queue, tell its sender (`told`,
/// with its reason, and `ending`), then delete the original. The original
/// is never deleted before the copy was accepted. The copy carries the
/// sanitized attributes (and a shared queue's signing attributes), then,
/// while there is room, why, the original message id, when its first
/// attempt began and when it failed for the last time.
pub(super) async fn dead_letter(
    ctx: &JobContext,
    d: &Delivery,
    why: &str,
    told: (Told, &str),
    ending: &Ending,
) -> Result<(), QueueError> {
    let msg = &d.msg;
    let Some(dlq) = &d.source.dead_letter_queue else {
        ctx.stats.left.inc();
        tracing::error!(message_id = %msg.message_id, %why, "message should be dead-lettered but the queue has no dead-letter queue; leaving it");
        return Ok(());
    };
    let mut attributes = d.attributes.attributes.clone();
    for (k, v) in &d.attributes.signing {
        if attributes.len() + 1 < limits::MAX_ATTRIBUTES {
            attributes.insert(k.clone(), v.clone());
        }
    }
    let mut reason: String = why.chars().take(1024).collect();
    reason.retain(|c| c != '\0');
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let about = [
        (admit::DEAD_LETTER_REASON_ATTRIBUTE, Some(reason)),
        (admit::ORIGINAL_ID_ATTRIBUTE, Some(msg.message_id.clone())),
        (
            admit::FIRST_ATTEMPT_ATTRIBUTE,
            (msg.first_received_ms > 0).then(|| crate::units::rfc3339(msg.first_received_ms)),
        ),
        (
            admit::LAST_FAILURE_ATTRIBUTE,
            Some(crate::units::rfc3339(now_ms)),
        ),
    ];
    // In this order while there is room (a queue takes 10 attributes).
    for (name, value) in about {
        if let Some(value) = value
            && attributes.len() < limits::MAX_ATTRIBUTES
        {
            attributes.insert(name.into(), AttributeValue::String(value));
        }
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
    tell(ctx, d, told.0, Some(told.1), ending).await;
    d.source.deletes.delete(&msg.receipt_handle).await?;
    ctx.stats.dead_lettered.inc();
    tracing::warn!(message_id = %msg.message_id, %why, "message dead-lettered");
    Ok(())
}
