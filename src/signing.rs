//! Signing and verifying messages on shared queues: HMAC-SHA256 over the
//! body and attributes, so a worker on a queue that several producers can
//! write to runs only messages from holders of the key. The `send` CLI signs
//! (`--key-file`), the worker parent process verifies before forking a job.
//!
//! Wire format, version 1 (other languages implement it too; see
//! `scripts/sign_message.py`). With `lp(x)` = `x`'s length as a u32
//! big-endian, then `x`, the canonical input is:
//!
//! ```text
//! "wasm-jobs-signature-v1\n"            23 ASCII bytes
//! lp(body as UTF-8)
//! u32 big-endian: number of covered attributes
//! per covered attribute, names in ascending byte order:
//!     lp(name as UTF-8)
//!     type byte: 'S' String, 'N' Number, 'B' Binary
//!     lp(value: String/Number text as UTF-8, Binary raw bytes)
//! ```
//!
//! Covered attributes are all but [`SIGNATURE_ATTRIBUTE`], so the expiry
//! ([`EXPIRES_ATTRIBUTE`], a Number of decimal Unix seconds) and `tenant`
//! are covered. The signature attribute is the String `v1=` followed by the
//! lowercase hex HMAC-SHA256(key, canonical input). A message is valid while
//! `now < expires`.

use crate::queue::{AttributeValue, Attributes};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the attribute carrying the signature (`v1=<64 hex digits>`).
pub const SIGNATURE_ATTRIBUTE: &str = "wasm-jobs.signature";
/// Name of the attribute carrying the expiry (Number, Unix seconds).
pub const EXPIRES_ATTRIBUTE: &str = "wasm-jobs.expires";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

const DOMAIN: &[u8] = b"wasm-jobs-signature-v1\n";
const VERSION_PREFIX: &str = "v1=";

type HmacSha256 = Hmac<Sha256>;

/// A shared HMAC key, held as a keyed HMAC-SHA256 state. Its `Debug` output
/// shows only the key's length.
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
    len: usize,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} bytes, redacted)", self.len)
    }
}

/// Why a key could not be loaded; each message names the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file (path, error) could not be opened.
    #[error("cannot open key file {p}: {1}", p = .0.display())]
    Open(PathBuf, std::io::Error),
    /// The key file path names a symbolic link.
    #[error("key file {p} is a symbolic link; give the path of the key file itself", p = .0.display())]
    Symlink(PathBuf),
    /// The key file is a directory, device, FIFO or socket.
    #[error("key file {p} is not a regular file", p = .0.display())]
    NotRegularFile(PathBuf),
    /// Group or others have some permission on the key file (path, mode).
    #[error("key file {p} is accessible by group or others (mode {1:03o}); run: chmod 600 {p}", p = .0.display())]
    TooOpen(PathBuf, u32),
    /// The key file (path, owner uid) is not owned by the effective uid.
    #[error("key file {p} is owned by uid {1}, not by the current user (uid {2})", p = .0.display())]
    WrongOwner(PathBuf, u32, u32),
    /// Reading the opened key file (path, error) failed.
    #[error("cannot read key file {p}: {1}", p = .0.display())]
    Read(PathBuf, std::io::Error),
    /// The key (origin, length) is shorter than [`MIN_KEY_BYTES`].
    #[error("{0} is {1} bytes long; a signing key needs at least {MIN_KEY_BYTES}")]
    TooShort(String, usize),
    /// The HMAC implementation refused the key (it accepts any length).
    #[error("the HMAC implementation refused the key")]
    Rejected,
}

