//! One message's life, in the worker parent, flowing one way: received
//! (with its queue's tenant binding) → admitted once ([`admit`]) → a worker
//! slot → spawned → ended → [`fate::decide`] → applied ([`settle`]). Every
//! end goes through `fate`: a refusal, a spawn that failed, a child that
//! reported or crashed, one lost with its fork server, and one killed at the
//! hard limit. Exit handling after a signal lives in [`exit`].

use super::admit::{self, Admitted, NotAdmitted};
use super::exit;
use super::fate::{self, Fate, WorkerEnd};
use super::forks::{ProcessEnd, SpawnError, Spawned};
use super::reply::Ending;
use super::running::RunningJob;
use super::settle::{
    self, Delivery, JobContext, JobResult, apply, record_failure, report_queue_error,
};
use super::slots::{Slot, Ticket};
use crate::outcome::Outcome;
use crate::worker::protocol::CallKind;
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// Extra time a job gets past its own timeout before the parent kills it.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// "worker child ended": at info for an end that is not a success (its
/// message's fate follows at warn or info), at debug for a success, whose
/// one line at info is the success line after the delete (with `run_ms`):
/// a busy worker's log is a third as long.
fn log_end(end: &WorkerEnd, ran_for: Duration, output_bytes: Option<usize>) {
    let run_ms = ran_for.as_secs_f64() * 1e3;
    if matches!(end, WorkerEnd::Reported(Outcome::Ok)) {
        tracing::debug!(end = %end, run_ms, output_bytes, "worker child ended");
    } else {
        tracing::info!(end = %end, run_ms, output_bytes, "worker child ended");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Handle one received message to the end. `ticket` holds the tenant slot
/// its bound queue reserved before receiving it (none yet on a shared queue).
pub(crate) async fn handle(ctx: Arc<JobContext>, mut d: Delivery, mut ticket: Ticket) -> JobResult {
    let lease = d
        .source
        .heartbeats
        .lease(&d.msg.message_id, &d.msg.receipt_handle, d.received);
    let identified = admit::identify(
        &d.source.tenant,
        &d.msg.body,
        &d.msg.attributes,
        &ctx.policies,
        unix_now(),
    )
    .and_then(|tenant| {
        // Once the tenant is known its outcome can be told, even of a refusal.
        d.reply = ctx.replies.target(
            &tenant,
            ctx.policies.for_tenant(&tenant),
            &d.attributes.attributes,
            d.source.queue.name(),
        )?;
        Ok(tenant)
    });
    let admitted = match identified {
        Ok(tenant) => {
            admit::admit(
                tenant,
                &d.attributes.attributes,
                &ctx.policies,
                &ctx.modules,
            )
            .await
        }
        Err(refusal) => Err(refusal.into()),
    };
    if let (Ok(a), Some(reply)) = (&admitted, &mut d.reply) {
        reply.set_module(&a.module);
    }
    let a = match admitted {
        Ok(a) => a,
        Err(NotAdmitted::Refused(refusal)) => {
            drop((lease, ticket));
            tracing::warn!(message_id = %d.msg.message_id, reason = %refusal, kind = refusal.kind(), "message refused");
            ctx.stats.refused(refusal.kind());
            settle::never_ran(&ctx, &d, &WorkerEnd::Refused(refusal.to_string())).await;
            return JobResult::default();
        }
        Err(NotAdmitted::Unavailable(why)) => {
            drop((lease, ticket));
            let end = WorkerEnd::NotStarted(format!("the module registry failed: {why}"));
            settle::never_ran(&ctx, &d, &end).await;
            return JobResult::default();
        }
    };
    let span = tracing::info_span!(
        "job",
        message_id = %d.msg.message_id,
        module = %a.module.label,
        digest = %a.module.digest,
        tenant = %a.tenant,
        attempt = d.msg.receive_count,
        trace_id = %d.trace.trace_id,
        span_id = %d.trace.span_id,
        pid = tracing::field::Empty,
    );
    async move {
        if !ticket.claim_tenant(&a.tenant) {
            drop((lease, ticket));
            return over_cap(&ctx, &d).await;
        }
        let slot = tokio::select! {
            slot = ctx.slots.acquire(ticket) => slot,
            _ = ctx.exit_signalled() => {
                drop(lease);
                return release_unstarted(&ctx, &d, Unstarted::Prefetched).await;
            }
        };
        run(&ctx, &d, &a, lease, slot).await
    }
    .instrument(span)
    .await
}

/// Why a message's job had not started when the exit signal came.
enum Unstarted {
    /// It waited for a slot.
    Prefetched,
    /// Its call waited in the fork server for its module (a compile, a load
    /// from the artifact cache), and was cancelled.
    Cancelled,
}

/// Release a message whose job had not started when the exit signal came,
/// with the visibility of a requeue (`fate::requeue_visibility`).
async fn release_unstarted(ctx: &JobContext, d: &Delivery, why: Unstarted) -> JobResult {
    let (visibility, r) = d.requeue().await;
    if r.is_ok() {
        ctx.stats.released.inc();
        let visibility_s = visibility.as_secs();
        match why {
            Unstarted::Prefetched => {
                tracing::info!(
                    visibility_s,
                    "prefetched message released on the exit signal"
                )
            }
            Unstarted::Cancelled => tracing::info!(
                visibility_s,
                "message released on the exit signal before its job started (its module was still being prepared)"
            ),
        }
    }
    report_queue_error(ctx, &d.msg.message_id, r);
    JobResult::default()
}

/// A shared queue's message whose tenant is at its cap: make it visible
/// again after a short jittered delay (its receive count rises by one).
async fn over_cap(ctx: &JobContext, d: &Delivery) -> JobResult {
    let delay = Duration::from_millis(rand::random_range(1000..3000));
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "tenant at its concurrency cap; returning the message for later"
    );
    ctx.stats.over_cap.inc();
    let r = d
        .source
        .queue
        .change_visibility(&d.msg.receipt_handle, delay)
        .await;
    report_queue_error(ctx, &d.msg.message_id, r);
    JobResult::default()
}

/// Spawn the job, watch it, and settle the message. The worker slot is
/// given back once the message is settled, or as soon as the process has
/// ended when its delete may wait for a batch; exit handling keeps it
/// while `on-exit` runs.
async fn run(
    ctx: &JobContext,
    d: &Delivery,
    a: &Admitted,
    lease: super::heartbeat::Lease,
    slot: Slot,
) -> JobResult {
    // An exit signal while the call waits for its module's compile: do not
    // start it (a job that starts goes through exit handling).
    let stop = async {
        ctx.exit_signalled().await;
    };
    let spawned = ctx.spawn(d, a, CallKind::Run, stop).await;
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            drop(lease);
            let end = match e {
                SpawnError::Cancelled(_) => {
                    return release_unstarted(ctx, d, Unstarted::Cancelled).await;
                }
                SpawnError::InvalidComponent(why) => WorkerEnd::Unloadable(why),
                e @ (SpawnError::Passing(_) | SpawnError::ForkServerGone) => {
                    WorkerEnd::NotStarted(e.to_string())
                }
            };
            settle::never_ran(ctx, d, &end).await;
            return JobResult::default();
        }
    };
    tracing::Span::current().record("pid", spawned.pid.as_raw());
    // Debug: at info a job that succeeds is one line, its success line.
    tracing::debug!(warm = spawned.warm, "worker child started");
    let started = Instant::now();
    ctx.stats
        .receive_to_start
        .observe(started.duration_since(d.received).as_secs_f64());
    let _in_flight = ctx.stats.job_started(&a.module.label, &a.tenant);
    let _running = ctx.stats.running.add(RunningJob {
        message_id: d.msg.message_id.clone(),
        queue: d.source.queue.name().to_owned(),
        tenant: a.tenant.clone(),
        module: a.module.label.clone(),
        attempt: d.msg.receive_count,
        pid: spawned.pid.as_raw(),
        started_ms: 0,
    });
    if d.msg.sent_timestamp_ms > 0 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let waited = Duration::from_millis(now.saturating_sub(d.msg.sent_timestamp_ms));
        ctx.stats.queue_to_start.observe(waited.as_secs_f64());
    }
    let mut spawned: Spawned = spawned;
    let hard_limit = tokio::time::sleep(a.policy.sandbox.timeout + KILL_GRACE);
    tokio::pin!(hard_limit);
    let (mut output, mut http) = (None, None);
    let end = tokio::select! {
        // The end first: a job whose end has come is settled by it, even if
        // the exit signal came at the same moment.
        biased;
        ended = &mut spawned.end => {
            drop(lease);
            ctx.stats.job_duration.observe(started.elapsed().as_secs_f64());
            match ended {
                Ok(ProcessEnd { status, outcome, output: published, http: usage }) => {
                    (output, http) = (published, usage);
                    WorkerEnd::from_process(status, outcome)
                }
                Err(_) => WorkerEnd::Lost,
            }
        }
        signal = ctx.exit_signalled() => {
            drop(lease);
            return exit::handle(ctx, d, a, Some(spawned), signal).await;
        }
        _ = &mut hard_limit => {
            drop(lease);
            tracing::error!("worker outlived its timeout; killing its process group");
            spawned.signal_group(Signal::SIGKILL).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut spawned.end).await;
            WorkerEnd::Overran(a.policy.sandbox.timeout + KILL_GRACE)
        }
    };
    let ended_at = Instant::now();
    let ran_for = started.elapsed();
    log_end(&end, ran_for, output.as_ref().map(Vec::len));
    ctx.stats.running.ended(
        d.source.queue.name(),
        matches!(end, WorkerEnd::Reported(Outcome::Ok)),
    );
    record_failure(ctx, &end);
    match fate::on_attempt(fate::decide(&end), d.attempt()) {
        Fate::ExitHandling { signal } => exit::handle(ctx, d, a, None, signal).await,
        other => {
            // A delete that may wait for a batch gives the slot back first;
            // one that goes at once is done before the next job competes
            // with it for the CPU (measured: half the p99 exit-to-delete).
            let slot = (!d.source.deletes.may_wait()).then_some(slot);
            let ending = Ending::of(&end, output, Some(ran_for)).with_http(http);
            apply(ctx, d, other, &ending).await;
            drop(slot);
            ctx.stats.record_exit_to_settled(ended_at.elapsed());
            JobResult::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The levels of the lines `log_end` writes for `end`, logged as the
    /// binary logs, at debug.
    fn levels_of(end: WorkerEnd) -> Vec<String> {
        let lines: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = lines.clone();
        let subscriber = crate::logging::json_subscriber("debug", move || Sink(sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            log_end(&end, Duration::from_millis(3), None);
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["message"], "worker child ended", "{l}");
                assert_eq!(v["run_ms"], 3.0, "{l}");
                v["level"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_success_ends_at_debug_and_any_other_end_at_info() {
        assert_eq!(levels_of(WorkerEnd::Reported(Outcome::Ok)), ["DEBUG"]);
        assert_eq!(
            levels_of(WorkerEnd::Reported(Outcome::Fatal {
                reason: "no".into()
            })),
            ["INFO"]
        );
        assert_eq!(levels_of(WorkerEnd::Killed(9)), ["INFO"]);
        assert_eq!(levels_of(WorkerEnd::Lost), ["INFO"]);
    }
}
