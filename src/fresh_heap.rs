//! A heap of its own for a template process and its copies, apart from the
//! C library's: started by a template once it has let go of the modules it
//! does not run ([`start`]); every allocation of the binary's allocator
//! ([`crate::wipe::WipingAllocator`]) then comes from it, in the template
//! and in every copy it makes. No other process starts one (the fork
//! server, the parent and the CLI allocate from the C library only).
//!
//! # Why
//! The fork server loads every module into its own heap. A Python or
//! JavaScript component leaves about 14 MB of metadata there. A template
//! for another module lets go of it and returns its pages to the kernel
//! (`malloc_trim`), but the freed blocks stay where they were: the C
//! library's allocator then serves the template's and each copy's
//! allocations from holes spread over those 14 MB, on pages nobody has
//! touched since, and every copy page-faults each of them in (measured
//! with a trivial job beside both examples: 86-90 faults per call against
//! 55-60 alone). A heap started after the shedding is compact: what the
//! template allocates, and then each copy, lands on a few pages together
//! (measured: 48-50 faults per call beside both examples or alone, a
//! median 4% less CPU per call alone and 9% beside, in alternated pairs;
//! a copy writes 56 KiB of heap pages where it wrote 216).
//!
//! The C library's allocator cannot be told to do this without a thread
//! (only a thread gets a second arena), and a thread in the fork server
//! costs every call: glibc stays in its multi-threaded mode for good, in
//! every process forked after it (measured: 5-13% more CPU per Python
//! call).
//!
//! # How
//! [`dlmalloc`] (a Rust port of Doug Lea's allocator, the one Rust's
//! standard library uses on WebAssembly) over one range of address space
//! reserved at [`start`] ([`RESERVED`] bytes, no access, no memory behind
//! it). The heap grows by handing dlmalloc the next part of the range,
//! made readable and writable; what it gives back is returned to the
//! kernel (`MADV_DONTNEED`) and made inaccessible again. A block is this
//! heap's exactly when its address is in the range ([`owns`]), so blocks
//! allocated before the start (the fork server's) are still freed to the
//! C library. When the range is used up, allocations fall back to the C
//! library: a slower heap, never a failure.
//!
//! A lock guards the heap: a copy's runtime may start threads. It is
//! never held across a fork (the template is single-threaded).

use dlmalloc::{Allocator, Dlmalloc};
use std::alloc::Layout;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Address space reserved for the heap: far more than the host side of a
/// call allocates (past it, the C library's heap serves). Only the part
/// made writable counts as data (`RLIMIT_DATA`).
const RESERVED: usize = 1 << 30;

const PAGE: usize = 4096;

/// Room left for the C library's heap to grow below the fresh heap.
const BRK_ROOM: usize = 256 << 10;

/// Where the reserved range starts; 0 until [`start`].
static START: AtomicUsize = AtomicUsize::new(0);

static HEAP: Mutex<Option<Dlmalloc<Range>>> = Mutex::new(None);

/// The part of the reserved range dlmalloc has not been given, `[next, end)`.
struct Range {
    next: Cell<usize>,
    end: usize,
}

impl Range {
    /// Make `[from, to)` inaccessible and return its pages to the kernel;
    /// the range's end goes back to the bump pointer for reuse. False,
    /// with the memory untouched, when it cannot be made inaccessible
    /// (dlmalloc then keeps it, bytes and all).
    fn release(&self, from: usize, to: usize) -> bool {
        if from >= to {
            return true;
        }
        let (start, len) = (from as *mut libc::c_void, to - from);
        // SAFETY: `[from, to)` is page-aligned memory of the reserved
        // range that dlmalloc gives back: nothing refers to it any more.
        if unsafe { libc::mprotect(start, len, libc::PROT_NONE) } != 0 {
            return false;
        }
        // SAFETY: as above. Should this fail, the pages stay resident
        // until reused, but inaccessible.
        unsafe { libc::madvise(start, len, libc::MADV_DONTNEED) };
        if to == self.next.get() {
            self.next.set(from);
        }
        true
    }
}

// SAFETY: the memory handed out is fresh (zero) pages of the reserved
// range, never handed out twice while in use; released memory is exactly
// what dlmalloc gives back.
unsafe impl Allocator for Range {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let from = self.next.get();
        let size = size.next_multiple_of(PAGE);
        let Some(to) = from.checked_add(size).filter(|to| *to <= self.end) else {
            return (std::ptr::null_mut(), 0, 0);
        };
        // SAFETY: `[from, to)` is page-aligned, in the reserved range, and
        // handed to no one yet.
        let rc = unsafe {
            libc::mprotect(
                from as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            // Over `RLIMIT_DATA`, or out of memory: the caller falls back.
            return (std::ptr::null_mut(), 0, 0);
        }
        self.next.set(to);
        (from as *mut u8, size, 0)
    }

