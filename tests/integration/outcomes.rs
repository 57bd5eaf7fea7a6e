//! Outcomes for the sender, on both backends: `wasm-jobs send --wait`
//! against a real worker prints the outcome a `reply-to` asked for (with the
//! job's published result) and exits with its code; fatal, retried,
//! exhausted and refused messages each get what the README promises.
//! Jobs: `tests/fixtures/publish.wat`, the Python and JavaScript examples.

use crate::common::{example_guest, publish_path};
use crate::fleet::until_empty;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::process::Output;
use std::time::Duration;
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, Queue, ReceiveRequest, ReceivedMessage};

/// `wasm-jobs send --queue QUEUE --wait BODY EXTRA...`.
fn send_wait(b: &Backend, queue: &str, body: &str, extra: &[&str]) -> Output {
    b.cli()
        .args(["send", "--queue", queue, "--wait", "--timeout", "60"])
        .args(extra)
        .arg(body)
        .output()
        .unwrap()
}

/// The outcome `send --wait` printed, after checking its exit code.
fn outcome(out: &Output, code: i32, log: impl Fn() -> String) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}\nworker: {}",
        log()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A worker for `queue` running `module`, polling briefly so it stops fast.
fn worker(b: &Backend, queue: &str, module: &std::path::Path) -> Worker {
    Worker::start(b, queue, module, &["--wait", "1", "--concurrency", "2"])
}

async fn receive_one(q: &dyn Queue) -> Vec<ReceivedMessage> {
    let one = ReceiveRequest {
        max_messages: 1,
        wait: Duration::ZERO,
        visibility_timeout: None,
    };
    q.receive(one).await.unwrap()
}

fn stop(w: Worker) {
    w.signal(libc::SIGTERM);
    let (_, log) = w.wait(Duration::from_secs(30));
    assert_eq!(
        count_in(&log, "cannot send the outcome; it is lost", &[]),
        0,
        "{log}"
    );
}

