//! Queue-call counting, in the worker parent: [`Counted`] wraps a queue and
//! counts every call made through it by SQS action in
//! `wasm_jobs_queue_calls_total{call}`, so calls per job can be read off a
//! running worker (divide by `wasm_jobs_messages_received_total`). The
//! worker wraps each queue it serves and each dead-letter queue once, at
//! start, so no call path can forget to count.

use super::stats::WorkerStats;
use crate::queue::{
    BatchEntryResult, OutgoingMessage, Queue, QueueAttributes, QueueCounts, QueueError,
    ReceiveRequest, ReceivedMessage, VisibilityChange,
};
use std::sync::Arc;
use std::time::Duration;

/// A queue whose calls are counted.
pub(super) struct Counted {
    inner: Arc<dyn Queue>,
    stats: Arc<WorkerStats>,
}

impl Counted {
    pub(super) fn wrap(inner: Arc<dyn Queue>, stats: &Arc<WorkerStats>) -> Arc<dyn Queue> {
        Arc::new(Counted {
            inner,
            stats: Arc::clone(stats),
        })
    }
}

#[async_trait::async_trait]
impl Queue for Counted {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    async fn receive(&self, req: ReceiveRequest) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.stats.queue_called("ReceiveMessage");
        self.inner.receive(req).await
    }
    fn stop_waiting(&self) {
        self.inner.stop_waiting();
    }
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.stats.queue_called("ChangeMessageVisibility");
        self.inner.change_visibility(receipt_handle, timeout).await
    }
    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        self.stats.queue_called("ChangeMessageVisibilityBatch");
        self.inner.change_visibility_batch(changes).await
    }
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.stats.queue_called("DeleteMessage");
        self.inner.delete(receipt_handle).await
    }
    async fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        self.stats.queue_called("DeleteMessageBatch");
        self.inner.delete_batch(receipt_handles).await
    }
    async fn send(&self, msg: &OutgoingMessage) -> Result<String, QueueError> {
        self.stats.queue_called("SendMessage");
        self.inner.send(msg).await
    }
    async fn send_batch(
        &self,
        msgs: &[OutgoingMessage],
    ) -> Result<Vec<BatchEntryResult>, QueueError> {
        self.stats.queue_called("SendMessageBatch");
        self.inner.send_batch(msgs).await
    }
    async fn attributes(&self) -> Result<QueueAttributes, QueueError> {
        self.stats.queue_called("GetQueueAttributes");
        self.inner.attributes().await
    }
    async fn counts(&self) -> Result<QueueCounts, QueueError> {
        self.stats.queue_called("GetQueueAttributes");
        self.inner.counts().await
    }
    async fn dead_letter_queue(&self) -> Result<Option<Box<dyn Queue>>, QueueError> {
        // Start-up only: reads the redrive policy (on SQS also the
        // dead-letter queue's URL); counted as the attributes read it is.
        self.stats.queue_called("GetQueueAttributes");
        let dlq = self.inner.dead_letter_queue().await?;
        Ok(dlq.map(|q| {
            let q: Box<dyn Queue> = Box::new(Counted {
                inner: Arc::from(q),
                stats: Arc::clone(&self.stats),
            });
            q
        }))
    }
    async fn purge(&self) -> Result<(), QueueError> {
        self.stats.queue_called("PurgeQueue");
        self.inner.purge().await
    }
}
