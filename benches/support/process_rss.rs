//! The worker parent's resident memory, measured on the real thing: a
//! `wasm-jobs worker` process on an embedded queue in a data directory of
//! its own, idle and then with `n` jobs in flight (jobs that spin until
//! killed). Its RSS is read from `/proc` (its fork server and children are
//! other processes and not counted).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn vm_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kib / 1024.0)
}

fn cli(exe: &Path, home: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(exe)
        .args(args)
        .env("WASM_JOBS_HOME", home)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Count log lines holding `needle` until there are `n`, within 60 s.
fn wait_for_lines(log: &Path, needle: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut text = String::new();
        std::fs::File::open(log)?.read_to_string(&mut text)?;
        let have = text.lines().filter(|l| l.contains(needle)).count();
        if have >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{have} of {n} \"{needle}\" lines"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (idle RSS, RSS with `n` jobs in flight) of a worker parent, in MiB.
pub(crate) fn worker_parent_rss(exe: &Path, module: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let home = tempfile::tempdir()?;
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    cli(exe, home.path(), &["queue", "create", "rss"])?;
    let log = home.path().join("worker.log");
    let concurrency = n.to_string();
    let mut worker = Command::new(exe)
        .args(["worker", "--queue", "rss", "--module"])
        .arg(module)
        .args([
            "--concurrency",
            &concurrency,
            "--wait",
            "1",
            "--log-format",
            "json",
        ])
        .env("WASM_JOBS_HOME", home.path())
        // Each start is a line at debug (a success is one line at info).
        .env("RUST_LOG", "info,wasm_jobs::worker::parent::job=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let measured = (|| {
        wait_for_lines(&log, "\"worker started\"", 1)?;
        std::thread::sleep(Duration::from_millis(500));
        let idle = vm_rss_mib(worker.id())?;
        let batch = home.path().join("bodies");
        std::fs::write(&batch, "l\n".repeat(n))?;
        let batch = batch.display().to_string();
        cli(
            exe,
            home.path(),
            &["send", "--queue", "rss", "--batch", &batch],
        )?;
        wait_for_lines(&log, "\"worker child started\"", n)?;
        let loaded = vm_rss_mib(worker.id())?;
        anyhow::Ok((idle, loaded))
    })();
    // Its fork server and children die with it (PR_SET_PDEATHSIG).
    let _ = worker.kill();
    let _ = worker.wait();
    measured
}
