//! The jobs running now, in the worker parent: one entry per started
//! child, removed when its [`super::stats::InFlight`] guard drops. Served as
//! JSON at `GET /jobs.json` on the metrics address (with the totals so far), for
//! `wasm-jobs dashboard --worker`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One running job, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunningJob {
    /// The message's id.
    pub(crate) message_id: String,
    /// The queue it came from.
    pub(crate) queue: String,
    /// Its tenant.
    pub(crate) tenant: String,
    /// The module reference it runs.
    pub(crate) module: String,
    /// Its receive count: 1 on the first delivery.
    pub(crate) attempt: u32,
    /// The worker child's pid.
    pub(crate) pid: i32,
    /// When the child started, milliseconds since the Unix epoch.
    pub(crate) started_ms: u64,
}

/// The running jobs of one worker.
#[derive(Debug, Default)]
pub(crate) struct Running {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, RunningJob>>,
}

/// Removes its job from [`Running`] when dropped.
#[derive(Debug)]
pub(crate) struct Registered<'a> {
    running: &'a Running,
    key: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.running
            .jobs
            .lock()
            .expect("running jobs")
            .remove(&self.key);
    }
}

impl Running {
    /// Record `job` as running until the guard drops.
    pub(crate) fn add(&self, mut job: RunningJob) -> Registered<'_> {
        job.started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.jobs.lock().expect("running jobs").insert(key, job);
        Registered { running: self, key }
    }

    /// The jobs running now, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<RunningJob> {
        self.jobs
            .lock()
            .expect("running jobs")
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_listed_while_its_guard_lives() {
        let running = Running::default();
        let job = |id: &str| RunningJob {
            message_id: id.into(),
            queue: "q".into(),
            tenant: "acme".into(),
            module: "wc".into(),
            attempt: 1,
            pid: 7,
            started_ms: 0,
        };
        let a = running.add(job("a"));
        let b = running.add(job("b"));
        let ids = |r: &Running| {
            r.snapshot()
                .into_iter()
                .map(|j| j.message_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&running), ["a", "b"]);
        assert!(running.snapshot()[0].started_ms > 0);
        drop(a);
        assert_eq!(ids(&running), ["b"]);
        drop(b);
        assert!(running.snapshot().is_empty());
    }
}
