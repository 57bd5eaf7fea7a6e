//! Tenant identity through real workers: the tenant comes from the queue a
//! message was received from (the README's two-tenant attack, refused on
//! both backends), shared queues accept only messages signed by their
//! tenant's key, and a tenant at its cap never holds up another tenant.

use crate::common::{hostile_path, push_module};
use crate::queue_backends::Backend;
use crate::worker_harness::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasm_jobs::queue::{AttributeValue, OutgoingMessage};
use wasm_jobs::signing::{self, SigningKey};

crate::on_both_backends!(
    a_sender_cannot_claim_another_tenant,
    shared_queues_run_only_messages_signed_by_their_tenant,
);

/// The worker's data dir: the embedded backend's (its queues live there),
/// else a fresh one.
struct Home {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Home {
    fn path(&self) -> &Path {
        &self.path
    }
}

/// A data dir with the hostile job pushed as `tool` for each tenant.
fn home_with_tool(b: &Backend, tenants: &[&str]) -> Home {
    let home = match b.data_dir() {
        Some(path) => Home { path, _temp: None },
        None => {
            let t = tempfile::tempdir().unwrap();
            Home {
                path: t.path().to_owned(),
                _temp: Some(t),
            }
        }
    };
    for tenant in tenants {
        push_module(home.path(), "tool", Some(tenant), &hostile_path());
    }
    home
}

fn outgoing(body: &str, attrs: &[(&str, &str)]) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(body);
    for (k, v) in attrs {
        m.attributes
            .insert((*k).into(), AttributeValue::String((*v).into()));
    }
    m
}

fn worker_in(b: &Backend, home: &Path, args: &[&str]) -> Worker {
    let home = home.to_str().unwrap();
    let mut all = vec!["--data-dir", home];
    all.extend_from_slice(args);
    Worker::with_args(b, &all)
}

