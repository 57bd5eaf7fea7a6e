//! Admission, in the worker parent: who a message is from and what it may
//! run, decided once per delivery before any slot is taken.
//!
//! - The tenant comes from where the message was received: a queue bound to
//!   a tenant gives it, and a `tenant` attribute naming another tenant is
//!   refused. On a shared queue the `tenant` attribute is believed only with
//!   a valid signature by that tenant's key ([`crate::signing`]).
//! - Attributes named `wasm-jobs.*` that a sender set are dropped (the job
//!   never sees them, a dead-letter copy never carries them), except the
//!   signing attributes of a shared queue's message, which verification
//!   consumes and a dead-letter copy keeps so a redrive verifies again.
//! - Then the tenant's policy, the modules it may run, and the module
//!   resolved once to a file and digest ([`ModuleRef`]): `run` and `on-exit`
//!   run exactly that digest. A registry that fails to answer, or answers
//!   with bytes that are not what it promised, is not the message's fault:
//!   such a message is not admitted, and left for redelivery.

use crate::policy::{Policies, TenantPolicy};
use crate::queue::{AttributeValue, Attributes};
use crate::registry::oci::{OciModules, OciRef};
use crate::registry::{Registry, RegistryError};
use crate::signing::{self, EXPIRES_ATTRIBUTE, SIGNATURE_ATTRIBUTE};
use crate::worker::protocol::ModuleRef;

/// Attribute a dead-lettered copy carries to say why.
pub(crate) const DEAD_LETTER_REASON_ATTRIBUTE: &str = "wasm-jobs.dead-letter-reason";
/// Attribute a dead-lettered copy carries: the message id it had before.
pub(crate) const ORIGINAL_ID_ATTRIBUTE: &str = "wasm-jobs.original-message-id";
/// Attribute a dead-lettered copy carries: when its first attempt began.
pub(crate) const FIRST_ATTEMPT_ATTRIBUTE: &str = "wasm-jobs.first-attempt-at";
/// Attribute a dead-lettered copy carries: when it failed for the last time.
pub(crate) const LAST_FAILURE_ATTRIBUTE: &str = "wasm-jobs.last-failure-at";
/// Message attribute naming the registry module to run.
pub(crate) const MODULE_ATTRIBUTE: &str = "module";
/// Message attribute naming the tenant (checked, never trusted on its own).
pub(crate) const TENANT_ATTRIBUTE: &str = "tenant";
/// Attributes in this namespace belong to wasm-jobs, not to senders.
const RESERVED_PREFIX: &str = "wasm-jobs.";

/// Whose messages a queue carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueTenant {
    /// Every message is this tenant's.
    Bound(String),
    /// Many tenants' signed messages.
    Shared,
}

/// Why a message is refused; each becomes its dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The `tenant` attribute disagrees with the queue's tenant.
    #[error("tenant attribute \"{claimed}\" does not match the queue's tenant \"{bound}\"")]
    TenantMismatch { claimed: String, bound: String },
    /// A shared queue's message without a valid signature.
    #[error("{0}")]
    Unsigned(String),
    /// The tenant's policy refuses it (unknown tenant, module not allowed).
    #[error("{0}")]
    Policy(String),
    /// The module cannot be found.
    #[error("{0}")]
    Module(String),
    /// Its `reply-to` names a queue the tenant may not reply to.
    #[error("{0}")]
    ReplyTo(String),
}

impl Refusal {
    /// The metric label for this kind of refusal.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Refusal::TenantMismatch { .. } => "tenant_mismatch",
            Refusal::Unsigned(_) => "bad_signature",
            Refusal::Policy(_) => "policy",
            Refusal::Module(_) => "module",
            Refusal::ReplyTo(_) => "reply_to",
        }
    }
}

/// Why a message did not get past admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotAdmitted {
    /// The message may not run: dead-lettered with this reason.
    Refused(Refusal),
    /// The registry failed (unreachable, corrupt): left for redelivery.
    Unavailable(String),
}

impl From<Refusal> for NotAdmitted {
    fn from(r: Refusal) -> Self {
        NotAdmitted::Refused(r)
    }
}

