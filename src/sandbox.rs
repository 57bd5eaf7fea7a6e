//! The sandbox policy of one job call and the pieces that enforce it inside a
//! `Store`: the WASI context (what the guest may see of files, environment and
//! network) and the resource limiter (how much linear memory it may hold).
//!
//! A [`SandboxPolicy`] is decided by the worker parent (from the tenant
//! policy file, `crate::policy`, or the worker's flags) and sent with each
//! spawn; the executor turns it into a WASI context and a limiter for every
//! call, in the worker child that makes the call (or in the CLI process for
//! `wasm-jobs exec`). Everything is denied unless the policy grants it.

use crate::addresses::is_internal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Default cap on a job's linear memory (all memories of the instance together).
pub(crate) const DEFAULT_MAX_MEMORY: u64 = 256 * 1024 * 1024;
/// Default wall-time limit of one call, instantiation included.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default cap on captured guest stdout and on stderr, each.
pub(crate) const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;
/// Cap on the elements of any one table.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// What one table element costs the host: a pointer-sized slot. Table
/// elements count against the same budget as linear memory.
pub(crate) const TABLE_ELEMENT_BYTES: u64 = 8;
/// Caps on core instances, tables and memories in one store: room for real
/// toolchains (a componentize-py component has 64 core instances, 2 tables
/// and 1 memory; componentize-js 26, 2 and 1), small enough that the host
/// memory their bookkeeping takes stays bounded.
const MAX_INSTANCES: usize = 200;
const MAX_TABLES: usize = 50;
const MAX_MEMORIES: usize = 10;

/// What one job call may use. `Default` is the locked-down policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxPolicy {
    /// Total bytes of linear memory the instance may hold.
    pub max_memory: u64,
    /// Wall-time limit for instantiating and calling the job.
    pub timeout: Duration,
    /// CPU budget in wasmtime fuel units; `None` for no budget. Needs an
    /// engine built with fuel metering (see `EngineSettings`).
    pub fuel: Option<u64>,
    /// Bytes of stdout, and of stderr, kept and logged; the rest is dropped.
    pub max_output: usize,
    /// Largest result the job may publish with `wasm-jobs:job/output.set`.
    pub max_job_output: usize,
    /// Environment variables the guest sees (name, value). Empty by default.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may open. None by default.
    pub preopens: Vec<Preopen>,
    /// Outbound network. Denied by default.
    pub network: NetworkPolicy,
    /// Outbound HTTP (`wasi:http`): no grants by default.
    pub http: crate::http::HttpPolicy,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            max_memory: DEFAULT_MAX_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            fuel: None,
            max_output: DEFAULT_MAX_OUTPUT,
            max_job_output: crate::job_output::DEFAULT_MAX_JOB_OUTPUT,
            env: Vec::new(),
            preopens: Vec::new(),
            network: NetworkPolicy::Denied,
            http: crate::http::HttpPolicy::default(),
        }
    }
}

/// A host directory made visible to the guest at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preopen {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may only read it (no writes, creates or removes).
    pub read_only: bool,
}

/// Outbound network access of a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkPolicy {
    /// No sockets and no name lookups.
    Denied,
    /// TCP connections to exactly these `host:port` targets, nothing else.
    /// Host names are resolved when the sandbox is built.
    AllowList(Vec<NetworkTarget>),
}

/// One allowed `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkTarget {
    /// A host name or an IP address.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

/// Errors while turning a policy into a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A granted directory could not be opened.
    #[error("cannot preopen {path}: {source}")]
    Preopen {
        /// The host directory.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: wasmtime::Error,
    },
    /// An HTTP grant's host did not resolve.
    #[error(transparent)]
    Http(#[from] crate::http::ResolveError),
    /// An allowed `host:port` did not resolve.
    #[error("cannot resolve allowed network target {target}: {source}")]
    Resolve {
        /// The `host:port` as written in the policy.
        target: String,
        /// The lookup error.
        #[source]
        source: std::io::Error,
    },
}

