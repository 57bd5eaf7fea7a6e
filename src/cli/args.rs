//! What several subcommands share: where queues are ([`Location`]) and
//! parsers for command-line values (byte sizes, durations, `KEY=VALUE`
//! attributes, signal names). CLI process only.

use crate::paths;
use crate::queue::Queue;
use crate::queue::address::QueueAddress;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where queues are: shared by every queue subcommand.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct Location {
    /// Data directory of embedded queues.
    #[arg(long, global = true, env = "WASM_JOBS_HOME")]
    pub data_dir: Option<PathBuf>,
    /// SQS endpoint (LocalStack, ElasticMQ, moto); AWS_ENDPOINT_URL(_SQS) work too.
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
}

impl Location {
    pub(super) fn data_dir(&self) -> PathBuf {
        paths::data_dir(self.data_dir.as_deref())
    }

    pub(super) async fn open(&self, queue: &str) -> anyhow::Result<Arc<dyn Queue>> {
        let address = QueueAddress::parse(queue)?;
        Ok(crate::queue::open(&address, &self.data_dir(), self.endpoint_url.as_deref()).await?)
    }
}

/// `KEY=VALUE`, the key non-empty.
pub(super) fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

pub(super) use crate::units::parse_bytes;

/// Seconds, possibly fractional (`0.5`), positive and finite.
pub(super) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("seconds must be positive, got `{s}`"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// A signal as a number (`15`) or a name (`SIGTERM`, `TERM`, `term`).
pub(super) fn parse_signal(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal number {n} is out of range 1-64"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "SEGV" => libc::SIGSEGV,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return Err(format!("unknown signal `{s}`")),
    };
    Ok(n as u32)
}

/// Seconds from 0 to `max`; `what` names the limit in the error.
pub(super) fn seconds_up_to(s: &str, max: Duration, what: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0" {
        Duration::ZERO
    } else {
        parse_seconds(s)?
    };
    if d > max {
        return Err(format!("{what} at most {} s", max.as_secs()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs() {
        assert_eq!(parse_attr("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_attr("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_attr("=b").is_err());
        assert!(parse_attr("ab").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("15").unwrap(), 15);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("int").unwrap(), 2);
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("0").is_err());
    }
}
