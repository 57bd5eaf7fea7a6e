//! A job author's start: `wasm-jobs new LANG NAME` for each language,
//! built with its real toolchain in a folder outside this repository and
//! run with `exec`; `wasm-jobs wit` prints the contract, and its `--wasi`
//! output compiles a JavaScript job that reads an environment variable.

use crate::common::{bin, data_home, example_guest, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `wasm-jobs ARGS` in `dir`, with `wasm-jobs` first on PATH (the C and
/// Rust build scripts call it for the WASI adapter).
fn wasm_jobs(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("WASM_JOBS_HOME", data_home())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn path_with_bin() -> String {
    let bin_dir = Path::new(bin()).parent().unwrap();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Write a `lang` project with `new` in a fresh folder outside the
/// repository, build it with its own script, and return the folder.
fn new_and_build(lang: &str, prepare: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let outside = tempfile::tempdir().unwrap();
    assert!(!outside.path().starts_with(repo_root()));
    let name = format!("hello-{lang}");
    let out = wasm_jobs(outside.path(), &["new", lang, &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = outside.path().join(&name);
    for file in ["README.md", "build.sh", "wit/job.wit", ".gitignore"] {
        assert!(project.join(file).is_file(), "{lang}: no {file}");
    }
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(
        readme.starts_with(&format!("# {name}\n")) && !readme.contains("{{"),
        "{readme}"
    );
    prepare(&project);
    let status = Command::new(project.join("build.sh"))
        .current_dir(&project)
        .env("PATH", path_with_bin())
        .env("WASM_JOBS", bin())
        // The Rust route builds std for wasm: share what the examples built.
        .env(
            "CARGO_TARGET_DIR",
            dirs_home().join(".cache/wasm-jobs/guest-rust-target"),
        )
        .status()
        .unwrap();
    assert!(status.success(), "{lang}: build.sh failed: {status}");
    (outside, project)
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// `exec` the project's component with `args`: (exit code, JSON report).
fn exec(project: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["exec", "build/job.wasm", "--json"];
    all.extend_from_slice(args);
    let out = wasm_jobs(project, &all);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), report)
}

/// What every template does, whatever its language; returns the project
/// (and the folder holding it) for more checks.
fn template_runs(
    lang: &str,
    reads_env: bool,
    prepare: impl FnOnce(&Path),
) -> (tempfile::TempDir, PathBuf) {
    let (outside, project) = new_and_build(lang, prepare);
    let (code, report) = exec(&project, &["--body", "world", "--env", "GREETING=Hi"]);
    assert_eq!(code, 0, "{lang}: {report}");
    let greeting = if reads_env { "Hi" } else { "Hello" };
    assert_eq!(report["output"], format!("{greeting}, world!"), "{lang}");
    assert!(
        report["stdout"]["text"]
            .as_str()
            .unwrap()
            .contains("attempt 1"),
        "{lang}: {report}"
    );
    let (code, report) = exec(&project, &["--body", ""]);
    assert_eq!(
        (code, report["outcome"].as_str()),
        (11, Some("fatal")),
        "{lang}: {report}"
    );
    assert!(
        report["reason"].as_str().unwrap().contains("send a name"),
        "{report}"
    );
    let (code, report) = exec(&project, &["--body", "retry"]);
    assert_eq!(
        (code, report["outcome"].as_str()),
        (10, Some("retry")),
        "{lang}: {report}"
    );
    let (code, report) = exec(&project, &["--on-exit", "SIGTERM"]);
    assert_eq!(code, 0, "{lang}: {report}");
    (outside, project)
}

#[test]
fn the_python_template_builds_outside_the_repository_and_runs() {
    template_runs("python", true, |_| {});
}

#[test]
fn the_javascript_template_builds_outside_the_repository_and_runs() {
    // One line added before the build: a hand-made failure with a
    // misspelled field, which the template's check must refuse loudly.
    let typo = |project: &Path| {
        let job = project.join("job.js");
        let text = std::fs::read_to_string(&job).unwrap();
        let anchor = "  if (name === \"retry\")";
        assert!(text.contains(anchor));
        let line = "  if (name === \"typo\") throw { tag: \"retry\", val: { reason: \"x\", delay_seconds: 5 } };\n";
        std::fs::write(&job, text.replacen(anchor, &format!("{line}{anchor}"), 1)).unwrap();
    };
    let (_outside, project) = template_runs("js", false, typo);
    let (code, report) = exec(&project, &["--body", "typo"]);
    assert_eq!(
        (code, report["outcome"].as_str()),
        (20, Some("trap")),
        "{report}"
    );
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains("not a failure") && detail.contains("delay_seconds"),
        "{detail}"
    );
}

#[test]
fn the_c_template_builds_outside_the_repository_and_runs() {
    template_runs("c", true, |_| {});
}

#[test]
fn the_rust_template_builds_outside_the_repository_and_runs() {
    template_runs("rust", true, |_| {});
}

#[test]
fn new_refuses_a_bad_name_and_a_folder_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = wasm_jobs(dir.path(), &["new", "js", "Bad Name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a project name"));
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let out = wasm_jobs(dir.path(), &["new", "python", "taken"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists and is not empty"));
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        1,
        "nothing written"
    );
    let out = wasm_jobs(dir.path(), &["new", "c", "ok", "--dir", "taken/keep.txt"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken/keep.txt cannot be used"));
    // The next steps it prints are safe to paste into a shell.
    let out = wasm_jobs(dir.path(), &["new", "c", "ok", "--dir", "my dir; x"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("cd 'my dir; x' && ./build.sh"), "{said}");
}

/// `wit` prints the contract; `wit --out DIR --wasi` writes a world that a
/// JavaScript job reading an environment variable compiles against.
#[test]
fn wit_prints_the_contract_and_its_wasi_world_compiles_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = wasm_jobs(dir.path(), &["wit"]);
    let contract = std::fs::read_to_string(repo_root().join("wit/job.wit")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), contract);

    let out = wasm_jobs(dir.path(), &["wit", "--out", "wit", "--wasi"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.path().join("job.js"),
        r#"import { getEnvironment } from "wasi:cli/environment@0.2.12";
export function run(msg) {
  const env = Object.fromEntries(getEnvironment());
  console.log(`GREETING=${env.GREETING} for ${msg.body}`);
}
export function onExit(msg, signal) {}
"#,
    )
    .unwrap();
    // componentize-js as the JavaScript example installed it.
    let js = example_guest("js")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let status = Command::new(js.join("node_modules/.bin/componentize-js"))
        .current_dir(dir.path())
        .args([
            "--wit",
            "wit",
            "--world-name",
            "job-with-wasi",
            "-o",
            "env.wasm",
            "job.js",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "componentize-js: {status}");
    let out = wasm_jobs(
        dir.path(),
        &["exec", "env.wasm", "--body", "you", "--env", "GREETING=hi"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("GREETING=hi for you\n"),
        "{stdout}"
    );
}
