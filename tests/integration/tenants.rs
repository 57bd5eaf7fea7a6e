//! Tenant isolation, proved from inside real guests: each tenant's sandbox
//! comes from a policy file; the hostile C guest tries to read what it must
//! not, the Python guest tries to connect where it must not; and `policy
//! check`. Tenants through real workers (identity, caps, signatures) are in
//! `tenancy.rs`.

use crate::common::{
    bin, call_with, executor, fuel_executor, hostile_guest, hostile_path, message, repo_root,
};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use wasm_jobs::executor::{Call, CallReport, LoadedJob};
use wasm_jobs::outcome::{Outcome, TrapKind};
use wasm_jobs::policy::Policies;

fn policies(text: &str) -> Policies {
    Policies::parse(text, |name| {
        (name == "WJ_TENANT_A_TOKEN").then(|| "a-secret".into())
    })
    .unwrap()
}

fn run_as(p: &Policies, tenant: &str, job: &LoadedJob, body: &str) -> CallReport {
    let sandbox = &p.for_tenant(tenant).unwrap().sandbox;
    call_with(executor(), job, &message(body), Call::Run, sandbox)
}

/// As a worker whose policy file has a fuel budget: one engine that meters
/// fuel for every tenant (unlimited for tenants without a budget).
fn run_metered(p: &Policies, tenant: &str, job: &LoadedJob, body: &str) -> CallReport {
    let sandbox = &p.for_tenant(tenant).unwrap().sandbox;
    call_with(fuel_executor(), job, &message(body), Call::Run, sandbox)
}

fn denied(r: &CallReport) -> String {
    match &r.outcome {
        Outcome::Fatal { reason } => reason.clone(),
        other => panic!(
            "expected a refusal, got {other:?} with stdout {:?}",
            r.stdout.text
        ),
    }
}

#[test]
fn a_tenant_sees_only_its_own_directory_and_environment() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("mine.txt"), "tenant a data\n").unwrap();
    std::fs::write(b.join("secret-b.txt"), "tenant b secret\n").unwrap();
    std::os::unix::fs::symlink(b.join("secret-b.txt"), a.join("link-to-b")).unwrap();
    std::os::unix::fs::symlink("../b/secret-b.txt", a.join("relative-link-to-b")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", a.join("link-to-passwd")).unwrap();
    let p = policies(&format!(
        r#"
        [tenants.a]
        env = ["WJ_TENANT_A_TOKEN"]
        dirs = [{{ host = "{}", guest = "/data" }}]
        [tenants.b]
        dirs = [{{ host = "{}", guest = "/data", read_only = false }}]
        "#,
        a.display(),
        b.display()
    ));
    let job = hostile_guest();
    assert_eq!(
        run_as(&p, "a", job, "read:/data/mine.txt").stdout.text,
        "tenant a data\n"
    );
    for escape in [
        "read:/data/../b/secret-b.txt".to_owned(),
        format!("read:{}", b.join("secret-b.txt").display()),
        "read:/data/link-to-b".into(),
        "read:/data/relative-link-to-b".into(),
        "read:/data/link-to-passwd".into(),
        "read:/etc/passwd".into(),
        "read:/data/secret-b.txt".into(),
    ] {
        let why = denied(&run_as(&p, "a", job, &escape));
        assert!(why.starts_with("open "), "{escape}: {why}");
    }
    // Read-only for a: no writes; b may write in its own directory only.
    denied(&run_as(&p, "a", job, "write:/data/new.txt"));
    assert!(!a.join("new.txt").exists());
    assert_eq!(
        run_as(&p, "b", job, "write:/data/new.txt").outcome,
        Outcome::Ok
    );
    assert!(b.join("new.txt").exists());
    assert_eq!(
        run_as(&p, "b", job, "read:/data/secret-b.txt").stdout.text,
        "tenant b secret\n"
    );
    denied(&run_as(&p, "b", job, "read:/data/mine.txt"));

    assert_eq!(
        run_as(&p, "a", job, "env").stdout.text,
        "WJ_TENANT_A_TOKEN=a-secret\nenv count: 1\n"
    );
    assert_eq!(run_as(&p, "b", job, "env").stdout.text, "env count: 0\n");
}

