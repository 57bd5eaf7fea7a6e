//! The embedded queue backend: SQLite (WAL) in the data directory, with SQS's
//! semantics: visibility timeouts, receive counts, stale receipt handles,
//! redrive to a dead-letter queue, delays, FIFO group ordering and
//! deduplication, long polling woken across processes.
//!
//! Several processes may share one data directory: worker parents and CLI
//! processes (queue commands, `demo`). Every operation is one SQLite
//! transaction, so a process killed at any instant loses or duplicates
//! nothing. Database calls run on tokio's blocking pool, except a message's
//! own operations (receive, delete, visibility, send; each bounded by a
//! batch of ten), which run at once on the calling thread when nothing else
//! holds the database ([`StoreInner::write_quick`]). The log is
//! checkpointed on a thread of its own ([`checkpoint`]), not in a commit.

mod checkpoint;
mod ops;
mod sql;
mod wake;

use super::{QueueConfig, QueueError, validate};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wake::WakeFiles;

pub use ops::EmbeddedQueue;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    visibility_timeout_ms INTEGER NOT NULL,
    receive_wait_ms INTEGER NOT NULL,
    fifo INTEGER NOT NULL,
    dead_letter_queue TEXT,
    max_receive_count INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    first_received_ms INTEGER,
    receipt TEXT UNIQUE,
    group_id TEXT,
    dedup_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at_ms, seq);
-- FIFO queues' messages in send order (standard queues' rows stay out of it).
CREATE INDEX IF NOT EXISTS messages_fifo_order ON messages (queue, seq)
    WHERE group_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);
";

/// Milliseconds since the epoch: the clock every process sharing the
/// database agrees on.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Classify a SQLite error: lock contention is transient, the rest is not.
fn storage(e: impl std::fmt::Display) -> QueueError {
    let text = e.to_string();
    // A locked database under contention is worth retrying.
    if text.contains("locked") || text.contains("busy") {
        QueueError::Transient(text)
    } else {
        QueueError::Other(format!("embedded queue storage: {text}"))
    }
}

/// What every handle on one data directory's queues shares.
struct StoreInner {
    /// Checkpoints the log off the writers' thread. First, so it is dropped
    /// (its thread and connection closed) before `conn`.
    checkpoints: checkpoint::Checkpoints,
    /// The one connection; transactions take turns on it.
    conn: Mutex<Connection>,
    /// Wakes long polls, in any process, when messages become visible.
    wake: WakeFiles,
}

impl StoreInner {
    /// Run `f` in one IMMEDIATE transaction on the blocking pool.
    async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, QueueError> + Send + 'static,
    {
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || inner.write_blocking(f))
            .await
            .map_err(|e| QueueError::Other(format!("queue task failed: {e}")))?
    }

    /// Run `f`, a transaction bounded by one batch of messages, in one
    /// IMMEDIATE transaction: on this thread when the connection and
    /// SQLite's write lock are both free this instant (the transaction then
    /// waits for nothing and takes tens of microseconds), else on the
    /// blocking pool like [`Self::write`]. A busy worker makes a few of
    /// these per job; handing each to another thread and back cost more
    /// than the transaction itself.
    async fn write_quick<T, F>(self: &Arc<Self>, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, QueueError> + Send + 'static,
    {
        if let Ok(mut conn) = self.conn.try_lock() {
            // Begin without waiting for another process's transaction; once
            // begun, nothing in it waits (in WAL mode the writer holds all
            // the locks it needs).
            conn.busy_timeout(Duration::ZERO).map_err(storage)?;
            let refused = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
                Ok(tx) => {
                    tx.busy_timeout(BUSY_TIMEOUT).map_err(storage)?;
                    let out = f(&tx)?;
                    tx.commit().map_err(storage)?;
                    self.checkpoints.committed();
                    return Ok(out);
                }
                Err(e) => e,
            };
            conn.busy_timeout(BUSY_TIMEOUT).map_err(storage)?;
            let busy = matches!(&refused, rusqlite::Error::SqliteFailure(e, _)
                if e.code == rusqlite::ErrorCode::DatabaseBusy);
            if !busy {
                return Err(storage(refused));
            }
            // The guard goes here: the pool's turn takes the connection.
        }
        self.write(f).await
    }

    /// Run `f` in one IMMEDIATE transaction on this thread.
    fn write_blocking<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let out = f(&tx)?;
        tx.commit().map_err(storage)?;
        self.checkpoints.committed();
        Ok(out)
    }
}

