//! A job's published result (`wasm-jobs:job/output`, WIT 0.2.0): the
//! executor's report, the limit, `exec`'s printing, the worker's three ways
//! of starting a child (forked for the call, pre-forked, copied from a
//! template), and jobs built against WIT 0.1.0, which have no `output`.
//! Job: `tests/fixtures/publish.wat`.

use crate::common::*;
use crate::queue_backends::Backend;
use crate::worker_harness::{LogEvent, Worker, config, count_in, events_of, field};
use std::sync::OnceLock;
use std::time::Duration;
use wasm_jobs::executor::{Call, LoadedJob};
use wasm_jobs::outcome::Outcome;
use wasm_jobs::queue::OutgoingMessage;
use wasm_jobs::sandbox::SandboxPolicy;

fn publish_job() -> &'static LoadedJob {
    static J: OnceLock<LoadedJob> = OnceLock::new();
    J.get_or_init(|| executor().load_bytes(publish_wasm()).unwrap())
}

/// The modes fixture built against the 0.1.0 contract (no `output`).
fn modes_v010_wasm() -> Vec<u8> {
    let wit =
        std::fs::read_to_string(repo_root().join("tests/fixtures/wit-0.1.0/job.wit")).unwrap();
    let wat = std::fs::read(repo_root().join("tests/fixtures/modes.wat")).unwrap();
    let mut module = wat::parse_bytes(&wat).unwrap().into_owned();
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("job.wit", &wit).unwrap();
    let world = resolve.select_world(&[package], Some("job")).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

fn publish(body: &str, policy: &SandboxPolicy) -> (Outcome, Option<Vec<u8>>) {
    let r = call_with(executor(), publish_job(), &message(body), Call::Run, policy);
    (r.outcome, r.output.map(|p| p.0))
}

#[test]
fn the_last_result_set_is_the_one_reported() {
    assert!(publish_job().publishes_output);
    assert!(!modes_job().publishes_output);
    let p = policy();
    assert_eq!(publish("hello", &p), (Outcome::Ok, Some(b"hello".to_vec())));
    assert_eq!(publish("N", &p), (Outcome::Ok, Some(b"draft".to_vec())));
    assert_eq!(publish("B", &p), (Outcome::Ok, Some(vec![0xff, 0, 0xfe])));
    let (outcome, output) = publish("F!", &p);
    assert!(matches!(outcome, Outcome::Fatal { .. }), "{outcome:?}");
    assert_eq!(
        output.as_deref(),
        Some(&b"F!"[..]),
        "a failed job's result is kept"
    );
    assert_eq!(
        run_modes("o", &p).output,
        None,
        "a job without the import publishes nothing"
    );
}

#[test]
fn a_result_over_the_limit_is_refused_and_the_earlier_one_kept() {
    let p = SandboxPolicy {
        max_job_output: 8,
        ..policy()
    };
    let (outcome, output) = publish("0123456789", &p);
    let Outcome::Fatal { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("output of 10 bytes refused"), "{reason}");
    assert!(reason.contains("at most 8 bytes"), "{reason}");
    assert_eq!(output.as_deref(), Some(&b"draft"[..]));
}

#[test]
fn exec_prints_the_result() {
    let path = publish_path();
    let exec = |body: &str, json: bool| {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["exec", path.to_str().unwrap(), "--body", body]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.env("WASM_JOBS_HOME", data_home()).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = exec("done: 42", false);
    assert!(text.contains("output: done: 42\n"), "{text}");
    let report: serde_json::Value = serde_json::from_str(&exec("done: 42", true)).unwrap();
    assert_eq!(report["output"], "done: 42");
    let report: serde_json::Value = serde_json::from_str(&exec("B", true)).unwrap();
    assert_eq!(report["output_base64"], "/wD+");
    assert!(report.get("output").is_none(), "{report}");
}

#[test]
fn a_component_built_against_wit_0_1_0_still_runs() {
    let wasm = modes_v010_wasm();
    let job = executor().load_bytes(&wasm).unwrap();
    assert!(!job.publishes_output);
    let r = call_with(executor(), &job, &message("o"), Call::Run, &policy());
    assert_eq!(r.outcome, Outcome::Ok);
    let r = call_with(executor(), &job, &message("f"), Call::Run, &policy());
    assert_eq!(
        r.outcome,
        Outcome::Fatal {
            reason: "bad input".into()
        }
    );
}

/// Each result reaches the worker parent whichever way its child started:
/// forked for the call (the first, and all with `--warm-children 0`), or
/// handed the call while waiting (pre-forked, or a template's copy). A
/// 0.1.0 job runs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_the_worker_from_every_kind_of_child() {
    let path = publish_path();
    let old = write_fixture("modes-0.1.0.wasm", &modes_v010_wasm());
    for warm in ["2", "0"] {
        let b = Backend::embedded();
        let (q, addr) = b.create("results", &config(30)).await;
        // One result longer than an event chunk (32 KiB), in several.
        let big = "x".repeat(100_000);
        let bodies: Vec<String> = (0..12)
            .map(|i| format!("result {i}"))
            .chain([big.clone()])
            .collect();
        for body in &bodies {
            q.send(&OutgoingMessage::new(body.clone())).await.unwrap();
        }
        let args = [
            "--wait",
            "0",
            "--drain",
            "--concurrency",
            "2",
            "--warm-children",
            warm,
        ];
        let w = Worker::start(&b, &addr, &path, &args);
        let (status, log) = w.wait(Duration::from_secs(60));
        assert!(status.success(), "{log}");
        let ends: Vec<LogEvent> = events_of(&log)
            .into_iter()
            .filter(|e| crate::worker_harness::message(e) == "worker child ended")
            .collect();
        let mut sizes: Vec<String> = ends.iter().map(|e| field(e, "output_bytes")).collect();
        let mut want: Vec<String> = bodies.iter().map(|b| b.len().to_string()).collect();
        sizes.sort();
        want.sort();
        assert_eq!(sizes, want, "warm children {warm}: {log}");
        if warm == "2" {
            let warm_starts = count_in(&log, "worker child started", &[("warm", "true")]);
            assert!(warm_starts > 0, "no child was handed its call: {log}");
        }
        let (q, addr) = b.create("old", &config(30)).await;
        q.send(&OutgoingMessage::new("o")).await.unwrap();
        let w = Worker::start(&b, &addr, &old, &args);
        let (status, log) = w.wait(Duration::from_secs(30));
        assert!(status.success(), "{log}");
        assert_eq!(
            count_in(&log, "job succeeded; message deleted", &[]),
            1,
            "{log}"
        );
    }
}