/// The README's two-tenant setup, attacked as in the issue: a worker for
/// mallory's queue, and a message claiming to be acme's, naming acme's
/// module and carrying a forged `wasm-jobs.*` attribute. It is dead-lettered
/// with the mismatch reason, and acme's job (which would print acme's
/// secret) never starts.
async fn a_sender_cannot_claim_another_tenant(b: Backend) {
    let home = home_with_tool(&b, &["acme", "mallory"]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("secret.txt"), "acme-file-secret").unwrap();
    let policy = home.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[tenants.acme]\nenv = [\"WJ_ACME_SECRET\"]\ndirs = [{{ host = \"{}\", guest = \"/data\" }}]\n[tenants.mallory]\nmax_memory = \"64MiB\"\n",
            secrets.path().display()
        ),
    )
    .unwrap();
    let (q, dlq) = b.create_with_dlq("attack", 3, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let attack = outgoing(
        "env",
        &[
            ("tenant", "acme"),
            ("module", "tool"),
            ("wasm-jobs.origin", "forged"),
        ],
    );
    q.send(&attack).await.unwrap();
    let own = outgoing("read:/data/secret.txt", &[("module", "tool")]);
    q.send(&own).await.unwrap();
    let home_dir = home.path().to_str().unwrap();
    let w = Worker::with_env(
        &b,
        &[
            "--data-dir",
            home_dir,
            "--tenant",
            "mallory",
            "--queue",
            &addr,
            "--drain",
            "--wait",
            "0",
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[("WJ_ACME_SECRET", "acme-secret-value")],
    );
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("acme-secret-value") && !log.contains("acme-file-secret"),
        "{log}"
    );
    let events = events_of(&log);
    let refused: Vec<_> = events
        .iter()
        .filter(|e| is(e, "message refused", &[("kind", "tenant_mismatch")]))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        !events
            .iter()
            .any(|e| is(e, "worker child started", &[("tenant", "acme")])),
        "acme's job never starts: {log}"
    );
    // Mallory's own message runs as mallory, without acme's directory.
    assert_eq!(
        count_in(&log, "worker child started", &[("tenant", "mallory")]),
        1,
        "{log}"
    );
    let dead = all(dlq.as_ref()).await;
    assert_eq!(dead.len(), 2, "the attack and mallory's failed read: {log}");
    let attack_copy = dead.iter().find(|m| m.body == "env").expect("the attack");
    assert_eq!(
        attack_copy.attributes["wasm-jobs.dead-letter-reason"].as_text(),
        "tenant attribute \"acme\" does not match the queue's tenant \"mallory\""
    );
    assert!(
        !attack_copy.attributes.contains_key("wasm-jobs.origin"),
        "sender-set wasm-jobs.* attributes are never copied"
    );
    assert_eq!(counts(q.as_ref()).await, (0, 0, 0));
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A key file of the worker's user, mode 0600.
fn key_file(dir: &Path, name: &str, key: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn signed(key: &SigningKey, body: &str, tenant: &str, expires: u64) -> OutgoingMessage {
    let mut m = outgoing(body, &[("tenant", tenant), ("module", "tool")]);
    signing::sign(key, &m.body, &mut m.attributes, expires);
    m
}

async fn shared_queues_run_only_messages_signed_by_their_tenant(b: Backend) {
    let home = home_with_tool(&b, &["acme"]);
    let acme_key = key_file(home.path(), "acme.key", "acme-key-0123456789-abcdef");
    let policy = home.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[tenants.acme]\nkey_file = \"{}\"\n", acme_key.display()),
    )
    .unwrap();
    let key = SigningKey::load(&acme_key).unwrap();
    let wrong = SigningKey::from_bytes(b"not-acmes-key-0123456789").unwrap();
    let (q, dlq) = b.create_with_dlq("shared", 3, &config(30)).await;
    let addr = b.address_of(q.as_ref());
    let later = unix_now() + 600;
    // Valid: one through the CLI (`send --tenant --key-file`), one signed here.
    let sent = b
        .cli()
        .args(["send", "--queue", &addr, "--tenant", "acme", "--key-file"])
        .arg(&acme_key)
        .args(["--attr", "module=tool", "sleep-ms:1"])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    q.send(&signed(&key, "sleep-ms:2", "acme", later))
        .await
        .unwrap();
    let mut tampered_body = signed(&key, "sleep-ms:3", "acme", later);
    tampered_body.body = "sleep-ms:4".into();
    let mut tampered_attr = signed(&key, "sleep-ms:5", "acme", later);
    tampered_attr
        .attributes
        .insert("module".into(), AttributeValue::String("other".into()));
    let expired = signed(&key, "sleep-ms:6", "acme", unix_now() - 10);
    let wrong_key = signed(&wrong, "sleep-ms:7", "acme", later);
    let unsigned = outgoing("sleep-ms:8", &[("tenant", "acme"), ("module", "tool")]);
    for m in [
        &tampered_body,
        &tampered_attr,
        &expired,
        &wrong_key,
        &unsigned,
    ] {
        q.send(m).await.unwrap();
    }
    let w = worker_in(
        &b,
        home.path(),
        &[
            "--shared-queue",
            &addr,
            "--drain",
            "--wait",
            "0",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(
        count_in(&log, "job succeeded; message deleted", &[]),
        2,
        "{log}"
    );
    assert_eq!(
        count_in(&log, "worker child started", &[("tenant", "acme")]),
        2,
        "{log}"
    );
    let reasons: BTreeMap<String, String> = all(dlq.as_ref())
        .await
        .into_iter()
        .map(|m| {
            let reason = m.attributes["wasm-jobs.dead-letter-reason"].as_text();
            (m.body, reason)
        })
        .collect();
    let mismatch = "signature refused: the signature does not match";
    assert!(reasons["sleep-ms:4"].contains(mismatch), "{reasons:?}");
    assert!(reasons["sleep-ms:5"].contains(mismatch), "{reasons:?}");
    assert!(reasons["sleep-ms:7"].contains(mismatch), "{reasons:?}");
    assert!(reasons["sleep-ms:6"].contains("expired"), "{reasons:?}");
    assert!(
        reasons["sleep-ms:8"].contains("no wasm-jobs.signature"),
        "{reasons:?}"
    );
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert_eq!(
        count_in(&log, "message refused", &[("kind", "bad_signature")]),
        5,
        "{log}"
    );
}

/// Tenant `a` (capped at 1) has 30 one-second jobs, tenant `b` 20 short
/// ones on its own queue; one worker at concurrency 2 serves both. All of
/// b's jobs finish while a's run one at a time, and every a message is
/// received exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_tenant_never_holds_up_another() {
    let b = Backend::embedded();
    let (qa, addr_a) = b.create("fair-a", &config(30)).await;
    let (qb, addr_b) = b.create("fair-b", &config(30)).await;
    for _ in 0..30 {
        qa.send(&OutgoingMessage::new("sleep-ms:1000"))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        qb.send(&OutgoingMessage::new("sleep-ms:50")).await.unwrap();
    }
    let home = b.data_dir().unwrap();
    let policy = home.join("policy.toml");
    std::fs::write(&policy, "[tenants.a]\nmax_concurrency = 1\n[tenants.b]\n").unwrap();
    let queue_a = format!("a={addr_a}");
    let queue_b = format!("b={addr_b}");
    let module = hostile_path();
    let w = Worker::with_args(
        &b,
        &[
            "--queue",
            &queue_a,
            "--queue",
            &queue_b,
            "--module",
            module.to_str().unwrap(),
            "--concurrency",
            "2",
            "--drain",
            "--wait",
            "0",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let (status, log) = w.wait(Duration::from_secs(120));
    assert!(status.success(), "{log}");
    let events = events_of(&log);
    let of = |tenant: &str, msg: &str| -> Vec<usize> {
        (0..events.len())
            .filter(|&i| is(&events[i], msg, &[("tenant", tenant)]))
            .collect()
    };
    let (a_starts, a_ends) = (
        of("a", "worker child started"),
        of("a", "worker child ended"),
    );
    let b_done = of("b", "job succeeded; message deleted");
    assert_eq!(
        (a_starts.len(), a_ends.len(), b_done.len()),
        (30, 30, 20),
        "{log}"
    );
    for k in 1..a_starts.len() {
        assert!(a_starts[k] > a_ends[k - 1], "a ran two at once:\n{log}");
    }
    for &i in &a_starts {
        assert_eq!(field(&events[i], "attempt"), "1", "a received once: {log}");
    }
    assert!(
        b_done.last() < a_starts.get(2),
        "b's jobs all finished while a's third was still waiting:\n{log}"
    );
    assert_eq!(counts(qa.as_ref()).await, (0, 0, 0));
    assert_eq!(counts(qb.as_ref()).await, (0, 0, 0));
}

/// Tenants bound to queues but without a policy, or whose policy does not
/// allow the module, are refused with the reason; a capped tenant on a
/// shared queue has messages over its cap returned for later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_a_shared_queue_respects_caps() {
    let b = Backend::embedded();
    let home = home_with_tool(&b, &["acme", "nomods", "stranger"]);
    let acme_key = key_file(home.path(), "acme.key", "acme-key-0123456789-abcdef");
    let policy = home.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[tenants.acme]\nmax_concurrency = 1\nkey_file = \"{}\"\n[tenants.nomods]\nmodules = [\"other\"]\n",
            acme_key.display()
        ),
    )
    .unwrap();
    let key = SigningKey::load(&acme_key).unwrap();
    let settings = config(30);
    let (shared, dlq) = b.create_with_dlq("capped", 5, &settings).await;
    let (stranger, stranger_dlq) = b.create_with_dlq("stranger", 5, &settings).await;
    let (nomods, nomods_dlq) = b.create_with_dlq("nomods", 5, &settings).await;
    let later = unix_now() + 600;
    for i in 0..3 {
        let m = signed(&key, &format!("sleep-ms:{}", 1500 + i), "acme", later);
        shared.send(&m).await.unwrap();
    }
    stranger
        .send(&outgoing("sleep-ms:1", &[("module", "tool")]))
        .await
        .unwrap();
    nomods
        .send(&outgoing("sleep-ms:1", &[("module", "tool")]))
        .await
        .unwrap();
    let (s, n) = (
        format!("stranger={}", b.address_of(stranger.as_ref())),
        format!("nomods={}", b.address_of(nomods.as_ref())),
    );
    let w = worker_in(
        &b,
        home.path(),
        &[
            "--shared-queue",
            &b.address_of(shared.as_ref()),
            "--queue",
            &s,
            "--queue",
            &n,
            "--concurrency",
            "4",
            "--drain",
            "--wait",
            "0",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let (status, log) = w.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let events = events_of(&log);
    let acme: Vec<usize> = (0..events.len())
        .filter(|&i| {
            ["worker child started", "worker child ended"].contains(&message(&events[i]))
                && get(&events[i], "tenant").as_deref() == Some("acme")
        })
        .collect();
    assert_eq!(acme.len(), 6, "{log}");
    for pair in acme.chunks(2) {
        assert_eq!(
            message(&events[pair[0]]),
            "worker child started",
            "one at a time: {log}"
        );
        assert_eq!(
            message(&events[pair[1]]),
            "worker child ended",
            "one at a time: {log}"
        );
    }
    assert!(
        count_in(
            &log,
            "tenant at its concurrency cap; returning the message for later",
            &[]
        ) >= 1,
        "{log}"
    );
    assert!(all(dlq.as_ref()).await.is_empty());
    let stranger_reasons = dead_letter_reasons(stranger_dlq.as_ref()).await;
    assert_eq!(
        stranger_reasons,
        ["tenant `stranger` has no policy on this worker"]
    );
    let nomods_reasons = dead_letter_reasons(nomods_dlq.as_ref()).await;
    assert_eq!(
        nomods_reasons,
        ["tenant `nomods` may not run module `tool`"]
    );
}
