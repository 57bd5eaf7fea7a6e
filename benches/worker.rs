//! Worker benchmark (not a test): trivial-job throughput on the embedded queue
//! at concurrency 1 and 2, exit-to-delete latency, and a bare fork()+waitpid()
//! of a no-op child measured in the same run as the physical reference.
//!
//! Run: `cargo bench --bench worker`. Prints a Markdown table.

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::{OutgoingMessage, Queue, QueueConfig};
use wasm_jobs::sandbox::SandboxPolicy;
use wasm_jobs::worker::forks::ForkClient;
use wasm_jobs::worker::forkserver::{self, ForkServerConfig, ForkServerHandle};
use wasm_jobs::worker::stats::WorkerStats;
use wasm_jobs::worker::{self, WorkerConfig};

const MESSAGES: usize = 3_000;
const FORKS: usize = 2_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// fork() + waitpid() of a child that exits at once. Runs before any thread.
fn bare_fork() -> Duration {
    let mut samples = Vec::with_capacity(FORKS);
    for _ in 0..FORKS {
        let started = Instant::now();
        // SAFETY: single-threaded here; the child only calls _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe { libc::_exit(0) },
            ForkResult::Parent { child } => {
                waitpid(child, None).unwrap();
            }
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    percentile(&samples, 0.5)
}

struct Run {
    jobs_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn run_worker(
    fork_server: ForkServerHandle,
    dir: &std::path::Path,
    module: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let store = EmbeddedStore::open(dir)?;
    let name = format!("bench-c{concurrency}");
    store.create_queue(&name, &QueueConfig::default())?;
    let q: Arc<dyn Queue> = Arc::new(store.queue(&name)?);
    let batch: Vec<OutgoingMessage> = (0..10).map(|_| OutgoingMessage::new("o")).collect();
    for _ in 0..MESSAGES / 10 {
        for r in q.send_batch(&batch).await? {
            r.result?;
        }
    }
    let forks = ForkClient::new(fork_server)?;
    let stats = Arc::new(WorkerStats::default());
    let (_signals_tx, signals) = tokio::sync::mpsc::channel(1);
    let config = WorkerConfig {
        module: Some(module.to_owned()),
        concurrency,
        visibility_timeout: Duration::from_secs(60),
        heartbeat: Duration::from_secs(5),
        exit_timeout: Duration::from_secs(30),
        wait: Some(Duration::ZERO),
        job_timeout: Duration::from_secs(60),
        drain: true,
    };
    let started = Instant::now();
    let exit = worker::run(config, q, forks, Arc::clone(&stats), signals).await;
    let elapsed = started.elapsed();
    anyhow::ensure!(exit == worker::WorkerExit::Drained, "{exit:?}");
    anyhow::ensure!(
        stats.succeeded_count() == MESSAGES as u64,
        "only {} succeeded",
        stats.succeeded_count()
    );
    let mut lat = stats.exit_to_settled();
    lat.sort();
    Ok(Run {
        jobs_per_sec: MESSAGES as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    })
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
    // Compile once so both runs load from the cache.
    let cache = dir.path().join("compiled");
    wasm_jobs::executor::Executor::new(EngineSettings::default(), &cache)?.load_file(&module)?;

    // Everything that forks from this process happens before any thread.
    let fork = bare_fork();
    let config = ForkServerConfig {
        engine: EngineSettings::default(),
        cache_dir: cache,
        policy: SandboxPolicy::default(),
    };
    let servers = [
        forkserver::start(config.clone())?,
        forkserver::start(config)?,
    ];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for (server, concurrency) in servers.into_iter().zip([1, 2]) {
        let run = rt.block_on(run_worker(server, dir.path(), &module, concurrency))?;
        runs.push((concurrency, run));
    }
    let fork_per_sec = 1.0 / fork.as_secs_f64();
    println!("| measurement | value | vs bare fork()+waitpid() |");
    println!("|---|---|---|");
    println!(
        "| bare fork()+waitpid() of a no-op child, median | {:.0} µs ({fork_per_sec:.0}/s, one at a time) | 1 |",
        fork.as_secs_f64() * 1e6
    );
    for (c, r) in &runs {
        println!(
            "| trivial job on the embedded queue, concurrency {c}, {MESSAGES} messages | {:.0} jobs/s | {:.2}× the cost of a bare fork per job |",
            r.jobs_per_sec,
            fork_per_sec / r.jobs_per_sec
        );
        println!(
            "| exit-to-delete latency, concurrency {c}: p50 / p99 | {:.2} / {:.2} ms | |",
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3
        );
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}
