//! How the worker serves a queue, as a real process against both backends:
//! the queue's long poll, heartbeats, concurrency, FIFO groups, a SIGKILLed
//! parent, registry modules, a job's timeout, and long polls when draining
//! or stopping. Jobs: `tests/fixtures/modes.wat` (no WASI) and
//! `tests/fixtures/hostile.c` (sleeps, on-exit output).

use crate::common::{hostile_path, modes_path};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, Queue, QueueConfig};

/// Poll the queue's (visible, in flight, delayed) until `done` holds; fail
/// after `timeout`.
async fn counts_until(
    q: &dyn Queue,
    what: &str,
    timeout: Duration,
    done: impl Fn((u64, u64, u64)) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = counts(q).await;
        if done(c) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: counts still {c:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_queues_long_poll_setting_is_used_without_wait(b: Backend) {
    let (q, addr) = b
        .create(
            "longpoll",
            &QueueConfig {
                receive_wait: Duration::from_secs(2),
                ..config(30)
            },
        )
        .await;
    let deadline = now_ms() + 6_000;
    q.send(&OutgoingMessage::new(format!("until:{deadline}")))
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
        ],
    );
    w.wait_for(
        "serving queue",
        &[("long_poll_s", "2")],
        Duration::from_secs(20),
    );
    w.child_pid(Duration::from_secs(20));
    signal_before(&w, deadline, 1_000);
    let (status, log) = w.wait(Duration::from_secs(40));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert!(
        count_in(
            &log,
            "message returned to the queue",
            &[("visibility_s", "3")]
        ) >= 1,
        "requeued after long poll + 1 s: {log}"
    );
    assert_eq!(counts(q.as_ref()).await.0, 0, "still invisible right after");
    counts_until(
        q.as_ref(),
        "visible after 3 s",
        Duration::from_secs(15),
        |c| c.0 == 1,
    )
    .await;
}

async fn heartbeats_hold_a_job_three_times_the_visibility_timeout(b: Backend) {
    let (q, addr) = b.create("heartbeat", &config(3)).await;
    q.send(&OutgoingMessage::new("sleep-ms:10000"))
        .await
        .unwrap();
    let args = [
        "--visibility-timeout",
        "3",
        "--heartbeat",
        "1",
        "--wait",
        "0",
        "--drain",
    ];
    let a = Worker::start(&b, &addr, &hostile_path(), &args);
    a.wait_for("worker child started", &[], Duration::from_secs(30));
    let other = Worker::start(&b, &addr, &hostile_path(), &args); // would take it if it came back
    let (sa, la) = a.wait(Duration::from_secs(40));
    let (sb, lb) = other.wait(Duration::from_secs(40));
    assert!(sa.success() && sb.success(), "{la}\n{lb}");
    assert_eq!(
        count_in(&la, "worker child started", &[]) + count_in(&lb, "worker child started", &[]),
        1,
        "delivered once:\n{la}\n{lb}"
    );
    assert_eq!(
        count_in(&la, "job succeeded; message deleted", &[]),
        1,
        "{la}"
    );
}

