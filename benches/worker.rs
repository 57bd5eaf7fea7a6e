//! Worker benchmark (not a test): the whole worker, in-process, on the
//! embedded queue and through a moto server. The trivial job at several
//! concurrencies, with warm children and without, with long polls of 0, 1
//! and 20 s; the Python and JavaScript example guests (when built), and
//! the trivial job again with their modules loaded beside it; queue
//! calls per job (the worker's own `wasm_jobs_queue_calls_total`) and what
//! the delete window costs; what asking for outcomes and what JSON logs at
//! info cost; receive-to-start and exit-to-delete latencies
//! (percentiles interpolated within the worker's histogram buckets); the
//! parent's RSS with 64 jobs in flight and the heartbeat calls with 100.
//! Each figure stands beside a physical reference measured in the same
//! run: a bare fork()+waitpid() of a no-op child (measured again, in a
//! fresh single-threaded process, just before each throughput run, and
//! each ratio is the median of the runs' own ratios: this machine's speed
//! drifts over the minutes a report takes), a raw SQLite
//! insert+delete, a raw HTTP round trip to moto, and the rate at which one
//! bare client drains a 200-message backlog from moto (receive 10, delete
//! them in one batch, again: the most any single consumer gets from that
//! server, whatever it does with the messages), and again with the
//! messages sent as they are taken (moto receives more slowly the more its
//! queue holds). Embedded-queue throughput figures are medians of three
//! runs.
//!
//! Run: `cargo bench --bench worker` (or `scripts/bench` for the report).

// A benchmark is a measuring harness: a failed set-up may panic where it is.
#![allow(clippy::unwrap_used)]

#[path = "support/batches.rs"]
mod batches;
#[path = "support/moto.rs"]
mod moto;
#[path = "support/process_rss.rs"]
mod process_rss;
#[path = "support/runs.rs"]
mod runs;

use moto::start_moto;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};
use runs::{Bench, Feed, Knobs, median, percentile_ms};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::sqs::SqsQueue;
use wasm_jobs::queue::{Queue, QueueConfig};
use wasm_jobs::worker::{ForkServerSettings, ForkServers, WorkerStats};

const MESSAGES: usize = 2_000;
const REPEATS: usize = 3;

/// Set in the environment of this binary's copy that only measures the
/// fork reference and prints it (µs).
const FORK_REFERENCE_ONLY: &str = "WASM_JOBS_BENCH_FORK_REFERENCE";

/// The fork reference now, in a fresh copy of this program (small and
/// single-threaded, as this process was before it started the worker), in
/// fork()+waitpid() per second.
fn fork_rate_now() -> anyhow::Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(FORK_REFERENCE_ONLY, "1")
        .output()?;
    anyhow::ensure!(out.status.success(), "fork reference: {}", out.status);
    let us: f64 = String::from_utf8(out.stdout)?.trim().parse()?;
    Ok(1e6 / us)
}

/// Throughput runs, each beside the fork rate measured just before it.
#[derive(Default)]
struct Paired {
    rates: Vec<f64>,
    forks: Vec<f64>,
}

impl Paired {
    /// Measure the fork rate, then run.
    async fn run(
        &mut self,
        all_forks: &mut Vec<f64>,
        run: impl Future<Output = anyhow::Result<f64>>,
    ) -> anyhow::Result<()> {
        let fork = fork_rate_now()?;
        all_forks.push(fork);
        self.forks.push(fork);
        self.rates.push(run.await?);
        Ok(())
    }
    fn rate(&self) -> f64 {
        median(self.rates.clone())
    }
    /// The median of each run's rate over its own fork rate.
    fn ratio(&self) -> f64 {
        median(
            self.rates
                .iter()
                .zip(&self.forks)
                .map(|(r, f)| r / f)
                .collect(),
        )
    }
    fn reference(&self) -> String {
        format!(
            "bare fork+waitpid {:.0}/s (before each run)",
            median(self.forks.clone())
        )
    }
}

