//! The queue interface the worker and the CLI use, and nothing else: receive,
//! change visibility, delete, send (one or a batch of up to 10) and queue
//! attributes, with SQS's semantics.
//!
//! Two backends implement it: [`embedded`] (SQLite in the data directory, the
//! zero-setup default) and [`sqs`] (AWS SQS or any SQS-compatible endpoint).
//! [`open`] picks one from a `--queue` address (see [`address`]).

pub mod address;
pub mod embedded;
pub mod retry;
pub mod sqs;
pub mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

/// SQS's own limits, enforced by both backends.
pub mod limits {
    use std::time::Duration;
    /// Largest message: body plus attribute names, types and values.
    pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
    pub const MAX_BATCH: usize = 10;
    pub const MAX_ATTRIBUTES: usize = 10;
    pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
    pub const MAX_WAIT: Duration = Duration::from_secs(20);
    pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
    /// FIFO deduplication window.
    pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
}

/// A message attribute value, one of SQS's three data types.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum AttributeValue {
    String(String),
    /// A number, kept as its decimal text (SQS does the same).
    Number(String),
    Binary(#[serde(with = "base64_bytes")] Vec<u8>),
}

impl AttributeValue {
    pub fn data_type(&self) -> &'static str {
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

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    pub fn encode(b: &[u8]) -> String {
        STANDARD.encode(b)
    }
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// User message attributes by name.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// A message as received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// Valid until the message is delivered again.
    pub receipt_handle: String,
    pub body: String,
    pub attributes: Attributes,
    /// ApproximateReceiveCount: 1 on first delivery.
    pub receive_count: u32,
    /// SentTimestamp, milliseconds since the epoch.
    pub sent_timestamp_ms: u64,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub body: String,
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
    pub fn new(body: impl Into<String>) -> Self {
        OutgoingMessage {
            body: body.into(),
            ..OutgoingMessage::default()
        }
    }

    /// Body plus attributes, as SQS counts message size.
    pub fn size(&self) -> usize {
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
    pub max_receive_count: u32,
}

/// The queue attributes the worker needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueAttributes {
    pub visibility_timeout: Duration,
    /// ReceiveMessageWaitTimeSeconds.
    pub receive_wait: Duration,
    pub redrive: Option<RedrivePolicy>,
    pub fifo: bool,
}

impl QueueAttributes {
    /// Retries are allowed when there is no redrive policy or it allows more
    /// than one receive (as the reference dispatcher decides).
    pub fn allows_retries(&self) -> bool {
        self.redrive
            .as_ref()
            .is_none_or(|r| r.max_receive_count > 1)
    }
}

/// Approximate message counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

/// One entry of a batch call: its position in the request and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntryResult {
    pub index: usize,
    /// The new message id for sends, empty for other calls; or the error.
    pub result: Result<String, QueueError>,
}

/// A visibility change for one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    pub receipt_handle: String,
    pub timeout: Duration,
}

/// What went wrong with a queue call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue `{0}` does not exist")]
    NoSuchQueue(String),
    #[error("queue `{0}` already exists with different attributes")]
    QueueExists(String),
    #[error("invalid request: {0}")]
    InvalidInput(String),
    #[error("receipt handle is invalid or stale (the message was delivered again or deleted)")]
    StaleReceipt,
    #[error("the message is not in flight (its visibility timeout expired)")]
    NotInFlight,
    #[error("access denied or credentials missing: {0}")]
    Unauthorized(String),
    /// Worth retrying: throttling, 5xx, timeouts, connection resets, a
    /// locked database.
    #[error("transient queue error: {0}")]
    Transient(String),
    #[error("queue error: {0}")]
    Other(String),
}

impl QueueError {
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Transient(_))
    }
}

/// The queue interface. Object-safe; backends are used as `Arc<dyn Queue>`.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// A human-readable name for logs (queue name or URL).
    fn name(&self) -> &str;
    async fn receive(&self, req: ReceiveRequest) -> Result<Vec<ReceivedMessage>, QueueError>;
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;
    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<BatchEntryResult>, QueueError>;
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;
    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<BatchEntryResult>, QueueError>;
    /// Returns the new message id.
    async fn send(&self, msg: &OutgoingMessage) -> Result<String, QueueError>;
    async fn send_batch(
        &self,
        msgs: &[OutgoingMessage],
    ) -> Result<Vec<BatchEntryResult>, QueueError>;
    async fn attributes(&self) -> Result<QueueAttributes, QueueError>;
    async fn counts(&self) -> Result<QueueCounts, QueueError>;
    /// The queue its redrive policy names, if any.
    async fn dead_letter_queue(&self) -> Result<Option<Box<dyn Queue>>, QueueError>;
    async fn purge(&self) -> Result<(), QueueError>;
}

/// Open the queue at `address`: embedded queues live in `data_dir`; SQS
/// queues use `endpoint` when given, else the SDK's configuration.
pub async fn open(
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
    pub visibility_timeout: Duration,
    pub receive_wait: Duration,
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
