//! The SQL of the embedded queue's operations, each function run inside the
//! caller's transaction (see `StoreInner::write`). Runs in the worker parent
//! and the CLI process, on tokio's blocking pool.

use super::{now_ms, storage};
use crate::queue::{
    Attributes, OutgoingMessage, QueueConfig, QueueCounts, QueueError, ReceivedMessage, limits,
    validate,
};
use rand::RngCore;
use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::time::Duration;

/// `bytes` random bytes as hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A random message id shaped like SQS's (a UUID's 8-4-4-4-12 hex groups).
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

/// Receive up to `max` visible messages of queue `name` from one page of
/// 200 rows, in send order: skip FIFO groups with a message in flight, move
/// messages past their redrive policy's receive count to the dead-letter
/// queue, and make the rest invisible for `visibility`. The flag says
/// whether another page may hold more.
pub(super) fn try_receive(
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
            "SELECT seq, id, body, attributes, receive_count, sent_ms, group_id, dedup_id,
                    first_received_ms
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
        Option<i64>,
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
                r.get(8)?,
            ))
        })
        .map_err(storage)?
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    let saw_full_page = rows.len() == 200;
    let mut out = Vec::new();
    let mut dead_lettered = false;
    for (seq, id, body, attrs, count, sent, group, dedup, first) in rows {
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
            first_received_ms: first.unwrap_or(now) as u64,
            group_id: group,
            dedup_id: dedup,
        });
    }
    // More may be waiting behind a page of skipped or redriven rows.
    let again = out.len() < max && (saw_full_page || dead_lettered);
    Ok((out, again))
}

/// How long until the next message of queue `name` becomes visible, if any
/// is invisible now.
pub(super) fn next_visible_in(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<Duration>, QueueError> {
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

/// Store `msg` in queue `name` and return its id. On FIFO queues a
/// deduplication id (given, or the body's sha256) seen within the window
/// returns the first message's id and stores nothing.
pub(super) fn insert(
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

/// Make the delivery `receipt` invisible for `timeout` from now, within
/// 12 hours of its first receive.
pub(super) fn set_visibility(
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

/// Delete the delivery `receipt`.
pub(super) fn remove(tx: &Transaction<'_>, receipt: &str) -> Result<(), QueueError> {
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

/// Move every message of queue `dlq` that nobody holds to queue `name`, as
/// if never received, without its `wasm-jobs.*` attributes. Returns how
/// many moved.
pub(super) fn redrive(tx: &Transaction<'_>, name: &str, dlq: &str) -> Result<u64, QueueError> {
    // Not the ones someone has received and holds (in flight).
    let rows: Vec<(i64, String)> = tx
        .prepare_cached(
            "SELECT seq, attributes FROM messages
             WHERE queue = ?1 AND (receipt IS NULL OR visible_at_ms <= ?2)",
        )
        .map_err(storage)?
        .query_map(params![dlq, now_ms()], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(storage)?
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    let now = now_ms();
    for (seq, attrs) in &rows {
        let attributes: Attributes = serde_json::from_str(attrs)
            .map_err(|e| QueueError::Other(format!("stored attributes: {e}")))?;
        let attributes = serde_json::to_string(&crate::queue::redriven_attributes(&attributes))
            .map_err(|e| QueueError::Other(format!("attributes: {e}")))?;
        tx.execute(
            "UPDATE messages SET queue = ?1, attributes = ?2, receive_count = 0, receipt = NULL,
             first_received_ms = NULL, visible_at_ms = ?3 WHERE seq = ?4",
            params![name, attributes, now, seq],
        )
        .map_err(storage)?;
    }
    Ok(rows.len() as u64)
}

/// Up to `max` visible messages of queue `name`, oldest first, as they
/// are: nothing about them changes (no receipt handle).
pub(super) fn peek(
    tx: &Transaction<'_>,
    name: &str,
    max: usize,
) -> Result<Vec<ReceivedMessage>, QueueError> {
    let mut st = tx
        .prepare_cached(
            "SELECT id, body, attributes, receive_count, sent_ms, group_id, dedup_id,
                    first_received_ms
             FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2
             ORDER BY seq LIMIT ?3",
        )
        .map_err(storage)?;
    let rows = st
        .query_map(params![name, now_ms(), max as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ))
        })
        .map_err(storage)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(storage)?;
    rows.into_iter()
        .map(|(id, body, attrs, count, sent, group, dedup, first)| {
            Ok(ReceivedMessage {
                message_id: id,
                receipt_handle: String::new(),
                body,
                attributes: serde_json::from_str(&attrs)
                    .map_err(|e| QueueError::Other(format!("stored attributes: {e}")))?,
                receive_count: count,
                sent_timestamp_ms: sent as u64,
                first_received_ms: first.unwrap_or(0) as u64,
                group_id: group,
                dedup_id: dedup,
            })
        })
        .collect()
}

/// The message counts of queue `name`, from one snapshot.
pub(super) fn counts(tx: &Transaction<'_>, name: &str) -> Result<QueueCounts, QueueError> {
    tx.query_row(
        "SELECT
           COALESCE(SUM(visible_at_ms <= ?2), 0),
           COALESCE(SUM(visible_at_ms > ?2 AND receipt IS NOT NULL), 0),
           COALESCE(SUM(visible_at_ms > ?2 AND receipt IS NULL), 0),
           MIN(sent_ms)
         FROM messages WHERE queue = ?1",
        params![name, now_ms()],
        |r| {
            Ok(QueueCounts {
                visible: r.get::<_, i64>(0)? as u64,
                in_flight: r.get::<_, i64>(1)? as u64,
                delayed: r.get::<_, i64>(2)? as u64,
                oldest_sent_ms: r.get::<_, Option<i64>>(3)?.map(|ms| ms as u64),
            })
        },
    )
    .map_err(storage)
}

/// Delete every message of queue `name` and forget its deduplication ids.
pub(super) fn purge(tx: &Transaction<'_>, name: &str) -> Result<(), QueueError> {
    tx.execute("DELETE FROM messages WHERE queue = ?1", [name])
        .map_err(storage)?;
    tx.execute("DELETE FROM dedup WHERE queue = ?1", [name])
        .map_err(storage)?;
    Ok(())
}
