//! The S3 backend of the module registry: `s3://BUCKET/PREFIX`, shared by a
//! fleet of hosts (layout in `crate::registry`). Runs in the worker parent
//! (admission) and the CLI process (`module`), with the usual AWS
//! configuration: the credentials chain, `AWS_REGION`, and
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (which also switch to
//! path-style addressing, as S3-compatible servers expect).
//!
//! Consistency between hosts:
//! - blobs are written with `If-None-Match: *`: content-addressed, so a
//!   `412` means the same bytes are already there;
//! - a push writes blob, version record, then `latest`, so every `latest` a
//!   host reads names a version whose record and blob exist;
//! - the race that remains: two hosts pushing different components under
//!   one name at once both succeed, both versions stay pinnable, and
//!   `latest` is whichever `PUT` S3 applied last (S3 has no conditional
//!   write that orders them without a read first); a concurrent `rm` and
//!   push may leave the name present (the push wins) or removed.
//!
//! Each host re-reads what a reference resolves to only after
//! [`CacheSettings::latest_ttl`], so a new push reaches every worker within
//! that time without an S3 call per message; blobs are downloaded once,
//! checked against their digest, and kept in the host's [`BlobCache`].

use super::remote::Remote;
use super::{
    BlobEntry, CacheSettings, GcReport, ModuleVersion, RegistryError, Resolved, Upload,
    checked_latest, checked_record, parse_reference, plan_gc, valid_digest, valid_name,
};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
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
                let config = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(custom_endpoint)
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

    fn unavailable(&self, key: &str, e: impl std::error::Error) -> RegistryError {
        RegistryError::Unavailable {
            location: self.url(key),
            why: DisplayErrorContext(e).to_string(),
        }
    }

    /// The object's bytes, or `None` when there is no such key.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
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
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| self.unavailable(key, e))?;
                Ok(Some(body.into_bytes().to_vec()))
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
            Err(e) if only_new && e.code() == Some("PreconditionFailed") => Ok(()),
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.unavailable(prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let age = object
                    .last_modified()
                    .map_or(0, |t| (now - t.secs()).max(0) as u64);
                let size = object.size().unwrap_or(0).max(0) as u64;
                keys.push((key.to_owned(), size, Duration::from_secs(age)));
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
        let digest = match pinned {
            Some(d) => d,
            None => {
                let key = self.module_key(tenant, &name, "latest");
                let text = self.get(&key).await?.ok_or_else(not_found)?;
                checked_latest(&String::from_utf8_lossy(&text), self.url(&key).into())?
            }
        };
        let key = self.module_key(tenant, &name, &format!("{digest}.json"));
        match self.get(&key).await? {
            Some(record) => checked_record(&record, &digest, self.url(&key).into()),
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
        let fetch = async { self.get(&key).await?.ok_or_else(missing) };
        let path = self.remote.blob(&version, &self.url(&key), fetch).await?;
        Ok(Resolved { version, path })
    }

    /// The latest version of every module (of one tenant, or all).
    pub(crate) async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<ModuleVersion>, RegistryError> {
        let under = match tenant {
            Some(t) if !valid_name(t) => return Ok(Vec::new()),
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
        let mut report = plan_gc(blobs, &referenced, min_age);
        if !dry_run {
            for digest in &report.unreferenced {
                self.delete(&self.key(&format!("blobs/{digest}.wasm")))
                    .await?;
            }
            report.removed = true;
        }
        Ok(report)
    }
}
