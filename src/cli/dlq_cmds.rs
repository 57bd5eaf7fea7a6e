//! `dlq peek|redrive`: reading dead letters without taking them, and
//! moving them back without their `wasm-jobs.*` attributes. Runs in the CLI
//! process, through `crate::queue` only.

use super::args::Location;
use crate::queue::address::QueueAddress;
use anyhow::Context;

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
    let address = QueueAddress::parse(&queue)?;
    let moved =
        crate::queue::redrive::redrive_all(&address, &loc.data_dir(), loc.endpoint_url.as_deref())
            .await?;
    println!("moved {moved} messages back to {queue}");
    Ok(0)
}
