//! Queue subcommands: `queue create|list|stats|purge`, `send`, `receive`
//! (`dlq` is [`super::dlq_cmds`]). They talk to a queue only through `crate::queue`; `send
//! --key-file` signs messages with `crate::signing`.

use super::args::{Location, parse_attr, parse_seconds};
use super::send_wait;
use crate::queue::embedded::EmbeddedStore;
use crate::queue::sqs::{self, SqsQueue};
use crate::queue::{
    AttributeValue, Attributes, OutgoingMessage, Queue, QueueConfig, ReceiveRequest, limits,
};
use crate::signing::{self, SigningKey};
use anyhow::{Context, bail};
use base64::Engine;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Subcommand)]
pub(super) enum QueueCommand {
    /// Create a queue (embedded, or on SQS with --sqs).
    Create(CreateArgs),
    /// Visible, in-flight and delayed counts (and its dead-letter queue's).
    Stats {
        queue: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete every message in the queue.
    Purge { queue: String },
    /// The data dir's queues with their counts (or SQS queues by prefix).
    List {
        /// List SQS queues instead (ListQueues).
        #[arg(long)]
        sqs: bool,
        /// Only SQS queues whose names start with this.
        #[arg(long, requires = "sqs", default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct CreateArgs {
    pub name: String,
    /// Dead-letter queue (must exist) for messages received too often.
    #[arg(long, requires = "max_receives")]
    pub dlq: Option<String>,
    /// maxReceiveCount of the redrive policy.
    #[arg(long, requires = "dlq", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_receives: Option<u32>,
    #[arg(long, value_parser = parse_seconds_or_zero, default_value = "30")]
    pub visibility_timeout: Duration,
    /// ReceiveMessageWaitTimeSeconds (long polling), 0-20.
    #[arg(long, value_parser = parse_seconds_or_zero, default_value = "0")]
    pub wait: Duration,
    /// A FIFO queue (its name must end in .fifo).
    #[arg(long)]
    pub fifo: bool,
    /// Create it on SQS (prints the queue URL) instead of embedded.
    #[arg(long)]
    pub sqs: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct SendArgs {
    #[arg(long)]
    pub queue: String,
    /// Message attribute: KEY=VALUE (String), KEY:Number=VALUE, KEY:Binary=BASE64.
    #[arg(long = "attr", value_name = "KEY[:TYPE]=VALUE", value_parser = parse_attr)]
    pub attrs: Vec<(String, String)>,
    /// MessageGroupId (FIFO queues).
    #[arg(long)]
    pub group: Option<String>,
    /// MessageDeduplicationId (FIFO queues).
    #[arg(long)]
    pub dedup_id: Option<String>,
    #[arg(long, value_parser = parse_seconds_or_zero)]
    pub delay: Option<Duration>,
    /// Send one message per line of FILE (`-` for stdin), 10 per call.
    #[arg(long, conflicts_with = "body")]
    pub batch: Option<PathBuf>,
    /// Tenant of the message(s): sets the `tenant` String attribute.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Sign each message with the HMAC-SHA256 key in FILE (a regular file,
    /// mode 600, owned by you); see `wasm_jobs::signing`.
    #[arg(long, value_name = "FILE", requires = "tenant")]
    pub key_file: Option<PathBuf>,
    /// Signed messages expire this many seconds from now.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, requires = "key_file",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub expires_in: u64,
    #[command(flatten)]
    pub wait: super::send_wait::WaitArgs,
    /// The body; `-` reads stdin.
    #[arg(required_unless_present = "batch")]
    pub body: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct ReceiveArgs {
    #[arg(long)]
    pub queue: String,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub max: u8,
    #[arg(long, value_parser = parse_seconds_or_zero, default_value = "0")]
    pub wait: Duration,
    #[arg(long, value_parser = parse_seconds_or_zero)]
    pub visibility_timeout: Option<Duration>,
    /// Delete each message after printing it.
    #[arg(long)]
    pub delete: bool,
    /// Keep receiving until the queue stays empty for one wait.
    #[arg(long)]
    pub drain: bool,
    /// Show messages without taking them (see `dlq peek`).
    #[arg(long, conflicts_with_all = ["delete", "drain", "visibility_timeout", "wait"])]
    pub peek: bool,
}

fn parse_seconds_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        parse_seconds(s)
    }
}

/// `KEY=VALUE`, `KEY:Number=VALUE` or `KEY:Binary=BASE64` into attributes.
pub(super) fn typed_attributes(raw: &[(String, String)]) -> anyhow::Result<Attributes> {
    let mut out = Attributes::new();
    for (key, value) in raw {
        let (name, ty) = key.split_once(':').unwrap_or((key, "String"));
        let v = match ty {
            "String" => AttributeValue::String(value.clone()),
            "Number" => AttributeValue::Number(value.clone()),
            "Binary" => AttributeValue::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .with_context(|| format!("attribute {name}: not base64"))?,
            ),
            other => bail!("attribute {name}: unknown type {other} (String, Number or Binary)"),
        };
        out.insert(name.to_owned(), v);
    }
    Ok(out)
}

pub(super) async fn queue_command(loc: &Location, cmd: QueueCommand) -> anyhow::Result<u8> {
    match cmd {
        QueueCommand::Create(args) => {
            let config = QueueConfig {
                visibility_timeout: args.visibility_timeout,
                receive_wait: args.wait,
                fifo: args.fifo,
                dead_letter: args.dlq.clone().zip(args.max_receives),
            };
            if args.sqs {
                let client = sqs::client(loc.endpoint_url.as_deref()).await;
                println!("{}", SqsQueue::create(&client, &args.name, &config).await?);
            } else {
                let dir = loc.data_dir();
                let name = args.name.clone();
                tokio::task::spawn_blocking(move || {
                    EmbeddedStore::open(&dir)?.create_queue(&name, &config)
                })
                .await??;
                println!("created {}", args.name);
            }
        }
        QueueCommand::Stats { queue, json } => {
            let q = loc.open(&queue).await?;
            let counts = q.counts().await?;
            let dead = match q.dead_letter_queue().await? {
                Some(dlq) => Some(dlq.counts().await?),
                None => None,
            };
            if json {
                let mut v = serde_json::to_value(counts)?;
                if let Some(d) = dead {
                    v["dead_letter"] = serde_json::to_value(d)?;
                }
                println!("{v}");
            } else {
                println!(
                    "{queue}: {} visible, {} in flight, {} delayed",
                    counts.visible, counts.in_flight, counts.delayed
                );
                if let Some(d) = dead {
                    println!(
                        "dead-letter queue: {} visible, {} in flight, {} delayed",
                        d.visible, d.in_flight, d.delayed
                    );
                }
            }
        }
        QueueCommand::Purge { queue } => {
            loc.open(&queue).await?.purge().await?;
            println!("purged {queue}");
        }
        QueueCommand::List { sqs, prefix, json } => list(loc, sqs, &prefix, json).await?,
    }
    Ok(0)
}

/// `queue list`: one line per queue with its counts and dead-letter queue.
async fn list(loc: &Location, sqs: bool, prefix: &str, json: bool) -> anyhow::Result<()> {
    let names = if sqs {
        let client = sqs::client(loc.endpoint_url.as_deref()).await;
        SqsQueue::list(&client, prefix).await?
    } else {
        let dir = loc.data_dir();
        tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)?.queue_names()).await??
    };
    let mut out = std::io::stdout().lock();
    if names.is_empty() && !json {
        writeln!(out, "no queues")?;
    }
    for name in names {
        let q = loc.open(&name).await?;
        let counts = q.counts().await?;
        let dlq = q.attributes().await?.redrive;
        let shown = if sqs {
            name.rsplit('/').next().unwrap_or(&name)
        } else {
            &name
        };
        if json {
            let mut v = serde_json::to_value(counts)?;
            v["queue"] = serde_json::json!(name);
            v["dead_letter_queue"] = serde_json::json!(dlq.as_ref().map(|p| &p.dead_letter_target));
            v["max_receive_count"] = serde_json::json!(dlq.as_ref().map(|p| p.max_receive_count));
            writeln!(out, "{v}")?;
        } else {
            let dlq = dlq.map_or(String::new(), |p| {
                let n = p.max_receive_count;
                let s = if n == 1 { "" } else { "s" };
                format!(
                    ", dead letters to {} after {n} receive{s}",
                    p.dead_letter_target
                )
            });
            writeln!(
                out,
                "{shown}: {} visible, {} in flight, {} delayed{dlq}",
                counts.visible, counts.in_flight, counts.delayed
            )?;
        }
    }
    Ok(())
}

