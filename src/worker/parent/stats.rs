//! Counters, histograms and gauges of one worker run, in the worker parent
//! process: shared by the job tasks, the heartbeat ticker, the demo's progress
//! line and the metrics endpoint ([`super::metrics`] serves
//! [`WorkerStats::render`]). The metrics are `prometheus-client` types in one
//! registry, encoded in the Prometheus text format. Beside them, how each
//! queue's last call went, for `/readyz`.

use crate::queue::QueueError;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Bucket bounds (seconds) for job durations and queue-to-start latencies.
const SECONDS_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0,
];

/// Bucket bounds (seconds) for the worker's own latencies (a receive to a
/// start, an exit to its settling: a handover or a fork, a queue call or
/// two), 100 µs to 10 s.
const FAST_BUCKETS: [f64; 16] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0,
];

/// Labels of the failed-jobs counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    reason: &'static str,
    kind: String,
}

/// Label of the refused-messages counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    reason: &'static str,
}

/// Label of the process-starts counter: `warm` (a pre-forked child was
/// handed the call) or `forked` (forked for it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Start {
    how: &'static str,
}

/// Label of the queue-calls counter: the SQS action (`ReceiveMessage`,
/// `DeleteMessageBatch`, ...), whichever backend answered it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueCall {
    call: &'static str,
}

/// Labels of the jobs-in-flight gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Job {
    module: String,
    tenant: String,
}

/// Everything one worker run counts. Shared by its tasks through an `Arc`.
#[derive(Debug)]
pub struct WorkerStats {
    registry: Registry,
    pub(crate) received: Counter,
    pub(crate) succeeded: Counter,
    /// Left for redelivery: retry, trap, timeout, crash (not exported).
    pub(crate) left: Counter,
    pub(crate) dead_lettered: Counter,
    /// Returned to the queue by exit handling.
    pub(crate) requeued: Counter,
    /// Released at once on an exit signal (prefetched, or received after it).
    pub(crate) released: Counter,
    pub(crate) stale_receipts: Counter,
    pub(crate) queue_errors: Counter,
    /// Visibility-extension calls made (a batch of up to 10 counts once).
    pub(crate) heartbeat_calls: Counter,
    pub(crate) heartbeats_sent: Counter,
    pub(crate) heartbeats_failed: Counter,
    /// Shared-queue messages returned because their tenant was at its cap.
    pub(crate) over_cap: Counter,
    /// Fork servers started to replace one that died.
    pub(crate) fork_server_restarts: Counter,
    /// Outcome messages sent to `reply-to` queues, and those that failed.
    pub(crate) outcomes_sent: Counter,
    pub(crate) outcomes_failed: Counter,
    refused: Family<Refusal, Counter>,
    failed: Family<Failure, Counter>,
    starts: Family<Start, Counter>,
    queue_calls: Family<QueueCall, Counter>,
    pub(crate) job_duration: Histogram,
    /// From the message's SentTimestamp to its worker child's start.
    pub(crate) queue_to_start: Histogram,
    /// From the message's receive to its worker child's start.
    pub(crate) receive_to_start: Histogram,
    in_flight: Family<Job, Gauge>,
    /// The jobs running now, for `GET /jobs.json`.
    pub(crate) running: super::running::Running,
    /// From learning that a worker child exited to its message's fate being
    /// applied.
    exit_to_settled: Histogram,
    /// Each queue's last call: `Some(why)` if it failed.
    queues: Mutex<BTreeMap<String, Option<String>>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        let seconds = || Histogram::new(SECONDS_BUCKETS);
        let s = WorkerStats {
            registry: Registry::with_prefix("wasm_jobs"),
            received: Counter::default(),
            succeeded: Counter::default(),
            left: Counter::default(),
            dead_lettered: Counter::default(),
            requeued: Counter::default(),
            released: Counter::default(),
            stale_receipts: Counter::default(),
            queue_errors: Counter::default(),
            heartbeat_calls: Counter::default(),
            heartbeats_sent: Counter::default(),
            heartbeats_failed: Counter::default(),
            over_cap: Counter::default(),
            fork_server_restarts: Counter::default(),
            outcomes_sent: Counter::default(),
            outcomes_failed: Counter::default(),
            refused: Family::default(),
            failed: Family::default(),
            starts: Family::default(),
            queue_calls: Family::default(),
            job_duration: seconds(),
            queue_to_start: seconds(),
            receive_to_start: Histogram::new(FAST_BUCKETS),
            in_flight: Family::default(),
            running: super::running::Running::default(),
            exit_to_settled: Histogram::new(FAST_BUCKETS),
            queues: Mutex::new(BTreeMap::new()),
        };
        s.registered()
    }
}