impl SigningKey {
    /// A key from its bytes; at least [`MIN_KEY_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, KeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort("the signing key".into(), bytes.len()));
        }
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| KeyError::Rejected)?;
        let len = bytes.len();
        Ok(SigningKey { mac, len })
    }

    /// HMAC-SHA256 over `parts`, each prefixed with its length as a u64
    /// (so no bytes can move from one part to the next). For keyed checks
    /// other than message signatures, such as compiled artifacts.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.keyed(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is [`Self::tag`] of `parts`, compared in constant time.
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.keyed(parts).verify_slice(tag).is_ok()
    }

    fn keyed(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// Read a key file: a regular file (not a symlink) owned by the current
    /// effective user, with no permission for group or others. The key is
    /// the file's bytes without one trailing `\n` or `\r\n`.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let p = || path.to_owned();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: opening a FIFO must not hang; it is refused below.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => KeyError::Symlink(p()),
                _ => KeyError::Open(p(), e),
            })?;
        let meta = file.metadata().map_err(|e| KeyError::Read(p(), e))?;
        if !meta.file_type().is_file() {
            return Err(KeyError::NotRegularFile(p()));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen(p(), mode));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(KeyError::WrongOwner(p(), meta.uid(), euid));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| KeyError::Read(p(), e))?;
        let key = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(&bytes);
        SigningKey::from_bytes(key).map_err(|e| match e {
            KeyError::TooShort(_, len) => {
                KeyError::TooShort(format!("the key in {}", path.display()), len)
            }
            other => other,
        })
    }
}

/// Why a message's signature was refused; the text becomes the dead-letter
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature attribute.
    #[error("the message carries no {SIGNATURE_ATTRIBUTE}")]
    Missing,
    /// The signature attribute is not a String `v1=` + 64 lowercase hex
    /// digits (what it is instead).
    #[error(
        "the {SIGNATURE_ATTRIBUTE} attribute is malformed: expected a String `v1=` followed by 64 lowercase hex digits, got {0}"
    )]
    Malformed(String),
    /// No expiry attribute.
    #[error("the message carries no {EXPIRES_ATTRIBUTE} (a Number of Unix seconds)")]
    MissingExpiry,
    /// The expiry attribute is not a Number holding a decimal integer (what
    /// it is instead).
    #[error(
        "the {EXPIRES_ATTRIBUTE} attribute is malformed: expected a Number holding decimal Unix seconds, got {0}"
    )]
    BadExpiry(String),
    /// The MAC does not match.
    #[error("the signature does not match the body and attributes (wrong key or tampered message)")]
    Mismatch,
    /// The signature is genuine but the message is past its expiry.
    #[error("the message expired at {expired_at} (Unix seconds); it is now {now}")]
    Expired {
        /// The message's expiry, Unix seconds.
        expired_at: u64,
        /// The time of verification, Unix seconds.
        now: u64,
    },
}

fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Queue messages are at most 256 KiB, far below u32::MAX.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes that are MACed: see the module documentation.
pub fn canonical(body: &str, attributes: &Attributes) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.len());
    out.extend_from_slice(DOMAIN);
    lp(&mut out, body.as_bytes());
    // A BTreeMap<String, _> iterates in ascending byte order of its keys.
    let covered: Vec<_> = attributes
        .iter()
        .filter(|(name, _)| name.as_str() != SIGNATURE_ATTRIBUTE)
        .collect();
    let count = u32::try_from(covered.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in covered {
        lp(&mut out, name.as_bytes());
        let (tag, bytes) = match value {
            AttributeValue::String(s) => (b'S', s.as_bytes()),
            AttributeValue::Number(n) => (b'N', n.as_bytes()),
            AttributeValue::Binary(b) => (b'B', b.as_slice()),
        };
        out.push(tag);
        lp(&mut out, bytes);
    }
    out
}

fn mac(key: &SigningKey, body: &str, attributes: &Attributes) -> HmacSha256 {
    let mut mac = key.mac.clone();
    mac.update(&canonical(body, attributes));
    mac
}

/// Sign a message in place: set the expiry attribute, drop any old
/// signature, and add the signature over the body and all other attributes.
pub fn sign(key: &SigningKey, body: &str, attributes: &mut Attributes, expires_at_unix_secs: u64) {
    attributes.insert(
        EXPIRES_ATTRIBUTE.to_owned(),
        AttributeValue::Number(expires_at_unix_secs.to_string()),
    );
    attributes.remove(SIGNATURE_ATTRIBUTE);
    let tag = mac(key, body, attributes).finalize().into_bytes();
    let value = format!("{VERSION_PREFIX}{}", hex::encode(tag));
    attributes.insert(
        SIGNATURE_ATTRIBUTE.to_owned(),
        AttributeValue::String(value),
    );
}

