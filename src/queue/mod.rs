//! The queue interface the worker and the CLI use, and nothing else: receive,
//! change visibility, delete, send (one or a batch of up to 10) and queue
//! attributes, with SQS's semantics.
//!
//! Two backends implement it: [`embedded`] (SQLite in the data directory, the
//! zero-setup default) and [`sqs`] (AWS SQS or any SQS-compatible endpoint).
//! `open` picks one from a `--queue` address (see `address`); `redrive`
//! moves dead letters back (all, or one found by id) on either.
//!
//! Queues are used by the worker parent and by the CLI process (queue
//! commands, `demo`); the fork server and worker children never touch one.

pub(crate) mod address;
pub mod embedded;
pub(crate) mod redrive;
pub(crate) mod retry;
pub mod sqs;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

/// SQS's own limits, enforced by both backends.
pub(crate) mod limits {
    use std::time::Duration;
    /// Largest message: body plus attribute names, types and values.
    pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;
    /// Most entries in one batch call, and most messages one receive returns.
    pub(crate) const MAX_BATCH: usize = 10;
    /// Most user attributes on one message.
    pub(crate) const MAX_ATTRIBUTES: usize = 10;
    /// Longest visibility timeout, and longest a message may stay invisible
    /// counted from its first receive.
    pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
    /// Longest long-poll wait of one receive.
    pub(crate) const MAX_WAIT: Duration = Duration::from_secs(20);
    /// Longest per-message delay.
    pub(crate) const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
    /// FIFO deduplication window.
    pub(crate) const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
}

/// A message attribute value, one of SQS's three data types.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum AttributeValue {
    /// UTF-8 text.
    String(String),
    /// A number, kept as its decimal text (SQS does the same).
    Number(String),
    /// Raw bytes (base64 in JSON).
    Binary(#[serde(with = "base64_bytes")] Vec<u8>),
}

impl AttributeValue {
    /// SQS's name for the data type: `String`, `Number` or `Binary`.
    pub(crate) fn data_type(&self) -> &'static str {
        match self {
            AttributeValue::String(_) => "String",
            AttributeValue::Number(_) => "Number",
            AttributeValue::Binary(_) => "Binary",
        }
    }

    /// The value as a job sees it: text for String and Number, base64 for
    /// Binary.
    pub fn as_text(&self) -> String {
        match self {
            AttributeValue::String(s) | AttributeValue::Number(s) => s.clone(),
            AttributeValue::Binary(b) => base64_bytes::encode(b),
        }
    }

    fn size(&self) -> usize {
        self.data_type().len()
            + match self {
                AttributeValue::String(s) | AttributeValue::Number(s) => s.len(),
                AttributeValue::Binary(b) => b.len(),
            }
    }
}

/// Binary attribute values as base64 text, for serde and for jobs.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    pub(super) fn encode(b: &[u8]) -> String {
        STANDARD.encode(b)
    }
    pub(super) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(b))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// User message attributes by name.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// A message as received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceivedMessage {
    /// The queue's id for the message; stable across deliveries.
    pub message_id: String,
    /// Names this delivery for visibility changes and deletes. Valid until
    /// the message is delivered again.
    pub receipt_handle: String,
    /// The body, as sent.
    pub body: String,
    /// User attributes.
    pub attributes: Attributes,
    /// ApproximateReceiveCount: 1 on first delivery.
    pub receive_count: u32,
    /// SentTimestamp, milliseconds since the epoch.
    pub sent_timestamp_ms: u64,
    /// ApproximateFirstReceiveTimestamp, milliseconds since the epoch: when
    /// the first delivery began (0 when the queue did not say).
    pub first_received_ms: u64,
    /// MessageGroupId (FIFO queues).
    pub group_id: Option<String>,
    /// MessageDeduplicationId (FIFO queues).
    pub dedup_id: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body: non-empty text of characters SQS accepts.
    pub body: String,
    /// User attributes (at most 10).
    pub attributes: Attributes,
    /// DelaySeconds (not allowed per message on FIFO queues).
    pub delay: Option<Duration>,
    /// MessageGroupId (required on FIFO queues).
    pub group_id: Option<String>,
    /// MessageDeduplicationId (FIFO; content-based when absent on queues
    /// that allow it).
    pub dedup_id: Option<String>,
}

