//! Passing failures are not verdicts: a compile helper killed mid-compile, a
//! fork server killed under a running job or under its `on-exit`, a template
//! killed, a fork server killed again and again (the chaos run is in
//! `chaos.rs`). Nothing is lost and nothing is dead-lettered.

use crate::common::{example_guest, hostile_path, modes_path, push_module};
use crate::fleet::with_module;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{OutgoingMessage, Queue, QueueConfig};

crate::on_both_backends!(
    a_killed_fork_server_is_replaced_and_loses_nothing,
    on_exit_lost_with_its_fork_server_twice_is_no_verdict,
);

/// The 18 MB Python guest compiles for seconds in a helper; killing the
/// helper leaves its message for redelivery (not the dead-letter queue),
/// the next compile succeeds and the job runs. Meanwhile another module's
/// jobs start and end. The helper does not hold the message it compiles
/// for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_compile_helper_is_not_a_verdict() {
    let b = Backend::embedded();
    // Push into one data dir (which compiles there), run from another whose
    // artifact cache is empty, so the worker must compile both modules.
    let pushed = tempfile::tempdir().unwrap();
    for (name, path) in [("py", example_guest("python")), ("modes", modes_path())] {
        push_module(pushed.path(), name, None, &path);
    }
    let (q, dlq) = b.create_with_dlq("compile", 5, &config(60)).await;
    let marker = format!("compiled-for-{}-{}", std::process::id(), now_ms());
    let body = format!(r#"{{"op":"count","text":"a b c {marker}"}}"#);
    q.send(&with_module("py", &body)).await.unwrap();
    let registry = pushed.path().join("registry");
    let w = Worker::with_args(
        &b,
        &[
            "--queue",
            &b.address_of(q.as_ref()),
            "--registry",
            registry.to_str().unwrap(),
            "--concurrency",
            "2",
            "--wait",
            "0",
            "--drain",
        ],
    );
    let first = w.wait_for("compile helper started", &[], Duration::from_secs(30));
    let helper: i32 = field(&first, "helper_pid").parse().unwrap();
    // The helper compiles for the call; it lets go of its message first
    // thing, so the compile (seconds) runs without it. Read until it has:
    // the log line above comes from the fork server as the fork returns,
    // possibly before the helper ran at all.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let memory = private_memory(helper);
        assert!(alive(helper) && !memory.is_empty(), "the helper compiles");
        if !holds(&memory, &marker) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the compile helper holds the body"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // While Python compiles, small jobs of another module come and go.
    for _ in 0..3 {
        q.send(&with_module("modes", "o")).await.unwrap();
    }
    w.wait_until("a modes job done", Duration::from_secs(30), |e| {
        is(e, "job succeeded; message deleted", &[("module", "modes")])
    });
    assert!(
        alive(helper),
        "the Python compile was still running: {}",
        w.log()
    );
    kill(helper, libc::SIGKILL);
    let (status, log) = w.wait(Duration::from_secs(180));
    assert!(status.success(), "{log}");
    let events = events_of(&log);
    let left = events
        .iter()
        .position(|e| {
            message(e) == "job could not start; the message is left for redelivery"
                && field(e, "why").contains("killed by signal 9")
        })
        .unwrap_or_else(|| panic!("the killed compile left the message: {log}"));
    let ran = events
        .iter()
        .position(|e| {
            is(
                e,
                "job succeeded; message deleted",
                &[("module", "py"), ("attempt", "2")],
            )
        })
        .unwrap_or_else(|| panic!("the Python job ran on its second delivery: {log}"));
    assert!(left < ran);
    assert_eq!(
        count_in(&log, "compile helper started", &[]),
        3,
        "py twice, modes once: {log}"
    );
    assert!(all(dlq.as_ref()).await.is_empty(), "{log}");
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

/// SIGTERM while the 18 MB Python guest compiles: the calls waiting for
/// the compile are not started when it ends (exit handling is for jobs
/// that started); their messages are released at once and the worker stops
/// without waiting for the compile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_signal_during_a_compile_starts_nothing_and_releases_its_messages() {
    let b = Backend::embedded();
    let (q, addr) = b.create("compiling", &config(60)).await;
    for _ in 0..2 {
        let body = r#"{"op":"count","text":"a b c"}"#;
        q.send(&OutgoingMessage::new(body)).await.unwrap();
    }
    // A fresh data dir: the artifact cache is empty, so the module compiles.
    let args = ["--concurrency", "2", "--wait", "0"];
    let w = Worker::start(&b, &addr, &example_guest("python"), &args);
    w.wait_for("compile helper started", &[], Duration::from_secs(60));
    stopped_before_any_start(w, q.as_ref(), Duration::from_secs(120)).await;
}

