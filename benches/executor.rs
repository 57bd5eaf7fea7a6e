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
    let js = root.join("guest-examples/js/build/job.wasm");
    if let Ok(bytes) = std::fs::read(&js) {
        http_latency(&executor, &bytes, &rt)?;
    }
    Ok(())
}

/// A local HTTP/1.1 server answering every request with a short body.
fn local_server() -> anyhow::Result<u16> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    Ok(port)
}

/// What one outbound request adds to a JavaScript job's call, next to a
/// plain request from Rust to the same server.
fn http_latency(
    executor: &Executor,
    js: &[u8],
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    const N: usize = 200;
    let port = local_server()?;
    let url = format!("http://127.0.0.1:{port}/");
    let job = executor.load_bytes(js)?;
    let policy = SandboxPolicy {
        http: wasm_jobs::http::HttpPolicy {
            grants: vec![wasm_jobs::http::HttpGrant::parse(&url).map_err(anyhow::Error::msg)?],
            ..Default::default()
        },
        ..SandboxPolicy::default()
    };
    let message = |body: String| JobMessage {
        id: "bench".into(),
        body,
        attributes: vec![],
        receive_count: 1,
    };
    let fetch = message(serde_json::json!({"op": "fetch", "url": url}).to_string());
    let count = message(r#"{"op":"count","text":"ok"}"#.into());
    let (mut with, mut without, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..N + 20 {
            for (msg, samples) in [(&fetch, &mut with), (&count, &mut without)] {
                let started = Instant::now();
                let report = executor.call(&job, msg, Call::Run, &policy).await?;
                anyhow::ensure!(report.outcome == Outcome::Ok, "{:?}", report.outcome);
                if i >= 20 {
                    samples.push(started.elapsed());
                }
            }
        }
        Ok(())
    })?;
    for _ in 0..N {
        let started = Instant::now();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")?;
        s.read_to_end(&mut Vec::new())?;
        raw.push(started.elapsed());
    }
    for v in [&mut with, &mut without, &mut raw] {
        v.sort();
    }
    let (w, wo, r) = (
        percentile(&with, 0.5),
        percentile(&without, 0.5),
        percentile(&raw, 0.5),
    );
    println!(
        "| outbound HTTP, JavaScript example in process: call with one `fetch` to a local server / the same call without, median of {N} alternated | {:.2} / {:.2} ms: {:.2} ms added per request; a plain request from Rust to the same server {:.3} ms |",
        micros(w) / 1e3,
        micros(wo) / 1e3,
        (micros(w) - micros(wo)) / 1e3,
        micros(r) / 1e3
    );
    Ok(())
}
