//! Moving dead letters back, on either backend: every one of a queue's dead
//! letters (`dlq redrive`, the dashboard's "redrive all"), or one message
//! found by its id (the dashboard's "redrive" and "delete" of one). Runs in
//! the CLI process (`dlq`, `dashboard`).
//!
//! A queue offers no "receive by id": one message is found the way SQS
//! consoles find it, by receiving batches (invisible for a minute) until it
//! turns up; the others received on the way are made visible again at once.

use super::address::QueueAddress;
use super::{
    OutgoingMessage, Queue, QueueError, ReceiveRequest, ReceivedMessage, VisibilityChange,
};
use std::path::Path;
use std::time::Duration;

/// How long messages received while looking for one stay hidden (they are
/// made visible again as soon as the search ends).
const SEARCH_VISIBILITY: Duration = Duration::from_secs(60);
/// Receives of 10 made while looking for one message.
const SEARCH_ROUNDS: usize = 100;

/// Move every dead letter of the queue at `address` back to it. Returns how
/// many moved.
pub(crate) async fn redrive_all(
    address: &QueueAddress,
    data_dir: &Path,
    endpoint: Option<&str>,
) -> Result<u64, QueueError> {
    match address {
        QueueAddress::Embedded { name } => {
            let (dir, name) = (data_dir.to_owned(), name.clone());
            let q = tokio::task::spawn_blocking(move || {
                super::embedded::EmbeddedStore::open(&dir)?.queue(&name)
            })
            .await
            .map_err(|e| QueueError::Other(e.to_string()))??;
            q.redrive_dead_letters().await
        }
        QueueAddress::Sqs { .. } => {
            let source = super::open(address, data_dir, endpoint).await?;
            let dlq = dead_letters_of(source.as_ref(), address).await?;
            move_all(dlq.as_ref(), source.as_ref()).await
        }
    }
}

/// The dead-letter queue of `q`, or an error saying it has none.
pub(crate) async fn dead_letters_of(
    q: &dyn Queue,
    address: &QueueAddress,
) -> Result<Box<dyn Queue>, QueueError> {
    q.dead_letter_queue().await?.ok_or_else(|| {
        let shown = match address {
            QueueAddress::Embedded { name } => name,
            QueueAddress::Sqs { url } => url,
        };
        QueueError::InvalidInput(format!("{shown} has no redrive policy"))
    })
}

/// The copy of a dead letter sent back to its queue: body, attributes (but
/// `wasm-jobs.*`) and group kept.
fn copy_back(m: &ReceivedMessage) -> OutgoingMessage {
    OutgoingMessage {
        body: m.body.clone(),
        attributes: super::redriven_attributes(&m.attributes),
        group_id: m.group_id.clone(),
        dedup_id: m.group_id.as_ref().map(|_| m.message_id.clone()),
        delay: None,
    }
}

/// Receive up to 10 visible messages, hidden for [`SEARCH_VISIBILITY`].
async fn hide_ten(q: &dyn Queue) -> Result<Vec<ReceivedMessage>, QueueError> {
    q.receive(ReceiveRequest {
        max_messages: 10,
        wait: Duration::ZERO,
        visibility_timeout: Some(SEARCH_VISIBILITY),
    })
    .await
}

/// Copy every message from `from` to `to`, deleting each original only
/// after its copy was accepted.
async fn move_all(from: &dyn Queue, to: &dyn Queue) -> Result<u64, QueueError> {
    let mut moved = 0;
    loop {
        let batch = hide_ten(from).await?;
        if batch.is_empty() {
            return Ok(moved);
        }
        let copies: Vec<OutgoingMessage> = batch.iter().map(copy_back).collect();
        let sent = to.send_batch(&copies).await?;
        let done: Vec<String> = sent
            .iter()
            .filter(|r| r.result.is_ok())
            .map(|r| batch[r.index].receipt_handle.clone())
            .collect();
        from.delete_batch(&done).await?;
        moved += done.len() as u64;
        if let Some(failed) = sent.iter().find_map(|r| r.result.as_ref().err()) {
            return Err(QueueError::Other(format!(
                "copying a message back failed: {failed}"
            )));
        }
    }
}

/// Receive from `q` until the message `id` turns up; every other message
/// received on the way is made visible again before this returns. `None`
/// when it is not there (or is in flight elsewhere).
pub(crate) async fn take(q: &dyn Queue, id: &str) -> Result<Option<ReceivedMessage>, QueueError> {
    let mut passed_over: Vec<String> = Vec::new();
    let mut found = None;
    for _ in 0..SEARCH_ROUNDS {
        let batch = hide_ten(q).await?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            if m.message_id == id && found.is_none() {
                found = Some(m);
            } else {
                passed_over.push(m.receipt_handle);
            }
        }
        if found.is_some() {
            break;
        }
    }
    for chunk in passed_over.chunks(10) {
        let entries: Vec<VisibilityChange> = chunk
            .iter()
            .map(|r| VisibilityChange {
                receipt_handle: r.clone(),
                timeout: Duration::ZERO,
            })
            .collect();
        q.change_visibility_batch(&entries).await?;
    }
    Ok(found)
}

/// Move the dead letter `id` from `dlq` back to `source`. Whether it was
/// there.
pub(crate) async fn redrive_one(
    dlq: &dyn Queue,
    source: &dyn Queue,
    id: &str,
) -> Result<bool, QueueError> {
    let Some(m) = take(dlq, id).await? else {
        return Ok(false);
    };
    source.send(&copy_back(&m)).await?;
    dlq.delete(&m.receipt_handle).await?;
    Ok(true)
}

/// Delete the message `id` from `q`. Whether it was there.
pub(crate) async fn delete_one(q: &dyn Queue, id: &str) -> Result<bool, QueueError> {
    let Some(m) = take(q, id).await? else {
        return Ok(false);
    };
    q.delete(&m.receipt_handle).await?;
    Ok(true)
}
