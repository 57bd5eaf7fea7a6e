//! An OCI registry as the module registry: `--registry
//! oci://HOST[:PORT][/PREFIX]`, used by the CLI process (`module
//! push|list|inspect|rm`) and by the worker parent when it admits a
//! message. The names are the other backends' names, kept the way an OCI
//! registry keeps things:
//! - module `NAME` of tenant `T` is the repository `PREFIX/T/NAME`;
//! - each pushed version is a Wasm OCI artifact (see [`super::oci`]) tagged
//!   `sha256-HEX` after its component's digest, so `NAME@sha256:HEX` pins
//!   it (and any OCI tool can pull it);
//! - `latest` is the tag `NAME` resolves to; a push moves it only after the
//!   version's own tag exists, and the registry refuses a manifest whose
//!   blobs it does not hold, so `latest` never names missing bytes.
//!
//! `list` reads the registry's catalog (`/v2/_catalog`: registries that do
//! not offer it cannot list); `rm` deletes every manifest of the
//! repository by digest (the registry must allow deletes: for
//! `docker-registry`, `storage.delete.enabled`). Blobs belong to the
//! registry: the distribution API cannot enumerate them, and a registry
//! reclaims the blobs no manifest refers to with its own garbage
//! collector, so `module gc` explains that instead of doing nothing.
//!
//! Races: two hosts pushing one name at once both succeed and both
//! versions stay pinnable; `latest` is whichever tag write the registry
//! applied last. An `rm` racing a push may leave the name present.

use super::oci::{OciModules, OciRef, auth, loopback};
use super::{
    CacheSettings, ModuleVersion, RegistryError, Resolved, Upload, parse_reference, valid_name,
};
use crate::executor::Executor;
use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The most repositories or tags one listing reads.
const MAX_NAMES: usize = 100_000;

/// An OCI registry's repositories under a prefix.
#[derive(Debug, Clone)]
pub struct OciRegistry {
    /// `HOST[:PORT]`.
    registry: String,
    /// Empty, or ending in `/`.
    prefix: String,
    modules: OciModules,
    /// For manifest deletes, which the OCI client does not offer.
    http: Arc<OnceLock<reqwest::Client>>,
}

impl OciRegistry {
    /// The repositories under `prefix` in `registry` (as parsed by
    /// [`super::Location::parse`]), caching blobs under `cache`.
    pub fn new(registry: String, prefix: String, cache: CacheSettings) -> Self {
        OciRegistry {
            registry,
            prefix,
            modules: OciModules::new(cache),
            http: Arc::default(),
        }
    }

    /// `oci://HOST/PREFIX/TENANT/NAME:TAG`, if the names make a valid
    /// repository (OCI's rule is stricter than the registry's: no `-` or
    /// `.` at an end, no `..`).
    fn reference(&self, tenant: &str, name: &str, tag: &str) -> Result<OciRef, RegistryError> {
        OciRef::parse(&format!(
            "oci://{}/{}{tenant}/{name}:{tag}",
            self.registry, self.prefix
        ))
    }

    fn location(&self) -> String {
        format!("oci://{}/{}", self.registry, self.prefix)
    }

    /// The tenant whose repositories hold `r`, if `r` is in this registry
    /// under its prefix.
    pub(crate) fn owner_of(&self, r: &OciRef) -> Option<String> {
        let repo = r.repository();
        let (host, path) = repo.split_once('/')?;
        if !host.eq_ignore_ascii_case(&self.registry) {
            return None;
        }
        let rest = path.strip_prefix(&self.prefix)?;
        Some(rest.split('/').next().unwrap_or(rest).to_owned())
    }

    /// Check a tenant name as the other backends do.
    fn tenant(tenant: &str) -> Result<(), RegistryError> {
        if valid_name(tenant) {
            Ok(())
        } else {
            Err(RegistryError::BadName(tenant.to_owned()))
        }
    }

    /// Push a validated upload: its version's tag, then `latest`.
    pub(crate) async fn store(
        &self,
        executor: &Executor,
        upload: &Upload,
    ) -> Result<(), RegistryError> {
        let v = &upload.version;
        let unfit = |e: RegistryError| {
            RegistryError::BadOciReference(format!(
                "module `{}` of tenant `{}` cannot be kept in {}: {e} (OCI repository names are lowercase letters and digits joined by single `.`, `_`, `__` or `-` runs, at most 255 characters with the host)",
                v.name,
                v.tenant,
                self.location()
            ))
        };
        let version = self
            .reference(&v.tenant, &v.name, &format!("sha256-{}", v.digest))
            .map_err(unfit)?;
        let latest = self.reference(&v.tenant, &v.name, "latest")?;
        let described = executor.describe(&upload.bytes)?;
        self.modules
            .push_upload(upload, &version, &[&latest], described)
            .await?;
        Ok(())
    }

