//! The SQL of the embedded queue's operations, each function run inside the
//! caller's transaction (see `StoreInner::write`). Runs in the worker parent
//! and the CLI process, on tokio's blocking pool or, for a message's own
//! operations, on the calling thread (`StoreInner::write_quick`).

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

/// A page of a FIFO queue's visible messages, read at a time.
const FIFO_PAGE: i64 = 200;

/// One stored message as a receive reads it.
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

/// The statement reading a receive's candidates: a FIFO queue's next page
/// in send order (`?1` queue, `?2` now, `?3` after this seq, `?4` page),
/// or a standard queue's messages visible longest first (`?1` queue, `?2`
/// now, `?3` how many). Each walks its index in order and stops at its
/// limit (the unit test below holds SQLite's plan to that).
fn receive_sql(fifo: bool) -> &'static str {
    if fifo {
        "SELECT seq, id, body, attributes, receive_count, sent_ms, group_id, dedup_id,
                first_received_ms
         FROM messages INDEXED BY messages_fifo_order
         WHERE queue = ?1 AND group_id IS NOT NULL AND seq > ?3 AND visible_at_ms <= ?2
         ORDER BY seq LIMIT ?4"
    } else {
        "SELECT seq, id, body, attributes, receive_count, sent_ms, group_id, dedup_id,
                first_received_ms
         FROM messages INDEXED BY messages_by_visibility
         WHERE queue = ?1 AND visible_at_ms <= ?2
         ORDER BY visible_at_ms, seq LIMIT ?3"
    }
}

/// Run `sql`, a statement a message's own operations run every time, from
/// the connection's cache of prepared statements: preparing it again would
/// cost more than running it. Returns the rows changed.
fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, QueueError> {
    tx.prepare_cached(sql)
        .and_then(|mut st| st.execute(params))
        .map_err(storage)
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
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
}