/// A message's attributes split by who may set them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sanitized {
    /// What the job sees and a dead-letter copy keeps.
    pub(crate) attributes: Attributes,
    /// The signing attributes, if any.
    pub(crate) signing: Attributes,
}

/// Drop sender-set `wasm-jobs.*` attributes, keeping the signing ones apart.
pub(crate) fn sanitize(attributes: &Attributes) -> Sanitized {
    let mut out = Sanitized::default();
    for (name, value) in attributes {
        if name == SIGNATURE_ATTRIBUTE || name == EXPIRES_ATTRIBUTE {
            out.signing.insert(name.clone(), value.clone());
        } else if !name.starts_with(RESERVED_PREFIX) {
            out.attributes.insert(name.clone(), value.clone());
        }
    }
    out
}

fn text(attributes: &Attributes, name: &str) -> Option<String> {
    attributes
        .get(name)
        .map(AttributeValue::as_text)
        .filter(|v| !v.is_empty())
}

/// The message's tenant: the queue's, or a shared queue's verified signer.
/// `attributes` are the raw ones received; `now` is Unix seconds.
pub(crate) fn identify(
    queue: &QueueTenant,
    body: &str,
    attributes: &Attributes,
    policies: &Policies,
    now: u64,
) -> Result<String, Refusal> {
    let claimed = text(attributes, TENANT_ATTRIBUTE);
    match queue {
        QueueTenant::Bound(bound) => match claimed {
            Some(claimed) if claimed != *bound => Err(Refusal::TenantMismatch {
                claimed,
                bound: bound.clone(),
            }),
            _ => Ok(bound.clone()),
        },
        QueueTenant::Shared => {
            let tenant = claimed.ok_or_else(|| {
                Refusal::Unsigned(format!(
                    "a message on a shared queue must name its `{TENANT_ATTRIBUTE}` and be signed"
                ))
            })?;
            let key = policies.signing_key(&tenant).ok_or_else(|| {
                Refusal::Unsigned(format!(
                    "tenant \"{tenant}\" has no signing key on this worker"
                ))
            })?;
            // The signature covers every attribute the sender set.
            signing::verify(key, body, attributes, now)
                .map_err(|e| Refusal::Unsigned(format!("signature refused: {e}")))?;
            Ok(tenant)
        }
    }
}

/// How admitted messages find their module.
#[derive(Debug, Clone)]
pub(crate) enum Modules {
    /// The worker's `--module`, read and hashed once at start.
    Fixed(ModuleRef),
    /// The `module` attribute: a name resolved in this registry for the
    /// tenant, or an `oci://` reference its policy allows.
    Registry { registry: Registry, oci: OciModules },
}

/// A message that may run: its tenant's policy and the module to run.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    pub(crate) tenant: String,
    pub(crate) policy: TenantPolicy,
    pub(crate) module: ModuleRef,
}

/// A registry failure: the message's fault (dead-lettered) or the
/// registry's (left for redelivery).
fn not_admitted(e: RegistryError) -> NotAdmitted {
    if e.is_passing() {
        NotAdmitted::Unavailable(e.to_string())
    } else {
        NotAdmitted::Refused(Refusal::Module(e.to_string()))
    }
}

