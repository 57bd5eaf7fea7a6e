//! The worker-process harness for `worker.rs`: start a real `wasm-jobs
//! worker`, read its log as it is written, signal it, and inspect processes
//! through /proc. A dropped `Worker` is SIGKILLed, so a failing test leaves
//! nothing running.

use crate::queue_backends::Backend;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasm_jobs::queue::{Queue, QueueConfig, ReceiveRequest, ReceivedMessage};

/// A running `wasm-jobs worker` whose log we read as it is written.
pub struct Worker {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    pub fn start(b: &Backend, queue: &str, module: &Path, extra: &[&str]) -> Worker {
        let mut cmd = b.cli();
        cmd.args(["worker", "--queue", queue, "--module"])
            .arg(module)
            .args(extra)
            .args(["--log-format", "pretty"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Worker { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait for a log line containing every one of `needles`.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needles:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the first worker child started for any message.
    pub fn child_pid(&self, timeout: Duration) -> i32 {
        let line = self.wait_for(&["worker child started", "pid="], timeout);
        field(&line, "pid").parse().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let the reader finish
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("worker did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    /// A failing test must not leave a worker behind: SIGKILL the parent;
    /// its fork server and children die with it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn field(line: &str, name: &str) -> String {
    let key = format!("{name}=");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    line[start..]
        .split(|c: char| c.is_whitespace() || c == '}')
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next()
        .unwrap_or('?')
}

/// SIGTERM the worker parent `lead` ms before `deadline` (ms since the epoch).
pub fn signal_before(w: &Worker, deadline: u128, lead: u128) {
    let at = deadline - lead;
    let now = now_ms();
    assert!(now < at, "the worker took too long to start:\n{}", w.log());
    std::thread::sleep(Duration::from_millis((at - now) as u64));
    w.signal(libc::SIGTERM);
}

pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

pub fn config(visibility: u64) -> QueueConfig {
    QueueConfig {
        visibility_timeout: Duration::from_secs(visibility),
        ..QueueConfig::default()
    }
}

pub async fn all(q: &dyn Queue) -> Vec<ReceivedMessage> {
    q.receive(ReceiveRequest {
        max_messages: 10,
        wait: Duration::ZERO,
        visibility_timeout: Some(Duration::from_secs(1)),
    })
    .await
    .unwrap()
}

pub async fn counts(q: &dyn Queue) -> (u64, u64, u64) {
    let c = q.counts().await.unwrap();
    (c.visible, c.in_flight, c.delayed)
}

pub fn w_count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The `wasm-jobs.dead-letter-reason` of every message in a dead-letter queue.
pub async fn dead_letter_reasons(dlq: &dyn Queue) -> Vec<String> {
    all(dlq)
        .await
        .iter()
        .map(|m| m.attributes["wasm-jobs.dead-letter-reason"].as_text())
        .collect()
}
