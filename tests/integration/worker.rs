//! The worker as a real process with real signals, against both backends:
//! every scenario of the reference dispatcher's own tests, translated to
//! jobs (how the worker serves a queue otherwise is `worker_serving.rs`).
//! Jobs: `tests/fixtures/modes.wat` (no WASI) and
//! `tests/fixtures/hostile.c` (sleeps, on-exit output).

use crate::common::{hostile_path, modes_path};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use wasm_jobs::queue::OutgoingMessage;

async fn success_deletes_the_message(b: Backend) {
    let (q, addr) = b.create("ok", &config(30)).await;
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    let w = Worker::start(&b, &addr, &modes_path(), &[FAST, &["--drain"]].concat());
    let (status, log) = w.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        1,
        "{log}"
    );
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

async fn a_failure_leaves_the_message_and_it_comes_back_with_count_two(b: Backend) {
    let (q, addr) = b.create("redeliver", &config(30)).await;
    q.send(&OutgoingMessage::new("x")).await.unwrap(); // traps on first delivery
    // The message comes back after the visibility timeout; 2 s leaves the
    // second attempt's heartbeats 1.5 s of slack on a loaded CI machine
    // (with 1 s, one full-suite run on moto did not see the second attempt
    // succeed; a late heartbeat is the likeliest cause).
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &[
            "--visibility-timeout",
            "2",
            "--heartbeat",
            "0.5",
            "--wait",
            "0",
            "--drain",
        ],
    );
    let (status, log) = w.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    let events = events_of(&log);
    let trap = position(&events, |e| {
        is(
            e,
            "job did not succeed; leaving the message for redelivery",
            &[("attempt", "1")],
        )
    })
    .unwrap_or_else(|| panic!("first try left: {log}"));
    let ok = position(&events, |e| {
        is(e, "job succeeded; message deleted", &[("attempt", "2")])
    })
    .unwrap_or_else(|| panic!("second try, count 2: {log}"));
    assert!(trap < ok, "{log}");
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

async fn worker_killed_by_sigterm_with_retries_is_redelivered(b: Backend) {
    let (q, addr) = b.create("killretry", &config(30)).await;
    q.send(&OutgoingMessage::new("y")).await.unwrap(); // loops on first delivery
    let w = Worker::start(&b, &addr, &modes_path(), &[FAST, &["--drain"]].concat());
    let pid = w.child_pid(Duration::from_secs(20));
    // SAFETY: signalling the worker child's process group.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let (status, log) = w.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "the parent goes on after a child's signal: {log}"
    );
    assert!(count_in(&log, "on-exit finished", &[]) >= 1, "{log}");
    assert!(
        count_in(&log, "message returned to the queue", &[]) >= 1,
        "{log}"
    );
    assert!(
        count_in(&log, "worker child started", &[("attempt", "2")]) >= 1,
        "redelivered: {log}"
    );
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

