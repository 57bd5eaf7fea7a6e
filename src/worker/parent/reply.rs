//! Outcomes for the sender, in the worker parent. A message whose
//! `reply-to` attribute names a queue its tenant may reply to gets exactly
//! one outcome message there when its job ends for good: deleted after
//! `ok`, dead-lettered (fatal, refused, not a job component, stopped by a
//! signal), or left on the last receive its queue's redrive policy allows
//! (retries exhausted).
//!
//! - Which queues: the tenant policy's `reply_to` (exact addresses, or
//!   prefixes ending in `*`); without it, the receiving queue's own address
//!   followed by `-replies` (`jobs` → `jobs-replies*`, an SQS URL likewise),
//!   the namespace `wasm-jobs send --wait` uses. Never a queue this worker
//!   takes jobs from. The target is checked at admission; a refused one
//!   refuses the message. On a shared queue `reply-to` is covered by the
//!   signature like every attribute.
//! - When: before the original is deleted, so a crash in between repeats
//!   the outcome rather than losing it. It carries the original message id
//!   (`message_id` in the body, the `wasm-jobs.outcome-for` attribute, and
//!   the deduplication id on a FIFO reply queue) so a receiver can drop a
//!   repeat. A failed send is logged and counted; it is never a reason to
//!   run the job again.
//! - What: JSON with the message id, queue, tenant, module and digest, the
//!   outcome, its reason, the exit code `wasm-jobs exec` would give, the
//!   attempts, the last run's duration and the job's published result
//!   (`output`, or `output_base64` when it is not UTF-8; left out, and
//!   `output_omitted_bytes` said, when the message would not fit a queue
//!   message).

use super::admit::Refusal;
use super::counted::Counted;
use super::fate::WorkerEnd;
use super::stats::WorkerStats;
use crate::http::HttpUsage;
use crate::job_output::Published;
use crate::outcome::{Outcome, exit_code};
use crate::policy::TenantPolicy;
use crate::queue::address::QueueAddress;
use crate::queue::{
    AttributeValue, Attributes, OutgoingMessage, Queue, QueueError, ReceivedMessage, limits,
};
use crate::worker::protocol::ModuleRef;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The message attribute naming where the outcome goes.
pub(crate) const REPLY_TO_ATTRIBUTE: &str = "reply-to";
/// The attribute of an outcome message naming the original message.
pub(crate) const OUTCOME_FOR_ATTRIBUTE: &str = "wasm-jobs.outcome-for";
/// Reply queues kept open; past this the handles are dropped and reopened.
const OPEN_QUEUES: usize = 64;
/// What an outcome's envelope and attributes may take besides the result.
const ENVELOPE_BYTES: usize = 16 * 1024;

/// Where the worker opens reply queues: its data directory (embedded
/// queues) and SQS endpoint.
#[derive(Debug, Clone)]
pub struct ReplyQueues {
    /// The data directory of embedded queues.
    pub data_dir: PathBuf,
    /// The SQS endpoint, if not the SDK's configuration.
    pub endpoint: Option<String>,
}

/// Reply queues opened so far, and the queues the worker serves (which are
/// never reply targets).
pub(crate) struct Replies {
    at: ReplyQueues,
    served: Vec<String>,
    open: tokio::sync::Mutex<HashMap<String, Arc<dyn Queue>>>,
    stats: Arc<WorkerStats>,
}

/// A message's checked reply target, and what the outcome says of its job.
#[derive(Debug, Clone)]
pub(crate) struct ReplyTo {
    address: String,
    tenant: String,
    module: Option<ModuleRef>,
}

impl ReplyTo {
    /// The module admission resolved for the message.
    pub(crate) fn set_module(&mut self, module: &ModuleRef) {
        self.module = Some(module.clone());
    }
}

