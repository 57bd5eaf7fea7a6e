//! Exit handling, in the worker parent: the reference dispatcher's sequence
//! for a message whose job was stopped by a signal (the worker's own exit
//! signal, a child killed by one, or a child lost with its fork server).
//! Extend the message's visibility, suspend the worker's group, call
//! `on-exit` in a fresh process with the same module digest `run` used
//! (twice at most, killing the worker before the second try), requeue,
//! dead-letter, or, when `on-exit` could not run for a passing reason,
//! leave the message for redelivery ([`fate::after_exit_handling`]), then
//! kill the group.

use super::admit::Admitted;
use super::fate::{self, ExitHandlingFate, OnExitTry};
use super::forks::{ProcessEnd, SpawnError, Spawned};
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
) -> OnExitTry {
    let call = CallKind::OnExit {
        signal: signal as u32,
    };
    // `on-exit` is what a stop waits for: it is never cancelled.
    let spawned = ctx.spawn(d, a, call, std::future::pending()).await;
    let mut spawned = match spawned {
        Ok(s) => s,
        Err(SpawnError::InvalidComponent(why)) => {
            tracing::error!(on_exit_try = attempt, error = %why, "cannot start on-exit");
            return OnExitTry::Failed;
        }
        Err(e) => {
            tracing::warn!(on_exit_try = attempt, error = %e, "cannot start on-exit now (a passing failure)");
            return OnExitTry::NotRun;
        }
    };
    let pid = spawned.pid.as_raw();
    match tokio::time::timeout(ctx.exit_timeout, &mut spawned.end).await {
        Ok(Ok(ProcessEnd {
            outcome: Some(Outcome::Ok),
            ..
        })) => {
            tracing::info!(on_exit_try = attempt, pid, "on-exit finished");
            OnExitTry::Finished
        }
        Ok(Ok(end)) => {
            tracing::warn!(on_exit_try = attempt, pid, status = ?end.status, outcome = ?end.outcome.map(|o| o.to_string()), "on-exit failed");
            OnExitTry::Failed
        }
        Ok(Err(_)) => {
            tracing::warn!(
                on_exit_try = attempt,
                pid,
                "on-exit was lost with its fork server"
            );
            OnExitTry::NotRun
        }
        Err(_) => {
            tracing::warn!(
                on_exit_try = attempt,
                pid,
                timeout_s = ctx.exit_timeout.as_secs_f64(),
                "on-exit did not finish in time; killing it"
            );
            spawned.signal_group(Signal::SIGKILL).await;
            OnExitTry::Failed
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
    let mut last = try_on_exit(ctx, d, a, signal, 1).await;
    if last != OnExitTry::Finished {
        if let Some(w) = &worker {
            tracing::warn!(message_id = %id, pid = w.pid.as_raw(), "killing the worker before the second on-exit try");
            w.signal_group(Signal::SIGKILL).await;
        }
        last = try_on_exit(ctx, d, a, signal, 2).await;
    }
    match fate::after_exit_handling(last, d.source.retries_allowed) {
        ExitHandlingFate::Requeue => {
            let why = format!("stopped by signal {signal} on its last allowed receive");
            if let Some(visibility) = give_back(ctx, d, signal, &why).await {
                ctx.stats.requeued.inc();
                tracing::info!(message_id = %id, visibility_s = visibility.as_secs(), "message returned to the queue");
            }
        }
        ExitHandlingFate::Redeliver { why } => {
            if let Some(visibility) = give_back(ctx, d, signal, &why).await {
                ctx.stats.left.inc();
                tracing::warn!(message_id = %id, %why, visibility_s = visibility.as_secs(), "message left for redelivery");
            }
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
        exit_handling_failed: last == OnExitTry::Failed,
    }
}

/// Make the message visible again (the requeue visibility), first telling
/// its sender, on its last allowed receive, that its retries are used up
/// (`why`). The visibility, when the queue took the change.
async fn give_back(ctx: &JobContext, d: &Delivery, signal: i32, why: &str) -> Option<Duration> {
    if d.source.last_receive(d.msg.receive_count) {
        tell(
            ctx,
            d,
            Told::RetriesExhausted,
            Some(why),
            &Ending::stopped(signal),
        )
        .await;
    }
    let (visibility, r) = d.requeue().await;
    let given = r.is_ok().then_some(visibility);
    report_queue_error(ctx, &d.msg.message_id, r);
    given
}
