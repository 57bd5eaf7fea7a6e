//! Worker benchmark (not a test): the trivial job through the whole worker on
//! the embedded queue at concurrency 1, 2 and 8 and through a moto server,
//! exit-to-delete latency (percentiles interpolated within the worker's
//! `wasm_jobs_exit_to_settled_seconds` buckets), the parent's RSS with 64
//! jobs in flight and the heartbeat calls with 100 jobs in flight, each
//! beside a physical reference
//! measured in the same run: a bare fork()+waitpid() of a no-op child, a raw
//! SQLite insert+delete, a raw HTTP round trip to moto. Throughput figures
//! are medians of three runs.
//!
//! Run: `cargo bench --bench worker` (or `scripts/bench` for the report).

// A benchmark is a measuring harness: a failed set-up may panic where it is.
#![allow(clippy::unwrap_used)]

#[path = "support/moto.rs"]
mod moto;

use moto::start_moto;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::sqs::SqsQueue;
use wasm_jobs::queue::{OutgoingMessage, Queue, QueueConfig};
use wasm_jobs::sandbox::SandboxPolicy;
use wasm_jobs::worker::{
    self, BoundQueue, ForkServerSettings, ForkServers, WorkerConfig, WorkerExit, WorkerStats,
};

const MESSAGES: usize = 2_000;
const REPEATS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The cumulative buckets (upper bound in seconds, count) of the histogram
/// `name` in Prometheus text.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split_once("\"} "))
        .map(|(le, n)| (le.parse().unwrap(), n.parse().unwrap()))
        .collect()
}

/// The `p` quantile of a histogram, interpolated linearly within its bucket
/// (as Prometheus's `histogram_quantile`).
fn percentile(buckets: &[(f64, u64)], p: f64) -> Duration {
    let total = buckets.last().map_or(0, |b| b.1) as f64;
    let rank = p * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        let count = count as f64;
        if count >= rank {
            if bound.is_infinite() {
                return Duration::from_secs_f64(lower.0);
            }
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                0.0
            };
            return Duration::from_secs_f64(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    Duration::ZERO
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

struct Bench {
    forks: Arc<ForkServers>,
    module: PathBuf,
}

fn config(module: &Path, concurrency: usize, drain: bool) -> WorkerConfig {
    WorkerConfig {
        module: Some(module.to_owned()),
        registry: wasm_jobs::registry::Registry::new(module.with_extension("registry")),
        concurrency,
        visibility_timeout: Duration::from_secs(30),
        heartbeat: Duration::from_secs(1),
        exit_timeout: Duration::from_secs(30),
        wait: Some(Duration::ZERO),
        policies: wasm_jobs::policy::Policies::open(SandboxPolicy {
            timeout: Duration::from_secs(120),
            ..SandboxPolicy::default()
        }),
        drain,
    }
}

async fn fill(q: &dyn Queue, body: &str, n: usize) -> anyhow::Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<OutgoingMessage> =
            chunk.iter().map(|_| OutgoingMessage::new(body)).collect();
        for r in q.send_batch(&batch).await? {
            r.result?;
        }
    }
    Ok(())
}

