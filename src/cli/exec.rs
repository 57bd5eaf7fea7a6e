//! `wasm-jobs exec`: run one call of a job component in this process and
//! report the outcome, for job authors trying a job before queueing it.
//! Everything happens in the CLI process: no fork server, no worker child.

use super::args::{parse_attr, parse_bytes, parse_seconds, parse_signal};
use crate::contract::JobMessage;
use crate::engine::EngineSettings;
use crate::executor::{Call, CallReport, Executor};
use crate::job_output::DEFAULT_MAX_JOB_OUTPUT;
use crate::outcome::exit_code;
use crate::paths;
use crate::policy::Policies;
use crate::sandbox::{DEFAULT_MAX_MEMORY, DEFAULT_MAX_OUTPUT, DEFAULT_TIMEOUT, SandboxPolicy};
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `wasm-jobs exec` options.
#[derive(Debug, clap::Args)]
pub(super) struct ExecArgs {
    /// The job component (.wasm) to run.
    component: PathBuf,
    /// Message body.
    #[arg(long, conflicts_with = "body_file", default_value = "")]
    body: String,
    /// Read the message body from this file (`-` for stdin).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// A message attribute, repeatable.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
    attrs: Vec<(String, String)>,
    /// The message id the job sees.
    #[arg(long, default_value = "exec-1")]
    message_id: String,
    /// The receive count the job sees (1 = first delivery).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    receive_count: u32,
    /// Call `on-exit(msg, SIGNAL)` instead of `run` (number or name, e.g. SIGTERM).
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal)]
    on_exit: Option<u32>,
    /// Wall-time limit in seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, default_value = "900")]
    timeout: Duration,
    /// Linear memory limit (bytes, or with a KiB/MiB/GiB suffix).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value_t = DEFAULT_MAX_MEMORY)]
    max_memory: u64,
    /// Bytes of stdout and of stderr kept; the rest is dropped.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value_t = DEFAULT_MAX_OUTPUT as u64)]
    max_output: u64,
    /// Largest result the job may publish (`wasm-jobs:job/output`).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value_t = DEFAULT_MAX_JOB_OUTPUT as u64)]
    max_job_output: u64,
    /// CPU budget in wasmtime fuel units (turns on fuel metering).
    #[arg(long)]
    fuel: Option<u64>,
    /// Run under this tenant's sandbox from a policy file (limits, files,
    /// environment, network and HTTP grants) instead of the limit flags.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["timeout", "max_memory", "max_output", "max_job_output", "fuel"])]
    policy: Option<PathBuf>,
    /// The tenant whose policy applies (with --policy).
    #[arg(long, default_value = "default", requires = "policy")]
    tenant: String,
    /// An environment variable the job sees, repeatable (added to what a
    /// --policy passes through; the job sees no other variable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Data directory (holds the compiled-artifact cache).
    #[arg(long, env = "WASM_JOBS_HOME")]
    data_dir: Option<PathBuf>,
}

/// `KEY=VALUE` for `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Load and call the component; the exit code is the outcome's.
pub(super) fn run(args: ExecArgs) -> anyhow::Result<u8> {
    debug_assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(900));
    let body = match &args.body_file {
        Some(p) if p.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("reading the body from stdin")?
        }
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the body from {}", p.display()))?,
        None => args.body.clone(),
    };
    let msg = JobMessage {
        id: args.message_id.clone(),
        body,
        attributes: args.attrs.clone(),
        receive_count: args.receive_count,
    };
    let policy = match &args.policy {
        Some(path) => {
            let policies = Policies::load(path)?;
            let Some(tenant) = policies.for_tenant(&args.tenant) else {
                anyhow::bail!(
                    "{} has no policy for tenant `{}` and no [default]",
                    path.display(),
                    args.tenant
                );
            };
            for var in &tenant.unset_env {
                if args.env.iter().any(|(k, _)| k == var) {
                    continue;
                }
                eprintln!(
                    "warning: the policy passes through {var}, which is not set here; the job will not see it"
                );
            }
            tenant.sandbox.clone()
        }
        None => SandboxPolicy {
            max_memory: args.max_memory,
            timeout: args.timeout,
            fuel: args.fuel,
            max_output: usize::try_from(args.max_output).unwrap_or(usize::MAX),
            max_job_output: usize::try_from(args.max_job_output).unwrap_or(usize::MAX),
            ..SandboxPolicy::default()
        },
    };
    let mut policy = policy;
    for (k, v) in &args.env {
        policy.env.retain(|(name, _)| name != k);
        policy.env.push((k.clone(), v.clone()));
    }
    let settings = EngineSettings {
        fuel_metering: policy.fuel.is_some(),
    };
    let data_dir = paths::data_dir(args.data_dir.as_deref());
    let executor = Executor::new(settings, paths::compiled_dir(&data_dir))?;

    let job = match executor.load_file(&args.component) {
        Ok(job) => job,
        Err(e) if e.is_invalid_component() => {
            let why = format!("{e}");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"outcome": "invalid_component", "error": why})
                );
            } else {
                eprintln!("invalid component {}: {why}", args.component.display());
            }
            return Ok(exit_code::INVALID_COMPONENT);
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(digest = %job.digest, source = ?job.source, "component loaded");

    let call = match args.on_exit {
        Some(signal) => Call::OnExit { signal },
        None => Call::Run,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(executor.call(&job, &msg, call, &policy))?;
    print_report(&report, args.json, &job)?;
    Ok(report.outcome.exit_code())
}

fn print_report(
    report: &CallReport,
    json: bool,
    job: &crate::executor::LoadedJob,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let mut value = serde_json::to_value(report)?;
        value["digest"] = serde_json::json!(job.digest);
        value["compile"] = serde_json::to_value(job.source)?;
        writeln!(out, "{value}")?;
        return Ok(());
    }
    out.write_all(report.stdout.text.as_bytes())?;
    if !report.stdout.text.is_empty() && !report.stdout.text.ends_with('\n') {
        writeln!(out)?;
    }
    let mut err = std::io::stderr().lock();
    err.write_all(report.stderr.text.as_bytes())?;
    for (name, captured) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        if captured.dropped_bytes > 0 {
            writeln!(
                err,
                "note: guest {name} over its cap; {} bytes cut from the middle",
                captured.dropped_bytes
            )?;
        }
    }
    match report.output.as_ref().map(|p| std::str::from_utf8(&p.0)) {
        Some(Ok(text)) => writeln!(out, "output: {text}")?,
        Some(Err(_)) => writeln!(
            out,
            "output: {} bytes, not UTF-8 (--json shows them in base64)",
            report.output.as_ref().map_or(0, |p| p.0.len())
        )?,
        None => {}
    }
    writeln!(
        out,
        "outcome: {} ({:.2} ms)",
        report.outcome,
        report.duration.as_secs_f64() * 1000.0
    )?;
    Ok(())
}