/// Receive up to `max` visible messages of queue `name` and make them
/// invisible for `visibility`; a message past its redrive policy's receive
/// count moves to the dead-letter queue instead.
///
/// Each read costs what it returns, never the backlog:
/// - A standard queue hands out the messages visible longest first (send
///   order for messages never received), straight from the
///   `(queue, visible_at_ms, seq)` index: `max` rows, more only to replace
///   messages moved to the dead-letter queue, which leave the queue.
/// - A FIFO queue hands out messages in send order and skips every group
///   with a message in flight; it reads pages of [`FIFO_PAGE`] in send
///   order (the `messages_fifo_order` index), each page after the last, so
///   a receive behind a long held group ends when the queue does.
pub(super) fn try_receive(
    tx: &Transaction<'_>,
    name: &str,
    config: &QueueConfig,
    max: usize,
    visibility: Duration,
) -> Result<Vec<ReceivedMessage>, QueueError> {
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
    let mut out = Vec::new();
    // Received by this call: with a visibility timeout of zero they are
    // visible again at once, and a second read must not take them again.
    let mut taken: HashSet<i64> = HashSet::new();
    // FIFO: the last sequence number read.
    let mut after = 0i64;
    while out.len() < max {
        let rows: Vec<Row> = if config.fifo {
            let mut st = tx.prepare_cached(receive_sql(true)).map_err(storage)?;
            st.query_map(params![name, now, after, FIFO_PAGE], read_row)
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?
        } else {
            let mut st = tx.prepare_cached(receive_sql(false)).map_err(storage)?;
            st.query_map(params![name, now, (max - out.len()) as i64], read_row)
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?
        };
        let full_page = config.fifo && rows.len() as i64 == FIFO_PAGE;
        let mut dead_lettered = false;
        for (seq, id, body, attrs, count, sent, group, dedup, first) in rows {
            after = seq;
            if out.len() == max {
                break;
            }
            if taken.contains(&seq) {
                continue;
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
                execute(
                    tx,
                    "UPDATE messages SET queue = ?1, receipt = NULL, visible_at_ms = ?2
                     WHERE seq = ?3",
                    params![dlq, now, seq],
                )?;
                dead_lettered = true;
                continue;
            }
            let receipt = format!("{}-{}", id, random_hex(16));
            execute(
                tx,
                "UPDATE messages SET receive_count = receive_count + 1, receipt = ?1,
                 visible_at_ms = ?2, first_received_ms = COALESCE(first_received_ms, ?3)
                 WHERE seq = ?4",
                params![receipt, now + visibility.as_millis() as i64, now, seq],
            )?;
            taken.insert(seq);
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
        // FIFO: the next page, if this one was full. Standard: more only
        // where dead-lettered messages (now gone from this queue) left room.
        let more = if config.fifo {
            full_page
        } else {
            dead_lettered
        };
        if !more {
            break;
        }
    }
    Ok(out)
}

/// How long until the next message of queue `name` becomes visible, if any
/// is invisible now.
pub(super) fn next_visible_in(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<Duration>, QueueError> {
    let now = now_ms();
    let next: Option<i64> = tx
        .prepare_cached(
            "SELECT MIN(visible_at_ms) FROM messages WHERE queue = ?1 AND visible_at_ms > ?2",
        )
        .and_then(|mut st| st.query_row(params![name, now], |r| r.get(0)).optional())
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
            .prepare_cached(
                "SELECT message_id FROM dedup WHERE queue = ?1 AND dedup_id = ?2 AND expires_ms > ?3",
            )
            .and_then(|mut st| st.query_row(params![name, d, now], |r| r.get(0)).optional())
            .map_err(storage)?;
        if let Some(id) = existing {
            return Ok(id); // accepted, not delivered twice
        }
    }
    let id = new_message_id();
    let attrs =
        serde_json::to_string(&msg.attributes).map_err(|e| QueueError::Other(e.to_string()))?;
    let delay = msg.delay.unwrap_or_default().as_millis() as i64;
    execute(
        tx,
        "INSERT INTO messages (queue, id, body, attributes, sent_ms, visible_at_ms, group_id, dedup_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![name, id, msg.body, attrs, now, now + delay, msg.group_id, dedup],
    )?;
    if let Some(d) = dedup {
        execute(
            tx,
            "INSERT OR REPLACE INTO dedup VALUES (?1, ?2, ?3, ?4)",
            params![name, d, id, now + limits::DEDUP_WINDOW.as_millis() as i64],
        )?;
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
        .prepare_cached("SELECT visible_at_ms, first_received_ms FROM messages WHERE receipt = ?1")
        .and_then(|mut st| {
            st.query_row([receipt], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
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
    execute(
        tx,
        "UPDATE messages SET visible_at_ms = ?1 WHERE receipt = ?2",
        params![until, receipt],
    )?;
    Ok(())
}

/// Delete the delivery `receipt`.
pub(super) fn remove(tx: &Transaction<'_>, receipt: &str) -> Result<(), QueueError> {
    let n = execute(tx, "DELETE FROM messages WHERE receipt = ?1", [receipt])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, one line per step.
    fn plan(conn: &rusqlite::Connection, sql: &str) -> String {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // The queue's name, then numbers (the times, the seq, the limit).
        let values: Vec<rusqlite::types::Value> = (0..st.parameter_count())
            .map(|i| match i {
                0 => "q".to_owned().into(),
                _ => 10i64.into(),
            })
            .collect();
        let steps = st
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    /// A receive runs statements prepared once: not prepared again per
    /// call, as SQLite did for the receive statement before the store's
    /// connection asked for plans that ignore bound values.
    #[test]
    fn receives_reuse_their_prepared_statements() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        super::super::prepare_once(&conn).unwrap();
        let config = QueueConfig::default();
        let tx = conn.transaction().unwrap();
        for i in 0..20 {
            let msg = crate::queue::OutgoingMessage::new(format!("m{i}"));
            insert(&tx, "q", false, &msg).unwrap();
        }
        for _ in 0..10 {
            let got = try_receive(&tx, "q", &config, 1, Duration::from_secs(30)).unwrap();
            remove(&tx, &got[0].receipt_handle).unwrap();
        }
        let status = |sql: &str, what| tx.prepare_cached(sql).unwrap().get_status(what);
        use rusqlite::StatementStatus::{RePrepare, Run};
        assert_eq!(status(receive_sql(false), Run), 10);
        assert_eq!(status(receive_sql(false), RePrepare), 0);
    }

    #[test]
    fn a_receive_reads_its_index_in_order_and_never_sorts_the_backlog() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        // As the store's connection plans: without looking at bound values.
        super::super::prepare_once(&conn).unwrap();
        for (fifo, index) in [
            (false, "messages_by_visibility"),
            (true, "messages_fifo_order"),
        ] {
            let plan = plan(&conn, receive_sql(fifo));
            assert!(plan.contains(index), "fifo {fifo}: {plan}");
            // A temporary b-tree would hold every visible message to sort
            // them: a cost that grows with the backlog.
            assert!(!plan.contains("TEMP B-TREE"), "fifo {fifo}: {plan}");
        }
    }
}
