//! `wasm-jobs send --wait`: send one message that asks for its outcome
//! (`reply-to`), wait for it, print it (one JSON object) and exit with its
//! `exit_code`, so a script can run a job like a command. Runs in the CLI
//! process; the outcome itself is sent by the worker
//! (`worker::parent::reply`).
//!
//! The reply queue is `--reply-to QUEUE` (created if missing, kept), or a
//! new `QUEUE-replies-XXXXXXXX` beside the job queue (in the namespace
//! tenant policies allow by default), deleted when the wait ends. Outcomes
//! for other messages found on a reused reply queue are left there.

use super::args::Location;
use crate::outcome::exit_code;
use crate::queue::address::QueueAddress;
use crate::queue::embedded::EmbeddedStore;
use crate::queue::sqs::{self, SqsQueue};
use crate::queue::{AttributeValue, OutgoingMessage, Queue, QueueConfig, ReceiveRequest};
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The attribute the worker reads (`worker::parent::reply`).
const REPLY_TO_ATTRIBUTE: &str = "reply-to";
/// The attribute an outcome names its message by.
const OUTCOME_FOR_ATTRIBUTE: &str = "wasm-jobs.outcome-for";

/// `send`'s flags for waiting.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct WaitArgs {
    /// Wait for the job's outcome, print it as JSON and exit with its
    /// `exit_code` (0 ok, 11 fatal, 31 refused, ...; 3 when none came).
    #[arg(long, conflicts_with = "batch")]
    pub wait: bool,
    /// Give up waiting after this many seconds (the job may still run).
    #[arg(long, value_name = "SECS", value_parser = super::args::parse_seconds,
          default_value = "300", requires = "wait")]
    pub timeout: Duration,
    /// The queue the outcome goes to (created if missing, kept); default: a
    /// new QUEUE-replies-XXXXXXXX, deleted after.
    #[arg(long, value_name = "QUEUE", requires = "wait")]
    pub reply_to: Option<String>,
}

/// A reply queue and whether this command made it (and deletes it).
pub(super) struct ReplyQueue {
    address: String,
    queue: Arc<dyn Queue>,
    made: bool,
}

impl ReplyQueue {
    /// Ask for the outcome in `attributes` (before they are signed).
    pub(super) fn ask(&self, attributes: &mut crate::queue::Attributes) {
        attributes.insert(
            REPLY_TO_ATTRIBUTE.into(),
            AttributeValue::String(self.address.clone()),
        );
    }
}

/// Send `msg` (which [`ReplyQueue::ask`]ed) to `queue`, wait for its
/// outcome on `reply`, print it and return the exit code.
pub(super) async fn send_and_wait(
    loc: &Location,
    queue: &dyn Queue,
    msg: &OutgoingMessage,
    reply: ReplyQueue,
    args: &WaitArgs,
) -> anyhow::Result<u8> {
    let waited = match queue.send(msg).await {
        Ok(id) => wait_for(&reply, &id, args.timeout).await,
        Err(e) => Err(e.into()),
    };
    if reply.made
        && let Err(e) = delete(loc, &reply.address).await
    {
        eprintln!("warning: cannot delete reply queue {}: {e}", reply.address);
    }
    let (id, outcome) = waited?;
    match outcome {
        Some(outcome) => {
            println!("{outcome}");
            let code = outcome["exit_code"]
                .as_u64()
                .and_then(|c| u8::try_from(c).ok());
            Ok(code.unwrap_or(exit_code::HOST_ERROR))
        }
        None => {
            eprintln!(
                "no outcome for message {id} within {:.0} s; the job may still run{}",
                args.timeout.as_secs_f64(),
                if reply.made {
                    String::new()
                } else {
                    format!(", and its outcome will arrive in {}", reply.address)
                }
            );
            Ok(exit_code::NO_OUTCOME)
        }
    }
}

/// The reply queue to use for messages to `job_queue`: `given` (made if
/// missing), else a new one.
pub(super) async fn reply_queue(
    loc: &Location,
    job_queue: &str,
    given: Option<&str>,
) -> anyhow::Result<ReplyQueue> {
    let (address, must_be_new) = match given {
        Some(a) => (a.to_owned(), false),
        None => {
            let base = job_queue.strip_suffix(".fifo").unwrap_or(job_queue);
            (
                format!("{base}-replies-{:08x}", rand::random::<u32>()),
                true,
            )
        }
    };
    let made = create(loc, &address, must_be_new).await?;
    let address = made.clone().unwrap_or(address);
    let queue = loc.open(&address).await?;
    Ok(ReplyQueue {
        address,
        queue,
        made: made.is_some(),
    })
}

/// Create the queue at `address` unless it exists (a new name must not);
/// `Some(address)` when this call made it (an SQS queue's URL as SQS says).
async fn create(
    loc: &Location,
    address: &str,
    must_be_new: bool,
) -> anyhow::Result<Option<String>> {
    let config = QueueConfig::default();
    match QueueAddress::parse(address)? {
        QueueAddress::Embedded { name } => {
            let dir = loc.data_dir();
            tokio::task::spawn_blocking(move || {
                let store = EmbeddedStore::open(&dir)?;
                if !must_be_new && store.queue(&name).is_ok() {
                    return Ok(None);
                }
                store.create_queue(&name, &config).map(|()| Some(name))
            })
            .await?
            .map_err(Into::into)
        }
        QueueAddress::Sqs { url } => {
            if !must_be_new && loc.open(&url).await?.attributes().await.is_ok() {
                return Ok(None);
            }
            let name = url.rsplit('/').next().unwrap_or_default();
            let client = sqs::client(loc.endpoint_url.as_deref()).await;
            let made = SqsQueue::create(&client, name, &config).await?;
            Ok(Some(made))
        }
    }
}

async fn delete(loc: &Location, address: &str) -> anyhow::Result<()> {
    match QueueAddress::parse(address)? {
        QueueAddress::Embedded { name } => {
            let dir = loc.data_dir();
            tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)?.delete_queue(&name))
                .await??;
        }
        QueueAddress::Sqs { url } => {
            let client = sqs::client(loc.endpoint_url.as_deref()).await;
            SqsQueue::delete(&client, &url).await?;
        }
    }
    Ok(())
}

/// Wait up to `timeout` for the outcome of message `id` on `reply`; leave
/// other messages' outcomes for whoever waits for them.
async fn wait_for(
    reply: &ReplyQueue,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<(String, Option<serde_json::Value>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((id.to_owned(), None));
        }
        let got = reply
            .queue
            .receive(ReceiveRequest {
                max_messages: 10,
                wait: left.min(Duration::from_secs(20)),
                visibility_timeout: Some(Duration::from_secs(30)),
            })
            .await
            .context("waiting for the outcome")?;
        let mut found = None;
        for m in got {
            let ours = m
                .attributes
                .get(OUTCOME_FOR_ATTRIBUTE)
                .is_some_and(|v| v.as_text() == id);
            if ours && found.is_none() {
                found = Some(serde_json::from_str(&m.body).context("reading the outcome")?);
                reply.queue.delete(&m.receipt_handle).await?;
            } else if ours {
                // A repeat (the worker crashed between outcome and delete).
                reply.queue.delete(&m.receipt_handle).await?;
            } else {
                reply
                    .queue
                    .change_visibility(&m.receipt_handle, Duration::ZERO)
                    .await?;
            }
        }
        if let Some(outcome) = found {
            return Ok((id.to_owned(), Some(outcome)));
        }
    }
}
