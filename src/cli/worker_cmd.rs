//! `wasm-jobs worker`: start the tokio runtime and the fork server, open
//! every queue the worker serves with its tenant binding, run the worker,
//! and end the process as the worker's end asks (exit 0, exit 1, or killed
//! by the signal that stopped it).

use super::args::Location;
use super::args::{parse_bytes, parse_seconds, seconds_up_to};
use crate::logging::LogSettings;
use crate::queue::address::QueueAddress;
use crate::sandbox::{DEFAULT_MAX_MEMORY, SandboxPolicy};
use crate::worker::forkserver::EXIT_SIGNALS;
use crate::worker::{
    self, BoundQueue, ForkServerSettings, ForkServers, WorkerConfig, WorkerExit, WorkerStats,
};
use crate::{outcome::exit_code, paths};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `--prefetch`'s default: one receive batch.
pub(super) const DEFAULT_PREFETCH: usize = 10;

#[derive(Debug, clap::Args)]
pub(super) struct WorkerArgs {
    /// A queue this worker serves, bound to a tenant: `TENANT=QUEUE`, or a
    /// bare `QUEUE` for `--tenant`. An embedded queue name or an SQS queue
    /// URL. Repeat to serve several; every message's tenant is its queue's.
    #[arg(long, value_name = "[TENANT=]QUEUE")]
    pub(super) queue: Vec<String>,
    /// A queue shared by many tenants, whose messages must be signed with
    /// their tenant's key (policy `key_file`). Repeatable.
    #[arg(long, value_name = "QUEUE")]
    pub(super) shared_queue: Vec<String>,
    /// Run this component for every message; without it, each message's
    /// `module` attribute names a registry module (NAME or NAME@sha256:HEX).
    #[arg(long)]
    pub(super) module: Option<PathBuf>,
    #[command(flatten)]
    pub(super) registry: super::module_cmds::RegistryArgs,
    /// Tenant policies (TOML; see `wasm-jobs policy check`). Without one every
    /// tenant gets --timeout and --max-memory and nothing else.
    #[arg(long, value_name = "FILE")]
    pub(super) policy: Option<PathBuf>,
    /// The tenant a bare `--queue QUEUE` is bound to.
    #[arg(long, default_value = crate::registry::DEFAULT_TENANT)]
    pub(super) tenant: String,
    /// Jobs at once.
    #[arg(long, default_value_t = 1)]
    pub(super) concurrency: usize,
    /// Visibility timeout for received messages (seconds).
    #[arg(long, value_parser = parse_seconds, default_value = "60")]
    pub(super) visibility_timeout: Duration,
    /// Heartbeat interval (seconds); must be shorter than the visibility timeout.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    pub(super) heartbeat: Duration,
    /// Time `on-exit` gets per try when an exit signal arrives (seconds).
    #[arg(long, value_parser = parse_seconds, default_value = "30")]
    pub(super) exit_timeout: Duration,
    /// Long-poll seconds; defaults to the queue's ReceiveMessageWaitTimeSeconds.
    #[arg(long, value_parser = parse_wait)]
    pub(super) wait: Option<Duration>,
    /// Each job's wall-time limit (seconds).
    #[arg(long, value_parser = parse_seconds, default_value = "900")]
    pub(super) timeout: Duration,
    /// Each job's linear-memory limit.
    #[arg(long, value_parser = parse_bytes, default_value_t = DEFAULT_MAX_MEMORY)]
    pub(super) max_memory: u64,
    /// Exit 0 once the queue is empty and every job has ended.
    #[arg(long)]
    pub(super) drain: bool,
    /// Messages received beyond the free slots, to wait (heartbeated, and
    /// released at once on an exit signal) for one: a busy worker then
    /// receives a batch of up to 10 per call instead of one message per
    /// freed slot. 0 receives only for free slots.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PREFETCH)]
    pub(super) prefetch: usize,
    /// How long a finished job's delete may wait for others to share a
    /// DeleteMessageBatch call (seconds, at most 1; 0 batches only deletes
    /// already waiting). Default: 0 on the embedded queue, 0.02 on SQS.
    #[arg(long, value_name = "SECONDS", value_parser = parse_window)]
    pub(super) delete_window: Option<Duration>,
    /// At most this many children kept forked and set up (runtime, store,
    /// sandbox) for the module last used, one per free slot and at least
    /// one, so a call starts without a fork; 0 forks each call on demand.
    /// Default: --concurrency.
    #[arg(long, value_name = "N")]
    pub(super) warm_children: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464),
    /// and health checks at /healthz and /readyz.
    #[arg(long, value_name = "ADDR")]
    pub(super) metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the dashboard's pages (see `wasm-jobs dashboard`) on the
    /// metrics address, over this worker's queues, registry and jobs.
    #[arg(long, requires = "metrics_addr")]
    pub(super) ui: bool,
    /// The dashboard's access token (see `dashboard --token-file`): needed
    /// when the metrics address is not loopback.
    #[arg(long, value_name = "FILE", requires = "ui")]
    pub(super) ui_token_file: Option<std::path::PathBuf>,
    /// A compile helper is killed after this long (seconds); the message
    /// is left for redelivery.
    #[arg(long, value_parser = parse_seconds, default_value = "300")]
    pub(super) compile_timeout: Duration,
    /// A compile helper's address-space limit.
    #[arg(long, value_parser = parse_bytes, default_value = "4GiB")]
    pub(super) compile_memory: u64,
    /// The fork server's budget for loaded modules (their compiled code
    /// and what loading them allocated): past it the least recently used
    /// are unloaded, and loaded again from the artifact cache when a
    /// message needs them (0 keeps only the module in use).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value = "1GiB")]
    pub(super) loaded_modules_memory: u64,
    #[command(flatten)]
    pub(super) location: Location,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    seconds_up_to(s, Duration::from_secs(1), "the delete window is")
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    seconds_up_to(s, Duration::from_secs(20), "long polls last")
}

