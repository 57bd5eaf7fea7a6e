//! Counters, histograms and gauges of one worker run, shared by the job
//! tasks, the heartbeat ticker, the demo's progress line and the metrics
//! endpoint ([`super::metrics`] renders them in Prometheus text format).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A latency histogram with fixed buckets (seconds).
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds for job durations and queue-to-start latencies.
pub(crate) const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0,
];

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) pairs, then the sum in seconds and the count.
    pub(crate) fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        (
            buckets,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// Labels of the jobs-in-flight gauge.
pub(crate) type JobLabels = (String, String);

/// Everything one worker run counts. Shared by its tasks through an `Arc`.
#[derive(Debug)]
pub struct WorkerStats {
    pub(crate) received: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    /// Left for redelivery: retry, trap, timeout, crash.
    pub(crate) left: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// Returned to the queue by exit handling.
    pub(crate) requeued: AtomicU64,
    /// Received after an exit signal and released at once.
    pub(crate) released: AtomicU64,
    pub(crate) stale_receipts: AtomicU64,
    pub(crate) queue_errors: AtomicU64,
    /// Visibility-extension calls made (a batch of up to 10 counts once).
    pub heartbeat_calls: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) heartbeats_failed: AtomicU64,
    /// Shared-queue messages returned because their tenant was at its cap.
    pub(crate) over_cap: AtomicU64,
    /// Fork servers started to replace one that died.
    pub(crate) fork_server_restarts: AtomicU64,
    /// Messages refused at admission, by kind (tenant_mismatch,
    /// bad_signature, policy, module).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed jobs by (reason, trap kind): reason is retry, fatal, trap,
    /// timeout, crash, signal or unloadable; kind is set for traps.
    failed: Mutex<BTreeMap<(&'static str, String), u64>>,
    pub(crate) job_duration: Histogram,
    /// From the message's SentTimestamp to its worker child's start.
    pub(crate) queue_to_start: Histogram,
    in_flight: Mutex<BTreeMap<JobLabels, i64>>,
    /// From learning that a worker child exited to its message's fate being
    /// applied, for the benchmark's percentiles.
    exit_to_settled: Mutex<Vec<Duration>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            received: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            left: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            released: AtomicU64::new(0),
            stale_receipts: AtomicU64::new(0),
            queue_errors: AtomicU64::new(0),
            heartbeat_calls: AtomicU64::new(0),
            heartbeats_sent: AtomicU64::new(0),
            heartbeats_failed: AtomicU64::new(0),
            over_cap: AtomicU64::new(0),
            fork_server_restarts: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(BTreeMap::new()),
            job_duration: Histogram::new(SECONDS_BUCKETS),
            queue_to_start: Histogram::new(SECONDS_BUCKETS),
            in_flight: Mutex::new(BTreeMap::new()),
            exit_to_settled: Mutex::new(Vec::new()),
        }
    }
}

/// Counts a job in the in-flight gauge until dropped.
pub(crate) struct InFlight {
    stats: Arc<WorkerStats>,
    labels: JobLabels,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self
            .stats
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&self.labels)
        {
            *n -= 1;
        }
    }
}

impl WorkerStats {
    pub(crate) fn job_started(self: &Arc<Self>, module: &str, tenant: &str) -> InFlight {
        let labels = (module.to_owned(), tenant.to_owned());
        *self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(labels.clone())
            .or_insert(0) += 1;
        InFlight {
            stats: Arc::clone(self),
            labels,
        }
    }

    /// Jobs running now by (module, tenant).
    pub fn in_flight(&self) -> Vec<((String, String), i64)> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(crate) fn job_failed(&self, reason: &'static str, kind: &str) {
        *self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((reason, kind.to_owned()))
            .or_insert(0) += 1;
    }

    /// Count a message refused at admission.
    pub(crate) fn refused(&self, kind: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(kind)
            .or_insert(0) += 1;
    }

    /// Refused messages by kind.
    pub(crate) fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    pub(crate) fn failures(&self) -> Vec<((&'static str, String), u64)> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(crate) fn record_exit_to_settled(&self, d: Duration) {
        self.exit_to_settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(d);
    }

    /// Every exit-to-settled latency so far (for the benchmark).
    pub fn exit_to_settled(&self) -> Vec<Duration> {
        self.exit_to_settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Jobs that succeeded (message deleted).
    pub fn succeeded_count(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }
    pub(crate) fn left_count(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }
    pub(crate) fn dead_lettered_count(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(buckets, vec![(0.01, 1), (0.1, 2), (1.0, 3)]);
        assert_eq!(count, 4);
        assert!((sum - 5.555).abs() < 1e-6);
    }

    #[test]
    fn in_flight_gauge_follows_guards() {
        let s = Arc::new(WorkerStats::default());
        let a = s.job_started("wc", "acme");
        let b = s.job_started("wc", "acme");
        assert_eq!(s.in_flight(), vec![(("wc".into(), "acme".into()), 2)]);
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), vec![(("wc".into(), "acme".into()), 0)]);
    }
}
