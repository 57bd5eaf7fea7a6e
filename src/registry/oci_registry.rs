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

/// Page size asked of the catalog and tag lists.
const PAGE: usize = 1000;

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

    /// Push a validated upload: its version's tag, then `latest`.
    pub(crate) async fn store(
        &self,
        executor: &Executor,
        upload: &Upload,
    ) -> Result<(), RegistryError> {
        let v = &upload.version;
        let version = self.reference(&v.tenant, &v.name, &format!("sha256-{}", v.digest))?;
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
            let page = client.catalog(r, a, Some(PAGE), last.as_deref()).await;
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
            let page = client.list_tags(r, a, Some(PAGE), last.as_deref()).await;
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
            "{}: an OCI registry reclaims the blobs no manifest refers to with its own garbage collector (docker-registry: `registry garbage-collect CONFIG`); `module rm` has already removed the manifests, and the distribution API cannot list blobs",
            self.location()
        )))
    }
}

/// Every name of a list the registry hands out in pages (`n`, `last`):
/// asks for pages of [`PAGE`] until one comes back short.
async fn all_pages<F, Fut, E>(mut page: F) -> Result<Vec<String>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Vec<String>, E>>,
{
    let mut all = Vec::new();
    loop {
        let names = page(all.last().cloned()).await?;
        let n = names.len();
        all.extend(names);
        if n < PAGE {
            return Ok(all);
        }
    }
}