/// `--key-file`'s key and the expiry it signs with.
struct Signer {
    key: SigningKey,
    expires_at: u64,
}

impl Signer {
    fn new(args: &SendArgs) -> anyhow::Result<Option<Signer>> {
        let Some(path) = &args.key_file else {
            return Ok(None);
        };
        let key = SigningKey::load(path)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        let expires_at = now.as_secs().saturating_add(args.expires_in);
        Ok(Some(Signer { key, expires_at }))
    }
}

/// The message for `body`, signed when there is a signer.
fn message(template: &OutgoingMessage, body: String, signer: Option<&Signer>) -> OutgoingMessage {
    let mut m = OutgoingMessage {
        body,
        ..template.clone()
    };
    if let Some(s) = signer {
        signing::sign(&s.key, &m.body, &mut m.attributes, s.expires_at);
    }
    m
}

pub(super) async fn send(loc: &Location, args: SendArgs) -> anyhow::Result<u8> {
    let signer = Signer::new(&args)?;
    let mut attributes = typed_attributes(&args.attrs)?;
    if let Some(tenant) = &args.tenant {
        if attributes.contains_key("tenant") {
            bail!("give the tenant once: --tenant or --attr tenant=..., not both");
        }
        attributes.insert("tenant".into(), AttributeValue::String(tenant.clone()));
    }
    let q = loc.open(&args.queue).await?;
    let reply = if args.wait.wait {
        let reply = send_wait::reply_queue(loc, &args.queue, args.wait.reply_to.as_deref()).await?;
        reply.ask(&mut attributes);
        Some(reply)
    } else {
        None
    };
    let template = OutgoingMessage {
        body: String::new(),
        attributes,
        delay: args.delay,
        group_id: args.group.clone(),
        dedup_id: args.dedup_id.clone(),
    };
    if let Some(path) = &args.batch {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ))
        };
        let mut pending = Vec::new();
        let (mut sent, mut failed) = (0u64, 0u64);
        let mut out = std::io::stdout().lock();
        for line in reader.lines() {
            let line = line.context("reading the batch file")?;
            if line.is_empty() {
                continue;
            }
            pending.push(message(&template, line, signer.as_ref()));
            if pending.len() == limits::MAX_BATCH {
                flush_batch(q.as_ref(), &mut pending, &mut out, &mut sent, &mut failed).await?;
            }
        }
        if !pending.is_empty() {
            flush_batch(q.as_ref(), &mut pending, &mut out, &mut sent, &mut failed).await?;
        }
        eprintln!("sent {sent}, rejected {failed}");
        return Ok(if failed > 0 { 1 } else { 0 });
    }
    let body = match args.body.as_deref() {
        Some("-") => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
        Some(b) => b.to_owned(),
        None => unreachable!("clap requires a body or --batch"),
    };
    let msg = message(&template, body, signer.as_ref());
    if let Some(reply) = reply {
        return send_wait::send_and_wait(loc, q.as_ref(), &msg, reply, &args.wait).await;
    }
    let id = q.send(&msg).await?;
    println!("{id}");
    Ok(0)
}

