//! Modules in OCI registries: `oci://HOST[:PORT]/REPO:TAG` or
//! `oci://HOST[:PORT]/REPO@sha256:HEX` (a manifest digest), in the layout
//! the Wasm ecosystem reads and writes (the CNCF Wasm OCI artifact: one
//! `application/wasm` layer, a `application/vnd.wasm.config.v0+json`
//! config; what `wkg`, Spin and wasmCloud use). Used by the CLI process for
//! `module push --to` and `module inspect`, and by the worker parent when a
//! message's `module` attribute is such a reference and the tenant's policy
//! allows the registry (`oci = [...]`).
//!
//! Credentials come from the Docker config file (`$DOCKER_CONFIG` or
//! `~/.docker/config.json`, credential helpers included); without an entry
//! the registry is used anonymously. A registry on a loopback address is
//! spoken to over plain HTTP, any other over HTTPS. The client checks the
//! manifest and blob digests it is sent; the blob is checked again against
//! the manifest's layer digest before it enters the host's cache, and a tag
//! is re-read after the TTL (see [`super::remote`]).

use super::remote::Remote;
use super::{CacheSettings, ModuleVersion, RegistryError, Resolved, Upload};
use crate::executor::Executor;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The layer media type of a Wasm component.
const WASM_LAYER: &str = "application/wasm";
/// The config media type of a Wasm OCI artifact.
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The manifest annotation recording when a version was pushed.
const CREATED: &str = "org.opencontainers.image.created";
/// The largest layer a worker downloads.
const MAX_LAYER_BYTES: u64 = 256 * 1024 * 1024;

/// A parsed `oci://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    pub(super) reference: Reference,
    text: String,
}

impl OciRef {
    /// Parse `oci://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`. The host must be
    /// explicit (a name with a dot, a port, or `localhost`): nothing is
    /// resolved against Docker Hub by default.
    pub fn parse(text: &str) -> Result<OciRef, RegistryError> {
        let bad = |why: &str| RegistryError::BadOciReference(format!("{text}: {why}"));
        let rest = text
            .strip_prefix("oci://")
            .ok_or_else(|| bad("not oci://"))?;
        let host = rest.split('/').next().unwrap_or("");
        if !(host.contains('.') || host.contains(':') || host == "localhost") || !rest.contains('/')
        {
            return Err(bad("name the registry: oci://HOST[:PORT]/REPO:TAG"));
        }
        let reference: Reference = rest.parse().map_err(|e| bad(&format!("{e}")))?;
        if reference.registry() != host {
            return Err(bad("name the registry: oci://HOST[:PORT]/REPO:TAG"));
        }
        Ok(OciRef {
            reference,
            text: text.to_owned(),
        })
    }

    /// `HOST[:PORT]/REPO`, what a policy's `oci` grants are matched against.
    pub fn repository(&self) -> String {
        format!(
            "{}/{}",
            self.reference.registry(),
            self.reference.repository()
        )
    }

    /// Whether one of `grants` (`HOST[:PORT]` or `HOST[:PORT]/REPO-PREFIX`)
    /// covers this reference's repository, at a path boundary.
    pub fn allowed_by(&self, grants: &[String]) -> bool {
        let repo = self.repository();
        grants.iter().any(|g| {
            let g = g.trim_end_matches('/');
            repo == g || repo.strip_prefix(g).is_some_and(|r| r.starts_with('/'))
        })
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A host's OCI clients (loopback registries over HTTP, others over HTTPS)
/// with its cache.
#[derive(Clone)]
pub struct OciModules {
    /// Made on first use: a worker whose messages never name `oci://`
    /// never builds them.
    http: Arc<OnceLock<Client>>,
    https: Arc<OnceLock<Client>>,
    remote: Remote,
}

/// A client for one protocol. A registry that stops answering fails the
/// admission (the message is left for redelivery) instead of holding it.
/// From an image index, the Wasm entry (`architecture: wasm`) is the one.
fn client(protocol: ClientProtocol) -> Client {
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(5)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        platform_resolver: Some(Box::new(wasm_entry)),
        ..ClientConfig::default()
    })
}

/// The digest of an image index's Wasm entry, if it has one.
fn wasm_entry(entries: &[oci_client::manifest::ImageIndexEntry]) -> Option<String> {
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.architecture.to_string() == "wasm")
        })
        .map(|e| e.digest.clone())
}

