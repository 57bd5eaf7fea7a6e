//! Checkpoints of the embedded queue's write-ahead log, on a thread of their
//! own, in whichever process opened the store (a worker parent, a CLI
//! process).
//!
//! By default SQLite checkpoints inside the commit that takes the log past
//! 1,000 pages: it copies the logged pages into the database and syncs the
//! log and the database, two `fsync`s of about 2 ms each on this project's
//! machine. A busy worker commits a few transactions per job, so every
//! couple of hundred jobs one of its deletes took 4 ms or more, and the
//! worker parent, one thread, did nothing else meanwhile: both worker slots
//! ended and waited for it, and the machine stood idle.
//!
//! So the store's connection never checkpoints (`wal_autocheckpoint` 0).
//! Every [`COMMITS_PER_CHECKPOINT`] commits wake this thread, and so does
//! every [`QUIET_CHECK`] without them (what other processes logged: a
//! stream of CLI `send`s, each a process of one commit, while a worker
//! waits idle). It checkpoints on a connection of its own:
//! - `PASSIVE` first: it copies what the log holds without taking a lock
//!   any writer needs, so commits go on while it copies and syncs.
//! - Under a steady stream of commits a passive checkpoint never copies the
//!   last frames (new ones come while it syncs), and SQLite starts a log
//!   over only once all of it is copied. So once the log holds more than
//!   [`RESTART_FRAMES`], a `FULL` checkpoint follows, which copies the few
//!   frames left while writers wait (a few milliseconds), and the next
//!   commit starts the log over. It waits at most [`RESTART_WAIT`] for the
//!   write lock and for readers of older snapshots (another process's long
//!   read): writers wait for it meanwhile, so a busy database is left for
//!   the next wake-up rather than waited for.
//!
//! Every process sharing the data directory does the same; any one
//! checkpoint copies what every process logged. The thread ends when the
//! store is dropped; SQLite checkpoints the log when the last connection to
//! the database closes.

use super::storage;
use crate::queue::QueueError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Commits between two checkpoints. One of a worker's own transactions logs
/// a few pages (a delete about five), so this checkpoints about as often as
/// SQLite's default of every 1,000 pages.
const COMMITS_PER_CHECKPOINT: u32 = 200;

/// Log frames (pages) past which a checkpoint finishes the log so that it
/// starts over: the log file grows to about this many pages of 4 KiB.
const RESTART_FRAMES: i64 = 4000;

/// The longest the thread sleeps without checkpointing. A checkpoint with
/// nothing to copy reads the log's header and syncs nothing.
const QUIET_CHECK: Duration = Duration::from_secs(1);

/// How long the finishing checkpoint waits for the write lock and for
/// readers, while writers wait for it.
const RESTART_WAIT: Duration = Duration::from_millis(5);

/// The writers' side: counts commits and wakes the checkpoint thread.
pub(super) struct Checkpoints {
    commits: AtomicU32,
    wake: SyncSender<()>,
}

impl Checkpoints {
    /// Stop `conn` checkpointing in its commits, and start the thread that
    /// checkpoints `db` for it.
    pub(super) fn start(conn: &Connection, db: &Path) -> Result<Self, QueueError> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(storage)?;
        let checkpointer = Connection::open(db).map_err(storage)?;
        checkpointer.busy_timeout(RESTART_WAIT).map_err(storage)?;
        let (wake, woken) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                while let Ok(()) | Err(RecvTimeoutError::Timeout) = woken.recv_timeout(QUIET_CHECK)
                {
                    if let Err(e) = checkpoint(&checkpointer) {
                        tracing::warn!(error = %e, "checkpointing the embedded queue's log failed");
                    }
                }
            })
            .map_err(|e| QueueError::Other(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpoints {
            commits: AtomicU32::new(0),
            wake,
        })
    }

    /// A transaction committed: every [`COMMITS_PER_CHECKPOINT`]th wakes
    /// the checkpoint thread (a wake-up already waiting covers this one).
    pub(super) fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(COMMITS_PER_CHECKPOINT) {
            match self.wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the embedded queue's checkpoint thread has stopped");
                }
            }
        }
    }
}

