//! The command line: argument definitions and dispatch to each subcommand.
//! `main.rs` calls [`main`]; each subcommand lives in its own module and
//! returns the process exit code.

mod args;
mod exec;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "wasm-jobs",
    version,
    about = "Run WebAssembly component jobs from a message queue"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one call of a job component in-process and print its outcome.
    Exec(exec::ExecArgs),
    /// Write the WASI preview1 adapter that matches this host, for turning a
    /// wasip1 core module into a component (`wasm-tools component new --adapt`).
    WasiAdapter(WasiAdapterArgs),
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

/// Parse the command line, run the subcommand, and map its result to an exit
/// code (errors print one line and exit 1).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Exec(args) => {
            crate::logging::init("warn");
            exec::run(args)
        }
        Command::WasiAdapter(args) => write_wasi_adapter(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(crate::outcome::exit_code::HOST_ERROR)
        }
    }
}
