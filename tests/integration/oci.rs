//! Modules in an OCI registry (Debian's `docker-registry`, started on a free
//! 127.0.0.1 port): `module push --to` and `module inspect` in the Wasm OCI
//! artifact layout, and two worker "hosts" sharing one SQS queue that run
//! `oci://` references their tenant's policy grants: a re-pushed tag reaches
//! both within the TTL, a registry the policy does not grant is refused
//! (dead-lettered with the reason), and a blob corrupted in the registry's
//! storage is refused and left for redelivery, then runs once it is whole.
//! And the same registry as the module registry (`--registry oci://...`).

use crate::fleet::{Hosts, cli, corrupted, ok, until_empty, variant, with_module};
use crate::queue_backends::Backend;
use crate::worker_harness::{config, dead_letter_reasons, field};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` on a free port, storing under a temporary directory;
/// killed when dropped.
pub(crate) struct OciRegistry {
    child: Child,
    port: u16,
    storage: tempfile::TempDir,
}

impl OciRegistry {
    pub(crate) fn start() -> OciRegistry {
        let storage = tempfile::tempdir().unwrap();
        let port = crate::common::free_port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/install-test-deps installs it)");
        crate::common::until_listening(port, "docker-registry");
        OciRegistry {
            child,
            port,
            storage,
        }
    }

    /// The `--registry` of this registry, under a prefix.
    pub(crate) fn location(&self) -> String {
        format!("oci://127.0.0.1:{}/fleet", self.port)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// An OCI client for this registry, and `REPO:TAG` in it.
    fn client(&self, repo_tag: &str) -> (oci_client::Client, oci_client::Reference) {
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let reference = format!("127.0.0.1:{}/{repo_tag}", self.port);
        (client, reference.parse().unwrap())
    }

    /// The tags of `repo`, sorted.
    pub(crate) async fn tags(&self, repo: &str) -> Vec<String> {
        let (client, reference) = self.client(&format!("{repo}:latest"));
        let anonymous = oci_client::secrets::RegistryAuth::Anonymous;
        let mut tags = client
            .list_tags(&reference, &anonymous, None, None)
            .await
            .unwrap()
            .tags;
        tags.sort();
        tags
    }

    /// Push an ordinary (non-Wasm) image to `repo_tag`, as a shared
    /// registry holds beside modules.
    pub(crate) async fn push_foreign(&self, repo_tag: &str) {
        use oci_client::client::{Config, ImageLayer};
        let (client, reference) = self.client(repo_tag);
        let layer = ImageLayer::new(
            b"not a component".to_vec(),
            "application/vnd.oci.image.layer.v1.tar".into(),
            None,
        );
        let config = Config::oci_v1(b"{}".to_vec(), None);
        let anonymous = oci_client::secrets::RegistryAuth::Anonymous;
        client
            .push(&reference, &[layer], config, &anonymous, None)
            .await
            .unwrap();
    }

    /// Where the registry keeps a blob's bytes.
    fn blob_file(&self, digest: &str) -> PathBuf {
        self.storage.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{digest}/data",
            &digest[..2]
        ))
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push(home: &Path, file: &Path, to: &str) -> String {
    ok(cli(home)
        .args(["module", "push"])
        .arg(file)
        .args(["--to", to])
        .output()
        .unwrap())
}

#[tokio::test]
async fn push_to_and_inspect_an_oci_reference() {
    let registry = OciRegistry::start();
    let (home, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (file, digest) = variant("oci", files.path());
    let to = registry.reference("acme/job:v1");
    let pushed = push(home.path(), &file, &to);
    assert!(
        pushed.contains(&format!("component sha256:{digest}")),
        "{pushed}"
    );

    // The Wasm OCI artifact layout: one application/wasm layer with the
    // component's digest, the wasm config media type, a wasip2 config.
    let (client, reference) = registry.client("acme/job:v1");
    let (manifest, _) = client
        .pull_image_manifest(&reference, &oci_client::secrets::RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(
        manifest.config.media_type,
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.layers[0].media_type, "application/wasm");
    assert_eq!(manifest.layers[0].digest, format!("sha256:{digest}"));

    let other = tempfile::tempdir().unwrap();
    let inspect: serde_json::Value = serde_json::from_str(&ok(cli(other.path())
        .args(["module", "inspect", &to, "--json"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(inspect["digest"], digest.as_str());
    assert_eq!(inspect["exports"], serde_json::json!(["run", "on-exit"]));
    assert_eq!(
        inspect["compiled"], false,
        "another data dir: not compiled there yet"
    );
    let cached = other.path().join(format!("registry-cache/{digest}.wasm"));
    assert!(cached.is_file(), "downloaded into the verified cache");

    let missing = cli(other.path())
        .args(["module", "inspect", &registry.reference("acme/nothing:v1")])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no module"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let unnamed = cli(other.path())
        .args(["module", "push"])
        .arg(&file)
        .args(["--to", "oci://acme/job:v1"])
        .output()
        .unwrap();
    assert_eq!(unnamed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unnamed.stderr).contains("name the registry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_run_modules_from_an_oci_registry() {
    let registry = OciRegistry::start();
    let b = Backend::moto();
    let (q, dlq) = b.create_with_dlq("oci-fleet", 10, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let (pusher, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let policy = files.path().join("policy.toml");
    let grant = format!("[default]\noci = [\"127.0.0.1:{}/acme\"]\n", registry.port);
    std::fs::write(&policy, grant).unwrap();
    let live = registry.reference("acme/job:live");
    let (v1, d1) = variant("one", files.path());
    push(pusher.path(), &v1, &live);
    let hosts = Hosts::start(&b, &addr, &["--policy", policy.to_str().unwrap()]);
    hosts.until_both_run(q.as_ref(), &live, &d1).await;

    // A re-push of the tag reaches both hosts within the TTL.
    let (v2, d2) = variant("two", files.path());
    push(pusher.path(), &v2, &live);
    hosts.until_both_run(q.as_ref(), &live, &d2).await;

    // A repository the tenant's policy does not grant: dead-lettered.
    let elsewhere = registry.reference("other/job:live");
    push(pusher.path(), &v2, &elsewhere);
    q.send(&with_module(&elsewhere, "o")).await.unwrap();

    // A blob corrupted in the registry's storage: left for redelivery, and
    // run once it is whole again.
    let flaky = registry.reference("acme/flaky:v1");
    let (v3, d3) = variant("three", files.path());
    push(pusher.path(), &v3, &flaky);
    let blob = registry.blob_file(&d3);
    let good = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, corrupted(&good)).unwrap();
    q.send(&with_module(&flaky, "o")).await.unwrap();
    let why = field(&hosts.until_left_for_redelivery().await, "why");
    assert!(
        why.contains("the module registry failed") && why.contains(&flaky),
        "{why}"
    );
    std::fs::write(&blob, good).unwrap();
    hosts.until_one_runs(&d3).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let reasons = loop {
        let reasons = dead_letter_reasons(dlq.as_ref()).await;
        if !reasons.is_empty() || Instant::now() > deadline {
            break reasons;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        reasons.len(),
        1,
        "only the ungranted repository: {reasons:?}"
    );
    let refused = format!(
        "may not run modules from 127.0.0.1:{}/other/job",
        registry.port
    );
    assert!(reasons[0].contains(&refused), "{reasons:?}");
    until_empty(q.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_use_an_oci_registry_as_their_module_registry() {
    let registry = OciRegistry::start();
    let reg = registry.location();
    let b = Backend::moto();
    let (q, _dlq) = b.create_with_dlq("oci-names", 10, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let (pusher, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let push = |file: &Path| {
        ok(cli(pusher.path())
            .args(["module", "push"])
            .arg(file)
            .args(["--name", "job", "--registry", &reg])
            .output()
            .unwrap())
    };
    let (v1, d1) = variant("one", files.path());
    push(&v1);
    let hosts = Hosts::start(&b, &addr, &["--registry", &reg]);
    hosts.until_both_run(q.as_ref(), "job", &d1).await;
    // A re-push under the same name reaches both within the TTL, and the
    // first version stays pinnable.
    let (v2, d2) = variant("two", files.path());
    push(&v2);
    hosts.until_both_run(q.as_ref(), "job", &d2).await;
    let before = hosts.runs(&d1);
    let pinned = format!("job@sha256:{d1}");
    q.send(&with_module(&pinned, "p")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hosts.runs(&d1) == before {
        assert!(Instant::now() < deadline, "{pinned} did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_empty(q.as_ref()).await;
}