impl OutgoingMessage {
    /// A message with this body and nothing else.
    pub fn new(body: impl Into<String>) -> Self {
        OutgoingMessage {
            body: body.into(),
            ..OutgoingMessage::default()
        }
    }

    /// Body plus attributes, as SQS counts message size.
    pub(crate) fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.size())
                .sum::<usize>()
    }
}

/// ReceiveMessage parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// 1 to 10.
    pub max_messages: usize,
    /// Long-poll time; zero returns at once.
    pub wait: Duration,
    /// Visibility timeout for the received messages; `None` uses the queue's.
    pub visibility_timeout: Option<Duration>,
}

/// The queue's dead-letter configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedrivePolicy {
    /// The dead-letter queue: an ARN for SQS, a queue name for embedded.
    pub dead_letter_target: String,
    /// Receives after which the next receive moves the message there.
    pub max_receive_count: u32,
}

/// The queue attributes the worker needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueAttributes {
    /// The default visibility timeout of received messages.
    pub visibility_timeout: Duration,
    /// ReceiveMessageWaitTimeSeconds.
    pub receive_wait: Duration,
    /// The dead-letter configuration, if any.
    pub redrive: Option<RedrivePolicy>,
    /// Whether it is a FIFO queue.
    pub fifo: bool,
}

impl QueueAttributes {
    /// Retries are allowed when there is no redrive policy or it allows more
    /// than one receive (as the reference dispatcher decides).
    pub(crate) fn allows_retries(&self) -> bool {
        self.redrive
            .as_ref()
            .is_none_or(|r| r.max_receive_count > 1)
    }
}

/// Approximate message counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Ready to be received.
    pub visible: u64,
    /// Received and not yet visible again or deleted.
    pub in_flight: u64,
    /// Sent with a delay that has not passed yet.
    pub delayed: u64,
    /// When the oldest message not yet deleted was sent (milliseconds since
    /// the epoch); embedded queues only (SQS keeps it in CloudWatch's
    /// `ApproximateAgeOfOldestMessage`, not in the queue's attributes).
    /// Not in `queue stats --json`, whose keys are documented.
    #[serde(skip)]
    pub oldest_sent_ms: Option<u64>,
}

/// One entry of a batch call: its position in the request and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntryResult {
    /// The entry's position in the request.
    pub index: usize,
    /// The new message id for sends, empty for other calls; or the error.
    pub result: Result<String, QueueError>,
}

/// A visibility change for one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// The delivery to change.
    pub receipt_handle: String,
    /// The new timeout, counted from now (zero makes it visible at once).
    pub timeout: Duration,
}

/// What went wrong with a queue call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue (named here) does not exist.
    #[error("queue `{0}` does not exist")]
    NoSuchQueue(String),
    /// Creating a queue that exists with other settings.
    #[error("queue `{0}` already exists with different attributes")]
    QueueExists(String),
    /// The request breaks one of SQS's input rules; the text says which.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// The receipt handle no longer names a delivery.
    #[error("receipt handle is invalid or stale (the message was delivered again or deleted)")]
    StaleReceipt,
    /// A visibility change for a message that is visible again.
    #[error("the message is not in flight (its visibility timeout expired)")]
    NotInFlight,
    /// Credentials are missing or not allowed to do this.
    #[error("access denied or credentials missing: {0}")]
    Unauthorized(String),
    /// Worth retrying: throttling, 5xx, timeouts, connection resets, a
    /// locked database.
    #[error("transient queue error: {0}")]
    Transient(String),
    /// Anything else, not worth retrying.
    #[error("queue error: {0}")]
    Other(String),
}

impl QueueError {
    /// Whether retrying the call may help ([`QueueError::Transient`]).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, QueueError::Transient(_))
    }
}

