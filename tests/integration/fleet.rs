//! A fleet on one machine: the module registry's commands on every backend
//! (one table: a directory, S3 on moto and a local `docker-registry`), and two worker "hosts" (separate
//! data dirs) sharing one SQS queue and one S3 registry: a module pushed from
//! a third data dir runs on both, a re-push reaches both within the TTL, and
//! a blob corrupted in the bucket is refused with a clear reason and left for
//! redelivery, not dead-lettered.

use crate::common::{modes_path, modes_wasm};
use crate::oci::OciRegistry;
use crate::queue_backends::{Backend, MOTO_REGION, moto_endpoint, unique};
use crate::worker_harness::{
    LogEvent, Worker, config, counts, dead_letter_reasons, field, get, message,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use wasm_jobs::artifact_cache::content_digest;
use wasm_jobs::queue::{AttributeValue, OutgoingMessage, Queue};

/// A bucket on the tests' moto server.
struct Bucket {
    name: String,
    client: aws_sdk_s3::Client,
}

impl Bucket {
    async fn new() -> Bucket {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new(MOTO_REGION))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .endpoint_url(moto_endpoint())
            .force_path_style(true)
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let name = unique("modules");
        client.create_bucket().bucket(&name).send().await.unwrap();
        Bucket { name, client }
    }

    /// The `--registry` of this bucket, under a prefix.
    fn url(&self) -> String {
        format!("s3://{}/fleet", self.name)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(format!("fleet/{key}"))
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }
}

/// A registry backend for the command table.
enum Backend3 {
    Dir(tempfile::TempDir),
    S3(Bucket),
    Oci(OciRegistry),
}

impl Backend3 {
    fn registry(&self) -> String {
        match self {
            Backend3::Dir(d) => d.path().join("registry").display().to_string(),
            Backend3::S3(b) => b.url(),
            Backend3::Oci(r) => r.location(),
        }
    }
}

/// `wasm-jobs ARGS` with data dir `home`, reaching moto for S3 and SQS.
pub(crate) fn cli(home: &Path) -> Command {
    let mut cmd = Command::new(crate::common::bin());
    cmd.env("WASM_JOBS_HOME", home)
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", MOTO_REGION)
        .env_remove("AWS_PROFILE")
        .env_remove("WASM_JOBS_REGISTRY");
    cmd
}

fn module(home: &Path, registry: &str, args: &[&str]) -> Output {
    cli(home)
        .arg("module")
        .args(args)
        .args(["--registry", registry])
        .output()
        .unwrap()
}

pub(crate) fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json(o: Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap()
}

