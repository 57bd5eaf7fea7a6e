//! Every outcome of a call, every trap kind, each limit as an obeyed/violated
//! pair, the component checks and the artifact cache, with the hand-written
//! WAT job in `tests/fixtures/modes.wat`.

use crate::common::*;
use std::time::{Duration, Instant};
use wasm_jobs::artifact_cache::CompileSource;
use wasm_jobs::contract::{ContractError, JobMessage};
use wasm_jobs::engine::EngineSettings;
use wasm_jobs::executor::{Call, Executor, LoadError};
use wasm_jobs::outcome::{Outcome, TrapKind};
use wasm_jobs::sandbox::SandboxPolicy;

fn trap_kind(outcome: &Outcome) -> &TrapKind {
    match outcome {
        Outcome::Trap { kind, .. } => kind,
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn ok_retry_and_fatal_come_back_typed() {
    assert_eq!(run_modes("o", &policy()).outcome, Outcome::Ok);
    assert_eq!(
        run_modes("r", &policy()).outcome,
        Outcome::Retry {
            reason: "try later".into(),
            delay_seconds: Some(7)
        }
    );
    assert_eq!(
        run_modes("R", &policy()).outcome,
        Outcome::Retry {
            reason: "try later".into(),
            delay_seconds: None
        }
    );
    assert_eq!(
        run_modes("f", &policy()).outcome,
        Outcome::Fatal {
            reason: "bad input".into()
        }
    );
}

#[test]
fn message_fields_reach_the_guest_intact() {
    let body = "e: grüße, 日本, emoji 🦀";
    assert_eq!(
        run_modes(body, &policy()).outcome,
        Outcome::Fatal {
            reason: body.into()
        }
    );
    let msg = JobMessage {
        id: "id-42".into(),
        ..message("i")
    };
    let report = call_with(executor(), modes_job(), &msg, Call::Run, &policy());
    assert_eq!(
        report.outcome,
        Outcome::Fatal {
            reason: "id-42".into()
        }
    );

    let msg = JobMessage {
        attributes: vec![
            ("module".into(), "word-count".into()),
            ("b".into(), "c".into()),
        ],
        ..message("a")
    };
    let report = call_with(executor(), modes_job(), &msg, Call::Run, &policy());
    assert_eq!(
        report.outcome,
        Outcome::Fatal {
            reason: "word-count".into()
        }
    );
    assert_eq!(
        run_modes("a", &policy()).outcome,
        Outcome::Fatal {
            reason: "no attributes".into()
        }
    );

    let msg = JobMessage {
        receive_count: 3,
        ..message("c")
    };
    let report = call_with(executor(), modes_job(), &msg, Call::Run, &policy());
    assert_eq!(
        report.outcome,
        Outcome::Retry {
            reason: "count".into(),
            delay_seconds: Some(3)
        }
    );
}

#[test]
fn on_exit_gets_the_signal_and_can_fail() {
    let on_exit = |body: &str, signal: u32| {
        call_with(
            executor(),
            modes_job(),
            &message(body),
            Call::OnExit { signal },
            &policy(),
        )
        .outcome
    };
    assert_eq!(on_exit("o", 15), Outcome::Ok);
    assert_eq!(on_exit("T", 15), Outcome::Ok);
    assert_eq!(
        on_exit("T", 2),
        Outcome::OnExitFailed {
            reason: "wrong signal".into()
        }
    );
    assert_eq!(
        on_exit("E", 15),
        Outcome::OnExitFailed {
            reason: "cleanup failed".into()
        }
    );
}

#[test]
fn traps_are_classified() {
    assert_eq!(
        trap_kind(&run_modes("u", &policy()).outcome),
        &TrapKind::Unreachable
    );
    assert_eq!(
        trap_kind(&run_modes("d", &policy()).outcome),
        &TrapKind::IntegerDivisionByZero
    );
}

#[test]
fn stack_limit_obeyed_and_violated() {
    assert_eq!(
        run_modes("k", &policy()).outcome,
        Outcome::Ok,
        "1000 frames fit"
    );
    assert_eq!(
        trap_kind(&run_modes("s", &policy()).outcome),
        &TrapKind::StackOverflow
    );
}

#[test]
fn memory_limit_obeyed_and_violated() {
    // "g" grows 96 pages (6 MiB) on top of the initial 2 pages.
    let roomy = SandboxPolicy {
        max_memory: 8 << 20,
        ..policy()
    };
    assert_eq!(run_modes("g", &roomy).outcome, Outcome::Ok);
    let tight = SandboxPolicy {
        max_memory: 4 << 20,
        ..policy()
    };
    let outcome = run_modes("g", &tight).outcome;
    assert_eq!(trap_kind(&outcome), &TrapKind::OutOfMemory);
    assert_eq!(outcome.exit_code(), 21);
    // An unbounded bomb stops at the default 256 MiB.
    let started = Instant::now();
    assert_eq!(
        trap_kind(&run_modes("m", &policy()).outcome),
        &TrapKind::OutOfMemory
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn wall_time_limit_obeyed_and_violated() {
    // "w" spins 20M iterations (tens of ms); "l" spins forever.
    let generous = SandboxPolicy {
        timeout: Duration::from_secs(10),
        ..policy()
    };
    assert_eq!(run_modes("w", &generous).outcome, Outcome::Ok);
    let short = SandboxPolicy {
        timeout: Duration::from_millis(300),
        ..policy()
    };
    let started = Instant::now();
    let report = run_modes("l", &short);
    assert_eq!(
        report.outcome,
        Outcome::Timeout {
            limit: Duration::from_millis(300)
        }
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "stopped early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "stopped late: {took:?}");
}

#[test]
fn fuel_limit_obeyed_and_violated() {
    let job = fuel_executor().load_bytes(modes_wasm()).unwrap();
    let run = |fuel: u64| {
        let p = SandboxPolicy {
            fuel: Some(fuel),
            ..policy()
        };
        call_with(fuel_executor(), &job, &message("w"), Call::Run, &p).outcome
    };
    assert_eq!(run(1_000_000_000), Outcome::Ok);
    assert_eq!(trap_kind(&run(100_000)), &TrapKind::OutOfFuel);
    // A fuel budget on an engine without metering is a host error, not a
    // silently unlimited job.
    let p = SandboxPolicy {
        fuel: Some(1),
        ..policy()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(executor().call(modes_job(), &message("o"), Call::Run, &p))
        .unwrap_err();
    assert!(err.to_string().contains("fuel"), "{err}");
}

fn load_err(bytes: &[u8]) -> LoadError {
    match executor().load_bytes(bytes) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    }
}

#[test]
fn garbage_and_core_modules_are_rejected_clearly() {
    let e = load_err(b"definitely not wasm");
    assert!(
        matches!(e, LoadError::Contract(ContractError::NotWasm)),
        "{e}"
    );
    let core = wat::parse_str("(module (func (export \"run\")))").unwrap();
    let e = load_err(&core);
    assert!(
        matches!(e, LoadError::Contract(ContractError::CoreModule)),
        "{e}"
    );
    assert!(e.to_string().contains("core WebAssembly module"), "{e}");
    let mut truncated = modes_wasm().to_vec();
    truncated.truncate(truncated.len() / 2);
    let e = load_err(&truncated);
    assert!(e.is_invalid_component(), "{e}");
}

#[test]
fn components_of_another_world_are_rejected_naming_the_problem() {
    let empty = wat::parse_str("(component)").unwrap();
    let e = load_err(&empty).to_string();
    assert!(e.contains("missing export `run`"), "{e}");
    assert!(e.contains("wasm-jobs:job/job"), "{e}");

    let wrong_signature = wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (export "run" (func $f))
            (export "on-exit" (func $f)))"#,
    )
    .unwrap();
    let e = load_err(&wrong_signature);
    assert!(
        matches!(e, LoadError::Contract(ContractError::WrongWorld { .. })),
        "{e}"
    );

    let foreign_import =
        wat::parse_str(r#"(component (import "acme:secrets/vault" (instance)))"#).unwrap();
    let e = load_err(&foreign_import).to_string();
    assert!(e.contains("acme:secrets/vault"), "{e}");
}

#[test]
fn artifacts_are_compiled_once_then_loaded_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let ex = Executor::new(EngineSettings::default(), dir.path()).unwrap();
    let first = ex.load_bytes(modes_wasm()).unwrap();
    assert!(matches!(first.source, CompileSource::Compiled { .. }));
    let second = ex.load_bytes(modes_wasm()).unwrap();
    assert_eq!(second.source, CompileSource::Cached);
    assert_eq!(first.digest, second.digest);

    // A damaged artifact is replaced, never trusted. (Replaced as a new
    // file: the old one is still mapped by `first` and `second`.)
    let path = ex.cache().artifact_path(ex.engine(), modes_wasm());
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    let third = ex.load_bytes(modes_wasm()).unwrap();
    assert!(matches!(third.source, CompileSource::Compiled { .. }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(ex.call(&third, &message("o"), Call::Run, &policy()))
        .unwrap();
    assert_eq!(report.outcome, Outcome::Ok);
}

#[test]
fn each_call_gets_a_fresh_instance() {
    // "g" grows memory by 96 pages; with an 8 MiB limit a second call on a
    // reused instance would run out. Fresh instances both succeed.
    let p = SandboxPolicy {
        max_memory: 8 << 20,
        ..policy()
    };
    assert_eq!(run_modes("g", &p).outcome, Outcome::Ok);
    assert_eq!(run_modes("g", &p).outcome, Outcome::Ok);
}
