//! Job slots, in the worker parent: the worker's `--concurrency` shared
//! fairly among tenants, each tenant's `max_concurrency`, and the
//! `--prefetch` of messages received ahead of a free slot.
//!
//! The order is always tenant slot first, then a worker slot, so a message
//! never holds a worker slot while it waits for its tenant's. A queue bound
//! to a tenant is asked for messages only while that tenant has room and a
//! worker slot or the prefetch is free ([`Slots::reserve`]); with a
//! prefetch, a receive waits until a whole batch may be asked for
//! ([`receive_size`]: pure, tested). What it returns is then given worker
//! slots ([`Slots::acquire`]). When slots are contended (messages wait for
//! them), a freed slot goes to the waiting tenant with the fewest running
//! jobs per unit of `weight`, first come first served among equals
//! ([`pick`]: pure, tested).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, oneshot};

/// Most messages one receive asks for (SQS's batch limit).
const MAX_BATCH: usize = 10;

#[derive(Debug, Default)]
struct Tenant {
    cap: Option<usize>,
    weight: u32,
    /// Tenant slots held: reserved for a receive, waiting, or running.
    held: usize,
    /// Worker slots held by this tenant's jobs.
    running: usize,
}

impl Tenant {
    fn unknown() -> Self {
        Tenant {
            weight: 1,
            ..Tenant::default()
        }
    }
}

struct Waiter {
    tenant: String,
    seq: u64,
    grant: oneshot::Sender<()>,
}

struct State {
    /// Worker slots nobody holds.
    free: usize,
    /// Messages that may be received beyond the free worker slots.
    prefetch: usize,
    /// Messages received that have not asked for a worker slot yet.
    in_transit: usize,
    tenants: HashMap<String, Tenant>,
    /// Messages waiting for a worker slot (only while none is free).
    waiters: Vec<Waiter>,
    /// The arrival number last given to a received message.
    seq: u64,
}

impl State {
    /// Received messages not running yet: on their way to a worker slot or
    /// waiting for one.
    fn local(&self) -> usize {
        self.in_transit + self.waiters.len()
    }

    /// Messages that may still be received: the free worker slots and the
    /// prefetch, less what was received and is not running yet.
    fn unclaimed(&self, prefetch: usize) -> usize {
        (self.free + prefetch).saturating_sub(self.local())
    }

    /// How many messages a receive for `tenant` may ask for now, if it
    /// should be made now ([`receive_size`]).
    fn receive_size(&self, tenant: Option<&str>, fifo: bool) -> Option<usize> {
        let prefetch = if fifo { 0 } else { self.prefetch };
        let room = tenant.map_or(usize::MAX, |t| self.room(t));
        let tenant_waiting = tenant.map(|t| {
            self.tenants
                .get(t)
                .map_or(0, |t| t.held.saturating_sub(t.running))
        });
        let n = receive_size(Want {
            unclaimed: self.unclaimed(prefetch),
            room,
            prefetch,
            idle_slots: self.free.saturating_sub(self.local()),
            tenant_waiting,
        });
        if fifo { n.map(|_| 1) } else { n }
    }

    fn room(&self, tenant: &str) -> usize {
        match self.tenants.get(tenant) {
            Some(Tenant {
                cap: Some(cap),
                held,
                ..
            }) => cap.saturating_sub(*held),
            _ => usize::MAX,
        }
    }

    fn tenant(&mut self, name: &str) -> &mut Tenant {
        self.tenants
            .entry(name.to_owned())
            .or_insert_with(Tenant::unknown)
    }
}

/// The worker's slots. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Slots {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// Tenant slots reserved for a receive not made yet (none for a shared
/// queue). Dropping it gives back what no message took.
pub(crate) struct Reservation {
    slots: Slots,
    tenant: Option<String>,
    count: usize,
}

/// One received message's claim: its tenant slot once known, and its place
/// among the messages about to ask for a worker slot. Dropped unused (the
/// message was refused or released), it gives both back.
pub(crate) struct Ticket {
    slots: Slots,
    tenant: Option<String>,
    in_transit: bool,
    /// Its place in arrival order, kept while it waits for a worker slot,
    /// so the messages of one receive start in the order received.
    seq: u64,
}

/// A running job's tenant and worker slot, given back on drop.
pub(crate) struct Slot {
    slots: Slots,
    tenant: String,
}

