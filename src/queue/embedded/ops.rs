//! The queue operations of the embedded backend, each one SQLite transaction.

use super::{StoreInner, now_ms, storage};
use crate::queue::{
    Attributes, BatchEntryResult, OutgoingMessage, Queue, QueueAttributes, QueueConfig,
    QueueCounts, QueueError, ReceiveRequest, ReceivedMessage, RedrivePolicy, VisibilityChange,
    limits, validate,
};
use rand::RngCore;
use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a long poll sleeps between checks when nothing wakes it (covers
/// delayed messages becoming visible and visibility timeouts running out).
const MAX_POLL_SLEEP: Duration = Duration::from_millis(500);

/// One embedded queue.
pub struct EmbeddedQueue {
    store: Arc<StoreInner>,
    name: String,
    config: QueueConfig,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn new_message_id() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl EmbeddedQueue {
    pub(super) fn new(store: Arc<StoreInner>, name: String, config: QueueConfig) -> Self {
        EmbeddedQueue {
            store,
            name,
            config,
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Move every message of this queue's dead-letter queue back to it, with
    /// body, attributes and group kept, receive count reset. Returns how many.
    pub async fn redrive_dead_letters(&self) -> Result<u64, QueueError> {
        let Some((dlq, _)) = self.config.dead_letter.clone() else {
            return Err(QueueError::InvalidInput(format!(
                "queue `{}` has no dead-letter queue",
                self.name
            )));
        };
        let name = self.name.clone();
        let moved = self
            .store
            .write(move |tx| {
                tx.execute(
                    "UPDATE messages SET queue = ?1, receive_count = 0, receipt = NULL,
                     first_received_ms = NULL, visible_at_ms = ?3 WHERE queue = ?2",
                    params![name, dlq, now_ms()],
                )
                .map_err(storage)
            })
            .await?;
        self.store.wake.notify(&self.name);
        Ok(moved as u64)
    }

    fn try_receive(
        tx: &Transaction<'_>,
        name: &str,
        config: &QueueConfig,
        max: usize,
        visibility: Duration,
    ) -> Result<(Vec<ReceivedMessage>, bool), QueueError> {
        let now = now_ms();
        let blocked_groups: HashSet<String> = if config.fifo {
            let mut st = tx
                .prepare_cached(
                    "SELECT DISTINCT group_id FROM messages WHERE queue = ?1
                     AND receipt IS NOT NULL AND visible_at_ms > ?2",
                )
                .map_err(storage)?;
            st.query_map(params![name, now], |r| r.get(0))
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?
        } else {
            HashSet::new()
        };
        let mut st = tx
            .prepare_cached(
                "SELECT seq, id, body, attributes, receive_count, sent_ms, group_id, dedup_id
                 FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2
                 ORDER BY seq LIMIT 200",
            )
            .map_err(storage)?;
        type Row = (
            i64,
            String,
            String,
            String,
            u32,
            i64,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = st
            .query_map(params![name, now], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .map_err(storage)?
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        let saw_full_page = rows.len() == 200;
        let mut out = Vec::new();
        let mut dead_lettered = false;
        for (seq, id, body, attrs, count, sent, group, dedup) in rows {
            if out.len() == max {
                break;
            }
            if let Some(g) = &group
                && blocked_groups.contains(g)
            {
                continue;
            }
            if let Some((dlq, max_receives)) = &config.dead_letter
                && count >= *max_receives
            {
                // It would be received more than maxReceiveCount times.
                tx.execute(
                    "UPDATE messages SET queue = ?1, receipt = NULL, visible_at_ms = ?2
                     WHERE seq = ?3",
                    params![dlq, now, seq],
                )
                .map_err(storage)?;
                dead_lettered = true;
                continue;
            }
            let receipt = format!("{}-{}", id, random_hex(16));
            tx.execute(
                "UPDATE messages SET receive_count = receive_count + 1, receipt = ?1,
                 visible_at_ms = ?2, first_received_ms = COALESCE(first_received_ms, ?3)
                 WHERE seq = ?4",
                params![receipt, now + visibility.as_millis() as i64, now, seq],
            )
            .map_err(storage)?;
            let attributes: Attributes = serde_json::from_str(&attrs)
                .map_err(|e| QueueError::Other(format!("stored attributes: {e}")))?;
            out.push(ReceivedMessage {
                message_id: id,
                receipt_handle: receipt,
                body,
                attributes,
                receive_count: count + 1,
                sent_timestamp_ms: sent as u64,
                group_id: group,
                dedup_id: dedup,
            });
        }
        // More may be waiting behind a page of skipped or redriven rows.
        let again = out.len() < max && (saw_full_page || dead_lettered);
        Ok((out, again))
    }

    fn next_visible_in(tx: &Transaction<'_>, name: &str) -> Result<Option<Duration>, QueueError> {
        let now = now_ms();
        let next: Option<i64> = tx
            .query_row(
                "SELECT MIN(visible_at_ms) FROM messages WHERE queue = ?1 AND visible_at_ms > ?2",
                params![name, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?
            .flatten();
        Ok(next.map(|t| Duration::from_millis((t - now).max(0) as u64)))
    }

    fn insert(
        tx: &Transaction<'_>,
        name: &str,
        fifo: bool,
        msg: &OutgoingMessage,
    ) -> Result<String, QueueError> {
        let now = now_ms();
        let dedup = if fifo {
            Some(
                msg.dedup_id
                    .clone()
                    .unwrap_or_else(|| hex::encode(Sha256::digest(msg.body.as_bytes()))),
            )
        } else {
            None
        };
        if let Some(d) = &dedup {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT message_id FROM dedup WHERE queue = ?1 AND dedup_id = ?2 AND expires_ms > ?3",
                    params![name, d, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage)?;
            if let Some(id) = existing {
                return Ok(id); // accepted, not delivered twice
            }
        }
        let id = new_message_id();
        let attrs =
            serde_json::to_string(&msg.attributes).map_err(|e| QueueError::Other(e.to_string()))?;
        let delay = msg.delay.unwrap_or_default().as_millis() as i64;
        tx.prepare_cached(
            "INSERT INTO messages (queue, id, body, attributes, sent_ms, visible_at_ms, group_id, dedup_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut st| {
            st.execute(params![name, id, msg.body, attrs, now, now + delay, msg.group_id, dedup])
        })
        .map_err(storage)?;
        if let Some(d) = dedup {
            tx.execute(
                "INSERT OR REPLACE INTO dedup VALUES (?1, ?2, ?3, ?4)",
                params![name, d, id, now + limits::DEDUP_WINDOW.as_millis() as i64],
            )
            .map_err(storage)?;
        }
        Ok(id)
    }

    fn set_visibility(
        tx: &Transaction<'_>,
        receipt: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        validate::visibility(timeout)?;
        let now = now_ms();
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT visible_at_ms, first_received_ms FROM messages WHERE receipt = ?1",
                [receipt],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(storage)?;
        let Some((visible_at, first)) = row else {
            return Err(QueueError::StaleReceipt);
        };
        if visible_at <= now {
            return Err(QueueError::NotInFlight);
        }
        let until = now + timeout.as_millis() as i64;
        if until - first.unwrap_or(now) > limits::MAX_VISIBILITY.as_millis() as i64 {
            return Err(QueueError::InvalidInput(
                "a message may stay invisible at most 12 hours after it was first received".into(),
            ));
        }
        tx.execute(
            "UPDATE messages SET visible_at_ms = ?1 WHERE receipt = ?2",
            params![until, receipt],
        )
        .map_err(storage)?;
        Ok(())
    }

    fn remove(tx: &Transaction<'_>, receipt: &str) -> Result<(), QueueError> {
        let n = tx
            .prepare_cached("DELETE FROM messages WHERE receipt = ?1")
            .and_then(|mut st| st.execute([receipt]))
            .map_err(storage)?;
        if n == 0 {
            Err(QueueError::StaleReceipt)
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Queue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn receive(&self, req: ReceiveRequest) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate::receive(&req)?;
        let visibility = req
            .visibility_timeout
            .unwrap_or(self.config.visibility_timeout);
        let deadline = Instant::now() + req.wait;
        loop {
            // Arm the watch first: a send that lands after the check below
            // still wakes us.
            let mut watch = if req.wait.is_zero() {
                None
            } else {
                self.store.wake.watch(&self.name).ok()
            };
            let (name, config) = (self.name.clone(), self.config.clone());
            let (got, next_visible) = self
                .store
                .write(move |tx| {
                    let mut got = Vec::new();
                    loop {
                        let (mut batch, again) = Self::try_receive(
                            tx,
                            &name,
                            &config,
                            req.max_messages - got.len(),
                            visibility,
                        )?;
                        got.append(&mut batch);
                        if !again {
                            break;
                        }
                    }
                    let next = if got.is_empty() {
                        Self::next_visible_in(tx, &name)?
                    } else {
                        None
                    };
                    Ok((got, next))
                })
                .await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            let nap = left
                .min(MAX_POLL_SLEEP)
                .min(next_visible.unwrap_or(MAX_POLL_SLEEP));
            match watch.as_mut() {
                Some(w) => {
                    w.wait(nap).await;
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        let became_visible = timeout.is_zero();
        self.store
            .write(move |tx| Self::set_visibility(tx, &receipt, timeout))
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
            .write(move |tx| {
                Ok(changes
                    .iter()
                    .enumerate()
                    .map(|(index, c)| BatchEntryResult {
                        index,
                        result: Self::set_visibility(tx, &c.receipt_handle, c.timeout)
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
        self.store.write(move |tx| Self::remove(tx, &receipt)).await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(receipts.len())?;
        let receipts = receipts.to_vec();
        self.store
            .write(move |tx| {
                Ok(receipts
                    .iter()
                    .enumerate()
                    .map(|(index, r)| BatchEntryResult {
                        index,
                        result: Self::remove(tx, r).map(|()| String::new()),
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
            .write(move |tx| Self::insert(tx, &name, fifo, &msg))
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
            .write(move |tx| {
                checked
                    .into_iter()
                    .enumerate()
                    .map(|(index, m)| {
                        let result = match m {
                            Ok(m) => match Self::insert(tx, &name, fifo, &m) {
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
        self.store
            .write(move |tx| {
                tx.query_row(
                    "SELECT
                       COALESCE(SUM(visible_at_ms <= ?2), 0),
                       COALESCE(SUM(visible_at_ms > ?2 AND receipt IS NOT NULL), 0),
                       COALESCE(SUM(visible_at_ms > ?2 AND receipt IS NULL), 0)
                     FROM messages WHERE queue = ?1",
                    params![name, now_ms()],
                    |r| {
                        Ok(QueueCounts {
                            visible: r.get::<_, i64>(0)? as u64,
                            in_flight: r.get::<_, i64>(1)? as u64,
                            delayed: r.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .map_err(storage)
            })
            .await
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
        self.store
            .write(move |tx| {
                tx.execute("DELETE FROM messages WHERE queue = ?1", [&name])
                    .map_err(storage)?;
                tx.execute("DELETE FROM dedup WHERE queue = ?1", [&name])
                    .map_err(storage)?;
                Ok(())
            })
            .await
    }
}
