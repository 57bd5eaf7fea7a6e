//! A job author's first hour: failures that explain themselves (a trap's
//! reason ends with the guest's stderr; the last allowed attempt is
//! dead-lettered by the worker with it), dead letters that can be read
//! (`dlq peek`, `dlq redrive` without `wasm-jobs.*`, `queue list`), trying
//! capabilities locally (`exec --policy/--env`, `policy check` warnings)
//! and output that keeps its end.

use crate::common::{bin, cli_in, data_home, example_guest, hostile_path, run};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use wasm_jobs::queue::{OutgoingMessage, Queue};

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait until `q` holds `n` visible messages (the first run of a guest in
/// a fresh data dir compiles it: tens of seconds for the large ones).
async fn wait_for_visible(q: &dyn Queue, n: u64, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while counts(q).await.0 < n {
        assert!(Instant::now() < deadline, "never {n} visible: {}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JavaScript job that throws and a Python job that raises are retried;
/// on their last allowed attempt the worker dead-letters them with a reason
/// that holds the error text, and the copy names the original message.
async fn an_uncaught_exception_is_dead_lettered_on_the_last_attempt_with_its_text(b: Backend) {
    for (lang, said) in [
        ("js", "Error: boom-js"),
        ("python", "RuntimeError: boom-python"),
    ] {
        let (q, dlq) = b
            .create_with_dlq(&format!("crash-{lang}"), 2, &config(1))
            .await;
        let body = format!(r#"{{"op":"crash","reason":"boom-{lang}"}}"#);
        let id = q.send(&OutgoingMessage::new(&body)).await.unwrap();
        let w = Worker::start(
            &b,
            &b.address_of(q.as_ref()),
            &example_guest(lang),
            &["--wait", "1"],
        );
        wait_for_visible(dlq.as_ref(), 1, || w.log()).await;
        w.signal(libc::SIGTERM);
        let (_, log) = w.wait(Duration::from_secs(30));
        // The first attempt was left for a retry, the second dead-lettered.
        assert_eq!(
            count_in(
                &log,
                "job did not succeed; leaving the message for redelivery",
                &[]
            ),
            1,
            "{log}"
        );
        let dead = all(dlq.as_ref()).await;
        assert_eq!(dead.len(), 1, "{lang}");
        let attr = |name: &str| dead[0].attributes[name].as_text();
        let reason = attr("wasm-jobs.dead-letter-reason");
        assert!(
            reason.starts_with("attempt 2 of 2: trap"),
            "{lang}: {reason}"
        );
        assert!(reason.contains(said), "{lang}: {reason}");
        assert_eq!(attr("wasm-jobs.original-message-id"), id);
        let (first, last) = (
            attr("wasm-jobs.first-attempt-at"),
            attr("wasm-jobs.last-failure-at"),
        );
        // RFC 3339 to the second, so they compare as text.
        assert!(
            first.len() == 20 && first.ends_with('Z') && first <= last,
            "{first} {last}"
        );
        assert_eq!(
            counts(q.as_ref()).await,
            (0, 0, 0),
            "{lang}: nothing left behind"
        );
        assert_eq!(
            count_in(&log, "message dead-lettered", &[]),
            1,
            "{lang}: {log}"
        );
    }
}

crate::on_both_backends!(an_uncaught_exception_is_dead_lettered_on_the_last_attempt_with_its_text,);

/// `dlq peek` shows dead letters with every attribute and changes nothing;
/// `dlq redrive` brings them back without `wasm-jobs.*`; `queue list` shows
/// every queue with its counts.
#[test]
fn dead_letters_can_be_read_redriven_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| run(cli_in(dir.path()).args(args));
    stdout_of(&cli(&["queue", "create", "dead"]));
    stdout_of(&cli(&[
        "queue",
        "create",
        "work",
        "--dlq",
        "dead",
        "--max-receives",
        "3",
    ]));
    stdout_of(&cli(&[
        "send",
        "--queue",
        "dead",
        "--attr",
        "wasm-jobs.dead-letter-reason=attempt 3 of 3: trap",
        "--attr",
        "wasm-jobs.original-message-id=m-1",
        "--attr",
        "keep=yes",
        "poison",
    ]));
    for _ in 0..2 {
        let peeked = stdout_of(&cli(&["dlq", "peek", "work"]));
        let v: serde_json::Value = serde_json::from_str(peeked.trim()).unwrap();
        assert_eq!(v["event"], "peeked");
        assert_eq!(v["message"]["body"], "poison");
        assert_eq!(v["message"]["receive_count"], 0, "peeking receives nothing");
        let attrs = &v["message"]["attributes"];
        assert_eq!(
            attrs["wasm-jobs.dead-letter-reason"]["value"],
            "attempt 3 of 3: trap"
        );
        assert_eq!(attrs["keep"]["value"], "yes");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&stdout_of(&cli(&["queue", "stats", "dead", "--json"]))).unwrap();
    assert_eq!(
        (stats["visible"].as_u64(), stats["in_flight"].as_u64()),
        (Some(1), Some(0))
    );
    let peeked = stdout_of(&cli(&["receive", "--queue", "dead", "--peek"]));
    assert!(
        peeked.contains("\"peeked\"") && peeked.contains("poison"),
        "{peeked}"
    );

    let listed = stdout_of(&cli(&["queue", "list"]));
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [
            "dead: 1 visible, 0 in flight, 0 delayed",
            "work: 0 visible, 0 in flight, 0 delayed, dead letters to dead after 3 receives",
        ]
    );

    // A dead letter someone holds (received, in flight) stays where it is.
    let held = stdout_of(&cli(&[
        "receive",
        "--queue",
        "dead",
        "--visibility-timeout",
        "1",
    ]));
    assert!(held.contains("poison"), "{held}");
    let moved = stdout_of(&cli(&["dlq", "redrive", "work"]));
    assert_eq!(moved.trim(), "moved 0 messages back to work");
    // Once its visibility runs out, it goes back too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let moved = stdout_of(&cli(&["dlq", "redrive", "work"]));
        if moved.trim() == "moved 1 messages back to work" {
            break;
        }
        assert!(Instant::now() < deadline, "never moved back: {moved}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = stdout_of(&cli(&["receive", "--queue", "work"]));
    let v: serde_json::Value = serde_json::from_str(received.trim()).unwrap();
    let attrs = v["message"]["attributes"].as_object().unwrap();
    assert_eq!(attrs.keys().collect::<Vec<_>>(), ["keep"], "{v}");
}

/// `exec --policy FILE --tenant T` applies that tenant's grants (a
/// directory, a passed-through variable), `--env` adds one, and `policy
/// check` warns about a passed-through variable that is not set.
#[test]
fn exec_tries_a_tenants_grants_and_policy_check_warns_about_unset_variables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[tenants.acme]\nenv = [\"GREETING\", \"WASM_JOBS_TEST_UNSET\"]\n\
             dirs = [{{ host = \"{}\", guest = \"/data\" }}]\n",
            data.display()
        ),
    )
    .unwrap();
    let exec = |body: &str, extra: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("exec")
            .arg(hostile_path())
            .args([
                "--policy",
                policy.to_str().unwrap(),
                "--tenant",
                "acme",
                "--body",
                body,
            ])
            .args(extra)
            .env("WASM_JOBS_HOME", data_home())
            .env("GREETING", "hi")
            .env_remove("WASM_JOBS_TEST_UNSET");
        run(&mut c)
    };
    // What the job printed, then exec's `outcome:` line.
    let out = exec("read:/data/hello.txt", &[]);
    assert!(stdout_of(&out).starts_with("hello from the host\noutcome: ok"));
    let out = exec("env", &["--env", "EXTRA=1"]);
    assert!(stdout_of(&out).starts_with("GREETING=hi\nEXTRA=1\nenv count: 2\noutcome: ok"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("passes through WASM_JOBS_TEST_UNSET, which is not set here"),
        "{stderr}"
    );

    // A variable --env gives is no longer missing.
    let out = exec("env", &["--env", "WASM_JOBS_TEST_UNSET=given"]);
    assert!(stdout_of(&out).starts_with("GREETING=hi\nWASM_JOBS_TEST_UNSET=given\nenv count: 2\n"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(Command::new(bin())
        .args(["policy", "check"])
        .arg(&policy)
        .env("GREETING", "hi")
        .env_remove("WASM_JOBS_TEST_UNSET"));
    let described: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(
        described["tenants"]["acme"]["env"],
        serde_json::json!(["GREETING"])
    );
    assert_eq!(
        described["tenants"]["acme"]["env_unset"],
        serde_json::json!(["WASM_JOBS_TEST_UNSET"])
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: tenant acme passes through WASM_JOBS_TEST_UNSET, which is not set here"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A job printing 3 MiB: its last line is still in the log, and `exec`
/// shows the start and the end with what was cut between them.
#[test]
fn a_job_printing_3_mib_ends_with_its_last_line_visible() {
    let b = Backend::embedded();
    let dir = b.data_dir().unwrap();
    stdout_of(&run(cli_in(&dir).args(["queue", "create", "spam"])));
    stdout_of(&run(cli_in(&dir).args(["send", "--queue", "spam", "spam"])));
    let w = Worker::start(&b, "spam", &hostile_path(), &["--wait", "0", "--drain"]);
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let guest_lines: Vec<String> = events_of(&log)
        .iter()
        .filter(|e| get(e, "stream").as_deref() == Some("stdout"))
        .filter_map(|e| get(e, "line"))
        .collect();
    assert_eq!(
        guest_lines.last().map(String::as_str),
        Some("the last line"),
        "{log}"
    );
    assert!(
        guest_lines.len() < 1100,
        "the log stays bounded: {}",
        guest_lines.len()
    );
    assert_eq!(
        count_in(
            &log,
            "guest lines over the log cap were not logged; its last lines follow",
            &[]
        ),
        1
    );

    let out = run(Command::new(bin())
        .arg("exec")
        .arg(hostile_path())
        .args(["--body", "spam"])
        .env("WASM_JOBS_HOME", data_home()));
    let text = stdout_of(&out);
    assert!(
        text.starts_with("xxxx") && text.contains("x\nthe last line\noutcome: ok"),
        "{}",
        &text[text.len() - 100..]
    );
    assert!(text.contains(" bytes cut here …]"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bytes cut from the middle"));
}

/// `WASM_JOBS_HOME` is the data directory's variable; the old name still
/// works, with a warning.
#[test]
fn the_old_data_dir_variable_still_works_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin())
        .args(["queue", "create", "q"])
        .env_remove("WASM_JOBS_HOME")
        .env("WASM_JOBS_DATA_DIR", dir.path()));
    stdout_of(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("WASM_JOBS_DATA_DIR is the old name of WASM_JOBS_HOME"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new(bin())
        .args(["queue", "list"])
        .env("WASM_JOBS_HOME", dir.path()));
    assert_eq!(stdout_of(&out), "q: 0 visible, 0 in flight, 0 delayed\n");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
