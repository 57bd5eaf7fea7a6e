//! Tenant policies: one TOML file (`--policy FILE`) that gives each tenant
//! its sandbox (memory, time, fuel, output), capabilities (directories,
//! environment variables passed through, outbound network), how many of its
//! jobs may run at once on a worker, and which modules it may run.
//!
//! ```toml
//! [default]                      # optional: tenants not listed; without it they are rejected
//! max_memory = "128MiB"
//!
//! [tenants.acme]
//! max_memory = "64MiB"           # default 256MiB
//! timeout_secs = 60              # default 900
//! fuel = 5_000_000_000           # optional CPU budget
//! max_output = "1MiB"            # per stream
//! max_job_output = "64KiB"       # its published result; default and most 256KiB
//! max_concurrency = 2            # on this worker; default: no cap
//! modules = ["wc", "resize"]     # default: any module of the tenant
//! oci = ["ghcr.io/acme"]         # OCI registries (and repository prefixes) its
//!                                # messages may name as oci://...; default: none
//! weight = 2                     # share of contended worker slots; default 1
//! queues = ["acme-jobs"]         # queues bound to this tenant (also: --queue acme=Q)
//! key_file = "/etc/wasm-jobs/acme.key"   # signs its messages on shared queues
//! reply_to = ["acme-results", "acme-replies-*"]   # where outcomes may go; default: QUEUE-replies*
//! env = ["ACME_REGION"]          # passed through from the worker's environment
//! network = ["api.acme.test:443"]         # raw TCP
//! http = ["https://api.acme.test", "http://10.0.0.5:8080/v1/"]   # wasi:http origins (+ path prefix)
//! http_max_requests = 100        # per call; also http_max_request_body = "1MiB",
//!                                # http_max_response_body = "8MiB", http_timeout_secs = 30
//! dirs = [{ host = "/srv/acme", guest = "/data", read_only = true }]
//! ```
//!
//! The worker asks [`Policies::for_tenant`] for every message; `wasm-jobs
//! policy check` loads a file and prints the effective policies.

use crate::http::{HttpGrant, HttpPolicy};
use crate::sandbox::{NetworkPolicy, NetworkTarget, Preopen, SandboxPolicy};
use crate::signing::SigningKey;
use crate::units::parse_bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// What reading it said.
        #[source]
        source: std::io::Error,
    },
    /// The file is read but wrong (syntax, values, directories, key files).
    #[error("policy file {path}: {message}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// What is wrong, naming the tenant and field.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<TenantEntry>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    max_memory: Option<Size>,
    timeout_secs: Option<f64>,
    fuel: Option<u64>,
    max_output: Option<Size>,
    max_job_output: Option<Size>,
    max_concurrency: Option<usize>,
    modules: Option<Vec<String>>,
    #[serde(default)]
    oci: Vec<String>,
    weight: Option<u32>,
    #[serde(default)]
    queues: Vec<String>,
    key_file: Option<PathBuf>,
    reply_to: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    network: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
    http_max_requests: Option<u32>,
    http_max_request_body: Option<Size>,
    http_max_response_body: Option<Size>,
    http_timeout_secs: Option<f64>,
    #[serde(default)]
    dirs: Vec<DirEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirEntry {
    host: PathBuf,
    guest: String,
    #[serde(default = "yes")]
    read_only: bool,
}

fn yes() -> bool {
    true
}