async fn concurrency_runs_jobs_side_by_side(b: Backend) {
    let (q, addr) = b.create("concurrency", &config(30)).await;
    for _ in 0..4 {
        q.send(&OutgoingMessage::new("sleep-ms:1500"))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let w = Worker::start(
        &b,
        &addr,
        &hostile_path(),
        &[FAST, &["--concurrency", "4", "--drain"]].concat(),
    );
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        4,
        "{log}"
    );
    let events = events_of(&log);
    let first_end = position(&events, |e| message(e) == "worker child ended")
        .unwrap_or_else(|| panic!("no child ended: {log}"));
    let starts_before = events[..first_end]
        .iter()
        .filter(|e| message(e) == "worker child started")
        .count();
    assert_eq!(starts_before, 4, "all four ran at once: {log}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

async fn fatal_on_a_fifo_queue_dead_letters_with_its_group(b: Backend) {
    let fifo = QueueConfig {
        fifo: true,
        ..config(30)
    };
    let (q, dlq) = b.create_with_dlq("fifo.fifo", 3, &fifo).await;
    let addr = b.address_of(q.as_ref());
    q.send(&OutgoingMessage {
        group_id: Some("g1".into()),
        ..OutgoingMessage::new("f")
    })
    .await
    .unwrap();
    let w = Worker::start(&b, &addr, &modes_path(), &[FAST, &["--drain"]].concat());
    let (status, log) = w.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    let dead = all(dlq.as_ref()).await;
    assert_eq!(dead.len(), 1, "{log}");
    assert_eq!(dead[0].group_id.as_deref(), Some("g1"));
    assert_eq!(dead[0].body, "f");
    assert_eq!(
        dead[0].attributes["wasm-jobs.dead-letter-reason"].as_text(),
        "job failed fatally: bad input"
    );
}

/// With several slots, a FIFO queue's groups run beside each other but each
/// group one message at a time, in order: a message that fails and comes
/// back holds the rest of its group until it has run again (`x` traps on
/// its first delivery).
async fn fifo_groups_run_in_order_one_message_at_a_time(b: Backend) {
    let fifo = QueueConfig {
        fifo: true,
        ..config(30)
    };
    let (q, addr) = b.create("groups.fifo", &fifo).await;
    let mut sent: Vec<(&str, String)> = Vec::new();
    for (body, group) in [
        ("x", "a"),
        ("o1", "a"),
        ("o2", "a"),
        ("o3", "b"),
        ("o4", "b"),
    ] {
        let id = q
            .send(&OutgoingMessage {
                group_id: Some(group.into()),
                ..OutgoingMessage::new(body)
            })
            .await
            .unwrap();
        sent.push((group, id));
    }
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &[FAST, &["--concurrency", "4", "--drain"]].concat(),
    );
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let done: Vec<String> = events_of(&log)
        .iter()
        .filter(|e| message(e) == "job succeeded; message deleted")
        .map(|e| field(e, "message_id"))
        .collect();
    for group in ["a", "b"] {
        let expected: Vec<&String> = sent
            .iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, id)| id)
            .collect();
        let order: Vec<&String> = done.iter().filter(|id| expected.contains(id)).collect();
        assert_eq!(order, expected, "group {group} in send order: {log}");
    }
}

async fn sigkill_of_the_parent_takes_every_child_down_and_loses_nothing(b: Backend) {
    let (q, addr) = b.create("sigkill", &config(30)).await;
    for _ in 0..3 {
        q.send(&OutgoingMessage::new("l")).await.unwrap();
    }
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &[
            "--visibility-timeout",
            "2",
            "--heartbeat",
            "1",
            "--wait",
            "0",
            "--concurrency",
            "3",
        ],
    );
    wait_for_count(&w, "worker child started", 3, Duration::from_secs(20));
    let pids: Vec<i32> = w
        .events()
        .iter()
        .filter(|e| message(e) == "worker child started")
        .map(|e| field(e, "pid").parse().unwrap())
        .collect();
    let parent = w.child.id() as i32;
    let fork_server = std::fs::read_to_string(format!("/proc/{}/stat", pids[0]))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<i32>()
        .unwrap();
    assert_ne!(fork_server, parent, "children belong to the fork server");
    w.signal(libc::SIGKILL);
    let (status, _) = w.wait(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let gone_by = Instant::now() + Duration::from_secs(5);
    while pids.iter().chain([&fork_server]).any(|p| alive(*p)) {
        assert!(
            Instant::now() < gone_by,
            "orphans left: {pids:?} / {fork_server}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    counts_until(
        q.as_ref(),
        "every message back after its timeout",
        Duration::from_secs(15),
        |c| c.0 == 3,
    )
    .await;
}

async fn registry_modules_run_by_name_and_unknown_ones_are_dead_lettered(b: Backend) {
    let (q, dlq) = b.create_with_dlq("registry", 3, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let registry = tempfile::tempdir().unwrap();
    let push = b
        .cli()
        .args(["module", "push", "--name", "modes", "--registry"])
        .arg(registry.path())
        .arg(modes_path())
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let with = |module: &str, tenant: Option<&str>| {
        let mut m = OutgoingMessage::new("o");
        m.attributes
            .insert("module".into(), AttributeValue::String(module.into()));
        if let Some(t) = tenant {
            m.attributes
                .insert("tenant".into(), AttributeValue::String(t.into()));
        }
        m
    };
    q.send(&with("modes", None)).await.unwrap();
    q.send(&with("no-such-module", None)).await.unwrap();
    q.send(&with("modes", Some("other-tenant"))).await.unwrap();
    q.send(&with("/etc/passwd", None)).await.unwrap();
    let out = b
        .cli()
        .args([
            "worker",
            "--queue",
            &addr,
            "--drain",
            "--wait",
            "0",
            "--log-format",
            "json",
            "--registry",
        ])
        .arg(registry.path())
        .env("RUST_LOG", TEST_LOG)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        1,
        "{log}"
    );
    assert_eq!(
        count_in(&log, "worker child started", &[]),
        1,
        "only the known module of the queue's own tenant runs: {log}"
    );
    assert_eq!(
        count_in(&log, "message refused", &[("kind", "tenant_mismatch")]),
        1,
        "{log}"
    );
    assert!(
        count_in(&log, "module loaded", &[("source", "Cached")]) >= 1,
        "pushed modules are not compiled again: {log}"
    );
    let reasons = dead_letter_reasons(dlq.as_ref()).await;
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no module `no-such-module` for tenant `default`")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r
            == "tenant attribute \"other-tenant\" does not match the queue's tenant \"default\""),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("/etc/passwd")),
        "a path is not a module name: {reasons:?}"
    );
}

