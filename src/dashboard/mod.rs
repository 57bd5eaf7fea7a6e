//! `wasm-jobs dashboard`: an operator's web pages over the queues, their
//! dead letters and the module registry. Runs in the CLI process on its
//! tokio runtime: axum on hyper's HTTP/1 server, bound to the address
//! `--listen` gives (loopback unless a token is set; see [`access`]).
//!
//! Theory of operation: the dashboard keeps no state of its own but the
//! last ten minutes of its workers' counts, sampled every 5 s for the
//! charts ([`chart`]). Every page reads what it shows when it is asked for
//! (queue counts, a peek at a dead-letter queue, the registry's list, the
//! workers' running jobs) and renders server-side HTML ([`html`]; the
//! queues and jobs pages refresh themselves every 5 s). Actions (redrive
//! all, purge, redrive one, delete one: [`action`]) are POSTs from a confirmation page,
//! checked against CSRF and logged, and go through the same queue calls
//! as the CLI's `dlq` commands ([`crate::queue::redrive`]).
//!
//! Running jobs come from the workers it is pointed at (`--worker URL`:
//! their `GET /jobs.json`; see [`workers`]). A worker started with `--ui`
//! serves the same pages on its metrics address, over its data directory's
//! queues and the ones it serves, its registry, and its own running jobs
//! ([`start`]).
//!
//! The queues it knows: every embedded queue of the data directory, and the
//! queues `--queue [TENANT=]QUEUE` names (SQS URLs, or embedded names with a
//! tenant to show). It acts on no other queue.

pub(crate) mod access;
mod action;
mod chart;
pub(crate) mod html;
mod pages;
mod workers;

use crate::executor::Executor;
use crate::queue::address::QueueAddress;
use crate::queue::{Queue, QueueCounts};
use crate::registry::{ModuleVersion, Registry};
use access::Access;
use action::Action;
use axum::Router;
use axum::routing::{get, post};
use std::path::PathBuf;
use std::sync::Arc;

/// What the dashboard reads and acts on.
pub(crate) struct Dashboard {
    pub(crate) data_dir: PathBuf,
    pub(crate) endpoint: Option<String>,
    /// `--queue` entries: tenant (if given) and address.
    pub(crate) watched: Vec<(Option<String>, String)>,
    pub(crate) registry: Registry,
    /// How the registry was named, for the modules page.
    pub(crate) registry_name: String,
    /// For "compiled here": the data directory's artifact cache.
    pub(crate) executor: Arc<Executor>,
    pub(crate) access: Arc<Access>,
    /// Whose running jobs to show.
    pub(crate) workers: Vec<WorkerSource>,
    /// For the workers' `/jobs.json`.
    pub(crate) http: reqwest::Client,
    /// The workers' totals over time.
    pub(crate) history: chart::History,
}

/// A worker whose running jobs the dashboard shows.
#[derive(Clone)]
pub(crate) enum WorkerSource {
    /// Another process: its metrics address (`GET /jobs.json`).
    Remote(String),
    /// The worker serving these pages (`worker --ui`).
    Local(Arc<crate::worker::parent::stats::WorkerStats>),
}

impl WorkerSource {
    /// How the page names it.
    pub(crate) fn label(&self) -> &str {
        match self {
            WorkerSource::Remote(url) => url,
            WorkerSource::Local(_) => "this worker",
        }
    }
}

/// One queue's line on the queues page.
pub(crate) struct QueueRow {
    pub(crate) address: String,
    pub(crate) tenant: Option<String>,
    /// Its counts and its dead-letter queue's name and counts, or why they
    /// could not be read.
    pub(crate) stats: Result<(QueueCounts, Option<(String, QueueCounts)>), String>,
}

