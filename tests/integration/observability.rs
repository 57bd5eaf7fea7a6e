//! Metrics and structured logs of a running worker: real HTTP requests
//! against `--metrics-addr` (the metrics, the health endpoints, and the
//! endpoint under 500 idle connections), and `--log-format json` lines
//! checked field by field.

use crate::common::{example_guest, free_port, modes_path};
use crate::queue_backends::Backend;
use crate::worker_harness::{LogEvent, Worker, cpu_seconds, events_of, get, is, message};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, QueueConfig};

/// A TCP proxy on 127.0.0.1 to `upstream` that can be stopped (its port
/// then refuses connections and those it carried are cut) and started again
/// on the same port.
struct Proxy {
    port: u16,
    upstream: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(port: u16, upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut carried = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                carried.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Proxy {
            port,
            upstream,
            task: Some(task),
        }
    }

    /// Close the port and cut every connection (dropping the task drops
    /// the listener and the connections' tasks).
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        *self = Proxy::start(self.port, self.upstream).await;
    }
}

/// Send `request` and read the whole answer (the server closes after it),
/// all within `timeout`: (status line, body).
fn try_request(addr: &str, request: &str, timeout: Duration) -> std::io::Result<(String, String)> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), timeout)?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf)? {
            0 => break,
            n => response.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

pub(crate) fn try_get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    try_request(addr, &request, timeout)
}

pub(crate) fn http_get(addr: &str, path: &str) -> (String, String) {
    try_get(addr, path, Duration::from_secs(10)).unwrap()
}

