//! The example job in each guest language, built with its real toolchain by
//! its own build script and run end to end through `wasm-jobs exec`.

use crate::common::*;
use std::process::{Command, Output};

fn exec(component: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("exec")
        .arg(component)
        .args(args)
        .env("WASM_JOBS_HOME", data_home())
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e} ({}): {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check_language(lang: &str) {
    let wasm = example_guest(lang);

    let out = exec(&wasm, &["--body", r#"{"op":"count","text":"a b  c\nd"}"#]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{lang}: {stdout}");
    let first_line: serde_json::Value =
        serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first_line, serde_json::json!({"words": 4}), "{lang}");
    assert!(stdout.contains("outcome: ok"), "{lang}: {stdout}");
    // The same, published as the job's result (`wasm-jobs:job/output`).
    let out = exec(
        &wasm,
        &["--json", "--body", r#"{"op":"count","text":"a b"}"#],
    );
    let published: serde_json::Value =
        serde_json::from_str(json(&out)["output"].as_str().unwrap()).unwrap();
    assert_eq!(published, serde_json::json!({"words": 2}), "{lang}");
    // Over the policy's limit, `set` is refused and each example fails.
    let out = exec(
        &wasm,
        &[
            "--json",
            "--max-job-output",
            "4",
            "--body",
            r#"{"op":"count","text":"a"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(11), "{lang}");
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("at most 4 bytes"), "{lang}: {reason}");

    let out = exec(
        &wasm,
        &[
            "--json",
            "--body",
            r#"{"op":"retry","delay":30,"reason":"busy"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(10), "{lang}");
    let v = json(&out);
    assert_eq!(
        (v["outcome"].as_str(), v["delay_seconds"].as_u64()),
        (Some("retry"), Some(30)),
        "{lang}"
    );
    assert_eq!(v["reason"], "busy", "{lang}");

    let out = exec(
        &wasm,
        &[
            "--json",
            "--body",
            r#"{"op":"fail","reason":"no such customer"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(11), "{lang}");
    assert_eq!(json(&out)["reason"], "no such customer", "{lang}");

    let out = exec(&wasm, &["--json", "--body", "{not json"]);
    assert_eq!(out.status.code(), Some(11), "{lang}");
    let reason = json(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("malformed JSON"), "{lang}: {reason}");

    let out = exec(&wasm, &["--json", "--body", r#"{"op":"dance"}"#]);
    assert_eq!(out.status.code(), Some(11), "{lang}");

    let out = exec(
        &wasm,
        &["--json", "--on-exit", "SIGTERM", "--message-id", "m-77"],
    );
    assert_eq!(out.status.code(), Some(0), "{lang}");
    assert_eq!(
        json(&out)["stderr"]["text"],
        "on-exit: message m-77 stopped by signal 15\n",
        "{lang}"
    );
}

#[test]
fn c_example_runs_end_to_end() {
    check_language("c");
}

#[test]
fn rust_example_runs_end_to_end() {
    check_language("rust");
}

#[test]
fn python_example_runs_end_to_end() {
    check_language("python");
}

#[test]
fn javascript_example_runs_end_to_end() {
    check_language("js");
}
