//! W3C trace context for jobs: a message's `traceparent` attribute
//! (`00-TRACEID-PARENTID-FLAGS`, <https://www.w3.org/TR/trace-context/>)
//! becomes the parent of the job's span. The worker parent makes the
//! job's [`TraceContext`] at admission (a new span id under the sender's
//! trace, or a new trace when the message has none or a malformed one),
//! puts `trace_id` and `span_id` on the job's span, so every log line of
//! the job in the parent and in its worker child carries them, and sends
//! it with the call; the child passes [`TraceContext::traceparent`] on the
//! job's outgoing HTTP requests and the outcome message names the trace.
//! No exporter yet: the ids line up for one to be added.

use rand::RngCore;

/// The message attribute a sender's trace context arrives in.
pub(crate) const TRACEPARENT_ATTRIBUTE: &str = "traceparent";

/// One job attempt's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    pub(crate) trace_id: String,
    /// This job attempt's span: 16 lowercase hex digits, not all zero.
    pub(crate) span_id: String,
    /// The sender's span, when the message carried a valid `traceparent`.
    pub(crate) parent_id: Option<String>,
    /// The trace flags (bit 0: sampled), as two hex digits.
    pub(crate) flags: String,
}

fn hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    loop {
        rand::rng().fill_bytes(&mut buf);
        if buf.iter().any(|b| *b != 0) {
            return hex::encode(&buf);
        }
    }
}

impl TraceContext {
    /// A new span for a job under `traceparent` (the attribute's value), or
    /// the root of a new trace when there is none or it is malformed.
    pub(crate) fn for_job(traceparent: Option<&str>) -> Self {
        let span_id = random_hex(8);
        if let Some((trace_id, parent_id, flags)) = traceparent.and_then(parse) {
            return TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                flags,
            };
        }
        TraceContext {
            trace_id: random_hex(16),
            span_id,
            parent_id: None,
            flags: "01".into(),
        }
    }

    /// The `traceparent` header naming this job's span as the parent.
    pub(crate) fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// (trace id, parent id, flags) of a valid version-00 `traceparent`. Later
/// versions may add fields after the flags, which are ignored.
fn parse(value: &str) -> Option<(String, String, String)> {
    let value = value.trim();
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let known = version == "00";
    if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if (known && parts.next().is_some()) || flags.len() != 2 {
        return None;
    }
    if !hex_id(trace_id, 32)
        || !hex_id(parent_id, 16)
        || !flags.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some((
        trace_id.to_owned(),
        parent_id.to_owned(),
        flags.to_ascii_lowercase(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_becomes_the_parent_of_a_new_span() {
        let t = TraceContext::for_job(Some(SENT));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(hex_id(&t.span_id, 16) && t.span_id != "00f067aa0ba902b7");
        assert_eq!(
            t.traceparent(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id)
        );
        // A later version may carry more fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(
            TraceContext::for_job(Some(v1)).parent_id.as_deref(),
            Some("00f067aa0ba902b7")
        );
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            None,
            Some(""),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
            Some("not a traceparent"),
        ] {
            let t = TraceContext::for_job(bad);
            assert_eq!(t.parent_id, None, "{bad:?}");
            assert!(hex_id(&t.trace_id, 32), "{bad:?}");
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
}
