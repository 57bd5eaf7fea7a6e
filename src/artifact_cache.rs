//! Compiled-component cache: native code for a component, stored under a key
//! made of the component's sha256 and the engine's compatibility hash.
//!
//! Only files this cache wrote itself are ever deserialized (a user never
//! hands us precompiled code). Each entry ends with an HMAC-SHA256 tag, keyed
//! by this machine's artifact key (`artifact.key` in the cache directory: 32
//! random bytes as hex, mode 0600, owned by the worker's user, created on
//! first use) over the entry's name (which binds the component's digest and
//! the engine) and its bytes. An entry is read once, without following
//! symlinks, checked in memory and deserialized from those same bytes; one
//! whose tag does not verify (tampered, swapped for another module's, or
//! written under another key) or that does not deserialize is logged,
//! recompiled and replaced, never run. Entries are written to a temporary
//! file and renamed, so concurrent writers on one machine never expose a
//! half-written artifact.
//!
//! Used wherever the executor loads components: the fork server loads cached
//! artifacts, its compile helpers compile and store them, and the CLI process
//! does both for `exec` and `module push|inspect`. The worker parent only
//! uses [`content_digest`].

use crate::signing::{KeyError, SigningKey};
use sha2::{Digest, Sha256};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
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
    /// The component's copy-on-write memory images could not be made.
    #[error("preparing the component's memory images: {0:#}")]
    Image(#[source] wasmtime::Error),
    /// The artifact key could not be created or is not private.
    #[error("artifact key: {0}")]
    Key(#[source] KeyError),
}

/// The artifact key's file in the cache directory.
const KEY_FILE: &str = "artifact.key";
/// What the tag binds besides the entry's name and bytes.
const TAG_DOMAIN: &[u8] = b"wasm-jobs artifact v1";
/// Length of the HMAC-SHA256 tag at the end of each entry.
const TAG_BYTES: usize = 32;

/// A directory of compiled artifacts for one engine configuration.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// Loaded (or created) on first use.
    key: OnceLock<SigningKey>,
}

/// The sha256 of a component's bytes, as lowercase hex.
pub fn content_digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

impl ArtifactCache {
    /// A cache in `dir`, created on the first store.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        ArtifactCache {
            dir: dir.into(),
            key: OnceLock::new(),
        }
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
    /// it is not cached (or the cached entry does not verify).
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> Result<(Component, CompileSource), CacheError> {
        if let Some(component) = self.load_cached(engine, wasm)? {
            return Ok((component, CompileSource::Cached));
        }
        self.compile(engine, wasm)
    }

    /// Compile `wasm` and store the tagged artifact, whatever is cached.
    pub(crate) fn compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> Result<(Component, CompileSource), CacheError> {
        let started = Instant::now();
        let compiled = engine
            .precompile_component(wasm)
            .map_err(CacheError::Compile)?;
        let took = started.elapsed();
        let path = self.artifact_path(engine, wasm);
        let tag = self.key()?.tag(&[TAG_DOMAIN, entry_name(&path), &compiled]);
        self.store(&path, &[&compiled, &tag])?;
        // SAFETY: these bytes come from our own compile, just now.
        let component =
            unsafe { deserialize_verified(engine, &compiled) }.map_err(CacheError::Compile)?;
        Ok((ready(component)?, CompileSource::Compiled { took }))
    }

    /// The cached compiled form of `wasm`, if there is an entry and it
    /// verifies; `None` otherwise (a bad entry is logged). Never compiles.
    pub(crate) fn load_cached(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> Result<Option<Component>, CacheError> {
        let path = self.artifact_path(engine, wasm);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        match opened {
            Ok(mut f) if f.metadata().map_err(io)?.is_file() => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "cached artifact is not a regular file; recompiling");
                return Ok(None);
            }
        }
        tracing::debug!(path = %path.display(), bytes = bytes.len(), "loading a compiled component from the artifact cache");
        let key = self.key()?;
        let verified = bytes
            .len()
            .checked_sub(TAG_BYTES)
            .map(|at| bytes.split_at(at))
            .filter(|(artifact, tag)| key.verify(&[TAG_DOMAIN, entry_name(&path), artifact], tag));
        let Some((artifact, _)) = verified else {
            tracing::warn!(
                path = %path.display(),
                "cached artifact failed verification (changed, swapped or written under another key); recompiling"
            );
            return Ok(None);
        };
        // SAFETY: `artifact` carries this machine's key's tag over this
        // entry's name, so `load_or_compile` wrote it from our own compile of
        // this component for this engine; it was checked in memory, and these
        // same bytes are deserialized, so nothing changed after the check.
        match unsafe { deserialize_verified(engine, artifact) } {
            Ok(c) => Ok(Some(ready(c)?)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached artifact unusable; recompiling");
                Ok(None)
            }
        }
    }

    /// This machine's artifact key, created on first use.
    fn key(&self) -> Result<&SigningKey, CacheError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = load_or_create_key(&self.dir)?;
        Ok(self.key.get_or_init(|| key))
    }

    fn store(&self, path: &Path, parts: &[&[u8]]) -> Result<(), CacheError> {
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
        for part in parts {
            f.write_all(part).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }
}

