//! Fleet benchmark (not a test): the module registry in S3, on a moto
//! server. How long a push on one host takes to reach a worker on another
//! (a real `wasm-jobs worker` with its own data dir and `--registry-ttl 1`),
//! and what a module costs a host cold (download, verify, compile) against
//! warm (its blob cache and artifact cache), for the trivial job and the
//! Python example guest when it is built. References measured in the same
//! run: moto's round trip for a one-byte object, and sha256 of the blob in
//! memory.
//!
//! Run: `cargo bench --bench fleet` (or `scripts/bench` for the report).

// A benchmark is a measuring harness: a failed set-up may panic where it is.
#![allow(clippy::unwrap_used)]

#[path = "support/moto.rs"]
mod moto;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasm_jobs::artifact_cache::content_digest;
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::executor::Executor;
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, Queue, QueueConfig};
use wasm_jobs::registry::{CacheSettings, Location, Registry};

const BUCKET: &str = "fleet-bench";
const TTL_S: u64 = 1;

fn registry(home: &Path, ttl: Duration) -> Registry {
    Registry::open(
        Location::parse(&format!("s3://{BUCKET}/bench")).unwrap(),
        CacheSettings {
            dir: home.join("registry-cache"),
            max_bytes: 1 << 30,
            latest_ttl: ttl,
        },
    )
}

fn executor(home: &Path) -> Executor {
    Executor::new(EngineSettings::default(), home.join("compiled")).unwrap()
}

/// The component with a custom section appended: the same job, a new digest.
fn variant(wasm: &[u8], n: u8, dir: &Path) -> PathBuf {
    let mut bytes = wasm.to_vec();
    bytes.extend_from_slice(&[0, 3, 2, b'v', n]);
    let path = dir.join(format!("v{n}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Cold (empty caches) and warm costs of one module on a host.
async fn cold_and_warm(label: &str, file: &Path, pusher: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap();
    let name = label.to_lowercase();
    registry(pusher, Duration::ZERO)
        .push(&executor(pusher), file, &name, "default", u64::MAX)
        .await
        .unwrap();
    let hashing = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(content_digest(&bytes));
                ms(t.elapsed())
            })
            .collect(),
    );
    let host = tempfile::tempdir().unwrap();
    let reg = registry(host.path(), Duration::from_secs(3600));
    let t = Instant::now();
    let resolved = reg.resolve(&name, "default").await.unwrap();
    let download = t.elapsed();
    let t = Instant::now();
    executor(host.path()).load_file(&resolved.path).unwrap();
    let compile = t.elapsed();
    let mut warm = Vec::new();
    let mut after_ttl = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = reg.resolve(&name, "default").await.unwrap();
        executor(host.path()).load_file(&r.path).unwrap();
        warm.push(ms(t.elapsed()));
        // A new registry value: what a name costs once its TTL has passed
        // (two small GETs) with the blob cached.
        let t = Instant::now();
        registry(host.path(), Duration::ZERO)
            .resolve(&name, "default")
            .await
            .unwrap();
        after_ttl.push(ms(t.elapsed()));
    }
    vec![format!(
        "| {label} ({}) | {:.0} ms download + verify, {:.0} ms compile | {:.1} ms (blob and artifact cached) | {:.1} ms | sha256 of the blob: {hashing:.1} ms |",
        if bytes.len() < 1 << 20 {
            format!("{:.1} KiB", bytes.len() as f64 / 1024.0)
        } else {
            format!("{:.1} MiB", bytes.len() as f64 / f64::from(1 << 20))
        },
        ms(download),
        ms(compile),
        median(warm),
        median(after_ttl),
    )]
}

/// Digests of the jobs a worker log says succeeded, with when each was seen.
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

fn watch(child: &mut std::process::Child) -> Seen {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if e["message"] == "job succeeded; message deleted"
                && let Some(d) = e["span"]["digest"].as_str()
            {
                sink.lock().unwrap().push((d.to_owned(), Instant::now()));
            }
        }
    });
    seen
}