/// How long a transaction waits for another process's to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One data directory's queues.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<StoreInner>,
}

impl EmbeddedStore {
    /// Open (creating if needed) the queue database in `data_dir`. Every
    /// open of one data directory in a process shares one connection: two
    /// connections of one process would only make each other's writes wait
    /// for SQLite's lock (a worker serving several queues and sending
    /// outcomes to a reply queue writes through all of them).
    pub fn open(data_dir: &Path) -> Result<Self, QueueError> {
        use std::collections::HashMap;
        use std::sync::{OnceLock, Weak};
        static OPEN: OnceLock<Mutex<HashMap<std::path::PathBuf, Weak<StoreInner>>>> =
            OnceLock::new();
        std::fs::create_dir_all(data_dir)
            .map_err(|e| QueueError::Other(format!("cannot create {}: {e}", data_dir.display())))?;
        let key = data_dir
            .canonicalize()
            .map_err(|e| QueueError::Other(format!("cannot open {}: {e}", data_dir.display())))?;
        let mut open = OPEN
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(EmbeddedStore { inner });
        }
        open.retain(|_, store| store.strong_count() > 0);
        let store = Self::connect(data_dir)?;
        open.insert(key, Arc::downgrade(&store.inner));
        Ok(store)
    }

    fn connect(data_dir: &Path) -> Result<Self, QueueError> {
        let path = data_dir.join("queues.sqlite3");
        let conn = Connection::open(&path).map_err(storage)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(storage)?;
        // WAL: readers and one writer at a time across processes; NORMAL
        // sync is durable against process crashes (not power loss).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(storage)?;
        // A log that grew past this (behind a long reader) is cut back to it
        // when it starts over.
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(storage)?;
        prepare_once(&conn)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(storage)?;
        if version > SCHEMA_VERSION {
            return Err(QueueError::Other(format!(
                "{} was written by a newer wasm-jobs (schema {version})",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(storage)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(storage)?;
        let wake =
            WakeFiles::new(data_dir).map_err(|e| QueueError::Other(format!("wake files: {e}")))?;
        let checkpoints = checkpoint::Checkpoints::start(&conn, &path)?;
        Ok(EmbeddedStore {
            inner: Arc::new(StoreInner {
                checkpoints,
                conn: Mutex::new(conn),
                wake,
            }),
        })
    }

    /// Create a queue. Creating an existing queue with the same settings is a
    /// no-op; with different settings it is an error. A dead-letter queue
    /// named in `config` must exist and be of the same kind (FIFO or not).
    pub fn create_queue(&self, name: &str, config: &QueueConfig) -> Result<(), QueueError> {
        validate::queue_name(name, config.fifo)?;
        validate::visibility(config.visibility_timeout)?;
        if config.receive_wait > super::limits::MAX_WAIT {
            return Err(QueueError::InvalidInput(
                "receive wait may be at most 20 seconds".into(),
            ));
        }
        if let Some((dlq, max)) = &config.dead_letter {
            if *max == 0 || *max > 1000 {
                return Err(QueueError::InvalidInput(
                    "max receives must be 1 to 1000".into(),
                ));
            }
            if dlq == name {
                return Err(QueueError::InvalidInput(
                    "a queue cannot be its own dead-letter queue".into(),
                ));
            }
        }
        let name = name.to_owned();
        let config = config.clone();
        self.inner.write_blocking(move |tx| {
            if let Some((dlq, _)) = &config.dead_letter {
                match load_config(tx, dlq)? {
                    None => return Err(QueueError::NoSuchQueue(dlq.clone())),
                    Some(c) if c.fifo != config.fifo => {
                        return Err(QueueError::InvalidInput(format!(
                            "dead-letter queue `{dlq}` must be {} like `{name}`",
                            if config.fifo { "FIFO" } else { "standard" }
                        )));
                    }
                    Some(_) => {}
                }
            }
            match load_config(tx, &name)? {
                Some(existing) if existing == config => Ok(()),
                Some(_) => Err(QueueError::QueueExists(name.clone())),
                None => {
                    let (dlq, max) = config.dead_letter.clone().unzip();
                    tx.execute(
                        "INSERT INTO queues VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            name,
                            config.visibility_timeout.as_millis() as i64,
                            config.receive_wait.as_millis() as i64,
                            config.fifo,
                            dlq,
                            max
                        ],
                    )
                    .map_err(storage)?;
                    Ok(())
                }
            }
        })
    }

    /// Delete a queue and its messages. A queue that another queue names as
    /// its dead-letter queue is refused; a missing one is an error.
    pub fn delete_queue(&self, name: &str) -> Result<(), QueueError> {
        let name = name.to_owned();
        self.inner.write_blocking(move |tx| {
            let users: Option<String> = tx
                .query_row(
                    "SELECT name FROM queues WHERE dead_letter_queue = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage)?;
            if let Some(user) = users {
                return Err(QueueError::InvalidInput(format!(
                    "`{name}` is the dead-letter queue of `{user}`"
                )));
            }
            let gone = tx
                .execute("DELETE FROM queues WHERE name = ?1", params![name])
                .map_err(storage)?;
            if gone == 0 {
                return Err(QueueError::NoSuchQueue(name.clone()));
            }
            for table in ["messages", "dedup"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE queue = ?1"),
                    params![name],
                )
                .map_err(storage)?;
            }
            Ok(())
        })
    }

    /// The names of this data dir's queues, sorted.
    pub fn queue_names(&self) -> Result<Vec<String>, QueueError> {
        self.inner.write_blocking(|tx| {
            tx.prepare("SELECT name FROM queues ORDER BY name")
                .map_err(storage)?
                .query_map([], |r| r.get(0))
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)
        })
    }

    /// A handle on an existing queue.
    pub fn queue(&self, name: &str) -> Result<EmbeddedQueue, QueueError> {
        let name = name.to_owned();
        let config = self
            .inner
            .write_blocking(|tx| load_config(tx, &name))?
            .ok_or_else(|| QueueError::NoSuchQueue(name.clone()))?;
        Ok(EmbeddedQueue::new(Arc::clone(&self.inner), name, config))
    }
}

/// The settings of queue `name`, if it exists.
fn load_config(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
) -> Result<Option<QueueConfig>, QueueError> {
    tx.query_row(
        "SELECT visibility_timeout_ms, receive_wait_ms, fifo, dead_letter_queue, max_receive_count
         FROM queues WHERE name = ?1",
        [name],
        |r| {
            let dlq: Option<String> = r.get(3)?;
            let max: Option<u32> = r.get(4)?;
            Ok(QueueConfig {
                visibility_timeout: Duration::from_millis(r.get::<_, i64>(0)? as u64),
                receive_wait: Duration::from_millis(r.get::<_, i64>(1)? as u64),
                fifo: r.get(2)?,
                dead_letter: dlq.zip(max),
            })
        },
    )
    .optional()
    .map_err(storage)
}

/// Keep each statement prepared once per connection. SQLite (built with
/// STAT4) otherwise marks a statement whose plan might depend on a bound
/// value to be prepared again whenever one changes: the receive statement
/// was, on every receive. The query planner stability guarantee (QPSG)
/// plans without looking at bound values; the receive statements name
/// their index anyway (`sql::receive_sql`).
fn prepare_once(conn: &Connection) -> Result<(), QueueError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(storage)?;
    // Room for every statement `sql` caches (about 15).
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{OutgoingMessage, Queue, ReceiveRequest};

    /// With a visibility timeout of zero a received message is visible
    /// again at once; a receive that reads again (to fill the room messages
    /// moved to the dead-letter queue left) still hands each message out
    /// once, and never both hands it out and moves it.
    #[tokio::test]
    async fn one_receive_hands_each_message_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_queue("dl", &QueueConfig::default()).unwrap();
        let config = QueueConfig {
            dead_letter: Some(("dl".into(), 2)),
            ..QueueConfig::default()
        };
        store.create_queue("q", &config).unwrap();
        let q = store.queue("q").unwrap();
        let at_once = |max| ReceiveRequest {
            max_messages: max,
            wait: Duration::ZERO,
            visibility_timeout: Some(Duration::ZERO),
        };
        q.send(&OutgoingMessage::new("old")).await.unwrap();
        for _ in 0..2 {
            assert_eq!(q.receive(at_once(1)).await.unwrap().len(), 1);
        }
        for body in ["m1", "m2"] {
            q.send(&OutgoingMessage::new(body)).await.unwrap();
        }
        // "old" is past its receive count: it moves, and the receive reads
        // again for the room it left.
        let got = q.receive(at_once(10)).await.unwrap();
        let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["m1", "m2"]);
        let dl = store.queue("dl").unwrap().counts().await.unwrap();
        assert_eq!(dl.visible, 1, "only the old one moved");
        for m in &got {
            q.delete(&m.receipt_handle).await.unwrap();
        }
    }

    /// `stop_waiting` ends a long poll under way at once, and makes later
    /// ones return after their first check; a message there is still
    /// handed out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_waiting_ends_long_polls_and_still_hands_out_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_queue("q", &QueueConfig::default()).unwrap();
        let q = std::sync::Arc::new(store.queue("q").unwrap());
        let long = ReceiveRequest {
            max_messages: 10,
            wait: Duration::from_secs(20),
            visibility_timeout: None,
        };
        let started = std::time::Instant::now();
        let polling = tokio::spawn({
            let q = std::sync::Arc::clone(&q);
            async move { q.receive(long).await }
        });
        // The poll made its wake watch (the file) before its first check.
        let wake_file = dir.path().join("wake").join("q");
        while !wake_file.exists() {
            tokio::task::yield_now().await;
        }
        q.stop_waiting();
        let got = polling.await.unwrap().unwrap();
        assert!(got.is_empty());
        let later = q.receive(long).await.unwrap();
        assert!(later.is_empty());
        // Two 20 s polls: neither waited its wait out.
        assert!(started.elapsed() < Duration::from_secs(10));
        q.send(&OutgoingMessage::new("there")).await.unwrap();
        let got = q.receive(long).await.unwrap();
        let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["there"]);
    }

    /// A message's own operations run on the calling thread only when the
    /// database is free; while another process holds SQLite's write lock
    /// they wait for it on the blocking pool, as every operation did,
    /// instead of failing as busy.
    #[tokio::test]
    async fn quick_operations_wait_for_another_process_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_queue("q", &QueueConfig::default()).unwrap();
        let q = store.queue("q").unwrap();
        q.send(&OutgoingMessage::new("free")).await.unwrap();
        // Another process's connection, holding the write lock.
        let other = Connection::open(dir.path().join("queues.sqlite3")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let waiting = tokio::spawn(async move {
            q.send(&OutgoingMessage::new("after the lock")).await?;
            q.receive(ReceiveRequest {
                max_messages: 10,
                wait: Duration::ZERO,
                visibility_timeout: None,
            })
            .await
        });
        let early = tokio::time::timeout(Duration::from_millis(300), async {
            while !waiting.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(early.is_err(), "it must wait for the lock, not fail busy");
        other.execute_batch("ROLLBACK").unwrap();
        let got = waiting.await.unwrap().unwrap();
        let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["free", "after the lock"]);
    }
}
