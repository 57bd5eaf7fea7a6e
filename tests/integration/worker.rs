//! The worker as a real process with real signals, against both backends:
//! every scenario of the reference dispatcher's own tests, translated to
//! jobs, plus heartbeats, concurrency, FIFO dead-lettering and SIGKILL of
//! the parent. Jobs: `tests/fixtures/modes.wat` (no WASI) and
//! `tests/fixtures/hostile.c` (sleeps, on-exit output).

use crate::common::{hostile_path, modes_path};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, Queue, QueueConfig};

const FAST: &[&str] = &[
    "--visibility-timeout",
    "4",
    "--heartbeat",
    "1",
    "--exit-timeout",
    "2",
    "--wait",
    "0",
];

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

/// The index of the first event that satisfies `pred`.
fn position(events: &[LogEvent], pred: impl Fn(&LogEvent) -> bool) -> Option<usize> {
    events.iter().position(pred)
}

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
        .env("RUST_LOG", "info")
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
    success_deletes_the_message,
    a_failure_leaves_the_message_and_it_comes_back_with_count_two,
    worker_killed_by_sigterm_with_retries_is_redelivered,
    worker_killed_by_sigterm_without_retries_is_dead_lettered,
    parent_sigterm_suspends_runs_on_exit_requeues_and_dies_by_sigterm,
    on_exit_that_hangs_is_tried_twice_then_dead_lettered_and_parent_exits_1,
    second_try_after_the_kill_requeues_with_retries,
    second_try_after_the_kill_dead_letters_without_retries,
    the_queues_long_poll_setting_is_used_without_wait,
    heartbeats_hold_a_job_three_times_the_visibility_timeout,
    concurrency_runs_jobs_side_by_side,
    fatal_on_a_fifo_queue_dead_letters_with_its_group,
    fifo_groups_run_in_order_one_message_at_a_time,
    sigkill_of_the_parent_takes_every_child_down_and_loses_nothing,
    registry_modules_run_by_name_and_unknown_ones_are_dead_lettered,
);