/// What the process does once the worker is done.
pub(super) enum Ending {
    /// Exit with this code.
    Code(u8),
    /// Re-raise this signal with its default disposition.
    Signal(i32),
}

/// A `--queue` value: `TENANT=QUEUE` or a bare `QUEUE` for `default_tenant`.
fn binding(value: &str, default_tenant: &str) -> (String, String) {
    match value.split_once('=') {
        Some((tenant, queue)) if crate::registry::valid_name(tenant) && !queue.is_empty() => {
            (tenant.to_owned(), queue.to_owned())
        }
        _ => (default_tenant.to_owned(), value.to_owned()),
    }
}

/// Every queue to serve: (its tenant, or `None` for shared; its address).
fn bindings(
    args: &WorkerArgs,
    policies: &crate::policy::Policies,
) -> anyhow::Result<Vec<(Option<String>, String)>> {
    let mut out: Vec<(Option<String>, String)> = Vec::new();
    let bound = args
        .queue
        .iter()
        .map(|q| binding(q, &args.tenant))
        .chain(policies.bound_queues());
    for (tenant, queue) in bound {
        match out.iter().find(|(_, q)| *q == queue) {
            Some((Some(t), _)) if *t == tenant => {}
            Some((other, _)) => anyhow::bail!(
                "queue `{queue}` is bound to tenant {tenant} and to {}",
                other.as_deref().unwrap_or("the shared queues")
            ),
            None => out.push((Some(tenant), queue)),
        }
    }
    for queue in &args.shared_queue {
        if out.iter().any(|(_, q)| q == queue) {
            anyhow::bail!("queue `{queue}` is both shared and bound to a tenant");
        }
        out.push((None, queue.clone()));
    }
    if out.is_empty() {
        anyhow::bail!(
            "no queue to serve: give --queue [TENANT=]QUEUE, --shared-queue QUEUE, or `queues` in the policy file"
        );
    }
    Ok(out)
}

