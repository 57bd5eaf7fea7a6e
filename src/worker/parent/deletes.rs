//! Batched deletes, in the worker parent: one batcher per served queue
//! gathers the deletes of jobs that ended and sends them as one
//! `DeleteMessageBatch` when 10 are waiting or the first has waited the
//! window (`--delete-window`), whichever comes first; with a window of zero
//! only deletes already waiting go together. A few batches may be under
//! way at once, so a slow queue does not hold the next batch back.
//!
//! The window is a trade: a busy worker's deletes cost one call per up to
//! 10 jobs, and each delete is late by up to the window. By default it is
//! zero on the embedded queue (a call is a local transaction of tens of
//! microseconds) and [`REMOTE_WINDOW`] on SQS (a call is a billed round
//! trip of milliseconds).
//!
//! Each caller awaits its own entry's result, so logs, counters and the
//! dead-letter order (copy, then delete) are as with single deletes. A
//! message whose delete is waiting is still invisible (its job has ended
//! and its lease was dropped; the visibility timeout is far longer than
//! the window); a crash in the window means the message is delivered
//! again, as with any crash before a delete.

use crate::queue::{Queue, QueueError, limits};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The default window for remote queues (SQS).
pub(crate) const REMOTE_WINDOW: Duration = Duration::from_millis(20);

/// Batches sent at once before the next one waits for one to finish.
const CALLS_IN_FLIGHT: usize = 4;

/// One delete waiting for its batch.
struct Pending {
    receipt: String,
    done: oneshot::Sender<Result<(), QueueError>>,
}

/// The delete batcher of one queue. Dropping it stops the batcher once the
/// deletes handed to it were sent.
pub(crate) struct Deletes {
    tx: mpsc::UnboundedSender<Pending>,
    window: Duration,
}

impl Deletes {
    /// Start batching deletes to `queue` with this window.
    pub(crate) fn start(queue: Arc<dyn Queue>, window: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(rx, queue, window));
        Deletes { tx, window }
    }

    /// Whether a delete may wait for others to share its batch.
    pub(crate) fn may_wait(&self) -> bool {
        !self.window.is_zero()
    }

    /// Delete the message received with `receipt`, in the next batch.
    pub(crate) async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            receipt: receipt.to_owned(),
            done,
        };
        if self.tx.send(pending).is_err() {
            return Err(QueueError::Other("the delete batcher has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(QueueError::Other("the delete batcher has stopped".into())))
    }
}

/// Gather batches and send them until every [`Deletes`] handle is gone.
async fn batch_loop(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    queue: Arc<dyn Queue>,
    window: Duration,
) {
    let mut calls = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < limits::MAX_BATCH {
            // What is already waiting joins at once.
            if let Ok(p) = rx.try_recv() {
                batch.push(p);
                continue;
            }
            // A zero window sends now: even a zero sleep would wait for the
            // timer's next millisecond tick.
            if window.is_zero() {
                break;
            }
            tokio::select! {
                next = rx.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        while calls.len() >= CALLS_IN_FLIGHT {
            calls.join_next().await;
        }
        calls.spawn(send(Arc::clone(&queue), batch));
    }
    while calls.join_next().await.is_some() {}
}

/// Send one batch (a single delete alone) and answer each entry.
async fn send(queue: Arc<dyn Queue>, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let p = batch.remove(0);
        let _ = p.done.send(queue.delete(&p.receipt).await);
        return;
    }
    let receipts: Vec<String> = batch.iter().map(|p| p.receipt.clone()).collect();
    match queue.delete_batch(&receipts).await {
        Ok(results) => {
            let mut answers: Vec<Option<Result<(), QueueError>>> = vec![None; batch.len()];
            for r in results {
                if let Some(slot) = answers.get_mut(r.index) {
                    *slot = Some(r.result.map(|_| ()));
                }
            }
            for (p, answer) in batch.into_iter().zip(answers) {
                let answer = answer.unwrap_or_else(|| {
                    Err(QueueError::Other(
                        "the queue's batch answer left this delete out".into(),
                    ))
                });
                let _ = p.done.send(answer);
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::embedded::EmbeddedStore;
    use crate::queue::{OutgoingMessage, QueueConfig, ReceiveRequest};

    /// An embedded queue with `n` messages received, and their receipts.
    async fn received(n: usize) -> (tempfile::TempDir, Arc<dyn Queue>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_queue("q", &QueueConfig::default()).unwrap();
        let queue: Arc<dyn Queue> = Arc::new(store.queue("q").unwrap());
        let mut receipts = Vec::new();
        for i in 0..n {
            queue
                .send(&OutgoingMessage::new(format!("m{i}")))
                .await
                .unwrap();
        }
        while receipts.len() < n {
            let req = ReceiveRequest {
                max_messages: 10,
                wait: Duration::ZERO,
                visibility_timeout: None,
            };
            let got = queue.receive(req).await.unwrap();
            receipts.extend(got.into_iter().map(|m| m.receipt_handle));
        }
        (dir, queue, receipts)
    }

    #[tokio::test]
    async fn deletes_made_together_go_in_batches_of_ten_and_each_gets_its_answer() {
        let (_dir, queue, receipts) = received(23).await;
        let stats = Arc::new(crate::worker::WorkerStats::default());
        let counted = super::super::counted::Counted::wrap(queue.clone(), &stats);
        let deletes = Arc::new(Deletes::start(counted, Duration::from_millis(200)));
        let mut tasks = JoinSet::new();
        // 24 deletes, the last a second delete of the first message.
        let all: Vec<String> = receipts.iter().chain(&receipts[..1]).cloned().collect();
        for r in all {
            let d = Arc::clone(&deletes);
            tasks.spawn(async move { d.delete(&r).await });
        }
        let mut stale = 0;
        while let Some(answer) = tasks.join_next().await {
            match answer.unwrap() {
                Ok(()) => {}
                Err(QueueError::StaleReceipt) => stale += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(stale, 1, "only the second delete of a message fails");
        let counts = queue.counts().await.unwrap();
        assert_eq!(counts.visible + counts.in_flight, 0);
        // Two full batches at once, then the last four after the window.
        let text = stats.render();
        assert!(
            text.contains("wasm_jobs_queue_calls_total{call=\"DeleteMessageBatch\"} 3\n"),
            "{text}"
        );
        assert!(!text.contains("call=\"DeleteMessage\""), "{text}");
    }

    #[tokio::test]
    async fn a_lone_delete_waits_out_the_window_then_goes_alone() {
        let (_dir, queue, receipts) = received(1).await;
        let deletes = Deletes::start(queue.clone(), Duration::from_millis(30));
        let started = std::time::Instant::now();
        deletes.delete(&receipts[0]).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(queue.counts().await.unwrap().in_flight, 0);
    }
}
