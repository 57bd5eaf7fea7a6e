//! The components the fork server has loaded, kept within a memory budget
//! (in the fork server process). This module only keeps and decides; the
//! fork server loads, and logs what was let go.
//!
//! Each push of a module is a new digest, and a sender may name any module
//! its tenant may run, so without a bound a worker that has served many
//! modules, or many versions of one, would hold every one of them for its
//! life: their code, and the metadata loading them allocated. The fork
//! server's memory is shared by every tenant on the worker, and each child
//! forked on demand copies the page tables of all of it.
//!
//! The rules:
//! - Each module is charged what loading it cost: its compiled code (the
//!   component's image) plus what the fork server's heap grew by while it
//!   loaded ([`heap_in_use`]).
//! - Past the budget, the least recently used modules are let go, oldest
//!   first, until the rest fit. The module just loaded and a `pinned` one
//!   (the template's) are never let go, so one module bigger than the whole
//!   budget still runs.
//! - A module let go is loaded again from the verified artifact cache when
//!   a call needs it (a quick load next to a compile: 0.4 ms for a trivial
//!   job, 270 ms for the 19 MB Python example).
//!
//! Processes already running a module (children, a template) hold their
//! own copy of the fork server's memory and are not affected.

use std::collections::HashMap;
use std::rc::Rc;

/// Loaded values by digest, least recently used let go past a byte budget.
pub(super) struct Loaded<T> {
    budget: u64,
    /// Sum of the entries' charges.
    used: u64,
    /// Ticks on every use; an entry's `last_used` orders them.
    clock: u64,
    entries: HashMap<String, Entry<T>>,
}

struct Entry<T> {
    value: Rc<T>,
    label: String,
    bytes: u64,
    last_used: u64,
}

/// A module let go to stay within the budget.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LetGo {
    pub(super) label: String,
    pub(super) digest: String,
    pub(super) bytes: u64,
    /// How many stayed loaded right after it went, and their charges.
    pub(super) left: (usize, u64),
}

impl<T> Loaded<T> {
    pub(super) fn new(budget: u64) -> Self {
        Loaded {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The value loaded for `digest`, marked as used now.
    pub(super) fn get(&mut self, digest: &str) -> Option<Rc<T>> {
        self.clock += 1;
        let entry = self.entries.get_mut(digest)?;
        entry.last_used = self.clock;
        Some(Rc::clone(&entry.value))
    }

    /// Keep `value`, charged `bytes`, as used now; let go of the least
    /// recently used others (never `pinned`) until all fit the budget.
    /// Returns what was let go, oldest first.
    pub(super) fn insert(
        &mut self,
        digest: String,
        label: String,
        value: Rc<T>,
        bytes: u64,
        pinned: Option<&str>,
    ) -> Vec<LetGo> {
        self.clock += 1;
        let entry = Entry {
            value,
            label,
            bytes,
            last_used: self.clock,
        };
        if let Some(old) = self.entries.insert(digest.clone(), entry) {
            self.used -= old.bytes;
        }
        self.used += bytes;
        let mut let_go = Vec::new();
        while self.used > self.budget {
            let oldest = self
                .entries
                .iter()
                .filter(|(d, _)| **d != digest && Some(d.as_str()) != pinned)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| d.clone());
            let Some(oldest) = oldest else { break };
            let Some(e) = self.entries.remove(&oldest) else {
                break;
            };
            self.used -= e.bytes;
            let_go.push(LetGo {
                label: e.label,
                digest: oldest,
                bytes: e.bytes,
                left: self.usage(),
            });
        }
        let_go
    }

    /// Let go of everything (a template keeps only its own job).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }

    /// How many are loaded, and the sum of their charges.
    pub(super) fn usage(&self) -> (usize, u64) {
        (self.entries.len(), self.used)
    }
}

/// Bytes the allocator has handed out and not had back: glibc's
/// `mallinfo2`, in-use arena chunks plus chunks mapped on their own.
pub(super) fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 takes no pointer and only reads the allocator's
    // statistics, under the allocator's own locks.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(l: &mut Loaded<()>, digest: &str, bytes: u64, pinned: Option<&str>) -> Vec<String> {
        l.insert(
            digest.into(),
            format!("m@{digest}"),
            Rc::new(()),
            bytes,
            pinned,
        )
        .into_iter()
        .map(|g| g.digest)
        .collect()
    }

    #[test]
    fn each_module_let_go_says_what_stayed_after_it() {
        let mut l = Loaded::new(100);
        for d in ["a", "b", "c"] {
            load(&mut l, d, 30, None);
        }
        let gone = l.insert("big".into(), "big".into(), Rc::new(()), 80, None);
        let left: Vec<_> = gone.iter().map(|g| (g.digest.as_str(), g.left)).collect();
        assert_eq!(left, [("a", (3, 140)), ("b", (2, 110)), ("c", (1, 80))]);
    }

    #[test]
    fn within_the_budget_nothing_is_let_go() {
        let mut l = Loaded::new(100);
        assert!(load(&mut l, "a", 40, None).is_empty());
        assert!(load(&mut l, "b", 60, None).is_empty());
        assert_eq!(l.usage(), (2, 100));
        assert!(l.get("a").is_some() && l.get("b").is_some());
    }

    #[test]
    fn past_the_budget_the_least_recently_used_go_first() {
        let mut l = Loaded::new(100);
        load(&mut l, "a", 30, None);
        load(&mut l, "b", 30, None);
        load(&mut l, "c", 30, None);
        // `a` was loaded first but used since: `b` is now the oldest.
        assert!(l.get("a").is_some());
        assert_eq!(load(&mut l, "d", 30, None), ["b"]);
        assert_eq!(load(&mut l, "e", 60, None), ["c", "a"]);
        assert_eq!(l.usage(), (2, 90));
        assert!(l.get("b").is_none() && l.get("d").is_some());
    }

    #[test]
    fn the_module_just_loaded_stays_even_alone_over_the_budget() {
        let mut l = Loaded::new(100);
        load(&mut l, "a", 50, None);
        assert_eq!(load(&mut l, "big", 500, None), ["a"]);
        assert_eq!(l.usage(), (1, 500));
        assert!(l.get("big").is_some());
        // The next one pushes it out in turn.
        assert_eq!(load(&mut l, "b", 10, None), ["big"]);
    }

    #[test]
    fn the_pinned_module_is_never_let_go() {
        let mut l = Loaded::new(100);
        load(&mut l, "template", 60, None);
        load(&mut l, "b", 30, None);
        assert_eq!(load(&mut l, "c", 30, Some("template")), ["b"]);
        assert_eq!(load(&mut l, "d", 30, Some("template")), ["c"]);
        assert_eq!(l.usage(), (2, 90));
        assert!(l.get("template").is_some());
    }

    #[test]
    fn loading_a_digest_again_replaces_its_charge() {
        let mut l = Loaded::new(100);
        load(&mut l, "a", 60, None);
        assert!(load(&mut l, "a", 70, None).is_empty());
        assert_eq!(l.usage(), (1, 70));
        l.clear();
        assert_eq!(l.usage(), (0, 0));
        assert!(l.get("a").is_none());
    }

    #[test]
    fn the_heap_in_use_grows_with_an_allocation() {
        // Big enough that other tests' allocations meanwhile cannot hide it.
        let before = heap_in_use();
        let held = std::hint::black_box(vec![0u8; 256 << 20]);
        assert!(heap_in_use() >= before + (128 << 20), "{before}");
        drop(held);
    }
}
