//! Pre-forked children, kept by the fork server: which to keep, which to
//! retire, how many to fork. The fork server does the forking and killing;
//! this module only decides, so every rule is a unit test.
//!
//! A warm child is forked for a [`WarmKey`] (module, tenant, policy) and set
//! up up to its call ([`super::child`]): limits, runtime, store, Landlock
//! and seccomp. A spawn whose key matches one takes it and the call starts
//! without a fork; any other spawn forks on demand, as before. The rules:
//! - Keep one child per free slot (`capacity` minus calls running), plus
//!   one, for the key of the last spawn, the module the fork server expects
//!   next.
//! - At most `capacity` warm children in all; to make room for the expected
//!   key, the oldest of other keys go first.
//! - A warm child older than [`MAX_AGE`] is retired: its store resolved the
//!   policy's host names and opened its directories when it was made, and
//!   those should not grow stale. After [`MAX_AGE`] without a spawn none are
//!   kept, so an idle worker holds no extra processes, and its fork server
//!   sleeps until the next spawn.
//! - A warm child that dies while waiting (its set-up failed, or someone
//!   killed it) stops pre-forking for its key for [`MAX_AGE`], so a policy
//!   whose set-up always fails does not fork in a loop; its calls fork on
//!   demand and fail there, with the message, as before.

use super::protocol::{ModuleRef, Spawn};
use crate::sandbox::SandboxPolicy;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long a warm child waits at most, and how long pre-forking goes on
/// without a spawn.
pub(super) const MAX_AGE: Duration = Duration::from_secs(10);

/// What a warm child was set up for; a spawn must match all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WarmKey {
    pub(super) module: ModuleRef,
    pub(super) tenant: String,
    pub(super) policy: SandboxPolicy,
}

impl WarmKey {
    pub(super) fn of(req: &Spawn) -> Self {
        WarmKey {
            module: req.module.clone(),
            tenant: req.tenant.clone(),
            policy: req.policy.clone(),
        }
    }
}

/// A child waiting for its call, and the fork server's end of its channel.
#[derive(Debug)]
pub(super) struct Warm {
    pub(super) pid: Pid,
    pub(super) key: WarmKey,
    pub(super) channel: OwnedFd,
    pub(super) since: Instant,
}

/// What the fork server should do now.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Warm children taken out of the pool, to be killed.
    pub(super) retire: Vec<Pid>,
    /// How many children to fork for the expected key.
    pub(super) fork: usize,
}

#[derive(Debug)]
pub(super) struct WarmPool {
    capacity: usize,
    children: Vec<Warm>,
    /// The key of the last spawn, and when it came.
    expected: Option<(WarmKey, Instant)>,
    /// The last key whose warm child died waiting, and when.
    failed: Option<(WarmKey, Instant)>,
}

impl WarmPool {
    /// A pool of at most `capacity` children; 0 turns pre-forking off.
    pub(super) fn new(capacity: usize) -> Self {
        WarmPool {
            capacity,
            children: Vec::new(),
            expected: None,
            failed: None,
        }
    }

    /// A spawn for `key` came: it is what the fork server expects next.
    pub(super) fn expect(&mut self, key: &WarmKey, now: Instant) {
        match &mut self.expected {
            Some((k, at)) if k == key => *at = now,
            _ => self.expected = Some((key.clone(), now)),
        }
    }

    /// Take the longest-waiting child set up for `key`.
    pub(super) fn take(&mut self, key: &WarmKey) -> Option<Warm> {
        let i = self.children.iter().position(|w| &w.key == key)?;
        Some(self.children.remove(i))
    }

    pub(super) fn add(&mut self, warm: Warm) {
        self.children.push(warm);
    }

    /// The expected key, if children should be forked for it at all.
    pub(super) fn expected(&self, now: Instant) -> Option<&WarmKey> {
        let (key, at) = self.expected.as_ref()?;
        let failed = self
            .failed
            .as_ref()
            .is_some_and(|(k, when)| k == key && now < *when + MAX_AGE);
        (self.capacity > 0 && now < *at + MAX_AGE && !failed).then_some(key)
    }