/// The queue interface. Object-safe; backends are used as `Arc<dyn Queue>`.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// A human-readable name for logs (queue name or URL).
    fn name(&self) -> &str;
    /// Whether a call is a local transaction (the embedded queue) rather
    /// than a network round trip; the worker batches deletes by default
    /// only for remote queues.
    fn is_local(&self) -> bool {
        false
    }
    /// ReceiveMessage: up to `req.max_messages` visible messages, made
    /// invisible for the visibility timeout; waits up to `req.wait` for one.
    async fn receive(&self, req: ReceiveRequest) -> Result<Vec<ReceivedMessage>, QueueError>;
    /// End the long polls on this handle, the ones under way and any made
    /// later, as if their wait had run out, where that loses nothing: a
    /// poll returns what its last check took, and no check runs after. The
    /// embedded queue does so at once. SQS cannot: a ReceiveMessage under
    /// way may already have taken messages that only its answer names, so
    /// it is left to finish (within its wait of at most 20 s).
    fn stop_waiting(&self);
    /// ChangeMessageVisibility: keep a received message invisible for
    /// `timeout` from now (zero releases it at once).
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;
    /// ChangeMessageVisibilityBatch: 1 to 10 changes, each with its own result.
    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<BatchEntryResult>, QueueError>;
    /// DeleteMessage: remove a received message for good.
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;
    /// DeleteMessageBatch: 1 to 10 deletes, each with its own result.
    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<BatchEntryResult>, QueueError>;
    /// SendMessage; returns the new message id.
    async fn send(&self, msg: &OutgoingMessage) -> Result<String, QueueError>;
    /// SendMessageBatch: 1 to 10 messages, each with its own result (the
    /// new message id, or why that one was refused).
    async fn send_batch(
        &self,
        msgs: &[OutgoingMessage],
    ) -> Result<Vec<BatchEntryResult>, QueueError>;
    /// The queue's settings.
    async fn attributes(&self) -> Result<QueueAttributes, QueueError>;
    /// Approximate message counts.
    async fn counts(&self) -> Result<QueueCounts, QueueError>;
    /// The queue its redrive policy names, if any.
    async fn dead_letter_queue(&self) -> Result<Option<Box<dyn Queue>>, QueueError>;
    /// PurgeQueue: delete every message.
    async fn purge(&self) -> Result<(), QueueError>;
    /// Up to `max` visible messages, shown without taking them. The
    /// embedded queue changes neither their visibility nor their receive
    /// counts; SQS has no such call, so this receives at most 10 with
    /// visibility 0: they stay visible, but each one's receive count rises.
    async fn peek(&self, max: usize) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive(ReceiveRequest {
            max_messages: max.clamp(1, limits::MAX_BATCH),
            wait: Duration::ZERO,
            visibility_timeout: Some(Duration::ZERO),
        })
        .await
    }
}

/// The `wasm-jobs.*` attributes a redrive keeps: a shared queue's signing
/// attributes (`crate::signing`, which checks this list in a test).
pub(crate) const KEPT_ON_REDRIVE: [&str; 2] = ["wasm-jobs.signature", "wasm-jobs.expires"];

/// The attributes a message redriven from a dead-letter queue goes back
/// with: those named `wasm-jobs.*` (why it was dead-lettered, its old id,
/// its failure times) are dropped, so the job does not see a past life's
/// verdict, except a shared queue's signing attributes, which let it be
/// verified again.
pub(crate) fn redriven_attributes(attributes: &Attributes) -> Attributes {
    attributes
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("wasm-jobs.") || KEPT_ON_REDRIVE.contains(&name.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Open the queue at `address`: embedded queues live in `data_dir`; SQS
/// queues use `endpoint` when given, else the SDK's configuration.
pub(crate) async fn open(
    address: &address::QueueAddress,
    data_dir: &std::path::Path,
    endpoint: Option<&str>,
) -> Result<std::sync::Arc<dyn Queue>, QueueError> {
    match address {
        address::QueueAddress::Embedded { name } => {
            let (dir, name) = (data_dir.to_owned(), name.clone());
            let queue = tokio::task::spawn_blocking(move || {
                embedded::EmbeddedStore::open(&dir)?.queue(&name)
            })
            .await
            .map_err(|e| QueueError::Other(e.to_string()))??;
            Ok(std::sync::Arc::new(queue))
        }
        address::QueueAddress::Sqs { url } => {
            let client = sqs::client(endpoint).await;
            Ok(std::sync::Arc::new(sqs::SqsQueue::new(client, url.clone())))
        }
    }
}

/// Settings for creating a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The default visibility timeout of received messages.
    pub visibility_timeout: Duration,
    /// The default long-poll wait of a receive.
    pub receive_wait: Duration,
    /// A FIFO queue (its name must end in `.fifo`).
    pub fifo: bool,
    /// Dead-letter queue name and maxReceiveCount.
    pub dead_letter: Option<(String, u32)>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            receive_wait: Duration::ZERO,
            fifo: false,
            dead_letter: None,
        }
    }
}