/// One tenant's effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantPolicy {
    /// Limits and capabilities of each of its calls.
    pub sandbox: SandboxPolicy,
    /// Jobs of this tenant at once on one worker; `None` for no cap.
    pub max_concurrency: Option<usize>,
    /// Module names the tenant may run; `None` for any of its modules.
    pub modules: Option<Vec<String>>,
    /// OCI registries, optionally with a repository prefix
    /// (`HOST[:PORT][/PREFIX]`), whose modules its messages may name.
    pub oci: Vec<String>,
    /// Its share of contended worker slots, relative to other tenants.
    pub weight: u32,
    /// Queues bound to this tenant (embedded names or SQS URLs).
    pub queues: Vec<String>,
    /// The file its shared-queue messages are signed with.
    pub key_file: Option<PathBuf>,
    /// Queues its messages' `reply-to` may name (exact addresses, or
    /// prefixes ending in `*`); `None`: the default, the receiving queue's
    /// address followed by `-replies` and anything.
    pub reply_to: Option<Vec<String>>,
    /// Variables its `env` passes through that were not set when the
    /// policy was loaded: its jobs do not see them.
    pub unset_env: Vec<String>,
}

impl TenantPolicy {
    /// Whether the tenant may run the registry module `name`.
    pub fn allows_module(&self, name: &str) -> bool {
        self.modules
            .as_ref()
            .is_none_or(|m| m.iter().any(|allowed| allowed == name))
    }
}

/// Every tenant's policy, from one file (or the open default without one).
#[derive(Debug, Clone)]
pub struct Policies {
    /// The tenants listed, by name.
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// For tenants not listed; `None` rejects them.
    pub default: Option<TenantPolicy>,
    /// Signing keys of tenants with a `key_file`, loaded and checked once.
    keys: BTreeMap<String, Arc<SigningKey>>,
}

impl Policies {
    /// Without a policy file every tenant gets `base` and may run any module.
    pub fn open(base: SandboxPolicy) -> Self {
        Policies {
            tenants: BTreeMap::new(),
            default: Some(TenantPolicy {
                sandbox: base,
                max_concurrency: None,
                modules: None,
                oci: Vec::new(),
                weight: 1,
                queues: Vec::new(),
                key_file: None,
                reply_to: None,
                unset_env: Vec::new(),
            }),
            keys: BTreeMap::new(),
        }
    }

