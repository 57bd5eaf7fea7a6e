//! Pre-forked ("warm") worker children, through the real worker on the
//! embedded queue: calls are handed to children set up ahead of them, a
//! warm child only ever takes a call of the tenant, module and policy it was
//! set up for and gets that call's own message, its timeout counts from the
//! call, a message too large for a handover is forked on demand, and no
//! child outlives the worker. Children for the expected key are copies of a
//! template process that instantiated the job once; each copy draws its
//! own random numbers. The fork server's own code is in huge pages.

use crate::common::{hostile_path, modes_path};
use crate::fleet::with_module;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::time::{Duration, Instant};
use wasm_jobs::queue::OutgoingMessage;

/// `worker child started` events, split into (warm, forked).
fn starts(log: &str) -> (usize, usize) {
    let warm = count_in(log, "worker child started", &[("warm", "true")]);
    let forked = count_in(log, "worker child started", &[("warm", "false")]);
    (warm, forked)
}

/// The fork server's children now (template, warm children, calls).
fn children_of(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_or(0, |c| c.split_whitespace().count())
}

/// Every message's call gets that message: "i" makes the job fail with its
/// own message id, which becomes the dead-letter reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_children_take_the_calls_each_with_its_own_message() {
    let b = Backend::embedded();
    let (q, dlq) = b.create_with_dlq("warm-ids", 3, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let w = Worker::start(
        &b,
        &addr,
        &modes_path(),
        &["--concurrency", "2", "--wait", "0"],
    );
    let mut ids = vec![q.send(&OutgoingMessage::new("i")).await.unwrap()];
    let wait = Duration::from_secs(60);
    w.wait_for("message dead-lettered", &[], wait);
    // The first call forks (there is no template yet). Then, idle, the fork
    // server keeps a template and a warm child per free slot: its copies.
    let fork_server = w.fork_server_pid(wait);
    let deadline = Instant::now() + wait;
    while children_of(fork_server) < 3 {
        assert!(Instant::now() < deadline, "no warm children: {}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nine more: ten in all, what one receive of the dead-letter queue
    // returns.
    for _ in 0..9 {
        ids.push(q.send(&OutgoingMessage::new("i")).await.unwrap());
    }
    while w.count("message dead-lettered", &[]) < 10 {
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = w.log();
    let (warm, forked) = starts(&log);
    assert_eq!(warm + forked, 10, "{log}");
    // The first two of the nine find a warm child each, whatever the load;
    // how many of the rest do depends on how fast the template copies itself
    // while calls run (the benchmark measures that, with warm children off
    // beside it).
    assert!(warm >= 2, "{warm} warm, {forked} forked: {log}");
    let mut reasons = dead_letter_reasons(dlq.as_ref()).await;
    let mut ids: Vec<String> = ids
        .into_iter()
        .map(|id| format!("job failed fatally: {id}"))
        .collect();
    reasons.sort();
    ids.sort();
    assert_eq!(reasons, ids, "each call saw its own message: {log}");
    w.signal(libc::SIGTERM);
    let (status, log) = w.wait(wait);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{log}");
}

/// With `--warm-children 0` every call forks, as before pre-forking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_children_can_be_turned_off() {
    let b = Backend::embedded();
    let (q, addr) = b.create("warm-off", &config(30)).await;
    for _ in 0..6 {
        q.send(&OutgoingMessage::new("o")).await.unwrap();
    }
    let args = [
        "--concurrency",
        "2",
        "--wait",
        "0",
        "--drain",
        "--warm-children",
        "0",
    ];
    let w = Worker::start(&b, &addr, &modes_path(), &args);
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(starts(&log), (0, 6), "{log}");
}

/// What every fork copies: the fork server keeps none of the program's
/// code or read-only data (the relocated part included) in a mapping of
/// its file, where children would fault it in or fork copy an entry per
/// small page; all of it, each segment's last partial 2 MiB page too, is
/// in anonymous memory marked for huge pages (`src/hugepages.rs`, with the
/// segment layout of `build.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fork_server_holds_no_read_only_part_of_its_program_in_small_file_pages() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    if thp.is_ok_and(|s| s.contains("[never]")) {
        eprintln!("skipped: this kernel gives no huge pages");
        return;
    }
    let b = Backend::embedded();
    let (_q, addr) = b.create("huge-text", &config(30)).await;
    let w = Worker::start(&b, &addr, &modes_path(), &["--wait", "0"]);
    let pid = w.fork_server_pid(Duration::from_secs(60));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let mappings = mappings(pid);
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
    let exe = exe.to_str().unwrap();
    let left: Vec<_> = mappings
        .iter()
        .filter(|m| m.path == exe && m.perms.starts_with("r-"))
        .collect();
    assert!(
        left.is_empty(),
        "read-only parts left in the file: {left:?}"
    );
    // Text, read-only data and the relocated data: three anonymous
    // read-only mappings marked for huge pages, each a whole number of
    // 2 MiB pages.
    let huge: Vec<_> = mappings
        .iter()
        .filter(|m| {
            m.path.is_empty()
                && m.perms.starts_with("r-")
                && m.vm_flags.split(' ').any(|f| f == "hg")
        })
        .collect();
    assert!(huge.len() >= 3, "{huge:?}");
    for m in &huge {
        assert!(m.start % (2 << 20) == 0 && m.end % (2 << 20) == 0, "{m:?}");
    }
}

