//! The SQS backend: `aws-sdk-sqs` with `aws-config`'s default provider chain
//! (environment, profile, IMDS/ECS). `AWS_ENDPOINT_URL(_SQS)` or an explicit
//! endpoint reach LocalStack, ElasticMQ or moto.
//!
//! The SDK's own retries are off; every call goes through `Backoff` with
//! our classification of errors (transient vs permanent), so there is one
//! place that decides what is retried.
//!
//! Runs in the worker parent and in the CLI process (queue commands).

mod convert;
mod errors;

use convert::{batch_results, secs, to_sqs_attributes};
use errors::{classify, parse_redrive};

use super::retry::Backoff;
use super::{
    BatchEntryResult, OutgoingMessage, Queue, QueueAttributes, QueueConfig, QueueCounts,
    QueueError, ReceiveRequest, ReceivedMessage, VisibilityChange, validate,
};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use std::collections::HashMap;
use std::time::Duration;

/// Build an SQS client from the environment, optionally at `endpoint`.
pub(crate) async fn client(endpoint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // Long polls take up to 20 s.
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(ep) = endpoint {
        loader = loader.endpoint_url(ep);
    }
    Client::new(&loader.load().await)
}

/// An SQS queue by URL.
pub struct SqsQueue {
    client: Client,
    url: String,
    backoff: Backoff,
}

impl SqsQueue {
    /// The queue at `url`, reached through `client`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
            backoff: Backoff::default(),
        }
    }

    /// Create a queue (and its redrive policy) through CreateQueue; returns
    /// its URL. FIFO queues get content-based deduplication, like embedded
    /// FIFO queues.
    pub async fn create(
        client: &Client,
        name: &str,
        config: &QueueConfig,
    ) -> Result<String, QueueError> {
        validate::queue_name(name, config.fifo)?;
        let mut attrs = HashMap::new();
        attrs.insert(
            QueueAttributeName::VisibilityTimeout,
            config.visibility_timeout.as_secs().to_string(),
        );
        attrs.insert(
            QueueAttributeName::ReceiveMessageWaitTimeSeconds,
            config.receive_wait.as_secs().to_string(),
        );
        if config.fifo {
            attrs.insert(QueueAttributeName::FifoQueue, "true".into());
            attrs.insert(QueueAttributeName::ContentBasedDeduplication, "true".into());
        }
        if let Some((dlq, max)) = &config.dead_letter {
            let dlq_url = client
                .get_queue_url()
                .queue_name(dlq)
                .send()
                .await
                .map_err(classify)?
                .queue_url
                .unwrap_or_default();
            let arn = client
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(classify)?
                .attributes
                .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                .ok_or_else(|| QueueError::Other(format!("no ARN for queue {dlq}")))?;
            attrs.insert(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string(),
            );
        }
        let out = client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attrs))
            .send()
            .await
            .map_err(classify)?;
        out.queue_url
            .ok_or_else(|| QueueError::Other("CreateQueue returned no URL".into()))
    }

    /// The URLs of the queues whose names start with `prefix` (ListQueues,
    /// every page).
    pub async fn list(client: &Client, prefix: &str) -> Result<Vec<String>, QueueError> {
        let mut urls = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut call = client.list_queues().max_results(1000);
            if !prefix.is_empty() {
                call = call.queue_name_prefix(prefix);
            }
            let out = call
                .set_next_token(next.take())
                .send()
                .await
                .map_err(classify)?;
            urls.extend(out.queue_urls().iter().cloned());
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => return Ok(urls),
            }
        }
    }

    /// Delete the queue at `url` (DeleteQueue) and its messages.
    pub async fn delete(client: &Client, url: &str) -> Result<(), QueueError> {
        client
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The queue named by an ARN's last segment, in the ARN's account.
    async fn by_arn(&self, arn: &str) -> Result<SqsQueue, QueueError> {
        let parts: Vec<&str> = arn.split(':').collect();
        let (account, name) = match parts.as_slice() {
            [.., account, name] if !name.is_empty() => (*account, *name),
            _ => {
                return Err(QueueError::InvalidInput(format!(
                    "`{arn}` is not a queue ARN"
                )));
            }
        };
        let out = self
            .backoff
            .sdk("GetQueueUrl", || {
                self.client
                    .get_queue_url()
                    .queue_name(name)
                    .queue_owner_aws_account_id(account)
                    .send()
            })
            .await?;
        let url = out.queue_url.unwrap_or_default();
        Ok(SqsQueue::new(self.client.clone(), url))
    }
}

