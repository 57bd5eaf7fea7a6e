//! Job slots, in the worker parent: the worker's `--concurrency` shared
//! fairly among tenants, and each tenant's `max_concurrency`.
//!
//! The order is always tenant slot first, then a worker slot, so a message
//! never holds a worker slot while it waits for its tenant's. A queue bound
//! to a tenant is asked for messages only while that tenant has room and a
//! worker slot is free ([`Slots::reserve`]); what it returns is then given
//! worker slots ([`Slots::acquire`]). When slots are contended (several
//! queues' messages arrived for the last free slot), a freed slot goes to
//! the waiting tenant with the fewest running jobs per unit of `weight`,
//! first come first served among equals ([`pick`]: pure, tested).

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
    /// Messages received that have not asked for a worker slot yet.
    in_transit: usize,
    tenants: HashMap<String, Tenant>,
    /// Messages waiting for a worker slot (only while none is free).
    waiters: Vec<Waiter>,
    seq: u64,
}

impl State {
    /// Worker slots not promised to a message already received.
    fn unclaimed(&self) -> usize {
        self.free
            .saturating_sub(self.in_transit + self.waiters.len())
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
}

/// A running job's tenant and worker slot, given back on drop.
pub(crate) struct Slot {
    slots: Slots,
    tenant: String,
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
    /// `concurrency` worker slots; `tenants` gives each known tenant's cap
    /// and weight (others: no cap, weight 1).
    pub(crate) fn new(
        concurrency: usize,
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

    /// Wait until a receive may be made for `tenant` (`None`: a shared
    /// queue, whose tenants are known only once received) and reserve its
    /// size: at least 1, at most the unclaimed worker slots, the tenant's
    /// room and a batch. A bound tenant's slots are held from here on.
    pub(crate) async fn reserve(&self, tenant: Option<&str>) -> Reservation {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let room = tenant.map_or(usize::MAX, |t| s.room(t));
                let n = s.unclaimed().min(room).min(MAX_BATCH);
                if n > 0 {
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
                s.seq += 1;
                let seq = s.seq;
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
        self.slots.lock().in_transit += n;
        (0..n)
            .map(|_| Ticket {
                slots: self.slots.clone(),
                tenant: self.tenant.clone(),
                in_transit: true,
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn weights<'a>(table: &'a [(&'a str, usize, u32)]) -> impl Fn(&str) -> (usize, u32) + 'a {
        move |t| {
            table
                .iter()
                .find(|(n, _, _)| *n == t)
                .map_or((0, 1), |(_, r, w)| (*r, *w))
        }
    }

    #[test]
    fn a_freed_slot_goes_to_the_tenant_with_least_running_per_weight() {
        let table = [("a", 3, 1), ("b", 1, 1), ("c", 4, 4)];
        let waiters = [("a", 1), ("b", 2), ("c", 3)];
        // c: 4/4 = 1 = b's 1/1, but b came first.
        assert_eq!(pick(waiters.iter().copied(), weights(&table)), Some(1));
        let table = [("a", 3, 1), ("b", 2, 1), ("c", 4, 4)];
        assert_eq!(pick(waiters.iter().copied(), weights(&table)), Some(2));
        // Equal shares: first come, first served.
        let waiters = [("a", 9), ("a", 4)];
        assert_eq!(pick(waiters.iter().copied(), weights(&table)), Some(1));
        assert_eq!(pick(std::iter::empty(), weights(&table)), None);
    }

    #[tokio::test]
    async fn a_capped_tenant_reserves_only_its_room_and_gets_it_back() {
        let slots = Slots::new(4, [("a".to_owned(), Some(1), 1)]);
        let r = slots.reserve(Some("a")).await;
        assert_eq!(r.count(), 1);
        // A second receive for `a` waits until the first reservation goes.
        let again = tokio::time::timeout(Duration::from_millis(50), slots.reserve(Some("a")));
        assert!(again.await.is_err());
        drop(r);
        let mut r = slots.reserve(Some("a")).await;
        let ticket = r.arrived(1).pop().unwrap();
        drop(r);
        // An uncapped tenant may receive a batch of up to the unclaimed slots:
        // one of the four is promised to the message that just arrived.
        assert_eq!(slots.reserve(Some("b")).await.count(), 3);
        let mut shared = slots.reserve(None).await.arrived(1).pop().unwrap();
        assert!(!shared.claim_tenant("a"), "a is at its cap");
        assert!(shared.claim_tenant("b"));
        let running = slots.acquire(ticket).await;
        drop(running);
        assert!(slots.reserve(None).await.count() >= 3);
    }

    #[tokio::test]
    async fn contended_slots_go_by_weight_and_nobody_receives_while_one_is_promised() {
        let slots = Slots::new(2, [("a".to_owned(), None, 1), ("b".to_owned(), None, 1)]);
        let ticket = |tenant: &str| {
            let mut t = Ticket {
                slots: slots.clone(),
                tenant: None,
                in_transit: false,
            };
            assert!(t.claim_tenant(tenant));
            t
        };
        let _running_a = slots.acquire(ticket("a")).await;
        let running_b = slots.acquire(ticket("b")).await;
        let waiting = |t: Ticket| {
            let s = slots.clone();
            tokio::spawn(async move { s.acquire(t).await })
        };
        // Two messages wait: another `a` first, then another `b`.
        let a2 = waiting(ticket("a"));
        tokio::task::yield_now().await;
        let b2 = waiting(ticket("b"));
        tokio::task::yield_now().await;
        assert!(!a2.is_finished() && !b2.is_finished());
        // `a` still has a job running when `b`'s slot comes free: `b2` gets
        // it although `a2` waited longer.
        drop(running_b);
        let b2 = b2.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!a2.is_finished());
        // While `a2` waits, a freed slot is promised to it: no receive starts.
        let reserve = tokio::time::timeout(Duration::from_millis(50), slots.reserve(None));
        assert!(reserve.await.is_err());
        drop(b2);
        let _a2 = a2.await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_slot_behind() {
        let slots = Slots::new(1, []);
        let mut r = slots.reserve(None).await;
        let mut t = r.arrived(1);
        drop(r);
        let running = slots.acquire(t.pop().unwrap()).await;
        let mut extra = Ticket {
            slots: slots.clone(),
            tenant: None,
            in_transit: false,
        };
        assert!(extra.claim_tenant("x"));
        let gave_up = tokio::time::timeout(Duration::from_millis(20), slots.acquire(extra));
        assert!(gave_up.await.is_err());
        drop(running);
        // Exactly one slot again: one receive of one message.
        assert_eq!(slots.reserve(None).await.count(), 1);
        assert_eq!(slots.lock().tenants["x"].held, 0);
    }
}
