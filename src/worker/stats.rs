//! Counters, histograms and gauges of one worker run, shared by the job
//! tasks, the heartbeat ticker, the demo's progress line and the metrics
//! endpoint ([`super::metrics`] renders them in Prometheus text format).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A latency histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds for job durations and queue-to-start latencies.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) pairs, then the sum in seconds and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
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
pub type JobLabels = (String, String);

#[derive(Debug)]
pub struct WorkerStats {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    /// Left for redelivery: retry, trap, timeout, crash.
    pub left: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Returned to the queue by exit handling.
    pub requeued: AtomicU64,
    /// Received after an exit signal and released at once.
    pub released: AtomicU64,
    pub stale_receipts: AtomicU64,
    pub queue_errors: AtomicU64,
    pub heartbeat_calls: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    /// Failed jobs by (reason, trap kind): reason is retry, fatal, trap,
    /// timeout, crash, signal or unloadable; kind is set for traps.
    failed: Mutex<BTreeMap<(&'static str, String), u64>>,
    pub job_duration: Histogram,
    /// From the message's SentTimestamp to its worker child's start.
    pub queue_to_start: Histogram,
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
            failed: Mutex::new(BTreeMap::new()),
            job_duration: Histogram::new(SECONDS_BUCKETS),
            queue_to_start: Histogram::new(SECONDS_BUCKETS),
            in_flight: Mutex::new(BTreeMap::new()),
            exit_to_settled: Mutex::new(Vec::new()),
        }
    }
}

/// Counts a job in the in-flight gauge until dropped.
pub struct InFlight {
    stats: Arc<WorkerStats>,
    labels: JobLabels,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.stats.in_flight.lock().unwrap().get_mut(&self.labels) {
            *n -= 1;
        }
    }
}

impl WorkerStats {
    pub fn job_started(self: &Arc<Self>, module: &str, tenant: &str) -> InFlight {
        let labels = (module.to_owned(), tenant.to_owned());
        *self
            .in_flight
            .lock()
            .unwrap()
            .entry(labels.clone())
            .or_insert(0) += 1;
        InFlight {
            stats: Arc::clone(self),
            labels,
        }
    }

    pub fn in_flight(&self) -> Vec<(JobLabels, i64)> {
        self.in_flight
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn job_failed(&self, reason: &'static str, kind: &str) {
        *self
            .failed
            .lock()
            .unwrap()
            .entry((reason, kind.to_owned()))
            .or_insert(0) += 1;
    }

    pub fn failures(&self) -> Vec<((&'static str, String), u64)> {
        self.failed
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn record_exit_to_settled(&self, d: Duration) {
        self.exit_to_settled.lock().unwrap().push(d);
    }

    pub fn exit_to_settled(&self) -> Vec<Duration> {
        self.exit_to_settled.lock().unwrap().clone()
    }

    pub fn succeeded_count(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }
    pub fn left_count(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }
    pub fn dead_lettered_count(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Messages whose handling has ended, whatever the fate.
    pub fn finished(&self) -> u64 {
        [
            &self.succeeded,
            &self.left,
            &self.dead_lettered,
            &self.requeued,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
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