/// The entry's file name, which the tag binds.
fn entry_name(path: &Path) -> &[u8] {
    path.file_name().map_or(&[], |n| n.as_encoded_bytes())
}

/// Make the component's copy-on-write memory images now, once, in this
/// process: a fork server's children then share them instead of each
/// building its own (which would also need `memfd_create` in the child).
fn ready(component: Component) -> Result<Component, CacheError> {
    component
        .initialize_copy_on_write_image()
        .map_err(CacheError::Image)?;
    Ok(component)
}

/// Read the artifact key in `dir`, or create it: 32 random bytes as hex,
/// written to a private temporary file and hard-linked into place, so two
/// processes creating it at once agree on one key.
fn load_or_create_key(dir: &Path) -> Result<SigningKey, CacheError> {
    let path = dir.join(KEY_FILE);
    match SigningKey::load(&path) {
        Ok(key) => return Ok(key),
        Err(KeyError::Open(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CacheError::Key(e)),
    }
    let io = |source| CacheError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let written = f
        .write_all(format!("{}\n", hex::encode(rand::random::<[u8; 32]>())).as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => tracing::info!(path = %path.display(), "created the artifact key"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    SigningKey::load(&path).map_err(CacheError::Key)
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

/// Deserialize verified artifact bytes into huge pages where the kernel
/// gives them ([`deserialize_in_huge_pages`]), else through a sealed memory
/// file, so that wasmtime maps the code as it maps a file on disk: forked
/// worker children then share those pages instead of copying a page-table
/// entry per small page at every fork (bytes deserialized from memory live
/// in anonymous pages, which fork copies and exit drops: a measurable cost
/// per job for an 18 MB guest). The file is sealed (no write, grow or shrink,
/// no more seals) before wasmtime maps it, so the code cannot change after
/// its check. Where memory files or `/proc` are missing, the bytes are
/// deserialized from memory as they are.
///
/// # Safety
/// As [`Component::deserialize`]: `artifact` must come from this engine's
/// own compile (here: tagged with this machine's key, or just compiled).
unsafe fn deserialize_verified(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: as the caller vouches.
    if let Some(c) = unsafe { deserialize_in_huge_pages(engine, artifact) } {
        return Ok(c);
    }
    use std::os::fd::AsRawFd;
    match crate::sealed_file::sealed_file(c"wasm-jobs-artifact", &[(0, artifact)]) {
        Ok(file) => {
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            // SAFETY: the sealed file holds exactly `artifact`'s bytes, which
            // the caller vouches for, and can no longer change.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot map the sealed artifact; loading it from memory")
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot make a sealed artifact file; loading it from memory")
        }
    }
    // SAFETY: as above.
    unsafe { Component::deserialize(engine, artifact) }
}

/// Deserialize from memory into anonymous memory and collapse the code
/// into huge pages ([`crate::hugepages`]): fork then copies a few entries
/// per 2 MiB and children fault nothing in. The ends left in small pages
/// are mapped from a sealed memory file ([`crate::hugepages::file_back_edges`]),
/// which fork need not copy. `None` where huge pages are
/// not to be had (the caller maps a sealed file instead, whose pages
/// children fault in but fork need not copy).
///
/// # Safety
/// As [`deserialize_verified`].
unsafe fn deserialize_in_huge_pages(engine: &Engine, artifact: &[u8]) -> Option<Component> {
    // SAFETY: as the caller vouches.
    let component = unsafe { Component::deserialize(engine, artifact) }.ok()?;
    let image = component.image_range();
    let image = image.start as usize..image.end as usize;
    // SAFETY: wasmtime's own anonymous mapping of this component's code,
    // alive as long as `component`.
    match unsafe { crate::hugepages::collapse(image.clone()) } {
        Ok(bytes) => {
            tracing::debug!(bytes, "compiled code in huge pages");
            let text = component.text().as_ptr_range();
            // SAFETY: as above; `text` is that code's executable part.
            match unsafe {
                crate::hugepages::file_back_edges(image, text.start as usize..text.end as usize)
            } {
                Ok(bytes) => tracing::debug!(bytes, "compiled code's edges mapped from a file"),
                Err(e) => tracing::debug!(error = %e, "compiled code's edges stay anonymous"),
            }
            Some(component)
        }
        Err(e) => {
            tracing::debug!(error = %e, "compiled code stays in small pages");
            None
        }
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
    fn cached_code_is_mapped_from_a_sealed_file_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path());
        let engine = build_engine(EngineSettings::default()).unwrap();
        let wasm = crate::bundled::demo_job_component().unwrap();
        let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
        let before = maps().matches("memfd:wasm-jobs-artifact").count();
        let (_compiled, _) = cache.load_or_compile(&engine, &wasm).unwrap();
        let cached = cache
            .load_cached(&engine, &wasm)
            .unwrap()
            .expect("cached now");
        let after = maps().matches("memfd:wasm-jobs-artifact").count();
        assert!(after >= before + 2, "{before} -> {after} mappings");
        drop(cached);
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            content_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
