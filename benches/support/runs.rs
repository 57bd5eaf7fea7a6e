//! The worker benchmark's harness: run the worker in-process against a
//! queue until `n` jobs succeeded, and read its own metrics (queue calls by
//! kind, the exit-to-settled and receive-to-start histograms).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, Queue};
use wasm_jobs::sandbox::SandboxPolicy;
use wasm_jobs::worker::{self, BoundQueue, ForkServers, WorkerConfig, WorkerStats};

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The cumulative buckets (upper bound in seconds, count) of the histogram
/// `name` in Prometheus text.
pub(crate) fn buckets(metrics: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split_once("\"} "))
        .map(|(le, n)| (le.parse().unwrap(), n.parse().unwrap()))
        .collect()
}

/// The `p` quantile of a histogram in ms, interpolated linearly within its
/// bucket (as Prometheus's `histogram_quantile`).
pub(crate) fn percentile_ms(buckets: &[(f64, u64)], p: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1) as f64;
    let rank = p * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        let count = count as f64;
        if count >= rank {
            if bound.is_infinite() {
                return lower.0 * 1e3;
            }
            let within = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                0.0
            };
            return (lower.0 + (bound - lower.0) * within) * 1e3;
        }
        lower = (bound, count);
    }
    0.0
}

/// The worker settings a run varies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    pub(crate) concurrency: usize,
    pub(crate) wait: Duration,
    pub(crate) prefetch: usize,
    /// `None`: the worker's default for the queue.
    pub(crate) delete_window: Option<Duration>,
    /// Each message asks for its outcome in QUEUE-replies (which must exist,
    /// in the embedded store beside the module).
    pub(crate) reply: bool,
}

impl Knobs {
    /// The worker's defaults at this concurrency, short polling.
    pub(crate) fn c(concurrency: usize) -> Self {
        Knobs {
            concurrency,
            wait: Duration::ZERO,
            prefetch: 10,
            delete_window: None,
            reply: false,
        }
    }
    pub(crate) fn reply(self) -> Self {
        Knobs {
            reply: true,
            ..self
        }
    }
    pub(crate) fn wait(self, seconds: u64) -> Self {
        Knobs {
            wait: Duration::from_secs(seconds),
            ..self
        }
    }
    pub(crate) fn window_ms(self, ms: u64) -> Self {
        Knobs {
            delete_window: Some(Duration::from_millis(ms)),
            ..self
        }
    }
}

pub(crate) fn config(module: &Path, knobs: Knobs, drain: bool) -> WorkerConfig {
    WorkerConfig {
        module: Some(module.to_owned()),
        registry: wasm_jobs::registry::Registry::Dir(wasm_jobs::registry::DirRegistry::new(
            module.with_extension("registry"),
        )),
        oci: wasm_jobs::registry::oci::OciModules::new(wasm_jobs::registry::CacheSettings {
            dir: module.with_extension("registry-cache"),
            max_bytes: 1 << 30,
            latest_ttl: wasm_jobs::registry::DEFAULT_LATEST_TTL,
        }),
        concurrency: knobs.concurrency,
        visibility_timeout: Duration::from_secs(30),
        heartbeat: Duration::from_secs(1),
        exit_timeout: Duration::from_secs(30),
        wait: Some(knobs.wait),
        policies: wasm_jobs::policy::Policies::open(SandboxPolicy {
            timeout: Duration::from_secs(120),
            ..SandboxPolicy::default()
        }),
        drain,
        prefetch: knobs.prefetch,
        delete_window: knobs.delete_window,
        reply_queues: worker::ReplyQueues {
            data_dir: module.parent().unwrap_or(module).to_owned(),
            endpoint: None,
        },
    }
}

/// A message with `body`, asking for its outcome in QUEUE-replies if `reply`.
fn message(q: &dyn Queue, body: &str, reply: bool) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(body);
    if reply {
        let to = AttributeValue::String(format!("{}-replies", q.name()));
        m.attributes.insert("reply-to".into(), to);
    }
    m
}

pub(crate) async fn fill(q: &dyn Queue, body: &str, n: usize, reply: bool) -> anyhow::Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<OutgoingMessage> = chunk.iter().map(|_| message(q, body, reply)).collect();
        for r in q.send_batch(&batch).await? {
            r.result?;
        }
    }
    Ok(())
}

