//! The command line: argument definitions and dispatch to each subcommand.
//! `main.rs` calls [`main`]; each subcommand lives in its own module and
//! returns the process exit code.
//!
//! Runs in the CLI process, the one a user starts. For `worker` (and
//! `demo`) that process becomes the worker parent. The hidden
//! `__fork-server` subcommand is how the parent starts the fork server: it
//! hands over to `crate::worker::forkserver::main` at once.

mod args;
mod dashboard_cmd;
mod demo;
mod dlq_cmds;
mod exec;
mod module_cmds;
mod queue_cmds;
mod send_wait;
mod starter;
mod worker_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "wasm-jobs",
    version,
    about = "Run WebAssembly component jobs from a message queue"
)]
struct Cli {
    /// Log lines as JSON objects or pretty text (default: JSON when stdout is
    /// not a terminal, pretty otherwise). Logs go to stderr.
    #[arg(long, global = true, value_enum)]
    log_format: Option<crate::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the main job on the embedded queue: a few hundred messages through
    /// the bundled example job, with a live progress line and a summary.
    Demo(demo::DemoArgs),
    /// Run one call of a job component in-process and print its outcome.
    Exec(exec::ExecArgs),
    /// Start a job project: source, build script, README and the contract.
    New(starter::NewArgs),
    /// Print the job contract (WIT), or write it with --out (and its WASI
    /// packages with --wasi).
    Wit(starter::WitArgs),
    /// The module registry: push, list, inspect and remove job components.
    Module {
        #[command(subcommand)]
        command: module_cmds::ModuleCommand,
        #[command(flatten)]
        location: module_cmds::RegistryLocation,
    },
    /// Tenant policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage queues (embedded by name, SQS by URL).
    Queue {
        #[command(subcommand)]
        command: queue_cmds::QueueCommand,
        #[command(flatten)]
        location: args::Location,
    },
    /// Dead-letter queue operations.
    Dlq {
        #[command(subcommand)]
        command: dlq_cmds::DlqCommand,
        #[command(flatten)]
        location: args::Location,
    },
    /// Send a message (or a file of messages, one per line).
    Send {
        #[command(flatten)]
        args: queue_cmds::SendArgs,
        #[command(flatten)]
        location: args::Location,
    },
    /// Receive messages and print them as JSON lines (optionally deleting them).
    Receive {
        #[command(flatten)]
        args: queue_cmds::ReceiveArgs,
        #[command(flatten)]
        location: args::Location,
    },
    /// Run jobs from a queue: one fresh forked process per message.
    Worker(worker_cmd::WorkerArgs),
    /// Serve the operator's web pages: queues, dead letters (with redrive,
    /// delete and purge), modules.
    Dashboard(dashboard_cmd::DashboardArgs),
    /// Write the WASI preview1 adapter that matches this host, for turning a
    /// wasip1 core module into a component (`wasm-tools component new --adapt`).
    WasiAdapter(WasiAdapterArgs),
    /// The worker's fork server (started by `wasm-jobs worker`, not by hand).
    #[command(name = "__fork-server", hide = true)]
    ForkServer(ForkServerArgs),
}

#[derive(Debug, clap::Args)]
struct ForkServerArgs {
    /// The parent's log filter (the fork server has no environment).
    #[arg(long)]
    log_filter: String,
    /// Its settings, as JSON.
    config: String,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and print the effective policy of each tenant.
    Check {
        file: std::path::PathBuf,
        #[command(flatten)]
        location: module_cmds::RegistryLocation,
    },
}

fn policy_command(cmd: PolicyCommand) -> anyhow::Result<u8> {
    let PolicyCommand::Check { file, location } = cmd;
    let policies = crate::policy::Policies::load(&file)?;
    policies
        .check_dirs_apart(&location.own_dirs()?)
        .map_err(|why| anyhow::anyhow!("policy file {}: {why}", file.display()))?;
    println!("{}", serde_json::to_string_pretty(&policies.describe())?);
    for warning in policies.unset_env_warnings() {
        eprintln!("warning: {warning}");
    }
    if policies.default.is_none() {
        eprintln!("note: no [default] section: tenants not listed are rejected");
    }
    Ok(crate::outcome::exit_code::OK)
}

