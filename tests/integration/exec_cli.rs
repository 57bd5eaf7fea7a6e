//! The `wasm-jobs exec` command-line contract: exit codes per outcome, JSON
//! output, message options and errors for bad input.

use crate::common::*;
use std::process::{Command, Output, Stdio};

fn modes_component() -> std::path::PathBuf {
    modes_path()
}

fn exec(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("exec")
        .args(args)
        .env("WASM_JOBS_HOME", data_home())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn each_outcome_has_its_documented_exit_code() {
    let c = modes_component();
    let c = c.to_str().unwrap();
    for (body, code, extra) in [
        ("o", 0, &[][..]),
        ("r", 10, &[][..]),
        ("f", 11, &[][..]),
        ("u", 20, &[][..]),
        ("m", 21, &["--max-memory", "1MiB"][..]),
        ("s", 22, &[][..]),
        ("w", 23, &["--fuel", "1000"][..]),
        ("l", 24, &["--timeout", "0.2"][..]),
    ] {
        let mut args = vec![c, "--body", body];
        args.extend_from_slice(extra);
        let out = exec(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "body {body}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = exec(&[c, "--body", "E", "--on-exit", "15"]);
    assert_eq!(out.status.code(), Some(12));
}

#[test]
fn json_report_has_outcome_output_and_digest() {
    let c = modes_component();
    let out = exec(&[c.to_str().unwrap(), "--json", "--body", "r"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "retry");
    assert_eq!(v["delay_seconds"], 7);
    assert_eq!(v["digest"].as_str().unwrap().len(), 64);
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["stdout"]["dropped_bytes"], 0);
}

#[test]
fn body_file_and_attributes_reach_the_job() {
    let c = modes_component();
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), "e from a file").unwrap();
    let out = exec(&[
        c.to_str().unwrap(),
        "--json",
        "--body-file",
        body.path().to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reason"], "e from a file");
    let out = exec(&[
        c.to_str().unwrap(),
        "--json",
        "--body",
        "a",
        "--attr",
        "module=wc=2",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reason"], "wc=2");
}

#[test]
fn invalid_components_and_bad_flags_fail_clearly() {
    let out = exec(&["Cargo.toml"]);
    assert_eq!(out.status.code(), Some(30));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly file"));
    let out = exec(&["/nonexistent/job.wasm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/job.wasm"));
    let c = modes_component();
    for bad in [
        &["--attr", "novalue"][..],
        &["--on-exit", "SIGNOPE"][..],
        &["--max-memory", "lots"][..],
        &["--timeout", "-1"][..],
        &["--receive-count", "0"][..],
    ] {
        let mut args = vec![c.to_str().unwrap()];
        args.extend_from_slice(bad);
        let out = exec(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
