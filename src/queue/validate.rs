//! SQS's input rules, checked before any call so that both backends reject
//! bad input the same way, with a clear message, and nothing is half-sent.
//! Runs wherever queues are called: the worker parent and the CLI process.

use super::{OutgoingMessage, QueueError, ReceiveRequest, limits};
use std::time::Duration;

fn invalid(msg: impl Into<String>) -> QueueError {
    QueueError::InvalidInput(msg.into())
}

/// Queue names: 1-80 of `[A-Za-z0-9_-]`, plus a `.fifo` suffix for FIFO queues.
pub(crate) fn queue_name(name: &str, fifo: bool) -> Result<(), QueueError> {
    let stem = match (fifo, name.strip_suffix(".fifo")) {
        (true, Some(stem)) => stem,
        (true, None) => {
            return Err(invalid(format!(
                "FIFO queue name `{name}` must end in .fifo"
            )));
        }
        (false, Some(_)) => {
            return Err(invalid(format!(
                "queue `{name}` ends in .fifo but is not FIFO"
            )));
        }
        (false, None) => name,
    };
    let ok = !name.is_empty()
        && name.len() <= 80
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "queue name `{name}`: use 1-80 letters, digits, '-' or '_'"
        )))
    }
}

/// Attribute names: 1-256 of `[A-Za-z0-9_.-]`, no leading, trailing or
/// doubled '.', and not starting with `AWS.` or `Amazon.` (any case).
fn attribute_name(name: &str) -> Result<(), QueueError> {
    let lower = name.to_ascii_lowercase();
    let why = if name.is_empty() || name.len() > 256 {
        Some("must be 1-256 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Some("may contain only letters, digits, '_', '-' and '.'")
    } else if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        Some("may not start or end with '.' or contain '..'")
    } else if lower.starts_with("aws.") || lower.starts_with("amazon.") {
        Some("may not start with 'AWS.' or 'Amazon.'")
    } else {
        None
    };
    match why {
        Some(why) => Err(invalid(format!("attribute name `{name}` {why}"))),
        None => Ok(()),
    }
}

/// Characters SQS accepts in bodies and attribute strings.
fn allowed_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A message about to be sent to a queue (FIFO or not).
pub(crate) fn outgoing(msg: &OutgoingMessage, fifo: bool) -> Result<(), QueueError> {
    if msg.body.is_empty() {
        return Err(invalid("message body is empty"));
    }
    if let Some(c) = msg.body.chars().find(|&c| !allowed_char(c)) {
        return Err(invalid(format!(
            "message body contains U+{:04X}, which SQS does not accept",
            c as u32
        )));
    }
    if msg.size() > limits::MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "message is {} bytes with its attributes; the limit is {} (256 KiB)",
            msg.size(),
            limits::MAX_MESSAGE_BYTES
        )));
    }
    if msg.attributes.len() > limits::MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "{} message attributes; the limit is {}",
            msg.attributes.len(),
            limits::MAX_ATTRIBUTES
        )));
    }
    for (name, value) in &msg.attributes {
        attribute_name(name)?;
        if let super::AttributeValue::Number(n) = value
            && n.parse::<f64>().is_err()
        {
            return Err(invalid(format!(
                "attribute `{name}`: `{n}` is not a number"
            )));
        }
    }
    if let Some(delay) = msg.delay {
        if delay > limits::MAX_DELAY {
            return Err(invalid("delay may be at most 900 seconds"));
        }
        if fifo && !delay.is_zero() {
            return Err(invalid("FIFO queues do not take a per-message delay"));
        }
    }
    match (&msg.group_id, fifo) {
        (None, true) => return Err(invalid("FIFO queues need a message group id (--group)")),
        (Some(_), false) => {
            return Err(invalid("message group ids are for FIFO queues only"));
        }
        (Some(g), true) => fifo_id("message group id", g)?,
        (None, false) => {}
    }
    if let Some(d) = &msg.dedup_id {
        if !fifo {
            return Err(invalid("deduplication ids are for FIFO queues only"));
        }
        fifo_id("deduplication id", d)?;
    }
    Ok(())
}