/// How a message's life ended, as its sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Told {
    /// `run` returned ok; the message is deleted.
    Ok,
    /// `run` returned `failure::fatal`; the message is dead-lettered.
    Fatal,
    /// Dead-lettered for another reason (refused, not a job component,
    /// stopped by a signal, no retries allowed).
    DeadLettered,
    /// Failed on its last allowed receive: dead-lettered by the worker (or,
    /// for a passing failure or after exit handling, left for the queue to
    /// move next).
    RetriesExhausted,
}

impl Told {
    fn as_str(self) -> &'static str {
        match self {
            Told::Ok => "ok",
            Told::Fatal => "fatal",
            Told::DeadLettered => "dead_lettered",
            Told::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// The last attempt, as the outcome describes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ending {
    /// How the last attempt ended, in words.
    detail: String,
    /// The code `wasm-jobs exec` (and `send --wait`) exits with for it.
    exit_code: u8,
    /// The result the job published.
    output: Option<Vec<u8>>,
    /// How long its process ran.
    ran_for: Option<Duration>,
    /// The outcome its process reported, if it got that far.
    reported: Option<Outcome>,
    /// What its HTTP requests did, if it made or tried any.
    http: Option<HttpUsage>,
}

impl Ending {
    /// How long its process ran, in milliseconds (the log and the outcome
    /// message give it so).
    pub(crate) fn run_ms(&self) -> Option<f64> {
        self.ran_for.map(|d| d.as_secs_f64() * 1e3)
    }

    /// A worker's end, with what it published and how long it ran.
    pub(crate) fn of(end: &WorkerEnd, output: Option<Vec<u8>>, ran_for: Option<Duration>) -> Self {
        let exit_code = match end {
            WorkerEnd::Reported(o) => o.exit_code(),
            WorkerEnd::Unloadable(_) => exit_code::INVALID_COMPONENT,
            WorkerEnd::Refused(_) => exit_code::REFUSED,
            WorkerEnd::Overran(_) => exit_code::TIMEOUT,
            WorkerEnd::ExitCode(_) | WorkerEnd::Killed(_) | WorkerEnd::NotStarted(_) => {
                exit_code::HOST_ERROR
            }
            WorkerEnd::Lost => exit_code::HOST_ERROR,
        };
        Ending {
            detail: end.to_string(),
            exit_code,
            output,
            ran_for,
            reported: match end {
                WorkerEnd::Reported(o) => Some(o.clone()),
                _ => None,
            },
            http: None,
        }
    }

    /// With what the last attempt's HTTP requests did.
    pub(crate) fn with_http(self, http: Option<HttpUsage>) -> Self {
        Ending { http, ..self }
    }

    /// The outcome the last attempt's process reported, if any.
    pub(crate) fn reported(&self) -> Option<&Outcome> {
        self.reported.as_ref()
    }

    /// The job was stopped by `signal` and exit handling ran.
    pub(crate) fn stopped(signal: i32) -> Self {
        Ending {
            detail: format!("stopped by signal {signal}; on-exit ran"),
            exit_code: exit_code::STOPPED,
            output: None,
            ran_for: None,
            reported: None,
            http: None,
        }
    }
}

/// Whether `address` matches one of `patterns` (exact, or a prefix ending
/// in `*`).
fn allowed(patterns: &[String], address: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => address.starts_with(prefix),
        None => address == p,
    })
}

/// The default pattern for a queue: its address (less `.fifo`) + `-replies*`.
pub(crate) fn default_pattern(source: &str) -> String {
    format!(
        "{}-replies*",
        source.strip_suffix(".fifo").unwrap_or(source)
    )
}

impl Replies {
    pub(crate) fn new(at: ReplyQueues, served: Vec<String>, stats: Arc<WorkerStats>) -> Self {
        Replies {
            at,
            served,
            open: tokio::sync::Mutex::new(HashMap::new()),
            stats,
        }
    }

