//! Helpers shared by the integration tests: executors with a persistent
//! artifact cache, fixture components, guest builds, and one-call runners.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use wasm_jobs::contract::JobMessage;
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::executor::{Call, CallReport, Executor, LoadedJob};
use wasm_jobs::sandbox::SandboxPolicy;

pub(crate) fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A data dir kept between test runs (under the target dir), so compiled
/// artifacts of the big guests are reused.
pub(crate) fn data_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-jobs-home")
}

/// A `wasm-jobs` command on the data directory `data_dir`.
pub(crate) fn cli_in(data_dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("WASM_JOBS_HOME", data_dir);
    c
}

/// Run `c` to its end with no input.
pub(crate) fn run(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wasm-jobs")
}

pub(crate) fn executor() -> &'static Executor {
    static E: OnceLock<Executor> = OnceLock::new();
    E.get_or_init(|| {
        Executor::new(EngineSettings::default(), data_home().join("compiled")).unwrap()
    })
}

pub(crate) fn fuel_executor() -> &'static Executor {
    static E: OnceLock<Executor> = OnceLock::new();
    E.get_or_init(|| {
        Executor::new(
            EngineSettings {
                fuel_metering: true,
            },
            data_home().join("compiled"),
        )
        .unwrap()
    })
}

pub(crate) fn modes_wasm() -> &'static [u8] {
    static W: OnceLock<Vec<u8>> = OnceLock::new();
    W.get_or_init(|| {
        let wat = std::fs::read(repo_root().join("tests/fixtures/modes.wat")).unwrap();
        wasm_jobs::componentize::job_component_from_core(&wat).unwrap()
    })
}

pub(crate) fn modes_job() -> &'static LoadedJob {
    static J: OnceLock<LoadedJob> = OnceLock::new();
    J.get_or_init(|| executor().load_bytes(modes_wasm()).unwrap())
}

pub(crate) fn message(body: &str) -> JobMessage {
    JobMessage {
        id: "msg-1".into(),
        body: body.into(),
        attributes: vec![],
        receive_count: 1,
    }
}

pub(crate) fn policy() -> SandboxPolicy {
    SandboxPolicy {
        timeout: Duration::from_secs(20),
        ..SandboxPolicy::default()
    }
}

/// One call on a fresh single-threaded runtime, as a worker child makes it.
pub(crate) fn call_with(
    executor: &Executor,
    job: &LoadedJob,
    msg: &JobMessage,
    call: Call,
    policy: &SandboxPolicy,
) -> CallReport {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(executor.call(job, msg, call, policy))
        .unwrap()
}

pub(crate) fn run_modes(body: &str, policy: &SandboxPolicy) -> CallReport {
    call_with(executor(), modes_job(), &message(body), Call::Run, policy)
}

/// Build a guest with its script (once per test process) and return the
/// component's path. A missing toolchain fails the test: `.ci/run` installs
/// every toolchain.
pub(crate) fn build_with_script(key: &str, script: &Path, args: &[&Path], out: PathBuf) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|k| k == key) {
        let status = Command::new("bash")
            .arg(script)
            .args(args)
            .env("WASM_JOBS", bin())
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
        built.push(key.to_owned());
    }
    assert!(
        out.is_file(),
        "{} did not produce {}",
        script.display(),
        out.display()
    );
    out
}

pub(crate) fn example_guest(lang: &str) -> PathBuf {
    let dir = repo_root().join("guest-examples").join(lang);
    build_with_script(lang, &dir.join("build.sh"), &[], dir.join("build/job.wasm"))
}

/// The hostile C fixture as a component file.
pub(crate) fn hostile_path() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile.wasm");
    let src = repo_root().join("tests/fixtures/hostile.c");
    let script = repo_root().join("guest-examples/c/build.sh");
    build_with_script("hostile", &script, &[&out, &src], out.clone())
}

pub(crate) fn hostile_guest() -> &'static LoadedJob {
    static J: OnceLock<LoadedJob> = OnceLock::new();
    J.get_or_init(|| executor().load_file(&hostile_path()).unwrap())
}

/// `bytes` as a file under the target dir (written atomically).
pub(crate) fn write_fixture(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The WAT modes fixture as a component file.
pub(crate) fn modes_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| write_fixture("modes.wasm", modes_wasm()))
        .clone()
}

/// The WAT fixture that publishes results (`tests/fixtures/publish.wat`).
pub(crate) fn publish_wasm() -> &'static [u8] {
    static W: OnceLock<Vec<u8>> = OnceLock::new();
    W.get_or_init(|| {
        let wat = std::fs::read(repo_root().join("tests/fixtures/publish.wat")).unwrap();
        wasm_jobs::componentize::job_component_from_core(&wat).unwrap()
    })
}

/// [`publish_wasm`] as a component file.
pub(crate) fn publish_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| write_fixture("publish.wasm", publish_wasm()))
        .clone()
}

/// `wasm-jobs module push FILE --name NAME [--tenant T]` into the data dir `home`.
pub(crate) fn push_module(home: &Path, name: &str, tenant: Option<&str>, file: &Path) {
    let mut cmd = Command::new(bin());
    cmd.args(["module", "push", "--name", name]);
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.arg(file).env("WASM_JOBS_HOME", home).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free port on 127.0.0.1 (for a server a test starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something listens on 127.0.0.1:`port` (`what`, for the
/// failure message).
pub(crate) fn until_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