    /// Refuse a tenant directory that overlaps one of wasm-jobs' own
    /// (`protected`: what it is called, and where). Read-only access is
    /// refused too: the data directory holds every tenant's queued messages
    /// and the key that vouches for compiled native code.
    pub fn check_dirs_apart(&self, protected: &[(&str, PathBuf)]) -> Result<(), String> {
        let tenants = self
            .tenants
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .chain(self.default.iter().map(|t| ("default", t)));
        for (tenant, t) in tenants {
            for p in &t.sandbox.preopens {
                for (what, dir) in protected {
                    // A directory not made yet cannot be resolved: compare it
                    // as written (absolute, from the CLI).
                    let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
                    if p.host_path.starts_with(&dir) || dir.starts_with(&p.host_path) {
                        return Err(format!(
                            "tenant `{tenant}`: directory {} overlaps the {what} {}; give tenants directories outside wasm-jobs' own",
                            p.host_path.display(),
                            dir.display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Read and check a policy file (key files included).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, |name| std::env::var(name).ok()).map_err(|message| {
            PolicyError::Invalid {
                path: path.to_owned(),
                message,
            }
        })
    }

    /// Parse a policy file; `env` looks up passed-through variables.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut tenants = BTreeMap::new();
        for (name, entry) in file.tenants {
            if !crate::registry::valid_name(&name) {
                return Err(format!("tenant name `{name}` is not a valid name"));
            }
            let policy = effective(entry, &env).map_err(|e| format!("tenant {name}: {e}"))?;
            tenants.insert(name, policy);
        }
        let default = file
            .default
            .map(|d| effective(d, &env).map_err(|e| format!("default: {e}")))
            .transpose()?;
        if let Some(d) = &default
            && (d.key_file.is_some() || !d.queues.is_empty())
        {
            return Err("default: `key_file` and `queues` belong to a named tenant".into());
        }
        let mut keys = BTreeMap::new();
        let mut bound = BTreeMap::new();
        for (name, t) in &tenants {
            if let Some(path) = &t.key_file {
                let key = SigningKey::load(path).map_err(|e| format!("tenant {name}: {e}"))?;
                keys.insert(name.clone(), Arc::new(key));
            }
            for q in &t.queues {
                if let Some(other) = bound.insert(q.clone(), name.clone()) {
                    return Err(format!("queue `{q}` is bound to both {other} and {name}"));
                }
            }
        }
        Ok(Policies {
            tenants,
            default,
            keys,
        })
    }

    /// The signing key of `tenant`, if its policy names one.
    pub fn signing_key(&self, tenant: &str) -> Option<&SigningKey> {
        self.keys.get(tenant).map(|k| k.as_ref())
    }

    /// Each listed tenant's concurrency cap and weight, for the worker's slots.
    pub(crate) fn slot_settings(&self) -> Vec<(String, Option<usize>, u32)> {
        self.tenants
            .iter()
            .map(|(name, t)| (name.clone(), t.max_concurrency, t.weight))
            .collect()
    }

    /// The queues policies bind to tenants: (tenant, queue).
    pub fn bound_queues(&self) -> Vec<(String, String)> {
        self.tenants
            .iter()
            .flat_map(|(name, t)| t.queues.iter().map(move |q| (name.clone(), q.clone())))
            .collect()
    }

    /// The policy of `tenant`: its own, else the default, else `None`.
    pub fn for_tenant(&self, tenant: &str) -> Option<&TenantPolicy> {
        self.tenants.get(tenant).or(self.default.as_ref())
    }

    /// Whether any tenant has a fuel budget (the engine then meters fuel).
    pub fn uses_fuel(&self) -> bool {
        self.tenants
            .values()
            .chain(self.default.as_ref())
            .any(|t| t.sandbox.fuel.is_some())
    }
}

fn size(s: Option<Size>, default: u64) -> Result<u64, String> {
    match s {
        None => Ok(default),
        Some(Size::Bytes(n)) => Ok(n),
        Some(Size::Text(t)) => parse_bytes(&t),
    }
}

fn effective(
    e: TenantEntry,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<TenantPolicy, String> {
    let http = http_policy(&e)?;
    let base = SandboxPolicy::default();
    let timeout = match e.timeout_secs {
        None => base.timeout,
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(s) => return Err(format!("timeout_secs must be positive, got {s}")),
    };
    let mut vars = Vec::new();
    let mut unset_env = Vec::new();
    for name in &e.env {
        if name.is_empty()
            || name.contains('=')
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!("{name:?} is not an environment variable name"));
        }
        if vars.iter().any(|(k, _)| k == name) || unset_env.contains(name) {
            continue;
        }
        // A variable the worker does not have is not passed (and said so:
        // [`Policies::unset_env`]).
        match env(name) {
            Some(value) => vars.push((name.clone(), value)),
            None => unset_env.push(name.clone()),
        }
    }
    let mut preopens = Vec::new();
    for d in e.dirs {
        if !d.guest.starts_with('/') {
            return Err(format!("guest path `{}` must be absolute", d.guest));
        }
        let host = d
            .host
            .canonicalize()
            .map_err(|err| format!("directory {}: {err}", d.host.display()))?;
        if !host.is_dir() {
            return Err(format!("{} is not a directory", host.display()));
        }
        preopens.push(Preopen {
            host_path: host,
            guest_path: d.guest,
            read_only: d.read_only,
        });
    }
    let mut targets = Vec::new();
    for t in &e.network {
        let (host, port) = t
            .rsplit_once(':')
            .ok_or_else(|| format!("network target `{t}` is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("network target `{t}`: bad port"))?;
        if host.is_empty() {
            return Err(format!("network target `{t}` has no host"));
        }
        targets.push(NetworkTarget {
            host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
            port,
        });
    }
    if e.max_concurrency == Some(0) {
        return Err("max_concurrency must be at least 1".into());
    }
    if e.weight == Some(0) {
        return Err("weight must be at least 1".into());
    }
    for r in e.reply_to.iter().flatten() {
        let address = r.strip_suffix('*').unwrap_or(r);
        if address.contains('*') || address.is_empty() {
            return Err(format!("reply_to `{r}`: `*` may only end a prefix"));
        }
        if !r.ends_with('*') {
            crate::queue::address::QueueAddress::parse(r)
                .map_err(|e| format!("reply_to `{r}`: {e}"))?;
        }
    }
    if let Some(modules) = &e.modules {
        for m in modules {
            if !crate::registry::valid_name(m) {
                return Err(format!("module name `{m}` is not valid"));
            }
        }
    }
    for grant in &e.oci {
        let probe = format!("oci://{}/x", grant.trim_end_matches('/'));
        if grant.contains("://") || crate::registry::oci::OciRef::parse(&probe).is_err() {
            return Err(format!(
                "oci `{grant}`: use HOST[:PORT] or HOST[:PORT]/REPOSITORY-PREFIX"
            ));
        }
    }
    Ok(TenantPolicy {
        sandbox: SandboxPolicy {
            max_memory: size(e.max_memory, base.max_memory)?,
            timeout,
            fuel: e.fuel,
            max_output: usize::try_from(size(e.max_output, base.max_output as u64)?)
                .map_err(|_| "max_output is too large".to_owned())?,
            max_job_output: job_output_limit(size(e.max_job_output, base.max_job_output as u64)?)?,
            env: vars,
            preopens,
            network: if targets.is_empty() {
                NetworkPolicy::Denied
            } else {
                NetworkPolicy::AllowList(targets)
            },
            http,
        },
        max_concurrency: e.max_concurrency,
        modules: e.modules,
        oci: e.oci,
        weight: e.weight.unwrap_or(1),
        queues: e.queues,
        key_file: e.key_file,
        reply_to: e.reply_to,
        unset_env,
    })
}

/// The tenant's `http` grants and limits.
fn http_policy(e: &TenantEntry) -> Result<HttpPolicy, String> {
    let base = HttpPolicy::default();
    let grants = e
        .http
        .iter()
        .map(|g| HttpGrant::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = match e.http_timeout_secs {
        None => base.timeout,
        Some(t) if t.is_finite() && t > 0.0 && t <= 3600.0 => Duration::from_secs_f64(t),
        Some(t) => {
            return Err(format!(
                "http_timeout_secs {t} must be above 0 and at most 3600"
            ));
        }
    };
    let bytes = |s: &Option<Size>, default: u64| -> Result<u64, String> {
        let value = match s {
            None => return Ok(default),
            Some(Size::Bytes(n)) => *n,
            Some(Size::Text(t)) => parse_bytes(t)?,
        };
        Ok(value)
    };
    Ok(HttpPolicy {
        grants,
        max_requests: e.http_max_requests.unwrap_or(base.max_requests),
        max_request_body: bytes(&e.http_max_request_body, base.max_request_body)?,
        max_response_body: bytes(&e.http_max_response_body, base.max_response_body)?,
        timeout,
    })
}

/// A job's result travels in one outcome message, so it must fit one.
fn job_output_limit(bytes: u64) -> Result<usize, String> {
    match usize::try_from(bytes) {
        Ok(n) if n <= MAX_JOB_OUTPUT_LIMIT => Ok(n),
        _ => Err(format!(
            "max_job_output of {bytes} bytes is above the ceiling of {MAX_JOB_OUTPUT_LIMIT} \
             (a result travels in one queue message; put larger results in storage \
             and publish where they are)"
        )),
    }
}

/// The largest `max_job_output` a policy may set: a queue message's limit.
const MAX_JOB_OUTPUT_LIMIT: usize = crate::queue::limits::MAX_MESSAGE_BYTES;

mod describe;
#[cfg(test)]
mod tests;
