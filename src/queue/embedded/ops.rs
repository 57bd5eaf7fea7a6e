//! The queue operations of the embedded backend: each validates its input,
//! runs one SQLite transaction (the SQL is in `sql`) on tokio's blocking
//! pool, and wakes long polls when it made messages visible. Runs in the
//! worker parent and the CLI process.

use super::wake::WakeWatch;
use super::{StoreInner, sql};
use crate::queue::{
    BatchEntryResult, OutgoingMessage, Queue, QueueAttributes, QueueConfig, QueueCounts,
    QueueError, ReceiveRequest, ReceivedMessage, RedrivePolicy, VisibilityChange, validate,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a long poll sleeps between checks when nothing wakes it (covers
/// delayed messages becoming visible and visibility timeouts running out).
const MAX_POLL_SLEEP: Duration = Duration::from_millis(500);

/// One embedded queue: a handle on its data directory's store, with the
/// queue's settings as they were when it was opened.
pub struct EmbeddedQueue {
    store: Arc<StoreInner>,
    name: String,
    config: QueueConfig,
    /// This handle's long-poll watch, made by the first long poll and kept
    /// (see [`WakeWatch::clear`]); a poll that finds it in use makes its own.
    watch: tokio::sync::Mutex<Option<WakeWatch>>,
    /// Set by [`Queue::stop_waiting`]: long polls end after their check.
    waiting_stopped: tokio::sync::watch::Sender<bool>,
}

impl EmbeddedQueue {
    pub(super) fn new(store: Arc<StoreInner>, name: String, config: QueueConfig) -> Self {
        EmbeddedQueue {
            store,
            name,
            config,
            watch: tokio::sync::Mutex::new(None),
            waiting_stopped: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Move every message of this queue's dead-letter queue back to it, with
    /// body, attributes (but `wasm-jobs.*`: [`crate::queue::redriven_attributes`])
    /// and group kept, receive count reset. Returns how many.
    pub(crate) async fn redrive_dead_letters(&self) -> Result<u64, QueueError> {
        let Some((dlq, _)) = self.config.dead_letter.clone() else {
            return Err(QueueError::InvalidInput(format!(
                "queue `{}` has no dead-letter queue",
                self.name
            )));
        };
        let name = self.name.clone();
        let moved = self
            .store
            .write(move |tx| sql::redrive(tx, &name, &dlq))
            .await?;
        self.store.wake.notify(&self.name);
        Ok(moved)
    }
}

#[async_trait::async_trait]
impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_local(&self) -> bool {
        true
    }

    /// A long poll here waits only between its checks, each one a whole
    /// transaction, so it can end at any wait without losing a message.
    fn stop_waiting(&self) {
        self.waiting_stopped.send_replace(true);
    }

    async fn peek(&self, max: usize) -> Result<Vec<ReceivedMessage>, QueueError> {
        let name = self.name.clone();
        self.store.write(move |tx| sql::peek(tx, &name, max)).await
    }

    async fn receive(&self, req: ReceiveRequest) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate::receive(&req)?;
        let visibility = req
            .visibility_timeout
            .unwrap_or(self.config.visibility_timeout);
        let deadline = Instant::now() + req.wait;
        let mut stopped = self.waiting_stopped.subscribe();
        let long = !req.wait.is_zero();
        let mut kept = if long {
            self.watch.try_lock().ok()
        } else {
            None
        };
        let mut own: Option<WakeWatch> = None;
        loop {
            // Arm the watch first: a send that lands after the check below
            // still wakes us.
            if long {
                let slot = match kept.as_deref_mut() {
                    Some(slot) => slot,
                    None => &mut own,
                };
                match slot {
                    Some(w) => w.clear(),
                    None => *slot = self.store.wake.watch(&self.name).ok(),
                }
            }
            let (name, config) = (self.name.clone(), self.config.clone());
            // A FIFO receive may read past a long held group: the pool.
            let fifo = config.fifo;
            let work = move |tx: &rusqlite::Transaction<'_>| {
                let got = sql::try_receive(tx, &name, &config, req.max_messages, visibility)?;
                let next = if got.is_empty() {
                    sql::next_visible_in(tx, &name)?
                } else {
                    None
                };
                Ok((got, next))
            };
            let (got, next_visible) = if fifo {
                self.store.write(work).await?
            } else {
                self.store.write_quick(work).await?
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() || *stopped.borrow_and_update() {
                return Ok(got);
            }
            let nap = left
                .min(MAX_POLL_SLEEP)
                .min(next_visible.unwrap_or(MAX_POLL_SLEEP));
            let slot = match kept.as_deref_mut() {
                Some(slot) => slot,
                None => &mut own,
            };
            let nap = async {
                let woke = match slot.as_mut() {
                    Some(w) => w.wait(nap).await,
                    None => Err(std::io::Error::other("no watch")),
                };
                if woke.is_err() {
                    // Without a working watch, poll at the nap's pace.
                    *slot = None;
                    tokio::time::sleep(nap).await;
                }
            };
            tokio::select! {
                () = nap => {}
                // The check above found nothing; nothing is taken after it.
                _ = stopped.changed() => return Ok(Vec::new()),
            }
        }
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        let became_visible = timeout.is_zero();
        self.store
            .write_quick(move |tx| sql::set_visibility(tx, &receipt, timeout))
            .await?;
        if became_visible {
            self.store.wake.notify(&self.name);
        }
        Ok(())
    }

    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(changes.len())?;
        let changes = changes.to_vec();
        let any_zero = changes.iter().any(|c| c.timeout.is_zero());
        let out = self
            .store
            .write_quick(move |tx| {
                Ok(changes
                    .iter()
                    .enumerate()
                    .map(|(index, c)| BatchEntryResult {
                        index,
                        result: sql::set_visibility(tx, &c.receipt_handle, c.timeout)
                            .map(|()| String::new()),
                    })
                    .collect())
            })
            .await?;
        if any_zero {
            self.store.wake.notify(&self.name);
        }
        Ok(out)
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        self.store
            .write_quick(move |tx| sql::remove(tx, &receipt))
            .await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(receipts.len())?;
        let receipts = receipts.to_vec();
        self.store
            .write_quick(move |tx| {
                Ok(receipts
                    .iter()
                    .enumerate()
                    .map(|(index, r)| BatchEntryResult {
                        index,
                        result: sql::remove(tx, r).map(|()| String::new()),
                    })
                    .collect())
            })
            .await
    }

    async fn send(&self, msg: &OutgoingMessage) -> Result<String, QueueError> {
        validate::outgoing(msg, self.config.fifo)?;
        let (name, fifo, msg) = (self.name.clone(), self.config.fifo, msg.clone());
        let id = self
            .store
            .write_quick(move |tx| sql::insert(tx, &name, fifo, &msg))
            .await?;
        self.store.wake.notify(&self.name);
        Ok(id)
    }

    async fn send_batch(
        &self,
        msgs: &[OutgoingMessage],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(msgs.len())?;
        let fifo = self.config.fifo;
        let checked: Vec<Result<OutgoingMessage, QueueError>> = msgs
            .iter()
            .map(|m| validate::outgoing(m, fifo).map(|()| m.clone()))
            .collect();
        let name = self.name.clone();
        let out = self
            .store
            .write_quick(move |tx| {
                checked
                    .into_iter()
                    .enumerate()
                    .map(|(index, m)| {
                        let result = match m {
                            Ok(m) => match sql::insert(tx, &name, fifo, &m) {
                                Ok(id) => Ok(id),
                                // A storage failure fails the whole batch.
                                Err(e @ (QueueError::Transient(_) | QueueError::Other(_))) => {
                                    return Err(e);
                                }
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(e),
                        };
                        Ok(BatchEntryResult { index, result })
                    })
                    .collect()
            })
            .await?;
        self.store.wake.notify(&self.name);
        Ok(out)
    }

    async fn attributes(&self) -> Result<QueueAttributes, QueueError> {
        Ok(QueueAttributes {
            visibility_timeout: self.config.visibility_timeout,
            receive_wait: self.config.receive_wait,
            redrive: self
                .config
                .dead_letter
                .as_ref()
                .map(|(dlq, max)| RedrivePolicy {
                    dead_letter_target: dlq.clone(),
                    max_receive_count: *max,
                }),
            fifo: self.config.fifo,
        })
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let name = self.name.clone();
        self.store.write(move |tx| sql::counts(tx, &name)).await
    }

    async fn dead_letter_queue(&self) -> Result<Option<Box<dyn Queue>>, QueueError> {
        let Some((dlq, _)) = self.config.dead_letter.clone() else {
            return Ok(None);
        };
        let name = dlq.clone();
        let config = self
            .store
            .write(move |tx| super::load_config(tx, &name))
            .await?
            .ok_or_else(|| QueueError::NoSuchQueue(dlq.clone()))?;
        Ok(Some(Box::new(EmbeddedQueue::new(
            Arc::clone(&self.store),
            dlq,
            config,
        ))))
    }

    async fn purge(&self) -> Result<(), QueueError> {
        let name = self.name.clone();
        self.store.write(move |tx| sql::purge(tx, &name)).await
    }
}
