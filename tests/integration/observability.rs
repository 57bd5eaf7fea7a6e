//! Metrics and structured logs of a running worker: a real HTTP GET against
//! `--metrics-addr`, and `--log-format json` lines checked field by field.

use crate::common::{example_guest, modes_path};
use crate::queue_backends::Backend;
use crate::worker_harness::{LogEvent, Worker, events_of, get, is, message};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, QueueConfig};

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A series' value, if the text has it.
fn metric_opt(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.parse().unwrap())
}

fn metric(text: &str, series: &str) -> f64 {
    metric_opt(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// GET /metrics until every series has its expected value (the worker
/// settles a message just after logging that its child ended); returns the
/// last text, which the caller checks with the same expectations.
fn metrics_when(addr: &str, expected: &[(&str, f64)], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let reached = expected
            .iter()
            .all(|(series, value)| metric_opt(&text, series) == Some(*value));
        if reached || Instant::now() >= deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_worker_did() {
    let b = Backend::embedded();
    let (q, addr) = b.create("metrics", &QueueConfig::default()).await;
    for body in ["o", "o", "o", "f", "u"] {
        q.send(&OutgoingMessage::new(body)).await.unwrap();
    }
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &[
            "--wait",
            "0",
            "--visibility-timeout",
            "30",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.count("worker child ended", &[]) < 5 {
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let module = modes_path().display().to_string();
    let in_flight = format!("wasm_jobs_jobs_in_flight{{module=\"{module}\",tenant=\"default\"}}");
    let expected = [
        ("wasm_jobs_messages_received_total", 5.0),
        ("wasm_jobs_jobs_succeeded_total", 3.0),
        (
            "wasm_jobs_jobs_failed_total{reason=\"fatal\",kind=\"\"}",
            1.0,
        ),
        (
            "wasm_jobs_jobs_failed_total{reason=\"trap\",kind=\"unreachable\"}",
            1.0,
        ),
        ("wasm_jobs_job_duration_seconds_count", 5.0),
        ("wasm_jobs_queue_to_start_seconds_count", 5.0),
        (in_flight.as_str(), 0.0),
    ];
    // The last fates land just after the last child ended: poll until the
    // counts are reached (or the deadline passes), then check each.
    let text = metrics_when(&metrics_addr, &expected, Duration::from_secs(10));
    for (series, value) in expected {
        assert_eq!(metric(&text, series), value, "{series} in\n{text}");
    }
    let (status, _) = http_get(&metrics_addr, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_tag_every_job_line_and_guest_output() {
    let b = Backend::embedded();
    let (q, addr) = b.create("jsonlogs", &QueueConfig::default()).await;
    let mut m = OutgoingMessage::new(r#"{"op":"count","text":"one two three"}"#);
    m.attributes
        .insert("tenant".into(), AttributeValue::String("acme".into()));
    let id = q.send(&m).await.unwrap();
    let out = b
        .cli()
        .args([
            "worker",
            // The tenant comes from the queue; the message's `tenant`
            // attribute agrees with it.
            "--queue",
            &format!("acme={addr}"),
            "--drain",
            "--wait",
            "0",
            "--log-format",
            "json",
            "--module",
        ])
        .arg(example_guest("c"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for l in log.lines() {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(l) {
            panic!("not JSON ({e}): {l}");
        }
    }
    let lines: Vec<LogEvent> = events_of(&log);
    let job_lines: Vec<&LogEvent> = lines
        .iter()
        .filter(|l| l["span"]["message_id"] == id.as_str())
        .collect();
    assert!(job_lines.len() >= 3, "{lines:#?}");
    for l in &job_lines {
        let span = &l["span"];
        assert_eq!(span["tenant"], "acme", "{l}");
        assert_eq!(span["attempt"], 1, "{l}");
        assert!(
            span["module"].as_str().unwrap().ends_with("job.wasm"),
            "{l}"
        );
        assert!(span["pid"].as_i64().is_some(), "no pid: {l}");
    }
    let guest = lines
        .iter()
        .find(|l| get(l, "target").as_deref() == Some("wasm_jobs::guest"))
        .unwrap_or_else(|| panic!("no guest output line in {lines:#?}"));
    assert_eq!(guest["line"], r#"{"words": 3}"#);
    assert_eq!(guest["stream"], "stdout");
    assert_eq!(guest["span"]["message_id"], id.as_str());
    assert_eq!(guest["span"]["tenant"], "acme");
    assert!(guest["span"]["pid"].as_i64().is_some());
    assert!(
        lines.iter().any(|l| is(
            l,
            "job succeeded; message deleted",
            &[("message_id", id.as_str()), ("tenant", "acme")]
        )),
        "{log}"
    );
    assert!(
        !lines.iter().any(|l| message(l) == "message refused"),
        "{log}"
    );
}
