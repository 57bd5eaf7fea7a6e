//! `wasm-jobs dashboard`: serve the operator's web pages
//! (`crate::dashboard`) until SIGINT or SIGTERM. Runs in the CLI process.

use super::args::Location;
use super::module_cmds::RegistryArgs;
use crate::dashboard::access::Access;
use crate::dashboard::{Dashboard, WorkerSource, serve};
use crate::engine::EngineSettings;
use crate::executor::Executor;
use crate::queue::address::QueueAddress;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// `wasm-jobs dashboard`.
#[derive(Debug, clap::Args)]
pub(super) struct DashboardArgs {
    /// Address to serve on, e.g. 127.0.0.1:8080 (port 0: any free port).
    /// An address other than loopback needs --token-file.
    #[arg(long)]
    listen: SocketAddr,
    /// A queue to show besides the data directory's embedded ones: an SQS
    /// URL or an embedded name, with the tenant it serves. Repeatable.
    #[arg(long = "queue", value_name = "[TENANT=]QUEUE")]
    queues: Vec<String>,
    /// A worker whose running jobs to show: its --metrics-addr, as
    /// http://HOST:PORT. Repeatable.
    #[arg(long = "worker", value_name = "URL", value_parser = parse_worker)]
    workers: Vec<String>,
    /// A file holding the access token (at least 16 characters): asked of
    /// every request (Authorization: Bearer, or a login form's cookie).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    location: Location,
}

/// `http://HOST:PORT`.
fn parse_worker(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{s}: give a worker's metrics address as http://HOST:PORT"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// `[TENANT=]QUEUE`: the tenant is what comes before a `=` that is not
/// part of a URL.
fn watched(spec: &str) -> anyhow::Result<(Option<String>, String)> {
    let (tenant, queue) = match spec.split_once('=') {
        Some((t, q)) if !t.contains('/') && !t.contains(':') => (Some(t.to_owned()), q),
        _ => (None, spec),
    };
    if let Some(t) = &tenant
        && !crate::registry::valid_name(t)
    {
        bail!("--queue {spec}: `{t}` is not a tenant name");
    }
    QueueAddress::parse(queue).with_context(|| format!("--queue {spec}"))?;
    Ok((tenant, queue.trim().to_owned()))
}

/// The token `token_file` holds; none is allowed only on loopback.
pub(super) fn token_for(
    listen: SocketAddr,
    token_file: Option<&std::path::Path>,
    flag: &str,
) -> anyhow::Result<Option<String>> {
    let token = token_file.map(Access::read_token).transpose()?;
    if token.is_none() && !listen.ip().is_loopback() {
        bail!("{listen}: pages served on an address other than loopback need {flag}");
    }
    Ok(token)
}

/// What a dashboard reads: the data directory's queues and `watched`, the
/// registry `registry` names, the running jobs of `workers`.
pub(super) fn dashboard(
    location: &Location,
    registry: &RegistryArgs,
    watched: Vec<(Option<String>, String)>,
    workers: Vec<WorkerSource>,
    token: Option<String>,
) -> anyhow::Result<Dashboard> {
    let data_dir = location.data_dir();
    let executor = Executor::new(
        EngineSettings::default(),
        crate::paths::compiled_dir(&data_dir),
    )?;
    Ok(Dashboard {
        registry_name: registry.shown(&data_dir),
        registry: registry.open(&data_dir)?,
        data_dir,
        endpoint: location.endpoint_url.clone(),
        watched,
        executor: Arc::new(executor),
        access: Arc::new(Access::new(token)),
        workers,
        http: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
            .build()?,
        history: Default::default(),
    })
}

impl DashboardArgs {
    /// Serve until SIGINT or SIGTERM.
    pub(super) async fn execute(self) -> anyhow::Result<u8> {
        let token = token_for(self.listen, self.token_file.as_deref(), "--token-file")?;
        let watched = self
            .queues
            .iter()
            .map(|q| watched(q))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let workers = self
            .workers
            .iter()
            .cloned()
            .map(WorkerSource::Remote)
            .collect();
        let dashboard = Arc::new(dashboard(
            &self.location,
            &self.registry,
            watched,
            workers,
            token,
        )?);
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("--listen {}", self.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, token = dashboard.access.has_token(), "dashboard listening");
        println!("dashboard on http://{addr}/");
        serve(listener, dashboard, stopped()).await?;
        Ok(crate::outcome::exit_code::OK)
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_name_their_tenant_unless_the_equals_sign_is_a_urls() {
        assert_eq!(
            watched("acme=jobs").unwrap(),
            (Some("acme".into()), "jobs".into())
        );
        assert_eq!(watched("jobs").unwrap(), (None, "jobs".into()));
        let url = "http://127.0.0.1:5000/123456789012/jobs";
        assert_eq!(
            watched(&format!("acme={url}")).unwrap(),
            (Some("acme".into()), url.into())
        );
        assert_eq!(watched(url).unwrap(), (None, url.into()));
        assert!(watched("Acme=jobs").is_err());
        assert!(watched("acme=").is_err());
    }
}