/// Counts a job in the in-flight gauge until dropped.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl WorkerStats {
    /// Register every exported metric (in the order of the exposition).
    /// Counter names get their `_total` from the encoder; the help gets its
    /// full stop.
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "messages_received",
            "Messages received from the queue",
            self.received.clone(),
        );
        r.register(
            "jobs_succeeded",
            "Jobs whose run returned ok (message deleted)",
            self.succeeded.clone(),
        );
        r.register(
            "jobs_failed",
            "Jobs that did not succeed, by reason (retry, fatal, trap, timeout, crash, signal, unloadable, refused, not_started) and trap kind",
            self.failed.clone(),
        );
        r.register(
            "messages_refused",
            "Messages refused at admission and dead-lettered, by reason (tenant_mismatch, bad_signature, policy, module, reply_to)",
            self.refused.clone(),
        );
        r.register(
            "over_cap_returned",
            "Shared-queue messages made visible again because their tenant was at its cap",
            self.over_cap.clone(),
        );
        r.register(
            "process_starts",
            "Worker children started, by how: warm (pre-forked, handed the call) or forked (for the call)",
            self.starts.clone(),
        );
        r.register(
            "queue_calls",
            "Calls made to the queues (and their dead-letter queues), by SQS action; a batch counts once",
            self.queue_calls.clone(),
        );
        r.register(
            "outcomes_sent",
            "Outcome messages sent to the reply-to queues of messages that ended for good",
            self.outcomes_sent.clone(),
        );
        r.register(
            "outcomes_failed",
            "Outcome messages that could not be sent (logged; the outcome is lost)",
            self.outcomes_failed.clone(),
        );
        r.register(
            "fork_server_restarts",
            "Fork servers started to replace one that died",
            self.fork_server_restarts.clone(),
        );
        r.register(
            "dead_lettered",
            "Messages copied to the dead-letter queue by the worker",
            self.dead_lettered.clone(),
        );
        r.register(
            "requeued_on_signal",
            "Messages returned to the queue by exit handling",
            self.requeued.clone(),
        );
        r.register(
            "released_on_signal",
            "Messages released at once on an exit signal: prefetched and not started, or received after it",
            self.released.clone(),
        );
        r.register(
            "heartbeat_calls",
            "Visibility-extension calls (a batch counts once)",
            self.heartbeat_calls.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Message visibilities extended",
            self.heartbeats_sent.clone(),
        );
        r.register(
            "heartbeats_failed",
            "Visibility extensions that failed",
            self.heartbeats_failed.clone(),
        );
        r.register(
            "queue_errors",
            "Queue calls that failed",
            self.queue_errors.clone(),
        );
        r.register(
            "stale_receipts",
            "Queue calls refused for a stale receipt handle",
            self.stale_receipts.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Worker child run time, fork to exit",
            self.job_duration.clone(),
        );
        r.register(
            "queue_to_start_seconds",
            "From the message's SentTimestamp to its worker child's start",
            self.queue_to_start.clone(),
        );
        r.register(
            "receive_to_start_seconds",
            "From receiving a message to its worker child's start: admission, waiting for a worker slot (prefetched messages), the handover to a warm child or a fork",
            self.receive_to_start.clone(),
        );
        r.register(
            "jobs_in_flight",
            "Worker children running now, by module and tenant",
            self.in_flight.clone(),
        );
        r.register(
            "exit_to_settled_seconds",
            "From a worker child's exit to its message's fate being applied",
            self.exit_to_settled.clone(),
        );
        self
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the encoder only passes its errors on.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn job_started(&self, module: &str, tenant: &str) -> InFlight {
        let labels = Job {
            module: module.to_owned(),
            tenant: tenant.to_owned(),
        };
        let gauge = self.in_flight.get_or_create_owned(&labels);
        gauge.inc();
        InFlight(gauge)
    }

    /// What `GET /jobs.json` serves: the running jobs and the totals so far.
    pub(crate) fn jobs_json(&self) -> String {
        serde_json::json!({
            "running": self.running.snapshot(),
            "totals": {
                "received": self.received.get(),
                "succeeded": self.succeeded.get(),
                "left_for_redelivery": self.left.get(),
                "dead_lettered": self.dead_lettered.get(),
                "requeued_on_signal": self.requeued.get(),
            },
            "by_queue": self.running.ended_by_queue(),
        })
        .to_string()
    }

    /// Jobs of `module` for `tenant` running now.
    pub fn in_flight(&self, module: &str, tenant: &str) -> i64 {
        let labels = Job {
            module: module.to_owned(),
            tenant: tenant.to_owned(),
        };
        self.in_flight.get(&labels).map_or(0, |g| g.get())
    }

    pub(crate) fn job_failed(&self, reason: &'static str, kind: &str) {
        let labels = Failure {
            reason,
            kind: kind.to_owned(),
        };
        self.failed.get_or_create(&labels).inc();
    }

    /// Count a message refused at admission.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Refusal { reason }).inc();
    }

    /// Count a worker child's start (see `process_starts`).
    pub(crate) fn process_started(&self, warm: bool) {
        let how = if warm { "warm" } else { "forked" };
        self.starts.get_or_create(&Start { how }).inc();
    }

    /// Count one call to a queue (see `queue_calls`).
    pub(crate) fn queue_called(&self, call: &'static str) {
        self.queue_calls.get_or_create(&QueueCall { call }).inc();
    }

    pub(crate) fn record_exit_to_settled(&self, d: Duration) {
        self.exit_to_settled.observe(d.as_secs_f64());
    }

    /// Note how a call to `queue` went, for readiness: its attributes and
    /// dead-letter queue read at start, each receive and each heartbeat call (one of these runs
    /// whether the worker is idle or busy). A stale receipt is an answer
    /// from the queue, not a failure to reach it.
    pub(crate) fn queue_call<T>(&self, queue: &str, result: &Result<T, QueueError>) {
        let failure = match result {
            Ok(_) | Err(QueueError::StaleReceipt | QueueError::NotInFlight) => None,
            Err(e) => Some(e.to_string()),
        };
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.get_mut(queue) {
            Some(last) => *last = failure,
            None => {
                queues.insert(queue.to_owned(), failure);
            }
        }
    }

    /// `Ok` once some queue call was made and every queue's last call
    /// succeeded; else why not.
    pub(crate) fn queues_reached(&self) -> Result<(), String> {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if queues.is_empty() {
            return Err("no queue has been reached yet".into());
        }
        match queues.iter().find_map(|(q, why)| Some((q, why.as_ref()?))) {
            Some((queue, why)) => Err(format!("the last call to queue {queue} failed: {why}")),
            None => Ok(()),
        }
    }

    /// Jobs that succeeded (message deleted).
    pub fn succeeded_count(&self) -> u64 {
        self.succeeded.get()
    }
    pub(crate) fn left_count(&self) -> u64 {
        self.left.get()
    }
    pub(crate) fn dead_lettered_count(&self) -> u64 {
        self.dead_lettered.get()
    }
    /// Visibility-extension calls made so far (a batch counts once).
    pub fn heartbeat_calls(&self) -> u64 {
        self.heartbeat_calls.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_gauge_follows_guards() {
        let s = WorkerStats::default();
        let a = s.job_started("wc", "acme");
        let b = s.job_started("wc", "acme");
        assert_eq!(s.in_flight("wc", "acme"), 2);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight("wc", "acme"), 0);
        assert_eq!(s.in_flight("other", "acme"), 0);
    }

    #[test]
    fn process_starts_are_counted_by_how() {
        let s = WorkerStats::default();
        assert!(!s.render().contains("wasm_jobs_process_starts_total{"));
        s.process_started(true);
        s.process_started(true);
        s.process_started(false);
        let text = s.render();
        assert!(
            text.contains("wasm_jobs_process_starts_total{how=\"warm\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("wasm_jobs_process_starts_total{how=\"forked\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn exit_to_settled_is_a_bounded_histogram() {
        let s = WorkerStats::default();
        for _ in 0..10_000 {
            s.record_exit_to_settled(Duration::from_micros(700));
        }
        s.record_exit_to_settled(Duration::from_secs(60));
        let text = s.render();
        assert!(text.contains("# TYPE wasm_jobs_exit_to_settled_seconds histogram\n"));
        assert!(text.contains("wasm_jobs_exit_to_settled_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("wasm_jobs_exit_to_settled_seconds_bucket{le=\"0.001\"} 10000\n"));
        assert!(text.contains("wasm_jobs_exit_to_settled_seconds_bucket{le=\"10\"} 10000\n"));
        assert!(text.contains("wasm_jobs_exit_to_settled_seconds_bucket{le=\"+Inf\"} 10001\n"));
        assert!(text.contains("wasm_jobs_exit_to_settled_seconds_count 10001\n"));
    }

    #[test]
    fn readiness_follows_each_queues_last_call() {
        let s = WorkerStats::default();
        assert!(s.queues_reached().is_err(), "nothing reached yet");
        s.queue_call("a", &Ok(()));
        s.queue_call::<()>("b", &Err(QueueError::StaleReceipt));
        assert_eq!(s.queues_reached(), Ok(()));
        s.queue_call::<()>("b", &Err(QueueError::Transient("refused".into())));
        let why = s.queues_reached().unwrap_err();
        assert!(why.contains("queue b") && why.contains("refused"), "{why}");
        s.queue_call("a", &Ok(()));
        assert!(s.queues_reached().is_err(), "b has not answered since");
        s.queue_call("b", &Ok(()));
        assert_eq!(s.queues_reached(), Ok(()));
    }
}