impl Bench {
    /// Drain `n` trivial jobs; returns jobs/s and the exit-to-delete
    /// latency histogram's buckets.
    async fn throughput(
        &self,
        q: Arc<dyn Queue>,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<(f64, Vec<(f64, u64)>)> {
        fill(q.as_ref(), "o", n).await?;
        let stats = Arc::new(WorkerStats::default());
        let (_tx, signals) = tokio::sync::mpsc::channel(1);
        let started = Instant::now();
        let exit = worker::run(
            config(&self.module, concurrency, true),
            vec![BoundQueue {
                queue: q,
                tenant: Some("default".into()),
            }],
            Arc::clone(&self.forks),
            Arc::clone(&stats),
            signals,
        )
        .await;
        let elapsed = started.elapsed();
        anyhow::ensure!(exit == WorkerExit::Drained, "{exit:?}");
        anyhow::ensure!(
            stats.succeeded_count() == n as u64,
            "{} of {n} succeeded",
            stats.succeeded_count()
        );
        let lat = buckets(&stats.render(), "wasm_jobs_exit_to_settled_seconds");
        Ok((n as f64 / elapsed.as_secs_f64(), lat))
    }

    /// Hold `n` looping jobs in flight; call `measure` once they all run,
    /// then stop the worker with SIGTERM's exit handling.
    async fn in_flight<T>(
        &self,
        q: Arc<dyn Queue>,
        n: usize,
        measure: impl AsyncFnOnce(&WorkerStats) -> T,
    ) -> anyhow::Result<T> {
        fill(q.as_ref(), "l", n).await?;
        let stats = Arc::new(WorkerStats::default());
        let (tx, signals) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(worker::run(
            config(&self.module, n, false),
            vec![BoundQueue {
                queue: q,
                tenant: Some("default".into()),
            }],
            Arc::clone(&self.forks),
            Arc::clone(&stats),
            signals,
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        let label = self.module.display().to_string();
        while stats.in_flight(&label, "default") < n as i64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} in flight",
                stats.in_flight(&label, "default")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let value = measure(&stats).await;
        tx.send(libc::SIGTERM).await?;
        run.await?;
        Ok(value)
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
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
    let cache = dir.path().join("compiled");
    wasm_jobs::executor::Executor::new(EngineSettings::default(), &cache)?.load_file(&module)?;

    // Before any thread: the fork reference.
    let fork_us = bare_fork_us();
    let sqlite_us = raw_sqlite_us(dir.path())?;
    let moto = start_moto();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
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
            warm_children: 8,
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
        let bench = Bench { forks, module: module.clone() };
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
        let fork_per_s = 1e6 / fork_us;
        for c in [1, 2, 8] {
            let mut rates = Vec::new();
            let mut cold_rates = Vec::new();
            let mut lats = Vec::new();
            for _ in 0..REPEATS {
                let (rate, lat) = bench.throughput(queue("tp")?, MESSAGES, c).await?;
                rates.push(rate);
                lats = lat;
                if c == 2 {
                    // Alternated with the warm runs, so both see the same machine.
                    let (rate, _) = cold.throughput(queue("cold")?, MESSAGES, c).await?;
                    cold_rates.push(rate);
                }
            }
            let rate = median(rates);
            rows.push(format!("| trivial job, embedded queue, concurrency {c} (median of {REPEATS} × {MESSAGES}) | {rate:.0} jobs/s | bare fork+waitpid {fork_per_s:.0}/s | {:.2} of fork rate | ≥ 1,000 jobs/s at c=2 |", rate / fork_per_s));
            if c == 2 {
                let cold_rate = median(cold_rates);
                rows.push(format!("| the same, concurrency 2, warm children off (`--warm-children 0`), runs alternated with the row above | {cold_rate:.0} jobs/s | the row above: {rate:.0} jobs/s | warm / off = {:.2} | |", rate / cold_rate));
                rows.push(format!(
                    "| exit-to-delete latency, concurrency 2: p50 / p99 (interpolated within the histogram's buckets) | {:.2} / {:.2} ms | SQLite insert+delete {sqlite_us:.0} µs | p99 = {:.1}× | p99 < 5 ms |",
                    percentile(&lats, 0.5).as_secs_f64() * 1e3,
                    percentile(&lats, 0.99).as_secs_f64() * 1e3,
                    percentile(&lats, 0.99).as_secs_f64() * 1e6 / sqlite_us
                ));
            }
        }
        if let Some((_, port)) = &moto {
            let raw = raw_moto_ms(*port);
            let conf = aws_sdk_sqs::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .credentials_provider(aws_sdk_sqs::config::Credentials::new("b", "b", None, None, "bench"))
                .endpoint_url(format!("http://127.0.0.1:{port}"))
                .build();
            let client = aws_sdk_sqs::Client::from_conf(conf);
            let url = SqsQueue::create(&client, "bench", &QueueConfig::default()).await?;
            let (rate, _) = bench.throughput(Arc::new(SqsQueue::new(client, url)), 200, 2).await?;
            rows.push(format!("| trivial job through moto, concurrency 2, 200 messages | {rate:.0} jobs/s | raw HTTP round trip to moto {raw:.2} ms | {:.1} round trips per job | |", 1e3 / rate / raw));
        } else {
            rows.push("| trivial job through moto | skipped: moto not installed | | | |".into());
        }
        let before = rss_mib();
        let rss = bench.in_flight(queue("rss")?, 64, async |_| rss_mib()).await?;
        rows.push(format!("| parent RSS with 64 jobs in flight | {rss:.1} MiB | the same process idle: {before:.1} MiB | {:.2}× | < 64 MiB |", rss / before));
        let (calls, seconds) = bench
            .in_flight(queue("heartbeats")?, 100, async |stats: &WorkerStats| {
                let start = stats.heartbeat_calls();
                tokio::time::sleep(Duration::from_secs(6)).await;
                (stats.heartbeat_calls() - start, 6.0)
            })
            .await?;
        let per_interval = calls as f64 / seconds; // heartbeat interval: 1 s
        rows.push(format!("| heartbeat calls with 100 jobs in flight (interval 1 s) | {:.0} calls/min ({per_interval:.1} per interval) | in-flight / 10 = 10 per interval | {:.2}× | ≤ in-flight/10 per interval |", per_interval * 60.0, per_interval / 10.0));
        anyhow::Ok(rows)
    })?;
    if let Some((mut child, _)) = moto {
        let _ = child.kill();
    }
    println!("| measurement | value | physical reference (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!("| bare fork()+waitpid() of a no-op child, median | {fork_us:.0} µs | | | |");
    println!(
        "| raw SQLite insert+delete (WAL, synchronous=NORMAL), median | {sqlite_us:.0} µs | | | |"
    );
    for r in rows {
        println!("{r}");
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}