    /// Decide, with `busy` calls running, and take the retired children
    /// out of the pool.
    pub(super) fn plan(&mut self, busy: usize, now: Instant) -> Plan {
        let mut retire: Vec<Pid> = Vec::new();
        self.children.retain(|w| {
            let keep = now < w.since + MAX_AGE;
            if !keep {
                retire.push(w.pid);
            }
            keep
        });
        if self
            .expected
            .as_ref()
            .is_some_and(|(_, at)| now >= *at + MAX_AGE)
        {
            // Idle: keep no child, however young (one forked for the last
            // spawn's key just before its mark), and nothing to wake up for
            // until the next spawn.
            self.expected = None;
            retire.extend(self.children.drain(..).map(|w| w.pid));
        }
        let Some(key) = self.expected(now).cloned() else {
            return Plan { retire, fork: 0 };
        };
        let have = self.children.iter().filter(|w| w.key == key).count();
        // One more than the free slots: the child for the next slot to free
        // is asked for when a call ends, not when the parent's next call
        // comes (a template's copy, or a fork, is still on its way then).
        let slots = self.capacity.saturating_sub(busy) + 1;
        let want = slots.saturating_sub(have);
        // Make room by retiring the oldest children of other keys.
        while self.capacity.saturating_sub(self.children.len()) < want {
            let Some(i) = self.children.iter().position(|w| w.key != key) else {
                break;
            };
            retire.push(self.children.remove(i).pid);
        }
        let room = self.capacity.saturating_sub(self.children.len());
        Plan {
            retire,
            fork: want.min(room),
        }
    }

    /// `pid` was reaped: if it was still waiting, it died before its call
    /// (see the module doc). Returns whether it was one of the pool's.
    pub(super) fn reaped(&mut self, pid: Pid, now: Instant) -> bool {
        let Some(i) = self.children.iter().position(|w| w.pid == pid) else {
            return false;
        };
        let w = self.children.remove(i);
        self.failed = Some((w.key, now));
        true
    }

