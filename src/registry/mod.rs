//! The module registry: uploaded job components, content-addressed by
//! sha256, with per-tenant names pointing at versions. Used in the CLI
//! process by `wasm-jobs module` and, through [`Registry::resolve`], by the
//! worker parent when it admits a message; the fork server only reads the
//! resolved blob files.
//!
//! Three backends. A directory and S3 keep the same layout of keys:
//! - `blobs/<hex>.wasm`: component bytes, by sha256;
//! - `modules/<tenant>/<name>/<hex>.json`: one pushed version ([`ModuleVersion`]);
//! - `modules/<tenant>/<name>/latest`: the digest `NAME` resolves to.
//!
//! [`dir`] is a directory (the data dir's by default, or a shared mount);
//! [`s3`] is `s3://BUCKET/PREFIX`, shared by a fleet of hosts. Every push
//! validates (and compiles, caching the artifact) before storing anything,
//! and writes the blob, then the version record, then `latest`, so a name
//! never points at a version whose bytes are missing. `NAME@sha256:HEX`
//! pins a version. [`oci_registry`] keeps the same names in an OCI
//! registry (`oci://HOST[:PORT][/PREFIX]`: a repository per module, a tag
//! per version, `latest`). Beside the registry, [`oci`] runs components
//! kept in OCI registries, named `oci://HOST/REPO:TAG` by a message.
//!
//! The other parts: `location` (parsing `--registry`, cache settings),
//! `remote` (what S3 and OCI share on a host: names re-read after a TTL,
//! stale answers while a registry is down, one download per digest),
//! `cache` (the host's verified, size-capped blob cache), `gc` (which blobs
//! `module gc` may remove).
//!
//! [`RegistryError::is_passing`] splits failures in two: a reference that
//! names nothing is the message's fault (it is dead-lettered); a registry
//! that cannot be read or holds bytes that are not what it promised is the
//! registry's fault (the message is left for redelivery).

pub(crate) mod cache;
pub mod dir;
mod gc;
mod location;
pub mod oci;
pub mod oci_registry;
mod remote;
pub mod s3;

pub use dir::DirRegistry;
pub use gc::GcReport;
pub(crate) use gc::{BlobEntry, plan_gc};
pub use location::{CacheSettings, Location};

use crate::artifact_cache::{CompileSource, content_digest};
use crate::executor::{Executor, LoadError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default largest component a push accepts.
pub(crate) const DEFAULT_MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;
/// The tenant of a module pushed or looked up without one.
pub(crate) const DEFAULT_TENANT: &str = "default";
/// How long a worker trusts what a remote name resolved to.
pub const DEFAULT_LATEST_TTL: Duration = Duration::from_secs(10);
/// Default size cap of a host's downloaded-blob cache.
pub const DEFAULT_CACHE_BYTES: u64 = 1024 * 1024 * 1024;
/// Blobs younger than this survive `module gc` by default: a push writes its
/// blob before the record that refers to it.
pub const DEFAULT_GC_MIN_AGE: Duration = Duration::from_secs(3600);

/// What went wrong with a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A module or tenant name breaks the naming rule.
    #[error(
        "name `{0}`: module and tenant names are 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    BadName(String),
    /// A reference is neither `NAME` nor `NAME@sha256:HEX`.
    #[error("`{0}` is not NAME or NAME@sha256:HEX (64 hex digits)")]
    BadReference(String),
    /// A `--registry` that is not a directory, `s3://BUCKET[/PREFIX]` or
    /// `oci://HOST[:PORT][/PREFIX]`.
    #[error("registry `{0}`: use a directory, s3://BUCKET[/PREFIX] or oci://HOST[:PORT][/PREFIX]")]
    BadLocation(String),
    /// An operation this kind of registry does not offer, and why.
    #[error("{0}")]
    Unsupported(String),
    /// An `oci://` reference or location that is not one (the text says
    /// which and why).
    #[error("{0}")]
    BadOciReference(String),
    /// What an OCI reference names is not a Wasm component artifact (or one
    /// over the size limit); the text says what it is.
    #[error("{0}")]
    NotAComponent(String),
    /// The file to push is over the size limit.
    #[error("{path} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file to push is not a loadable job component.
    #[error("not stored: {0}")]
    Invalid(LoadError),
    /// A registry file holds something the registry never writes: a digest
    /// that is not 64 lowercase hex digits, a record for another digest, or
    /// a blob whose bytes no longer have its digest.
    #[error("registry file {path} is corrupt: {why}")]
    Corrupt {
        /// The file or object.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The tenant has no module by that name.
    #[error("no module `{name}` for tenant `{tenant}`")]
    NotFound {
        /// The module name.
        name: String,
        /// The tenant looked in.
        tenant: String,
    },
    /// An OCI reference names no manifest (or no repository).
    #[error("no module at {0}")]
    NoArtifact(String),
    /// The module exists, but not the pinned version.
    #[error("module `{name}` of tenant `{tenant}` has no version {digest}")]
    NoSuchVersion {
        /// The module name.
        name: String,
        /// The tenant looked in.
        tenant: String,
        /// The pinned sha256, hex.
        digest: String,
    },
    /// A registry file could not be read or written.
    #[error("registry at {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A remote registry did not answer as it should (network, permissions,
    /// a server error).
    #[error("registry {location}: {why}")]
    Unavailable {
        /// The registry and the object asked for.
        location: String,
        /// What went wrong.
        why: String,
    },
}

impl From<LoadError> for RegistryError {
    fn from(e: LoadError) -> Self {
        RegistryError::Invalid(e)
    }
}

impl RegistryError {
    /// Whether the registry, not the reference, is at fault: a worker leaves
    /// the message for redelivery instead of dead-lettering it.
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            RegistryError::Corrupt { .. }
                | RegistryError::Io { .. }
                | RegistryError::Unavailable { .. }
        )
    }
}

