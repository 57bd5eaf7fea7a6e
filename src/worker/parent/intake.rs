//! Receiving, in the worker parent: one receiver task per queue the worker
//! serves. Each asks its queue for messages only when [`Slots::reserve`]
//! says so: its tenant has room, and a batch fits in the free slots and the
//! prefetch (or a slot would sit idle), so a capped tenant's queue is left
//! alone (its messages stay in the queue, receive count untouched) while
//! other tenants' jobs run, and a backlog is received 10 at a time. Nothing
//! is held during a long poll, so an idle queue never keeps a slot from a
//! busy one.
//!
//! What a receive returns goes to the run loop with one [`Ticket`] per
//! message; a batch that arrives after an exit signal is released at once.

use super::admit::{self, QueueTenant};
use super::settle::{Delivery, Source};
use super::slots::{Slots, Ticket};
use super::stats::WorkerStats;
use crate::queue::{AttributeValue, Queue, ReceiveRequest, ReceivedMessage};
use crate::trace_context::{TRACEPARENT_ATTRIBUTE, TraceContext};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What a receiver hands the run loop.
pub(super) enum Intake {
    /// Messages, each with its claim on a slot.
    Messages(Vec<(Delivery, Ticket)>),
    /// The queue with this index had nothing.
    Empty(usize),
    /// The queue cannot be used (permanent error).
    Failed(String),
}

/// Receive from one queue until stopped.
pub(super) async fn receive_loop(
    index: usize,
    source: Arc<Source>,
    slots: Slots,
    request: ReceiveRequest,
    mut stop: watch::Receiver<bool>,
    out: mpsc::Sender<Intake>,
    stats: Arc<WorkerStats>,
) {
    let backoff = crate::queue::retry::Backoff::default();
    let mut transient_failures = 0u32;
    let tenant = match &source.tenant {
        QueueTenant::Bound(t) => Some(t.clone()),
        QueueTenant::Shared => None,
    };
    loop {
        let mut reserved = tokio::select! {
            r = slots.reserve(tenant.as_deref(), source.fifo) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if *stop.borrow() {
            return;
        }
        let req = ReceiveRequest {
            max_messages: reserved.count(),
            ..request
        };
        let answer = source.queue.receive(req).await;
        stats.queue_call(source.queue.name(), &answer);
        let batch = match answer {
            Ok(b) => {
                transient_failures = 0;
                b
            }
            Err(e) if e.is_transient() => {
                transient_failures += 1;
                let delay = backoff.delay(transient_failures.min(6));
                tracing::warn!(queue = source.queue.name(), error = %e, delay_ms = delay.as_millis() as u64, "receive failed; backing off");
                drop(reserved);
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => {
                let why = format!("queue {}: {e}", source.queue.name());
                let _ = out.send(Intake::Failed(why)).await;
                return;
            }
        };
        let received = Instant::now();
        if *stop.borrow() {
            release(source.queue.as_ref(), &batch, &stats).await;
            return;
        }
        stats.received.inc_by(batch.len() as u64);
        if batch.is_empty() {
            drop(reserved);
            if out.send(Intake::Empty(index)).await.is_err() {
                return;
            }
            if request.wait.is_zero() {
                // Short polling: do not spin on an empty queue.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        }
        let tickets = reserved.arrived(batch.len());
        drop(reserved);
        let items: Vec<(Delivery, Ticket)> = batch
            .into_iter()
            .zip(tickets)
            .map(|(msg, ticket)| {
                let attributes = admit::sanitize(&msg.attributes);
                let traceparent = attributes
                    .attributes
                    .get(TRACEPARENT_ATTRIBUTE)
                    .map(AttributeValue::as_text);
                let d = Delivery {
                    source: Arc::clone(&source),
                    msg,
                    attributes,
                    received,
                    reply: None,
                    trace: TraceContext::for_job(traceparent.as_deref()),
                };
                (d, ticket)
            })
            .collect();
        if let Err(mpsc::error::SendError(Intake::Messages(items))) =
            out.send(Intake::Messages(items)).await
        {
            let msgs: Vec<ReceivedMessage> = items.into_iter().map(|(d, _)| d.msg).collect();
            release(source.queue.as_ref(), &msgs, &stats).await;
            return;
        }
    }
}

/// Release messages a receiver handed to the run loop that will not run
/// them (an exit signal came).
pub(super) async fn release_handed(batch: Vec<(Delivery, Ticket)>, stats: &WorkerStats) {
    for (d, _) in batch {
        release(d.source.queue.as_ref(), std::slice::from_ref(&d.msg), stats).await;
    }
}

/// Make messages visible again at once (received after an exit signal).
pub(super) async fn release(queue: &dyn Queue, batch: &[ReceivedMessage], stats: &WorkerStats) {
    for m in batch {
        match queue
            .change_visibility(&m.receipt_handle, Duration::ZERO)
            .await
        {
            Ok(()) => {
                stats.released.inc();
                tracing::info!(message_id = %m.message_id, "released a message received after the exit signal");
            }
            Err(e) => {
                tracing::error!(message_id = %m.message_id, error = %e, "could not release a message")
            }
        }
    }
}