/// A template holds only its own module: the fork server keeps the
/// components it loaded (within their budget), but a template lets go of the others, so its
/// copies (one per call) neither inherit nor pay for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_holds_only_its_own_module() {
    let b = Backend::embedded();
    let (w, q, _registry) = two_module_worker(&b, "one-module", &[]).await;
    let wait = Duration::from_secs(60);
    q.send(&with_module("publish", "N")).await.unwrap();
    w.wait_until("the publish job done", wait, |e| {
        is(
            e,
            "job succeeded; message deleted",
            &[("module", "publish")],
        )
    });
    q.send(&with_module("modes", "o")).await.unwrap();
    let ready = w.wait_until("a template for modes", wait, |e| {
        is(e, "template process ready", &[("module", "modes")])
    });
    let template: i32 = field(&ready, "pid").parse().unwrap();
    let fork_server = w.fork_server_pid(wait);
    let (held, kept) = (artifacts_mapped(fork_server), artifacts_mapped(template));
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
    assert_eq!(held.len(), 2, "the fork server holds both: {held:?}");
    assert_eq!(kept.len(), 1, "the template holds one: {kept:?}");
    assert!(held.is_superset(&kept), "{held:?} {kept:?}");
}

/// Two tenants whose policies grant different directories, their messages
/// interleaved: each call reads its own tenant's file, whether it was
/// forked or handed to a warm child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_child_serves_only_the_tenant_it_was_set_up_for() {
    let b = Backend::embedded();
    let home = b.data_dir().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let mut policy = String::new();
    for tenant in ["acme", "globex"] {
        let dir = dirs.path().join(tenant);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("who"), format!("I am {tenant}\n")).unwrap();
        policy.push_str(&format!(
            "[tenants.{tenant}]\ndirs = [{{ host = \"{}\", guest = \"/data\", read_only = true }}]\n",
            dir.display()
        ));
    }
    let policy_file = home.join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();
    let (qa, addr_a) = b.create("warm-acme", &config(30)).await;
    let (qg, addr_g) = b.create("warm-globex", &config(30)).await;
    for _ in 0..8 {
        qa.send(&OutgoingMessage::new("read:/data/who"))
            .await
            .unwrap();
        qg.send(&OutgoingMessage::new("read:/data/who"))
            .await
            .unwrap();
    }
    let (queue_a, queue_g) = (format!("acme={addr_a}"), format!("globex={addr_g}"));
    let module = hostile_path();
    let w = Worker::with_args(
        &b,
        &[
            "--queue",
            &queue_a,
            "--queue",
            &queue_g,
            "--module",
            module.to_str().unwrap(),
            "--policy",
            policy_file.to_str().unwrap(),
            "--concurrency",
            "2",
            "--wait",
            "0",
            "--drain",
        ],
    );
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let events = events_of(&log);
    let lines: Vec<_> = events
        .iter()
        .filter_map(|e| Some((get(e, "line")?, get(e, "tenant")?)))
        .filter(|(line, _)| line.starts_with("I am"))
        .collect();
    assert_eq!(lines.len(), 16, "{log}");
    for (line, tenant) in &lines {
        assert_eq!(line, &format!("I am {tenant}"), "{log}");
    }
    let (warm, _) = starts(&log);
    assert!(warm > 0, "some calls were handed to warm children: {log}");
    assert_eq!(counts(qa.as_ref()).await, (0, 0, 0));
    assert_eq!(counts(qg.as_ref()).await, (0, 0, 0));
}

/// A warm child waits longer than the job's timeout before its call, and
/// the call still gets the whole timeout; a spinning call in a warm child
/// is still stopped by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_childs_timeout_counts_from_its_call() {
    let b = Backend::embedded();
    let (q, addr) = b.create("warm-timeout", &config(30)).await;
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    let args = [
        "--timeout",
        "1",
        "--wait",
        "0",
        "--visibility-timeout",
        "30",
    ];
    let w = Worker::start(&b, &addr, &modes_path(), &args);
    w.wait_for(
        "job succeeded; message deleted",
        &[],
        Duration::from_secs(20),
    );
    // Not a synchronisation: the warm child must sit idle past the timeout.
    std::thread::sleep(Duration::from_millis(2_500));
    // "w" busy-loops for 20M iterations: well under a second, but it would
    // trap at once if the epoch deadline had been counting while it waited.
    q.send(&OutgoingMessage::new("w")).await.unwrap();
    q.send(&OutgoingMessage::new("l")).await.unwrap();
    wait_for_count(&w, "worker child ended", 3, Duration::from_secs(20));
    let log = w.log();
    let ends: Vec<String> = events_of(&log)
        .iter()
        .filter(|e| message(e) == "worker child ended")
        .map(|e| field(e, "end"))
        .collect();
    assert_eq!(ends[0], "ok", "{log}");
    assert_eq!(ends.iter().filter(|e| *e == "ok").count(), 2, "{log}");
    assert_eq!(
        ends.iter().filter(|e| e.starts_with("timeout: ")).count(),
        1,
        "{log}"
    );
    let (warm, _) = starts(&log);
    assert!(warm >= 1, "{log}");
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(20));
}