/// Copy what the log holds into the database without waiting for anyone;
/// if the log is past [`RESTART_FRAMES`], finish it so it starts over. A
/// checkpoint that could not finish (busy) is no error: the next goes on.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    // Each answers one row: busy, frames in the log, frames copied.
    let log: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if log > RESTART_FRAMES {
        conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::queue::embedded::{EmbeddedQueue, EmbeddedStore};
    use crate::queue::{OutgoingMessage, Queue, QueueConfig, ReceiveRequest};
    use std::time::{Duration, Instant};

    /// Send, receive and delete one message, `n` times: three commits and
    /// about ten logged pages each. The longest delete.
    async fn churn(q: &dyn Queue, n: usize) -> Duration {
        let mut longest = Duration::ZERO;
        for _ in 0..n {
            q.send(&OutgoingMessage::new("x".repeat(2000)))
                .await
                .unwrap();
            let got = q
                .receive(ReceiveRequest {
                    max_messages: 1,
                    wait: Duration::ZERO,
                    visibility_timeout: None,
                })
                .await
                .unwrap();
            let started = Instant::now();
            q.delete(&got[0].receipt_handle).await.unwrap();
            longest = longest.max(started.elapsed());
        }
        longest
    }

    /// A queue in a store of its own.
    fn new_queue() -> (tempfile::TempDir, EmbeddedQueue) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_queue("q", &QueueConfig::default()).unwrap();
        let q = store.queue("q").unwrap();
        (dir, q)
    }

    fn wal_bytes(dir: &std::path::Path) -> u64 {
        std::fs::metadata(dir.join("queues.sqlite3-wal")).map_or(0, |m| m.len())
    }

    /// Under commits that never pause, the log still starts over: it stays
    /// near `RESTART_FRAMES` pages instead of growing with every commit
    /// (passive checkpoints alone never finish it).
    #[tokio::test(flavor = "current_thread")]
    async fn the_log_starts_over_under_unbroken_commits() {
        let (dir, q) = new_queue();
        // About 30,000 pages logged in all, several times RESTART_FRAMES.
        churn(&q, 3000).await;
        // RESTART_FRAMES, what is logged between two wake-ups, and room
        // for a finishing checkpoint that found the database busy.
        let page_frame = 4096 + 24;
        let bound = (super::RESTART_FRAMES as u64 + 4000) * page_frame;
        let wal = wal_bytes(dir.path());
        assert!(wal < bound, "the log grew to {wal} bytes (bound {bound})");
    }

    /// What another process logged is copied into the database even when
    /// this one commits nothing: the thread checkpoints every `QUIET_CHECK`.
    #[test]
    fn what_other_processes_log_is_checkpointed() {
        let (dir, _q) = new_queue();
        let db = dir.path().join("queues.sqlite3");
        let db_bytes = || std::fs::metadata(&db).unwrap().len();
        let before = db_bytes();
        // Another process's connection, which never checkpoints itself.
        let other = rusqlite::Connection::open(&db).unwrap();
        other.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        other
            .execute_batch(
                "CREATE TABLE filler (x BLOB); INSERT INTO filler VALUES (zeroblob(1000000));",
            )
            .unwrap();
        // Only a checkpoint writes the database file itself.
        let deadline = Instant::now() + Duration::from_secs(20);
        while db_bytes() < before + 1_000_000 {
            assert!(Instant::now() < deadline, "nothing was checkpointed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A reader holding an old snapshot (another process's long read) can
    /// keep the log from finishing, but writers never wait for it: the
    /// finishing checkpoint gives up after `RESTART_WAIT`, not after the
    /// writers' ten seconds.
    #[tokio::test(flavor = "current_thread")]
    async fn a_long_reader_holds_no_writer_back() {
        let (dir, q) = new_queue();
        churn(&q, 50).await;
        let reader = rusqlite::Connection::open(dir.path().join("queues.sqlite3")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        // The log passes RESTART_FRAMES (the reader's snapshot keeps it
        // from being copied), and every wake-up after tries to finish it.
        let longest = churn(&q, 1000).await;
        // Liveness, not speed: a finishing checkpoint that waited for the
        // reader would hold writers back for BUSY_TIMEOUT (10 s).
        assert!(
            longest < Duration::from_secs(5),
            "a delete took {longest:?}"
        );
        reader.execute_batch("COMMIT").unwrap();
    }
}
