//! A host's cache of blobs downloaded from a remote registry, in the worker
//! parent (and the CLI process for `module inspect`): `<data dir>/registry-cache/<hex>.wasm`.
//!
//! A blob enters only after its bytes are checked against the digest it was
//! asked for, through a temporary file (0600, in a 0700 directory that is not
//! a symlink) and a rename, so a file here has the digest in its name. Each
//! process checks a cached blob's bytes again the first time it uses it
//! (the directory may have been damaged since), removing one that does not
//! match so it is downloaded again; only regular files are opened, without
//! following symlinks. Each use sets the file's modification time; when the cache grows past its cap, the
//! least recently used blobs are removed (never the one just added). The
//! fork server loads a blob once and keeps it, so a blob evicted after
//! admission is only read again if that fork server restarts, and then
//! downloaded again on the next admission.

use super::RegistryError;
use crate::artifact_cache::content_digest;
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The downloaded-blob cache.
#[derive(Debug, Clone)]
pub(crate) struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Digests whose cached bytes this process has checked.
    checked: Arc<Mutex<HashSet<String>>>,
}

/// Open a regular file without following a symlink or blocking on a FIFO.
fn open_regular(path: &Path, write: bool) -> Option<fs::File> {
    let file = fs::File::options()
        .read(true)
        .append(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

impl BlobCache {
    pub(crate) fn new(dir: PathBuf, max_bytes: u64) -> Self {
        BlobCache {
            dir,
            max_bytes,
            checked: Arc::default(),
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
        move |source| RegistryError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether this process has checked the cached bytes of `digest` (so
    /// [`BlobCache::get`] only opens and touches the file).
    pub(crate) fn is_checked(&self, digest: &str) -> bool {
        self.checked.lock().expect("checked set").contains(digest)
    }

    /// The cached blob with this digest, marked as just used; `None` if it
    /// is not cached, or its bytes no longer have the digest (then removed).
    pub(crate) fn get(&self, digest: &str) -> Option<PathBuf> {
        let path = self.path(digest);
        let mut file = open_regular(&path, true)?;
        if !self.checked.lock().expect("checked set").contains(digest) {
            let mut bytes = Vec::new();
            let intact = file.read_to_end(&mut bytes).is_ok() && content_digest(&bytes) == digest;
            if !intact {
                tracing::warn!(blob = %path.display(), "a cached blob no longer has its digest; removed, to be downloaded again");
                let _ = fs::remove_file(&path);
                return None;
            }
            self.checked
                .lock()
                .expect("checked set")
                .insert(digest.to_owned());
        }
        // A failed touch only makes the blob look older to eviction.
        let _ = file.set_modified(SystemTime::now());
        Some(path)
    }

    /// Create the directory 0700, or make an existing one private; refuse
    /// a symlink or anything that is not a directory.
    fn private_dir(&self) -> Result<(), RegistryError> {
        use std::os::unix::fs::PermissionsExt;
        let io = Self::io(&self.dir);
        match fs::symlink_metadata(&self.dir) {
            Ok(m) if m.is_dir() => {
                if m.permissions().mode() & 0o077 != 0 {
                    fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                        .map_err(io)?;
                }
                Ok(())
            }
            Ok(_) => Err(io(std::io::Error::other(
                "not a directory (a symlink or a file); remove it",
            ))),
            Err(_) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io),
        }
    }

    /// Store `bytes` as the blob `digest` if they have that digest; else a
    /// `Corrupt` error naming `source` (where they came from).
    pub(crate) fn insert(
        &self,
        digest: &str,
        bytes: &[u8],
        source: &str,
    ) -> Result<PathBuf, RegistryError> {
        let actual = content_digest(bytes);
        if actual != digest {
            return Err(RegistryError::Corrupt {
                path: PathBuf::from(source),
                why: format!("downloaded bytes have digest {actual}, not {digest}"),
            });
        }
        self.private_dir()?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".tmp.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let path = self.path(digest);
        let written = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(Self::io(&path))?;
        self.checked
            .lock()
            .expect("checked set")
            .insert(digest.to_owned());
        self.evict(digest);
        Ok(path)
    }

    /// Remove least recently used blobs (never `keep`) until the cache fits.
    fn evict(&self, keep: &str) {
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let m = e.path().symlink_metadata().ok()?;
                let modified = m.modified().ok()?;
                // Leftovers of a writer that died go once they are an hour old.
                let stale = modified.elapsed().is_ok_and(|a| a.as_secs() > 3600);
                if name.starts_with(".tmp.") && m.is_file() && stale {
                    let _ = fs::remove_file(e.path());
                    return None;
                }
                (name.ends_with(".wasm") && m.is_file()).then(|| (modified, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        let keep = self.path(keep);
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                tracing::info!(blob = %path.display(), bytes = len, "evicted from the registry cache");
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_bytes_with_the_digest_enter_and_the_least_recently_used_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path().join("c"), 25);
        let blob = |b: &[u8]| (content_digest(b), b.to_vec());
        let (da, a) = blob(&[1; 10]);
        let (db, b) = blob(&[2; 10]);
        let (dc, c) = blob(&[3; 10]);

        let e = cache.insert(&da, &b, "s3://bucket/blobs/a").unwrap_err();
        assert!(
            e.to_string().contains("downloaded bytes have digest"),
            "{e}"
        );
        assert!(e.is_passing());
        assert!(cache.get(&da).is_none(), "nothing stored");

        let pa = cache.insert(&da, &a, "a").unwrap();
        assert_eq!(fs::read(&pa).unwrap(), a);
        cache.insert(&db, &b, "b").unwrap();
        // a was used after b: b is now the least recently used.
        let later = SystemTime::now() + Duration::from_secs(5);
        fs::File::options()
            .append(true)
            .open(&pa)
            .unwrap()
            .set_modified(later)
            .unwrap();
        cache.insert(&dc, &c, "c").unwrap();
        assert!(cache.get(&db).is_none(), "b evicted");
        assert!(cache.get(&da).is_some() && cache.get(&dc).is_some());

        // Damaged on disk: a fresh process (a new cache value) notices,
        // removes it, and asks for a download.
        fs::write(&pa, b"not the bytes").unwrap();
        let fresh = BlobCache::new(dir.path().join("c"), 25);
        assert!(fresh.get(&da).is_none());
        assert!(!pa.exists(), "removed");
        let pa = fresh.insert(&da, &a, "a").unwrap();

        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&pa).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(dir.path().join("c"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn the_cache_directory_is_private_and_holds_only_regular_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (d, b) = (content_digest(b"x"), b"x".to_vec());
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
        let e = BlobCache::new(dir.path().join("link"), 100)
            .insert(&d, &b, "s")
            .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);

        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let cache = BlobCache::new(open.clone(), 100);
        cache.insert(&d, &b, "s").unwrap();
        let mode = fs::metadata(&open).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "made private");

        // A FIFO or a symlink in a blob's place is never used (nor waited on).
        let fifo = content_digest(b"y");
        nix::unistd::mkfifo(
            &open.join(format!("{fifo}.wasm")),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(cache.get(&fifo).is_none());
        let linked = content_digest(b"z");
        fs::write(victim.join("z"), b"z").unwrap();
        std::os::unix::fs::symlink(victim.join("z"), open.join(format!("{linked}.wasm"))).unwrap();
        assert!(cache.get(&linked).is_none());
    }
}