    fn remap(&self, _: *mut u8, _: usize, _: usize, _: bool) -> *mut u8 {
        std::ptr::null_mut()
    }

    fn free_part(&self, ptr: *mut u8, oldsize: usize, newsize: usize) -> bool {
        let base = ptr as usize;
        self.release(base + newsize, base + oldsize)
    }

    fn free(&self, ptr: *mut u8, size: usize) -> bool {
        let base = ptr as usize;
        self.release(base, base + size)
    }

    fn can_release_part(&self, _: u32) -> bool {
        true
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// Errors starting the heap (the process then allocates as before).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FreshHeapError {
    #[error("cannot reserve address space for a fresh heap: {0}")]
    Reserve(std::io::Error),
}

/// From now on, in this process and those it forks, allocate from a fresh
/// heap. Call only on a single-threaded process; a second call does
/// nothing.
pub(crate) fn start() -> Result<(), FreshHeapError> {
    if START.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    // Just above the C library's heap if that space is free, so the two
    // share their page tables (a fork copies, and an exit frees, fewer),
    // leaving the C library room to grow its heap for what C code still
    // allocates (else it maps a megabyte elsewhere, with tables of its own).
    // SAFETY: `sbrk(0)` only reads the current program break.
    let brk = unsafe { libc::sbrk(0) } as usize;
    let base = [Some((brk + BRK_ROOM).next_multiple_of(PAGE)), None]
        .into_iter()
        .find_map(reserve)
        .ok_or_else(|| FreshHeapError::Reserve(std::io::Error::last_os_error()))?;
    *lock() = Some(Dlmalloc::new_with_allocator(Range {
        next: Cell::new(base),
        end: base + RESERVED,
    }));
    START.store(base, Ordering::Release);
    Ok(())
}

/// Reserve [`RESERVED`] bytes of address space, with no access: at `at`
/// exactly (if nothing is mapped there), or anywhere.
fn reserve(at: Option<usize>) -> Option<usize> {
    let fixed = at.map_or(0, |_| libc::MAP_FIXED_NOREPLACE);
    // SAFETY: a new private mapping with no access, which replaces nothing.
    let base = unsafe {
        libc::mmap(
            at.unwrap_or(0) as *mut libc::c_void,
            RESERVED,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
            -1,
            0,
        )
    };
    (base != libc::MAP_FAILED).then_some(base as usize)
}

/// Whether this process allocates from a fresh heap.
pub(crate) fn active() -> bool {
    START.load(Ordering::Acquire) != 0
}

/// Whether `ptr` is a block of this process's fresh heap.
pub(crate) fn owns(ptr: *mut u8) -> bool {
    let start = START.load(Ordering::Relaxed);
    start != 0 && (ptr as usize).wrapping_sub(start) < RESERVED
}

fn lock() -> MutexGuard<'static, Option<Dlmalloc<Range>>> {
    HEAP.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A block for `layout`, or null when the heap is not started or its range
/// is used up.
///
/// # Safety
/// As `GlobalAlloc::alloc` (`layout` has a non-zero size).
pub(crate) unsafe fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    match lock().as_mut() {
        // SAFETY: as the caller vouches.
        Some(heap) if zeroed => unsafe { heap.calloc(layout.size(), layout.align()) },
        // SAFETY: as the caller vouches.
        Some(heap) => unsafe { heap.malloc(layout.size(), layout.align()) },
        None => std::ptr::null_mut(),
    }
}

/// Free a block of this heap ([`owns`]).
///
/// # Safety
/// As `GlobalAlloc::dealloc`, for a block of this heap.
pub(crate) unsafe fn free(ptr: *mut u8, layout: Layout) {
    if let Some(heap) = lock().as_mut() {
        // SAFETY: as the caller vouches.
        unsafe { heap.free(ptr, layout.size(), layout.align()) }
    }
}

/// Resize a block of this heap ([`owns`]) in the heap; null (the block
/// unchanged) when the heap has no room.
///
/// # Safety
/// As `GlobalAlloc::realloc`, for a block of this heap.
pub(crate) unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    match lock().as_mut() {
        // SAFETY: as the caller vouches.
        Some(heap) => unsafe { heap.realloc(ptr, layout.size(), layout.align(), new_size) },
        None => std::ptr::null_mut(),
    }
}

#[cfg(test)]
mod tests;