    /// The message's reply target, checked against `policy` (the tenant's;
    /// `None` when the tenant has none, which admission then refuses), or
    /// `None` when it asks for no outcome. `source` is the receiving queue.
    pub(crate) fn target(
        &self,
        tenant: &str,
        policy: Option<&TenantPolicy>,
        attributes: &Attributes,
        source: &str,
    ) -> Result<Option<ReplyTo>, Refusal> {
        let Some(address) = attributes
            .get(REPLY_TO_ATTRIBUTE)
            .map(AttributeValue::as_text)
        else {
            return Ok(None);
        };
        let refuse = |why: String| Err(Refusal::ReplyTo(format!("reply-to `{address}`: {why}")));
        if let Err(e) = QueueAddress::parse(&address) {
            return refuse(e.to_string());
        }
        if self.served.contains(&address) {
            return refuse("this worker takes jobs from that queue".into());
        }
        let default = [default_pattern(source)];
        let patterns = policy
            .and_then(|p| p.reply_to.as_deref())
            .unwrap_or(&default);
        if !allowed(patterns, &address) {
            return refuse(format!(
                "tenant `{tenant}` may reply only to {patterns:?} (policy `reply_to`)"
            ));
        }
        Ok(Some(ReplyTo {
            address,
            tenant: tenant.to_owned(),
            module: None,
        }))
    }

    async fn queue(&self, address: &str) -> Result<Arc<dyn Queue>, QueueError> {
        let mut open = self.open.lock().await;
        if let Some(q) = open.get(address) {
            return Ok(Arc::clone(q));
        }
        let parsed = QueueAddress::parse(address)?;
        let q = crate::queue::open(&parsed, &self.at.data_dir, self.at.endpoint.as_deref()).await?;
        let q = Counted::wrap(q, &self.stats);
        if open.len() >= OPEN_QUEUES {
            open.clear();
        }
        open.insert(address.to_owned(), Arc::clone(&q));
        Ok(q)
    }
}

#[derive(serde::Serialize)]
struct OutcomeMessage<'a> {
    message_id: &'a str,
    queue: &'a str,
    tenant: &'a str,
    module: Option<&'a str>,
    digest: Option<&'a str>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    detail: &'a str,
    exit_code: u8,
    attempts: u32,
    duration_ms: Option<f64>,
    trace_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<&'a HttpUsage>,
    #[serde(flatten)]
    output: Option<Published>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_omitted_bytes: Option<usize>,
}

/// The message an outcome is about: as received, and from which queue.
pub(crate) struct About<'a> {
    pub(crate) msg: &'a ReceivedMessage,
    pub(crate) queue: &'a str,
    /// The trace the job's span belongs to.
    pub(crate) trace_id: &'a str,
}

/// The outcome body for `d`, with its result if the whole fits a message.
fn body(d: &About<'_>, reply: &ReplyTo, told: Told, reason: Option<&str>, e: &Ending) -> String {
    let mut m = OutcomeMessage {
        message_id: &d.msg.message_id,
        queue: d.queue,
        tenant: &reply.tenant,
        module: reply.module.as_ref().map(|m| m.label.as_str()),
        digest: reply.module.as_ref().map(|m| m.digest.as_str()),
        outcome: told.as_str(),
        reason: reason.map(|r| r.get(..r.floor_char_boundary(4096)).unwrap_or(r)),
        detail: &e.detail,
        exit_code: e.exit_code,
        attempts: d.msg.receive_count,
        duration_ms: e.run_ms(),
        trace_id: d.trace_id,
        http: e.http.as_ref(),
        output: e.output.clone().map(Published),
        output_omitted_bytes: None,
    };
    let json = serde_json::to_string(&m).expect("outcomes serialize");
    if json.len() + ENVELOPE_BYTES <= limits::MAX_MESSAGE_BYTES {
        return json;
    }
    m.output_omitted_bytes = e.output.as_ref().map(Vec::len);
    m.output = None;
    serde_json::to_string(&m).expect("outcomes serialize")
}

