//! The sandbox seen from inside a hostile guest (`tests/fixtures/hostile.c`):
//! output caps, files, environment, blocking host calls, malloc bombs and
//! guest exits, each denial next to the grant that allows it.

use crate::common::*;
use std::time::{Duration, Instant};
use wasm_jobs::executor::{Call, CallReport};
use wasm_jobs::outcome::{Outcome, TrapKind};
use wasm_jobs::sandbox::{Preopen, SandboxPolicy};

fn hostile(body: &str, policy: &SandboxPolicy) -> CallReport {
    call_with(
        executor(),
        hostile_guest(),
        &message(body),
        Call::Run,
        policy,
    )
}

fn fatal_reason(report: &CallReport) -> &str {
    match &report.outcome {
        Outcome::Fatal { reason } => reason,
        other => panic!("expected fatal, got {other:?}"),
    }
}

#[test]
fn megabytes_of_output_are_capped_not_fatal() {
    let printed = (3 << 20) + "the last line\n".len();
    let report = hostile("spam", &policy());
    assert_eq!(report.outcome, Outcome::Ok);
    // Half the 1 MiB cap from the start, half from the end.
    let dropped = printed - (1 << 20);
    assert_eq!(report.stdout.dropped_bytes, dropped as u64);
    let marker = format!("[… {dropped} bytes cut here …]\n");
    assert_eq!(report.stdout.text.len(), (1 << 20) + marker.len());
    assert!(report.stdout.text.contains(&format!("x\n{marker}x")));
    assert!(report.stdout.text.ends_with("x\nthe last line\n"));
    let roomy = SandboxPolicy {
        max_output: 4 << 20,
        ..policy()
    };
    let report = hostile("spam", &roomy);
    assert_eq!(report.stdout.text.len(), printed);
    assert_eq!(report.stdout.dropped_bytes, 0);
}

#[test]
fn host_files_are_invisible_without_a_preopen() {
    let reason = fatal_reason(&hostile("read:/etc/passwd", &policy())).to_owned();
    assert!(reason.starts_with("open /etc/passwd:"), "{reason}");
    let reason = fatal_reason(&hostile("write:/tmp/escaped", &policy())).to_owned();
    assert!(reason.starts_with("write /tmp/escaped:"), "{reason}");
    assert!(!std::path::Path::new("/tmp/escaped").exists());
}

#[test]
fn a_preopen_grants_exactly_its_directory_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the host\n").unwrap();
    let read_only = SandboxPolicy {
        preopens: vec![Preopen {
            host_path: dir.path().to_owned(),
            guest_path: "/data".into(),
            read_only: true,
        }],
        ..policy()
    };
    let report = hostile("read:/data/hello.txt", &read_only);
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(report.stdout.text, "hello from the host\n");
    // No way out of the preopen, and no writes through a read-only one.
    fatal_reason(&hostile("read:/data/../../etc/passwd", &read_only));
    fatal_reason(&hostile("write:/data/new.txt", &read_only));
    assert!(!dir.path().join("new.txt").exists());

    let read_write = SandboxPolicy {
        preopens: vec![Preopen {
            read_only: false,
            ..read_only.preopens[0].clone()
        }],
        ..policy()
    };
    assert_eq!(
        hostile("write:/data/new.txt", &read_write).outcome,
        Outcome::Ok
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new.txt")).unwrap(),
        "written by a job\n"
    );
}

#[test]
fn the_environment_is_empty_unless_granted() {
    // SAFETY: this test binary sets no other variable concurrently, and the
    // value only needs to exist to prove the guest cannot see it.
    unsafe { std::env::set_var("WASM_JOBS_TEST_SECRET", "hunter2") };
    let report = hostile("env", &policy());
    assert_eq!(report.stdout.text, "env count: 0\n");
    let granted = SandboxPolicy {
        env: vec![("GREETING".into(), "hi".into())],
        ..policy()
    };
    let report = hostile("env", &granted);
    assert_eq!(report.stdout.text, "GREETING=hi\nenv count: 1\n");
}

#[test]
fn a_guest_blocked_in_a_host_call_still_times_out() {
    let short = SandboxPolicy {
        timeout: Duration::from_millis(500),
        ..policy()
    };
    let started = Instant::now();
    let report = hostile("sleep", &short);
    assert_eq!(
        report.outcome,
        Outcome::Timeout {
            limit: Duration::from_millis(500)
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_malloc_bomb_ends_as_out_of_memory() {
    let tight = SandboxPolicy {
        max_memory: 16 << 20,
        ..policy()
    };
    match hostile("malloc", &tight).outcome {
        Outcome::Trap {
            kind: TrapKind::OutOfMemory,
            detail,
        } => {
            assert!(detail.contains("16777216"), "{detail}")
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
}

#[test]
fn a_guest_exit_is_a_typed_trap() {
    // WASI 0.2's `exit` carries only ok/err, so C's exit(3) arrives as 1.
    let report = hostile("exit", &policy());
    assert!(
        matches!(
            report.outcome,
            Outcome::Trap {
                kind: TrapKind::GuestExit(1),
                ..
            }
        ),
        "{:?}",
        report.outcome
    );
}
