//! Executor benchmark (not a test): in-process instantiate + run of a trivial
//! job with a cached artifact, and cold compile times of the fixture and of
//! the example guests that are built (Python and JavaScript are the big ones).
//!
//! Run: `cargo bench --bench executor` (release build). Prints a Markdown
//! table; `scripts/bench` saves it under bench/.

// A benchmark is a measuring harness: a failed set-up may panic where it is.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};
use wasm_jobs::artifact_cache::CompileSource;
use wasm_jobs::contract::JobMessage;
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::executor::{Call, Executor};
use wasm_jobs::outcome::Outcome;
use wasm_jobs::sandbox::SandboxPolicy;

const WARMUP: usize = 200;
const CALLS: usize = 5_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let wat = std::fs::read(root.join("tests/fixtures/modes.wat"))?;
    let trivial = wasm_jobs::componentize::job_component_from_core(&wat)?;
    let cache = tempfile::tempdir()?;
    let executor = Executor::new(EngineSettings::default(), cache.path())?;

    println!("| measurement | value |");
    println!("|---|---|");

    // Cold compiles: each into the empty cache.
    let mut guests = vec![("trivial WAT job".to_owned(), trivial.clone())];
    for lang in ["c", "rust", "python", "js"] {
        let path = root
            .join("guest-examples")
            .join(lang)
            .join("build/job.wasm");
        if let Ok(bytes) = std::fs::read(&path) {
            guests.push((
                format!("{lang} example ({:.1} MB)", bytes.len() as f64 / 1e6),
                bytes,
            ));
        }
    }
    for (name, bytes) in &guests {
        let job = executor.load_bytes(bytes)?;
        match job.source {
            CompileSource::Compiled { took } => {
                println!(
                    "| cold compile, {name} | {:.1} ms |",
                    took.as_secs_f64() * 1e3
                )
            }
            CompileSource::Cached => anyhow::bail!("{name} was already cached"),
        }
        let started = Instant::now();
        let again = executor.load_bytes(bytes)?;
        assert_eq!(again.source, CompileSource::Cached);
        println!(
            "| cached load (validate + deserialize), {name} | {:.2} ms |",
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    // Instantiate + run of the trivial job, fresh Store every call.
    let job = executor.load_bytes(&trivial)?;
    let msg = JobMessage {
        id: "bench".into(),
        body: "o".into(),
        attributes: vec![("module".into(), "trivial".into())],
        receive_count: 1,
    };
    let policy = SandboxPolicy::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::with_capacity(CALLS);
    rt.block_on(async {
        for i in 0..WARMUP + CALLS {
            let started = Instant::now();
            let report = executor.call(&job, &msg, Call::Run, &policy).await?;
            let took = started.elapsed();
            anyhow::ensure!(report.outcome == Outcome::Ok, "{:?}", report.outcome);
            if i >= WARMUP {
                samples.push(took);
            }
        }
        Ok(())
    })?;
    samples.sort();
    println!(
        "| instantiate + run, trivial job, cached artifact: median | {:.1} µs |",
        micros(percentile(&samples, 0.5))
    );
    println!(
        "| instantiate + run, trivial job: p90 / p99 | {:.1} / {:.1} µs |",
        micros(percentile(&samples, 0.9)),
        micros(percentile(&samples, 0.99))
    );
    println!("| calls measured | {CALLS} (after {WARMUP} warm-up) |");
    Ok(())
}