    /// When [`Self::plan`] next has something to retire.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let oldest = self.children.iter().map(|w| w.since + MAX_AGE).min();
        let idle = self.expected.as_ref().map(|(_, at)| *at + MAX_AGE);
        oldest.into_iter().chain(idle).min()
    }

    /// The fork server's ends of every waiting child's channel (a new child
    /// closes them all).
    pub(super) fn channels(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.children.iter().map(|w| w.channel.as_raw_fd())
    }

    /// Empty the pool (the fork server is going away); returns the pids.
    pub(super) fn drain(&mut self) -> Vec<Pid> {
        self.children.drain(..).map(|w| w.pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(module: &str) -> WarmKey {
        WarmKey {
            module: ModuleRef {
                path: format!("/r/{module}.wasm").into(),
                digest: module.repeat(64).chars().take(64).collect(),
                label: module.into(),
            },
            tenant: "acme".into(),
            policy: SandboxPolicy::default(),
        }
    }

    fn warm(pid: i32, key: &WarmKey, since: Instant) -> Warm {
        let (channel, _) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        Warm {
            pid: Pid::from_raw(pid),
            key: key.clone(),
            channel,
            since,
        }
    }

    fn pids(v: &[i32]) -> Vec<Pid> {
        v.iter().map(|p| Pid::from_raw(*p)).collect()
    }

    #[test]
    fn nothing_is_forked_before_the_first_spawn_or_when_turned_off() {
        let now = Instant::now();
        let mut pool = WarmPool::new(2);
        assert_eq!(
            pool.plan(0, now),
            Plan {
                retire: vec![],
                fork: 0
            }
        );
        let mut off = WarmPool::new(0);
        off.expect(&key("a"), now);
        assert_eq!(off.plan(0, now).fork, 0);
    }

    #[test]
    fn one_child_per_free_slot_for_the_expected_key() {
        let now = Instant::now();
        let mut pool = WarmPool::new(4);
        pool.expect(&key("a"), now);
        assert_eq!(pool.plan(0, now).fork, 4, "at most capacity");
        assert_eq!(pool.plan(3, now).fork, 2);
        assert_eq!(
            pool.plan(4, now).fork,
            1,
            "one ready for the next free slot"
        );
        assert_eq!(
            pool.plan(9, now).fork,
            1,
            "on-exit calls can exceed the slots"
        );
        pool.add(warm(10, &key("a"), now));
        assert_eq!(pool.plan(2, now).fork, 2, "one already waits");
        assert_eq!(pool.plan(3, now).fork, 1);
        assert_eq!(pool.plan(4, now).fork, 0);
    }

    #[test]
    fn a_spawn_takes_a_matching_child_only() {
        let now = Instant::now();
        let mut pool = WarmPool::new(2);
        pool.add(warm(10, &key("a"), now));
        pool.add(warm(11, &key("a"), now));
        assert!(pool.take(&key("b")).is_none());
        let mut other_tenant = key("a");
        other_tenant.tenant = "globex".into();
        assert!(pool.take(&other_tenant).is_none());
        let mut other_policy = key("a");
        other_policy.policy.max_memory += 1;
        assert!(pool.take(&other_policy).is_none());
        assert_eq!(pool.take(&key("a")).map(|w| w.pid), Some(Pid::from_raw(10)));
        assert_eq!(pool.take(&key("a")).map(|w| w.pid), Some(Pid::from_raw(11)));
        assert!(pool.take(&key("a")).is_none());
    }

    #[test]
    fn other_keys_make_room_oldest_first() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut pool = WarmPool::new(2);
        pool.add(warm(10, &key("a"), t0));
        pool.add(warm(11, &key("c"), t1));
        pool.expect(&key("b"), t1);
        let plan = pool.plan(2, t1);
        assert_eq!(
            plan,
            Plan {
                retire: pids(&[10]),
                fork: 1
            }
        );
        assert_eq!(
            pool.channels().count(),
            1,
            "the retired child left the pool"
        );
        pool.add(warm(12, &key("b"), t1));
        assert_eq!(
            pool.plan(1, t1),
            Plan {
                retire: pids(&[11]),
                fork: 1
            }
        );
    }

    #[test]
    fn old_children_are_retired_and_an_idle_worker_keeps_none() {
        let t0 = Instant::now();
        let t5 = t0 + Duration::from_secs(5);
        let mut pool = WarmPool::new(2);
        pool.expect(&key("a"), t0);
        pool.add(warm(10, &key("a"), t0));
        // Another spawn at 5 s keeps the key expected until 15 s.
        pool.expect(&key("a"), t5);
        pool.add(warm(11, &key("a"), t5));
        assert_eq!(pool.next_deadline(), Some(t0 + MAX_AGE));
        let t10 = t0 + MAX_AGE;
        assert_eq!(
            pool.plan(2, t10),
            Plan {
                retire: pids(&[10]),
                fork: 0
            },
            "the old one goes; one waits for the next free slot"
        );
        assert_eq!(pool.plan(1, t10).fork, 1, "a slot freed: replace it");
        pool.add(warm(12, &key("a"), t10));
        // No spawn since 5 s: at 15 s the pool keeps none, not even the
        // child forked at 10 s.
        assert_eq!(pool.next_deadline(), Some(t5 + MAX_AGE));
        assert_eq!(
            pool.plan(0, t5 + MAX_AGE),
            Plan {
                retire: pids(&[11, 12]),
                fork: 0
            }
        );
        assert_eq!(pool.channels().count(), 0);
        assert_eq!(
            pool.next_deadline(),
            None,
            "an idle pool has nothing to wake up for"
        );
        pool.expect(&key("a"), t5 + MAX_AGE);
        assert_eq!(
            pool.plan(0, t5 + MAX_AGE).fork,
            2,
            "a spawn starts it again"
        );
    }

    #[test]
    fn an_idle_pool_wakes_once_at_its_idle_mark_then_sleeps() {
        let t0 = Instant::now();
        let mut pool = WarmPool::new(2);
        pool.expect(&key("a"), t0);
        assert_eq!(pool.next_deadline(), Some(t0 + MAX_AGE), "the idle mark");
        assert_eq!(pool.plan(2, t0 + MAX_AGE).fork, 0);
        // A deadline left in the past would make the fork server's loop
        // poll with a 1 ms timeout for as long as the worker stays idle.
        assert_eq!(pool.next_deadline(), None);
        pool.expect(&key("a"), t0 + MAX_AGE);
        assert_eq!(pool.next_deadline(), Some(t0 + MAX_AGE * 2));
    }

    #[test]
    fn a_child_that_dies_waiting_pauses_its_key() {
        let t0 = Instant::now();
        let mut pool = WarmPool::new(2);
        pool.expect(&key("a"), t0);
        pool.add(warm(10, &key("a"), t0));
        assert!(!pool.reaped(Pid::from_raw(99), t0), "not a warm child");
        assert!(pool.reaped(Pid::from_raw(10), t0));
        assert_eq!(pool.plan(0, t0).fork, 0);
        pool.expect(&key("b"), t0);
        assert_eq!(pool.plan(0, t0).fork, 2, "other keys go on");
        let later = t0 + MAX_AGE;
        pool.expect(&key("a"), later);
        assert_eq!(pool.plan(0, later).fork, 2, "after a pause, try again");
    }

    #[test]
    fn drain_empties_the_pool() {
        let now = Instant::now();
        let mut pool = WarmPool::new(2);
        pool.add(warm(10, &key("a"), now));
        assert_eq!(pool.drain(), pids(&[10]));
        assert_eq!(pool.channels().count(), 0);
    }
}