/// Check a message's signature, then its expiry. Checks run in this order:
/// signature present and well-formed, expiry present and a decimal integer,
/// the MAC (constant time), and only then the expiry time, so a tampered
/// expiry is a [`SignatureError::Mismatch`].
pub fn verify(
    key: &SigningKey,
    body: &str,
    attributes: &Attributes,
    now_unix_secs: u64,
) -> Result<(), SignatureError> {
    let tag = parse_signature(attributes.get(SIGNATURE_ATTRIBUTE))?;
    let expires_at = parse_expiry(attributes.get(EXPIRES_ATTRIBUTE))?;
    mac(key, body, attributes)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::Mismatch)?;
    if now_unix_secs >= expires_at {
        return Err(SignatureError::Expired {
            expired_at: expires_at,
            now: now_unix_secs,
        });
    }
    Ok(())
}

fn parse_signature(value: Option<&AttributeValue>) -> Result<Vec<u8>, SignatureError> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    match value {
        None => Err(SignatureError::Missing),
        Some(AttributeValue::String(s)) => match s.strip_prefix(VERSION_PREFIX) {
            Some(d) if d.len() == 64 && d.bytes().all(lower_hex) => {
                hex::decode(d).map_err(|_| SignatureError::Malformed(describe(s)))
            }
            _ => Err(SignatureError::Malformed(describe(s))),
        },
        Some(other) => Err(SignatureError::Malformed(format!(
            "a {}",
            other.data_type()
        ))),
    }
}

fn parse_expiry(value: Option<&AttributeValue>) -> Result<u64, SignatureError> {
    match value {
        None => Err(SignatureError::MissingExpiry),
        Some(AttributeValue::Number(n)) => match n.parse() {
            Ok(secs) if n.bytes().all(|b| b.is_ascii_digit()) => Ok(secs),
            _ => Err(SignatureError::BadExpiry(format!(
                "the Number {}",
                describe(n)
            ))),
        },
        Some(other) => Err(SignatureError::BadExpiry(format!(
            "a {}",
            other.data_type()
        ))),
    }
}

