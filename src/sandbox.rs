//! The sandbox policy of one job call and the pieces that enforce it inside a
//! `Store`: the WASI context (what the guest may see of files, environment and
//! network) and the resource limiter (how much linear memory it may hold).
//!
//! A [`SandboxPolicy`] is decided by the worker parent (from the tenant
//! policy file, `crate::policy`, or the worker's flags) and sent with each
//! spawn; the executor turns it into a WASI context and a limiter for every
//! call, in the worker child that makes the call (or in the CLI process for
//! `wasm-jobs exec`). Everything is denied unless the policy grants it.

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
/// Cap on the elements of any one table (8 bytes each on the host).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Cap on core instances, tables and memories in one store: generous for
/// real toolchains (componentize-py makes dozens), small enough to bound the
/// host memory a hostile component can make us allocate.
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;

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
    /// Environment variables the guest sees (name, value). Empty by default.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may open. None by default.
    pub preopens: Vec<Preopen>,
    /// Outbound network. Denied by default.
    pub network: NetworkPolicy,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            max_memory: DEFAULT_MAX_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            fuel: None,
            max_output: DEFAULT_MAX_OUTPUT,
            env: Vec::new(),
            preopens: Vec::new(),
            network: NetworkPolicy::Denied,
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
        out.extend(addrs);
    }
    Ok(out)
}

/// The error a memory grow past the policy's limit traps with; the executor
/// looks for it to report [`crate::outcome::TrapKind::OutOfMemory`].
#[derive(Debug, thiserror::Error)]
#[error("linear memory limit of {limit} bytes exceeded (asked for {requested} bytes in all)")]
pub(crate) struct MemoryLimitExceeded {
    /// The policy's limit, in bytes.
    pub(crate) limit: u64,
    /// The total the grow would have brought all memories to.
    pub(crate) requested: u64,
}

/// Counts the linear memory of every memory in a store against one limit and
/// traps the guest (rather than failing `memory.grow`) when it would pass it,
/// so that a memory bomb ends as a typed out-of-memory outcome.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: u64,
    in_use: u64,
}

impl MemoryLimiter {
    /// A limiter for a store whose memories may hold `limit` bytes in all.
    pub(crate) fn new(limit: u64) -> Self {
        MemoryLimiter { limit, in_use: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let requested = self.in_use - current as u64 + desired as u64;
        if requested > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }));
        }
        self.in_use = requested;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
    fn default_policy_grants_nothing() {
        let p = SandboxPolicy::default();
        assert!(p.env.is_empty() && p.preopens.is_empty());
        assert_eq!(p.network, NetworkPolicy::Denied);
        assert_eq!(p.max_memory, 256 << 20);
        assert_eq!(p.timeout, Duration::from_secs(900));
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
