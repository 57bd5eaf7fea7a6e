//! Unit tests of the fresh heap: the reserved range handed out and given
//! back page by page, and blocks of the started heap (run in the test
//! process, whose own allocator stays the system's).

use super::*;

/// A `Range` over a reservation of its own (not the process's heap).
fn range() -> Range {
    let base = reserve(None).expect("address space to reserve");
    Range {
        next: Cell::new(base),
        end: base + RESERVED,
    }
}

#[test]
fn a_range_hands_out_fresh_writable_pages_and_takes_its_end_back() {
    let r = range();
    let base = r.next.get();
    let (a, size, flags) = r.alloc(10_000);
    assert_eq!((a as usize, size, flags), (base, 3 * PAGE, 0));
    // SAFETY: the range just handed out these `size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(a, size) };
    assert!(bytes.iter().all(|b| *b == 0), "fresh pages are zero");
    bytes.fill(0xAB);
    let (b, _, _) = r.alloc(PAGE);
    assert_eq!(b as usize, base + 3 * PAGE, "the next part follows");
    // Giving back the last part lowers the bump pointer; a part in the
    // middle is released but its addresses are not handed out again.
    assert!(r.free(b, PAGE));
    assert_eq!(r.next.get(), base + 3 * PAGE);
    assert!(r.free_part(a, 3 * PAGE, PAGE));
    assert_eq!(r.next.get(), base + PAGE);
    let (c, _, _) = r.alloc(PAGE);
    assert_eq!(c as usize, base + PAGE);
    // SAFETY: handed out again just above: zero, as dlmalloc is told.
    assert_eq!(unsafe { *c }, 0, "released pages come back zero");
    assert!(r.free(a, 2 * PAGE));
}

#[test]
fn a_range_used_up_hands_out_nothing() {
    let r = range();
    let (p, size, _) = r.alloc(RESERVED + PAGE);
    assert!(p.is_null() && size == 0);
    let (whole, size, _) = r.alloc(RESERVED);
    assert!(!whole.is_null() && size == RESERVED);
    assert!(r.alloc(PAGE).0.is_null());
    assert!(r.free(whole, RESERVED));
}

#[test]
fn once_started_the_heap_owns_its_blocks_and_keeps_their_bytes() {
    let before = Box::new(7u64);
    start().expect("a fresh heap");
    start().expect("a second start does nothing");
    assert!(active());
    assert!(!owns(std::ptr::from_ref(&*before).cast_mut().cast()));
    let mut blocks = Vec::new();
    for (i, (size, align)) in [(1, 1), (24, 8), (4096, 4096), (100_000, 16), (3 << 20, 64)]
        .into_iter()
        .enumerate()
    {
        let layout = Layout::from_size_align(size, align).expect("a valid layout");
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(layout, i % 2 == 0) };
        assert!(!p.is_null() && owns(p), "{size} bytes");
        assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
        if i % 2 == 0 {
            // SAFETY: a zeroed block of `size` bytes.
            assert!(
                unsafe { std::slice::from_raw_parts(p, size) }
                    .iter()
                    .all(|b| *b == 0)
            );
        }
        // SAFETY: the block's own bytes.
        unsafe { std::ptr::write_bytes(p, i as u8 + 1, size) };
        blocks.push((p, layout));
    }
    let (p, layout) = blocks.remove(1);
    // SAFETY: a live block of this heap, grown once.
    let grown = unsafe { realloc(p, layout, 50_000) };
    assert!(owns(grown));
    // SAFETY: the first 24 bytes were copied over.
    assert!(
        unsafe { std::slice::from_raw_parts(grown, 24) }
            .iter()
            .all(|b| *b == 2)
    );
    blocks.push((
        grown,
        Layout::from_size_align(50_000, 8).expect("a valid layout"),
    ));
    for (p, layout) in blocks {
        // SAFETY: each block freed once, with its layout.
        unsafe { free(p, layout) };
    }
    assert!(!owns(std::ptr::null_mut()));
}
