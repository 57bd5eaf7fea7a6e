//! Batched queue traffic, against both backends: a backlog is received in
//! batches and deleted in batches (counted by the worker's own
//! `wasm_jobs_queue_calls_total{call}`), and prefetched messages, received
//! ahead of a free slot, are heartbeated while they wait and released at
//! once on an exit signal.

use crate::common::free_port;
use crate::common::{hostile_path, modes_path};
use crate::observability::{metric_opt, try_get};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use wasm_jobs::queue::OutgoingMessage;

/// Calls of one kind in a metrics text (0 if never made).
fn calls(text: &str, call: &str) -> f64 {
    metric_opt(
        text,
        &format!("wasm_jobs_queue_calls_total{{call=\"{call}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn a_backlog_is_received_and_deleted_in_batches(b: Backend) {
    const JOBS: usize = 100;
    let (q, addr) = b.create("backlog", &config(60)).await;
    let bodies: Vec<OutgoingMessage> = (0..JOBS).map(|_| OutgoingMessage::new("o")).collect();
    for chunk in bodies.chunks(10) {
        q.send_batch(chunk).await.unwrap();
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    // A long delete window, so on moto (a call takes milliseconds) the
    // deletes of jobs ending while a call is under way fill whole batches
    // whatever the machine's speed.
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &[
            "--concurrency",
            "4",
            "--wait",
            "1",
            "--delete-window",
            "1",
            "--metrics-addr",
            &metrics,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        // Connection refused until the endpoint is up.
        let text = try_get(&metrics, "/metrics", Duration::from_secs(5))
            .map(|(_, body)| body)
            .unwrap_or_default();
        if metric_opt(&text, "wasm_jobs_jobs_succeeded_total") == Some(JOBS as f64) {
            break text;
        }
        assert!(Instant::now() < deadline, "{}\n{text}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let receives = calls(&text, "ReceiveMessage");
    let deletes = calls(&text, "DeleteMessageBatch") + calls(&text, "DeleteMessage");
    // One receive per freed slot would be about 100; batches of up to 10
    // (the first fills the 4 slots and the prefetch of 10) need 10 to 15,
    // and a long poll or two may have returned empty at the end.
    assert!(receives <= 20.0, "{receives} receives\n{text}");
    match b {
        // Each embedded delete takes tens of microseconds: most find no
        // call under way and go at once, so there is no bound to check.
        Backend::Embedded { .. } => assert!(deletes >= 1.0, "{text}"),
        // 100 deletes, the first alone, then batches of up to 10.
        Backend::Moto { .. } => assert!(deletes <= 20.0, "{deletes} delete calls\n{text}"),
    }
    assert_eq!(calls(&text, "ChangeMessageVisibility"), 0.0, "{text}");
    let (visible, in_flight, _) = counts(q.as_ref()).await;
    assert_eq!((visible, in_flight), (0, 0));
}

async fn prefetched_messages_are_heartbeated_and_released_at_once_on_an_exit_signal(b: Backend) {
    // Four jobs that each run until the deadline; one slot, so three wait
    // in the prefetch. The visibility timeout (3 s) passes more than once
    // before the signal: only heartbeats keep the waiting ones invisible.
    let (q, addr) = b.create("prefetched", &config(3)).await;
    let deadline = now_ms() + 9_000;
    for _ in 0..4 {
        q.send(&OutgoingMessage::new(format!("until:{deadline}")))
            .await
            .unwrap();
    }
    let w = Worker::start(
        &b,
        &addr,
        &hostile_path(),
        &[
            "--visibility-timeout",
            "3",
            "--heartbeat",
            "1",
            "--exit-timeout",
            "10",
            "--wait",
            "0",
            "--prefetch",
            "10",
        ],
    );
    let pid = w.child_pid(Duration::from_secs(30));
    let received_by = Instant::now() + Duration::from_secs(10);
    while counts(q.as_ref()).await != (0, 4, 0) {
        assert!(
            Instant::now() < received_by,
            "all four received: {}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past two visibility timeouts, nothing came back to the queue.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        assert_eq!(counts(q.as_ref()).await, (0, 4, 0), "{}", w.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.count("worker child started", &[]), 1, "one slot");
    w.signal(libc::SIGTERM);
    // The three that never started are back at once, while the running
    // one's on-exit still runs (it sleeps until the deadline).
    let released_by = Instant::now() + Duration::from_secs(5);
    while counts(q.as_ref()).await.0 < 3 {
        assert!(Instant::now() < released_by, "{}", w.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(alive(pid), "the running job is still in exit handling");
    wait_for_count(
        &w,
        "prefetched message released on the exit signal",
        3,
        Duration::from_secs(5),
    );
    let (status, log) = w.wait(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert_eq!(
        count_in(&log, "message returned to the queue", &[]),
        1,
        "{log}"
    );
    assert_eq!(
        count_in(&log, "prefetched message released on the exit signal", &[]),
        3,
        "{log}"
    );
    // All four are back, each delivered once before (no redelivery while
    // they waited): this receive is their second.
    let back = all(q.as_ref()).await;
    assert_eq!(back.len(), 4, "{log}");
    for m in back {
        assert_eq!(m.receive_count, 2, "{m:?}\n{log}");
    }
}

crate::on_both_backends!(
    a_backlog_is_received_and_deleted_in_batches,
    prefetched_messages_are_heartbeated_and_released_at_once_on_an_exit_signal,
);
