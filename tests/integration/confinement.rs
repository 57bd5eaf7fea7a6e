//! What a worker child holds, read from its `/proc` entry while it runs a
//! job: an empty environment (no AWS credentials, nothing of the worker's),
//! `no_new_privs`, no core dumps, bounded open files and file sizes.

use crate::common::hostile_path;
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::time::Duration;
use wasm_jobs::queue::{OutgoingMessage, QueueConfig};

fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut cols = line[name.len()..].split_whitespace();
    (cols.next().unwrap().into(), cols.next().unwrap().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_child_holds_no_environment_and_no_privileges() {
    let b = Backend::embedded();
    let (q, addr) = b
        .create(
            "confined",
            &QueueConfig {
                visibility_timeout: Duration::from_secs(30),
                ..QueueConfig::default()
            },
        )
        .await;
    q.send(&OutgoingMessage::new("sleep-ms:3000"))
        .await
        .unwrap();
    let module = hostile_path();
    let w = Worker::with_env(
        &b,
        &[
            "--queue",
            &addr,
            "--module",
            module.to_str().unwrap(),
            "--wait",
            "0",
            "--drain",
        ],
        &[("AWS_SECRET_ACCESS_KEY", "worker-secret-value")],
    );
    let pid = w.child_pid(Duration::from_secs(30));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(alive(pid), "read while the job ran");
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert_eq!(
        limit(&limits, "Max core file size"),
        ("0".into(), "0".into())
    );
    assert_eq!(
        limit(&limits, "Max open files"),
        ("256".into(), "256".into())
    );
    assert_eq!(
        limit(&limits, "Max file size"),
        ("1073741824".into(), "1073741824".into())
    );
    let (exit, log) = w.wait(Duration::from_secs(30));
    assert!(exit.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        1,
        "{log}"
    );
}
