//! The jobs running now, in the worker parent: one entry per started
//! child, removed when its guard drops; and how calls ended, per queue. Served as
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

/// How the calls of one queue's messages ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ended {
    /// `run` returned ok.
    pub(crate) ok: u64,
    /// Anything else: retry, fatal, trap, timeout, crash.
    pub(crate) failed: u64,
}

/// The running jobs of one worker, and how the ended ones ended per queue.
#[derive(Debug, Default)]
pub(crate) struct Running {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, RunningJob>>,
    ended: Mutex<BTreeMap<String, Ended>>,
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

    /// Count a call of a `queue` message that ended, `ok` or not.
    pub(crate) fn ended(&self, queue: &str, ok: bool) {
        let mut ended = self.ended.lock().expect("ended jobs");
        // A worker serves a few queues: the name is copied once, not per job.
        if !ended.contains_key(queue) {
            ended.insert(queue.to_owned(), Ended::default());
        }
        let e = ended.get_mut(queue).expect("just made");
        if ok {
            e.ok += 1;
        } else {
            e.failed += 1;
        }
    }

    /// How calls ended so far, per queue.
    pub(crate) fn ended_by_queue(&self) -> BTreeMap<String, Ended> {
        self.ended.lock().expect("ended jobs").clone()
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
        running.ended("q", true);
        running.ended("q", false);
        running.ended("q", true);
        assert_eq!(running.ended_by_queue()["q"], Ended { ok: 2, failed: 1 });
    }
}