async fn send_wait_prints_the_outcome_and_the_result(b: Backend) {
    let (_q, addr) = b.create("wait-ok", &config(30)).await;
    let w = worker(&b, &addr, &publish_path());
    let traceparent = "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = send_wait(&b, &addr, "done: 42", &["--attr", traceparent]);
    let o = outcome(&out, 0, || w.log());
    assert_eq!(o["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(o["outcome"], "ok");
    assert_eq!(o["output"], "done: 42");
    assert_eq!(o["attempts"], 1);
    assert_eq!(o["exit_code"], 0);
    assert_eq!(o["tenant"], "default");
    assert_eq!(o["queue"], addr.as_str());
    let digest = wasm_jobs::artifact_cache::content_digest(crate::common::publish_wasm());
    assert_eq!(o["digest"], digest.as_str());
    assert!(o["duration_ms"].as_f64().unwrap() > 0.0, "{o}");
    // A result that is not UTF-8 comes in base64.
    let o = outcome(&send_wait(&b, &addr, "B", &[]), 0, || w.log());
    assert_eq!(o["output_base64"], "/wD+");
    assert!(o.get("output").is_none(), "{o}");
    stop(w);
}

async fn a_fatal_outcome_arrives_and_the_message_is_dead_lettered(b: Backend) {
    let (q, dlq) = b.create_with_dlq("wait-fatal", 5, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let w = worker(&b, &addr, &publish_path());
    let o = outcome(&send_wait(&b, &addr, "F input", &[]), 11, || w.log());
    assert_eq!(o["outcome"], "fatal");
    assert_eq!(o["reason"], "failed after publishing");
    assert_eq!(o["output"], "F input", "what it published before failing");
    // The outcome is sent after the dead-letter copy: it is there already.
    assert_eq!(counts(dlq.as_ref()).await, (1, 0, 0));
    // The original is deleted after the outcome is sent, and a delete may
    // wait for its batch (SQS): wait for it.
    until_empty(q.as_ref()).await;
    stop(w);
}

/// Retried twice, then ok: three attempts, one outcome, and a reply queue
/// the sender names is kept and holds nothing more.
async fn a_job_retried_twice_then_ok_reports_three_attempts(b: Backend) {
    let (_q, addr) = b.create("wait-retry", &config(30)).await;
    // In the namespace the default policy allows: QUEUE-replies*.
    let name = addr.rsplit('/').next().unwrap();
    let (replies, reply_addr) = b.create(&format!("{name}-replies-kept"), &config(30)).await;
    let w = worker(&b, &addr, &publish_path());
    let out = send_wait(&b, &addr, "R", &["--reply-to", &reply_addr]);
    let o = outcome(&out, 0, || w.log());
    assert_eq!(
        (o["outcome"].as_str(), o["attempts"].as_u64()),
        (Some("ok"), Some(3))
    );
    assert_eq!(o["output"], "R");
    stop(w);
    assert_eq!(
        counts(replies.as_ref()).await,
        (0, 0, 0),
        "exactly one outcome"
    );
}

/// On the last receive its queue allows, a retried message's sender hears
/// that retries are exhausted; the queue then dead-letters it.
async fn the_last_allowed_retry_reports_retries_exhausted(b: Backend) {
    let (q, dlq) = b.create_with_dlq("wait-exhausted", 2, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let w = worker(&b, &addr, &publish_path());
    let o = outcome(&send_wait(&b, &addr, "R", &[]), 10, || w.log());
    assert_eq!(o["outcome"], "retries_exhausted");
    assert_eq!(o["attempts"], 2);
    assert!(o["reason"].as_str().unwrap().contains("again"), "{o}");
    stop(w);
    // The next receive past maxReceiveCount moves it (if the worker's did not).
    let moved = receive_one(q.as_ref()).await;
    assert!(moved.is_empty(), "the queue moved it: {moved:?}");
    assert_eq!(counts(dlq.as_ref()).await.0, 1);
}

/// A `reply-to` outside the tenant's allowed queues refuses the message
/// (dead-lettered with the reason), and nothing is sent there.
async fn a_reply_to_the_tenant_may_not_use_is_refused(b: Backend) {
    let (q, dlq) = b.create_with_dlq("wait-refused", 5, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let (elsewhere, other) = b.create("someone-elses", &config(30)).await;
    let mut m = OutgoingMessage::new("hi");
    m.attributes
        .insert("reply-to".into(), AttributeValue::String(other.clone()));
    q.send(&m).await.unwrap();
    let w = Worker::start(&b, &addr, &publish_path(), &["--wait", "0", "--drain"]);
    let (status, log) = w.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert_eq!(
        count_in(&log, "message refused", &[("kind", "reply_to")]),
        1,
        "{log}"
    );
    assert_eq!(count_in(&log, "outcome sent", &[]), 0, "{log}");
    let dead = receive_one(dlq.as_ref()).await;
    let reason = dead[0].attributes["wasm-jobs.dead-letter-reason"].as_text();
    assert!(reason.contains("may reply only to"), "{reason}");
    assert_eq!(counts(elsewhere.as_ref()).await, (0, 0, 0));
}

/// What job authors write: the Python and JavaScript examples publish
/// `{"words": N}`, and `send --wait` returns it.
async fn send_wait_returns_the_result_of_python_and_javascript_jobs(b: Backend) {
    for lang in ["python", "js"] {
        let (_q, addr) = b.create(&format!("wait-{lang}"), &config(60)).await;
        let w = worker(&b, &addr, &example_guest(lang));
        let out = send_wait(&b, &addr, r#"{"op":"count","text":"a b c"}"#, &[]);
        let o = outcome(&out, 0, || w.log());
        let words: serde_json::Value = serde_json::from_str(o["output"].as_str().unwrap()).unwrap();
        assert_eq!(words, serde_json::json!({"words": 3}), "{lang}");
        stop(w);
    }
}

crate::on_both_backends!(
    send_wait_prints_the_outcome_and_the_result,
    a_fatal_outcome_arrives_and_the_message_is_dead_lettered,
    a_job_retried_twice_then_ok_reports_three_attempts,
    the_last_allowed_retry_reports_retries_exhausted,
    a_reply_to_the_tenant_may_not_use_is_refused,
    send_wait_returns_the_result_of_python_and_javascript_jobs,
);
