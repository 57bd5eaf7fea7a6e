//! `wasm-jobs worker`: start the fork server while the process is still
//! single-threaded, then the tokio runtime, then run the worker; end the
//! process as the worker's end asks (exit 0, exit 1, or killed by the signal
//! that stopped it).

use super::args::{parse_bytes, parse_seconds};
use super::queue_cmds::Location;
use crate::engine::EngineSettings;
use crate::queue::address::QueueAddress;
use crate::sandbox::{DEFAULT_MAX_MEMORY, SandboxPolicy};
use crate::worker::forks::ForkClient;
use crate::worker::forkserver::{self, EXIT_SIGNALS, ForkServerConfig};
use crate::worker::stats::WorkerStats;
use crate::worker::{self, WorkerConfig, WorkerExit};
use crate::{outcome::exit_code, paths};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The queue: an embedded queue name, or an SQS queue URL.
    #[arg(long)]
    pub queue: String,
    /// Run this component for every message; without it, each message's
    /// `module` attribute names a registry module (NAME or NAME@sha256:HEX).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Registry directory (default: `<data dir>/registry`).
    #[arg(long, env = "WASM_JOBS_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// Tenant policies (TOML; see `wasm-jobs policy check`). Without one every
    /// tenant gets --timeout and --max-memory and nothing else.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Tenant of messages that carry no `tenant` attribute.
    #[arg(long, default_value = crate::registry::DEFAULT_TENANT)]
    pub tenant: String,
    /// Jobs at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Visibility timeout for received messages (seconds).
    #[arg(long, value_parser = parse_seconds, default_value = "60")]
    pub visibility_timeout: Duration,
    /// Heartbeat interval (seconds); must be shorter than the visibility timeout.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    pub heartbeat: Duration,
    /// Time `on-exit` gets per try when an exit signal arrives (seconds).
    #[arg(long, value_parser = parse_seconds, default_value = "30")]
    pub exit_timeout: Duration,
    /// Long-poll seconds; defaults to the queue's ReceiveMessageWaitTimeSeconds.
    #[arg(long, value_parser = parse_wait)]
    pub wait: Option<Duration>,
    /// Each job's wall-time limit (seconds).
    #[arg(long, value_parser = parse_seconds, default_value = "900")]
    pub timeout: Duration,
    /// Each job's linear-memory limit.
    #[arg(long, value_parser = parse_bytes, default_value_t = DEFAULT_MAX_MEMORY)]
    pub max_memory: u64,
    /// Exit 0 once the queue is empty and every job has ended.
    #[arg(long)]
    pub drain: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub location: Location,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0" {
        Duration::ZERO
    } else {
        parse_seconds(s)?
    };
    if d > Duration::from_secs(20) {
        return Err("long polls last at most 20 seconds".into());
    }
    Ok(d)
}

/// What the process does once the worker is done.
pub enum Ending {
    Code(u8),
    /// Re-raise this signal with its default disposition.
    Signal(i32),
}

/// Run a worker to its end. `before_run` runs inside the runtime first (the
/// demo sends its messages there); the fork server is already started then.
pub fn run_worker<F, Fut>(
    args: &WorkerArgs,
    stats: Arc<WorkerStats>,
    before_run: F,
) -> anyhow::Result<Ending>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let data_dir = paths::data_dir(args.location.data_dir.as_deref());
    let base = SandboxPolicy {
        timeout: args.timeout,
        max_memory: args.max_memory,
        ..SandboxPolicy::default()
    };
    let policies = match &args.policy {
        Some(path) => crate::policy::Policies::load(path)?,
        None => crate::policy::Policies::open(base),
    };
    let engine = EngineSettings {
        fuel_metering: policies.uses_fuel(),
    };
    let config = WorkerConfig {
        module: args.module.clone(),
        registry: crate::registry::Registry::new(
            args.registry
                .clone()
                .unwrap_or_else(|| data_dir.join("registry")),
        ),
        default_tenant: args.tenant.clone(),
        concurrency: args.concurrency,
        visibility_timeout: args.visibility_timeout,
        heartbeat: args.heartbeat,
        exit_timeout: args.exit_timeout,
        wait: args.wait,
        policies,
        drain: args.drain,
    };
    if let Err(why) = worker::check_config(&config) {
        eprintln!("error: {why}");
        return Ok(Ending::Code(exit_code::USAGE));
    }
    let address = QueueAddress::parse(&args.queue)?;
    // Before any runtime or thread exists.
    let fork_server = forkserver::start(ForkServerConfig {
        engine,
        cache_dir: paths::compiled_dir(&data_dir),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ending = runtime.block_on(async {
        let forks = ForkClient::new(fork_server)?;
        let signals = exit_signals()?;
        if let Some(addr) = args.metrics_addr {
            crate::worker::metrics::serve(addr, Arc::clone(&stats))
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        }
        before_run().await?;
        let queue = match crate::queue::open(&address, &data_dir, args.location.endpoint_url.as_deref()).await {
            Ok(q) => q,
            Err(e) => {
                eprintln!("error: cannot open queue {}: {e}", args.queue);
                return Ok(Ending::Code(exit_code::HOST_ERROR));
            }
        };
        let exit = worker::run(config, queue, forks, stats, signals).await;
        Ok::<_, anyhow::Error>(match exit {
            WorkerExit::Drained => Ending::Code(exit_code::OK),
            WorkerExit::Signaled {
                exit_handling_failed: true,
                signal,
            } => {
                eprintln!("error: on-exit failed twice after signal {signal}; see the log for what happened to the message");
                Ending::Code(exit_code::HOST_ERROR)
            }
            WorkerExit::Signaled { signal, .. } => Ending::Signal(signal),
            WorkerExit::Failed(why) => {
                eprintln!("error: {why}");
                Ending::Code(exit_code::HOST_ERROR)
            }
        })
    });
    // Blocking threads (the fork-server watcher) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    ending
}

/// Forward the exit signals this process receives.
fn exit_signals() -> std::io::Result<mpsc::Receiver<i32>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = mpsc::channel(8);
    for sig in EXIT_SIGNALS {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig as i32).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

/// End this process as killed by `sig`, as if it had never been handled.
pub fn reraise(sig: i32) -> ! {
    // SAFETY: restoring the default disposition and raising a signal on
    // ourselves; no handler code runs.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}