    /// Resolve `NAME` or `NAME@sha256:HEX` of `tenant` to a file in this
    /// host's cache.
    pub(crate) async fn resolve(
        &self,
        reference: &str,
        tenant: &str,
    ) -> Result<Resolved, RegistryError> {
        let (name, pin) = parse_reference(reference)?;
        Self::tenant(tenant)?;
        let not_found = || RegistryError::NotFound {
            name: name.clone(),
            tenant: tenant.to_owned(),
        };
        let tag = pin
            .as_ref()
            .map_or_else(|| "latest".to_owned(), |d| format!("sha256-{d}"));
        // A name OCI cannot hold was never pushed here.
        let r = self
            .reference(tenant, &name, &tag)
            .map_err(|_| not_found())?;
        let mut resolved = match (self.modules.resolve(&r, tenant).await, &pin) {
            (Ok(resolved), _) => resolved,
            (Err(RegistryError::NoArtifact(_)), None) => return Err(not_found()),
            (Err(RegistryError::NoArtifact(_)), Some(digest)) => {
                let latest = self.reference(tenant, &name, "latest")?;
                return Err(match self.modules.version(&latest, tenant).await {
                    Ok(_) => RegistryError::NoSuchVersion {
                        name,
                        tenant: tenant.to_owned(),
                        digest: digest.clone(),
                    },
                    Err(RegistryError::NoArtifact(_)) => not_found(),
                    Err(e) => e,
                });
            }
            (Err(e), _) => return Err(e),
        };
        if let Some(digest) = &pin
            && resolved.version.digest != *digest
        {
            return Err(RegistryError::Corrupt {
                path: r.to_string().into(),
                why: format!("the tag names component sha256:{}", resolved.version.digest),
            });
        }
        resolved.version.name = name;
        Ok(resolved)
    }

    /// The latest version of every module (of one tenant, or all), from
    /// the registry's catalog.
    pub(crate) async fn list(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<ModuleVersion>, RegistryError> {
        if let Some(t) = tenant {
            Self::tenant(t)?;
        }
        let mut out = Vec::new();
        for repo in self.catalog().await? {
            let Some((t, name)) = repo
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if name.contains('/')
                || !valid_name(t)
                || !valid_name(name)
                || tenant.is_some_and(|want| want != t)
            {
                continue;
            }
            let latest = self.reference(t, name, "latest")?;
            match self.modules.version(&latest, t).await {
                Ok(mut v) => {
                    v.name = name.to_owned();
                    out.push(v);
                }
                // A repository whose manifests were removed.
                Err(RegistryError::NoArtifact(_)) => {}
                // Something else lives there (a shared registry): not ours.
                Err(e) if !e.is_passing() => {
                    tracing::warn!(repository = %repo, error = %e, "not a module; left out of the list");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok(out)
    }

    /// Every repository of the registry under the prefix.
    async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        // Any reference in the registry tells the client where and how.
        let probe = self.reference("t", "n", "latest")?;
        let client = self.modules.client_for(&probe);
        let auth = auth(&self.registry);
        let (r, a) = (&probe.reference, &auth);
        let mut repos = all_pages(move |last| async move {
            let page = client.catalog(r, a, None, last.as_deref()).await;
            page.map(|p| p.repositories)
        })
        .await
        .map_err(|e| RegistryError::Unavailable {
            location: self.location(),
            why: format!("the catalog: {e}"),
        })?;
        repos.retain(|r| r.starts_with(&self.prefix));
        Ok(repos)
    }

    /// Remove a module: delete every manifest its repository's tags name.
    pub(crate) async fn remove(&self, name: &str, tenant: &str) -> Result<(), RegistryError> {
        Self::tenant(tenant)?;
        let not_found = || RegistryError::NotFound {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
        };
        let latest = self
            .reference(tenant, name, "latest")
            .map_err(|_| not_found())?;
        let client = self.modules.client_for(&latest);
        let auth = auth(&self.registry);
        let (r, a) = (&latest.reference, &auth);
        let tags = all_pages(move |last| async move {
            let page = client.list_tags(r, a, None, last.as_deref()).await;
            page.map(|p| p.tags)
        })
        .await
        .map_err(|e| match OciModules::error(&latest, e) {
            RegistryError::NoArtifact(_) => not_found(),
            e => e,
        })?;
        let mut digests = BTreeSet::new();
        for tag in &tags {
            let r = self.reference(tenant, name, tag)?;
            match client.fetch_manifest_digest(&r.reference, &auth).await {
                Ok(d) => {
                    digests.insert(d);
                }
                Err(e) => match OciModules::error(&r, e) {
                    // Deleted with a manifest removed a moment ago.
                    RegistryError::NoArtifact(_) => {}
                    e => return Err(e),
                },
            }
        }
        if digests.is_empty() {
            return Err(not_found());
        }
        for digest in digests {
            self.delete_manifest(&latest, &auth, &digest).await?;
        }
        Ok(())
    }

    /// `DELETE /v2/REPO/manifests/DIGEST`, with the client's credentials.
    async fn delete_manifest(
        &self,
        repo: &OciRef,
        credentials: &RegistryAuth,
        digest: &str,
    ) -> Result<(), RegistryError> {
        let client = self.modules.client_for(repo);
        let unavailable = |why: String| RegistryError::Unavailable {
            location: format!("{}@{digest}", repo.repository()),
            why,
        };
        let token = client
            .auth(&repo.reference, credentials, RegistryOperation::Push)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let scheme = if loopback(&self.registry) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{digest}",
            self.registry,
            repo.reference.repository()
        );
        let http = self.http.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client with timeouts")
        });
        let request = match (token, credentials) {
            (Some(token), _) => http.delete(&url).bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => {
                http.delete(&url).basic_auth(user, Some(password))
            }
            (None, _) => http.delete(&url),
        };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match response.status().as_u16() {
            200..=299 | 404 => Ok(()),
            405 => Err(RegistryError::Unsupported(format!(
                "{}: the registry does not allow deletes (docker-registry: set storage.delete.enabled)",
                self.location()
            ))),
            code => Err(unavailable(format!("HTTP {code} to DELETE {url}"))),
        }
    }