/// How a run's messages reach the queue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Feed {
    /// All of them sent before the worker starts: a backlog.
    Backlog,
    /// Sent while the worker runs, in batches of up to ten, each batch once
    /// at most `k` sent messages (with it) have not yet succeeded. `Ahead(1)`
    /// sends each message once the one before succeeded, to an idle worker.
    Ahead(usize),
}

impl Feed {
    /// How many to send now, with `sent` of `n` sent and `done` succeeded.
    pub(crate) fn due(self, n: usize, sent: usize, done: usize) -> usize {
        match self {
            Feed::Backlog => 0,
            Feed::Ahead(k) => {
                let batch = k.min(10).min(n - sent);
                if batch > 0 && sent - done + batch <= k {
                    batch
                } else {
                    0
                }
            }
        }
    }
}

/// Send what `feed` says is due with `sent` of `n` sent and `done`
/// succeeded, in one batch of messages with `body`; how many.
pub(crate) async fn send_due(
    q: &dyn Queue,
    feed: Feed,
    n: usize,
    (sent, done): (usize, usize),
    body: &str,
    reply: bool,
) -> anyhow::Result<usize> {
    let due = feed.due(n, sent, done);
    if due > 0 {
        let batch: Vec<OutgoingMessage> = (0..due).map(|_| message(q, body, reply)).collect();
        for r in q.send_batch(&batch).await? {
            r.result?;
        }
    }
    Ok(due)
}

/// What one run measured.
pub(crate) struct Run {
    pub(crate) jobs_per_s: f64,
    /// Queue calls of every kind per job.
    pub(crate) calls_per_job: f64,
    pub(crate) exit_to_delete: Vec<(f64, u64)>,
    pub(crate) receive_to_start: Vec<(f64, u64)>,
}

fn total_calls(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("wasm_jobs_queue_calls_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A worker's fork server and the job it runs.
pub(crate) struct Bench {
    pub(crate) forks: Arc<ForkServers>,
    pub(crate) module: PathBuf,
}

impl Bench {
    /// Start the worker on `q`, holding `n` messages with `body`, until
    /// all `n` succeeded (timed from the start to the last success; the
    /// worker is then stopped where it is, as a long poll may be open).
    /// `feed` says whether they wait in the queue first or are sent as
    /// the worker goes.
    pub(crate) async fn run(
        &self,
        q: Arc<dyn Queue>,
        body: &str,
        n: usize,
        knobs: Knobs,
        feed: Feed,
    ) -> anyhow::Result<Run> {
        if let Feed::Backlog = feed {
            fill(q.as_ref(), body, n, knobs.reply).await?;
        }
        let stats = Arc::new(WorkerStats::default());
        let (_signals_tx, signals) = tokio::sync::mpsc::channel(1);
        let started = Instant::now();
        let worker = tokio::spawn(worker::run(
            config(&self.module, knobs, false),
            vec![BoundQueue {
                queue: Arc::clone(&q),
                tenant: Some("default".into()),
            }],
            Arc::clone(&self.forks),
            Arc::clone(&stats),
            signals,
        ));
        let deadline = started + Duration::from_secs(300);
        let mut sent = 0;
        let elapsed = loop {
            let done = stats.succeeded_count() as usize;
            if done >= n {
                break started.elapsed();
            }
            sent += send_due(q.as_ref(), feed, n, (sent, done), body, knobs.reply).await?;
            anyhow::ensure!(
                !worker.is_finished(),
                "the worker stopped: {:?}",
                worker.await
            );
            anyhow::ensure!(Instant::now() < deadline, "{done} of {n} succeeded");
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        let metrics = stats.render();
        worker.abort();
        let _ = worker.await;
        Ok(Run {
            jobs_per_s: n as f64 / elapsed.as_secs_f64(),
            calls_per_job: total_calls(&metrics) / n as f64,
            exit_to_delete: buckets(&metrics, "wasm_jobs_exit_to_settled_seconds"),
            receive_to_start: buckets(&metrics, "wasm_jobs_receive_to_start_seconds"),
        })
    }

    /// Hold `n` looping jobs in flight; call `measure` once they all run,
    /// then stop the worker with SIGTERM's exit handling.
    pub(crate) async fn in_flight<T>(
        &self,
        q: Arc<dyn Queue>,
        n: usize,
        measure: impl AsyncFnOnce(&WorkerStats) -> T,
    ) -> anyhow::Result<T> {
        fill(q.as_ref(), "l", n, false).await?;
        let stats = Arc::new(WorkerStats::default());
        let (tx, signals) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(worker::run(
            config(&self.module, Knobs::c(n), false),
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
