//! Conversions between this crate's queue types and the SQS SDK's:
//! attributes, received messages, batch results and seconds. Pure
//! functions; they run wherever the SQS backend does (the worker parent, the
//! CLI process).

use super::errors::batch_failure;
use crate::queue::{AttributeValue, Attributes, BatchEntryResult, QueueError, ReceivedMessage};
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
};
use std::collections::HashMap;
use std::time::Duration;

/// Whole seconds, as the SDK takes them (saturating).
pub(super) fn secs(d: Duration) -> i32 {
    d.as_secs().min(i32::MAX as u64) as i32
}

/// A received SDK message as ours. A missing count means first delivery.
pub(super) fn received(m: &Message) -> ReceivedMessage {
    let sys = |k: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&k)).cloned();
    ReceivedMessage {
        message_id: m.message_id().unwrap_or_default().to_owned(),
        receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
        body: m.body().unwrap_or_default().to_owned(),
        attributes: from_sqs_attributes(m.message_attributes()),
        receive_count: sys(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        sent_timestamp_ms: sys(MessageSystemAttributeName::SentTimestamp)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        first_received_ms: sys(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        group_id: sys(MessageSystemAttributeName::MessageGroupId),
        dedup_id: sys(MessageSystemAttributeName::MessageDeduplicationId),
    }
}

/// Our attributes as SendMessage takes them.
pub(super) fn to_sqs_attributes(
    attrs: &Attributes,
) -> Result<HashMap<String, MessageAttributeValue>, QueueError> {
    attrs
        .iter()
        .map(|(k, v)| {
            let b = MessageAttributeValue::builder().data_type(v.data_type());
            let b = match v {
                AttributeValue::String(s) | AttributeValue::Number(s) => b.string_value(s),
                AttributeValue::Binary(bytes) => b.binary_value(Blob::new(bytes.clone())),
            };
            b.build()
                .map(|v| (k.clone(), v))
                .map_err(|e| QueueError::InvalidInput(e.to_string()))
        })
        .collect()
}

/// Received attributes as ours; an unknown data type is read as String
/// (custom types like `Number.int` keep their base type).
fn from_sqs_attributes(attrs: Option<&HashMap<String, MessageAttributeValue>>) -> Attributes {
    let mut out = Attributes::new();
    for (k, v) in attrs.into_iter().flatten() {
        let ty = v.data_type();
        let value = if ty.starts_with("Binary") {
            AttributeValue::Binary(
                v.binary_value()
                    .map(|b| b.as_ref().to_vec())
                    .unwrap_or_default(),
            )
        } else if ty.starts_with("Number") {
            AttributeValue::Number(v.string_value().unwrap_or_default().to_owned())
        } else {
            AttributeValue::String(v.string_value().unwrap_or_default().to_owned())
        };
        out.insert(k.clone(), value);
    }
    out
}

/// One result per entry of a batch of `len`, in request order, from the
/// ids (entry indexes) SQS reports as successful, with their values, and
/// as failed. An entry SQS says nothing about is an error.
pub(super) fn batch_results(
    len: usize,
    ok: impl Iterator<Item = (String, String)>,
    failed: &[BatchResultErrorEntry],
) -> Vec<BatchEntryResult> {
    let mut out: Vec<BatchEntryResult> = (0..len)
        .map(|index| BatchEntryResult {
            index,
            result: Err(QueueError::Other("no result for this entry".into())),
        })
        .collect();
    for (id, value) in ok {
        if let Some(e) = id.parse::<usize>().ok().and_then(|i| out.get_mut(i)) {
            e.result = Ok(value);
        }
    }
    for f in failed {
        if let Some(e) = f.id().parse::<usize>().ok().and_then(|i| out.get_mut(i)) {
            e.result = Err(batch_failure(f));
        }
    }
    out
}