#[derive(Debug, clap::Args)]
struct WasiAdapterArgs {
    /// The reactor adapter (library-style modules, like jobs); the default.
    #[arg(long, conflicts_with = "command")]
    reactor: bool,
    /// The command adapter (modules with a `_start`).
    #[arg(long)]
    command: bool,
    /// Where to write it.
    #[arg(short, long)]
    output: std::path::PathBuf,
}

fn write_wasi_adapter(args: WasiAdapterArgs) -> anyhow::Result<u8> {
    use wasi_preview1_component_adapter_provider as adapters;
    let bytes = if args.command {
        adapters::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        adapters::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    std::fs::write(&args.output, bytes)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.output.display()))?;
    Ok(crate::outcome::exit_code::OK)
}

/// Run an async subcommand on a fresh multi-threaded runtime (queue
/// commands never fork, so a runtime with threads is fine here).
fn with_runtime<F, Fut>(f: F) -> anyhow::Result<u8>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f())
}

/// Parse the command line, run the subcommand, and map its result to an exit
/// code (errors print one line and exit 1).
pub fn main() -> ExitCode {
    // Everything wasm-jobs creates (queues, registry, artifacts, and files a
    // job writes into a granted directory) is private to this user: 0600
    // files, 0700 directories.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    if let Command::ForkServer(args) = &cli.command {
        crate::logging::install(&crate::logging::LogSettings {
            format: cli.log_format.unwrap_or(crate::logging::LogFormat::Json),
            filter: args.log_filter.clone(),
        });
        let code = crate::worker::forkserver::main(&args.config);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let default_level = match &cli.command {
        Command::Worker(_) | Command::Dashboard(_) => "info",
        Command::Demo(_) => "error",
        _ => "warn",
    };
    let log = crate::logging::init(default_level, cli.log_format);
    let result = match cli.command {
        Command::Exec(args) => exec::run(args),
        Command::New(args) => starter::new(args),
        Command::Wit(args) => starter::wit(args),
        Command::WasiAdapter(args) => write_wasi_adapter(args),
        Command::ForkServer(_) => Ok(crate::outcome::exit_code::USAGE),
        Command::Demo(args) => match demo::run(args, &log) {
            Ok(worker_cmd::Ending::Code(code)) => Ok(code),
            Ok(worker_cmd::Ending::Signal(sig)) => worker_cmd::reraise(sig),
            Err(e) => Err(e),
        },
        Command::Worker(args) => {
            let stats = std::sync::Arc::default();
            match worker_cmd::run_worker(&args, &log, stats, || async { Ok(()) }) {
                Ok(worker_cmd::Ending::Code(code)) => Ok(code),
                Ok(worker_cmd::Ending::Signal(sig)) => worker_cmd::reraise(sig),
                Err(e) => Err(e),
            }
        }
        Command::Dashboard(args) => with_runtime(|| args.execute()),
        Command::Module { command, location } => {
            with_runtime(|| module_cmds::run(&location, command))
        }
        Command::Policy { command } => policy_command(command),
        Command::Queue { command, location } => {
            with_runtime(|| queue_cmds::queue_command(&location, command))
        }
        Command::Dlq { command, location } => {
            with_runtime(|| dlq_cmds::dlq_command(&location, command))
        }
        Command::Send { args, location } => with_runtime(|| queue_cmds::send(&location, args)),
        Command::Receive { args, location } => {
            with_runtime(|| queue_cmds::receive(&location, args))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(crate::outcome::exit_code::HOST_ERROR)
        }
    }
}