/// Push a new version on one host; time until a worker on another runs it.
async fn push_to_first_run(wasm: &[u8], pusher: &Path) -> Vec<String> {
    let files = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(host.path()).unwrap();
    store.create_queue("jobs", &QueueConfig::default()).unwrap();
    let q = store.queue("jobs").unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_wasm-jobs"))
        .args([
            "worker",
            "--queue",
            "jobs",
            "--wait",
            "0",
            "--log-format",
            "json",
        ])
        .args(["--registry", &format!("s3://{BUCKET}/bench")])
        .args(["--registry-ttl", &TTL_S.to_string()])
        .env("WASM_JOBS_HOME", host.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = watch(&mut worker);
    let message = || {
        let mut m = OutgoingMessage::new("o");
        m.attributes
            .insert("module".into(), AttributeValue::String("rollout".into()));
        m
    };
    let mut push_ms = Vec::new();
    let mut reach_ms = Vec::new();
    for n in 0..6u8 {
        let file = variant(wasm, n, files.path());
        let digest = content_digest(&std::fs::read(&file).unwrap());
        let t = Instant::now();
        registry(pusher, Duration::ZERO)
            .push(&executor(pusher), &file, "rollout", "default", u64::MAX)
            .await
            .unwrap();
        push_ms.push(ms(t.elapsed()));
        let pushed = Instant::now();
        let deadline = pushed + Duration::from_secs(60);
        let ran = loop {
            if let Some((_, at)) = seen.lock().unwrap().iter().find(|(d, _)| *d == digest) {
                break *at;
            }
            assert!(Instant::now() < deadline, "version {n} never ran");
            q.send(&message()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The first version also warms the worker up; it is not counted.
        if n > 0 {
            reach_ms.push(ms(ran.duration_since(pushed)));
        }
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let max = reach_ms.iter().copied().fold(0.0, f64::max);
    vec![format!(
        "| push on one host → first run on another (trivial job, `--registry-ttl {TTL_S}`, 5 pushes) | {:.0} ms median, {max:.0} ms max | push itself: {:.0} ms median | bound: TTL {} ms + one poll + download and compile |",
        median(reach_ms),
        median(push_ms),
        TTL_S * 1000,
    )]
}

fn main() -> anyhow::Result<()> {
    let Some((mut server, port)) = moto::start_moto() else {
        println!("| fleet | moto is not installed: skipped |");
        return Ok(());
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    for (k, v) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ] {
        // SAFETY: set before the runtime or any other thread starts.
        unsafe { std::env::set_var(k, v) };
    }
    let dir = tempfile::tempdir()?;
    let wat = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/modes.wat"
    ))?;
    let trivial = wasm_jobs::componentize::job_component_from_core(&wat)?;
    let trivial_path = dir.path().join("trivial.wasm");
    std::fs::write(&trivial_path, &trivial)?;
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-examples/python/build/job.wasm");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        s3.put_object()
            .bucket(BUCKET)
            .key("one-byte")
            .body(vec![0].into())
            .send()
            .await
            .unwrap();
        let mut get_ms = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let o = s3.get_object().bucket(BUCKET).key("one-byte").send().await.unwrap();
            o.body.collect().await.unwrap();
            get_ms.push(ms(t.elapsed()));
        }
        let pusher = dir.path().join("pusher");
        let mut rows = vec![
            "| Fleet (S3 on moto) | cold host | warm host | warm host, name past its TTL | reference |".to_owned(),
            "|---|---|---|---|---|".to_owned(),
        ];
        rows.extend(cold_and_warm("Trivial", &trivial_path, &pusher).await);
        if python.exists() {
            rows.extend(cold_and_warm("Python", &python, &pusher).await);
        }
        rows.push(format!(
            "| moto GET of a one-byte object | | | | {:.1} ms |",
            median(get_ms)
        ));
        rows.push(String::new());
        rows.push("| Rollout | time | | |".to_owned());
        rows.push("|---|---|---|---|".to_owned());
        rows.extend(push_to_first_run(&trivial, &pusher).await);
        rows
    });
    for row in rows {
        println!("{row}");
    }
    let _ = server.kill();
    Ok(())
}
