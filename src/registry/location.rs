//! Where a registry is (`--registry`: a directory, `s3://BUCKET[/PREFIX]`
//! or `oci://HOST[:PORT][/PREFIX]`) and how a host caches what it fetches
//! from a remote one. Parsed in the CLI process.

use super::RegistryError;
use super::oci::OciRef;
use std::path::PathBuf;
use std::time::Duration;

/// Where a registry is: a directory, `s3://BUCKET[/PREFIX]` or
/// `oci://HOST[:PORT][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory.
    Dir(PathBuf),
    /// An S3 bucket and key prefix (empty, or ending in `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
    /// Repositories of an OCI registry.
    Oci {
        /// `HOST[:PORT]`.
        registry: String,
        /// The repository path prefix (empty, or ending in `/`).
        prefix: String,
    },
}

impl Location {
    /// Parse `--registry`: `s3://BUCKET[/PREFIX]`,
    /// `oci://HOST[:PORT][/PREFIX]`, or a directory path.
    pub fn parse(s: &str) -> Result<Location, RegistryError> {
        let bad = || RegistryError::BadLocation(s.to_owned());
        if let Some(rest) = s.strip_prefix("oci://") {
            let (registry, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix: String = prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(|p| format!("{p}/"))
                .collect();
            // The prefix and host must make valid repository names: try
            // one (the host rule is the references' own).
            let probe = format!("oci://{registry}/{prefix}t/n:latest");
            let port_ok = registry
                .split_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok || prefix.len() > 200 || OciRef::parse(&probe).is_err() {
                return Err(bad());
            }
            return Ok(Location::Oci {
                registry: registry.to_owned(),
                prefix,
            });
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
            if !valid_bucket(bucket)
                || parts.iter().any(|p| *p == "." || *p == "..")
                || prefix.len() > 512
            {
                return Err(bad());
            }
            let prefix = parts.iter().map(|p| format!("{p}/")).collect();
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        // `s3:bucket`, `oci://x`, `https://x`: a scheme, not a directory
        // (write `./name:x` for a directory whose name has a colon).
        let scheme = s
            .split_once(':')
            .is_some_and(|(head, _)| !head.is_empty() && !head.contains('/'));
        if s.is_empty() || scheme {
            return Err(bad());
        }
        Ok(Location::Dir(PathBuf::from(s)))
    }
}

/// S3's bucket naming rules: 3-63 of a-z, 0-9, `.`, `-`, starting and
/// ending with a letter or digit, no `..`.
fn valid_bucket(b: &str) -> bool {
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && edge(b.bytes().next())
        && edge(b.bytes().last())
        && !b.contains("..")
}

/// How a host keeps what it fetched from a remote registry.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The downloaded-blob cache directory.
    pub dir: PathBuf,
    /// Its size cap; least recently used blobs go first.
    pub max_bytes: u64,
    /// How long a resolved name is trusted before `latest` is read again.
    pub latest_ttl: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_are_refused() {
        assert_eq!(
            Location::parse("s3://jobs-bucket/fleet/a/").unwrap(),
            Location::S3 {
                bucket: "jobs-bucket".into(),
                prefix: "fleet/a/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://jobs").unwrap(),
            Location::S3 {
                bucket: "jobs".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("/srv/registry").unwrap(),
            Location::Dir("/srv/registry".into())
        );
        assert_eq!(
            Location::parse("./name:with-colon").unwrap(),
            Location::Dir("./name:with-colon".into())
        );
        assert_eq!(
            Location::parse("s3://jobs///a//b//").unwrap(),
            Location::parse("s3://jobs/a/b").unwrap(),
            "one registry, however its slashes are written"
        );
        assert_eq!(
            Location::parse("oci://127.0.0.1:5000/jobs//fleet/").unwrap(),
            Location::Oci {
                registry: "127.0.0.1:5000".into(),
                prefix: "jobs/fleet/".into()
            }
        );
        assert_eq!(
            Location::parse("oci://ghcr.io").unwrap(),
            Location::Oci {
                registry: "ghcr.io".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "",
            "s3://",
            "oci://",
            "oci://acme/jobs",
            "oci://ghcr.io/Jobs",
            "oci://ghcr.io/jobs:v1",
            "oci://ghcr.io/jobs/../x",
            "oci://127.0.0.1:99999/jobs",
            "oci://127.0.0.1:0/jobs",
            "s3://UPPER",
            "s3://ab",
            "s3://b_u",
            "s3://bucket/../x",
            "https://x",
            "s3:bucket",
            "s3:/bucket",
            "s3://-bucket",
            "s3://bucket-",
            "s3://a..b",
        ] {
            assert!(
                matches!(Location::parse(bad), Err(RegistryError::BadLocation(_))),
                "{bad}"
            );
        }
    }
}