    /// `module gc` has nothing a client can do on an OCI registry.
    pub(crate) fn gc(&self) -> Result<super::GcReport, RegistryError> {
        Err(RegistryError::Unsupported(format!(
            "{}: module gc does not apply to an OCI registry: the distribution API cannot list blobs, and the registry reclaims those no manifest refers to (after `module rm` deletes a module's manifests) with its own garbage collector (Debian's docker-registry: `docker-registry garbage-collect CONFIG`)",
            self.location()
        )))
    }
}

/// Every name of a list the registry hands out in pages (`last`, and the
/// registry's own page size: some refuse a larger `n` than theirs). Asks
/// for the page after the last name seen until one brings nothing new: a
/// registry that ignores `last` and sends everything each time ends the
/// loop on its second answer, one that pages ends it on an empty page.
/// At most [`MAX_NAMES`] names.
async fn all_pages<F, Fut, E>(mut page: F) -> Result<Vec<String>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Vec<String>, E>>,
{
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    let mut last = None;
    while all.len() < MAX_NAMES {
        let names = page(last.take()).await?;
        let before = all.len();
        for name in names {
            if seen.insert(name.clone()) {
                all.push(name);
            }
        }
        if all.len() == before {
            break;
        }
        last = all.last().cloned();
    }
    all.truncate(MAX_NAMES);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry's list of `total` names, served `per_page` at a time
    /// after `last` (or, `ignores_last`, everything every time).
    async fn serve(total: usize, per_page: usize, ignores_last: bool) -> (Vec<String>, usize) {
        let names: Vec<String> = (0..total).map(|i| format!("n{i:05}")).collect();
        let calls = std::cell::Cell::new(0);
        let all = all_pages(|last: Option<String>| {
            calls.set(calls.get() + 1);
            let page: Vec<String> = if ignores_last {
                names.clone()
            } else {
                names
                    .iter()
                    .filter(|n| last.as_ref().is_none_or(|l| *n > l))
                    .take(per_page)
                    .cloned()
                    .collect()
            };
            async move { Ok::<_, ()>(page) }
        })
        .await
        .unwrap();
        (all, calls.get())
    }

    #[tokio::test]
    async fn paged_lists_end_whatever_the_registry_does_with_last() {
        // Pages of 100 (a registry's own cap): all 250, then an empty page.
        let (all, calls) = serve(250, 100, false).await;
        assert_eq!((all.len(), calls), (250, 4));
        // A registry that ignores `last`: everything, on the second answer.
        let (all, calls) = serve(1500, 0, true).await;
        assert_eq!((all.len(), calls), (1500, 2));
        assert_eq!(all[1499], "n01499");
        let (all, calls) = serve(0, 100, false).await;
        assert_eq!((all.len(), calls), (0, 1));
    }

    #[test]
    fn references_into_the_registry_belong_to_the_tenant_after_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheSettings {
            dir: dir.path().into(),
            max_bytes: 1,
            latest_ttl: Duration::ZERO,
        };
        let reg = OciRegistry::new("127.0.0.1:5000".into(), "jobs/".into(), cache.clone());
        let owner = |r: &str| reg.owner_of(&OciRef::parse(r).unwrap());
        assert_eq!(
            owner("oci://127.0.0.1:5000/jobs/acme/wc:latest"),
            Some("acme".into())
        );
        assert_eq!(
            owner("oci://127.0.0.1:5000/jobs/acme:v1"),
            Some("acme".into())
        );
        assert_eq!(owner("oci://127.0.0.1:5000/other/acme/wc:v1"), None);
        assert_eq!(owner("oci://127.0.0.1:5001/jobs/acme/wc:v1"), None);
        assert_eq!(owner("oci://127.0.0.1:5000/jobsx/acme/wc:v1"), None);
        let whole = OciRegistry::new("127.0.0.1:5000".into(), String::new(), cache);
        let r = OciRef::parse("oci://127.0.0.1:5000/eve/wc:v1").unwrap();
        assert_eq!(whole.owner_of(&r), Some("eve".into()));
    }
}
