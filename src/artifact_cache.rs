//! Compiled-component cache: native code for a component, stored under a key
//! made of the component's sha256 and the engine's compatibility hash.
//!
//! Only files this cache wrote itself are ever deserialized (a user never
//! hands us precompiled code); a corrupt or stale entry is recompiled and
//! replaced. Entries are written to a temporary file and renamed, so
//! concurrent writers on one machine never expose a half-written artifact.
//!
//! Used wherever the executor loads components: the fork server loads cached
//! artifacts, its compile helpers compile and store them, and the CLI process
//! does both for `exec` and `module push|inspect`. The worker parent only
//! uses [`content_digest`].

use sha2::{Digest, Sha256};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a loaded component's native code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum CompileSource {
    /// Loaded from the cache; nothing was compiled.
    Cached,
    /// Compiled now (and stored for next time), taking this long.
    Compiled {
        /// The compile time (milliseconds in JSON).
        #[serde(serialize_with = "as_millis")]
        took: Duration,
    },
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Why loading a component through the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory or an artifact file could not be written.
    #[error("cannot use compiled-artifact cache at {path}: {source}")]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// wasmtime could not compile the component: the component's fault.
    #[error("compiling the component failed: {0:#}")]
    Compile(#[source] wasmtime::Error),
}

/// A directory of compiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// The sha256 of a component's bytes, as lowercase hex.
pub fn content_digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

impl ArtifactCache {
    /// A cache in `dir`, created on the first store.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache { dir: dir.into() }
    }

    /// The file an artifact for `wasm` compiled by `engine` lives in.
    pub fn artifact_path(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(wasm);
        let key = hex::encode(hasher.0.finalize());
        self.dir.join(format!("{key}.cwasm"))
    }

    /// Whether an artifact for `wasm` is already cached.
    pub(crate) fn contains(&self, engine: &Engine, wasm: &[u8]) -> bool {
        self.artifact_path(engine, wasm).is_file()
    }

    /// Load the compiled form of `wasm`, compiling and storing it first when
    /// it is not cached (or the cached file is unusable).
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> Result<(Component, CompileSource), CacheError> {
        let path = self.artifact_path(engine, wasm);
        if path.is_file() {
            // SAFETY: `path` is inside our cache directory and was written by
            // `store` below from `Engine::precompile_component`; user-supplied
            // bytes are only ever compiled, never deserialized.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, CompileSource::Cached)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cached artifact unusable; recompiling"
                ),
            }
        }
        let started = Instant::now();
        let compiled = engine
            .precompile_component(wasm)
            .map_err(CacheError::Compile)?;
        let took = started.elapsed();
        self.store(&path, &compiled)?;
        // SAFETY: as above; the file was just written from our own compile.
        let component =
            unsafe { Component::deserialize_file(engine, &path) }.map_err(CacheError::Compile)?;
        Ok((component, CompileSource::Compiled { took }))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let io = |source| CacheError::Io {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io)?;
        // Unique per process and per call: a file another thread or process
        // has mapped is never truncated, only replaced by rename.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("artifact"),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }
}

/// Feeds `Hash` output into sha256, so the key is stable across processes
/// and builds (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only used through `finalize`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineSettings, build_engine};

    #[test]
    fn key_depends_on_engine_settings_and_bytes() {
        let cache = ArtifactCache::new("/nonexistent");
        let plain = build_engine(EngineSettings::default()).unwrap();
        let fuel = build_engine(EngineSettings {
            fuel_metering: true,
        })
        .unwrap();
        let a = cache.artifact_path(&plain, b"one");
        assert_eq!(a, cache.artifact_path(&plain, b"one"));
        assert_ne!(a, cache.artifact_path(&plain, b"two"));
        assert_ne!(a, cache.artifact_path(&fuel, b"one"));
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            content_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
