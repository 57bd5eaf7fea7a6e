//! Visibility heartbeats: while a message's job runs, its visibility is
//! extended to the visibility timeout every heartbeat interval. One ticker
//! serves all jobs and sends the messages due together in batches of 10.
//! A job holds a [`Lease`]; dropping it stops that message's heartbeats at
//! once. Never asks past SQS's 12-hour ceiling: such a lease is dropped from
//! the rounds with a warning.

use super::stats::WorkerStats;
use crate::queue::{Queue, QueueError, VisibilityChange, limits};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    receipt: String,
    message_id: String,
    first_received: Instant,
}

struct Inner {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    stats: Arc<WorkerStats>,
}

/// The heartbeat service of one worker. Dropping it stops the ticker.
pub(crate) struct Heartbeats {
    inner: Arc<Inner>,
    ticker: tokio::task::JoinHandle<()>,
}

/// One message's heartbeats; they stop when this is dropped.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Heartbeats {
    pub(crate) fn start(
        queue: Arc<dyn Queue>,
        interval: Duration,
        visibility: Duration,
        stats: Arc<WorkerStats>,
    ) -> Self {
        let inner = Arc::new(Inner {
            entries: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            stats,
        });
        let ticker = tokio::spawn(tick(Arc::clone(&inner), queue, interval, visibility));
        Heartbeats { inner, ticker }
    }

    /// Start heartbeats for a message received at `received`.
    pub(crate) fn lease(&self, message_id: &str, receipt: &str, received: Instant) -> Lease {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                id,
                Entry {
                    receipt: receipt.to_owned(),
                    message_id: message_id.to_owned(),
                    first_received: received,
                },
            );
        Lease {
            inner: Arc::clone(&self.inner),
            id,
        }
    }
}

async fn tick(inner: Arc<Inner>, queue: Arc<dyn Queue>, interval: Duration, visibility: Duration) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await; // the first tick is immediate; receive set the visibility
    loop {
        timer.tick().await;
        let due: Vec<(u64, String, String)> = {
            let mut entries = inner
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            entries.retain(|_, e| {
                let ceiling = e.first_received + limits::MAX_VISIBILITY;
                let fits = now + visibility <= ceiling;
                if !fits {
                    tracing::warn!(message_id = %e.message_id, "message reached SQS's 12-hour visibility ceiling; heartbeats stop and it will become visible again");
                }
                fits
            });
            entries
                .iter()
                .map(|(id, e)| (*id, e.receipt.clone(), e.message_id.clone()))
                .collect()
        };
        for chunk in due.chunks(limits::MAX_BATCH) {
            inner.stats.heartbeat_calls.inc();
            let results: Vec<Result<(), QueueError>> = if chunk.len() == 1 {
                let r = queue.change_visibility(&chunk[0].1, visibility).await;
                inner.stats.queue_call(queue.name(), &r);
                vec![r]
            } else {
                let changes: Vec<VisibilityChange> = chunk
                    .iter()
                    .map(|(_, r, _)| VisibilityChange {
                        receipt_handle: r.clone(),
                        timeout: visibility,
                    })
                    .collect();
                let r = queue.change_visibility_batch(&changes).await;
                inner.stats.queue_call(queue.name(), &r);
                match r {
                    Ok(rs) => {
                        let mut out: Vec<Result<(), QueueError>> = vec![Ok(()); chunk.len()];
                        for r in rs {
                            out[r.index] = r.result.map(|_| ());
                        }
                        out
                    }
                    Err(e) => vec![Err(e); chunk.len()],
                }
            };
            for ((id, _, message_id), result) in chunk.iter().zip(results) {
                if result.is_err()
                    && !inner
                        .entries
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .contains_key(id)
                {
                    continue; // the job ended while the call was under way
                }
                match result {
                    Ok(()) => {
                        inner.stats.heartbeats_sent.inc();
                        tracing::debug!(%message_id, visibility_s = visibility.as_secs(), "heartbeat");
                    }
                    Err(QueueError::StaleReceipt | QueueError::NotInFlight) => {
                        inner.stats.heartbeats_failed.inc();
                        inner.stats.stale_receipts.inc();
                        tracing::warn!(%message_id, "heartbeat: receipt handle is stale; the message may be delivered elsewhere");
                    }
                    Err(e) => {
                        inner.stats.heartbeats_failed.inc();
                        tracing::warn!(%message_id, error = %e, "heartbeat failed");
                    }
                }
            }
        }
    }
}
