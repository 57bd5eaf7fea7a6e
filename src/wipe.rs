//! The `wasm-jobs` binary's global allocator: the system's, which also
//! wipes each block as it is freed while [`wipe_freed_memory`] says so.
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

// SAFETY: every block comes from `System` with the layout it is given back
// with; wiping writes only inside a block that is being freed.
unsafe impl GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller of `alloc` vouches.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller of `alloc_zeroed` vouches.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WIPE.load(Ordering::Relaxed) {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes (the
            // caller of `dealloc` vouches), freed just below.
            unsafe { wipe(ptr, layout.size()) };
        }
        // SAFETY: as the caller of `dealloc` vouches.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !WIPE.load(Ordering::Relaxed) {
            // SAFETY: as the caller of `realloc` vouches.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller of `realloc` vouches that `new_size`, rounded
        // up to `layout.align()`, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (the caller vouches).
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct, each at least
            // `min(old, new)` bytes long; the old one is then freed,
            // wiped, with the layout it was allocated with.
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
    fn wipe_zeroes_every_byte_it_is_given() {
        let mut bytes = vec![0xCDu8; 1000];
        // SAFETY: the vector's own 1000 bytes.
        unsafe { wipe(bytes[100..900].as_mut_ptr(), 800) };
        assert!(bytes[..100].iter().all(|b| *b == 0xCD));
        assert!(bytes[100..900].iter().all(|b| *b == 0));
        assert!(bytes[900..].iter().all(|b| *b == 0xCD));
    }
}
