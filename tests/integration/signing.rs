//! Message signing across implementations: the Python signer
//! (`scripts/sign_message.py`) against `wasm_jobs::signing::verify`, and
//! `wasm-jobs send --tenant --key-file` end to end through an embedded queue.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasm_jobs::queue::embedded::EmbeddedStore;
use wasm_jobs::queue::{AttributeValue, Attributes, Queue, ReceiveRequest};
use wasm_jobs::signing::{self, SignatureError, SigningKey};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const VECTOR: &str = "v1=f945f8753dcb52099c959dbffc55b2127d8f3e710b79cc6ec8953cce6ba65cd1";

fn key() -> SigningKey {
    SigningKey::from_bytes(KEY.as_bytes()).expect("a 32-byte key")
}

/// The test key in a mode-600 file, with a trailing newline.
fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("shared.key");
    std::fs::write(&path, format!("{KEY}\n")).expect("writing the key file");
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o600)).expect("chmod 600");
    path
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

#[derive(serde::Deserialize)]
struct Signed {
    body: String,
    attributes: Attributes,
}

/// `scripts/sign_message.py KEY BODY TENANT EXPIRES EXTRA...`, parsed.
fn python_sign(key: &Path, body: &str, tenant: &str, expires: u64, extra: &[&str]) -> Signed {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sign_message.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(key)
        .args([body, tenant, &expires.to_string()])
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the signer prints one JSON object")
}

#[test]
fn python_signer_reproduces_the_test_vector() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"{"op":"count","text":"a b c"}"#;
    let signed = python_sign(
        &key_file(dir.path()),
        body,
        "acme",
        1_893_456_000,
        &["module=wc"],
    );
    assert_eq!(signed.body, body);
    let sig = &signed.attributes[signing::SIGNATURE_ATTRIBUTE];
    assert_eq!(*sig, AttributeValue::String(VECTOR.into()));
    let mut rust = Attributes::from([
        ("tenant".into(), AttributeValue::String("acme".into())),
        ("module".into(), AttributeValue::String("wc".into())),
    ]);
    signing::sign(&key(), body, &mut rust, 1_893_456_000);
    assert_eq!(rust, signed.attributes);
    assert_eq!(
        signing::verify(&key(), body, &signed.attributes, 1_893_455_999),
        Ok(())
    );
    let tampered = signing::verify(&key(), "{}", &signed.attributes, 0);
    assert_eq!(tampered, Err(SignatureError::Mismatch));
}

#[test]
fn python_signed_unicode_messages_verify_in_rust() {
    let dir = tempfile::tempdir().unwrap();
    let body = "héllo wörld 😀 \"quoted\" \\ tab\there\nsecond line — ✓ 日本語";
    let extra = [
        "module=wc",
        "Zeta=upper case sorts first",
        "a.first=",
        "z-last=ζ∑ 𝄞",
        "priority=high",
    ];
    let expires = now() + 600;
    let signed = python_sign(&key_file(dir.path()), body, "tënant-ü", expires, &extra);
    assert_eq!(signed.body, body);
    assert_eq!(signed.attributes.len(), extra.len() + 3);
    let key = key();
    assert_eq!(
        signing::verify(&key, &signed.body, &signed.attributes, now()),
        Ok(())
    );
    let mut resigned = signed.attributes.clone();
    signing::sign(&key, body, &mut resigned, expires);
    assert_eq!(resigned, signed.attributes, "Rust and Python agree");
    let tampered = format!("{body}!");
    let err = signing::verify(&key, &tampered, &signed.attributes, now()).unwrap_err();
    assert_eq!(err, SignatureError::Mismatch);
    let mut attrs = signed.attributes.clone();
    attrs.insert("tenant".into(), AttributeValue::String("other".into()));
    let err = signing::verify(&key, body, &attrs, now()).unwrap_err();
    assert_eq!(err, SignatureError::Mismatch);
    let late = signing::verify(&key, body, &signed.attributes, expires);
    assert!(matches!(late, Err(SignatureError::Expired { .. })));
}

fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasm-jobs"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("wasm-jobs runs")
}

#[tokio::test]
async fn send_signs_single_and_batch_messages() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = key_file(dir.path());
    let key_arg = key_path.to_str().unwrap();
    let data = dir.path().join("data");
    let created = cli(&data, &["queue", "create", "q"]);
    assert!(created.status.success(), "{created:?}");
    let before = now();
    let single = [
        "send",
        "--queue",
        "q",
        "--tenant",
        "acme",
        "--key-file",
        key_arg,
    ];
    let out = cli(
        &data,
        &[&single[..], &["--attr", "module=wc", "the body"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = dir.path().join("batch");
    std::fs::write(&batch, "line one\nline two ü\n").unwrap();
    let batch_args = ["--expires-in", "60", "--batch", batch.to_str().unwrap()];
    let out = cli(&data, &[&single[..], &batch_args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let q = EmbeddedStore::open(&data).unwrap().queue("q").unwrap();
    let request = ReceiveRequest {
        max_messages: 10,
        wait: Duration::ZERO,
        visibility_timeout: None,
    };
    let mut got = q.receive(request).await.unwrap();
    got.sort_by_key(|m| m.sent_timestamp_ms);
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    let key = key();
    for m in &got {
        assert_eq!(signing::verify(&key, &m.body, &m.attributes, now()), Ok(()));
        let tenant = &m.attributes["tenant"];
        assert_eq!(*tenant, AttributeValue::String("acme".into()));
        let AttributeValue::Number(expires) = &m.attributes[signing::EXPIRES_ATTRIBUTE] else {
            panic!("expiry is not a Number: {:?}", m.attributes);
        };
        let expires_in = expires.parse::<u64>().unwrap() - before;
        let expected = if m.body == "the body" { 3600 } else { 60 };
        assert!(
            (expected..expected + 5).contains(&expires_in),
            "{expires_in}"
        );
        let forged = format!("{} (forged)", m.body);
        let err = signing::verify(&key, &forged, &m.attributes, now());
        assert_eq!(err, Err(SignatureError::Mismatch));
    }
    assert!(got.iter().any(|m| m.attributes.contains_key("module")));
}

#[test]
fn send_refuses_bad_key_files_and_keys_without_a_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = key_file(dir.path());
    let data = dir.path().join("data");
    assert!(cli(&data, &["queue", "create", "q"]).status.success());
    std::fs::set_permissions(&key_path, PermissionsExt::from_mode(0o644)).unwrap();
    let key_arg = key_path.to_str().unwrap();
    let args = [
        "send",
        "--queue",
        "q",
        "--tenant",
        "acme",
        "--key-file",
        key_arg,
        "x",
    ];
    let out = cli(&data, &args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("chmod 600 {key_arg}")), "{err}");
    let out = cli(&data, &["send", "--queue", "q", "--key-file", key_arg, "x"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses --key-file without --tenant"
    );
    let stats = cli(&data, &["queue", "stats", "q", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["visible"], 0, "nothing was sent");
}