impl Replies {
    /// Send the outcome of the message `d` to `reply`.
    pub(crate) async fn tell(
        &self,
        reply: &ReplyTo,
        d: About<'_>,
        told: Told,
        reason: Option<&str>,
        e: &Ending,
    ) {
        let mut attributes = Attributes::new();
        attributes.insert(
            OUTCOME_FOR_ATTRIBUTE.into(),
            AttributeValue::String(d.msg.message_id.clone()),
        );
        let fifo = reply.address.ends_with(".fifo");
        let msg = OutgoingMessage {
            body: body(&d, reply, told, reason, e),
            attributes,
            delay: None,
            group_id: fifo.then(|| {
                d.msg
                    .group_id
                    .clone()
                    .unwrap_or_else(|| "wasm-jobs-outcomes".into())
            }),
            dedup_id: fifo.then(|| d.msg.message_id.clone()),
        };
        let sent = match self.queue(&reply.address).await {
            Ok(q) => q.send(&msg).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(_) => {
                self.stats.outcomes_sent.inc();
                tracing::info!(message_id = %d.msg.message_id, reply_to = %reply.address, outcome = told.as_str(), "outcome sent");
            }
            Err(error) => {
                self.stats.outcomes_failed.inc();
                tracing::error!(message_id = %d.msg.message_id, reply_to = %reply.address, %error, "cannot send the outcome; it is lost");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_patterns_are_exact_or_prefixes() {
        let p = vec!["results".to_owned(), "acme-*".to_owned()];
        assert!(allowed(&p, "results"));
        assert!(!allowed(&p, "results-2"));
        assert!(allowed(&p, "acme-replies-1"));
        assert!(!allowed(&p, "beta-jobs"));
        assert_eq!(default_pattern("jobs"), "jobs-replies*");
        assert_eq!(default_pattern("jobs.fifo"), "jobs-replies*");
        let url = "http://127.0.0.1:5000/000000000000/jobs";
        assert!(allowed(
            &[default_pattern(url)],
            &format!("{url}-replies-ab12")
        ));
    }

    fn policy(reply_to: Option<Vec<String>>) -> TenantPolicy {
        let mut p = crate::policy::Policies::open(Default::default())
            .for_tenant("t")
            .cloned()
            .unwrap();
        p.reply_to = reply_to;
        p
    }

    fn target(r: &Replies, p: &TenantPolicy, to: &str) -> Result<Option<ReplyTo>, Refusal> {
        let mut attributes = Attributes::new();
        attributes.insert(REPLY_TO_ATTRIBUTE.into(), AttributeValue::String(to.into()));
        r.target("t", Some(p), &attributes, "jobs")
    }

    #[test]
    fn a_reply_target_must_be_allowed_and_not_a_served_queue() {
        let r = Replies::new(
            ReplyQueues {
                data_dir: "/nonexistent".into(),
                endpoint: None,
            },
            vec!["jobs".into(), "jobs-replies-x".into()],
            Arc::new(WorkerStats::default()),
        );
        let default = policy(None);
        assert!(target(&r, &default, "jobs-replies-1").unwrap().is_some());
        let err = |to: &str, p: &TenantPolicy| target(&r, p, to).unwrap_err().to_string();
        assert!(err("other", &default).contains("may reply only to [\"jobs-replies*\"]"));
        assert!(err("jobs-replies-x", &default).contains("takes jobs from"));
        assert!(err("bad name", &default).contains("reply-to `bad name`"));
        let strict = policy(Some(vec!["results".into()]));
        assert!(target(&r, &strict, "results").unwrap().is_some());
        assert!(err("jobs-replies-1", &strict).contains("may reply only"));
        let r2 = r.target("t", Some(&default), &Attributes::new(), "jobs");
        assert!(r2.unwrap().is_none(), "no reply-to, no outcome");
    }
}