fn fifo_id(what: &str, id: &str) -> Result<(), QueueError> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{what} `{id}` must be 1-128 printable ASCII characters"
        )));
    }
    Ok(())
}

/// A batch of 1 to 10 entries.
pub(crate) fn batch_len(len: usize) -> Result<(), QueueError> {
    if (1..=limits::MAX_BATCH).contains(&len) {
        Ok(())
    } else {
        Err(invalid(format!(
            "a batch holds 1 to {} entries, got {len}",
            limits::MAX_BATCH
        )))
    }
}

/// A visibility timeout: at most 12 hours.
pub(crate) fn visibility(timeout: Duration) -> Result<(), QueueError> {
    if timeout > limits::MAX_VISIBILITY {
        return Err(invalid(
            "visibility timeout may be at most 12 hours (43200 s)",
        ));
    }
    Ok(())
}

/// A receive: 1 to 10 messages, a wait of at most 20 s, a valid visibility.
pub(crate) fn receive(req: &ReceiveRequest) -> Result<(), QueueError> {
    if !(1..=limits::MAX_BATCH).contains(&req.max_messages) {
        return Err(invalid("receive takes 1 to 10 messages"));
    }
    if req.wait > limits::MAX_WAIT {
        return Err(invalid("long-poll wait may be at most 20 seconds"));
    }
    if let Some(v) = req.visibility_timeout {
        visibility(v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::AttributeValue;

    #[test]
    fn queue_names() {
        assert!(queue_name("jobs", false).is_ok());
        assert!(queue_name("jobs.fifo", true).is_ok());
        assert!(queue_name("jobs", true).is_err());
        assert!(queue_name("jobs.fifo", false).is_err());
        assert!(queue_name("no spaces", false).is_err());
        assert!(queue_name(&"x".repeat(81), false).is_err());
    }

    #[test]
    fn attribute_names_sqs_rejects() {
        for bad in ["", "AWS.x", "amazon.y", ".a", "a.", "a..b", "spa ce", "ü"] {
            assert!(attribute_name(bad).is_err(), "{bad:?}");
        }
        for good in ["module", "tenant-id", "a.b_c-1"] {
            assert!(attribute_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn message_size_counts_attributes() {
        let mut m = OutgoingMessage::new("x".repeat(limits::MAX_MESSAGE_BYTES));
        assert!(outgoing(&m, false).is_ok());
        m.attributes
            .insert("a".into(), AttributeValue::String("b".into()));
        let err = outgoing(&m, false).unwrap_err().to_string();
        assert!(err.contains("256 KiB"), "{err}");
    }

    #[test]
    fn bodies_with_characters_sqs_refuses_are_rejected() {
        assert!(outgoing(&OutgoingMessage::new("a\u{0}b"), false).is_err());
        assert!(outgoing(&OutgoingMessage::new("tab\tok ✓"), false).is_ok());
    }

    #[test]
    fn fifo_rules() {
        let plain = OutgoingMessage::new("b");
        assert!(outgoing(&plain, true).is_err(), "group id required");
        let grouped = OutgoingMessage {
            group_id: Some("g".into()),
            ..plain.clone()
        };
        assert!(outgoing(&grouped, true).is_ok());
        assert!(outgoing(&grouped, false).is_err());
        let delayed = OutgoingMessage {
            delay: Some(Duration::from_secs(5)),
            ..grouped
        };
        assert!(outgoing(&delayed, true).is_err());
    }

    #[test]
    fn batches_and_receives() {
        assert!(batch_len(0).is_err() && batch_len(11).is_err() && batch_len(10).is_ok());
        let req = ReceiveRequest {
            max_messages: 11,
            wait: Duration::ZERO,
            visibility_timeout: None,
        };
        assert!(receive(&req).is_err());
        assert!(visibility(Duration::from_secs(43_201)).is_err());
    }
}
