//! The deployment files in `deploy/`: the systemd unit passes `systemd-analyze
//! verify` and stops the worker as the exit-signal protocol needs; the
//! Kubernetes Deployment and the KEDA ScaledObject parse and carry the grace
//! period, probes, resources and scaler the README describes; the Dockerfile
//! is multi-stage, runs as a non-root user and stops with SIGTERM. (Where a
//! Docker daemon runs, `docker build -f deploy/Dockerfile .` builds it; none
//! runs here, so the file is checked by reading it.)

use crate::common::{bin, repo_root};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

/// The value after `flag` in a worker command line.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[at + 1]
}

#[test]
fn the_systemd_unit_verifies_and_stops_the_worker_gracefully() {
    let unit = read("deploy/systemd/wasm-jobs.service");
    let values = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    for (key, expected) in [
        ("KillSignal", "SIGTERM"),
        // SIGTERM to the parent only: the fork server's children are its to stop.
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ReadWritePaths", "/var/lib/wasm-jobs"),
        ("Environment", "WASM_JOBS_HOME=/var/lib/wasm-jobs"),
    ] {
        assert_eq!(values(key), [expected], "{key}");
    }
    let exec: Vec<&str> = values("ExecStart")[0].split_whitespace().collect();
    let exit_timeout: u64 = flag_value(&exec, "--exit-timeout").parse().unwrap();
    let stop: u64 = values("TimeoutStopSec")[0].parse().unwrap();
    assert!(
        stop > 2 * exit_timeout,
        "TimeoutStopSec {stop} must outlast two on-exit tries of {exit_timeout} s"
    );
    assert!(
        values("MemoryDenyWriteExecute").is_empty(),
        "wasmtime maps code executable"
    );

    // systemd checks the file itself; ExecStart must exist, so point it at
    // this build's binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("wasm-jobs.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/wasm-jobs", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (scripts/install-test-deps installs systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

fn documents(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Kubernetes memory quantities used here: `NMi` or `NGi`.
fn mebibytes(q: &str) -> u64 {
    match (q.strip_suffix("Mi"), q.strip_suffix("Gi")) {
        (Some(m), _) => m.parse().unwrap(),
        (_, Some(g)) => g.parse::<u64>().unwrap() * 1024,
        _ => panic!("unexpected quantity {q}"),
    }
}

#[test]
fn the_kubernetes_deployment_gives_exit_handling_its_time() {
    let docs = documents("deploy/kubernetes/deployment.yaml");
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["kind"].as_str(), Some("Deployment"));
    assert_eq!(d["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "worker");
    let exit_timeout: i64 = flag_value(&args, "--exit-timeout").parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace > 2 * exit_timeout,
        "grace {grace} vs 2 x {exit_timeout}"
    );

    let port = flag_value(&args, "--metrics-addr")
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(port));
    assert_eq!(c["ports"][0]["name"].as_str(), Some("metrics"));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"].as_str(), Some("metrics"));
    }

    // Memory: every slot's guest memory, and room for the processes.
    let concurrency: u64 = flag_value(&args, "--concurrency").parse().unwrap();
    let per_job = mebibytes(flag_value(&args, "--max-memory").trim_end_matches("B"));
    for side in ["requests", "limits"] {
        let memory = mebibytes(c["resources"][side]["memory"].as_str().unwrap());
        assert!(
            memory >= concurrency * per_job + 128,
            "{side}: {memory} MiB"
        );
    }

    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    // The data dir is below the volume, so the worker makes it 0700 itself.
    let home = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("WASM_JOBS_HOME"))
        .unwrap();
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(
        home["value"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{mount}/"))
    );
}

#[test]
fn keda_scales_the_deployment_with_the_sqs_queue() {
    let docs = documents("deploy/kubernetes/keda-scaledobject.yaml");
    let deployment = &documents("deploy/kubernetes/deployment.yaml")[0];
    let auth = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("TriggerAuthentication"))
        .unwrap();
    let scaled = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ScaledObject"))
        .unwrap();
    assert_eq!(scaled["apiVersion"].as_str(), Some("keda.sh/v1alpha1"));
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        deployment["metadata"]["name"].as_str()
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("aws-sqs-queue"));
    assert_eq!(
        trigger["authenticationRef"]["name"].as_str(),
        auth["metadata"]["name"].as_str()
    );
    let meta = &trigger["metadata"];
    let queue_url = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("QUEUE_URL"))
        .unwrap()["value"]
        .as_str();
    assert_eq!(
        meta["queueURL"].as_str(),
        queue_url,
        "the queue the workers serve"
    );
    let length: u64 = meta["queueLength"].as_str().unwrap().parse().unwrap();
    assert!(length >= 1);
    assert!(meta["awsRegion"].as_str().is_some());
    assert!(scaled["spec"]["maxReplicaCount"].as_i64().unwrap() >= 1);
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_unprivileged() {
    let file = read("deploy/Dockerfile");
    let instructions: Vec<(String, String)> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (op, rest) = l.split_once(' ')?;
            op.chars()
                .all(|c| c.is_ascii_uppercase())
                .then(|| (op.to_owned(), rest.trim().to_owned()))
        })
        .collect();
    let of = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    let stages = of("FROM");
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(
        stages.last().unwrap().contains("slim"),
        "a small runtime base: {stages:?}"
    );
    // The last USER (in the last stage) is not root.
    let last_from = instructions.iter().rposition(|(o, _)| o == "FROM").unwrap();
    let user = instructions[last_from..]
        .iter()
        .rev()
        .find(|(o, _)| o == "USER")
        .map(|(_, r)| r.as_str())
        .expect("a USER in the runtime stage");
    assert!(!["root", "0", "0:0"].contains(&user), "{user}");
    assert_eq!(of("STOPSIGNAL"), ["SIGTERM"]);
    assert!(of("ENTRYPOINT")[0].contains("wasm-jobs"));
    assert!(of("COPY").iter().any(|c| c.starts_with("--from=")));
    assert!(repo_root().join(".dockerignore").is_file());
}