async fn worker_killed_by_sigterm_without_retries_is_dead_lettered(b: Backend) {
    let (q, dlq) = b.create_with_dlq("killdlq", 1, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    q.send(&OutgoingMessage::new("y")).await.unwrap();
    let w = Worker::start(&b, &addr, &modes_path(), &[FAST, &["--drain"]].concat());
    let pid = w.child_pid(Duration::from_secs(20));
    // SAFETY: signalling the worker child's process group.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let (status, log) = w.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(count_in(&log, "message dead-lettered", &[]) >= 1, "{log}");
    let dead = all(dlq.as_ref()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "y");
    assert!(
        dead[0]
            .attributes
            .contains_key("wasm-jobs.dead-letter-reason")
    );
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

async fn parent_sigterm_suspends_runs_on_exit_requeues_and_dies_by_sigterm(b: Backend) {
    let (q, addr) = b.create("parentterm", &config(30)).await;
    // run sleeps until the deadline; on-exit sleeps until it too, so the
    // suspended worker can be seen while on-exit runs (about 1.5 s).
    let deadline = now_ms() + 6_000;
    let id = q
        .send(&OutgoingMessage::new(format!("until:{deadline}")))
        .await
        .unwrap();
    let w = Worker::start(
        &b,
        &addr,
        &hostile_path(),
        &[
            "--exit-timeout",
            "10",
            "--visibility-timeout",
            "30",
            "--heartbeat",
            "1",
            "--wait",
            "0",
        ],
    );
    let pid = w.child_pid(Duration::from_secs(30));
    signal_before(&w, deadline, 1_500);
    w.wait_for(
        "worker suspended",
        &[("pid", &pid.to_string())],
        Duration::from_secs(10),
    );
    let stopped_by = Instant::now() + Duration::from_secs(1);
    while process_state(pid) != 'T' && Instant::now() < stopped_by {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(process_state(pid), 'T', "worker stopped while on-exit runs");
    let (status, log) = w.wait(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    let on_exit_line = format!("on-exit: message {id} stopped by signal 15");
    assert!(
        events_of(&log).iter().any(|e| {
            get(e, "target").as_deref() == Some("wasm_jobs::guest")
                && get(e, "line").as_deref() == Some(on_exit_line.as_str())
        }),
        "on-exit output in the log: {log}"
    );
    assert!(
        count_in(&log, "message returned to the queue", &[]) >= 1,
        "{log}"
    );
    assert!(!alive(pid), "worker killed");
    assert_eq!(
        counts(q.as_ref()).await.0,
        1,
        "back on the queue, visible now (no long poll)"
    );
}

async fn on_exit_that_hangs_is_tried_twice_then_dead_lettered_and_parent_exits_1(b: Backend) {
    let (q, dlq) = b.create_with_dlq("hang", 5, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    q.send(&OutgoingMessage::new("hang")).await.unwrap();
    let w = Worker::start(
        &b,
        &addr,
        &hostile_path(),
        &[
            "--exit-timeout",
            "1",
            "--visibility-timeout",
            "30",
            "--heartbeat",
            "1",
            "--wait",
            "0",
        ],
    );
    let pid = w.child_pid(Duration::from_secs(30));
    w.signal(libc::SIGTERM);
    let (status, log) = w.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{log}");
    const TIMED_OUT: &str = "on-exit did not finish in time; killing it";
    assert_eq!(count_in(&log, TIMED_OUT, &[]), 2, "{log}");
    assert_eq!(
        count_in(&log, TIMED_OUT, &[("on_exit_try", "1")]),
        1,
        "{log}"
    );
    let events = events_of(&log);
    let kill = position(&events, |e| {
        message(e) == "killing the worker before the second on-exit try"
    })
    .unwrap_or_else(|| panic!("worker killed: {log}"));
    let second = position(&events, |e| is(e, TIMED_OUT, &[("on_exit_try", "2")]))
        .unwrap_or_else(|| panic!("second try timed out: {log}"));
    assert!(kill < second, "killed before the second try: {log}");
    assert!(!alive(pid));
    assert_eq!(all(dlq.as_ref()).await.len(), 1, "{log}");
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

/// The message's on-exit sleeps until `deadline`; the signal goes out 3 s
/// before it, so the first try (2 s) times out and the second finishes.
async fn second_on_exit_try_succeeding(
    b: &Backend,
    addr: &str,
    deadline: u128,
) -> (ExitStatus, String) {
    let w = Worker::start(
        b,
        addr,
        &hostile_path(),
        &[
            "--exit-timeout",
            "2",
            "--visibility-timeout",
            "30",
            "--heartbeat",
            "1",
            "--wait",
            "0",
        ],
    );
    w.child_pid(Duration::from_secs(30));
    signal_before(&w, deadline, 3_000);
    w.wait(Duration::from_secs(30))
}

async fn second_try_after_the_kill_requeues_with_retries(b: Backend) {
    let (q, addr) = b.create("second", &config(30)).await;
    let deadline = now_ms() + 8_000;
    q.send(&OutgoingMessage::new(format!("until:{deadline}")))
        .await
        .unwrap();
    let (status, log) = second_on_exit_try_succeeding(&b, &addr, deadline).await;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    const TIMED_OUT: &str = "on-exit did not finish in time; killing it";
    assert_eq!(count_in(&log, TIMED_OUT, &[]), 1, "{log}");
    assert_eq!(
        count_in(&log, TIMED_OUT, &[("on_exit_try", "1")]),
        1,
        "{log}"
    );
    assert!(
        count_in(&log, "on-exit finished", &[("on_exit_try", "2")]) >= 1,
        "{log}"
    );
    assert!(
        count_in(&log, "message returned to the queue", &[]) >= 1,
        "{log}"
    );
    assert_eq!(counts(q.as_ref()).await.0, 1);
}

async fn second_try_after_the_kill_dead_letters_without_retries(b: Backend) {
    let (q, dlq) = b.create_with_dlq("second-dlq", 1, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let deadline = now_ms() + 8_000;
    q.send(&OutgoingMessage::new(format!("until:{deadline}")))
        .await
        .unwrap();
    let (status, log) = second_on_exit_try_succeeding(&b, &addr, deadline).await;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert!(count_in(&log, "on-exit finished", &[]) >= 1, "{log}");
    assert!(count_in(&log, "message dead-lettered", &[]) >= 1, "{log}");
    assert_eq!(all(dlq.as_ref()).await.len(), 1);
}

crate::on_both_backends!(
    success_deletes_the_message,
    a_failure_leaves_the_message_and_it_comes_back_with_count_two,
    worker_killed_by_sigterm_with_retries_is_redelivered,
    worker_killed_by_sigterm_without_retries_is_dead_lettered,
    parent_sigterm_suspends_runs_on_exit_requeues_and_dies_by_sigterm,
    on_exit_that_hangs_is_tried_twice_then_dead_lettered_and_parent_exits_1,
    second_try_after_the_kill_requeues_with_retries,
    second_try_after_the_kill_dead_letters_without_retries,
);