/// `modes.wasm` with a custom section appended: the same job under another
/// digest (a new "version" of it).
pub(crate) fn variant(tag: &str, dir: &Path) -> (PathBuf, String) {
    let name = format!("v-{tag}");
    let mut bytes = modes_wasm().to_vec();
    let payload = tag.as_bytes();
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(payload);
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, &bytes).unwrap();
    (path, content_digest(&bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_commands_work_the_same_on_every_backend() {
    let files = tempfile::tempdir().unwrap();
    let (v2, d2) = variant("two", files.path());
    let d1 = content_digest(modes_wasm());
    for backend in [
        Backend3::Dir(tempfile::tempdir().unwrap()),
        Backend3::S3(Bucket::new().await),
        Backend3::Oci(OciRegistry::start()),
    ] {
        let home = tempfile::tempdir().unwrap();
        let reg = backend.registry();
        let m = |args: &[&str]| module(home.path(), &reg, args);
        // An OCI registry collects its own blobs (module gc says so).
        let collects = !matches!(backend, Backend3::Oci(_));
        let modes = modes_path();
        let pushed = ok(m(&[
            "push",
            modes.to_str().unwrap(),
            "--name",
            "job",
            "--tenant",
            "acme",
        ]));
        assert!(
            pushed.contains(&format!("job@sha256:{d1}")),
            "{reg}: {pushed}"
        );
        let list = json(m(&["list", "--json"]));
        assert_eq!(list.as_array().unwrap().len(), 1, "{reg}: {list}");
        assert_eq!(list[0]["digest"], d1.as_str(), "{reg}");
        assert_eq!(list[0]["tenant"], "acme", "{reg}");
        assert_eq!(
            json(m(&["list", "--tenant", "other", "--json"])),
            serde_json::json!([])
        );

        ok(m(&[
            "push",
            v2.to_str().unwrap(),
            "--name",
            "job",
            "--tenant",
            "acme",
        ]));
        if let Backend3::Oci(r) = &backend {
            // A repository per module, a tag per version, and `latest`.
            let tags = r.tags("fleet/acme/job").await;
            let mut want = vec![format!("sha256-{d1}"), format!("sha256-{d2}")];
            want.sort();
            want.insert(0, "latest".to_owned());
            assert_eq!(tags, want, "{reg}");
            let bad = m(&["push", v2.to_str().unwrap(), "--name", "job-"]);
            assert_eq!(
                bad.status.code(),
                Some(1),
                "{reg}: not an OCI repository name"
            );
            assert!(
                String::from_utf8_lossy(&bad.stderr).contains("cannot be kept in oci://"),
                "{}",
                String::from_utf8_lossy(&bad.stderr)
            );
            // What else a shared registry holds is left out of the list.
            r.push_foreign("fleet/library/busybox:latest").await;
            let list = json(m(&["list", "--json"]));
            assert_eq!(list.as_array().unwrap().len(), 1, "{reg}: {list}");
        }
        let inspect = json(m(&["inspect", "job", "--tenant", "acme", "--json"]));
        assert_eq!(
            inspect["digest"],
            d2.as_str(),
            "{reg}: a name follows its latest push"
        );
        assert_eq!(inspect["exports"], serde_json::json!(["run", "on-exit"]));
        assert_eq!(inspect["compiled"], true, "{reg}: push compiled it");
        let pinned = format!("job@sha256:{d1}");
        let inspect = json(m(&["inspect", &pinned, "--tenant", "acme", "--json"]));
        assert_eq!(
            inspect["digest"],
            d1.as_str(),
            "{reg}: a digest pins a version"
        );
        let stranger = m(&["inspect", "job"]);
        assert_eq!(
            stranger.status.code(),
            Some(1),
            "{reg}: tenants see only their own"
        );
        assert!(
            String::from_utf8_lossy(&stranger.stderr)
                .contains("no module `job` for tenant `default`"),
            "{reg}"
        );

        if collects {
            let gc = json(m(&["gc", "--min-age", "0", "--json"]));
            assert_eq!(
                gc["unreferenced"],
                serde_json::json!([]),
                "{reg}: both versions are referenced"
            );
        }

        ok(m(&["rm", "job", "--tenant", "acme"]));
        assert_eq!(json(m(&["list", "--json"])), serde_json::json!([]), "{reg}");
        assert_eq!(
            m(&["rm", "job", "--tenant", "acme"]).status.code(),
            Some(1),
            "{reg}"
        );

        if !collects {
            let gc = m(&["gc", "--min-age", "0"]);
            assert_eq!(gc.status.code(), Some(1), "{reg}");
            assert!(
                String::from_utf8_lossy(&gc.stderr).contains("its own garbage collector"),
                "{reg}: {}",
                String::from_utf8_lossy(&gc.stderr)
            );
            let gone = m(&["inspect", &pinned, "--tenant", "acme"]);
            assert_eq!(gone.status.code(), Some(1), "{reg}: every version removed");
            continue;
        }
        let young = json(m(&["gc", "--json"]));
        assert_eq!(young["unreferenced"], serde_json::json!([]), "{reg}");
        assert_eq!(
            young["too_young"].as_array().unwrap().len(),
            2,
            "{reg}: {young}"
        );
        let mut both = [d1.clone(), d2.clone()];
        both.sort();
        let dry = json(m(&["gc", "--min-age", "0", "--json"]));
        assert_eq!(dry["unreferenced"], serde_json::json!(both), "{reg}");
        assert_eq!(dry["removed"], false, "{reg}: a dry run by default");
        let dry_text = ok(m(&["gc", "--min-age", "0"]));
        assert!(
            dry_text.contains("would remove 2 unreferenced blob(s)"),
            "{reg}: {dry_text}"
        );
        let applied = json(m(&["gc", "--min-age", "0", "--apply", "--json"]));
        assert_eq!(applied["removed"], true, "{reg}");
        assert_eq!(
            applied["bytes"],
            (modes_wasm().len() * 2 + 11) as u64,
            "{reg}: {applied}"
        );
        let after = json(m(&["gc", "--min-age", "0", "--json"]));
        assert_eq!(
            after["unreferenced"],
            serde_json::json!([]),
            "{reg}: nothing left"
        );
        let gone = m(&["inspect", &pinned, "--tenant", "acme"]);
        assert_eq!(gone.status.code(), Some(1), "{reg}");
    }
}

#[test]
fn a_bad_registry_location_is_refused() {
    let home = tempfile::tempdir().unwrap();
    for bad in [
        "oci://acme/x",
        "oci://ghcr.io/Acme",
        "s3://Bad_Bucket",
        "s3://bucket/../x",
    ] {
        let out = module(home.path(), bad, &["list"]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("use a directory, s3://BUCKET[/PREFIX] or oci://HOST[:PORT][/PREFIX]"),
            "{bad}: {err}"
        );
    }
}

pub(crate) fn with_module(reference: &str, body: &str) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(body);
    m.attributes
        .insert("module".into(), AttributeValue::String(reference.into()));
    m
}

/// Digests of the modules the worker's jobs succeeded with.
fn ran(w: &Worker) -> Vec<String> {
    w.events()
        .iter()
        .filter(|e| message(e) == "job succeeded; message deleted")
        .filter_map(|e| get(e, "digest"))
        .collect()
}

/// Two worker "hosts" with their own data dirs on one queue: one slot
/// each, no prefetch, names re-read after one second.
pub(crate) struct Hosts {
    workers: [Worker; 2],
    homes: [tempfile::TempDir; 2],
}

impl Hosts {
    pub(crate) fn start(b: &Backend, queue: &str, extra: &[&str]) -> Hosts {
        let homes = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut args = vec![
            "--queue",
            queue,
            "--registry-ttl",
            "1",
            "--prefetch",
            "0",
            "--wait",
            "1",
        ];
        args.extend_from_slice(extra);
        let workers = [0, 1].map(|i| {
            let mut cmd = Worker::command(b, &args, &[]);
            cmd.env("WASM_JOBS_HOME", homes[i].path());
            Worker::spawn(cmd)
        });
        Hosts { workers, homes }
    }

    pub(crate) fn home(&self, i: usize) -> &Path {
        self.homes[i].path()
    }

    pub(crate) fn worker(&self, i: usize) -> &Worker {
        &self.workers[i]
    }

    fn logs(&self) -> String {
        format!("{}\n---\n{}", self.workers[0].log(), self.workers[1].log())
    }

    /// Keep sending `reference` messages until both hosts have run `digest`.
    pub(crate) async fn until_both_run(&self, q: &dyn Queue, reference: &str, digest: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .workers
            .iter()
            .all(|w| ran(w).iter().any(|d| d == digest))
        {
            assert!(
                Instant::now() < deadline,
                "not both hosts ran {digest}:\n{}",
                self.logs()
            );
            q.send(&with_module(reference, "w")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many jobs of `digest` the two hosts have run.
    pub(crate) fn runs(&self, digest: &str) -> usize {
        self.workers
            .iter()
            .map(|w| ran(w).iter().filter(|d| *d == digest).count())
            .sum()
    }

    /// The first "left for redelivery" event of either host.
    pub(crate) async fn until_left_for_redelivery(&self) -> LogEvent {
        let left = "job could not start; the message is left for redelivery";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .workers
                .iter()
                .flat_map(|w| w.events())
                .find(|e| message(e) == left);
            if let Some(e) = found {
                return e;
            }
            assert!(Instant::now() < deadline, "{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until either host has run `digest`.
    pub(crate) async fn until_one_runs(&self, digest: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .workers
            .iter()
            .any(|w| ran(w).iter().any(|d| d == digest))
        {
            assert!(Instant::now() < deadline, "{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Wait until nothing is left in `q`.
pub(crate) async fn until_empty(q: &dyn Queue) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts(q).await != (0, 0, 0) {
        assert!(
            Instant::now() < deadline,
            "messages left: {:?}",
            counts(q).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A blob's bytes with the last one flipped.
pub(crate) fn corrupted(good: &[u8]) -> Vec<u8> {
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_an_s3_registry() {
    let b = Backend::moto();
    let bucket = Bucket::new().await;
    let reg = bucket.url();
    let (q, dlq) = b.create_with_dlq("fleet", 10, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let (pusher, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let push = |file: &Path, name: &str| {
        ok(module(
            pusher.path(),
            &reg,
            &["push", file.to_str().unwrap(), "--name", name],
        ))
    };
    let (v1, d1) = variant("one", files.path());
    push(&v1, "job");
    let hosts = Hosts::start(&b, &addr, &["--registry", &reg]);
    hosts.until_both_run(q.as_ref(), "job", &d1).await;
    for i in 0..2 {
        let e = hosts.worker(i).wait_for(
            "downloaded and verified a module",
            &[],
            Duration::from_secs(5),
        );
        assert!(
            field(&e, "blob").ends_with(&format!("blobs/{d1}.wasm")),
            "{e}"
        );
        let cached = hosts.home(i).join(format!("registry-cache/{d1}.wasm"));
        assert_eq!(content_digest(&std::fs::read(cached).unwrap()), d1);
    }

    // A re-push under the same name reaches both hosts within the TTL.
    let (v2, d2) = variant("two", files.path());
    push(&v2, "job");
    hosts.until_both_run(q.as_ref(), "job", &d2).await;

    // A blob corrupted in the bucket: refused with the reason, left for
    // redelivery (the registry is at fault, not the message), and run once
    // the blob is whole again.
    let (v3, d3) = variant("three", files.path());
    push(&v3, "flaky");
    let good = std::fs::read(&v3).unwrap();
    bucket
        .put(&format!("blobs/{d3}.wasm"), corrupted(&good))
        .await;
    q.send(&with_module("flaky", "o")).await.unwrap();
    let why = field(&hosts.until_left_for_redelivery().await, "why");
    assert!(why.contains("the module registry failed"), "{why}");
    assert!(why.contains(&format!("blobs/{d3}.wasm")), "{why}");
    assert!(why.contains("downloaded bytes have digest"), "{why}");
    bucket.put(&format!("blobs/{d3}.wasm"), good).await;
    hosts.until_one_runs(&d3).await;
    assert!(dead_letter_reasons(dlq.as_ref()).await.is_empty());
    until_empty(q.as_ref()).await;
}