/// Run a worker to its end. `before_run` runs inside the runtime first (the
/// demo sends its messages there); the fork server is already started then.
pub(super) fn run_worker<F, Fut>(
    args: &WorkerArgs,
    log: &LogSettings,
    stats: Arc<WorkerStats>,
    before_run: F,
) -> anyhow::Result<Ending>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let data_dir = paths::data_dir(args.location.data_dir.as_deref());
    for dir in [data_dir.clone(), paths::compiled_dir(&data_dir)] {
        paths::check_private(&dir)
            .map_err(|why| anyhow::anyhow!("refusing the data directory: {why}"))?;
    }
    let base = SandboxPolicy {
        timeout: args.timeout,
        max_memory: args.max_memory,
        ..SandboxPolicy::default()
    };
    let policies = match &args.policy {
        Some(path) => crate::policy::Policies::load(path)?,
        None => crate::policy::Policies::open(base),
    };
    for warning in policies.unset_env_warnings() {
        tracing::warn!("{warning}");
    }
    policies
        .check_dirs_apart(&args.registry.own_dirs(&data_dir)?)
        .map_err(|why| anyhow::anyhow!("refusing the policy: {why}"))?;
    let fork_server = ForkServerSettings {
        exe: std::env::current_exe()?,
        cache_dir: paths::compiled_dir(&data_dir),
        fuel_metering: policies.uses_fuel(),
        compile_timeout: args.compile_timeout,
        compile_memory: args.compile_memory,
        log: log.clone(),
        warm_children: args.warm_children.unwrap_or(args.concurrency),
        loaded_modules_memory: args.loaded_modules_memory,
    };
    let bindings = bindings(args, &policies)?;
    let config = WorkerConfig {
        module: args.module.clone(),
        registry: args.registry.open(&data_dir)?,
        oci: args.registry.oci(&data_dir),
        concurrency: args.concurrency,
        visibility_timeout: args.visibility_timeout,
        heartbeat: args.heartbeat,
        exit_timeout: args.exit_timeout,
        wait: args.wait,
        policies,
        drain: args.drain,
        prefetch: args.prefetch,
        delete_window: args.delete_window,
        reply_queues: worker::ReplyQueues {
            data_dir: data_dir.clone(),
            endpoint: args.location.endpoint_url.clone(),
        },
    };
    if let Err(why) = worker::check_config(&config) {
        eprintln!("error: {why}");
        return Ok(Ending::Code(exit_code::USAGE));
    }
    let ui = match args.metrics_addr.filter(|_| args.ui) {
        None => None,
        Some(addr) => {
            let token = super::dashboard_cmd::token_for(
                addr,
                args.ui_token_file.as_deref(),
                "--ui-token-file",
            )?;
            let workers = vec![crate::dashboard::WorkerSource::Local(Arc::clone(&stats))];
            Some(super::dashboard_cmd::dashboard(
                &args.location,
                &args.registry,
                bindings.clone(),
                workers,
                token,
            )?)
        }
    };
    let addresses = bindings
        .into_iter()
        .map(|(tenant, q)| Ok((tenant, QueueAddress::parse(&q)?, q)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = worker::runtime()?;
    let ending = runtime.block_on(async {
        let forks = ForkServers::start(fork_server, Arc::clone(&stats))
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the fork server: {e}"))?;
        let signals = exit_signals()?;
        // Dropped when this block ends: the endpoint stops with the worker.
        let (_stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(addr) = args.metrics_addr {
            use crate::worker::parent::metrics::{self, Endpoints, Limits};
            let listener = metrics::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
            let endpoints = Endpoints {
                stats: Arc::clone(&stats),
                ready: metrics::worker_readiness(Arc::clone(&forks), Arc::clone(&stats)),
                ui: ui.map(|d| crate::dashboard::start(Arc::new(d))),
            };
            tracing::info!(addr = %listener.local_addr()?, ui = endpoints.ui.is_some(), "serving /metrics, /healthz and /readyz");
            tokio::spawn(metrics::serve(listener, endpoints, Limits::default(), async {
                let _ = metrics_stopped.await;
            }));
        }
        before_run().await?;
        let mut queues = Vec::new();
        for (tenant, address, text) in &addresses {
            let endpoint = args.location.endpoint_url.as_deref();
            match crate::queue::open(address, &data_dir, endpoint).await {
                Ok(queue) => queues.push(BoundQueue {
                    queue,
                    tenant: tenant.clone(),
                }),
                Err(e) => {
                    eprintln!("error: cannot open queue {text}: {e}");
                    return Ok(Ending::Code(exit_code::HOST_ERROR));
                }
            }
        }
        let exit = worker::run(config, queues, forks, stats, signals).await;
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
pub(super) fn reraise(sig: i32) -> ! {
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

#[cfg(test)]
mod tests {
    use super::{binding, parse_window};
    use std::time::Duration;

    #[test]
    fn the_delete_window_is_zero_to_one_second() {
        assert_eq!(parse_window("0"), Ok(Duration::ZERO));
        assert_eq!(parse_window("0.02"), Ok(Duration::from_millis(20)));
        assert_eq!(
            parse_window("1.5").unwrap_err(),
            "the delete window is at most 1 s"
        );
        assert!(parse_window("-1").is_err());
    }

    #[test]
    fn a_queue_is_bound_to_its_named_tenant_or_the_default() {
        assert_eq!(
            binding("acme=jobs", "default"),
            ("acme".into(), "jobs".into())
        );
        assert_eq!(binding("jobs", "trial"), ("trial".into(), "jobs".into()));
        let url = "https://sqs.eu-west-1.amazonaws.com/123/jobs";
        assert_eq!(
            binding(&format!("acme={url}"), "default"),
            ("acme".into(), url.into())
        );
        assert_eq!(binding(url, "default"), ("default".into(), url.into()));
    }
}