/// One pushed version of a module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModuleVersion {
    /// The module's name.
    pub name: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// sha256 of the component, lowercase hex.
    pub digest: String,
    /// The component's size in bytes.
    pub size: u64,
    /// When it was pushed, milliseconds since the Unix epoch.
    pub pushed_at_ms: u64,
}

/// What a module reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The version's record.
    pub version: ModuleVersion,
    /// The component file to load (in a remote registry's local cache).
    pub path: PathBuf,
}

/// A sha256 as the registry writes it: 64 lowercase hex digits. Digests
/// read from the registry's own files are checked with this before they
/// become part of a path or key.
pub(crate) fn valid_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Module and tenant names: 1-64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Split `NAME` or `NAME@sha256:HEX`.
pub(crate) fn parse_reference(r: &str) -> Result<(String, Option<String>), RegistryError> {
    let bad = || RegistryError::BadReference(r.to_owned());
    let (name, digest) = match r.split_once('@') {
        None => (r, None),
        Some((name, pin)) => {
            let hex = pin.strip_prefix("sha256:").ok_or_else(bad)?;
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            (name, Some(hex.to_ascii_lowercase()))
        }
    };
    if !valid_name(name) {
        return Err(RegistryError::BadName(name.to_owned()));
    }
    Ok((name.to_owned(), digest))
}

/// Check what the registry's `latest` holds before it becomes part of a key.
pub(crate) fn checked_latest(text: &str, path: PathBuf) -> Result<String, RegistryError> {
    let d = text.trim();
    if valid_digest(d) {
        Ok(d.to_owned())
    } else {
        Err(RegistryError::Corrupt {
            path,
            why: format!(
                "{:?} is not a sha256 digest",
                d.chars().take(80).collect::<String>()
            ),
        })
    }
}

/// Parse a version record and check it is the one its key promises.
/// `expected` is the `(tenant, name, digest)` its key names.
pub(crate) fn checked_record(
    bytes: &[u8],
    expected: (&str, &str, &str),
    path: PathBuf,
) -> Result<ModuleVersion, RegistryError> {
    let version: ModuleVersion =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
            path: path.clone(),
            why: format!("not a version record: {e}"),
        })?;
    let (tenant, name, digest) = expected;
    let wrong = if version.digest != digest {
        Some(format!("it records digest {:?}", version.digest))
    } else if version.tenant != tenant || version.name != name {
        Some(format!(
            "it records module {:?} of tenant {:?}",
            version.name, version.tenant
        ))
    } else {
        None
    };
    match wrong {
        Some(why) => Err(RegistryError::Corrupt { path, why }),
        None => Ok(version),
    }
}

/// A component validated for a push: its bytes and the record to store.
pub(crate) struct Upload {
    pub(crate) bytes: Vec<u8>,
    pub(crate) version: ModuleVersion,
    pub(crate) source: CompileSource,
}

