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
//! So the store's connection has a write-ahead-log hook of its own
//! ([`logged`]) instead of SQLite's: a commit that leaves the log (every
//! process's frames) at [`Checkpoints`]' threshold wakes this thread, which
//! checkpoints on a connection of its own:
//! - `PASSIVE` first: it copies what the log holds without taking a lock
//!   any writer needs, so commits go on while it copies and syncs. The next
//!   wake-up comes when the log has grown by [`CHECKPOINT_FRAMES`] more, or
//!   has started over and reached that many ([`due`]). (Woken by every
//!   commit past the threshold instead, checkpoints ran back to back, 390
//!   `fsync`s a second, and the log never started over.)
//! - Passive checkpoints alone do not let the log start over under a
//!   steady stream of commits (measured: copied to its end every time, the
//!   log grew until something else checkpointed). So once the log holds
//!   more than [`RESTART_FRAMES`], a `FULL` checkpoint follows, which
//!   copies what is left (usually nothing, then it syncs nothing) while
//!   writers wait, and the next commit starts the log over (its one
//!   `fsync`, of the new log's header, is the only one left in a commit).
//!   The database file is synced first, outside the lock, so a `FULL`
//!   checkpoint that does copy has little left to sync. It waits at most
//!   [`RESTART_WAIT`] for the write lock and again for readers of older
//!   snapshots (another process's long read), writers waiting meanwhile;
//!   one that could not finish is tried again at the next checkpoint.
//! - Should the thread fall [`BACKSTOP_FRAMES`] behind (a process that
//!   exits before its thread runs, among many such), the committing thread
//!   checkpoints as SQLite would have.
//!
//! Dropping the store stops the thread before the store's connection
//! closes, so that connection is the last and SQLite checkpoints the log
//! and removes it.

use super::storage;
use crate::queue::QueueError;
use rusqlite::Connection;
use rusqlite::hooks::Wal;
use std::cell::Cell;
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// Log frames (pages) a checkpoint waits for: SQLite's own default.
const CHECKPOINT_FRAMES: i64 = 1000;

/// Log frames past which a checkpoint finishes the log so that it starts
/// over: the log file holds about this many pages of 4 KiB, plus what one
/// checkpoint's wait adds.
const RESTART_FRAMES: i64 = 4000;

/// Log frames past which a commit checkpoints itself.
const BACKSTOP_FRAMES: c_int = 20_000;

/// How long the finishing checkpoint waits for the write lock, and then
/// for readers, while writers wait for it.
const RESTART_WAIT: Duration = Duration::from_millis(5);

thread_local! {
    /// The frames the log held after this thread's last commit, if it
    /// logged any (set by [`logged`], read by [`Checkpoints::committed`]).
    static LOG_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

/// The store connection's write-ahead-log hook, run by SQLite in the
/// committing thread after a commit that logged frames, with the frames the
/// log now holds. Errors are not returned: the commit has happened.
fn logged(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    LOG_FRAMES.set(frames);
    if frames >= BACKSTOP_FRAMES {
        let _ = wal.checkpoint();
    }
    Ok(())
}

/// The writers' side: wakes the checkpoint thread.
pub(super) struct Checkpoints {
    /// The frames the log held at the last checkpoint.
    last_log: Arc<AtomicI64>,
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpoints {
    /// Hook `conn`'s commits, and start the thread that checkpoints `db`.
    pub(super) fn start(conn: &Connection, db: &Path) -> Result<Self, QueueError> {
        conn.wal_hook(Some(logged));
        let checkpointer = Connection::open(db).map_err(storage)?;
        checkpointer.busy_timeout(RESTART_WAIT).map_err(storage)?;
        let last_log = Arc::new(AtomicI64::new(0));
        let (wake, woken) = sync_channel::<()>(1);
        let mut thread = Thread {
            conn: checkpointer,
            db: db.to_owned(),
            last_log: Arc::clone(&last_log),
            last_error: None,
        };
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    thread.checkpoint();
                }
            })
            .map_err(|e| QueueError::Other(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpoints {
            last_log,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// A transaction committed on this thread: wake the checkpoint thread if
    /// it logged frames and the log is [`due`] for a checkpoint.
    pub(super) fn committed(&self) {
        let frames = i64::from(LOG_FRAMES.take());
        if !due(frames, self.last_log.load(Ordering::Relaxed)) {
            return;
        }
        if let Some(wake) = &self.wake {
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the embedded queue's checkpoint thread has stopped");
                }
            }
        }
    }
}

impl Drop for Checkpoints {
    /// Stop the thread (after the checkpoint it may be running) and close
    /// its connection, so the store's own closes last.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The checkpoint thread's state.
struct Thread {
    conn: Connection,
    db: PathBuf,
    last_log: Arc<AtomicI64>,
    /// The last failure logged, so a lasting one is logged once.
    last_error: Option<String>,
}

impl Thread {
    fn checkpoint(&mut self) {
        match self.try_checkpoint() {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "checkpointing the embedded queue's log failed");
                }
                self.last_error = Some(e);
            }
        }
    }

    /// Copy what the log holds without waiting for anyone; if the log is
    /// past [`RESTART_FRAMES`], finish it so it starts over.
    fn try_checkpoint(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let log = run(&self.conn, PASSIVE)?;
        self.last_log.store(log, Ordering::Relaxed);
        if log > RESTART_FRAMES {
            std::fs::File::open(&self.db)?.sync_data()?;
            run(&self.conn, FULL)?;
        }
        Ok(())
    }
}

/// A checkpoint that waits for nobody.
const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";

/// A checkpoint that holds writers back to copy the whole log.
const FULL: &str = "PRAGMA wal_checkpoint(FULL)";

/// Run one checkpoint ([`PASSIVE`] or [`FULL`]); the frames in the log.
/// One that could not finish (busy) is no error: the next goes on.
fn run(conn: &Connection, checkpoint: &str) -> rusqlite::Result<i64> {
    // One row: busy, frames in the log, frames copied.
    conn.query_row(checkpoint, [], |r| r.get(1))
}

/// Whether a log of `frames` is due for a checkpoint, the last one having
/// found `last_log`: [`CHECKPOINT_FRAMES`] more than then, or that many
/// since it started over (it holds fewer than then).
fn due(frames: i64, last_log: i64) -> bool {
    if frames < last_log {
        frames >= CHECKPOINT_FRAMES
    } else {
        frames >= last_log + CHECKPOINT_FRAMES
    }
}

#[cfg(test)]
mod tests;
