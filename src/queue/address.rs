//! `--queue` addressing: a plain name is an embedded queue in the data
//! directory; an `http(s)://` URL is an SQS queue URL. Parsed in the CLI
//! process (queue commands, `worker`).

use super::QueueError;

/// Where a queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueAddress {
    /// An embedded queue of the data directory, by name.
    Embedded { name: String },
    /// An SQS queue, by URL.
    Sqs { url: String },
}

impl QueueAddress {
    /// Parse a `--queue` value: an `http(s)://HOST/ACCOUNT/NAME` URL or a
    /// valid queue name.
    pub(crate) fn parse(s: &str) -> Result<Self, QueueError> {
        let s = s.trim();
        if s.starts_with("http://") || s.starts_with("https://") {
            let rest = s.split_once("://").map(|(_, r)| r).unwrap_or("");
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            if host.is_empty() || segments.len() != 2 {
                return Err(QueueError::InvalidInput(format!(
                    "`{s}` is not an SQS queue URL (https://HOST/ACCOUNT_ID/QUEUE_NAME)"
                )));
            }
            return Ok(QueueAddress::Sqs { url: s.to_owned() });
        }
        if s.contains("://") {
            return Err(QueueError::InvalidInput(format!(
                "`{s}`: only http(s) queue URLs are supported"
            )));
        }
        super::validate::queue_name(s, s.ends_with(".fifo"))?;
        Ok(QueueAddress::Embedded { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert_eq!(
            QueueAddress::parse("jobs").unwrap(),
            QueueAddress::Embedded {
                name: "jobs".into()
            }
        );
        let url = "http://127.0.0.1:5000/123456789012/jobs.fifo";
        let a = QueueAddress::parse(url).unwrap();
        assert_eq!(a, QueueAddress::Sqs { url: url.into() });
        for bad in [
            "ftp://x/1/q",
            "https://",
            "https://host/only-one",
            "bad name",
            "",
        ] {
            assert!(QueueAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
