//! Tests of the embedded queue's checkpoints: when one is due, that the log
//! starts over under load and after another process wrote it, that a long
//! reader holds no writer back, and that a dropped store leaves no log.

use super::{CHECKPOINT_FRAMES, RESTART_FRAMES, due};
use crate::queue::embedded::{EmbeddedQueue, EmbeddedStore};
use crate::queue::{OutgoingMessage, Queue, QueueConfig, ReceiveRequest};
use std::path::Path;
use std::time::{Duration, Instant};

/// Send, receive and delete one message, `n` times: three commits and
/// about ten logged pages each. The longest round.
async fn churn(q: &dyn Queue, n: usize) -> Duration {
    let mut longest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
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

fn file_bytes(dir: &Path, name: &str) -> u64 {
    std::fs::metadata(dir.join(name)).map_or(0, |m| m.len())
}

/// Poll until `done`, for at most 20 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_checkpoint_is_due_when_the_log_has_grown_by_as_many_frames_again() {
    let n = CHECKPOINT_FRAMES;
    // The first: the log reaches the threshold.
    assert!(!due(n - 1, 0));
    assert!(due(n, 0));
    // The log was not started over: as many frames again.
    assert!(!due(1500 + n - 1, 1500));
    assert!(due(1500 + n, 1500));
    // It was (it holds fewer than at the last checkpoint): the threshold
    // from its start.
    assert!(!due(n - 1, 1500));
    assert!(due(n, 1500));
    // A commit that logged nothing.
    assert!(!due(0, 1500));
}

/// Under commits that never pause, the log still starts over: it stays
/// near `RESTART_FRAMES` pages instead of growing with every commit
/// (passive checkpoints alone never finish it).
#[tokio::test(flavor = "current_thread")]
async fn the_log_starts_over_under_unbroken_commits() {
    let (dir, q) = new_queue();
    // About 30,000 pages logged in all, several times RESTART_FRAMES.
    churn(&q, 3000).await;
    // RESTART_FRAMES, what is logged while a checkpoint runs, and room
    // for a finishing checkpoint that found the database busy.
    let page_frame = 4096 + 24;
    let bound = (RESTART_FRAMES as u64 + 4000) * page_frame;
    let wal = file_bytes(dir.path(), "queues.sqlite3-wal");
    assert!(wal < bound, "the log grew to {wal} bytes (bound {bound})");
}

/// A reader holding an old snapshot (another process's long read) keeps
/// the log from finishing, and writers wait only for the finishing
/// checkpoint's few milliseconds, not for the reader.
#[tokio::test(flavor = "current_thread")]
async fn a_long_reader_holds_no_writer_back() {
    let (dir, q) = new_queue();
    churn(&q, 50).await;
    let reader = rusqlite::Connection::open(dir.path().join("queues.sqlite3")).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    // The log passes RESTART_FRAMES (the reader's snapshot keeps it from
    // being copied), and finishing it is tried.
    let longest = churn(&q, 1000).await;
    // Liveness, not speed: a finishing checkpoint that waited for the
    // reader would hold writers back for its busy timeout (seconds).
    assert!(longest < Duration::from_secs(1), "a round took {longest:?}");
    reader.execute_batch("COMMIT").unwrap();
}

/// The log holds every process's frames: a commit here that finds the log
/// past the threshold, filled by another process that never checkpoints,
/// wakes the checkpoint, which copies it all into the database file.
#[tokio::test(flavor = "current_thread")]
async fn what_other_processes_log_is_checkpointed_after_a_commit_here() {
    let (dir, q) = new_queue();
    let db = dir.path().join("queues.sqlite3");
    let before = file_bytes(dir.path(), "queues.sqlite3");
    let other = rusqlite::Connection::open(&db).unwrap();
    other.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    other
        .execute_batch(
            "CREATE TABLE filler (x BLOB); INSERT INTO filler VALUES (zeroblob(5000000));",
        )
        .unwrap();
    // Only a checkpoint writes the database file itself.
    assert_eq!(file_bytes(dir.path(), "queues.sqlite3"), before);
    q.send(&OutgoingMessage::new("x")).await.unwrap();
    wait_for("nothing was checkpointed", || {
        file_bytes(dir.path(), "queues.sqlite3") > before + 5_000_000
    });
}

/// Dropping the store ends its checkpoint thread first, so its own
/// connection closes last, and SQLite copies the log and removes it.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_store_leaves_no_log() {
    let (dir, q) = new_queue();
    churn(&q, 200).await;
    assert!(dir.path().join("queues.sqlite3-wal").exists());
    drop(q);
    assert!(!dir.path().join("queues.sqlite3-wal").exists());
}