/// Attacker-controlled text for an error message: quoted, at most 80 chars.
fn describe(text: &str) -> String {
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_redrive_keeps_the_signing_attributes() {
        assert_eq!(
            crate::queue::KEPT_ON_REDRIVE,
            [SIGNATURE_ATTRIBUTE, EXPIRES_ATTRIBUTE]
        );
    }

    const BODY: &str = r#"{"op":"count","text":"a b c"}"#;
    const EXPIRES: u64 = 1_893_456_000;
    /// Also computed independently with Python's hmac/hashlib.
    const VECTOR: &str = "v1=f945f8753dcb52099c959dbffc55b2127d8f3e710b79cc6ec8953cce6ba65cd1";

    fn s(v: &str) -> AttributeValue {
        AttributeValue::String(v.into())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::Number(v.into())
    }
    fn key() -> SigningKey {
        SigningKey::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap()
    }
    fn signed() -> Attributes {
        let mut attrs =
            Attributes::from([("tenant".into(), s("acme")), ("module".into(), s("wc"))]);
        sign(&key(), BODY, &mut attrs, EXPIRES);
        attrs
    }
    /// The error for the test body with `change` applied to the signed attributes.
    fn error_after(change: impl FnOnce(&mut Attributes)) -> SignatureError {
        let mut attrs = signed();
        change(&mut attrs);
        verify(&key(), BODY, &attrs, 0).unwrap_err()
    }

    #[test]
    fn test_vector_and_round_trip() {
        let attrs = signed();
        assert_eq!(attrs[SIGNATURE_ATTRIBUTE], s(VECTOR));
        assert_eq!(attrs[EXPIRES_ATTRIBUTE], n("1893456000"));
        let canonical_hex = concat!(
            "7761736d2d6a6f62732d7369676e61747572652d76310a", // domain
            "0000001d7b226f70223a22636f756e74222c2274657874223a226120622063227d",
            "00000003",                                     // 3 covered attributes
            "000000066d6f64756c6553000000027763",           // module S wc
            "0000000674656e616e74530000000461636d65",       // tenant S acme
            "000000117761736d2d6a6f62732e657870697265734e", // wasm-jobs.expires N
            "0000000a31383933343536303030",                 // 1893456000
        );
        assert_eq!(hex::encode(canonical(BODY, &attrs)), canonical_hex);
        assert_eq!(verify(&key(), BODY, &attrs, EXPIRES - 1), Ok(()));
        let mut resigned = attrs.clone();
        sign(&key(), BODY, &mut resigned, EXPIRES);
        assert_eq!(resigned, attrs, "re-signing replaces the old signature");
        let mut binary = attrs.clone();
        binary.insert("blob".into(), AttributeValue::Binary(vec![0, 255]));
        sign(&key(), "ü", &mut binary, EXPIRES);
        assert_eq!(verify(&key(), "ü", &binary, 0), Ok(()));
    }

    #[test]
    fn tampering_and_wrong_keys_are_mismatches() {
        let other = SigningKey::from_bytes(b"another key of 32 bytes, really!").unwrap();
        let mismatch = Err(SignatureError::Mismatch);
        assert_eq!(verify(&other, BODY, &signed(), 0), mismatch);
        assert_eq!(verify(&key(), "{}", &signed(), 0), mismatch);
        let changes: [fn(&mut Attributes); 5] = [
            |a| drop(a.insert("tenant".into(), s("evil"))),
            |a| drop(a.insert("tenant".into(), n("1"))),
            |a| drop(a.insert("extra".into(), s("x"))),
            |a| drop(a.remove("module")),
            |a| drop(a.insert(EXPIRES_ATTRIBUTE.into(), n("1993456000"))),
        ];
        for change in changes {
            assert_eq!(error_after(change), SignatureError::Mismatch);
        }
    }

    #[test]
    fn expired_missing_and_malformed_are_told_apart() {
        let err = verify(&key(), BODY, &signed(), EXPIRES).unwrap_err();
        let expired = SignatureError::Expired {
            expired_at: EXPIRES,
            now: EXPIRES,
        };
        assert_eq!(err, expired);
        let err = error_after(|a| drop(a.remove(SIGNATURE_ATTRIBUTE)));
        assert_eq!(
            err.to_string(),
            "the message carries no wasm-jobs.signature"
        );
        let upper = VECTOR.to_uppercase().replace("V1", "v1");
        for bad in [s("v2=00"), s(&VECTOR[..66]), s(&upper), n("1")] {
            let err = error_after(|a| drop(a.insert(SIGNATURE_ATTRIBUTE.into(), bad)));
            assert!(matches!(err, SignatureError::Malformed(_)), "{err}");
        }
        let err = error_after(|a| drop(a.remove(EXPIRES_ATTRIBUTE)));
        assert_eq!(err, SignatureError::MissingExpiry);
        for bad in [s("1893456000"), n("+1"), n("1.5"), n("")] {
            let err = error_after(|a| drop(a.insert(EXPIRES_ATTRIBUTE.into(), bad)));
            assert!(matches!(err, SignatureError::BadExpiry(_)), "{err}");
        }
    }

    #[test]
    fn key_files_must_be_private_regular_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let chmod = |mode| std::fs::set_permissions(&path, PermissionsExt::from_mode(mode));
        std::fs::write(&path, b"0123456789abcdef0123456789abcdef\n").unwrap();
        chmod(0o644).unwrap();
        let err = SigningKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::TooOpen(_, 0o644)), "{err}");
        let hint = format!("chmod 600 {}", path.display());
        assert!(err.to_string().contains(&hint), "{err}");
        chmod(0o600).unwrap();
        let key = SigningKey::load(&path).unwrap();
        assert_eq!(verify(&key, BODY, &signed(), 0), Ok(()), "newline stripped");
        assert!(!format!("{key:?}").contains("0123"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(SigningKey::load(&link), Err(KeyError::Symlink(_))));
        let err = SigningKey::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::NotRegularFile(_)), "{err}");
        // Only root can give a file away; as anyone else this part is skipped.
        let owner = std::fs::metadata(&path).unwrap().uid();
        if std::os::unix::fs::chown(&path, Some(4242), None).is_ok() {
            let err = SigningKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::WrongOwner(_, 4242, _)), "{err}");
            std::os::unix::fs::chown(&path, Some(owner), None).unwrap();
        }
        std::fs::write(&path, b"fifteen bytes!!\r\n").unwrap();
        let err = SigningKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::TooShort(_, 15)), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}