/// Every process whose command line names `dir` (the fork server's
/// children carry its command line).
fn processes_naming(dir: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir))
        })
        .collect()
}

/// A body too large for one handover packet is forked on demand, and when
/// the worker exits no child (warm or not) is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_fork_on_demand_and_no_child_outlives_the_worker() {
    let b = Backend::embedded();
    let (q, addr) = b.create("warm-large", &config(30)).await;
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    q.send(&OutgoingMessage::new(format!("o{}", "x".repeat(100_000))))
        .await
        .unwrap();
    q.send(&OutgoingMessage::new("o")).await.unwrap();
    // No prefetch: one message at a time, so they start in the order sent.
    let args = [
        "--wait",
        "0",
        "--drain",
        "--concurrency",
        "1",
        "--prefetch",
        "0",
    ];
    let w = Worker::start(&b, &addr, &modes_path(), &args);
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        3,
        "{log}"
    );
    let started: Vec<String> = events_of(&log)
        .iter()
        .filter(|e| message(e) == "worker child started")
        .map(|e| field(e, "warm"))
        .collect();
    assert_eq!(started, ["false", "false", "true"], "{log}");
    let dir = b.data_dir().unwrap();
    let dir = dir.to_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_naming(dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            processes_naming(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls run in copies of a template process that instantiated the job
/// once, and no copy's random numbers are another's: the guest's generator
/// reseeds in each copy (a generator copied from the template would give
/// every job the same bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_copies_draw_their_own_random_numbers() {
    let b = Backend::embedded();
    let (q, addr) = b.create("template-random", &config(30)).await;
    for _ in 0..12 {
        q.send(&OutgoingMessage::new("random")).await.unwrap();
    }
    let args = ["--concurrency", "2", "--wait", "0", "--drain"];
    let w = Worker::start(&b, &addr, &hostile_path(), &args);
    let (status, log) = w.wait(Duration::from_secs(120));
    assert!(status.success(), "{log}");
    assert!(count_in(&log, "template process ready", &[]) >= 1, "{log}");
    let copies = events_of(&log)
        .iter()
        .filter(|e| message(e) == "worker child started")
        .filter_map(|e| get(e, "pid"))
        .collect::<Vec<_>>();
    assert_eq!(copies.len(), 12, "{log}");
    let mut draws: Vec<String> = events_of(&log)
        .iter()
        .filter_map(|e| get(e, "line"))
        .filter(|l| l.starts_with("random: "))
        .collect();
    assert_eq!(draws.len(), 12, "{log}");
    draws.sort();
    draws.dedup();
    assert_eq!(draws.len(), 12, "every job drew its own bytes: {log}");
}

/// A job that traps while it is instantiated gets no template: the
/// template dies before it is ready, and its calls fork on demand and end
/// with the trap, as without templates (the message is left for
/// redelivery with the trap as the reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_traps_at_instantiation_gets_no_template_and_its_calls_the_trap() {
    let wat = std::fs::read_to_string(crate::common::repo_root().join("tests/fixtures/modes.wat"))
        .unwrap();
    let end = wat.rfind(')').unwrap();
    let wat = format!(
        "{}  (func $boom unreachable)\n  (start $boom)\n)\n",
        &wat[..end]
    );
    let wasm = wasm_jobs::componentize::job_component_from_core(wat.as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("traps-at-start.wasm");
    std::fs::write(&module, wasm).unwrap();
    let b = Backend::embedded();
    let (q, addr) = b.create("template-trap", &config(30)).await;
    for _ in 0..3 {
        q.send(&OutgoingMessage::new("o")).await.unwrap();
    }
    let args = ["--concurrency", "1", "--wait", "0", "--drain"];
    let w = Worker::start(&b, &addr, &module, &args);
    w.wait_for(
        "a template process ended before its job was instantiated; forking on demand for a while",
        &[],
        Duration::from_secs(60),
    );
    wait_for_count(
        &w,
        "job did not succeed; leaving the message for redelivery",
        3,
        Duration::from_secs(60),
    );
    let log = w.log();
    assert_eq!(count_in(&log, "template process ready", &[]), 0, "{log}");
    let traps = events_of(&log)
        .into_iter()
        .filter(|e| message(e) == "job did not succeed; leaving the message for redelivery")
        .filter(|e| get(e, "why").is_some_and(|w| w.contains("unreachable")))
        .count();
    assert!(traps >= 3, "each call met the trap: {log}");
    // The messages wait out their visibility; stop the worker.
    w.signal(libc::SIGTERM);
    w.wait(Duration::from_secs(60));
}