/// Check the tenant's policy and resolve the module, once.
pub(crate) async fn admit(
    tenant: String,
    attributes: &Attributes,
    policies: &Policies,
    modules: &Modules,
) -> Result<Admitted, NotAdmitted> {
    let policy = policies.for_tenant(&tenant).cloned().ok_or_else(|| {
        Refusal::Policy(format!("tenant `{tenant}` has no policy on this worker"))
    })?;
    let module = match modules {
        Modules::Fixed(m) => m.clone(),
        Modules::Registry { registry, oci } => {
            let reference = match attributes.get(MODULE_ATTRIBUTE) {
                Some(AttributeValue::String(r)) if !r.is_empty() => r,
                _ => {
                    return Err(Refusal::Module(format!(
                        "the message has no `{MODULE_ATTRIBUTE}` attribute and the worker has no --module"
                    ))
                    .into());
                }
            };
            let resolved = if reference.starts_with("oci://") {
                let r = OciRef::parse(reference).map_err(|e| Refusal::Module(e.to_string()))?;
                if !r.allowed_by(&policy.oci) {
                    return Err(Refusal::Policy(format!(
                        "tenant `{tenant}` may not run modules from {} (its policy's `oci` grants: {:?})",
                        r.repository(),
                        policy.oci
                    ))
                    .into());
                }
                if let Some(owner) = registry.owner_of(&r)
                    && owner != tenant
                {
                    return Err(Refusal::Policy(format!(
                        "tenant `{tenant}` may not run {r}: it is tenant `{owner}`'s module in the module registry"
                    ))
                    .into());
                }
                oci.resolve(&r, &tenant).await
            } else {
                let (name, _) = crate::registry::parse_reference(reference)
                    .map_err(|e| Refusal::Module(e.to_string()))?;
                if !policy.allows_module(&name) {
                    return Err(Refusal::Policy(format!(
                        "tenant `{tenant}` may not run module `{name}`"
                    ))
                    .into());
                }
                registry.resolve(reference, &tenant).await
            };
            let resolved = resolved.map_err(not_admitted)?;
            ModuleRef {
                path: resolved.path,
                digest: resolved.version.digest,
                label: reference.clone(),
            }
        }
    };
    Ok(Admitted {
        tenant,
        policy,
        module,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DirRegistry;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), AttributeValue::String((*v).to_owned())))
            .collect()
    }

    fn open() -> Policies {
        Policies::open(crate::sandbox::SandboxPolicy::default())
    }

    #[test]
    fn a_bound_queue_gives_the_tenant_and_refuses_another_claim() {
        let q = QueueTenant::Bound("trial".into());
        let p = open();
        assert_eq!(identify(&q, "b", &attrs(&[]), &p, 0), Ok("trial".into()));
        assert_eq!(
            identify(&q, "b", &attrs(&[("tenant", "trial")]), &p, 0),
            Ok("trial".into())
        );
        let refused = identify(&q, "b", &attrs(&[("tenant", "acme")]), &p, 0).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "tenant attribute \"acme\" does not match the queue's tenant \"trial\""
        );
        assert_eq!(refused.kind(), "tenant_mismatch");
    }

    #[test]
    fn a_shared_queue_needs_a_tenant_with_a_key() {
        let p = open();
        let none = identify(&QueueTenant::Shared, "b", &attrs(&[]), &p, 0).unwrap_err();
        assert!(
            none.to_string().contains("must name its `tenant`"),
            "{none}"
        );
        let keyless = identify(
            &QueueTenant::Shared,
            "b",
            &attrs(&[("tenant", "acme")]),
            &p,
            0,
        )
        .unwrap_err();
        assert!(keyless.to_string().contains("no signing key"), "{keyless}");
    }

    #[test]
    fn sender_set_reserved_attributes_are_dropped_and_signing_ones_kept_apart() {
        let s = sanitize(&attrs(&[
            ("module", "wc"),
            ("wasm-jobs.dead-letter-reason", "forged"),
            ("wasm-jobs.signature", "v1=00"),
            ("wasm-jobs.expires", "1"),
        ]));
        assert_eq!(s.attributes, attrs(&[("module", "wc")]));
        assert_eq!(
            s.signing.keys().collect::<Vec<_>>(),
            ["wasm-jobs.expires", "wasm-jobs.signature"]
        );
    }

    #[tokio::test]
    async fn admission_checks_the_policy_and_the_module() {
        let p = Policies::parse("[tenants.acme]\nmodules = [\"wc\"]\n", |_| None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let registry = Modules::Registry {
            registry: Registry::Dir(DirRegistry::new(dir.path())),
            oci: OciModules::new(crate::registry::CacheSettings {
                dir: dir.path().join("cache"),
                max_bytes: 1 << 20,
                latest_ttl: std::time::Duration::ZERO,
            }),
        };
        let admit = async |tenant: &str, pairs: &[(&str, &str)]| {
            admit(tenant.into(), &attrs(pairs), &p, &registry).await
        };
        let refused = |r: Result<Admitted, NotAdmitted>| match r {
            Err(NotAdmitted::Refused(r)) => r,
            other => panic!("{other:?}"),
        };
        let stranger = refused(admit("eve", &[("module", "wc")]).await);
        assert!(matches!(stranger, Refusal::Policy(_)));
        let other = refused(admit("acme", &[("module", "x")]).await);
        assert!(matches!(other, Refusal::Policy(_)));
        let missing = refused(admit("acme", &[]).await);
        assert!(matches!(missing, Refusal::Module(_)));
        let unknown = refused(admit("acme", &[("module", "wc")]).await);
        assert!(matches!(unknown, Refusal::Module(_)));

        // OCI references: only from registries the policy grants.
        let p =
            Policies::parse("[tenants.acme]\noci = [\"127.0.0.1:9/acme\"]\n", |_| None).unwrap();
        let oci = |reference: &str| {
            let a = attrs(&[("module", reference)]);
            let (p, registry) = (&p, &registry);
            async move { super::admit("acme".into(), &a, p, registry).await }
        };
        let refused_oci = |r: Result<Admitted, NotAdmitted>| match r {
            Err(NotAdmitted::Refused(r)) => r,
            other => panic!("{other:?}"),
        };
        match refused_oci(oci("oci://127.0.0.1:9/other/wc:v1").await) {
            Refusal::Policy(why) => assert!(why.contains("127.0.0.1:9/other/wc"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refused_oci(oci("oci://acme/wc:v1").await),
            Refusal::Module(_)
        ));
        // Granted, but nothing listens there: the registry's fault.
        assert!(matches!(
            oci("oci://127.0.0.1:9/acme/wc:v1").await,
            Err(NotAdmitted::Unavailable(_))
        ));

        // A version whose blob is gone: the registry's fault, not the message's.
        let digest = "a".repeat(64);
        let module_dir = dir.path().join("modules/acme/wc");
        std::fs::create_dir_all(&module_dir).unwrap();
        std::fs::write(module_dir.join("latest"), &digest).unwrap();
        let record = serde_json::json!({"name": "wc", "tenant": "acme", "digest": digest, "size": 1, "pushed_at_ms": 0});
        std::fs::write(
            module_dir.join(format!("{digest}.json")),
            record.to_string(),
        )
        .unwrap();
        match admit("acme", &[("module", "wc")]).await {
            Err(NotAdmitted::Unavailable(why)) => assert!(why.contains("missing"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oci_grant_on_the_module_registry_reaches_only_the_tenants_own_modules() {
        let dir = tempfile::tempdir().unwrap();
        let cache = crate::registry::CacheSettings {
            dir: dir.path().join("cache"),
            max_bytes: 1 << 20,
            latest_ttl: std::time::Duration::ZERO,
        };
        let modules = Modules::Registry {
            registry: Registry::Oci(crate::registry::oci_registry::OciRegistry::new(
                "127.0.0.1:9".into(),
                "jobs/".into(),
                cache.clone(),
            )),
            oci: OciModules::new(cache),
        };
        let p = Policies::parse("[tenants.acme]\noci = [\"127.0.0.1:9\"]\n", |_| None).unwrap();
        let admit = async |reference: &str| {
            admit(
                "acme".into(),
                &attrs(&[("module", reference)]),
                &p,
                &modules,
            )
            .await
        };
        match admit("oci://127.0.0.1:9/jobs/eve/wc:latest").await {
            Err(NotAdmitted::Refused(Refusal::Policy(why))) => {
                assert!(why.contains("tenant `eve`'s module"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // Its own, and repositories outside the registry's prefix, are
        // looked up (nothing listens there: the registry's fault).
        for own in [
            "oci://127.0.0.1:9/jobs/acme/wc:latest",
            "oci://127.0.0.1:9/elsewhere/wc:v1",
        ] {
            assert!(
                matches!(admit(own).await, Err(NotAdmitted::Unavailable(_))),
                "{own}"
            );
        }
    }
}