#[test]
fn each_tenant_has_its_own_memory_time_and_cpu_limits() {
    let p = policies(
        r#"
        [tenants.small]
        max_memory = "16MiB"
        timeout_secs = 0.5
        [tenants.metered]
        fuel = 100000
        [tenants.large]
        max_memory = "128MiB"
        timeout_secs = 10
        "#,
    );
    // Policies with fuel run on an engine that meters it.
    let fuel_hostile = fuel_executor().load_file(&hostile_path()).unwrap();
    let job = &fuel_hostile;
    match run_metered(&p, "small", job, "malloc").outcome {
        Outcome::Trap {
            kind: TrapKind::OutOfMemory,
            detail,
        } => assert!(detail.contains("16777216"), "{detail}"),
        other => panic!("{other:?}"),
    }
    match run_metered(&p, "large", job, "malloc").outcome {
        Outcome::Trap {
            kind: TrapKind::OutOfMemory,
            detail,
        } => assert!(detail.contains("134217728"), "{detail}"),
        other => panic!("{other:?}"),
    }
    let started = std::time::Instant::now();
    // Sleeping burns no fuel: the wall-time limit ends it.
    let r = run_metered(&p, "small", job, "sleep-ms:3000");
    assert!(
        matches!(r.outcome, Outcome::Timeout { .. }),
        "{:?}",
        r.outcome
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        run_metered(&p, "large", job, "sleep-ms:600").outcome,
        Outcome::Ok
    );
    // The fuel budget is per tenant too: "w" spins 20M iterations.
    let modes = fuel_executor()
        .load_bytes(crate::common::modes_wasm())
        .unwrap();
    let r = run_metered(&p, "metered", &modes, "w");
    assert!(
        matches!(
            r.outcome,
            Outcome::Trap {
                kind: TrapKind::OutOfFuel,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    assert_eq!(run_metered(&p, "large", &modes, "w").outcome, Outcome::Ok);
}

/// The Python socket job, built once with componentize-py.
fn socket_guest() -> std::path::PathBuf {
    let script = repo_root().join("tests/fixtures/socket-job/build.sh");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("socket-job.wasm");
    crate::common::build_with_script("socket-job", &script, &[&out], out.clone())
}

#[test]
fn sockets_only_to_the_tenants_allowed_addresses() {
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, po) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
    );
    let p = policies(&format!(
        "[tenants.a]\nnetwork = [\"127.0.0.1:{pa}\"]\n[tenants.b]\n[tenants.dns]\nnetwork = [\"localhost:{pa}\"]\n"
    ));
    let job = executor().load_file(&socket_guest()).unwrap();
    let accept = std::thread::spawn(move || {
        let (mut conn, _) = allowed.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        got
    });
    let r = run_as(&p, "a", &job, &format!("127.0.0.1:{pa}"));
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.stderr.text);
    assert_eq!(accept.join().unwrap(), "hello");
    let why = denied(&run_as(&p, "a", &job, &format!("127.0.0.1:{po}")));
    assert!(why.contains("connect failed"), "{why}");
    let why = denied(&run_as(&p, "b", &job, &format!("127.0.0.1:{pa}")));
    assert!(why.contains("connect failed"), "{why}");
    // A granted name that resolves to loopback does not grant loopback: a
    // tenant controlling a name's DNS cannot reach internal addresses.
    let why = denied(&run_as(&p, "dns", &job, &format!("127.0.0.1:{pa}")));
    assert!(why.contains("connect failed"), "{why}");
    other.set_nonblocking(true).unwrap();
    assert!(
        other.accept().is_err(),
        "nothing reached the address a tenant may not use"
    );
}

#[test]
fn policy_check_prints_the_effective_policy_or_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[default]\nmax_memory = \"32MiB\"\n[tenants.acme]\ntimeout_secs = 5\nenv = [\"WJ_POLICY_CHECK\"]\ndirs = [{{ host = \"{}\", guest = \"/data\" }}]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["policy", "check"])
        .arg(&good)
        .env("WJ_POLICY_CHECK", "do-not-print-me")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tenants"]["acme"]["timeout_secs"], 5.0);
    assert_eq!(v["tenants"]["acme"]["max_memory_bytes"], 256 << 20);
    assert_eq!(
        v["tenants"]["acme"]["env"],
        serde_json::json!(["WJ_POLICY_CHECK"])
    );
    assert_eq!(v["tenants"]["acme"]["network"], "denied");
    assert_eq!(v["default"]["max_memory_bytes"], 32 << 20);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("do-not-print-me"),
        "values stay secret"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tenants.acme]\nnetwork = [\"no-port\"]\n").unwrap();
    let out = Command::new(bin())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("host:port"),
        "{err}"
    );
}

/// A tenant directory may not overlap wasm-jobs' own: not the data directory
/// (queued messages of every tenant, the artifact key), not the registry or
/// the artifact cache inside it, not a directory that contains them, and
/// not read-only either. `policy check` and the worker both refuse it.
#[test]
fn a_tenant_directory_overlapping_the_data_directory_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir_all(data.join("compiled")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let policy_file = elsewhere.path().join("policy.toml");
    let check = |host: &Path, read_only: bool| {
        std::fs::write(
            &policy_file,
            format!(
                "[tenants.acme]\ndirs = [{{ host = \"{}\", guest = \"/data\", read_only = {read_only} }}]\n",
                host.display()
            ),
        )
        .unwrap();
        Command::new(bin())
            .args(["policy", "check"])
            .arg(&policy_file)
            .env("WASM_JOBS_HOME", &data)
            .output()
            .unwrap()
    };
    for (host, read_only) in [
        (data.clone(), false),
        (data.join("compiled"), true),
        (home.path().to_owned(), true),
    ] {
        let out = check(&host, read_only);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", host.display());
        assert!(err.contains("overlaps the"), "{err}");
    }
    let out = check(elsewhere.path(), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = check(&data, false);
    assert!(!out.status.success());
    let worker = Command::new(bin())
        .args(["worker", "--queue", "q", "--policy"])
        .arg(&policy_file)
        .env("WASM_JOBS_HOME", &data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&worker.stderr);
    assert!(!worker.status.success(), "{err}");
    assert!(err.contains("overlaps the data directory"), "{err}");
}