async fn a_job_past_its_timeout_is_stopped_in_its_child(b: Backend) {
    let (q, addr) = b.create("timeout", &config(30)).await;
    // "l" spins in wasm: only the child's epoch ticks (a SIGALRM timer) can stop it.
    q.send(&OutgoingMessage::new("l")).await.unwrap();
    q.send(&OutgoingMessage::new("l")).await.unwrap();
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &[
            "--timeout",
            "1",
            "--concurrency",
            "2",
            "--wait",
            "0",
            "--visibility-timeout",
            "30",
        ],
    );
    let started = Instant::now();
    wait_for_count(&w, "worker child ended", 2, Duration::from_secs(20));
    let log = w.log();
    assert!(started.elapsed() < Duration::from_secs(10), "{log}");
    let timed_out = events_of(&log)
        .iter()
        .filter(|e| {
            message(e) == "worker child ended"
                && get(e, "end").is_some_and(|end| end.starts_with("timeout: "))
        })
        .count();
    assert_eq!(timed_out, 2, "both reported their own timeout: {log}");
    assert_eq!(
        count_in(
            &log,
            "worker outlived its timeout; killing its process group",
            &[]
        ),
        0,
        "stopped by its own deadline: {log}"
    );
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
}

/// With a 3 s long poll, the worker exits about one poll after its last
/// job, not two (it used to wait out the poll under way after the empty
/// one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_exits_within_one_long_poll_of_its_last_job() {
    let b = Backend::embedded();
    let (q, addr) = b.create("drain-poll", &config(30)).await;
    for _ in 0..3 {
        q.send(&OutgoingMessage::new("o")).await.unwrap();
    }
    let args = ["--wait", "3", "--drain", "--concurrency", "2"];
    let w = Worker::start(&b, &addr, &modes_path(), &args);
    let done = "job succeeded; message deleted";
    wait_for_count(&w, done, 3, Duration::from_secs(30));
    let last_job = Instant::now();
    let (status, log) = w.wait(Duration::from_secs(30));
    let after = last_job.elapsed();
    assert!(status.success(), "{log}");
    assert!(
        after < Duration::from_millis(4_500),
        "exited {after:?} after the last job (one poll is 3 s): {log}"
    );
    assert_eq!(count_in(&log, done, &[]), 3, "{log}");
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

/// An idle worker in a 20 s long poll on the embedded queue stops at
/// once on SIGTERM: the poll ends where it is (nothing is taken after its
/// last check), instead of being waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_in_a_long_poll_stops_at_once_on_sigterm() {
    let b = Backend::embedded();
    let (q, addr) = b.create("term-poll", &config(30)).await;
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    let w = Worker::start(&b, &addr, &modes_path(), &["--wait", "20"]);
    // After its one job, the receiver is straight back in a 20 s poll.
    let done = "job succeeded; message deleted";
    wait_for_count(&w, done, 1, Duration::from_secs(30));
    let signalled = Instant::now();
    w.signal(libc::SIGTERM);
    let (status, log) = w.wait(Duration::from_secs(30));
    let after = signalled.elapsed();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert!(
        after < Duration::from_secs(10),
        "stopped {after:?} after SIGTERM (the poll under way was 20 s): {log}"
    );
    assert_eq!(
        count_in(
            &log,
            "released a message received after the exit signal",
            &[]
        ),
        0,
        "{log}"
    );
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

crate::on_both_backends!(
    a_job_past_its_timeout_is_stopped_in_its_child,
    the_queues_long_poll_setting_is_used_without_wait,
    heartbeats_hold_a_job_three_times_the_visibility_timeout,
    concurrency_runs_jobs_side_by_side,
    fatal_on_a_fifo_queue_dead_letters_with_its_group,
    fifo_groups_run_in_order_one_message_at_a_time,
    sigkill_of_the_parent_takes_every_child_down_and_loses_nothing,
    registry_modules_run_by_name_and_unknown_ones_are_dead_lettered,
);
