//! `wasm-jobs demo`: the main job on the embedded queue, needing nothing but
//! cargo. Creates a queue and its dead-letter queue in `<data dir>/demo`,
//! sends a few hundred messages to the bundled example job, runs a worker
//! with a live progress line until the queue is drained, and prints a summary.
//! Runs in the CLI process, which becomes the worker parent for the run.

use super::args::Location;
use super::worker_cmd::{Ending, WorkerArgs, run_worker};
use crate::queue::embedded::EmbeddedStore;
use crate::queue::{OutgoingMessage, Queue, QueueConfig};
use crate::sandbox::DEFAULT_MAX_MEMORY;
use crate::worker::WorkerStats;
use crate::{bundled, paths};
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `wasm-jobs demo` options.
#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 300)]
    messages: usize,
    /// Jobs at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Data directory (the demo uses its `demo/` subdirectory).
    #[arg(long, env = "WASM_JOBS_HOME")]
    data_dir: Option<PathBuf>,
}

const QUEUE: &str = "demo";
const DEAD_LETTERS: &str = "demo-dlq";
const MAX_RECEIVES: u32 = 3;

/// Every 20th message asks for a retry, every 20th (offset) fails fatally.
fn body(i: usize) -> String {
    match i % 20 {
        7 => format!("retry message {i}"),
        13 => format!("fatal message {i}"),
        _ => format!("message {i}: the quick brown fox jumps over the lazy dog"),
    }
}

/// Run the demo; ends like the worker it ran (a code, or a signal to raise).
pub(super) fn run(args: DemoArgs, log: &crate::logging::LogSettings) -> anyhow::Result<Ending> {
    let dir = paths::data_dir(args.data_dir.as_deref()).join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let module = dir.join("demo-job.wasm");
    std::fs::write(&module, bundled::demo_job_component()?)?;
    let store = EmbeddedStore::open(&dir)?;
    store.create_queue(DEAD_LETTERS, &QueueConfig::default())?;
    store.create_queue(
        QUEUE,
        &QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            dead_letter: Some((DEAD_LETTERS.into(), MAX_RECEIVES)),
            ..QueueConfig::default()
        },
    )?;
    let worker = WorkerArgs {
        queue: vec![QUEUE.into()],
        shared_queue: Vec::new(),
        module: Some(module),
        registry: Default::default(),
        policy: None,
        tenant: crate::registry::DEFAULT_TENANT.into(),
        concurrency: args.concurrency,
        visibility_timeout: Duration::from_secs(30),
        heartbeat: Duration::from_secs(5),
        exit_timeout: Duration::from_secs(30),
        wait: Some(Duration::ZERO),
        timeout: Duration::from_secs(60),
        max_memory: DEFAULT_MAX_MEMORY,
        drain: true,
        warm_children: None,
        prefetch: super::worker_cmd::DEFAULT_PREFETCH,
        delete_window: None,
        metrics_addr: None,
        ui: false,
        ui_token_file: None,
        compile_timeout: Duration::from_secs(300),
        compile_memory: 4 << 30,
        loaded_modules_memory: 1 << 30,
        location: Location {
            data_dir: Some(dir.clone()),
            endpoint_url: None,
        },
    };
    let stats = Arc::new(WorkerStats::default());
    let total = args.messages;
    let started = Instant::now();
    let progress_stats = Arc::clone(&stats);
    let queues = store.clone();
    let ending = run_worker(&worker, log, Arc::clone(&stats), || async move {
        let q = queues.queue(QUEUE)?;
        let dlq = queues.queue(DEAD_LETTERS)?;
        q.purge().await?;
        dlq.purge().await?;
        let bodies: Vec<OutgoingMessage> =
            (0..total).map(|i| OutgoingMessage::new(body(i))).collect();
        for chunk in bodies.chunks(10) {
            for r in q.send_batch(chunk).await? {
                r.result?;
            }
        }
        eprintln!(
            "demo: sent {total} messages to the embedded queue `{QUEUE}` in {}",
            dir.display()
        );
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            tokio::spawn(progress(progress_stats, total));
        }
        Ok(())
    });
    let elapsed = started.elapsed();
    let ending = ending?;
    let dead = store.queue(DEAD_LETTERS)?;
    let dead_letters = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(dead.counts())?
        .visible;
    let jobs = stats.succeeded_count() + stats.left_count() + stats.dead_lettered_count();
    eprintln!();
    println!(
        "demo: {total} messages, bundled word-count job, concurrency {}",
        args.concurrency
    );
    println!("  succeeded      {:>6}", stats.succeeded_count());
    println!(
        "  retried        {:>6}  (runs that asked for a retry; after {MAX_RECEIVES} receives the queue dead-letters them)",
        stats.left_count()
    );
    println!(
        "  dead-lettered  {dead_letters:>6}  ({} fatal by the job, the rest by the redrive policy)",
        stats.dead_lettered_count()
    );
    println!(
        "  worker runs    {jobs:>6}  in {:.2} s = {:.0} jobs/s (each in a fresh forked process)",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    Ok(ending)
}

async fn progress(stats: Arc<WorkerStats>, total: usize) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticker.tick().await;
        let done = stats.succeeded_count() + stats.left_count() + stats.dead_lettered_count();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r  {done:>5} runs ({total} messages): {} ok, {} retried, {} dead-lettered by the job · {rate:.0} jobs/s   ",
            stats.succeeded_count(),
            stats.left_count(),
            stats.dead_lettered_count()
        );
        let _ = err.flush();
    }
}