/// SIGTERM `w`, whose two messages of `q` wait for their module, and check
/// that it died by the signal without starting either job and released
/// both, all within `within`. Returns the log.
async fn stopped_before_any_start(w: Worker, q: &dyn Queue, within: Duration) -> String {
    w.signal(libc::SIGTERM);
    let (status, log) = w.wait(within);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert_eq!(count_in(&log, "worker child started", &[]), 0, "{log}");
    let released = count_in(
        &log,
        "message released on the exit signal before its job started (its module was still being prepared)",
        &[],
    ) + count_in(&log, "prefetched message released on the exit signal", &[]);
    assert_eq!(released, 2, "{log}");
    assert_eq!(counts(q).await, (2, 0, 0), "both visible again");
    log
}

/// SIGTERM while the fork server loads the Python guest from the artifact
/// cache (a few hundred ms): as during a compile, the calls waiting for it
/// are not started once it is loaded; their messages are released then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_signal_during_a_cache_load_starts_nothing_and_releases_its_messages() {
    let b = Backend::embedded();
    let (q, addr) = b.create("loading", &config(60)).await;
    let body = r#"{"op":"count","text":"a b c"}"#;
    let python = example_guest("python");
    // One job to the end first: the module is then in the artifact cache.
    q.send(&OutgoingMessage::new(body)).await.unwrap();
    let w = Worker::start(&b, &addr, &python, &["--wait", "0", "--drain"]);
    let (status, log) = w.wait(Duration::from_secs(180));
    assert!(status.success(), "{log}");
    for _ in 0..2 {
        q.send(&OutgoingMessage::new(body)).await.unwrap();
    }
    let args = ["--queue", &addr, "--module", python.to_str().unwrap()];
    let mut cmd = Worker::command(&b, &args, &[]);
    cmd.args(["--concurrency", "2", "--wait", "0"]).env(
        "RUST_LOG",
        format!("{TEST_LOG},wasm_jobs::artifact_cache=debug"),
    );
    let w = Worker::spawn(cmd);
    let loading = "loading a compiled component from the artifact cache";
    w.wait_for(loading, &[], Duration::from_secs(60));
    let log = stopped_before_any_start(w, q.as_ref(), Duration::from_secs(60)).await;
    assert_eq!(count_in(&log, "compile helper started", &[]), 0, "{log}");
}

/// A worker running the hostile guest on `q` without long polling, with a
/// 10 s visibility timeout and this exit timeout.
fn hostile_worker(b: &Backend, q: &dyn Queue, exit_timeout: &str) -> Worker {
    let module = hostile_path();
    Worker::with_args(
        b,
        &[
            "--queue",
            &b.address_of(q),
            "--module",
            module.to_str().unwrap(),
            "--wait",
            "0",
            "--exit-timeout",
            exit_timeout,
            "--visibility-timeout",
            "10",
            "--heartbeat",
            "1",
        ],
    )
}

