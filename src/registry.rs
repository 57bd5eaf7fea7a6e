//! The module registry: uploaded job components in a directory (the data dir
//! by default, `--registry DIR` for a shared mount), content-addressed by
//! sha256, with per-tenant names pointing at versions.
//!
//! Layout:
//! - `blobs/<hex>.wasm`: component bytes, by sha256;
//! - `modules/<tenant>/<name>/<hex>.json`: one pushed version ([`ModuleVersion`]);
//! - `modules/<tenant>/<name>/latest`: the digest `NAME` resolves to.
//!
//! Every file is written to a temporary name and renamed, so concurrent
//! pushes and removes never leave a half-written file; `NAME@sha256:HEX`
//! pins a version. Push validates (and compiles, caching the artifact)
//! before storing anything. Used in the CLI process by `wasm-jobs module`
//! and, through [`Registry::resolve`], by the worker parent when it admits a
//! message; the fork server only reads the resolved blob files.

use crate::artifact_cache::content_digest;
use crate::executor::{Executor, LoadError};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default largest component a push accepts.
pub(crate) const DEFAULT_MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;
/// The tenant of a module pushed or looked up without one.
pub(crate) const DEFAULT_TENANT: &str = "default";

/// What went wrong with a registry operation.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A module or tenant name breaks the naming rule.
    #[error(
        "module name `{0}`: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    BadName(String),
    /// A reference is neither `NAME` nor `NAME@sha256:HEX`.
    #[error("`{0}` is not NAME or NAME@sha256:HEX (64 hex digits)")]
    BadReference(String),
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
        /// The file.
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
}

