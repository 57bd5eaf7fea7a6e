//! Byte sizes as people write them (`64MiB`, `1G`), for the command line
//! and policy files alike, and RFC 3339 times (dead-letter attributes, OCI
//! annotations). Runs in the CLI process (flag parsing, and the policy files
//! that `worker` and `policy check` load) and the worker parent. A leaf: it
//! imports nothing from the crate.

/// A byte count: plain digits, or with a K/M/G (or KiB/MiB/GiB) suffix,
/// powers of 1024.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a byte size (e.g. 1048576, 64MiB, 1G)"))?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size suffix `{other}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Milliseconds since the epoch as an RFC 3339 time (UTC, to the second).
pub(crate) fn rfc3339(ms: u64) -> String {
    use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
    DateTime::from_secs((ms / 1000) as i64)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| ms.to_string())
}

/// An RFC 3339 time as milliseconds since the epoch.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
    let t = DateTime::from_str(text, DateTimeFormat::DateTime).ok()?;
    u64::try_from(t.to_millis().ok()?).ok()
}
