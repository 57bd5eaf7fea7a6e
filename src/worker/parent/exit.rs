//! Exit handling, in the worker parent: the reference dispatcher's sequence
//! for a message whose job was stopped by a signal (the worker's own exit
//! signal, a child killed by one, or a child lost with its fork server).
//! Extend the message's visibility, suspend the worker's group, call
//! `on-exit` in a fresh process with the same module digest `run` used
//! (twice at most, killing the worker before the second try), requeue or
//! dead-letter ([`fate::after_exit_handling`]), then kill the group.

use super::admit::Admitted;
use super::fate::{self, ExitHandlingFate};
use super::forks::{ProcessEnd, Spawned};
use super::reply::{Ending, Told};
use super::settle::{Delivery, JobContext, JobResult, dead_letter, report_queue_error, tell};
use crate::outcome::Outcome;
use crate::worker::protocol::CallKind;
use nix::sys::signal::Signal;
use std::time::Duration;

/// Run `on-exit(msg, signal)` in a fresh process, bounded by the exit timeout.
async fn try_on_exit(
    ctx: &JobContext,
    d: &Delivery,
    a: &Admitted,
    signal: i32,
    attempt: u32,
) -> bool {
    let call = CallKind::OnExit {
        signal: signal as u32,
    };
    // `on-exit` is what a stop waits for: it is never cancelled.
    let spawned = ctx.spawn(d, a, call, std::future::pending()).await;
    let mut spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(on_exit_try = attempt, error = %e, "cannot start on-exit");
            return false;
        }
    };
    let pid = spawned.pid.as_raw();
    match tokio::time::timeout(ctx.exit_timeout, &mut spawned.end).await {
        Ok(Ok(ProcessEnd {
            outcome: Some(Outcome::Ok),
            ..
        })) => {
            tracing::info!(on_exit_try = attempt, pid, "on-exit finished");
            true
        }
        Ok(Ok(end)) => {
            tracing::warn!(on_exit_try = attempt, pid, status = ?end.status, outcome = ?end.outcome.map(|o| o.to_string()), "on-exit failed");
            false
        }
        Ok(Err(_)) => {
            tracing::warn!(
                on_exit_try = attempt,
                pid,
                "on-exit was lost with its fork server"
            );
            false
        }
        Err(_) => {
            tracing::warn!(
                on_exit_try = attempt,
                pid,
                timeout_s = ctx.exit_timeout.as_secs_f64(),
                "on-exit did not finish in time; killing it"
            );
            spawned.signal_group(Signal::SIGKILL).await;
            false
        }
    }
}

/// The exit-handling sequence for one message. `worker` is the still-running
/// worker when the parent got the signal, `None` when the worker itself was
/// killed by it (or lost).
pub(super) async fn handle(
    ctx: &JobContext,
    d: &Delivery,
    a: &Admitted,
    worker: Option<Spawned>,
    signal: i32,
) -> JobResult {
    let (id, queue, receipt) = (&d.msg.message_id, &d.source.queue, &d.msg.receipt_handle);
    tracing::warn!(message_id = %id, signal, "exit handling");
    let hold = ctx.exit_timeout * 2 + Duration::from_secs(5);
    report_queue_error(ctx, id, queue.change_visibility(receipt, hold).await);
    if let Some(w) = &worker {
        w.signal_group(Signal::SIGSTOP).await;
        tracing::info!(message_id = %id, pid = w.pid.as_raw(), "worker suspended");
    }
    let mut cleaned = try_on_exit(ctx, d, a, signal, 1).await;
    if !cleaned {
        if let Some(w) = &worker {
            tracing::warn!(message_id = %id, pid = w.pid.as_raw(), "killing the worker before the second on-exit try");
            w.signal_group(Signal::SIGKILL).await;
        }
        cleaned = try_on_exit(ctx, d, a, signal, 2).await;
    }
    match fate::after_exit_handling(cleaned, d.source.retries_allowed) {
        ExitHandlingFate::Requeue => {
            if d.source.last_receive(d.msg.receive_count) {
                let why = format!("stopped by signal {signal} on its last allowed receive");
                tell(
                    ctx,
                    d,
                    Told::RetriesExhausted,
                    Some(&why),
                    &Ending::stopped(signal),
                )
                .await;
            }
            let visibility = fate::requeue_visibility(d.source.long_poll);
            let r = queue.change_visibility(receipt, visibility).await;
            if r.is_ok() {
                ctx.stats.requeued.inc();
                tracing::info!(message_id = %id, visibility_s = visibility.as_secs(), "message returned to the queue");
            }
            report_queue_error(ctx, id, r);
        }
        ExitHandlingFate::DeadLetter { why } => {
            let told = (Told::DeadLettered, why.as_str());
            let r = dead_letter(ctx, d, &why, told, &Ending::stopped(signal)).await;
            report_queue_error(ctx, id, r);
        }
    }
    if let Some(mut w) = worker {
        w.signal_group(Signal::SIGKILL).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut w.end).await;
    }
    JobResult {
        exit_handling_failed: !cleaned,
    }
}
