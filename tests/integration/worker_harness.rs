//! The worker-process harness for `worker.rs`, `worker_serving.rs` and the
//! other worker tests: start a real `wasm-jobs worker`, read its log as it
//! is written, signal it, and inspect processes through /proc. A dropped
//! `Worker` is SIGKILLed, so a failing test leaves nothing running.

use crate::queue_backends::Backend;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasm_jobs::queue::{Queue, QueueConfig, ReceiveRequest, ReceivedMessage};

/// A running `wasm-jobs worker` whose JSON log we read as it is written.
pub(crate) struct Worker {
    pub(crate) child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

/// One JSON log line: the event's fields at the top level, its job span's
/// fields under `"span"`.
pub(crate) type LogEvent = serde_json::Value;

/// A field of a log event, from the event itself or its job span, as text.
pub(crate) fn get(e: &LogEvent, key: &str) -> Option<String> {
    let v = e
        .get(key)
        .or_else(|| e.get("span").and_then(|s| s.get(key)))?;
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// A field that must be there.
pub(crate) fn field(e: &LogEvent, key: &str) -> String {
    get(e, key).unwrap_or_else(|| panic!("no {key} in {e}"))
}

/// The event's message.
pub(crate) fn message(e: &LogEvent) -> &str {
    e.get("message").and_then(|m| m.as_str()).unwrap_or("")
}

/// Whether an event has this message and these field values.
pub(crate) fn is(e: &LogEvent, msg: &str, fields: &[(&str, &str)]) -> bool {
    message(e) == msg && fields.iter().all(|(k, v)| get(e, k).as_deref() == Some(*v))
}

/// Parse a worker's whole stderr into events (lines that are not JSON, such
/// as a final `error: ...`, are skipped).
pub(crate) fn events_of(log: &str) -> Vec<LogEvent> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Worker {
    /// `wasm-jobs worker --queue QUEUE --module MODULE EXTRA...`.
    pub(crate) fn start(b: &Backend, queue: &str, module: &Path, extra: &[&str]) -> Worker {
        let mut args = vec!["--queue", queue, "--module"];
        let module = module.to_str().unwrap();
        args.push(module);
        args.extend_from_slice(extra);
        Worker::with_args(b, &args)
    }

    /// `wasm-jobs worker ARGS...` with JSON logs at info level.
    pub(crate) fn with_args(b: &Backend, args: &[&str]) -> Worker {
        Worker::with_env(b, args, &[])
    }

    /// The same, with these extra environment variables.
    pub(crate) fn with_env(b: &Backend, args: &[&str], env: &[(&str, &str)]) -> Worker {
        Worker::spawn(Worker::command(b, args, env))
    }

    /// The command [`Worker::with_env`] runs, for a test to adjust (its
    /// limits, say) before [`Worker::spawn`].
    pub(crate) fn command(b: &Backend, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = b.cli();
        cmd.envs(env.iter().copied());
        cmd.arg("worker")
            .args(args)
            .args(["--log-format", "json"])
            .env("RUST_LOG", TEST_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start a command from [`Worker::command`].
    pub(crate) fn spawn(mut cmd: Command) -> Worker {
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

    /// The whole log so far, for assertion messages.
    pub(crate) fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Every JSON event so far.
    pub(crate) fn events(&self) -> Vec<LogEvent> {
        events_of(&self.log())
    }

    /// How many events so far have this message and fields.
    pub(crate) fn count(&self, msg: &str, fields: &[(&str, &str)]) -> usize {
        self.events().iter().filter(|e| is(e, msg, fields)).count()
    }

    /// Wait for an event that satisfies `pred`.
    pub(crate) fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&LogEvent) -> bool,
    ) -> LogEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no event {what} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for an event with this message and these fields.
    pub(crate) fn wait_for(
        &self,
        msg: &str,
        fields: &[(&str, &str)],
        timeout: Duration,
    ) -> LogEvent {
        self.wait_until(&format!("{msg:?} {fields:?}"), timeout, |e| {
            is(e, msg, fields)
        })
    }

    /// The pid of the first worker child started for any message.
    pub(crate) fn child_pid(&self, timeout: Duration) -> i32 {
        let e = self.wait_for("worker child started", &[], timeout);
        field(&e, "pid").parse().unwrap()
    }

    /// The pid of the first fork server that said it was ready.
    pub(crate) fn fork_server_pid(&self, timeout: Duration) -> i32 {
        let e = self.wait_for("fork server ready", &[], timeout);
        field(&e, "pid").parse().unwrap()
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub(crate) fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.finish_log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("worker did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log once the reader has seen the end of stderr (the worker has
    /// exited; its fork server and children, which share stderr, too).
    fn finish_log(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.lines) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log()
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

/// Wait until the worker's log has at least `n` events with this message.
pub(crate) fn wait_for_count(w: &Worker, msg: &str, n: usize, timeout: Duration) {
    wait_for_count_of(w, msg, &[], n, timeout);
}

/// Wait until the worker has logged `n` events with this message and these
/// fields.
pub(crate) fn wait_for_count_of(
    w: &Worker,
    msg: &str,
    fields: &[(&str, &str)],
    n: usize,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while w.count(msg, fields) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} {msg:?} events in:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Send `sig` to a process of the test's own worker (its fork server, a
/// template, a child), found in its log.
pub(crate) fn kill(pid: i32, sig: i32) {
    // SAFETY: signalling a process of this test's own worker.
    unsafe { libc::kill(pid, sig) };
}

/// CPU time (user + system) a process has used so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub(crate) fn alive(pid: i32) -> bool {
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

/// The parent of `pid`, if it is running (from `/proc/PID/stat`).
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(crate) fn process_state(pid: i32) -> char {
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
pub(crate) fn signal_before(w: &Worker, deadline: u128, lead: u128) {
    let at = deadline - lead;
    let now = now_ms();
    assert!(now < at, "the worker took too long to start:\n{}", w.log());
    std::thread::sleep(Duration::from_millis((at - now) as u64));
    w.signal(libc::SIGTERM);
}

pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

pub(crate) fn config(visibility: u64) -> QueueConfig {
    QueueConfig {
        visibility_timeout: Duration::from_secs(visibility),
        ..QueueConfig::default()
    }
}

pub(crate) async fn all(q: &dyn Queue) -> Vec<ReceivedMessage> {
    q.receive(ReceiveRequest {
        max_messages: 10,
        wait: Duration::ZERO,
        visibility_timeout: Some(Duration::from_secs(1)),
    })
    .await
    .unwrap()
}

pub(crate) async fn counts(q: &dyn Queue) -> (u64, u64, u64) {
    let c = q.counts().await.unwrap();
    (c.visible, c.in_flight, c.delayed)
}

/// How many events of a finished worker's log have this message and fields.
pub(crate) fn count_in(log: &str, msg: &str, fields: &[(&str, &str)]) -> usize {
    events_of(log).iter().filter(|e| is(e, msg, fields)).count()
}

/// The `wasm-jobs.dead-letter-reason` of every message in a dead-letter queue.
pub(crate) async fn dead_letter_reasons(dlq: &dyn Queue) -> Vec<String> {
    all(dlq)
        .await
        .iter()
        .map(|m| m.attributes["wasm-jobs.dead-letter-reason"].as_text())
        .collect()
}

/// A worker on `b`'s queue `name` (returned) with a registry that holds
/// `modes` and `publish` (in the returned directory), with `extra`
/// arguments.
pub(crate) async fn two_module_worker(
    b: &Backend,
    name: &str,
    extra: &[&str],
) -> (Worker, Arc<dyn Queue>, tempfile::TempDir) {
    let pushed = tempfile::tempdir().unwrap();
    crate::common::push_module(pushed.path(), "modes", None, &crate::common::modes_path());
    crate::common::push_module(
        pushed.path(),
        "publish",
        None,
        &crate::common::publish_path(),
    );
    let (q, addr) = b.create(name, &config(30)).await;
    let registry = pushed.path().join("registry");
    let mut args = vec![
        "--queue",
        &addr,
        "--registry",
        registry.to_str().unwrap(),
        "--wait",
        "0",
    ];
    args.extend_from_slice(extra);
    (Worker::with_args(b, &args), q, pushed)
}

/// The compiled modules a process has mapped: the distinct memory files
/// (inodes) its artifacts are mapped from (small modules' code is mapped
/// from a sealed memory file; `src/artifact_cache.rs`).
pub(crate) fn artifacts_mapped(pid: i32) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/memfd:wasm-jobs-artifact"))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

/// One mapping of a process, from `/proc/PID/smaps`.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) perms: String,
    /// The file or pseudo-path (`[heap]`); empty for anonymous memory.
    pub(crate) path: String,
    pub(crate) vm_flags: String,
    /// Kibibytes written by this process alone (`Private_Dirty`).
    pub(crate) private_dirty_kib: u64,
}

/// `pid`'s mappings now.
pub(crate) fn mappings(pid: i32) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            mappings.last_mut().unwrap().vm_flags = flags.trim().to_owned();
        } else if f[0] == "Private_Dirty:" {
            mappings.last_mut().unwrap().private_dirty_kib = f[1].parse().unwrap();
        } else if let Some((start, end)) = f[0].split_once('-') {
            mappings.push(Mapping {
                start: u64::from_str_radix(start, 16).unwrap(),
                end: u64::from_str_radix(end, 16).unwrap(),
                perms: f[1].into(),
                path: f.get(5).copied().unwrap_or("").to_owned(),
                vm_flags: String::new(),
                private_dirty_kib: 0,
            });
        }
    }
    mappings
}

/// Every byte of `pid`'s private writable mappings (heap, stacks, guest
/// memory), read through `/proc/PID/mem`; regions that cannot be read are
/// skipped.
pub(crate) fn private_memory(pid: i32) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut bytes = Vec::new();
    for line in maps.lines() {
        let mut cols = line.split_whitespace();
        let (range, perms) = (cols.next().unwrap(), cols.next().unwrap());
        if !perms.starts_with("rw") || !perms.ends_with('p') {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        if mem.read_exact_at(&mut region, start).is_ok() {
            bytes.extend_from_slice(&region);
        }
    }
    bytes
}

/// Whether `memory` holds the ASCII `marker` (searched with the standard
/// library's optimized string search, on a lossy copy).
pub(crate) fn holds(memory: &[u8], marker: &str) -> bool {
    String::from_utf8_lossy(memory).contains(marker)
}

/// The worker tests' log filter: info, and each job's start and end lines
/// (debug, since a job that succeeds logs one line at info: its success).
pub(crate) const TEST_LOG: &str = "info,wasm_jobs::worker::parent::job=debug";

/// Worker flags for quick scenarios: a 4 s visibility timeout held by a
/// heartbeat every second, a 2 s exit timeout, no long polls.
pub(crate) const FAST: &[&str] = &[
    "--visibility-timeout",
    "4",
    "--heartbeat",
    "1",
    "--exit-timeout",
    "2",
    "--wait",
    "0",
];

/// The index of the first event that satisfies `pred`.
pub(crate) fn position(events: &[LogEvent], pred: impl Fn(&LogEvent) -> bool) -> Option<usize> {
    events.iter().position(pred)
}
