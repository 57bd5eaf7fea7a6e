//! Queue commands as separate processes: crash safety when a process using
//! the embedded queue is killed mid-operation, several processes sharing one
//! data directory, the CLI's output and errors, SQS error classification.

use crate::queue_backends::{Backend, MOTO_REGION, moto_endpoint};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{Queue, QueueConfig, ReceiveRequest};

use crate::common::{cli_in as cli, run};

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Receive and delete everything visible now; returns the bodies.
async fn drain(q: &dyn Queue) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let batch = q
            .receive(ReceiveRequest {
                max_messages: 10,
                wait: Duration::ZERO,
                visibility_timeout: None,
            })
            .await
            .unwrap();
        if batch.is_empty() {
            return bodies;
        }
        let receipts: Vec<String> = batch.iter().map(|m| m.receipt_handle.clone()).collect();
        for r in q.delete_batch(&receipts).await.unwrap() {
            r.result.unwrap();
        }
        bodies.extend(batch.into_iter().map(|m| m.body));
    }
}

/// `wasm-jobs send --batch FILE` into an embedded queue; must succeed.
fn send_file(dir: &std::path::Path, queue: &str, file: &std::path::Path) {
    let out = run(cli(dir)
        .args(["send", "--queue", queue, "--batch"])
        .arg(file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Read a child's stdout on a thread: every line goes down the channel as
/// it comes, and the thread returns them all once stdout ends.
fn read_stdout(child: &mut Child) -> (mpsc::Receiver<String>, JoinHandle<Vec<String>>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    (rx, reader)
}

/// Wait until a line of `rx` satisfies `pred`; fail after `timeout`.
fn wait_for_line(
    rx: &mpsc::Receiver<String>,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return,
            Ok(_) => {}
            Err(e) => panic!("no output line {what} in {timeout:?}: {e}"),
        }
    }
}

fn write_lines(n: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..n {
        writeln!(f, "message {i}").unwrap();
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_batch_leaves_whole_batches_only() {
    let b = Backend::embedded();
    let dir = b.data_dir().unwrap();
    let (q, name) = b.create("killsend", &QueueConfig::default()).await;
    let file = write_lines(20_000);
    let mut child = cli(&dir)
        .args(["send", "--queue", &name, "--batch"])
        .arg(file.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The sender prints each message's id once its batch is stored: kill it
    // once it is well under way (ten batches in).
    let (ids, reader) = read_stdout(&mut child);
    let mut sent = 0;
    wait_for_line(&ids, "for the 100th id", Duration::from_secs(30), |_| {
        sent += 1;
        sent == 100
    });
    child.kill().unwrap(); // SIGKILL, at whatever instant it is
    child.wait().unwrap();
    reader.join().unwrap();
    let bodies = drain(q.as_ref()).await;
    let unique: HashSet<&String> = bodies.iter().collect();
    assert_eq!(unique.len(), bodies.len(), "duplicates after a kill");
    assert!(
        !bodies.is_empty() && bodies.len() < 20_000,
        "kill landed mid-run: {}",
        bodies.len()
    );
    assert_eq!(bodies.len() % 10, 0, "a batch is all or nothing");
    let expected: HashSet<String> = (0..bodies.len()).map(|i| format!("message {i}")).collect();
    assert_eq!(
        unique,
        expected.iter().collect(),
        "a prefix of the file, nothing skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_receive_or_delete_loses_nothing() {
    let b = Backend::embedded();
    let dir = b.data_dir().unwrap();
    let (q, name) = b.create("killrecv", &QueueConfig::default()).await;
    let file = write_lines(3_000);
    send_file(&dir, &name, file.path());
    let mut child = cli(&dir)
        .args([
            "receive",
            "--queue",
            &name,
            "--delete",
            "--drain",
            "--visibility-timeout",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has deleted something (it prints "deleted" lines as
    // each batch's delete returns).
    let (events, reader) = read_stdout(&mut child);
    wait_for_line(
        &events,
        "saying a message was deleted",
        Duration::from_secs(30),
        |l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["event"] == "deleted"),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = reader.join().unwrap();
    let (mut received, mut deleted) = (HashSet::new(), HashSet::new());
    let mut bodies_by_id = std::collections::HashMap::new();
    for line in out {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        }; // cut line
        let id = v["message_id"]
            .as_str()
            .or(v["message"]["message_id"].as_str())
            .unwrap()
            .to_owned();
        if v["event"] == "received" {
            bodies_by_id.insert(
                id.clone(),
                v["message"]["body"].as_str().unwrap().to_owned(),
            );
            received.insert(id);
        } else {
            deleted.insert(id);
        }
    }
    assert!(
        !deleted.is_empty() && deleted.len() < 3_000,
        "kill landed mid-run: {}",
        deleted.len()
    );
    // In-flight ones come back after their 1 s visibility timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = q.counts().await.unwrap();
        if c.in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} messages still in flight",
            c.in_flight
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remaining: HashSet<String> = drain(q.as_ref()).await.into_iter().collect();
    let deleted_bodies: HashSet<String> =
        deleted.iter().map(|id| bodies_by_id[id].clone()).collect();
    assert!(
        remaining.is_disjoint(&deleted_bodies),
        "a deleted message came back"
    );
    let all: HashSet<String> = (0..3_000).map(|i| format!("message {i}")).collect();
    let accounted: HashSet<String> = remaining.union(&deleted_bodies).cloned().collect();
    let in_doubt: Vec<&String> = all.difference(&accounted).collect();
    // Only a batch deleted in the instant before the kill, whose "deleted"
    // lines were never written, may be missing from both sets, and each of
    // those was received.
    assert!(
        in_doubt.len() <= 10,
        "{} messages unaccounted for",
        in_doubt.len()
    );
    let received_bodies: HashSet<&String> = received.iter().map(|id| &bodies_by_id[id]).collect();
    assert!(in_doubt.iter().all(|b| received_bodies.contains(b)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_data_dir_never_get_the_same_message() {
    let b = Backend::embedded();
    let dir = b.data_dir().unwrap();
    let (_, name) = b.create("shared", &QueueConfig::default()).await;
    let file = write_lines(2_000);
    send_file(&dir, &name, file.path());
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            cli(&dir)
                .args([
                    "receive", "--queue", &name, "--delete", "--drain", "--max", "3",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for c in consumers {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in lines(&out.stdout) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["event"] == "deleted" {
                seen.push(v["message_id"].as_str().unwrap().to_owned());
            }
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (2_000, 2_000));
}

#[test]
fn stats_json_has_exactly_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        run(cli(dir.path()).args(["queue", "create", "dead"]))
            .status
            .success()
    );
    assert!(
        run(cli(dir.path()).args([
            "queue",
            "create",
            "work",
            "--dlq",
            "dead",
            "--max-receives",
            "3"
        ]))
        .status
        .success()
    );
    assert!(
        run(cli(dir.path()).args(["send", "--queue", "work", "hello"]))
            .status
            .success()
    );
    assert!(
        run(cli(dir.path()).args(["send", "--queue", "work", "--delay", "60", "later"]))
            .status
            .success()
    );
    let out = run(cli(dir.path()).args(["queue", "stats", "work", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"visible": 1, "in_flight": 0, "delayed": 1,
                           "dead_letter": {"visible": 0, "in_flight": 0, "delayed": 0}})
    );
    assert!(
        run(cli(dir.path()).args(["queue", "purge", "work"]))
            .status
            .success()
    );
    let out = run(cli(dir.path()).args(["queue", "stats", "dead", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"visible": 0, "in_flight": 0, "delayed": 0})
    );
}

#[test]
fn dlq_redrive_moves_messages_back_with_body_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    run(cli(dir.path()).args(["queue", "create", "dead"]));
    run(cli(dir.path()).args([
        "queue",
        "create",
        "work",
        "--dlq",
        "dead",
        "--max-receives",
        "1",
        "--visibility-timeout",
        "1",
    ]));
    run(cli(dir.path()).args(["send", "--queue", "work", "--attr", "module=wc", "poison"]));
    run(cli(dir.path()).args(["receive", "--queue", "work"]));
    // Wait out the 1 s visibility timeout: the message is visible again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = run(cli(dir.path()).args(["queue", "stats", "work", "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["visible"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "still not visible again: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(cli(dir.path()).args(["receive", "--queue", "work"]));
    assert!(out.stdout.is_empty(), "second receive redrives instead");
    let out = run(cli(dir.path()).args(["dlq", "redrive", "work"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "moved 1 messages back to work"
    );
    let out = run(cli(dir.path()).args(["receive", "--queue", "work"]));
    let v: serde_json::Value = serde_json::from_str(lines(&out.stdout)[0].as_str()).unwrap();
    assert_eq!(v["message"]["body"], "poison");
    assert_eq!(v["message"]["attributes"]["module"]["value"], "wc");
    assert_eq!(v["message"]["receive_count"], 1);
}

#[test]
fn bad_input_on_the_command_line_fails_clearly_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(cli(dir.path()).args(["queue", "create", "q"]));
    let cases: [(&[&str], &str); 6] = [
        (&["send", "--queue", "missing", "x"], "does not exist"),
        (&["send", "--queue", "q", "--attr", "AWS.x=1", "x"], "AWS."),
        (&["send", "--queue", "ftp://host/1/q", "x"], "http(s)"),
        (
            &["send", "--queue", "https://host/q", "x"],
            "not an SQS queue URL",
        ),
        (
            &["send", "--queue", "q", "--attr", "n:Float=1", "x"],
            "unknown type",
        ),
        (&["queue", "create", "bad.fifo"], ".fifo"),
    ];
    for (args, expected) in cases {
        let out = run(cli(dir.path()).args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let mut child = cli(dir.path())
        .args(["send", "--queue", "q", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("x".repeat(256 * 1024 + 1).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("256 KiB"));
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "good one\n{}\ngood two", "y".repeat(256 * 1024 + 1)).unwrap();
    let out = run(cli(dir.path())
        .args(["send", "--queue", "q", "--batch"])
        .arg(f.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sent 2, rejected 1"));
    let out = run(cli(dir.path()).args(["queue", "stats", "q", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["visible"], 2);
}

fn sqs_cli() -> Command {
    let mut c = Command::new(crate::common::bin());
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", MOTO_REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

#[test]
fn sqs_errors_are_classified_and_reported_in_one_line() {
    let endpoint = moto_endpoint();
    let missing = format!("{endpoint}/123456789012/no-such-queue");
    let out = run(sqs_cli().args(["queue", "stats", &missing, "--endpoint-url", endpoint]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");

    // Nothing listens on port 9 of loopback: transient, retried, then reported.
    let out = run(sqs_cli().args([
        "queue",
        "stats",
        "http://127.0.0.1:9/123456789012/q",
        "--endpoint-url",
        "http://127.0.0.1:9",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("transient"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{err}"
    );

    // No credentials anywhere: permanent, not retried.
    let home = tempfile::tempdir().unwrap();
    let out = run(Command::new(crate::common::bin())
        .args(["queue", "stats", &missing, "--endpoint-url", endpoint])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_REGION", MOTO_REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
}

#[test]
fn sqs_queues_can_be_created_and_used_from_the_cli() {
    let endpoint = moto_endpoint();
    let name = format!("cli-{}", std::process::id());
    let out = run(sqs_cli().args([
        "queue",
        "create",
        &format!("{name}-dlq"),
        "--sqs",
        "--endpoint-url",
        endpoint,
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(sqs_cli().args([
        "queue",
        "create",
        &name,
        "--sqs",
        "--dlq",
        &format!("{name}-dlq"),
        "--max-receives",
        "2",
        "--endpoint-url",
        endpoint,
    ]));
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(url.starts_with("http"), "{url}");
    assert!(
        run(sqs_cli().args(["send", "--queue", &url, "--endpoint-url", endpoint, "hi"]))
            .status
            .success()
    );
    let out = run(sqs_cli().args(["queue", "stats", &url, "--json", "--endpoint-url", endpoint]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["visible"], 1);
    assert_eq!(v["dead_letter"]["visible"], 0);
}