async fn flush_batch(
    q: &dyn Queue,
    pending: &mut Vec<OutgoingMessage>,
    out: &mut impl Write,
    sent: &mut u64,
    failed: &mut u64,
) -> anyhow::Result<()> {
    let results = q.send_batch(pending).await?;
    for r in results {
        match r.result {
            Ok(id) => {
                *sent += 1;
                writeln!(out, "{id}")?;
            }
            Err(e) => {
                *failed += 1;
                eprintln!("line rejected: {e}");
            }
        }
    }
    out.flush()?;
    pending.clear();
    Ok(())
}

/// Print up to `max` of `q`'s visible messages without taking them.
pub(super) async fn peek(q: &dyn Queue, max: usize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for m in q.peek(max).await? {
        writeln!(
            out,
            "{}",
            serde_json::json!({"event": "peeked", "message": m})
        )?;
    }
    Ok(())
}

pub(super) async fn receive(loc: &Location, args: ReceiveArgs) -> anyhow::Result<u8> {
    let q = loc.open(&args.queue).await?;
    if args.peek {
        peek(q.as_ref(), args.max.into()).await?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    loop {
        let batch = q
            .receive(ReceiveRequest {
                max_messages: args.max as usize,
                wait: args.wait,
                visibility_timeout: args.visibility_timeout,
            })
            .await?;
        for m in &batch {
            writeln!(
                out,
                "{}",
                serde_json::json!({"event": "received", "message": m})
            )?;
        }
        out.flush()?;
        if args.delete && !batch.is_empty() {
            let receipts: Vec<String> = batch.iter().map(|m| m.receipt_handle.clone()).collect();
            for r in q.delete_batch(&receipts).await? {
                let id = &batch[r.index].message_id;
                match r.result {
                    Ok(_) => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"event": "deleted", "message_id": id})
                    )?,
                    Err(e) => eprintln!("delete {id}: {e}"),
                }
            }
            out.flush()?;
        }
        if !args.drain || batch.is_empty() {
            return Ok(0);
        }
    }
}