/// Lets `Backoff::run` drive SDK futures directly.
trait IntoQueueResult<T> {
    fn into_queue_result(self) -> Result<T, QueueError>;
}

impl<T, E, R> IntoQueueResult<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    fn into_queue_result(self) -> Result<T, QueueError> {
        self.map_err(classify)
    }
}

impl Backoff {
    async fn sdk<T, E, R, F, Fut>(&self, what: &str, mut op: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        self.run(what, || {
            let fut = op();
            async move { fut.await.into_queue_result() }
        })
        .await
    }
}

#[async_trait::async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.url
    }

    /// Nothing to do: a ReceiveMessage under way is left to finish, as
    /// dropping it could strand what it took until its visibility timeout.
    fn stop_waiting(&self) {}

    async fn receive(&self, req: ReceiveRequest) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate::receive(&req)?;
        let out = self
            .backoff
            .sdk("ReceiveMessage", || {
                self.client
                    .receive_message()
                    .queue_url(&self.url)
                    .max_number_of_messages(req.max_messages as i32)
                    .wait_time_seconds(secs(req.wait))
                    .set_visibility_timeout(req.visibility_timeout.map(secs))
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .message_attribute_names("All")
                    .send()
            })
            .await?;
        Ok(out
            .messages
            .unwrap_or_default()
            .iter()
            .map(convert::received)
            .collect())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        validate::visibility(timeout)?;
        self.backoff
            .sdk("ChangeMessageVisibility", || {
                self.client
                    .change_message_visibility()
                    .queue_url(&self.url)
                    .receipt_handle(receipt)
                    .visibility_timeout(secs(timeout))
                    .send()
            })
            .await?;
        Ok(())
    }

    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(changes.len())?;
        for c in changes {
            validate::visibility(c.timeout)?;
        }
        let entries: Vec<_> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&c.receipt_handle)
                    .visibility_timeout(secs(c.timeout))
                    .build()
                    .map_err(|e| QueueError::InvalidInput(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let out = self
            .backoff
            .sdk("ChangeMessageVisibilityBatch", || {
                self.client
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries.clone()))
                    .send()
            })
            .await?;
        Ok(batch_results(
            changes.len(),
            out.successful()
                .iter()
                .map(|s| (s.id().to_owned(), String::new())),
            out.failed(),
        ))
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.backoff
            .sdk("DeleteMessage", || {
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(receipt)
                    .send()
            })
            .await?;
        Ok(())
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(receipts.len())?;
        let entries: Vec<_> = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .map_err(|e| QueueError::InvalidInput(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let out = self
            .backoff
            .sdk("DeleteMessageBatch", || {
                self.client
                    .delete_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries.clone()))
                    .send()
            })
            .await?;
        Ok(batch_results(
            receipts.len(),
            out.successful()
                .iter()
                .map(|s| (s.id().to_owned(), String::new())),
            out.failed(),
        ))
    }

    async fn send(&self, msg: &OutgoingMessage) -> Result<String, QueueError> {
        let fifo = self.url.ends_with(".fifo");
        validate::outgoing(msg, fifo)?;
        let attrs = to_sqs_attributes(&msg.attributes)?;
        let out = self
            .backoff
            .sdk("SendMessage", || {
                self.client
                    .send_message()
                    .queue_url(&self.url)
                    .message_body(&msg.body)
                    .set_message_attributes((!attrs.is_empty()).then(|| attrs.clone()))
                    .set_delay_seconds(msg.delay.map(secs))
                    .set_message_group_id(msg.group_id.clone())
                    .set_message_deduplication_id(msg.dedup_id.clone())
                    .send()
            })
            .await?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn send_batch(
        &self,
        msgs: &[OutgoingMessage],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        validate::batch_len(msgs.len())?;
        let fifo = self.url.ends_with(".fifo");
        let mut results: Vec<BatchEntryResult> = Vec::with_capacity(msgs.len());
        let mut entries = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let entry = validate::outgoing(m, fifo)
                .and_then(|()| to_sqs_attributes(&m.attributes))
                .and_then(|attrs| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&m.body)
                        .set_message_attributes((!attrs.is_empty()).then_some(attrs))
                        .set_delay_seconds(m.delay.map(secs))
                        .set_message_group_id(m.group_id.clone())
                        .set_message_deduplication_id(m.dedup_id.clone())
                        .build()
                        .map_err(|e| QueueError::InvalidInput(e.to_string()))
                });
            match entry {
                Ok(e) => entries.push(e),
                Err(e) => results.push(BatchEntryResult {
                    index: i,
                    result: Err(e),
                }),
            }
        }
        if !entries.is_empty() {
            let out = self
                .backoff
                .sdk("SendMessageBatch", || {
                    self.client
                        .send_message_batch()
                        .queue_url(&self.url)
                        .set_entries(Some(entries.clone()))
                        .send()
                })
                .await?;
            let sent = batch_results(
                msgs.len(),
                out.successful()
                    .iter()
                    .map(|s| (s.id().to_owned(), s.message_id().to_owned())),
                out.failed(),
            );
            let rejected: Vec<usize> = results.iter().map(|r| r.index).collect();
            results.extend(sent.into_iter().filter(|r| !rejected.contains(&r.index)));
        }
        results.sort_by_key(|r| r.index);
        Ok(results)
    }

    async fn attributes(&self) -> Result<QueueAttributes, QueueError> {
        let out = self
            .backoff
            .sdk("GetQueueAttributes", || {
                self.client
                    .get_queue_attributes()
                    .queue_url(&self.url)
                    .attribute_names(QueueAttributeName::All)
                    .send()
            })
            .await?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |k: QueueAttributeName| attrs.get(&k).cloned().unwrap_or_default();
        let secs_attr = |k| Duration::from_secs(get(k).parse().unwrap_or(0));
        let redrive = match attrs.get(&QueueAttributeName::RedrivePolicy) {
            Some(json) if !json.is_empty() => Some(parse_redrive(json)?),
            _ => None,
        };
        Ok(QueueAttributes {
            visibility_timeout: secs_attr(QueueAttributeName::VisibilityTimeout),
            receive_wait: secs_attr(QueueAttributeName::ReceiveMessageWaitTimeSeconds),
            redrive,
            fifo: get(QueueAttributeName::FifoQueue) == "true",
        })
    }

    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let out = self
            .backoff
            .sdk("GetQueueAttributes", || {
                self.client
                    .get_queue_attributes()
                    .queue_url(&self.url)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                    .send()
            })
            .await?;
        let attrs = out.attributes.unwrap_or_default();
        let n = |k| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueCounts {
            visible: n(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            oldest_sent_ms: None,
        })
    }

    async fn dead_letter_queue(&self) -> Result<Option<Box<dyn Queue>>, QueueError> {
        match self.attributes().await?.redrive {
            Some(r) => Ok(Some(Box::new(self.by_arn(&r.dead_letter_target).await?))),
            None => Ok(None),
        }
    }

    async fn purge(&self) -> Result<(), QueueError> {
        self.backoff
            .sdk("PurgeQueue", || {
                self.client.purge_queue().queue_url(&self.url).send()
            })
            .await?;
        Ok(())
    }
}