/// What [`receive_size`] decides from.
#[derive(Debug, Clone, Copy)]
struct Want {
    /// Messages the worker may still take ([`State::unclaimed`]).
    unclaimed: usize,
    /// The tenant's room under its cap (`usize::MAX`: no cap, or a shared
    /// queue whose tenants are known only once received).
    room: usize,
    /// `--prefetch`.
    prefetch: usize,
    /// Worker slots no received message will take.
    idle_slots: usize,
    /// A bound queue's tenant: its received messages not running yet.
    tenant_waiting: Option<usize>,
}

/// Whether to receive now, and how many: at most the unclaimed messages,
/// the tenant's room and a batch. With a prefetch, a receive waits until
/// it can ask for a full batch (`min(prefetch, 10)`, or the tenant's room
/// if smaller), so a backlog costs one receive per batch instead of one per
/// freed slot; it goes at once when a worker slot would otherwise sit idle,
/// or when its tenant has nothing waiting (so every busy tenant has
/// messages among the waiters that [`pick`] shares slots between).
fn receive_size(w: Want) -> Option<usize> {
    let n = w.unclaimed.min(w.room).min(MAX_BATCH);
    let batch = w.prefetch.min(MAX_BATCH).min(w.room);
    let go = n >= batch || w.idle_slots > 0 || w.tenant_waiting == Some(0);
    (n > 0 && go).then_some(n)
}

/// Who gets a freed worker slot among `waiters` (tenant, arrival order):
/// the one whose tenant has the fewest running jobs per unit of weight,
/// the earliest among equals. Returns an index into `waiters`.
fn pick<'a>(
    waiters: impl Iterator<Item = (&'a str, u64)>,
    running_and_weight: impl Fn(&str) -> (usize, u32),
) -> Option<usize> {
    waiters
        .enumerate()
        .min_by(|(_, (ta, sa)), (_, (tb, sb))| {
            let (ra, wa) = running_and_weight(ta);
            let (rb, wb) = running_and_weight(tb);
            // ra/wa < rb/wb without division.
            (ra as u64 * u64::from(wb.max(1)))
                .cmp(&(rb as u64 * u64::from(wa.max(1))))
                .then(sa.cmp(sb))
        })
        .map(|(i, _)| i)
}

