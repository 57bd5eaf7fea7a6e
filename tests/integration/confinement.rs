//! What a worker child holds, read from its `/proc` entry while it runs a
//! job: an empty environment (no AWS credentials, nothing of the worker's),
//! `no_new_privs`, a seccomp filter, no core dumps, bounded open files, file
//! sizes and data, no earlier call's message in its memory; and what
//! happens to a child its filter kills. (That a
//! forbidden system call does kill is unit-tested in the fork server's
//! `confine` module: a guest cannot make one on purpose.)

use crate::common::hostile_path;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::time::Duration;
use wasm_jobs::queue::OutgoingMessage;

fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut cols = line[name.len()..].split_whitespace();
    (cols.next().unwrap().into(), cols.next().unwrap().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_child_holds_no_environment_and_no_privileges() {
    let b = Backend::embedded();
    let (q, addr) = b.create("confined", &config(30)).await;
    q.send(&OutgoingMessage::new("sleep-ms:3000"))
        .await
        .unwrap();
    let module = hostile_path();
    let w = Worker::with_env(
        &b,
        &[
            "--queue",
            &addr,
            "--module",
            module.to_str().unwrap(),
            "--wait",
            "0",
            "--drain",
        ],
        &[("AWS_SECRET_ACCESS_KEY", "worker-secret-value")],
    );
    let pid = w.child_pid(Duration::from_secs(30));
    // A child forked for its call starts before it has limited itself:
    // wait until it has (its data-size backstop is the last limit set).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let limits = loop {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        if limit(&limits, "Max data size").0 != "unlimited" {
            break limits;
        }
        assert!(std::time::Instant::now() < deadline, "{limits}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(alive(pid), "read while the job ran");
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "a seccomp filter: {status}");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < 16, "the child holds only its own descriptors: {fds}");
    let (soft, hard) = limit(&limits, "Max data size");
    assert_eq!(soft, hard);
    let data: u64 = soft.parse().expect("a data-size backstop");
    assert!(data > 256 << 20, "above the job's memory limit: {data}");
    assert_eq!(
        limit(&limits, "Max core file size"),
        ("0".into(), "0".into())
    );
    // 256 of its own above the highest descriptor it inherited (one per
    // loaded module, the fork server's own): a few more than 256 here.
    let (soft, hard) = limit(&limits, "Max open files");
    assert_eq!(soft, hard);
    let files: u64 = soft.parse().unwrap();
    assert!((257..300).contains(&files), "{files}");
    assert_eq!(
        limit(&limits, "Max file size"),
        ("1073741824".into(), "1073741824".into())
    );
    let (exit, log) = w.wait(Duration::from_secs(30));
    assert!(exit.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        1,
        "{log}"
    );
}

/// A child killed by SIGSYS, as its seccomp filter would kill it, is
/// handled like any killed worker: `on-exit` runs in a fresh child and the
/// message goes back to the queue, then runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_by_its_filter_is_handled_like_a_killed_worker() {
    let b = Backend::embedded();
    let (q, addr) = b.create("sigsys", &config(30)).await;
    q.send(&OutgoingMessage::new("sleep-ms:1500"))
        .await
        .unwrap();
    let module = hostile_path();
    let w = Worker::start(&b, &addr, &module, &["--wait", "0", "--drain"]);
    let pid = w.child_pid(Duration::from_secs(30));
    // SAFETY: kill takes a pid and a signal number and no pointers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSYS) }, 0);
    let (exit, log) = w.wait(Duration::from_secs(60));
    assert!(exit.success(), "{log}");
    let ended = events_of(&log)
        .into_iter()
        .find(|e| message(e) == "worker child ended")
        .unwrap();
    assert!(field(&ended, "end").contains("SIGSYS"), "{log}");
    assert_eq!(
        count_in(&log, "exit handling", &[("signal", "31")]),
        1,
        "{log}"
    );
    assert_eq!(count_in(&log, "on-exit finished", &[]), 1, "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        1,
        "{log}"
    );
}

/// Every mode under `dir` that group or others may use.
fn shared_entries(dir: &std::path::Path, out: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(format!("{} {mode:03o}", entry.path().display()));
        }
        if meta.is_dir() {
            shared_entries(&entry.path(), out);
        }
    }
}

#[test]
fn files_wasm_jobs_creates_are_private_and_a_shared_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(crate::common::bin())
            .args(args)
            .env("WASM_JOBS_HOME", home.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let module = crate::common::modes_path();
    run(&["queue", "create", "private"]);
    run(&[
        "module",
        "push",
        "--name",
        "modes",
        module.to_str().unwrap(),
    ]);
    run(&["send", "--queue", "private", "--attr", "module=modes", "o"]);
    run(&["worker", "--queue", "private", "--wait", "0", "--drain"]);
    let mut shared = Vec::new();
    shared_entries(home.path(), &mut shared);
    assert!(shared.is_empty(), "readable by others: {shared:?}");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(crate::common::bin())
        .args(["worker", "--queue", "private", "--wait", "0", "--drain"])
        .env("WASM_JOBS_HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
}

/// A worker child holds no earlier message: the fork server wipes what it
/// frees, and the buffer it reads reports into once each is decoded, so a
/// later call's child (forked on demand, or set up ahead from the fork
/// server or a template) finds none of an earlier call's body in its
/// memory, and neither does the fork server; its own body is there (the
/// search works). The earlier call fails with its body as the reason, so
/// the body passes through the fork server twice: in the handover and in
/// the report.
async fn a_child_holds_no_earlier_message(extra: &[&str]) {
    let b = Backend::embedded();
    let (q, addr) = b.create("wiped", &config(30)).await;
    let args = [&["--wait", "0"], extra].concat();
    let w = Worker::start(&b, &addr, &crate::common::modes_path(), &args);
    let wait = Duration::from_secs(30);
    let fork_server = w.fork_server_pid(wait);
    let nonce = format!("{}-{}", std::process::id(), now_ms());
    let (earlier, own) = (format!("earlier-body-{nonce}"), format!("own-body-{nonce}"));
    // Many copies over 8 KiB: blocks of another size may reuse parts of it.
    q.send(&OutgoingMessage::new(format!(
        "e {}",
        format!("{earlier} ").repeat(200)
    )))
    .await
    .unwrap();
    wait_for_count(&w, "worker child ended", 1, wait);
    q.send(&OutgoingMessage::new(format!("l {own}")))
        .await
        .unwrap();
    wait_for_count(&w, "worker child started", 2, wait);
    let child: i32 = w
        .events()
        .iter()
        .filter(|e| is(e, "worker child started", &[]))
        .map(|e| field(e, "pid").parse().unwrap())
        .next_back()
        .unwrap();
    let (in_child, in_fork_server) = (private_memory(child), private_memory(fork_server));
    assert!(alive(child), "read while the job ran");
    w.signal(libc::SIGKILL);
    assert!(
        holds(&in_child, &own),
        "the search finds the child's own body"
    );
    assert!(
        !holds(&in_child, &earlier),
        "the child holds an earlier body"
    );
    assert!(
        !holds(&in_fork_server, &earlier),
        "the fork server holds an earlier body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_forked_on_demand_holds_no_earlier_message() {
    a_child_holds_no_earlier_message(&["--warm-children", "0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_set_up_ahead_holds_no_earlier_message() {
    a_child_holds_no_earlier_message(&[]).await;
}
