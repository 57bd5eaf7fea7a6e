//! The two queue backends the conformance suite runs against: a fresh
//! embedded data directory per test, and one moto server per test process
//! (`moto[server]` from PyPI) on a free 127.0.0.1 port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::sqs::SqsQueue;
use wasm_jobs::queue::{Queue, QueueConfig};

pub(crate) const MOTO_REGION: &str = "us-east-1";

/// Make one test per backend for each scenario: `async fn scenario(b: Backend)`
/// runs as `embedded::scenario` and `moto::scenario`.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::queue_backends::Backend::embedded()).await
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::queue_backends::Backend::moto()).await
                }
            )*
        }
    };
}

/// Where a test's queues live.
pub(crate) enum Backend {
    Embedded {
        store: EmbeddedStore,
        dir: tempfile::TempDir,
    },
    Moto {
        client: aws_sdk_sqs::Client,
        endpoint: String,
    },
}

pub(crate) fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let (stem, fifo) = match name.strip_suffix(".fifo") {
        Some(s) => (s, ".fifo"),
        None => (name, ""),
    };
    format!("{stem}-{}-{n}{fifo}", std::process::id())
}

impl Backend {
    pub(crate) fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        Backend::Embedded { store, dir }
    }

    pub(crate) fn moto() -> Backend {
        let endpoint = moto_endpoint().to_owned();
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new(MOTO_REGION))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .endpoint_url(&endpoint)
            .build();
        Backend::Moto {
            client: aws_sdk_sqs::Client::from_conf(config),
            endpoint,
        }
    }

    /// Create a queue with a unique name derived from `name`; returns it
    /// and its `--queue` address for the CLI.
    pub(crate) async fn create(
        &self,
        name: &str,
        config: &QueueConfig,
    ) -> (Arc<dyn Queue>, String) {
        let name = unique(name);
        self.create_exact(&name, config).await
    }

    pub(crate) async fn create_exact(
        &self,
        name: &str,
        config: &QueueConfig,
    ) -> (Arc<dyn Queue>, String) {
        match self {
            Backend::Embedded { store, .. } => {
                store.create_queue(name, config).unwrap();
                (Arc::new(store.queue(name).unwrap()), name.to_owned())
            }
            Backend::Moto { client, .. } => {
                let url = SqsQueue::create(client, name, config).await.unwrap();
                (Arc::new(SqsQueue::new(client.clone(), url.clone())), url)
            }
        }
    }

    /// Create a dead-letter queue and a queue that redrives to it.
    pub(crate) async fn create_with_dlq(
        &self,
        name: &str,
        max_receives: u32,
        config: &QueueConfig,
    ) -> (Arc<dyn Queue>, Arc<dyn Queue>) {
        let dlq_name = unique(&format!(
            "{}-dlq{}",
            name.trim_end_matches(".fifo"),
            if config.fifo { ".fifo" } else { "" }
        ));
        let (dlq, _) = self
            .create_exact(
                &dlq_name,
                &QueueConfig {
                    dead_letter: None,
                    ..config.clone()
                },
            )
            .await;
        let (q, _) = self
            .create(
                name,
                &QueueConfig {
                    dead_letter: Some((dlq_name, max_receives)),
                    ..config.clone()
                },
            )
            .await;
        (q, dlq)
    }

    /// A `wasm-jobs` command that reaches this backend's queues.
    pub(crate) fn cli(&self) -> Command {
        let mut cmd = Command::new(crate::common::bin());
        match self {
            Backend::Embedded { dir, .. } => {
                cmd.env("WASM_JOBS_HOME", dir.path());
            }
            Backend::Moto { endpoint, .. } => {
                cmd.env("AWS_ENDPOINT_URL", endpoint)
                    .env("AWS_ACCESS_KEY_ID", "testing")
                    .env("AWS_SECRET_ACCESS_KEY", "testing")
                    .env("AWS_REGION", MOTO_REGION)
                    .env_remove("AWS_PROFILE");
            }
        }
        cmd
    }

    /// The `--queue` address of a queue made by this backend.
    pub(crate) fn address_of(&self, q: &dyn Queue) -> String {
        q.name().to_owned()
    }

    pub(crate) fn data_dir(&self) -> Option<PathBuf> {
        match self {
            Backend::Embedded { dir, .. } => Some(dir.path().to_owned()),
            Backend::Moto { .. } => None,
        }
    }
}

/// Start moto once per test process. The server is a child of a thread that
/// lives as long as the process, with PR_SET_PDEATHSIG, so it dies with us.
pub(crate) fn moto_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("moto-server".into())
            .spawn(move || {
                let mut cmd = Command::new("python3");
                cmd.args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
                unsafe {
                    use std::os::unix::process::CommandExt;
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let child = cmd.spawn();
                tx.send(child.as_ref().map(|_| ()).map_err(|e| e.to_string()))
                    .unwrap();
                if let Ok(mut child) = child {
                    let _ = child.wait();
                }
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        rx.recv()
            .unwrap()
            .expect("starting moto (pip install 'moto[server]'; scripts/install-test-deps does)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("http://127.0.0.1:{port}")
    })
}