/// SIGKILL of the fork server under a running job: the worker stays up,
/// starts a new fork server at once, handles the lost job as killed (on-exit
/// in a fresh instance, then requeue), and serves on; nothing is lost.
async fn a_killed_fork_server_is_replaced_and_loses_nothing(b: Backend) {
    let (q, dlq) = b.create_with_dlq("forkserver", 5, &config(30)).await;
    // on-exit of a `sleep-ms:N` job sleeps N ms too: well within --exit-timeout.
    q.send(&OutgoingMessage::new("sleep-ms:3000"))
        .await
        .unwrap();
    let w = hostile_worker(&b, q.as_ref(), "10");
    let server = w.fork_server_pid(Duration::from_secs(30));
    let child = w.child_pid(Duration::from_secs(30));
    let killed = Instant::now();
    kill(server, libc::SIGKILL);
    let again = w.wait_until("a new fork server", Duration::from_secs(10), |e| {
        message(e) == "fork server ready" && field(e, "pid") != server.to_string()
    });
    let restart = killed.elapsed();
    assert!(restart < Duration::from_secs(1), "restarted in {restart:?}");
    assert!(!alive(child), "the job died with its fork server");
    w.wait_for("on-exit finished", &[], Duration::from_secs(20));
    w.wait_for(
        "message returned to the queue",
        &[],
        Duration::from_secs(20),
    );
    // The requeued message and a new one both run on the new fork server.
    q.send(&OutgoingMessage::new("sleep-ms:1")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.count("job succeeded; message deleted", &[]) < 2 {
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(alive(w.child.id() as i32), "the worker stayed up");
    assert_ne!(field(&again, "pid"), server.to_string());
    w.signal(libc::SIGTERM);
    let (status, log) = w.wait(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert!(all(dlq.as_ref()).await.is_empty(), "{log}");
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0), "{log}");
}

/// A job child killed from outside goes to exit handling; its fork server
/// is killed under the first `on-exit` try, and its successor under the
/// second. `on-exit` never ran to an end for a reason that is not the
/// message's: the message is left for redelivery, not dead-lettered, and
/// the worker neither gives up nor exits 1 for it.
async fn on_exit_lost_with_its_fork_server_twice_is_no_verdict(b: Backend) {
    let (q, dlq) = b.create_with_dlq("on-exit-lost", 5, &config(30)).await;
    let w = hostile_worker(&b, q.as_ref(), "30");
    let mut server = w.fork_server_pid(Duration::from_secs(30));
    // `run` and `on-exit` both sleep until then: long enough for the kills
    // below, short enough that the redelivered job then succeeds.
    let until = now_ms() + 15_000;
    q.send(&OutgoingMessage::new(format!("until:{until}")))
        .await
        .unwrap();
    kill(w.child_pid(Duration::from_secs(30)), libc::SIGKILL);
    let on_exit_lines = || {
        w.events()
            .iter()
            .filter(|e| {
                get(e, "target").as_deref() == Some("wasm_jobs::guest")
                    && get(e, "line").is_some_and(|l| l.starts_with("on-exit: message"))
            })
            .count()
    };
    for n in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while on_exit_lines() < n {
            assert!(
                Instant::now() < deadline,
                "on-exit try {n} did not start: {}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(server, libc::SIGKILL);
        w.wait_for(
            "on-exit was lost with its fork server",
            &[("on_exit_try", &n.to_string())],
            Duration::from_secs(20),
        );
        let again = w.wait_until("a new fork server", Duration::from_secs(20), |e| {
            message(e) == "fork server restarted" && field(e, "pid") != server.to_string()
        });
        server = field(&again, "pid").parse().unwrap();
    }
    w.wait_for("message left for redelivery", &[], Duration::from_secs(20));
    w.wait_for(
        "job succeeded; message deleted",
        &[],
        Duration::from_secs(60),
    );
    assert!(alive(w.child.id() as i32), "the worker stayed up");
    w.signal(libc::SIGTERM);
    let (status, log) = w.wait(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
    assert_eq!(count_in(&log, "message dead-lettered", &[]), 0, "{log}");
    assert!(all(dlq.as_ref()).await.is_empty(), "{log}");
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0), "{log}");
}

/// A template process killed from outside is replaced, with a warning;
/// the calls after it run from its successor's copies, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_template_is_replaced_with_a_warning() {
    let b = Backend::embedded();
    let (q, addr) = b.create("template-killed", &config(30)).await;
    let w = Worker::start(&b, &addr, &modes_path(), &["--wait", "0"]);
    let wait = Duration::from_secs(30);
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    let ready = w.wait_for("template process ready", &[], wait);
    let template: i32 = field(&ready, "pid").parse().unwrap();
    kill(template, libc::SIGKILL);
    let died = w.wait_until("the warning", wait, |e| {
        is(
            e,
            "a template process died; its calls fork on demand, and another is started",
            &[("pid", &template.to_string())],
        )
    });
    assert_eq!(field(&died, "module"), modes_path().display().to_string());
    let batch: Vec<OutgoingMessage> = (0..10).map(|_| OutgoingMessage::new("o")).collect();
    for r in q.send_batch(&batch).await.unwrap() {
        r.result.unwrap();
    }
    wait_for_count(&w, "job succeeded; message deleted", 11, wait);
    w.wait_until("another template", wait, |e| {
        message(e) == "template process ready" && field(e, "pid") != template.to_string()
    });
    w.signal(libc::SIGTERM);
    let (_, log) = w.wait(wait);
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        11,
        "{log}"
    );
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0), "{log}");
}

/// A fork server killed again and again right after it starts slows the
/// restarts down but never makes the worker give up: only failed starts do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_server_killed_repeatedly_is_still_replaced() {
    let b = Backend::embedded();
    let (q, addr) = b.create("crashloop", &QueueConfig::default()).await;
    let module = modes_path();
    let w = Worker::with_args(
        &b,
        &[
            "--queue",
            &addr,
            "--module",
            module.to_str().unwrap(),
            "--wait",
            "0",
        ],
    );
    let mut killed = Vec::new();
    // Kill each one only once the parent has taken it on (its own "ready"
    // line comes before the parent has its Ready event, and one killed in
    // between is a failed start, not a death).
    w.wait_for("worker started", &[], Duration::from_secs(30));
    for _ in 0..7 {
        let ready = w.wait_until(
            "a fork server not killed yet",
            Duration::from_secs(30),
            |e| {
                let up = message(e) == "fork server restarted"
                    || (message(e) == "fork server ready" && killed.is_empty());
                up && !killed.contains(&field(e, "pid").parse::<i32>().unwrap())
            },
        );
        let pid: i32 = field(&ready, "pid").parse().unwrap();
        kill(pid, libc::SIGKILL);
        killed.push(pid);
    }
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    w.wait_for(
        "job succeeded; message deleted",
        &[],
        Duration::from_secs(30),
    );
    assert!(
        alive(w.child.id() as i32),
        "the worker stayed up: {}",
        w.log()
    );
    assert_eq!(
        w.count("the fork server died; starting a new one", &[]),
        7,
        "{}",
        w.log()
    );
}
