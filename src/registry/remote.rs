//! What every remote registry backend (S3, OCI) does the same way on a
//! host, in the worker parent and the CLI process: remember what a
//! reference resolved to for the TTL, and keep each blob in the verified
//! [`BlobCache`], fetched once per digest at a time (concurrent admissions
//! of a new module wait for one download). When the registry cannot be
//! read, a reference resolved before keeps its last answer (stale, and
//! logged as such) rather than failing every message while it is down.

use super::cache::BlobCache;
use super::{CacheSettings, ModuleVersion, RegistryError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// References remembered before expired ones are forgotten.
const MAX_REMEMBERED: usize = 10_000;

/// What `(tenant, reference)` resolved to, and when it was read.
type Remembered = HashMap<(String, String), (ModuleVersion, Instant)>;

/// A host's memory of a remote registry.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    cache: BlobCache,
    ttl: Duration,
    resolved: Arc<Mutex<Remembered>>,
    downloads: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Remote {
    pub(crate) fn new(settings: CacheSettings) -> Self {
        Remote {
            cache: BlobCache::new(settings.dir, settings.max_bytes),
            ttl: settings.latest_ttl,
            resolved: Arc::default(),
            downloads: Arc::default(),
        }
    }

    /// What `reference` names for `tenant`: from memory within the TTL,
    /// else from `look_up` (and remembered); the last answer if `look_up`
    /// fails because the registry does.
    pub(crate) async fn version(
        &self,
        tenant: &str,
        reference: &str,
        look_up: impl Future<Output = Result<ModuleVersion, RegistryError>>,
    ) -> Result<ModuleVersion, RegistryError> {
        let key = (tenant.to_owned(), reference.to_owned());
        let remembered = self
            .resolved
            .lock()
            .expect("resolved map")
            .get(&key)
            .cloned();
        if let Some((v, at)) = &remembered
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = match (look_up.await, remembered) {
            (Ok(v), _) => v,
            (Err(e), Some((v, at))) if e.is_passing() => {
                tracing::warn!(
                    reference,
                    error = %e,
                    age_s = at.elapsed().as_secs(),
                    "the registry cannot be read; using what the reference resolved to before"
                );
                return Ok(v);
            }
            (Err(e), _) => return Err(e),
        };
        let mut map = self.resolved.lock().expect("resolved map");
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        map.insert(key, (v.clone(), Instant::now()));
        Ok(v)
    }

    /// The version's blob in this host's cache; if missing, `fetch`ed from
    /// `source`, checked against the version's size and digest, and kept.
    pub(crate) async fn blob(
        &self,
        version: &ModuleVersion,
        source: &str,
        fetch: impl Future<Output = Result<Vec<u8>, RegistryError>>,
    ) -> Result<PathBuf, RegistryError> {
        let digest = &version.digest;
        if let Some(path) = self.cached(digest).await {
            return Ok(path);
        }
        let lock = Arc::clone(
            self.downloads
                .lock()
                .expect("downloads map")
                .entry(digest.clone())
                .or_default(),
        );
        let _downloading = lock.lock().await;
        let result = match self.cached(digest).await {
            Some(path) => Ok(path),
            None => self.download(version, source, fetch).await,
        };
        self.downloads.lock().expect("downloads map").remove(digest);
        result
    }

    /// [`BlobCache::get`], off the async threads the first time (when it
    /// reads and hashes the whole file: ~20 ms for an 18 MiB component).
    async fn cached(&self, digest: &str) -> Option<PathBuf> {
        if self.cache.is_checked(digest) {
            return self.cache.get(digest);
        }
        let (cache, digest) = (self.cache.clone(), digest.to_owned());
        tokio::task::spawn_blocking(move || cache.get(&digest))
            .await
            .ok()
            .flatten()
    }

    async fn download(
        &self,
        version: &ModuleVersion,
        source: &str,
        fetch: impl Future<Output = Result<Vec<u8>, RegistryError>>,
    ) -> Result<PathBuf, RegistryError> {
        let started = Instant::now();
        let bytes = fetch.await?;
        if bytes.len() as u64 != version.size {
            return Err(RegistryError::Corrupt {
                path: source.into(),
                why: format!(
                    "{} bytes, the version records {}",
                    bytes.len(),
                    version.size
                ),
            });
        }
        let cache = self.cache.clone();
        let digest = version.digest.clone();
        let from = source.to_owned();
        let path = tokio::task::spawn_blocking(move || cache.insert(&digest, &bytes, &from))
            .await
            .map_err(|e| RegistryError::Unavailable {
                location: source.to_owned(),
                why: e.to_string(),
            })??;
        tracing::info!(
            blob = source,
            bytes = version.size,
            took_ms = started.elapsed().as_millis() as u64,
            "downloaded and verified a module"
        );
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(digest: &str) -> ModuleVersion {
        ModuleVersion {
            name: "m".into(),
            tenant: "t".into(),
            digest: digest.into(),
            size: 1,
            pushed_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_name_is_reread_after_its_ttl_and_its_last_answer_serves_while_the_registry_is_down()
    {
        let dir = tempfile::tempdir().unwrap();
        let remote = Remote::new(CacheSettings {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            latest_ttl: Duration::from_millis(50),
        });
        let down = || async {
            Err(RegistryError::Unavailable {
                location: "s3://b/k".into(),
                why: "timed out".into(),
            })
        };
        let v1 = remote
            .version("t", "m", async { Ok(version("1")) })
            .await
            .unwrap();
        assert_eq!(v1.digest, "1");
        // Within the TTL: no look-up at all.
        let v = remote
            .version("t", "m", async { panic!("looked up") })
            .await
            .unwrap();
        assert_eq!(v.digest, "1");
        // Past it: read again, and a failing registry leaves the last answer.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let v = remote.version("t", "m", down()).await.unwrap();
        assert_eq!(v.digest, "1", "stale while the registry is down");
        let v = remote
            .version("t", "m", async { Ok(version("2")) })
            .await
            .unwrap();
        assert_eq!(v.digest, "2", "a new push, once readable");
        // Nothing remembered: the failure is the answer.
        assert!(remote.version("t", "other", down()).await.is_err());
        // A verdict (no such module) is never papered over.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let gone = async {
            Err(RegistryError::NotFound {
                name: "m".into(),
                tenant: "t".into(),
            })
        };
        assert!(remote.version("t", "m", gone).await.is_err());
    }
}
