//! The directory backend of the module registry (see `crate::registry` for
//! the layout): the data dir's `registry/` by default, or a shared mount.
//!
//! Every file is written to a temporary name and renamed, so concurrent
//! pushes and removes never leave a half-written file; a removed module's
//! directory is renamed away before it is deleted, so a resolve sees it
//! whole or gone.

use super::{
    BlobEntry, GcReport, ModuleVersion, RegistryError, Resolved, Upload, checked_latest,
    checked_record, parse_reference, plan_gc, valid_digest, valid_name,
};
use crate::artifact_cache::content_digest;
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A registry directory.
#[derive(Debug, Clone)]
pub struct DirRegistry {
    root: PathBuf,
}

impl DirRegistry {
    /// The registry in directory `root` (created on the first push).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirRegistry { root: root.into() }
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
        let path = path.to_owned();
        move |source| RegistryError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Where the blob `digest` is kept.
    pub(crate) fn blob(&self, digest: &str) -> PathBuf {
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

    /// Store a validated component: blob, version record, then `latest`.
    pub(crate) fn store(&self, upload: &Upload) -> Result<(), RegistryError> {
        let version = &upload.version;
        let digest = &version.digest;
        let blob = self.blob(digest);
        // An existing blob with the right bytes is touched, so `gc` sees it
        // as young as this push; a missing or damaged one is written.
        let intact = fs::read(&blob).is_ok_and(|b| content_digest(&b) == *digest);
        let touched = intact
            && fs::File::options()
                .append(true)
                .open(&blob)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                .is_ok();
        if !touched {
            self.write_atomically(&blob, &upload.bytes)?;
        }
        let dir = self.module_dir(&version.tenant, &version.name);
        let record_path = dir.join(format!("{digest}.json"));
        let record = serde_json::to_vec_pretty(version).expect("versions serialize");
        // A concurrent `rm` may take the directory away between our writes;
        // write again until the version record and `latest` stand together.
        let mut tries = 0;
        loop {
            tries += 1;
            let written = self
                .write_atomically(&record_path, &record)
                .and_then(|()| self.write_atomically(&dir.join("latest"), digest.as_bytes()));
            match written {
                Ok(()) if record_path.is_file() => return Ok(()),
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
        if !valid_name(tenant) {
            return Err(not_found());
        }
        // A registry that is not there (an unmounted share) is not the
        // message's fault; a module that is not in it is.
        fs::metadata(&self.root).map_err(self.io(&self.root))?;
        let missing = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let latest = dir.join("latest");
        let digest = match &pinned {
            Some(d) => d.clone(),
            None => match fs::read_to_string(&latest) {
                Ok(d) => checked_latest(&d, latest.clone())?,
                Err(e) if missing(&e) => return Err(not_found()),
                Err(e) => return Err(self.io(&latest)(e)),
            },
        };
        let record_path = dir.join(format!("{digest}.json"));
        let record = match fs::read(&record_path) {
            Ok(r) => r,
            Err(e) if missing(&e) && pinned.is_none() => {
                return Err(RegistryError::Corrupt {
                    path: latest,
                    why: format!("it names version {digest}, which has no record"),
                });
            }
            Err(e) if missing(&e) => {
                return Err(RegistryError::NoSuchVersion {
                    name: name.clone(),
                    tenant: tenant.to_owned(),
                    digest: digest.clone(),
                });
            }
            Err(e) => return Err(self.io(&record_path)(e)),
        };
        let version = checked_record(&record, (tenant, &name, &digest), record_path)?;
        let path = self.blob(&version.digest);
        if !path.is_file() {
            return Err(RegistryError::Corrupt {
                path,
                why: "missing: a version refers to it".into(),
            });
        }
        Ok(Resolved { version, path })
    }

    /// The latest version of every module (of one tenant, or all).
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<ModuleVersion>, RegistryError> {
        let modules = self.root.join("modules");
        let mut out = Vec::new();
        let tenants: Vec<String> = match tenant {
            Some(t) if !valid_name(t) => return Err(RegistryError::BadName(t.to_owned())),
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
    /// Find blobs no version record refers to, and remove those at least
    /// `min_age` old unless `dry_run`.
    pub fn gc(&self, min_age: Duration, dry_run: bool) -> Result<GcReport, RegistryError> {
        // Blobs first, then records: a version recorded while we list still
        // keeps its blob.
        let blobs_dir = self.root.join("blobs");
        let mut blobs = Vec::new();
        for entry in fs::read_dir(&blobs_dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(digest) = file.strip_suffix(".wasm").filter(|d| valid_digest(d)) else {
                continue;
            };
            let meta = entry.metadata().map_err(self.io(&entry.path()))?;
            let age = age(&meta);
            blobs.push(BlobEntry {
                digest: digest.to_owned(),
                size: meta.len(),
                age,
            });
        }
        let modules = self.root.join("modules");
        let mut referenced = HashSet::new();
        for tenant in read_dir_names(&modules) {
            for name in read_dir_names(&modules.join(&tenant)) {
                let dir = self.module_dir(&tenant, &name);
                // A module removed while we look has no records left.
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let file = entry.file_name().to_string_lossy().into_owned();
                    if let Some(d) = file.strip_suffix(".json").filter(|d| valid_digest(d)) {
                        referenced.insert(d.to_owned());
                    }
                }
            }
        }
        let mut report = plan_gc(blobs, &referenced, min_age);
        if !dry_run {
            for digest in &report.unreferenced {
                let blob = self.blob(digest);
                // A push that found the blob since it was listed touched it.
                if fs::metadata(&blob).is_ok_and(|m| age(&m) < min_age) {
                    continue;
                }
                match fs::remove_file(&blob) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io(&blob)(e)),
                }
            }
            report.removed = true;
        }
        Ok(report)
    }
}

/// How long ago a file was last written.
fn age(meta: &fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .unwrap_or_default()
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