impl Slots {
    /// `concurrency` worker slots and `prefetch` messages received beyond
    /// them; `tenants` gives each known tenant's cap and weight (others: no
    /// cap, weight 1).
    pub(crate) fn new(
        concurrency: usize,
        prefetch: usize,
        tenants: impl IntoIterator<Item = (String, Option<usize>, u32)>,
    ) -> Self {
        let tenants = tenants
            .into_iter()
            .map(|(name, cap, weight)| {
                let t = Tenant {
                    cap,
                    weight,
                    ..Tenant::default()
                };
                (name, t)
            })
            .collect();
        Slots {
            state: Arc::new(Mutex::new(State {
                free: concurrency,
                prefetch,
                in_transit: 0,
                tenants,
                waiters: Vec::new(),
                seq: 0,
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Wait until a receive should be made for `tenant` (`None`: a shared
    /// queue, whose tenants are known only once received) and reserve its
    /// size ([`receive_size`]). A `fifo` queue receives one message at a
    /// time, for a free slot: a batch may hold several messages of one
    /// group, which the worker would run at once; received one by one, a
    /// group's next message stays in the queue (held by the one in flight)
    /// until the one before it is settled, so each group runs in order, one
    /// message at a time, beside the other groups. A bound tenant's slots
    /// are held from here on.
    pub(crate) async fn reserve(&self, tenant: Option<&str>, fifo: bool) -> Reservation {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if let Some(n) = s.receive_size(tenant, fifo) {
                    if let Some(t) = tenant {
                        s.tenant(t).held += n;
                    }
                    return Reservation {
                        slots: self.clone(),
                        tenant: tenant.map(str::to_owned),
                        count: n,
                    };
                }
            }
            notified.await;
        }
    }

    /// A worker slot for a message: at once if one is free and nobody
    /// waits, else when [`pick`] chooses it. The ticket must hold its
    /// tenant's slot ([`Ticket::claim_tenant`] on a shared queue).
    pub(crate) async fn acquire(&self, mut ticket: Ticket) -> Slot {
        let tenant = ticket.tenant.take().unwrap_or_default();
        let waiting = {
            let mut s = self.lock();
            if ticket.in_transit {
                ticket.in_transit = false;
                s.in_transit -= 1;
            }
            if s.free > 0 && s.waiters.is_empty() {
                s.free -= 1;
                s.tenant(&tenant).running += 1;
                None
            } else {
                let (grant, rx) = oneshot::channel();
                let seq = ticket.seq;
                let waiter = Waiter {
                    tenant: tenant.clone(),
                    seq,
                    grant,
                };
                s.waiters.push(waiter);
                Some(Waiting {
                    slots: self.clone(),
                    tenant: tenant.clone(),
                    seq,
                    rx: Some(rx),
                    granted: false,
                })
            }
        };
        if let Some(mut w) = waiting {
            if let Some(rx) = w.rx.as_mut() {
                // The sender is only dropped after sending (see `release`).
                let _ = rx.await;
            }
            w.granted = true;
        }
        Slot {
            slots: self.clone(),
            tenant,
        }
    }

    /// Give a worker slot back: to the waiter [`pick`] chooses, else free.
    fn release(&self, tenant: &str) {
        let mut s = self.lock();
        let t = s.tenant(tenant);
        t.running = t.running.saturating_sub(1);
        t.held = t.held.saturating_sub(1);
        let chosen = {
            let st = &*s;
            let waiters = st.waiters.iter().map(|w| (w.tenant.as_str(), w.seq));
            pick(waiters, |t| {
                st.tenants.get(t).map_or((0, 1), |t| (t.running, t.weight))
            })
        };
        match chosen {
            Some(i) => {
                let w = s.waiters.swap_remove(i);
                // A waiter's receiver lives until its `Waiting` guard has
                // taken it off this list under the lock, so this send succeeds.
                let _ = w.grant.send(());
                s.tenant(&w.tenant).running += 1;
            }
            None => s.free += 1,
        }
        drop(s);
        self.notify();
    }
}

impl Reservation {
    /// How many messages the receive may ask for.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// `n` messages arrived: one ticket each (with a bound queue's tenant
    /// slot); the reservation's other slots go back when it is dropped.
    pub(crate) fn arrived(&mut self, n: usize) -> Vec<Ticket> {
        let n = n.min(self.count);
        self.count -= n;
        let first = {
            let mut s = self.slots.lock();
            s.in_transit += n;
            s.seq += n as u64;
            s.seq - n as u64 + 1
        };
        (first..first + n as u64)
            .map(|seq| Ticket {
                slots: self.slots.clone(),
                tenant: self.tenant.clone(),
                in_transit: true,
                seq,
            })
            .collect()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(t) = &self.tenant
            && self.count > 0
        {
            let mut s = self.slots.lock();
            let t = s.tenant(t);
            t.held = t.held.saturating_sub(self.count);
            drop(s);
            self.slots.notify();
        }
    }
}

impl Ticket {
    /// Take `tenant`'s slot for a shared queue's message, if it has room.
    pub(crate) fn claim_tenant(&mut self, tenant: &str) -> bool {
        if self.tenant.is_some() {
            return true;
        }
        let mut s = self.slots.lock();
        if s.room(tenant) == 0 {
            return false;
        }
        s.tenant(tenant).held += 1;
        self.tenant = Some(tenant.to_owned());
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.tenant.is_none() && !self.in_transit {
            return;
        }
        let mut s = self.slots.lock();
        if self.in_transit {
            s.in_transit -= 1;
        }
        if let Some(t) = &self.tenant {
            let t = s.tenant(t);
            t.held = t.held.saturating_sub(1);
        }
        drop(s);
        self.slots.notify();
    }
}

/// A message waiting for a worker slot. Dropped before its grant (the
/// task was cancelled) it leaves the queue of waiters and gives its tenant
/// slot back; dropped after a grant it raced with, it gives that slot back.
struct Waiting {
    slots: Slots,
    tenant: String,
    seq: u64,
    rx: Option<oneshot::Receiver<()>>,
    /// The grant arrived and the slot went to the `Slot`.
    granted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut s = self.slots.lock();
        if let Some(i) = s.waiters.iter().position(|w| w.seq == self.seq) {
            s.waiters.swap_remove(i);
            let t = s.tenant(&self.tenant);
            t.held = t.held.saturating_sub(1);
            drop(s);
            self.slots.notify();
        } else {
            drop(s);
            self.slots.release(&self.tenant);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.tenant);
    }
}

#[cfg(test)]
mod tests;
