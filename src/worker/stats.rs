//! Counters of one worker run, shared by the job tasks, the demo's progress
//! line and (later) the metrics endpoint.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
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
    /// Worker run times (start to end), for percentiles.
    latencies: Mutex<Vec<Duration>>,
}

impl WorkerStats {
    pub fn record_latency(&self, d: Duration) {
        self.latencies.lock().unwrap().push(d);
    }

    pub fn latencies(&self) -> Vec<Duration> {
        self.latencies.lock().unwrap().clone()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
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