impl From<LoadError> for RegistryError {
    fn from(e: LoadError) -> Self {
        RegistryError::Invalid(e)
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
    /// The component file to load.
    pub path: PathBuf,
}

/// A registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A sha256 as the registry writes it: 64 lowercase hex digits. Digests
/// read from the registry's own files are checked with this before they
/// become part of a path.
fn valid_digest(s: &str) -> bool {
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

impl Registry {
    /// The registry in directory `root` (created on the first push).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry { root: root.into() }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
        let path = path.to_owned();
        move |source| RegistryError::Io {
            path: path.clone(),
            source,
        }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{digest}.wasm"))
    }

    fn module_dir(&self, tenant: &str, name: &str) -> PathBuf {
        self.root.join("modules").join(tenant).join(name)
    }

    /// Write `bytes` to `path` through a unique temporary file and a rename.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = path.parent().expect("registry paths have parents");
        fs::create_dir_all(dir).map_err(self.io(dir))?;
        let tmp = dir.join(format!(
            ".tmp.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(self.io(path))
    }

    /// Validate `file` as a job component (compiling it into `executor`'s
    /// cache) and store it as `name` for `tenant`. Nothing is stored when
    /// any check fails.
    pub fn push(
        &self,
        executor: &Executor,
        file: &Path,
        name: &str,
        tenant: &str,
        max_bytes: u64,
    ) -> Result<(ModuleVersion, crate::artifact_cache::CompileSource), RegistryError> {
        if !valid_name(name) {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        if !valid_name(tenant) {
            return Err(RegistryError::BadName(tenant.to_owned()));
        }
        let size = fs::metadata(file).map_err(self.io(file))?.len();
        if size > max_bytes {
            return Err(RegistryError::TooLarge {
                path: file.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        let bytes = fs::read(file).map_err(self.io(file))?;
        let loaded = executor.load_bytes(&bytes)?;
        let digest = content_digest(&bytes);
        let blob = self.blob(&digest);
        if !blob.is_file() {
            self.write_atomically(&blob, &bytes)?;
        }
        let version = ModuleVersion {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            digest: digest.clone(),
            size,
            pushed_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        let dir = self.module_dir(tenant, name);
        let record_path = dir.join(format!("{digest}.json"));
        let record = serde_json::to_vec_pretty(&version).expect("versions serialize");
        // A concurrent `rm` may take the directory away between our writes;
        // write again until the version record and `latest` stand together.
        let mut tries = 0;
        loop {
            tries += 1;
            let written = self
                .write_atomically(&record_path, &record)
                .and_then(|()| self.write_atomically(&dir.join("latest"), digest.as_bytes()));
            match written {
                Ok(()) if record_path.is_file() => break,
                Ok(()) if tries < 10 => continue,
                // The directory vanished or reappeared under a concurrent rm.
                Err(RegistryError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists
                    ) && tries < 10 =>
                {
                    continue;
                }
                Ok(()) => {
                    return Err(RegistryError::Io {
                        path: record_path,
                        source: std::io::Error::other("removed while being pushed"),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok((version, loaded.source))
    }

    /// Resolve `NAME` or `NAME@sha256:HEX` for `tenant`. A tenant sees only
    /// its own modules.
    pub fn resolve(&self, reference: &str, tenant: &str) -> Result<Resolved, RegistryError> {
        let (name, pinned) = parse_reference(reference)?;
        let dir = self.module_dir(tenant, &name);
        let not_found = || RegistryError::NotFound {
            name: name.clone(),
            tenant: tenant.to_owned(),
        };
        if !valid_name(tenant) || !dir.is_dir() {
            return Err(not_found());
        }
        let digest = match pinned {
            Some(d) => d,
            None => {
                let latest = dir.join("latest");
                let d = fs::read_to_string(&latest).map_err(|_| not_found())?;
                let d = d.trim();
                if !valid_digest(d) {
                    return Err(RegistryError::Corrupt {
                        path: latest,
                        why: format!(
                            "{:?} is not a sha256 digest",
                            d.chars().take(80).collect::<String>()
                        ),
                    });
                }
                d.to_owned()
            }
        };
        let record = fs::read(dir.join(format!("{digest}.json"))).map_err(|_| {
            RegistryError::NoSuchVersion {
                name: name.clone(),
                tenant: tenant.to_owned(),
                digest: digest.clone(),
            }
        })?;
        let version: ModuleVersion =
            serde_json::from_slice(&record).map_err(|e| RegistryError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e),
            })?;
        if version.digest != digest {
            return Err(RegistryError::Corrupt {
                path: dir.join(format!("{digest}.json")),
                why: format!("it records digest {:?}", version.digest),
            });
        }
        let path = self.blob(&version.digest);
        if !path.is_file() {
            return Err(not_found());
        }
        Ok(Resolved { version, path })
    }

    /// The bytes of a resolved module, checked against its digest. (A worker
    /// does not read blobs here: its fork server reads and checks each one
    /// once, when it first loads it.)
    pub fn read(&self, resolved: &Resolved) -> Result<Vec<u8>, RegistryError> {
        let bytes = fs::read(&resolved.path).map_err(self.io(&resolved.path))?;
        let actual = content_digest(&bytes);
        if actual != resolved.version.digest {
            return Err(RegistryError::Corrupt {
                path: resolved.path.clone(),
                why: format!("its bytes have digest {actual}"),
            });
        }
        Ok(bytes)
    }

    /// The latest version of every module (of one tenant, or all).
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<ModuleVersion>, RegistryError> {
        let modules = self.root.join("modules");
        let mut out = Vec::new();
        let tenants: Vec<String> = match tenant {
            Some(t) => vec![t.to_owned()],
            None => read_dir_names(&modules),
        };
        for t in tenants {
            for name in read_dir_names(&modules.join(&t)) {
                if let Ok(r) = self.resolve(&name, &t) {
                    out.push(r.version);
                }
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok(out)
    }

    /// Remove a module (every version of it) for `tenant`. Blobs stay: they
    /// are content-addressed and may back other names.
    pub fn remove(&self, name: &str, tenant: &str) -> Result<(), RegistryError> {
        let dir = self.module_dir(tenant, name);
        if !valid_name(name) || !dir.is_dir() {
            return Err(RegistryError::NotFound {
                name: name.to_owned(),
                tenant: tenant.to_owned(),
            });
        }
        // Rename first, so a concurrent resolve sees the module whole or gone.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let doomed = self.root.join("modules").join(format!(
            ".removed.{}.{}.{}.{}",
            tenant,
            name,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::NotFound {
                    name: name.to_owned(),
                    tenant: tenant.to_owned(),
                });
            }
            Err(e) => return Err(self.io(&dir)(e)),
        }
        // A push that raced us may still drop a temporary file in there.
        let mut tries = 0;
        loop {
            tries += 1;
            match fs::remove_dir_all(&doomed) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(_) if tries < 10 => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => return Err(self.io(&doomed)(e)),
            }
        }
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
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
}
