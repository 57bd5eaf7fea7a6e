//! `wasm-jobs dashboard`: serve the operator's web pages
//! (`crate::dashboard`) until SIGINT or SIGTERM. Runs in the CLI process.

use super::args::Location;
use super::module_cmds::RegistryArgs;
use crate::dashboard::access::Access;
use crate::dashboard::{Dashboard, serve};
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

impl DashboardArgs {
    /// Serve until SIGINT or SIGTERM.
    pub(super) async fn execute(self) -> anyhow::Result<u8> {
        let token = self
            .token_file
            .as_deref()
            .map(Access::read_token)
            .transpose()?;
        if token.is_none() && !self.listen.ip().is_loopback() {
            bail!(
                "--listen {}: an address other than loopback needs --token-file",
                self.listen
            );
        }
        let watched = self
            .queues
            .iter()
            .map(|q| watched(q))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data_dir = self.location.data_dir();
        let registry = self.registry.open(&data_dir)?;
        let executor = Executor::new(
            EngineSettings::default(),
            crate::paths::compiled_dir(&data_dir),
        )?;
        let dashboard = Arc::new(Dashboard {
            registry_name: self.registry.shown(&data_dir),
            data_dir,
            endpoint: self.location.endpoint_url.clone(),
            watched,
            registry,
            executor: Arc::new(executor),
            access: Arc::new(Access::new(token)),
            workers: self.workers.clone(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(std::time::Duration::from_secs(5))
                .build()?,
            history: Default::default(),
        });
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
