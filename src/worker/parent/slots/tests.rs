//! Tests of the worker's slots: who gets a freed slot, when a receive is
//! made and how big, and that nothing is left held.

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

#[test]
fn with_a_prefetch_receives_wait_for_a_batch_unless_a_slot_or_a_tenant_would_starve() {
    let want = |unclaimed, room, prefetch, idle_slots, tenant_waiting| {
        receive_size(Want {
            unclaimed,
            room,
            prefetch,
            idle_slots,
            tenant_waiting,
        })
    };
    let any = usize::MAX;
    // No prefetch: one message per freed slot, at once (as before).
    assert_eq!(want(1, any, 0, 0, None), Some(1));
    assert_eq!(want(0, any, 0, 0, None), None);
    // Prefetch 10, every slot busy, 4 messages waiting: not yet.
    assert_eq!(want(6, any, 10, 0, None), None);
    assert_eq!(want(6, any, 10, 0, Some(4)), None);
    // ... until a whole batch can be asked for.
    assert_eq!(want(10, any, 10, 0, Some(0)), Some(10));
    assert_eq!(want(14, any, 10, 0, None), Some(10));
    // A slot would sit idle: receive what may be received, now.
    assert_eq!(want(3, any, 10, 1, None), Some(3));
    // A bound tenant with nothing waiting receives at once, so its
    // messages compete for freed slots with other tenants' by weight.
    assert_eq!(want(2, any, 10, 0, Some(0)), Some(2));
    // A capped tenant's batch is its room.
    assert_eq!(want(8, 2, 10, 0, Some(1)), Some(2));
    assert_eq!(want(8, 0, 10, 1, Some(1)), None);
    // Prefetch below a batch: that many at a time.
    assert_eq!(want(3, any, 3, 0, Some(2)), Some(3));
    assert_eq!(want(2, any, 3, 0, Some(2)), None);
}

#[tokio::test]
async fn a_prefetch_lets_a_full_batch_wait_for_busy_slots() {
    let slots = Slots::new(2, 10, []);
    let mut r = slots.reserve(Some("t"), false).await;
    assert_eq!(r.count(), 10, "2 slots and a prefetch of 10: one batch");
    let mut tickets = r.arrived(10);
    drop(r);
    let first = slots.acquire(tickets.pop().unwrap()).await;
    let _second = slots.acquire(tickets.pop().unwrap()).await;
    // Both slots busy, 8 waiting: 2 more could come, but not a batch.
    let early = tokio::time::timeout(Duration::from_millis(20), slots.reserve(Some("t"), false));
    assert!(early.await.is_err());
    // The waiting messages run as slots free up; once none is left
    // waiting, the next batch is received.
    drop(first);
    let waiting = tickets.len();
    for t in tickets {
        drop(slots.acquire(t).await);
    }
    assert_eq!(waiting, 8);
    assert_eq!(slots.reserve(Some("t"), false).await.count(), 10);
}

#[tokio::test]
async fn a_fifo_queue_receives_one_message_at_a_time() {
    let slots = Slots::new(4, 10, []);
    let mut r = slots.reserve(Some("t"), true).await;
    assert_eq!(r.count(), 1, "a batch could hold one group's messages");
    let ticket = r.arrived(1).pop().unwrap();
    drop(r);
    let _running = slots.acquire(ticket).await;
    let next = slots.reserve(Some("t"), true).await;
    assert_eq!(next.count(), 1, "the next, for another slot");
}

#[tokio::test]
async fn a_capped_tenant_reserves_only_its_room_and_gets_it_back() {
    let slots = Slots::new(4, 0, [("a".to_owned(), Some(1), 1)]);
    let r = slots.reserve(Some("a"), false).await;
    assert_eq!(r.count(), 1);
    // A second receive for `a` waits until the first reservation goes.
    let again = tokio::time::timeout(Duration::from_millis(50), slots.reserve(Some("a"), false));
    assert!(again.await.is_err());
    drop(r);
    let mut r = slots.reserve(Some("a"), false).await;
    let ticket = r.arrived(1).pop().unwrap();
    drop(r);
    // An uncapped tenant may receive a batch of up to the unclaimed slots:
    // one of the four is promised to the message that just arrived.
    assert_eq!(slots.reserve(Some("b"), false).await.count(), 3);
    let mut shared = slots.reserve(None, false).await.arrived(1).pop().unwrap();
    assert!(!shared.claim_tenant("a"), "a is at its cap");
    assert!(shared.claim_tenant("b"));
    let running = slots.acquire(ticket).await;
    drop(running);
    assert!(slots.reserve(None, false).await.count() >= 3);
}

#[tokio::test]
async fn contended_slots_go_by_weight_and_nobody_receives_while_one_is_promised() {
    let slots = Slots::new(2, 0, [("a".to_owned(), None, 1), ("b".to_owned(), None, 1)]);
    let arrivals = std::cell::Cell::new(0);
    let ticket = |tenant: &str| {
        arrivals.set(arrivals.get() + 1);
        let mut t = Ticket {
            slots: slots.clone(),
            tenant: None,
            in_transit: false,
            seq: arrivals.get(),
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
    let reserve = tokio::time::timeout(Duration::from_millis(50), slots.reserve(None, false));
    assert!(reserve.await.is_err());
    drop(b2);
    let _a2 = a2.await.unwrap();
}

#[tokio::test]
async fn a_waiter_that_gives_up_leaves_no_slot_behind() {
    let slots = Slots::new(1, 0, []);
    let mut r = slots.reserve(None, false).await;
    let mut t = r.arrived(1);
    drop(r);
    let running = slots.acquire(t.pop().unwrap()).await;
    let mut extra = Ticket {
        slots: slots.clone(),
        tenant: None,
        in_transit: false,
        seq: 99,
    };
    assert!(extra.claim_tenant("x"));
    let gave_up = tokio::time::timeout(Duration::from_millis(20), slots.acquire(extra));
    assert!(gave_up.await.is_err());
    drop(running);
    // Exactly one slot again: one receive of one message.
    assert_eq!(slots.reserve(None, false).await.count(), 1);
    assert_eq!(slots.lock().tenants["x"].held, 0);
}

#[tokio::test]
async fn messages_of_one_receive_get_slots_in_the_order_received() {
    let slots = Slots::new(1, 10, []);
    let mut r = slots.reserve(Some("t"), false).await;
    let mut tickets = r.arrived(4);
    drop(r);
    let first = slots.acquire(tickets.remove(0)).await;
    // The other three ask for the slot in reverse order ...
    let mut waiting = Vec::new();
    for (place, t) in tickets.into_iter().enumerate().rev() {
        let s = slots.clone();
        waiting.push((place, tokio::spawn(async move { s.acquire(t).await })));
        tokio::task::yield_now().await;
    }
    // ... and get it in the order they arrived: a later one holding it
    // would keep the earlier one waiting past the timeout.
    drop(first);
    waiting.sort_by_key(|(place, _)| *place);
    for (place, task) in waiting {
        let slot = tokio::time::timeout(Duration::from_secs(5), task).await;
        drop(slot.unwrap_or_else(|_| panic!("message {place} waited behind a later one")));
    }
}
