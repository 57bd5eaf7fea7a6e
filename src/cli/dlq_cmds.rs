//! `dlq peek|redrive`: reading dead letters without taking them, and
//! moving them back without their `wasm-jobs.*` attributes. Runs in the CLI
//! process, through `crate::queue` only.

use super::args::Location;
use crate::queue::address::QueueAddress;
use crate::queue::embedded::EmbeddedStore;
use crate::queue::{OutgoingMessage, Queue, ReceiveRequest};
use anyhow::{Context, bail};
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub(super) enum DlqCommand {
    /// Move the messages of QUEUE's dead-letter queue back to QUEUE, without
    /// their `wasm-jobs.*` attributes (a shared queue's signature stays).
    Redrive { queue: String },
    /// Show the messages of QUEUE's dead-letter queue with every attribute,
    /// without taking them (on SQS their receive counts still rise).
    Peek {
        queue: String,
        /// At most this many (SQS: at most 10).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
        max: u16,
    },
}

pub(super) async fn dlq_command(loc: &Location, cmd: DlqCommand) -> anyhow::Result<u8> {
    let queue = match cmd {
        DlqCommand::Redrive { queue } => queue,
        DlqCommand::Peek { queue, max } => {
            let dlq = loc
                .open(&queue)
                .await?
                .dead_letter_queue()
                .await?
                .with_context(|| format!("{queue} has no redrive policy"))?;
            super::queue_cmds::peek(dlq.as_ref(), max.into()).await?;
            return Ok(0);
        }
    };
    let moved = match QueueAddress::parse(&queue)? {
        QueueAddress::Embedded { name } => {
            let dir = loc.data_dir();
            let q = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)?.queue(&name))
                .await??;
            q.redrive_dead_letters().await?
        }
        QueueAddress::Sqs { .. } => {
            let source = loc.open(&queue).await?;
            let dlq = source
                .dead_letter_queue()
                .await?
                .with_context(|| format!("{queue} has no redrive policy"))?;
            move_all(dlq.as_ref(), source.as_ref()).await?
        }
    };
    println!("moved {moved} messages back to {queue}");
    Ok(0)
}

/// Copy every message from `from` to `to` (body, attributes, group), deleting
/// each original only after its copy was accepted.
async fn move_all(from: &dyn Queue, to: &dyn Queue) -> anyhow::Result<u64> {
    let mut moved = 0;
    loop {
        let batch = from
            .receive(ReceiveRequest {
                max_messages: 10,
                wait: Duration::ZERO,
                visibility_timeout: Some(Duration::from_secs(60)),
            })
            .await?;
        if batch.is_empty() {
            return Ok(moved);
        }
        let copies: Vec<OutgoingMessage> = batch
            .iter()
            .map(|m| OutgoingMessage {
                body: m.body.clone(),
                attributes: crate::queue::redriven_attributes(&m.attributes),
                group_id: m.group_id.clone(),
                dedup_id: m.group_id.as_ref().map(|_| m.message_id.clone()),
                delay: None,
            })
            .collect();
        let sent = to.send_batch(&copies).await?;
        let done: Vec<String> = sent
            .iter()
            .filter(|r| r.result.is_ok())
            .map(|r| batch[r.index].receipt_handle.clone())
            .collect();
        if let Some(failed) = sent.iter().find_map(|r| r.result.as_ref().err()) {
            bail!("copying a message back failed: {failed}");
        }
        from.delete_batch(&done).await?;
        moved += done.len() as u64;
    }
}