impl std::fmt::Debug for OciModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciModules").finish_non_exhaustive()
    }
}

pub(super) fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The Docker config's credentials for `registry`, or anonymous.
pub(super) fn auth(registry: &str) -> RegistryAuth {
    match docker_credential::get_credential(registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            RegistryAuth::Bearer(token)
        }
        Err(_) => RegistryAuth::Anonymous,
    }
}

impl OciModules {
    /// Clients caching under `cache`.
    pub fn new(cache: CacheSettings) -> Self {
        OciModules {
            http: Arc::default(),
            https: Arc::default(),
            remote: Remote::new(cache),
        }
    }

    /// The client for the reference's registry.
    pub(super) fn client_for(&self, r: &OciRef) -> &Client {
        if loopback(r.reference.registry()) {
            self.http.get_or_init(|| client(ClientProtocol::Http))
        } else {
            self.https.get_or_init(|| client(ClientProtocol::Https))
        }
    }

    pub(super) fn error(r: &OciRef, e: OciDistributionError) -> RegistryError {
        match &e {
            // Made by the client for an image index without a Wasm entry.
            OciDistributionError::ImageManifestNotFoundError(why) => {
                return RegistryError::NotAComponent(format!("{r}: an image index: {why}"));
            }
            OciDistributionError::DigestError(_) => {
                return RegistryError::Corrupt {
                    path: r.text.clone().into(),
                    why: super::error_chain(&e),
                };
            }
            _ => {}
        }
        let not_found = match &e {
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
                    )
                })
            }
            OciDistributionError::ServerError { code: 404, .. } => true,
            _ => false,
        };
        if not_found {
            RegistryError::NoArtifact(r.text.clone())
        } else {
            RegistryError::Unavailable {
                location: r.text.clone(),
                why: super::error_chain(&e),
            }
        }
    }

    /// Validate `file` as a job component (compiling it into `executor`'s
    /// cache) and push it to `to` as a Wasm OCI artifact. Returns the
    /// version (its component digest) and the manifest's URL.
    pub async fn push(
        &self,
        executor: &Executor,
        file: &Path,
        to: &OciRef,
        max_bytes: u64,
    ) -> Result<(ModuleVersion, String), RegistryError> {
        let upload = super::load(executor, file, &to.repository(), "oci", max_bytes)?;
        let (imports, exports) = executor.describe(&upload.bytes)?;
        let url = self
            .push_upload(&upload, to, &[], (imports, exports))
            .await?;
        Ok((upload.version, url))
    }

    /// Push `upload` as a Wasm OCI artifact to `to`, then tag the same
    /// manifest as each of `also` (in order). `described` is the
    /// component's imports and exports, for the config. Returns the
    /// manifest's URL at `to`.
    pub(super) async fn push_upload(
        &self,
        upload: &Upload,
        to: &OciRef,
        also: &[&OciRef],
        described: (Vec<String>, Vec<String>),
    ) -> Result<String, RegistryError> {
        let (imports, exports) = described;
        let created = crate::units::rfc3339(upload.version.pushed_at_ms);
        let layer_digest = format!("sha256:{}", upload.version.digest);
        let config = serde_json::json!({
            "created": created,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
            "component": { "exports": exports, "imports": imports, "target": null },
        });
        let layers = [ImageLayer::new(
            upload.bytes.clone(),
            WASM_LAYER.to_owned(),
            None,
        )];
        let config = Config::new(
            serde_json::to_vec(&config).expect("json"),
            WASM_CONFIG.to_owned(),
            None,
        );
        let annotations = BTreeMap::from([(CREATED.to_owned(), created)]);
        let manifest = OciImageManifest::build(&layers, &config, Some(annotations));
        let client = self.client_for(to);
        let registry = to.reference.registry().to_owned();
        let url = client
            .push(
                &to.reference,
                &layers,
                config,
                &auth(&registry),
                Some(manifest.clone()),
            )
            .await
            .map(|r| r.manifest_url)
            .map_err(|e| Self::error(to, e))?;
        let manifest = manifest.into();
        for tag in also {
            client
                .push_manifest(&tag.reference, &manifest)
                .await
                .map_err(|e| Self::error(tag, e))?;
        }
        Ok(url)
    }

    /// The component a reference names: its layer digest and size.
    pub(super) async fn version(
        &self,
        r: &OciRef,
        tenant: &str,
    ) -> Result<ModuleVersion, RegistryError> {
        let client = self.client_for(r);
        let registry = r.reference.registry().to_owned();
        let (manifest, _digest) = client
            .pull_image_manifest(&r.reference, &auth(&registry))
            .await
            .map_err(|e| Self::error(r, e))?;
        let bad = |why: String| RegistryError::NotAComponent(format!("{r}: {why}"));
        let wasm: Vec<_> = manifest
            .layers
            .iter()
            .filter(|l| l.media_type == WASM_LAYER)
            .collect();
        let [layer] = wasm[..] else {
            return Err(bad(format!(
                "not a Wasm component artifact ({} `{WASM_LAYER}` layers)",
                wasm.len()
            )));
        };
        let digest = layer
            .digest
            .strip_prefix("sha256:")
            .filter(|d| super::valid_digest(d))
            .ok_or_else(|| bad(format!("layer digest {:?} is not sha256", layer.digest)))?;
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > MAX_LAYER_BYTES {
            return Err(bad(format!(
                "its component is {size} bytes; the limit is {MAX_LAYER_BYTES}"
            )));
        }
        Ok(ModuleVersion {
            name: r.repository(),
            tenant: tenant.to_owned(),
            digest: digest.to_owned(),
            size,
            pushed_at_ms: manifest
                .annotations
                .as_ref()
                .and_then(|a| a.get(CREATED))
                .and_then(|t| crate::units::parse_rfc3339_ms(t))
                .unwrap_or(0),
        })
    }

    /// Resolve a reference to a file in this host's cache.
    pub async fn resolve(&self, r: &OciRef, tenant: &str) -> Result<Resolved, RegistryError> {
        let version = self
            .remote
            .version(tenant, &r.text, self.version(r, tenant))
            .await?;
        let layer = oci_client::manifest::OciDescriptor {
            media_type: WASM_LAYER.to_owned(),
            digest: format!("sha256:{}", version.digest),
            size: version.size as i64,
            ..Default::default()
        };
        let fetch = async {
            let mut bytes = Vec::with_capacity(version.size as usize);
            self.client_for(r)
                .pull_blob(&r.reference, &layer, &mut bytes)
                .await
                // A manifest whose blob is missing or damaged: the
                // registry's fault, whatever the status says.
                .map_err(|e| match Self::error(r, e) {
                    RegistryError::NoArtifact(_) => RegistryError::Unavailable {
                        location: format!("{r} (layer sha256:{})", version.digest),
                        why: "the registry has no such blob".into(),
                    },
                    e => e,
                })?;
            Ok(bytes)
        };
        let source = format!("{r} (layer sha256:{})", version.digest);
        let path = self.remote.blob(&version, &source, fetch).await?;
        Ok(Resolved { version, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_and_grants_match_at_path_boundaries() {
        let r = OciRef::parse("oci://127.0.0.1:5000/acme/jobs/wc:v1").unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/acme/jobs/wc");
        let grants = |g: &[&str]| g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(r.allowed_by(&grants(&["127.0.0.1:5000"])));
        assert!(r.allowed_by(&grants(&["127.0.0.1:5000/acme/"])));
        assert!(r.allowed_by(&grants(&["127.0.0.1:5000/acme/jobs/wc"])));
        assert!(!r.allowed_by(&grants(&["127.0.0.1:5000/acm"])));
        assert!(!r.allowed_by(&grants(&["127.0.0.1:500"])));
        assert!(!r.allowed_by(&grants(&["ghcr.io"])));
        assert!(!r.allowed_by(&[]));
        let pinned = format!("oci://ghcr.io/acme/wc@sha256:{}", "a".repeat(64));
        assert_eq!(
            OciRef::parse(&pinned).unwrap().repository(),
            "ghcr.io/acme/wc"
        );
        for bad in [
            "oci://acme/wc:v1",
            "oci://wc",
            "oci://ghcr.io",
            "ghcr.io/acme/wc:v1",
            "oci://ghcr.io/Acme/wc:v1",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_registries_are_spoken_to_over_http() {
        assert!(loopback("127.0.0.1:5000"));
        assert!(loopback("localhost:5000"));
        assert!(loopback("localhost"));
        assert!(loopback("LocalHost:5000"));
        assert!(!loopback("ghcr.io"));
        assert!(!loopback("10.0.0.1:5000"));
        assert!(!loopback("127.0.0.1.nip.io:5000"));
    }
}