/// fork() + waitpid() of a child that exits at once, in µs. Before any thread.
fn bare_fork_us() -> f64 {
    let samples = (0..2_000)
        .map(|_| {
            let started = Instant::now();
            // SAFETY: single-threaded here; the child only calls _exit.
            match unsafe { fork() }.unwrap() {
                ForkResult::Child => unsafe { libc::_exit(0) },
                ForkResult::Parent { child } => {
                    waitpid(child, None).unwrap();
                }
            }
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(samples)
}

/// A raw SQLite insert + delete (same journal settings as the embedded queue), in µs.
fn raw_sqlite_us(dir: &Path) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open(dir.join("raw.sqlite3"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")?;
    let samples = (0..2_000)
        .map(|i| {
            let started = Instant::now();
            conn.execute("INSERT INTO t VALUES (?1, 'o')", [i]).unwrap();
            conn.execute("DELETE FROM t WHERE id = ?1", [i]).unwrap();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    Ok(median(samples))
}

/// A raw HTTP request to moto (ListQueues), new connection each time, in ms.
fn raw_moto_ms(port: u16) -> f64 {
    let body = "Action=ListQueues&Version=2012-11-05";
    let samples = (0..100)
        .map(|_| {
            let started = Instant::now();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                s,
                "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=b/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(samples)
}

/// Messages per second one bare client gets through `n` messages on
/// `queue`, sent as `feed` says (a backlog is sent before the clock starts):
/// receive up to 10, delete them in one batch, again. No worker, no job:
/// what the server itself allows a single consumer.
async fn bare_drain_per_s(queue: &dyn Queue, n: usize, feed: Feed) -> anyhow::Result<f64> {
    if let Feed::Backlog = feed {
        batches::send_all(queue, n).await?;
        let took = batches::receive_delete_all(queue, n).await?;
        return Ok(n as f64 / took.as_secs_f64());
    }
    let mut sent = 0;
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let send = async {
        while sent < n {
            match runs::send_due(
                queue,
                feed,
                n,
                (sent, done.load(Ordering::Relaxed)),
                "o",
                false,
            )
            .await?
            {
                0 => tokio::time::sleep(Duration::from_micros(500)).await,
                due => sent += due,
            }
        }
        anyhow::Ok(())
    };
    let drain = async {
        while done.load(Ordering::Relaxed) < n {
            match batches::receive_delete_ten(queue).await? {
                0 => tokio::time::sleep(Duration::from_micros(500)).await,
                got => _ = done.fetch_add(got, Ordering::Relaxed),
            }
        }
        anyhow::Ok(())
    };
    tokio::try_join!(send, drain)?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let wat = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/modes.wat"
    ))?;
    let module = dir.path().join("trivial.wasm");
    std::fs::write(
        &module,
        wasm_jobs::componentize::job_component_from_core(&wat)?,
    )?;
    if std::env::var_os(FORK_REFERENCE_ONLY).is_some() {
        println!("{}", bare_fork_us());
        return Ok(());
    }
    let cache = dir.path().join("compiled");
    wasm_jobs::executor::Executor::new(EngineSettings::default(), &cache)?.load_file(&module)?;
    // The example guests that are built (the fork server compiles them on
    // their first run, which is not timed).
    let guests: Vec<(&str, std::path::PathBuf)> = ["python", "js"]
        .into_iter()
        .map(|lang| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("guest-examples")
                .join(lang)
                .join("build/job.wasm");
            (lang, path)
        })
        .filter(|(_, path)| path.exists())
        .collect();
    let sqlite_us = raw_sqlite_us(dir.path())?;
    let moto = start_moto();

    // The worker's own runtime, as `wasm-jobs worker` builds it.
    let rt = wasm_jobs::worker::runtime()?;
    let (rows, all_forks) = rt.block_on(async {
        let mut all_forks = Vec::new();
        let settings = ForkServerSettings {
            exe: env!("CARGO_BIN_EXE_wasm-jobs").into(),
            cache_dir: cache,
            fuel_metering: false,
            compile_timeout: Duration::from_secs(300),
            compile_memory: 4 << 30,
            log: wasm_jobs::logging::LogSettings {
                format: wasm_jobs::logging::LogFormat::Json,
                filter: "error".into(),
            },
            warm_children: 10,
            loaded_modules_memory: 1 << 30,
        };
        let cold_settings = ForkServerSettings {
            warm_children: 0,
            ..settings.clone()
        };
        let forks = ForkServers::start(settings, Arc::default()).await?;
        let cold_forks = ForkServers::start(cold_settings, Arc::default()).await?;
        // Spinning jobs yield the CPU to the parent being measured.
        for pid in [forks.pid(), cold_forks.pid()].into_iter().flatten() {
            // SAFETY: setpriority on our own child process.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 19) };
        }
        let bench = Bench { forks: Arc::clone(&forks), module: module.clone() };
        // The same worker forking every call on demand (no warm children).
        let cold = Bench { forks: cold_forks, module: module.clone() };
        let store = EmbeddedStore::open(dir.path())?;
        let mut next = 0;
        let mut queue = |name: &str| -> anyhow::Result<Arc<dyn Queue>> {
            next += 1;
            let name = format!("{name}-{next}");
            store.create_queue(&name, &QueueConfig::default())?;
            Ok(Arc::new(store.queue(&name)?))
        };
        let mut rows = Vec::new();
        for c in [1, 2, 8] {
            let mut runs = Paired::default();
            let mut cold_rates = Vec::new();
            let mut lats = Vec::new();
            for _ in 0..REPEATS {
                let q = queue("tp")?;
                runs.run(&mut all_forks, async {
                    let run = bench.run(q, "o", MESSAGES, Knobs::c(c), Feed::Backlog).await?;
                    lats = run.exit_to_delete;
                    Ok(run.jobs_per_s)
                })
                .await?;
                if c == 2 {
                    // Alternated with the warm runs, so both see the same machine.
                    let run = cold.run(queue("cold")?, "o", MESSAGES, Knobs::c(c), Feed::Backlog).await?;
                    cold_rates.push(run.jobs_per_s);
                }
            }
            let rate = runs.rate();
            rows.push(format!("| trivial job, embedded queue, concurrency {c} (median of {REPEATS} × {MESSAGES}) | {rate:.0} jobs/s | {} | {:.2} of fork rate | c=2: ≥ 0.5 of fork rate |", runs.reference(), runs.ratio()));
            if c == 2 {
                let cold_rate = median(cold_rates);
                rows.push(format!("| the same, concurrency 2, warm children off (`--warm-children 0`), runs alternated with the row above | {cold_rate:.0} jobs/s | the row above: {rate:.0} jobs/s | warm / off = {:.2} | |", rate / cold_rate));
                rows.push(format!(
                    "| exit-to-delete latency, concurrency 2 (default delete window: 0 on the embedded queue): p50 / p99 | {:.2} / {:.2} ms | SQLite insert+delete {sqlite_us:.0} µs | p99 = {:.1}× | p99 < 5 ms |",
                    percentile_ms(&lats, 0.5),
                    percentile_ms(&lats, 0.99),
                    percentile_ms(&lats, 0.99) * 1e3 / sqlite_us
                ));
            }
        }
        for w in [1, 20] {
            let mut runs = Paired::default();
            for _ in 0..REPEATS {
                let q = queue("wait")?;
                runs.run(&mut all_forks, async { Ok(bench.run(q, "o", MESSAGES, Knobs::c(2).wait(w), Feed::Backlog).await?.jobs_per_s) }).await?;
            }
            rows.push(format!("| the same, concurrency 2, `--wait {w}` (long polls; median of {REPEATS} × {MESSAGES}) | {:.0} jobs/s | {} | {:.2} of fork rate | as fast as `--wait 0` |", runs.rate(), runs.reference(), runs.ratio()));
        }
        // What asking for outcomes costs: every message with a reply-to,
        // runs alternated with the same jobs without.
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            let q = queue("reply")?;
            store.create_queue(&format!("{}-replies", q.name()), &QueueConfig::default())?;
            with.push(bench.run(q, "o", MESSAGES, Knobs::c(2).reply(), Feed::Backlog).await?.jobs_per_s);
            without.push(bench.run(queue("noreply")?, "o", MESSAGES, Knobs::c(2), Feed::Backlog).await?.jobs_per_s);
        }
        let (with, without) = (median(with), median(without));
        rows.push(format!("| `reply-to` on every message (one outcome message each), trivial job, embedded queue, concurrency 2, runs alternated with the same jobs without | {with:.0} jobs/s; {:.0} µs more per job | without: {without:.0} jobs/s | {:.2} of the rate without | the cost of outcomes |", (1e6 / with - 1e6 / without), with / without));
        // What logging costs: the worker's JSON lines at info into a file,
        // as `wasm-jobs worker` writes them under a service manager (this
        // runtime is single-threaded, so a default set on this thread is
        // every task's), runs alternated with the same jobs logging nothing.
        let log_path = dir.path().join("worker.log");
        let (mut logged, mut quiet, mut log_bytes) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            let file = Arc::new(std::fs::File::create(&log_path)?);
            let logs = tracing::Dispatch::new(wasm_jobs::logging::json_subscriber("info", file));
            let guard = tracing::dispatcher::set_default(&logs);
            logged.push(bench.run(queue("logged")?, "o", MESSAGES, Knobs::c(2), Feed::Backlog).await?.jobs_per_s);
            drop(guard);
            log_bytes.push(std::fs::metadata(&log_path)?.len() as f64 / MESSAGES as f64);
            quiet.push(bench.run(queue("quiet")?, "o", MESSAGES, Knobs::c(2), Feed::Backlog).await?.jobs_per_s);
        }
        let (logged, quiet) = (median(logged), median(quiet));
        rows.push(format!("| JSON logs at info written to a file (as the binary writes them), trivial job, embedded queue, concurrency 2, runs alternated with the same jobs logging nothing | {logged:.0} jobs/s; {:.0} µs more per job; {:.0} bytes of log per job | without: {quiet:.0} jobs/s | {:.2} of the rate without | what logging costs |", (1e6 / logged - 1e6 / quiet), median(log_bytes), logged / quiet));
        // An idle worker long-polling: each message sent once the one
        // before has succeeded, so nothing waits for a slot.
        let latency = async |b: &Bench, q| -> anyhow::Result<(f64, f64)> {
            let run = b.run(q, "o", 300, Knobs::c(2).wait(20), Feed::Ahead(1)).await?;
            Ok((percentile_ms(&run.receive_to_start, 0.5), percentile_ms(&run.receive_to_start, 0.99)))
        };
        let fork_us = 1e6 / fork_rate_now()?;
        all_forks.push(1e6 / fork_us);
        let (warm50, warm99) = latency(&bench, queue("latency")?).await?;
        let (cold50, cold99) = latency(&cold, queue("latency-cold")?).await?;
        rows.push(format!("| receive-to-start latency, idle worker, one message at a time (300), warm child: p50 / p99 | {warm50:.2} / {warm99:.2} ms | forked on demand: {cold50:.2} / {cold99:.2} ms; bare fork+waitpid {:.2} ms | warm p50 = {:.2} of a bare fork | p50 < 0.3 ms, p99 < 2 ms |", fork_us / 1e3, warm50 * 1e3 / fork_us));
        for (lang, path) in &guests {
            let guest = Bench { forks: Arc::clone(&forks), module: path.clone() };
            let body = r#"{"op":"count","text":"one two three"}"#;
            guest.run(queue("compile")?, body, 1, Knobs::c(1), Feed::Backlog).await?;
            let runs: &[(usize, u64)] = if *lang == "python" { &[(1, 0), (2, 0), (2, 1), (4, 0)] } else { &[(1, 0), (2, 0), (4, 0)] };
            for &(c, w) in runs {
                let mut runs = Paired::default();
                for _ in 0..REPEATS {
                    let q = queue(lang)?;
                    runs.run(&mut all_forks, async { Ok(guest.run(q, body, 400, Knobs::c(c).wait(w), Feed::Backlog).await?.jobs_per_s) }).await?;
                }
                let target = if *lang == "python" && c == 2 { "≥ 800 jobs/s" } else { "" };
                rows.push(format!("| {lang} example guest, embedded queue, concurrency {c}, `--wait {w}` (median of {REPEATS} × 400) | {:.0} jobs/s | {} | {:.2} of fork rate | {target} |", runs.rate(), runs.reference(), runs.ratio()));
            }
        }
        // The trivial job again, its fork server now holding the guests'
        // modules too, as a worker serving several modules does.
        if !guests.is_empty() {
            let mut runs = Paired::default();
            for _ in 0..REPEATS {
                let q = queue("beside")?;
                runs.run(&mut all_forks, async { Ok(bench.run(q, "o", MESSAGES, Knobs::c(2), Feed::Backlog).await?.jobs_per_s) }).await?;
            }
            rows.push(format!("| trivial job, embedded queue, concurrency 2, after the guests above ran in the same worker (their modules still loaded in its fork server; median of {REPEATS} × {MESSAGES}) | {:.0} jobs/s | {} | {:.2} of fork rate | as the trivial job alone |", runs.rate(), runs.reference(), runs.ratio()));
        }
        if let Some((_, port)) = &moto {
            let raw = raw_moto_ms(*port);
            let rtt = format!("raw HTTP round trip to moto {raw:.2} ms");
            let conf = aws_sdk_sqs::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_sqs::config::Credentials::new("b", "b", None, None, "bench"))
                .endpoint_url(format!("http://127.0.0.1:{port}"))
                .build();
            let client = aws_sdk_sqs::Client::from_conf(conf);
            let mut next = 0;
            let mut sqs = async |b: &Bench, body: &str, knobs: Knobs, n: usize, feed: Feed| -> anyhow::Result<runs::Run> {
                next += 1;
                let url = SqsQueue::create(&client, &format!("bench-{next}"), &QueueConfig::default()).await?;
                b.run(Arc::new(SqsQueue::new(client.clone(), url)), body, n, knobs, feed).await
            };
            let url = SqsQueue::create(&client, "bench-drain", &QueueConfig::default()).await?;
            let drain = bare_drain_per_s(&SqsQueue::new(client.clone(), url), 200, Feed::Backlog).await?;
            let rtt = format!("{rtt}; one bare client drains {drain:.0} msg/s");
            for c in [1, 4, 10] {
                let run = sqs(&bench, "o", Knobs::c(c), 200, Feed::Backlog).await?;
                rows.push(format!("| trivial job through moto, concurrency {c}, 200 messages | {:.0} jobs/s, {:.2} queue calls per job | {rtt} | {:.2} round trips per job; {:.2} of the bare drain | c=4: ≤ 0.3 calls per job |", run.jobs_per_s, run.calls_per_job, 1e3 / run.jobs_per_s / raw, run.jobs_per_s / drain));
            }
            for w in [1, 20] {
                let run = sqs(&bench, "o", Knobs::c(4).wait(w), 200, Feed::Backlog).await?;
                rows.push(format!("| the same, concurrency 4, `--wait {w}` | {:.0} jobs/s, {:.2} queue calls per job | {rtt} | {:.2} round trips per job | as fast as `--wait 0` |", run.jobs_per_s, run.calls_per_job, 1e3 / run.jobs_per_s / raw));
            }
            for window in [0, 20, 100] {
                let run = sqs(&bench, "o", Knobs::c(4).window_ms(window), 200, Feed::Backlog).await?;
                rows.push(format!("| delete window {window} ms (default on SQS: 20), trivial job through moto, concurrency 4: jobs/s, calls per job; exit-to-delete p50 / p99 | {:.0} jobs/s, {:.2} calls per job; {:.1} / {:.1} ms | {rtt} | p99 = {:.1} round trips | what the window costs |", run.jobs_per_s, run.calls_per_job, percentile_ms(&run.exit_to_delete, 0.5), percentile_ms(&run.exit_to_delete, 0.99), percentile_ms(&run.exit_to_delete, 0.99) / raw));
            }
            // moto 5 takes longer to receive the more messages its queue
            // holds: for each message it returns it reads the queue's
            // attributes, which count every message held. A 200-message
            // backlog bounds any consumer (the bare drain above), so the
            // same jobs run again with their messages sent as they are
            // taken, at most FED sent and not yet done, beside one bare
            // client draining that same feed.
            const FED: usize = 30;
            let python = guests.iter().find(|(lang, _)| *lang == "python").map(|(_, path)| Bench { forks: Arc::clone(&forks), module: path.clone() });
            let body = r#"{"op":"count","text":"one two three"}"#;
            if let Some(guest) = &python {
                let run = sqs(guest, body, Knobs::c(4), 200, Feed::Backlog).await?;
                rows.push(format!("| python example guest through moto, concurrency 4, 200 messages | {:.0} jobs/s, {:.2} queue calls per job | {rtt} | {:.2} round trips per job; {:.2} of the bare drain | ≥ 200 jobs/s |", run.jobs_per_s, run.calls_per_job, 1e3 / run.jobs_per_s / raw, run.jobs_per_s / drain));
            }
            // (jobs/s, calls per job, the bare drain of that round) per round.
            let (mut drains, mut trivial, mut guest_runs) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..REPEATS {
                let url = SqsQueue::create(&client, &format!("bench-fed-drain-{round}"), &QueueConfig::default()).await?;
                let fed = bare_drain_per_s(&SqsQueue::new(client.clone(), url), 400, Feed::Ahead(FED)).await?;
                drains.push(fed);
                let run = sqs(&bench, "o", Knobs::c(4), 400, Feed::Ahead(FED)).await?;
                trivial.push((run.jobs_per_s, run.calls_per_job, fed));
                if let Some(guest) = &python {
                    let run = sqs(guest, body, Knobs::c(4), 400, Feed::Ahead(FED)).await?;
                    guest_runs.push((run.jobs_per_s, run.calls_per_job, fed));
                }
            }
            let fed_ref = format!("one bare client drains the same feed at {:.0} msg/s (median of {REPEATS}, one before each pair of runs)", median(drains));
            for (what, target, runs) in [("trivial job", "", trivial), ("python example guest", "≥ 200 jobs/s", guest_runs)] {
                if runs.is_empty() {
                    continue;
                }
                let jobs_per_s = median(runs.iter().map(|r| r.0).collect());
                let calls = median(runs.iter().map(|r| r.1).collect());
                let ratio = median(runs.iter().map(|r| r.0 / r.2).collect());
                rows.push(format!("| {what} through moto, concurrency 4, 400 messages sent as they are taken (at most {FED} sent and not yet done; median of {REPEATS}) | {jobs_per_s:.0} jobs/s, {calls:.2} queue calls per job | {fed_ref} | {ratio:.2} of the bare drain | {target} |"));
            }
        } else {
            rows.push("| trivial job through moto | skipped: moto not installed | | | |".into());
        }
        let exe = Path::new(env!("CARGO_BIN_EXE_wasm-jobs"));
        let (idle, rss) = process_rss::worker_parent_rss(exe, &module, 64)?;
        rows.push(format!("| parent RSS with 64 jobs in flight (the `wasm-jobs worker` process, embedded queue) | {rss:.1} MiB | the same process idle: {idle:.1} MiB | {:.2}× | < 64 MiB |", rss / idle));
        let (calls, seconds) = bench
            .in_flight(queue("heartbeats")?, 100, async |stats: &WorkerStats| {
                let start = stats.heartbeat_calls();
                tokio::time::sleep(Duration::from_secs(6)).await;
                (stats.heartbeat_calls() - start, 6.0)
            })
            .await?;
        let per_interval = calls as f64 / seconds; // heartbeat interval: 1 s
        rows.push(format!("| heartbeat calls with 100 jobs in flight (interval 1 s) | {:.0} calls/min ({per_interval:.1} per interval) | in-flight / 10 = 10 per interval | {:.2}× | ≤ in-flight/10 per interval |", per_interval * 60.0, per_interval / 10.0));
        anyhow::Ok((rows, all_forks))
    })?;
    if let Some((mut child, _)) = moto {
        let _ = child.kill();
    }
    println!("| measurement | value | physical reference (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    let fork_us: Vec<f64> = all_forks.iter().map(|per_s| 1e6 / per_s).collect();
    let (fastest, slowest) = fork_us
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), us| (lo.min(*us), hi.max(*us)));
    println!(
        "| bare fork()+waitpid() of a no-op child: median of the {} measured beside the runs below (fastest, slowest) | {:.0} µs ({fastest:.0}, {slowest:.0}) | | | |",
        fork_us.len(),
        median(fork_us.clone())
    );
    println!(
        "| raw SQLite insert+delete (WAL, synchronous=NORMAL), median | {sqlite_us:.0} µs | | | |"
    );
    for r in rows {
        println!("{r}");
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}