/// Check the size of `file` and validate it as a job component (compiling
/// it into `executor`'s cache), to be stored as `name` of `tenant`.
fn load(
    executor: &Executor,
    file: &Path,
    name: &str,
    tenant: &str,
    max_bytes: u64,
) -> Result<Upload, RegistryError> {
    let io = |source| RegistryError::Io {
        path: file.to_owned(),
        source,
    };
    let size = std::fs::metadata(file).map_err(io)?.len();
    if size > max_bytes {
        return Err(RegistryError::TooLarge {
            path: file.to_owned(),
            size,
            limit: max_bytes,
        });
    }
    let bytes = std::fs::read(file).map_err(io)?;
    let loaded = executor.load_bytes(&bytes)?;
    let version = ModuleVersion {
        name: name.to_owned(),
        tenant: tenant.to_owned(),
        digest: content_digest(&bytes),
        size,
        pushed_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    Ok(Upload {
        bytes,
        version,
        source: loaded.source,
    })
}

/// An error and its causes, on one line: what a client library's error
/// leaves to its sources ("connection refused") is what an operator needs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// A registry: a directory, an S3 bucket or an OCI registry.
#[derive(Debug, Clone)]
pub enum Registry {
    /// A directory.
    Dir(DirRegistry),
    /// An S3 bucket shared by a fleet.
    S3(s3::S3Registry),
    /// Repositories of an OCI registry shared by a fleet.
    Oci(oci_registry::OciRegistry),
}

impl Registry {
    /// The registry at `location`; remote ones cache under `cache`.
    pub fn open(location: Location, cache: CacheSettings) -> Registry {
        match location {
            Location::Dir(dir) => Registry::Dir(DirRegistry::new(dir)),
            Location::S3 { bucket, prefix } => {
                Registry::S3(s3::S3Registry::new(bucket, prefix, cache))
            }
            Location::Oci { registry, prefix } => {
                Registry::Oci(oci_registry::OciRegistry::new(registry, prefix, cache))
            }
        }
    }

    /// Validate `file` as a job component (compiling it into `executor`'s
    /// cache) and store it as `name` for `tenant`. Nothing is stored when
    /// any check fails.
    pub async fn push(
        &self,
        executor: &Executor,
        file: &Path,
        name: &str,
        tenant: &str,
        max_bytes: u64,
    ) -> Result<(ModuleVersion, CompileSource), RegistryError> {
        for n in [name, tenant] {
            if !valid_name(n) {
                return Err(RegistryError::BadName(n.to_owned()));
            }
        }
        let upload = load(executor, file, name, tenant, max_bytes)?;
        match self {
            Registry::Dir(r) => r.store(&upload)?,
            Registry::S3(r) => r.store(&upload).await?,
            Registry::Oci(r) => r.store(executor, &upload).await?,
        }
        Ok((upload.version, upload.source))
    }

    /// Resolve `NAME` or `NAME@sha256:HEX` for `tenant` to a local file. A
    /// tenant sees only its own modules.
    pub async fn resolve(&self, reference: &str, tenant: &str) -> Result<Resolved, RegistryError> {
        match self {
            Registry::Dir(r) => r.resolve(reference, tenant),
            Registry::S3(r) => r.resolve(reference, tenant).await,
            Registry::Oci(r) => r.resolve(reference, tenant).await,
        }
    }

    /// The latest version of every module (of one tenant, or all).
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<ModuleVersion>, RegistryError> {
        match self {
            Registry::Dir(r) => r.list(tenant),
            Registry::S3(r) => r.list(tenant).await,
            Registry::Oci(r) => r.list(tenant).await,
        }
    }

    /// Remove a module (every version of it) for `tenant`. Blobs stay until
    /// `gc`: they are content-addressed and may back other names.
    pub async fn remove(&self, name: &str, tenant: &str) -> Result<(), RegistryError> {
        match self {
            Registry::Dir(r) => r.remove(name, tenant),
            Registry::S3(r) => r.remove(name, tenant).await,
            Registry::Oci(r) => r.remove(name, tenant).await,
        }
    }

    /// The tenant whose module an `oci://` reference names when it points
    /// into this registry (an OCI module registry's `PREFIX/TENANT/NAME`);
    /// `None` for a reference elsewhere. Admission refuses another
    /// tenant's: an `oci` grant on the registry's host is no way around
    /// "a tenant names only its own modules".
    pub fn owner_of(&self, r: &oci::OciRef) -> Option<String> {
        match self {
            Registry::Oci(reg) => reg.owner_of(r),
            Registry::Dir(_) | Registry::S3(_) => None,
        }
    }

    /// Find blobs no version refers to (older than `min_age`) and, unless
    /// `dry_run`, remove them.
    pub async fn gc(&self, min_age: Duration, dry_run: bool) -> Result<GcReport, RegistryError> {
        match self {
            Registry::Dir(r) => r.gc(min_age, dry_run),
            Registry::S3(r) => r.gc(min_age, dry_run).await,
            Registry::Oci(r) => r.gc(),
        }
    }
}

/// The bytes of a resolved module, checked against its digest.
pub fn read(resolved: &Resolved) -> Result<Vec<u8>, RegistryError> {
    let bytes = std::fs::read(&resolved.path).map_err(|source| RegistryError::Io {
        path: resolved.path.clone(),
        source,
    })?;
    let actual = content_digest(&bytes);
    if actual != resolved.version.digest {
        return Err(RegistryError::Corrupt {
            path: resolved.path.clone(),
            why: format!("its bytes have digest {actual}"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_reference("wc").unwrap(), ("wc".into(), None));
        let hex = "a".repeat(64);
        assert_eq!(
            parse_reference(&format!("wc@sha256:{hex}")).unwrap(),
            ("wc".into(), Some(hex.clone()))
        );
        for bad in [
            "",
            "Wc",
            "../x",
            "a/b",
            "wc@sha1:abc",
            &format!("wc@sha256:{}", "z".repeat(64)),
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_registrys_faults_are_passing() {
        let passing = RegistryError::Corrupt {
            path: "x".into(),
            why: "y".into(),
        };
        assert!(passing.is_passing());
        assert!(
            RegistryError::Unavailable {
                location: "s3://b".into(),
                why: "timeout".into()
            }
            .is_passing()
        );
        let verdict = RegistryError::NotFound {
            name: "m".into(),
            tenant: "t".into(),
        };
        assert!(!verdict.is_passing());
        assert!(!RegistryError::BadReference("x".into()).is_passing());
    }
}
