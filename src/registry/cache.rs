//! A host's cache of blobs downloaded from a remote registry, in the worker
//! parent (and the CLI process for `module inspect`): `<data dir>/registry-cache/<hex>.wasm`.
//!
//! A blob enters only after its bytes are checked against the digest it was
//! asked for, through a temporary file (0600, in a 0700 directory) and a
//! rename, so a file here always has the digest in its name. Each use sets
//! the file's modification time; when the cache grows past its cap, the
//! least recently used blobs are removed (never the one just added). The
//! fork server loads a blob once and keeps it, so a blob evicted after
//! admission is only read again if that fork server restarts, and then
//! downloaded again on the next admission.

use super::RegistryError;
use crate::artifact_cache::content_digest;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The downloaded-blob cache.
#[derive(Debug, Clone)]
pub(crate) struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl BlobCache {
    pub(crate) fn new(dir: PathBuf, max_bytes: u64) -> Self {
        BlobCache { dir, max_bytes }
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

    /// The cached blob with this digest, marked as just used.
    pub(crate) fn get(&self, digest: &str) -> Option<PathBuf> {
        let path = self.path(digest);
        let file = fs::File::options().append(true).open(&path).ok()?;
        // A failed touch only makes the blob look older to eviction.
        let _ = file.set_modified(SystemTime::now());
        Some(path)
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Self::io(&self.dir))?;
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
        self.evict(digest);
        Ok(path)
    }

    /// Remove least recently used blobs (never `keep`) until the cache fits.
    fn evict(&self, keep: &str) {
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
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
}
