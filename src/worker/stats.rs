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
    /// From learning that a worker child exited to its message's fate being
    /// applied (deleted, left, dead-lettered), for percentiles.
    exit_to_settled: Mutex<Vec<Duration>>,
}

impl WorkerStats {
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
