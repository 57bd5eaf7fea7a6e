//! Host memory a guest can make us allocate beyond its linear memory: tables
//! (declared huge, grown, filled, or initialised from big element segments),
//! many memories and many instances. Each bomb is a generated WAT job, run in a real
//! `wasm-jobs exec` process with `--max-memory 1MiB`: it must end typed
//! `out_of_memory` (exit 21) with the process's peak resident memory below
//! the limit plus 64 MiB (measured with `wait4`), and once through a worker.
//! And the modules a sender can make a worker's fork server load: kept
//! within `--loaded-modules-memory`, and the holes they leave in its heap
//! kept away from a template's copies.

use crate::common::*;
use crate::fleet::with_module;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::path::PathBuf;
use std::time::Duration;
use wasm_jobs::queue::OutgoingMessage;

/// The canonical-ABI shell of a job whose `run` executes `body` and returns
/// ok; `decls` go at module level.
fn job_wat(decls: &str, body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  {decls}
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p
      (i32.and
        (i32.sub (i32.add (global.get $heap) (local.get 2)) (i32.const 1))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func $f)
  (elem declare func $f)
  (func (export "run")
    (param i32 i32 i32 i32 i32 i32 i32) (result i32)
    {body}
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
  (func (export "on-exit")
    (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
)"#
    )
}

const ELEMENTS: usize = 1 << 20;

/// The issue's bomb: `n` tables of 1,048,576 funcrefs, each filled. 100 is
/// past the table-count cap; 40 is under it and stopped by the budget.
fn filled_tables(n: usize) -> String {
    let decls: String = (0..n)
        .map(|i| format!("(table $t{i} {ELEMENTS} funcref)\n"))
        .collect();
    let body: String = (0..n)
        .map(|i| format!("(table.fill $t{i} (i32.const 0) (ref.func $f) (i32.const {ELEMENTS}))\n"))
        .collect();
    job_wat(&decls, &body)
}

/// Small tables at instantiation, grown to a million elements each at run.
fn grown_tables() -> String {
    let decls: String = (0..40)
        .map(|i| format!("(table $t{i} 1 funcref)\n"))
        .collect();
    let body: String = (0..40)
        .map(|i| {
            format!(
                "(drop (table.grow $t{i} (ref.func $f) (i32.const {})))\n",
                ELEMENTS - 1
            )
        })
        .collect();
    job_wat(&decls, &body)
}

/// One table of a million elements initialised by an element segment.
fn big_element_segment() -> String {
    let funcs = "$f ".repeat(200_000);
    job_wat(
        &format!("(table $t {ELEMENTS} funcref)\n(elem (table $t) (i32.const 0) func {funcs})"),
        "",
    )
}

/// Eight extra memories of 10 MiB each.
fn many_memories() -> String {
    let decls: String = (0..8).map(|i| format!("(memory $m{i} 160)\n")).collect();
    job_wat(&decls, "")
}

/// A job component (written at the component level, so it can hold more
/// than one core instance) with `n` extra core instances of a module with
/// no memory and no table: host bookkeeping that no byte budget sees, which
/// only the instance cap bounds.
fn many_instances(n: usize) -> Vec<u8> {
    let bombs = "(core instance (instantiate $bomb))\n".repeat(n);
    let wat = format!(
        r#"(component
  (type $message' (record (field "id" string) (field "body" string)
    (field "attributes" (list (tuple string string))) (field "receive-count" u32)))
  (export $message "message" (type $message'))
  (type $retry-info' (record (field "reason" string) (field "delay-seconds" (option u32))))
  (export $retry-info "retry-info" (type $retry-info'))
  (type $failure' (variant (case "retry" $retry-info) (case "fatal" string)))
  (export $failure "failure" (type $failure'))
  (core module $m
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32) (result i32)
      (i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16))
    (func (export "on-exit") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16)))
  (core module $bomb (global i64 (i64.const 0)) (func))
  (core instance $i (instantiate $m))
  {bombs}
  (func $run (param "msg" $message) (result (result (error $failure)))
    (canon lift (core func $i "run") (memory $i "memory") (realloc (func $i "cabi_realloc"))))
  (func $on-exit (param "msg" $message) (param "signal" u32) (result (result (error string)))
    (canon lift (core func $i "on-exit") (memory $i "memory") (realloc (func $i "cabi_realloc"))))
  (export "run" (func $run))
  (export "on-exit" (func $on-exit))
)"#
    );
    wat::parse_str(wat).unwrap()
}

fn component(name: &str, wat: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.wasm"));
    let bytes = wasm_jobs::componentize::job_component_from_core(wat.as_bytes()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Run `wasm-jobs exec` to its end; its exit code and peak RSS in MiB.
/// The child is reaped with `wait4` (for its own rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn exec_peak(component: &std::path::Path, max_memory: &str) -> (i32, f64, String) {
    let child = std::process::Command::new(bin())
        .arg("exec")
        .arg(component)
        .args(["--body", "o", "--max-memory", max_memory, "--json"])
        .env("WASM_JOBS_HOME", data_home())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut out = child.stdout.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child; `usage` is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; std's `Child` is not used to wait, so no double wait.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let code = libc::WEXITSTATUS(status);
    (code, usage.ru_maxrss as f64 / 1024.0, text)
}

#[test]
fn table_and_memory_bombs_are_stopped_at_the_limit() {
    for (name, wat) in [
        ("tables-100-filled", filled_tables(100)),
        ("tables-40-filled", filled_tables(40)),
        ("tables-grown", grown_tables()),
        ("elem-segment", big_element_segment()),
        ("memories-8", many_memories()),
    ] {
        let path = component(name, &wat);
        let (code, peak_mib, json) = exec_peak(&path, "1MiB");
        assert_eq!(code, 21, "{name}: typed out_of_memory: {json}");
        assert!(json.contains("out_of_memory"), "{name}: {json}");
        eprintln!(
            "{name}: peak RSS {peak_mib:.1} MiB (exec of a trivial job: {:.1} MiB)",
            baseline_mib()
        );
        assert!(
            peak_mib < 1.0 + 64.0 + baseline_mib(),
            "{name}: peak RSS {peak_mib:.0} MiB"
        );
    }
}

/// Peak RSS of `exec` running a trivial job: the process's own footprint,
/// which the 64 MiB allowance is measured on top of.
fn baseline_mib() -> f64 {
    static B: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *B.get_or_init(|| {
        let (code, peak, json) = exec_peak(&modes_path(), "1MiB");
        assert_eq!(code, 0, "{json}");
        peak
    })
}

#[test]
fn many_instances_are_stopped_by_the_instance_cap() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (bomb, fits) = (
        dir.join("instances-300.wasm"),
        dir.join("instances-150.wasm"),
    );
    std::fs::write(&bomb, many_instances(300)).unwrap();
    std::fs::write(&fits, many_instances(150)).unwrap();
    let (code, peak_mib, json) = exec_peak(&bomb, "1MiB");
    assert_eq!(code, 21, "typed out_of_memory: {json}");
    assert!(json.contains("instance count too high"), "{json}");
    assert!(
        peak_mib < 1.0 + 64.0 + baseline_mib(),
        "peak RSS {peak_mib:.0} MiB"
    );
    // Under the cap the same fixture is a job that runs.
    let (code, _, json) = exec_peak(&fits, "1MiB");
    assert_eq!(code, 0, "{json}");
}

#[test]
fn the_bombs_fit_when_the_limit_allows_them() {
    // The same tables and memories run when the budget covers them, so the
    // refusals above are the budget's doing, not a broken fixture.
    let path = component("memories-8-ok", &many_memories());
    let (code, _, json) = exec_peak(&path, "128MiB");
    assert_eq!(code, 0, "{json}");
    let path = component("elem-segment-ok", &big_element_segment());
    let (code, _, json) = exec_peak(&path, "16MiB");
    assert_eq!(code, 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_bomb_through_the_worker_ends_out_of_memory() {
    let b = Backend::embedded();
    let (q, addr) = b.create("tables", &config(30)).await;
    q.send(&OutgoingMessage::new("x")).await.unwrap();
    let module = component("tables-100-worker", &filled_tables(100));
    let w = Worker::start(
        &b,
        &addr,
        &module,
        &[
            "--max-memory",
            "1MiB",
            "--wait",
            "0",
            "--visibility-timeout",
            "30",
        ],
    );
    let ended = w.wait_for("worker child ended", &[], Duration::from_secs(60));
    let end = field(&ended, "end");
    assert!(end.starts_with("trap (out of memory)"), "{end}");
    w.wait_for(
        "job did not succeed; leaving the message for redelivery",
        &[],
        Duration::from_secs(10),
    );
}

/// With a budget smaller than any module, each module the fork server
/// loads unloads the one loaded before (logged, its code unmapped from the
/// fork server), and a message for a module unloaded loads it again from
/// the artifact cache and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fork_server_unloads_modules_past_their_memory_budget() {
    const UNLOADED: &str = "module unloaded: the loaded modules are over their memory budget";
    const DONE: &str = "job succeeded; message deleted";
    let b = Backend::embedded();
    let (w, q, _registry) =
        two_module_worker(&b, "module-budget", &["--loaded-modules-memory", "1"]).await;
    let wait = Duration::from_secs(60);
    let fork_server = w.fork_server_pid(wait);
    let mut mapped = Vec::new();
    for (i, (module, body)) in [("modes", "o"), ("publish", "N"), ("modes", "o")]
        .into_iter()
        .enumerate()
    {
        q.send(&with_module(module, body)).await.unwrap();
        wait_for_count(&w, DONE, i + 1, wait);
        mapped.push(artifacts_mapped(fork_server));
    }
    w.signal(libc::SIGTERM);
    let (_, log) = w.wait(Duration::from_secs(20));
    let events = events_of(&log);
    let loads: Vec<String> = events
        .iter()
        .filter(|e| is(e, "module loaded", &[]))
        .map(|e| field(e, "module"))
        .collect();
    assert_eq!(loads, ["modes", "publish", "modes"], "{log}");
    let unloads: Vec<(String, u64)> = events
        .iter()
        .filter(|e| is(e, UNLOADED, &[]))
        .map(|e| (field(e, "module"), field(e, "bytes").parse().unwrap()))
        .collect();
    assert_eq!(unloads.len(), 2, "{log}");
    assert_eq!(
        (unloads[0].0.as_str(), unloads[1].0.as_str()),
        ("modes", "publish")
    );
    assert!(unloads.iter().all(|(_, bytes)| *bytes > 0), "{unloads:?}");
    // One module's code mapped at a time, and a new mapping each time.
    assert!(mapped.iter().all(|m| m.len() == 1), "{mapped:?}");
    assert!(
        mapped[0] != mapped[1] && mapped[1] != mapped[2],
        "{mapped:?}"
    );
}

/// Kibibytes of heap a running process has written to pages of its own
/// (`Private_Dirty`): its C library heap (`[heap]`) and the anonymous
/// mappings starting less than 1 MiB above its end (a template's fresh
/// heap, reserved 256 KiB above the program break).
fn heap_private_dirty_kib(pid: i32) -> u64 {
    let mappings = mappings(pid);
    let heap = |m: &&Mapping| m.path == "[heap]";
    let heap_end = mappings.iter().filter(heap).map(|m| m.end).max().unwrap();
    mappings
        .iter()
        .filter(|m| {
            heap(m) || (m.path.is_empty() && (heap_end..heap_end + (1 << 20)).contains(&m.start))
        })
        .map(|m| m.private_dirty_kib)
        .sum()
}

/// After the Python and JavaScript examples ran in a worker (their
/// metadata freed in the small module's template leaves 14 MB of holes in
/// the heap it inherits), a copy of a small module's template still
/// writes only a few pages of heap: the template allocates from a fresh
/// heap of its own (measured in a debug build: 56 KiB; allocating from the
/// holes it was 216 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_copies_allocate_apart_from_large_modules_holes() {
    const DONE: &str = "job succeeded; message deleted";
    let b = Backend::embedded();
    let home = b.data_dir().unwrap();
    push_module(&home, "python", None, &example_guest("python"));
    push_module(&home, "js", None, &example_guest("js"));
    push_module(&home, "modes", None, &modes_path());
    let (q, addr) = b.create("large-modules", &config(30)).await;
    let w = Worker::with_args(&b, &["--queue", &addr, "--wait", "0", "--concurrency", "1"]);
    let wait = Duration::from_secs(120);
    for guest in ["python", "js"] {
        let count = with_module(guest, r#"{"op":"count","text":"a b"}"#);
        q.send(&count).await.unwrap();
        w.wait_until("the guest's job done", wait, |e| {
            is(e, DONE, &[("module", guest)])
        });
    }
    q.send(&with_module("modes", "o")).await.unwrap();
    w.wait_until("a template for modes", wait, |e| {
        is(e, "template process ready", &[("module", "modes")])
    });
    // Calls until the warm children forked before the template was ready
    // are used up: from then on each is one of its copies.
    for done in 1..=3 {
        wait_for_count_of(&w, DONE, &[("module", "modes")], done, wait);
        q.send(&with_module("modes", "o")).await.unwrap();
    }
    wait_for_count_of(&w, DONE, &[("module", "modes")], 4, wait);
    q.send(&with_module("modes", "l")).await.unwrap();
    const STARTED: &str = "worker child started";
    wait_for_count_of(&w, STARTED, &[("module", "modes")], 5, wait);
    let started = w
        .events()
        .into_iter()
        .rfind(|e| is(e, STARTED, &[]))
        .unwrap();
    assert_eq!(field(&started, "warm"), "true", "{started}");
    let copy: i32 = field(&started, "pid").parse().unwrap();
    // Looping for a tenth of a second of CPU: its set-up is long done.
    let deadline = std::time::Instant::now() + wait;
    while cpu_seconds(copy as u32) < 0.1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy is not looping"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let written = heap_private_dirty_kib(copy);
    w.signal(libc::SIGTERM);
    let (_, log) = w.wait(Duration::from_secs(30));
    assert!(
        events_of(&log)
            .iter()
            .any(|e| is(e, "module loaded", &[("module", "python")])),
        "{log}"
    );
    assert!(
        written < 128,
        "a copy of the modes template wrote {written} KiB of heap"
    );
}