/// GET `path` until it answers with `status` (the worker is still starting,
/// or its state is changing); returns the body.
fn wait_for_status(w: &Worker, addr: &str, path: &str, status: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let last = try_get(addr, path, Duration::from_secs(5));
        match &last {
            Ok((s, body)) if s == status => return body.clone(),
            _ => assert!(
                Instant::now() < deadline,
                "GET {path} never answered {status}; last: {last:?}\n{}",
                w.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A series' value, if the text has it.
pub(crate) fn metric_opt(text: &str, series: &str) -> Option<f64> {
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
    // The sender's trace: the job's span becomes a child of its span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    m.attributes
        .insert("traceparent".into(), AttributeValue::String(traceparent));
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
    // At info the worker's own lines about a job that succeeds are one: its
    // success, with how long it ran; the rest are the guest's.
    let own: Vec<&&LogEvent> = job_lines
        .iter()
        .filter(|l| get(l, "target").as_deref() != Some("wasm_jobs::guest"))
        .collect();
    assert_eq!(own.len(), 1, "{own:#?}");
    assert_eq!(message(own[0]), "job succeeded; message deleted");
    assert!(
        own[0]["run_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{own:#?}"
    );
    for l in &job_lines {
        let span = &l["span"];
        assert_eq!(span["tenant"], "acme", "{l}");
        assert_eq!(span["attempt"], 1, "{l}");
        assert!(
            span["module"].as_str().unwrap().ends_with("job.wasm"),
            "{l}"
        );
        assert!(span["pid"].as_i64().is_some(), "no pid: {l}");
        assert_eq!(span["trace_id"], trace_id, "{l}");
    }
    // One new span for the job, the same in the parent's and the child's
    // lines, and not the sender's.
    let span_ids: std::collections::BTreeSet<&str> = job_lines
        .iter()
        .map(|l| l["span"]["span_id"].as_str().unwrap())
        .collect();
    assert_eq!(span_ids.len(), 1, "{span_ids:?}");
    let span_id = span_ids.first().unwrap();
    assert!(
        span_id.len() == 16 && *span_id != "00f067aa0ba902b7",
        "{span_id}"
    );
    let guest = lines
        .iter()
        .find(|l| get(l, "target").as_deref() == Some("wasm_jobs::guest"))
        .unwrap_or_else(|| panic!("no guest output line in {lines:#?}"));
    assert_eq!(guest["line"], r#"{"words": 3}"#);
    assert_eq!(guest["stream"], "stdout");
    assert_eq!(guest["span"]["message_id"], id.as_str());
    assert_eq!(guest["span"]["tenant"], "acme");
    assert_eq!(guest["span"]["trace_id"], trace_id);
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

/// `wasm-jobs worker` on `queue` (the modes fixture, 1 s long polls)
/// serving its endpoint on a free port: the command and that address.
fn serving_worker(b: &Backend, queue: &str, env: &[(&str, &str)]) -> (Command, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let module = modes_path().display().to_string();
    let args = ["--queue", queue, "--module", &module, "--wait", "1"];
    let cmd = Worker::command(b, &[&args[..], &["--metrics-addr", &addr]].concat(), env);
    (cmd, addr)
}

/// This process's descriptor limit up to its hard limit (500 sockets must
/// fit beside what the other tests hold).
fn raise_own_nofile_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and setting this process's own limit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    l.rlim_cur
}

/// The worker's soft descriptor limit: low enough that 500 connections
/// would exhaust it (accept fails with EMFILE) if the server held them all.
const WORKER_NOFILE: libc::rlim_t = 128;
const IDLE_CONNECTIONS: usize = 500;

/// 500 idle connections (one of them sending half a request head) to a
/// worker allowed 128 descriptors: they can all be opened, /metrics still
/// answers within 1 s, the parent stays under 10% of a core from the first
/// connection to the end of 2 s of requests, and every idle connection is
/// closed by the server (the over-cap ones at once, the rest at the head
/// timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_block_metrics_nor_burn_cpu() {
    let own_limit = raise_own_nofile_limit();
    assert!(
        own_limit >= 2 * IDLE_CONNECTIONS as u64,
        "this test needs a hard descriptor limit of at least {} (have {own_limit})",
        2 * IDLE_CONNECTIONS
    );
    let b = Backend::embedded();
    let (_q, queue) = b.create("idle", &QueueConfig::default()).await;
    let (mut cmd, addr) = serving_worker(&b, &queue, &[]);
    // SAFETY: runs between fork and exec; getrlimit and setrlimit are
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            l.rlim_cur = WORKER_NOFILE.min(l.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let w = Worker::spawn(cmd);
    wait_for_status(
        &w,
        &addr,
        "/metrics",
        "HTTP/1.1 200 OK",
        Duration::from_secs(30),
    );
    let pid = w.child.id();

    // A server that stopped accepting leaves connections in the listen
    // backlog, then the kernel drops new ones: connecting times out (and
    // the test stops opening more, to measure the rest).
    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut idle = Vec::new();
    let mut refused = None;
    while idle.len() < IDLE_CONNECTIONS && refused.is_none() {
        match TcpStream::connect_timeout(&socket, Duration::from_secs(5)) {
            Ok(c) => idle.push(c),
            Err(e) => refused = Some(e),
        }
    }
    idle[0]
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut answers = Vec::new();
    let asking = Instant::now();
    while asking.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        let answer = try_get(&addr, "/metrics", Duration::from_secs(1));
        answers.push((asked.elapsed(), answer.map(|(status, _)| status)));
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    let slowest = answers.iter().map(|(t, _)| *t).max().unwrap();
    eprintln!(
        "with {} idle connections: {} GET /metrics, slowest {slowest:?}; worker parent CPU {:.1}% of a core",
        idle.len(),
        answers.len(),
        cpu * 100.0
    );
    if let Some(e) = refused {
        panic!("only {} connections could be opened: {e}", idle.len());
    }
    for (took, answer) in &answers {
        match answer {
            Ok(status) => assert_eq!(status, "HTTP/1.1 200 OK"),
            Err(e) => panic!("GET /metrics failed after {took:?}: {e}\n{}", w.log()),
        }
    }
    assert!(slowest < Duration::from_secs(1), "{answers:?}");
    assert!(
        cpu < 0.10,
        "the worker parent used {:.1}% of a core",
        cpu * 100.0
    );

    // Every idle connection is closed by the server: read sees the end.
    let deadline = Instant::now() + Duration::from_secs(15);
    for (i, c) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("idle connection {i} still open after 15 s: {e}"),
            }
        }
    }
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
}

/// `/healthz` answers while the process runs; `/readyz` is 200 once the
/// worker reached its queue, 503 with the reason while the SQS endpoint
/// refuses connections (a proxy to moto, stopped), 200 again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_queue_and_healthz_the_process() {
    let b = Backend::moto();
    let (_q, queue) = b.create("ready", &QueueConfig::default()).await;
    let moto = crate::queue_backends::moto_endpoint();
    let upstream = moto.trim_start_matches("http://").parse().unwrap();
    let mut proxy = Proxy::start(0, upstream).await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let (cmd, addr) = serving_worker(&b, &queue, &[("AWS_ENDPOINT_URL", &endpoint)]);
    let w = Worker::spawn(cmd);
    let ok = "HTTP/1.1 200 OK";
    let unavailable = "HTTP/1.1 503 Service Unavailable";
    let long = Duration::from_secs(30);
    let body = wait_for_status(&w, &addr, "/healthz", ok, long);
    assert_eq!(body.trim(), "ok");
    wait_for_status(&w, &addr, "/readyz", ok, long);
    w.wait_for("worker started", &[], long);

    proxy.stop().await;
    let why = wait_for_status(&w, &addr, "/readyz", unavailable, long);
    assert!(
        why.starts_with("not ready: the last call to queue"),
        "{why}"
    );
    assert_eq!(http_get(&addr, "/healthz").0, ok);

    proxy.restart().await;
    wait_for_status(&w, &addr, "/readyz", ok, long);

    assert_eq!(http_get(&addr, "/nope").0, "HTTP/1.1 404 Not Found");
    let post = format!(
        "POST /readyz HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = try_request(&addr, &post, Duration::from_secs(10)).unwrap();
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
}