/// How long one queue's counts may take before its row says so.
const QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Dashboard {
    /// The queues it knows: the data dir's embedded queues and `--queue`s.
    async fn addresses(&self) -> Result<Vec<(Option<String>, String)>, String> {
        let dir = self.data_dir.clone();
        let embedded = tokio::task::spawn_blocking(move || {
            // No store yet: no queues (and none is created by looking).
            if !dir.join("queues.sqlite3").exists() {
                return Ok(Vec::new());
            }
            crate::queue::embedded::EmbeddedStore::open(&dir)?.queue_names()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the embedded queues: {e}"))?;
        let mut all = self.watched.clone();
        for name in embedded {
            if !all.iter().any(|(_, a)| *a == name) {
                all.push((None, name));
            }
        }
        Ok(all)
    }

    /// Open `address` if it is one of the queues the dashboard knows.
    async fn open(&self, address: &str) -> Result<Arc<dyn Queue>, String> {
        let parsed = QueueAddress::parse(address).map_err(|e| e.to_string())?;
        let known = match &parsed {
            QueueAddress::Sqs { .. } => self.watched.iter().any(|(_, a)| a == address),
            QueueAddress::Embedded { .. } => true,
        };
        if !known {
            return Err(format!("{address} is not a queue this dashboard shows"));
        }
        crate::queue::open(&parsed, &self.data_dir, self.endpoint.as_deref())
            .await
            .map_err(|e| format!("{address}: {e}"))
    }

    /// Every known queue with its counts and its dead-letter queue's (a
    /// queue that fails or takes longer than [`QUEUE_TIMEOUT`] says so in its
    /// own row).
    async fn queue_rows(&self) -> Result<Vec<QueueRow>, String> {
        let mut rows = Vec::new();
        for (tenant, address) in self.addresses().await? {
            let stats = match tokio::time::timeout(QUEUE_TIMEOUT, self.queue_stats(&address)).await
            {
                Ok(stats) => stats,
                Err(_) => Err(format!("no answer in {} s", QUEUE_TIMEOUT.as_secs())),
            };
            rows.push(QueueRow {
                address,
                tenant,
                stats,
            });
        }
        Ok(rows)
    }

    /// A queue's counts and its dead-letter queue's.
    async fn queue_stats(
        &self,
        address: &str,
    ) -> Result<(QueueCounts, Option<(String, QueueCounts)>), String> {
        let q = self.open(address).await?;
        let failed = |e: crate::queue::QueueError| e.to_string();
        let counts = q.counts().await.map_err(failed)?;
        let dlq = match q.attributes().await.map_err(failed)?.redrive {
            None => None,
            Some(policy) => match q.dead_letter_queue().await.map_err(failed)? {
                Some(d) => Some((policy.dead_letter_target, d.counts().await.map_err(failed)?)),
                None => None,
            },
        };
        Ok((counts, dlq))
    }

    /// The dead-letter queue of the known queue `address`, to be looked at
    /// (`receiving`: or received from, to find one message). Refused when
    /// that would move its messages on: a dead-letter queue with a redrive
    /// policy of its own counts every receive (and, on SQS, every look).
    async fn dead_letter_queue(
        &self,
        address: &str,
        receiving: bool,
    ) -> Result<Box<dyn Queue>, String> {
        let q = self.open(address).await?;
        let failed = |e: crate::queue::QueueError| format!("{address}: {e}");
        let dlq = q
            .dead_letter_queue()
            .await
            .map_err(failed)?
            .ok_or_else(|| format!("{address} has no dead-letter queue (no redrive policy)"))?;
        let chained = dlq.attributes().await.map_err(failed)?.redrive.is_some();
        if chained && (receiving || !dlq.is_local()) {
            return Err(format!(
                "the dead-letter queue of {address} has a redrive policy of its own: {} would count as receives and move its messages on; use redrive all, or `wasm-jobs dlq peek` knowingly",
                if receiving {
                    "finding one message"
                } else {
                    "looking at it on SQS"
                }
            ));
        }
        Ok(dlq)
    }

    /// Carry out `action` on `address`'s dead letters; what it did, in words.
    async fn act(&self, action: &Action, address: &str) -> Result<String, String> {
        use crate::queue::redrive;
        let source = self.open(address).await?;
        let dlq = self
            .dead_letter_queue(address, action.receives_one())
            .await?;
        let e = |e: crate::queue::QueueError| e.to_string();
        Ok(match action {
            Action::RedriveAll => {
                let parsed = QueueAddress::parse(address).map_err(e)?;
                let n = redrive::redrive_all(&parsed, &self.data_dir, self.endpoint.as_deref())
                    .await
                    .map_err(e)?;
                format!("moved {n} dead letters back to {address}")
            }
            Action::Purge => {
                dlq.purge().await.map_err(e)?;
                format!("purged the dead letters of {address}")
            }
            Action::RedriveOne(id) => {
                if redrive::redrive_one(dlq.as_ref(), source.as_ref(), id)
                    .await
                    .map_err(e)?
                {
                    format!("moved {id} back to {address}")
                } else {
                    format!("{id} is no longer there (moved, deleted, or in flight)")
                }
            }
            Action::DeleteOne(id) => {
                if redrive::delete_one(dlq.as_ref(), id).await.map_err(e)? {
                    format!("deleted {id}")
                } else {
                    format!("{id} is no longer there (moved, deleted, or in flight)")
                }
            }
        })
    }

    /// The registry's modules, each with whether it is compiled on this
    /// host (`None`: its bytes are not on this host).
    async fn modules(&self) -> Result<Vec<(ModuleVersion, Option<bool>)>, String> {
        let versions = self.registry.list(None).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for v in versions {
            let blob = self.local_blob(&v.digest);
            let executor = Arc::clone(&self.executor);
            let compiled = tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(blob?).ok()?;
                Some(executor.cache().contains(executor.engine(), &bytes))
            })
            .await
            .map_err(|e| e.to_string())?;
            out.push((v, compiled));
        }
        Ok(out)
    }

    /// Where this host keeps the blob `digest`, if anywhere.
    fn local_blob(&self, digest: &str) -> Option<PathBuf> {
        let path = match &self.registry {
            Registry::Dir(d) => d.blob(digest),
            Registry::S3(_) | Registry::Oci(_) => self
                .data_dir
                .join("registry-cache")
                .join(format!("{digest}.wasm")),
        };
        path.is_file().then_some(path)
    }
}

/// The dashboard's routes, behind its access rules.
pub(crate) fn router(dashboard: Arc<Dashboard>) -> Router {
    let access = Arc::clone(&dashboard.access);
    Router::new()
        .route("/", get(pages::queues))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/message", get(pages::message))
        .route("/confirm", get(pages::confirm))
        .route("/act", post(pages::act))
        .route("/modules", get(pages::modules))
        .route("/jobs", get(workers::jobs))
        .route("/login", get(pages::login_form).post(pages::login))
        .layer(axum::middleware::from_fn_with_state(
            access,
            access::require,
        ))
        .with_state(dashboard)
}

/// The dashboard's routes, with the sampler of its workers' totals running
/// (for a worker's `--ui`, on the worker's runtime until the process ends).
pub(crate) fn start(dashboard: Arc<Dashboard>) -> Router {
    tokio::spawn(workers::sample(Arc::clone(&dashboard)));
    router(dashboard)
}

/// Serve the dashboard on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Arc<Dashboard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = tokio::spawn(workers::sample(Arc::clone(&dashboard)));
    let served = axum::serve(listener, router(dashboard))
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    served
}
