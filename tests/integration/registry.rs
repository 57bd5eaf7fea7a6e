//! The module registry: push, list, inspect and rm from the command line,
//! every bad input refused with nothing stored, version pinning, and
//! concurrent pushes and removes leaving a consistent registry.

use crate::common::{bin, hostile_path, modes_path, modes_wasm};
use std::path::Path;
use std::process::{Command, Output};
use wasm_jobs::artifact_cache::CompileSource;
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::executor::Executor;
use wasm_jobs::registry::{DirRegistry, ModuleVersion, Registry, RegistryError};

fn module(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("module")
        .args(args)
        .env("WASM_JOBS_HOME", home)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn push_list_inspect_and_rm() {
    let home = tempfile::tempdir().unwrap();
    let modes = modes_path();
    let out = module(
        home.path(),
        &[
            "push",
            modes.to_str().unwrap(),
            "--name",
            "modes",
            "--tenant",
            "acme",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = wasm_jobs::artifact_cache::content_digest(modes_wasm());
    assert!(
        stdout(&out).contains(&format!("modes@sha256:{digest}")),
        "{}",
        stdout(&out)
    );

    let list: serde_json::Value =
        serde_json::from_str(&stdout(&module(home.path(), &["list", "--json"]))).unwrap();
    assert_eq!(list[0]["name"], "modes");
    assert_eq!(list[0]["tenant"], "acme");
    assert_eq!(list[0]["digest"], digest.as_str());

    let inspect: serde_json::Value = serde_json::from_str(&stdout(&module(
        home.path(),
        &["inspect", "modes", "--tenant", "acme", "--json"],
    )))
    .unwrap();
    assert_eq!(inspect["exports"], serde_json::json!(["run", "on-exit"]));
    assert_eq!(
        inspect["imports"],
        serde_json::json!(["wasm-jobs:job/types@0.2.0"])
    );
    assert_eq!(inspect["compiled"], true, "push compiled it");
    assert_eq!(inspect["size"], modes_wasm().len());

    let other_tenant = module(home.path(), &["inspect", "modes"]);
    assert_eq!(
        other_tenant.status.code(),
        Some(1),
        "tenants see only their own modules"
    );
    assert!(
        module(home.path(), &["rm", "modes", "--tenant", "acme"])
            .status
            .success()
    );
    assert_eq!(
        stdout(&module(home.path(), &["list", "--json"])).trim(),
        "[]"
    );
    assert_eq!(
        module(home.path(), &["rm", "modes", "--tenant", "acme"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn bad_pushes_are_refused_and_store_nothing() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases = [
        (
            write("garbage.wasm", b"not wasm at all"),
            "not a WebAssembly file",
        ),
        (
            write("core.wasm", &wat::parse_str("(module)").unwrap()),
            "core WebAssembly module",
        ),
        (
            write("world.wasm", &wat::parse_str("(component)").unwrap()),
            "missing export `run`",
        ),
        (
            write("bytes.wasm", &modes_wasm()[..modes_wasm().len() / 2]),
            "invalid",
        ),
    ];
    for (file, expected) in &cases {
        let out = module(
            home.path(),
            &["push", file.to_str().unwrap(), "--name", "bad"],
        );
        assert_eq!(out.status.code(), Some(1), "{file:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{file:?}: {err}");
    }
    let modes = modes_path();
    let out = module(
        home.path(),
        &[
            "push",
            modes.to_str().unwrap(),
            "--name",
            "big",
            "--max-size",
            "1KiB",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("the limit is 1024"));
    let out = module(
        home.path(),
        &["push", modes.to_str().unwrap(), "--name", "Bad/Name"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("name `Bad/Name`"));
    assert_eq!(
        stdout(&module(home.path(), &["list", "--json"])).trim(),
        "[]"
    );
    let blobs = home.path().join("registry/blobs");
    assert!(
        !blobs.exists() || std::fs::read_dir(&blobs).unwrap().count() == 0,
        "nothing stored"
    );
}

/// `module push` for tenant `t`, through the registry's one push path.
fn push(
    reg: &DirRegistry,
    ex: &Executor,
    file: &Path,
    name: &str,
) -> Result<(ModuleVersion, CompileSource), RegistryError> {
    let registry = Registry::Dir(reg.clone());
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(registry.push(ex, file, name, "t", u64::MAX))
}

fn executor(dir: &Path) -> Executor {
    Executor::new(EngineSettings::default(), dir.join("compiled")).unwrap()
}

#[test]
fn a_name_follows_its_latest_push_and_a_digest_pins_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let reg = DirRegistry::new(dir.path().join("registry"));
    let ex = executor(dir.path());
    let (v1, _) = push(&reg, &ex, &modes_path(), "job").unwrap();
    let (v2, _) = push(&reg, &ex, &hostile_path(), "job").unwrap();
    assert_ne!(v1.digest, v2.digest);
    assert_eq!(reg.resolve("job", "t").unwrap().version.digest, v2.digest);
    let pinned = reg
        .resolve(&format!("job@sha256:{}", v1.digest), "t")
        .unwrap();
    assert_eq!(pinned.version.digest, v1.digest);
    assert_eq!(std::fs::read(&pinned.path).unwrap(), modes_wasm());
    let unknown = format!("job@sha256:{}", "0".repeat(64));
    assert!(matches!(
        reg.resolve(&unknown, "t"),
        Err(RegistryError::NoSuchVersion { .. })
    ));
    assert!(matches!(
        reg.resolve("job", "u"),
        Err(RegistryError::NotFound { .. })
    ));
}

/// Digests read from the registry's own files are checked before they become
/// paths, and blob bytes are checked against their digest when read.
#[test]
fn corrupt_registry_files_are_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let reg = DirRegistry::new(&root);
    let ex = executor(dir.path());
    let (v, _) = push(&reg, &ex, &modes_path(), "job").unwrap();
    let resolved = reg.resolve("job", "t").unwrap();
    assert_eq!(wasm_jobs::registry::read(&resolved).unwrap(), modes_wasm());

    let latest = root.join("modules/t/job/latest");
    for bad in ["../../../../etc/passwd", &"A".repeat(64), "abc"] {
        std::fs::write(&latest, bad).unwrap();
        let e = reg.resolve("job", "t").unwrap_err();
        assert!(matches!(e, RegistryError::Corrupt { .. }), "{bad}: {e}");
    }
    std::fs::write(&latest, &v.digest).unwrap();

    // A record that claims another digest than its file name.
    let record = root.join(format!("modules/t/job/{}.json", v.digest));
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, text.replace(&v.digest, &"0".repeat(64))).unwrap();
    let e = reg.resolve("job", "t").unwrap_err();
    assert!(matches!(e, RegistryError::Corrupt { .. }), "{e}");
    std::fs::write(&record, &text).unwrap();

    // A record of another tenant's module, copied in.
    std::fs::write(
        &record,
        text.replace("\"tenant\": \"t\"", "\"tenant\": \"root\""),
    )
    .unwrap();
    let e = reg.resolve("job", "t").unwrap_err();
    assert!(e.to_string().contains("of tenant \"root\""), "{e}");
    std::fs::write(&record, &text).unwrap();

    // `latest` naming a version with no record: the registry is broken (the
    // message is left for redelivery), unlike a pin to a version that never was.
    std::fs::write(&latest, "b".repeat(64)).unwrap();
    let e = reg.resolve("job", "t").unwrap_err();
    assert!(
        e.is_passing() && e.to_string().contains("has no record"),
        "{e}"
    );
    let pinned = reg.resolve(&format!("job@sha256:{}", "b".repeat(64)), "t");
    assert!(matches!(pinned, Err(RegistryError::NoSuchVersion { .. })));
    std::fs::write(&latest, &v.digest).unwrap();

    // A blob whose bytes changed; a push of the same file writes it again.
    let resolved = reg.resolve("job", "t").unwrap();
    std::fs::write(&resolved.path, b"\0asm changed").unwrap();
    let e = wasm_jobs::registry::read(&resolved).unwrap_err();
    assert!(e.to_string().contains("its bytes have digest"), "{e}");
    push(&reg, &ex, &modes_path(), "job").unwrap();
    assert_eq!(wasm_jobs::registry::read(&resolved).unwrap(), modes_wasm());

    // A registry that is not there (an unmounted share) is not the
    // message's fault either.
    std::fs::rename(&root, dir.path().join("away")).unwrap();
    let e = reg.resolve("job", "t").unwrap_err();
    assert!(e.is_passing(), "{e}");
}

#[test]
fn concurrent_pushes_and_removes_leave_the_registry_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let reg = DirRegistry::new(dir.path().join("registry"));
    // Compile once so the threads race on the registry, not the compiler.
    executor(dir.path()).load_bytes(modes_wasm()).unwrap();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let reg = reg.clone();
            let root = dir.path().to_owned();
            std::thread::spawn(move || {
                let ex = executor(&root);
                for round in 0..15 {
                    let name = format!("m{}", (i + round) % 3);
                    if round % 3 == 2 {
                        let _ = reg.remove(&name, "t");
                    } else {
                        push(&reg, &ex, &modes_path(), &name).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for m in reg.list(Some("t")).unwrap() {
        let r = reg.resolve(&m.name, "t").unwrap();
        assert_eq!(
            wasm_jobs::artifact_cache::content_digest(&std::fs::read(&r.path).unwrap()),
            m.digest
        );
    }
    let leftovers: Vec<_> = walk(&dir.path().join("registry"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
