//! What every remote registry backend (S3, OCI) does the same way on a
//! host, in the worker parent and the CLI process: remember what a
//! reference resolved to for the TTL, and keep each blob in the verified
//! [`BlobCache`], fetched once per digest at a time (concurrent admissions
//! of a new module wait for one download).

use super::cache::BlobCache;
use super::{CacheSettings, ModuleVersion, RegistryError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// else from `look_up` (and remembered).
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
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone());
        if let Some(v) = remembered {
            return Ok(v);
        }
        let v = look_up.await?;
        let mut map = self.resolved.lock().expect("resolved map");
        map.retain(|_, (_, at)| at.elapsed() < self.ttl);
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
        if let Some(path) = self.cache.get(digest) {
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
        let result = match self.cache.get(digest) {
            Some(path) => Ok(path),
            None => self.download(version, source, fetch).await,
        };
        self.downloads.lock().expect("downloads map").remove(digest);
        result
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
