//! How SQS errors are classified (transient, permanent, stale receipt, ...)
//! and how a RedrivePolicy is read. Pure functions, tested here; they run
//! wherever the SQS backend does (the worker parent, the CLI process).

use crate::queue::{QueueError, RedrivePolicy};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::BatchResultErrorEntry;

/// Map an SDK error to our classification.
pub(super) fn classify<E, R>(err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            classify_code(e.code().unwrap_or(""), e.message().unwrap_or(""))
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            QueueError::Transient(error_chain(&err))
        }
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) | _ => {
            let text = error_chain(&err);
            let lower = text.to_ascii_lowercase();
            if lower.contains("credential") {
                QueueError::Unauthorized(text)
            } else if lower.contains("region") {
                QueueError::Other(format!("no AWS region configured (set AWS_REGION): {text}"))
            } else {
                // Connection refused, reset, DNS: the endpoint may come back.
                QueueError::Transient(text)
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Map an SQS error code (and message) to our classification.
fn classify_code(code: &str, message: &str) -> QueueError {
    let text = if message.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {message}")
    };
    match code {
        // An error answer without a code is not one SQS gives: a proxy's or
        // a failing server's error page (seen from moto under concurrent
        // calls). Worth retrying.
        "" => QueueError::Transient(format!(
            "the queue answered with an error without a code{}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        )),
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
            QueueError::NoSuchQueue(message.to_owned())
        }
        "ReceiptHandleIsInvalid" | "InvalidReceiptHandle" => QueueError::StaleReceipt,
        "AWS.SimpleQueueService.MessageNotInflight" | "MessageNotInflight" => {
            QueueError::NotInFlight
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "MissingAuthenticationToken"
        | "ExpiredToken"
        | "InvalidSecurity" => QueueError::Unauthorized(text),
        "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "ServiceUnavailable"
        | "InternalError"
        | "InternalFailure"
        | "KmsThrottled"
        | "RequestTimeout" => QueueError::Transient(text),
        c if c.starts_with("Invalid")
            || c.starts_with("Missing")
            || c.contains("TooManyEntries")
            || c.contains("BatchEntryIdsNotDistinct")
            || c.contains("EmptyBatchRequest")
            || c.contains("UnsupportedOperation") =>
        {
            QueueError::InvalidInput(text)
        }
        _ => QueueError::Other(text),
    }
}

pub(super) fn batch_failure(e: &BatchResultErrorEntry) -> QueueError {
    classify_code(e.code(), e.message().unwrap_or(""))
}

/// Parse an SQS RedrivePolicy JSON (maxReceiveCount may be a number or a
/// string).
pub(super) fn parse_redrive(json: &str) -> Result<RedrivePolicy, QueueError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| QueueError::Other(format!("RedrivePolicy is not JSON: {e}")))?;
    let target = v["deadLetterTargetArn"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let max = match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    match (target.is_empty(), max) {
        (false, Some(max)) => Ok(RedrivePolicy {
            dead_letter_target: target,
            max_receive_count: max.min(u32::MAX as u64) as u32,
        }),
        _ => Err(QueueError::Other(format!(
            "RedrivePolicy `{json}` is incomplete"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_classified() {
        assert!(classify_code("ThrottlingException", "slow down").is_transient());
        assert!(classify_code("InternalError", "").is_transient());
        assert!(classify_code("", "").is_transient());
        assert!(matches!(
            classify_code("AWS.SimpleQueueService.NonExistentQueue", "q"),
            QueueError::NoSuchQueue(_)
        ));
        assert!(matches!(
            classify_code("AccessDenied", ""),
            QueueError::Unauthorized(_)
        ));
        assert_eq!(
            classify_code("ReceiptHandleIsInvalid", ""),
            QueueError::StaleReceipt
        );
        assert!(matches!(
            classify_code("InvalidParameterValue", "x"),
            QueueError::InvalidInput(_)
        ));
    }

    #[test]
    fn redrive_policy_parses_both_encodings() {
        let p = parse_redrive(
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:dlq","maxReceiveCount":"3"}"#,
        )
        .unwrap();
        assert_eq!(p.max_receive_count, 3);
        let p = parse_redrive(r#"{"deadLetterTargetArn":"arn:a:b:c:1:dlq","maxReceiveCount":1}"#)
            .unwrap();
        assert_eq!(p.dead_letter_target, "arn:a:b:c:1:dlq");
        assert!(parse_redrive("{}").is_err());
    }
}
