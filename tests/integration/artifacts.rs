//! Only verified native code runs: compiled artifacts carry a MAC under a
//! private per-machine key; an artifact that was changed, or swapped for
//! another module's, is logged, recompiled and replaced, never run.

use crate::common::{hostile_path, message, modes_wasm, policy};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;
use wasm_jobs::artifact_cache::CompileSource;
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::executor::{Call, Executor};
use wasm_jobs::outcome::Outcome;
use wasm_jobs::queue::OutgoingMessage;

fn run_o(ex: &Executor, job: &wasm_jobs::executor::LoadedJob) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(ex.call(job, &message("o"), Call::Run, &policy()))
        .unwrap()
        .outcome
}

#[test]
fn a_swapped_artifact_is_recompiled_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let ex = Executor::new(EngineSettings::default(), dir.path()).unwrap();
    let hostile = std::fs::read(hostile_path()).unwrap();
    ex.load_bytes(modes_wasm()).unwrap();
    ex.load_bytes(&hostile).unwrap();
    let key = dir.path().join("artifact.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);

    // The attack: one module's (validly tagged) artifact copied over
    // another's. The tag binds the entry's name, so it no longer verifies.
    let modes_artifact = ex.cache().artifact_path(ex.engine(), modes_wasm());
    let hostile_artifact = ex.cache().artifact_path(ex.engine(), &hostile);
    std::fs::copy(&hostile_artifact, &modes_artifact).unwrap();
    let job = ex.load_bytes(modes_wasm()).unwrap();
    assert!(matches!(job.source, CompileSource::Compiled { .. }));
    assert_eq!(run_o(&ex, &job), Outcome::Ok, "modes' own code ran");

    // One flipped byte in the code.
    let mut bytes = std::fs::read(&modes_artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&modes_artifact, &bytes).unwrap();
    let job = ex.load_bytes(modes_wasm()).unwrap();
    assert!(matches!(job.source, CompileSource::Compiled { .. }));

    // A symlink in its place is not followed.
    std::fs::remove_file(&modes_artifact).unwrap();
    std::os::unix::fs::symlink(&hostile_artifact, &modes_artifact).unwrap();
    let job = ex.load_bytes(modes_wasm()).unwrap();
    assert!(matches!(job.source, CompileSource::Compiled { .. }));
    assert!(!modes_artifact.is_symlink(), "replaced by a real entry");

    // Another machine's key (or a lost key) makes every entry recompile.
    std::fs::remove_file(&key).unwrap();
    let other = Executor::new(EngineSettings::default(), dir.path()).unwrap();
    let job = other.load_bytes(modes_wasm()).unwrap();
    assert!(matches!(job.source, CompileSource::Compiled { .. }));
    let job = other.load_bytes(modes_wasm()).unwrap();
    assert_eq!(job.source, CompileSource::Cached);
}

#[test]
fn an_artifact_key_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ex = Executor::new(EngineSettings::default(), dir.path()).unwrap();
    ex.load_bytes(modes_wasm()).unwrap();
    let key = dir.path().join("artifact.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fresh = Executor::new(EngineSettings::default(), dir.path()).unwrap();
    let e = fresh.load_bytes(modes_wasm()).err().unwrap().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    assert_eq!(std::fs::metadata(&key).unwrap().uid(), unsafe_geteuid());
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Through a worker: the fork server finds the tampered artifact, logs it,
/// has a helper recompile it, and the job runs its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recompiles_a_tampered_artifact_and_logs_it() {
    let b = Backend::embedded();
    let data = b.data_dir().unwrap();
    let module = hostile_path();
    // Compile into this data dir's cache, as `module push` or `exec` would.
    let out = b
        .cli()
        .args(["exec", module.to_str().unwrap(), "--body", "env"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ex = Executor::new(EngineSettings::default(), data.join("compiled")).unwrap();
    let artifact = ex
        .cache()
        .artifact_path(ex.engine(), &std::fs::read(&module).unwrap());
    let mut bytes = std::fs::read(&artifact).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x80;
    std::fs::write(&artifact, &bytes).unwrap();

    let (q, addr) = b.create("tampered", &config(30)).await;
    q.send(&OutgoingMessage::new("env")).await.unwrap();
    let w = Worker::start(&b, &addr, &module, &["--wait", "0", "--drain"]);
    let (exit, log) = w.wait(Duration::from_secs(60));
    assert!(exit.success(), "{log}");
    assert_eq!(
        count_in(
            &log,
            "cached artifact failed verification (changed, swapped or written under another key); recompiling",
            &[]
        ),
        1,
        "{log}"
    );
    assert_eq!(count_in(&log, "compile helper started", &[]), 1, "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        1,
        "{log}"
    );
}
