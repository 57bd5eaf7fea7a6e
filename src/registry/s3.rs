//! The S3 backend of the module registry: `s3://BUCKET/PREFIX`, shared by a
//! fleet of hosts (layout in `crate::registry`). Runs in the worker parent
//! (admission) and the CLI process (`module`), with the usual AWS
//! configuration: the credentials chain, `AWS_REGION`, and
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (which also switch to
//! path-style addressing, as S3-compatible servers expect).
//!
//! Consistency between hosts:
//! - blobs are written with `If-None-Match: *`: content-addressed, so a
//!   `412` means the same bytes are already there. Such a blob is copied
//!   onto itself (server-side), so `gc` sees it as young as the push that
//!   needed it; `gc` lists blobs before records and checks each blob's age
//!   again just before deleting it;
//! - a push writes blob, version record, then `latest`, so every `latest` a
//!   host reads names a version whose record and blob exist;
//! - the races that remain: two hosts pushing different components under
//!   one name at once both succeed, both versions stay pinnable, and
//!   `latest` is whichever `PUT` S3 applied last (S3 has no conditional
//!   write that orders them without a read first); a concurrent `rm` and
//!   push may leave the name present (the push wins), removed, or with a
//!   `latest` whose record the `rm` deleted, which resolves as a broken
//!   registry (messages wait for redelivery) until the next push or `rm`.
//!
//! Each host re-reads what a reference resolves to only after
//! [`CacheSettings::latest_ttl`], so a new push reaches every worker within
//! that time without an S3 call per message; blobs are downloaded once,
//! checked against their digest, and kept in the host's cache
//! ([`super::remote`]).

use super::remote::Remote;
use super::{
    BlobEntry, CacheSettings, GcReport, ModuleVersion, RegistryError, Resolved, Upload,
    checked_latest, checked_record, parse_reference, plan_gc, valid_digest, valid_name,
};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A registry in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Registry {
    bucket: String,
    prefix: String,
    remote: Remote,
    client: Arc<tokio::sync::OnceCell<Client>>,
}

impl S3Registry {
    /// The registry under `prefix` (empty or ending in `/`) in `bucket`.
    pub fn new(bucket: String, prefix: String, cache: CacheSettings) -> Self {
        S3Registry {
            bucket,
            prefix,
            remote: Remote::new(cache),
            client: Arc::default(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                let custom_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                    .iter()
                    .any(|v| std::env::var_os(v).is_some());
                // A registry that stops answering fails the admission (the
                // message is left for redelivery) instead of holding it.
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(30))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .operation_timeout(Duration::from_secs(45))
                    .build();
                let config = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(custom_endpoint)
                    .timeout_config(timeouts)
                    .build();
                Client::from_conf(config)
            })
            .await
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn unavailable<E, R>(&self, key: &str, e: SdkError<E, R>) -> RegistryError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        RegistryError::Unavailable {
            location: self.url(key),
            why: brief(&e),
        }
    }

    /// The object's bytes (at most `max` of them, else `Corrupt`), or `None`
    /// when there is no such key.
    async fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, RegistryError> {
        match self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let len = out.content_length().unwrap_or(0).max(0) as u64;
                if len > max {
                    return Err(RegistryError::Corrupt {
                        path: self.url(key).into(),
                        why: format!("{len} bytes; at most {max} expected"),
                    });
                }
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| RegistryError::Unavailable {
                        location: self.url(key),
                        why: e.to_string(),
                    })?;
                Ok(Some(body.to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.unavailable(key, e)),
        }
    }

    /// Write an object; with `only_new`, keep an existing one instead.
    async fn put(&self, key: &str, bytes: Vec<u8>, only_new: bool) -> Result<(), RegistryError> {
        let mut req = self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes));
        if only_new {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if only_new && e.code() == Some("PreconditionFailed") => self.touch(key).await,
            Err(e) => Err(self.unavailable(key, e)),
        }
    }

    /// Give an existing object a new modification time (a copy onto itself,
    /// server-side), so `gc` sees it as young as the push that found it.
    async fn touch(&self, key: &str) -> Result<(), RegistryError> {
        self.client()
            .await
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .copy_source(format!("{}/{key}", self.bucket))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(key, e))
    }

    /// How long ago the object was last written; `None` if it is gone.
    async fn age(&self, key: &str) -> Result<Option<Duration>, RegistryError> {
        match self
            .client()
            .await
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(age_of(out.last_modified()))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.unavailable(key, e)),
        }
    }

    /// Every key under `prefix`, with its size and age.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<(String, u64, Duration)>, RegistryError> {
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.unavailable(prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let size = object.size().unwrap_or(0).max(0) as u64;
                keys.push((key.to_owned(), size, age_of(object.last_modified())));
            }
        }
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), RegistryError> {
        self.client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(key, e))
    }

    fn module_key(&self, tenant: &str, name: &str, file: &str) -> String {
        self.key(&format!("modules/{tenant}/{name}/{file}"))
    }

    /// Store a validated component: blob, version record, then `latest`.
    pub(crate) async fn store(&self, upload: &Upload) -> Result<(), RegistryError> {
        let v = &upload.version;
        let blob = self.key(&format!("blobs/{}.wasm", v.digest));
        self.put(&blob, upload.bytes.clone(), true).await?;
        let record = serde_json::to_vec_pretty(v).expect("versions serialize");
        let record_key = self.module_key(&v.tenant, &v.name, &format!("{}.json", v.digest));
        self.put(&record_key, record, false).await?;
        let latest = self.module_key(&v.tenant, &v.name, "latest");
        self.put(&latest, v.digest.clone().into_bytes(), false)
            .await
    }

    /// The version a reference names, read from the bucket.
    async fn version(&self, reference: &str, tenant: &str) -> Result<ModuleVersion, RegistryError> {
        let (name, pinned) = parse_reference(reference)?;
        let not_found = || RegistryError::NotFound {
            name: name.clone(),
            tenant: tenant.to_owned(),
        };
        if !valid_name(tenant) {
            return Err(not_found());
        }
        let latest = self.module_key(tenant, &name, "latest");
        let digest = match &pinned {
            Some(d) => d.clone(),
            None => {
                let text = self.get(&latest, SMALL).await?.ok_or_else(not_found)?;
                checked_latest(&String::from_utf8_lossy(&text), self.url(&latest).into())?
            }
        };
        let key = self.module_key(tenant, &name, &format!("{digest}.json"));
        let expected = (tenant, name.as_str(), digest.as_str());
        match self.get(&key, SMALL).await? {
            Some(record) => checked_record(&record, expected, self.url(&key).into()),
            None if pinned.is_none() => Err(RegistryError::Corrupt {
                path: self.url(&latest).into(),
                why: format!("it names version {digest}, which has no record"),
            }),
            None => Err(RegistryError::NoSuchVersion {
                name,
                tenant: tenant.to_owned(),
                digest,
            }),
        }
    }

    /// Resolve a reference to a file in this host's cache: the name within
    /// the TTL from memory, the blob downloaded and checked if not cached.
    pub(crate) async fn resolve(
        &self,
        reference: &str,
        tenant: &str,
    ) -> Result<Resolved, RegistryError> {
        let version = self
            .remote
            .version(tenant, reference, self.version(reference, tenant))
            .await?;
        let key = self.key(&format!("blobs/{}.wasm", version.digest));
        let missing = || RegistryError::Corrupt {
            path: self.url(&key).into(),
            why: "missing: a version refers to it".into(),
        };
        let fetch = async { self.get(&key, version.size).await?.ok_or_else(missing) };
        let path = self.remote.blob(&version, &self.url(&key), fetch).await?;
        Ok(Resolved { version, path })
    }

    /// The latest version of every module (of one tenant, or all).
    pub(crate) async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<ModuleVersion>, RegistryError> {
        let under = match tenant {
            Some(t) if !valid_name(t) => return Err(RegistryError::BadName(t.to_owned())),
            Some(t) => self.key(&format!("modules/{t}/")),
            None => self.key("modules/"),
        };
        let modules = self.key("modules/");
        let mut out = Vec::new();
        for (key, _, _) in self.list_keys(&under).await? {
            let parts: Vec<&str> = key[modules.len()..].split('/').collect();
            if let [t, name, "latest"] = parts[..] {
                match self.version(name, t).await {
                    Ok(v) => out.push(v),
                    Err(e) if e.is_passing() => return Err(e),
                    Err(_) => {}
                }
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok(out)
    }

    /// Remove a module (every version of it): `latest` first, so the name
    /// stops resolving before its versions go.
    pub(crate) async fn remove(&self, name: &str, tenant: &str) -> Result<(), RegistryError> {
        let not_found = || RegistryError::NotFound {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
        };
        if !valid_name(name) || !valid_name(tenant) {
            return Err(not_found());
        }
        let mut keys: Vec<String> = self
            .list_keys(&self.module_key(tenant, name, ""))
            .await?
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        if keys.is_empty() {
            return Err(not_found());
        }
        keys.sort_by_key(|k| !k.ends_with("/latest"));
        for key in keys {
            self.delete(&key).await?;
        }
        Ok(())
    }

    /// Find blobs no version record refers to, and remove those at least
    /// `min_age` old unless `dry_run`.
    pub(crate) async fn gc(
        &self,
        min_age: Duration,
        dry_run: bool,
    ) -> Result<GcReport, RegistryError> {
        // Blobs first, then records: a version recorded while we list still
        // keeps its blob.
        let blobs_prefix = self.key("blobs/");
        let blobs = self
            .list_keys(&blobs_prefix)
            .await?
            .into_iter()
            .filter_map(|(k, size, age)| {
                let digest = k[blobs_prefix.len()..].strip_suffix(".wasm")?;
                valid_digest(digest).then(|| BlobEntry {
                    digest: digest.to_owned(),
                    size,
                    age,
                })
            })
            .collect();
        let referenced: HashSet<String> = self
            .list_keys(&self.key("modules/"))
            .await?
            .into_iter()
            .filter_map(|(k, _, _)| {
                let file = k.rsplit('/').next()?;
                file.strip_suffix(".json")
                    .filter(|d| valid_digest(d))
                    .map(str::to_owned)
            })
            .collect();
        let mut report = plan_gc(blobs, &referenced, min_age);
        if !dry_run {
            for digest in &report.unreferenced {
                let key = self.key(&format!("blobs/{digest}.wasm"));
                // A push that found the blob since it was listed touched it.
                if self.age(&key).await?.is_some_and(|age| age >= min_age) {
                    self.delete(&key).await?;
                }
            }
            report.removed = true;
        }
        Ok(report)
    }
}

/// Largest `latest` or version record read: they are a few hundred bytes.
const SMALL: u64 = 64 * 1024;

/// How long ago an S3 time was.
fn age_of(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    Duration::from_secs(t.map_or(0, |t| (now - t.secs()).max(0) as u64))
}

/// An SDK error in one line: the service's code and message, or what kept
/// the request from being answered.
fn brief<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => err.to_string(),
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        other => {
            let mut why = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            why
        }
    }
}
