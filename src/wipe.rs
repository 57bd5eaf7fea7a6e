//! The `wasm-jobs` binary's global allocator: the system's (or, in a
//! template process and its copies, their own heap: [`crate::fresh_heap`]),
//! which also wipes each block as it is freed while [`wipe_freed_memory`]
//! says so.
//! The fork server turns it on first thing; a process it forks (child,
//! template, compile helper) turns it off once it has let go of the calls
//! it was not forked for, as nothing it frees after that is another call's.
//! The CLI and the worker parent never wipe.
//!
//! Why: every child is a copy of the fork server's memory, and the fork
//! server's heap is where the calls of every tenant pass through (the
//! parent's commands as read, the handovers written to warm children, the
//! results and reports of finished calls). glibc's `free` leaves a block's
//! bytes in place until the block is reused, so without the wipe a child
//! inherited recent message bodies and results of other tenants' calls.
//! Reading them would take a guest that escaped wasmtime's sandbox, so this
//! is defence in depth. Data still in use at a fork (calls queued in the
//! fork server) is let go by the forked process itself
//! (`shed_other_calls` in the fork server), through this same wipe.
//!
//! The wipe is `explicit_bzero` (glibc), which the compiler may not drop as
//! a dead store before `free`. A reallocation that moves a block wipes the
//! old one too (so it is always a move while wiping is on).

use crate::fresh_heap;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

static WIPE: AtomicBool = AtomicBool::new(false);

/// From now on, in this process (and the processes it forks), wipe every
/// block as it is freed, or stop wiping.
pub(crate) fn wipe_freed_memory(on: bool) {
    WIPE.store(on, Ordering::Relaxed);
}

/// The system allocator, wiping freed blocks while [`wipe_freed_memory`]
/// says so (the `wasm-jobs` binary's `#[global_allocator]`).
#[derive(Debug, Default)]
pub struct WipingAllocator;

/// Zero `len` bytes at `ptr` in a way the compiler keeps.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: as the caller vouches.
    unsafe { libc::explicit_bzero(ptr.cast(), len) };
}

/// A block from the fresh heap once it is started (and has room), else
/// from the system's allocator; zeroed if asked.
///
/// # Safety
/// As `GlobalAlloc::alloc`.
unsafe fn allocate(layout: Layout, zeroed: bool) -> *mut u8 {
    if fresh_heap::active() {
        // SAFETY: as the caller vouches.
        let p = unsafe { fresh_heap::alloc(layout, zeroed) };
        if !p.is_null() {
            return p;
        }
    }
    if zeroed {
        // SAFETY: as the caller vouches.
        unsafe { System.alloc_zeroed(layout) }
    } else {
        // SAFETY: as the caller vouches.
        unsafe { System.alloc(layout) }
    }
}

/// Where a block is freed: the fresh heap's blocks to it, others to the
/// system's allocator.
///
/// # Safety
/// As `GlobalAlloc::dealloc`.
unsafe fn free(ptr: *mut u8, layout: Layout) {
    if fresh_heap::owns(ptr) {
        // SAFETY: a live block of the fresh heap (the caller vouches).
        unsafe { fresh_heap::free(ptr, layout) }
    } else {
        // SAFETY: a live block of the system's allocator (the caller vouches).
        unsafe { System.dealloc(ptr, layout) }
    }
}

// SAFETY: every block comes from the fresh heap or `System` and goes back
// to the one it came from ([`fresh_heap::owns`]), with the layout it was
// allocated with; wiping writes only inside a block that is being freed.
unsafe impl GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller of `alloc` vouches.
        unsafe { allocate(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller of `alloc_zeroed` vouches.
        unsafe { allocate(layout, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WIPE.load(Ordering::Relaxed) {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes (the
            // caller of `dealloc` vouches), freed just below.
            unsafe { wipe(ptr, layout.size()) };
        }
        // SAFETY: as the caller of `dealloc` vouches.
        unsafe { free(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // In place when not wiping, and the block's heap is the one that
        // allocates now (a block of the C library's heap moves to the fresh
        // one once it is started).
        if !WIPE.load(Ordering::Relaxed) {
            if fresh_heap::owns(ptr) {
                // SAFETY: as the caller of `realloc` vouches.
                let p = unsafe { fresh_heap::realloc(ptr, layout, new_size) };
                if !p.is_null() {
                    return p;
                }
            } else if !fresh_heap::active() {
                // SAFETY: as the caller of `realloc` vouches.
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
        }
        // SAFETY: the caller of `realloc` vouches that `new_size`, rounded
        // up to `layout.align()`, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (the caller vouches).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct, each at least
            // `min(old, new)` bytes long; the old one is then freed (wiped
            // if wiping) with the layout it was allocated with.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_block_is_wiped_and_a_moved_one_keeps_its_bytes() {
        let a = WipingAllocator;
        let layout = Layout::from_size_align(4096, 8).expect("a valid layout");
        WIPE.store(true, Ordering::Relaxed);
        // SAFETY: blocks from `a`, used within their sizes, freed once.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xAB, 4096);
            let q = a.realloc(p, layout, 8192);
            assert!(!q.is_null() && q != p);
            assert!((0..4096).all(|i| *q.add(i) == 0xAB));
            a.dealloc(q, Layout::from_size_align(8192, 8).expect("a valid layout"));
        }
    }

    #[test]
    fn once_a_fresh_heap_is_started_blocks_come_from_it_and_go_back_where_they_came_from() {
        let a = WipingAllocator;
        let small = Layout::from_size_align(64, 8).expect("a valid layout");
        let large = Layout::from_size_align(128, 8).expect("a valid layout");
        // SAFETY: blocks from `a` or `System`, used within their sizes,
        // each freed once with its layout.
        unsafe {
            let before = System.alloc(small);
            assert!(!before.is_null());
            std::ptr::write_bytes(before, 0x5A, 64);
            fresh_heap::start().expect("a fresh heap");
            let p = a.alloc(small);
            assert!(fresh_heap::owns(p));
            assert!(!fresh_heap::owns(before));
            let moved = a.realloc(before, small, 128);
            assert!(fresh_heap::owns(moved), "a block from before moves over");
            assert!((0..64).all(|i| *moved.add(i) == 0x5A));
            a.dealloc(moved, large);
            a.dealloc(p, small);
            let system = System.alloc(small);
            a.dealloc(system, small);
        }
    }

    #[test]
    fn wipe_zeroes_every_byte_it_is_given() {
        let mut bytes = vec![0xCDu8; 1000];
        // SAFETY: the vector's own 1000 bytes.
        unsafe { wipe(bytes[100..900].as_mut_ptr(), 800) };
        assert!(bytes[..100].iter().all(|b| *b == 0xCD));
        assert!(bytes[100..900].iter().all(|b| *b == 0));
        assert!(bytes[900..].iter().all(|b| *b == 0xCD));
    }
}