impl SandboxPolicy {
    /// Fill `builder` with everything this policy grants. The builder starts
    /// empty (no env, no args, no preopens, no network), so only grants are
    /// added here; stdio is the executor's business.
    pub(crate) fn apply_to(&self, builder: &mut WasiCtxBuilder) -> Result<(), SandboxError> {
        builder.envs(&self.env);
        for preopen in &self.preopens {
            let perms = if preopen.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&preopen.host_path, &preopen.guest_path, perms)
                .map_err(|source| SandboxError::Preopen {
                    path: preopen.host_path.clone(),
                    source,
                })?;
        }
        builder
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_tcp(false);
        if let NetworkPolicy::AllowList(targets) = &self.network {
            let allowed: Arc<Vec<SocketAddr>> = Arc::new(resolve_targets(targets)?);
            builder.allow_tcp(!allowed.is_empty());
            builder.socket_addr_check(move |addr, use_| {
                let ok = match use_ {
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // `connect` binds implicitly to the wildcard address first.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        Ok(())
    }
}

/// The addresses a network grant allows. An IP literal is allowed as
/// written; a name is resolved now (at each call) and only its public
/// addresses are kept, so a tenant who controls a name's DNS cannot point it
/// at loopback, the cloud metadata service or internal networks: those need
/// the IP literal in the policy.
fn resolve_targets(targets: &[NetworkTarget]) -> Result<Vec<SocketAddr>, SandboxError> {
    let mut out = Vec::new();
    for t in targets {
        if let Ok(ip) = t.host.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, t.port));
            continue;
        }
        let target = format!("{}:{}", t.host, t.port);
        let addrs = target
            .to_socket_addrs()
            .map_err(|source| SandboxError::Resolve {
                target: target.clone(),
                source,
            })?;
        for addr in addrs {
            if is_internal(addr.ip()) {
                tracing::warn!(%target, address = %addr.ip(), "network grant resolved to an internal address; refused (grant the IP literal to allow it)");
            } else {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

/// The error a memory or table grow past the policy's limit traps with; the
/// executor looks for it to report [`crate::outcome::TrapKind::OutOfMemory`].
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit of {limit} bytes exceeded (linear memories and tables would hold {requested} bytes)"
)]
pub(crate) struct MemoryLimitExceeded {
    /// The policy's limit, in bytes.
    pub(crate) limit: u64,
    /// The total the grow would have brought all memories to.
    pub(crate) requested: u64,
}

/// Counts the linear memory of every memory in a store, and the host memory
/// of every table's elements ([`TABLE_ELEMENT_BYTES`] each), against one
/// limit, and traps the guest (rather than failing `memory.grow` or
/// `table.grow`) when it would pass it, so that a memory or table bomb ends
/// as a typed out-of-memory outcome. Instantiation counts too: a module that
/// declares huge tables or memories fails to instantiate the same way.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    in_use: u64,
}

impl MemoryLimiter {
    /// A limiter for a store whose memories and tables may hold `limit`
    /// bytes in all.
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter { limit, in_use: 0 }
    }

    /// One memory or table going from `current` to `desired` bytes.
    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<bool> {
        let requested = (self.in_use - current).saturating_add(desired);
        if requested > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }));
        }
        self.in_use = requested;
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let bytes = |n: usize| (n as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        self.grow(bytes(current), bytes(desired))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_all_memories_together() {
        let mut l = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory may take what is left, not a fresh 100.
        assert!(l.memory_growing(0, 40, None).unwrap());
        let err = l.memory_growing(40, 41, None).unwrap_err();
        let exceeded = err.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!((exceeded.limit, exceeded.requested), (100, 101));
        // Refused growth is not counted.
        assert!(l.memory_growing(60, 60, None).unwrap());
    }

    #[test]
    fn table_elements_count_against_the_same_budget() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        // 64 Ki elements of 8 bytes: the other half of the budget.
        assert!(l.table_growing(0, 64 << 10, None).unwrap());
        let err = l.table_growing(0, 1, None).unwrap_err();
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some());
        // Past the per-table cap a grow fails (table.grow returns -1).
        let mut big = MemoryLimiter::new(u64::MAX);
        assert!(!big.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
    }

    #[test]
    fn default_policy_grants_nothing() {
        let p = SandboxPolicy::default();
        assert!(p.env.is_empty() && p.preopens.is_empty());
        assert_eq!(p.network, NetworkPolicy::Denied);
        assert_eq!(p.max_memory, 256 << 20);
        assert_eq!(p.timeout, Duration::from_secs(900));
    }

    #[test]
    fn a_name_resolving_to_loopback_is_refused_but_the_literal_is_not() {
        let by_name = resolve_targets(&[NetworkTarget {
            host: "localhost".into(),
            port: 8080,
        }])
        .unwrap();
        assert!(by_name.is_empty(), "{by_name:?}");
    }

    #[test]
    fn allow_list_resolves_ip_literals_without_lookup() {
        let addrs = resolve_targets(&[NetworkTarget {
            host: "127.0.0.1".into(),
            port: 8080,
        }])
        .unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
    }
}
