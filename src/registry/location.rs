//! Where a registry is (`--registry`: a directory or `s3://BUCKET[/PREFIX]`)
//! and how a host caches what it fetches from a remote one. Parsed in the
//! CLI process.

use super::RegistryError;
use std::path::PathBuf;
use std::time::Duration;

/// Where a registry is: a directory or `s3://BUCKET[/PREFIX]`.
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
}

impl Location {
    /// Parse `--registry`: `s3://BUCKET[/PREFIX]`, or a directory path.
    pub fn parse(s: &str) -> Result<Location, RegistryError> {
        let bad = || RegistryError::BadLocation(s.to_owned());
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            let prefix = prefix.trim_matches('/');
            if !bucket_ok || prefix.split('/').any(|p| p == "." || p == "..") {
                return Err(bad());
            }
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if s.is_empty() || s.contains("://") {
            return Err(bad());
        }
        Ok(Location::Dir(PathBuf::from(s)))
    }
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
        for bad in [
            "",
            "s3://",
            "s3://UPPER",
            "s3://ab",
            "s3://b_u",
            "s3://bucket/../x",
            "oci://host/repo",
            "https://x",
        ] {
            assert!(
                matches!(Location::parse(bad), Err(RegistryError::BadLocation(_))),
                "{bad}"
            );
        }
    }
}
