//! Unit tests of the move into huge pages: which mappings are linear
//! memories with an image and which spans of the program move, read from
//! sample `/proc/self/maps` texts; and, where the kernel gives huge pages,
//! a collapse in place and a whole move of this test program (in a child).

use super::*;

/// Whether this kernel hands out anonymous huge pages on request.
fn huge_pages_on_request() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"))
}

/// `AnonHugePages` of the mapping holding `addr`, in KiB.
fn anon_huge_kib(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = (a..b).contains(&addr);
            continue;
        }
        if inside && let Some(kib) = line.strip_prefix("AnonHugePages:") {
            return kib.trim().trim_end_matches(" kB").trim().parse().unwrap();
        }
    }
    0
}

#[test]
fn image_memories_are_the_runs_between_guards_that_hold_an_image() {
    let maps = "\
7f0013000000-7f0015000000 ---p 00000000 00:00 0
7f0015000000-7f00150f0000 rw-p 00000000 00:00 0
7f00150f0000-7f0015cd0000 rw-p 00000000 00:01 41794                      /memfd:wasm-memory-image (deleted)
7f0015cd0000-7f0015ce0000 rw-p 00000000 00:00 0
7f0015ce0000-7f0117000000 ---p 00000000 00:00 0
7f0117118000-7f0117145000 rw-p 00000000 00:00 0
7f0200000000-7f0200010000 ---p 00000000 00:00 0
7f0200010000-7f0200020000 rw-p 00000000 00:01 41795                      /memfd:wasm-memory-image (deleted)
7f0200020000-7f0200030000 rw-p 00000000 00:00 0
7f0300000000-7f0300010000 ---p 00000000 00:00 0
7f0300010000-7f0300020000 rw-p 00000000 00:01 41796                      /memfd:wasm-memory-image (deleted)
7f0300020000-7f0300030000 rw-p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0300030000-7f0300040000 ---p 00000000 00:00 0
7f0400000000-7f0400010000 ---p 00000000 00:00 0
7f0400010000-7f0400020000 rw-p 00000000 00:01 41797                      /memfd:wasm-memory-image (deleted)
7f0400020000-7f0400030000 ---p 00000000 00:00 0
";
    // The first is whole; the second has no guard after it (a gap);
    // the third runs into a file that is not an image; the fourth is
    // the image alone.
    assert_eq!(
        image_memories(maps),
        vec![
            0x7f0015000000..0x7f0015ce0000,
            0x7f0400010000..0x7f0400020000
        ]
    );
}

#[test]
fn collapse_backs_anonymous_memory_with_huge_pages_and_keeps_it() {
    if !huge_pages_on_request() {
        eprintln!("skipped: this kernel gives no huge pages");
        return;
    }
    let len = 8 << 20;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `p` is `len` writable bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let range = p as usize..p as usize + len;
    // SAFETY: the range is the mapping just made.
    let collapsed = unsafe { collapse(range.clone()) }.unwrap();
    assert!(collapsed >= HUGE, "{collapsed}");
    let aligned = range.start.next_multiple_of(HUGE);
    assert!(
        anon_huge_kib(aligned) >= 2048,
        "no huge page after collapse"
    );
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // SAFETY: unmapping the mapping made above; `bytes` is not used again.
    unsafe { libc::munmap(p, len) };
}

#[test]
fn program_spans_start_at_2_mib_and_round_a_tail_up_over_free_space() {
    // As `build.rs` links the binary: read-only data, text and the
    // data made read-only after relocation each start on a 2 MiB
    // boundary with free space up to the next one; then the data.
    let aligned = "\
555500000000-555500d19000 r--p 00000000 fe:00 7  /opt/wasm-jobs
555500e00000-555502fd2000 r-xp 00e00000 fe:00 7  /opt/wasm-jobs
555503000000-555503190000 r--p 03000000 fe:00 7  /opt/wasm-jobs
555503200000-55550320e000 rw-p 03200000 fe:00 7  /opt/wasm-jobs
7f0000000000-7f0000026000 r--p 00000000 fe:00 9  /usr/lib/libc.so.6
7f0000026000-7f000017c000 r-xp 00026000 fe:00 9  /usr/lib/libc.so.6
";
    let span = |range: Range<usize>, mapped: usize, exec: bool| Span {
        range,
        mapped,
        exec,
    };
    assert_eq!(
        program_spans(aligned, 0x555501000000).unwrap(),
        vec![
            span(0x555500000000..0x555500e00000, 0xd19000, false),
            span(0x555500e00000..0x555503000000, 0x21d2000, true),
            span(0x555503000000..0x555503200000, 0x190000, false),
        ]
    );
    // Packed 4 KiB-aligned segments: only the aligned interiors, and
    // a mapping that holds no whole 2 MiB page gives none.
    let packed = "\
555500001000-5555002ff000 r--p 00001000 fe:00 7  /opt/wasm-jobs
5555002ff000-555505001000 r-xp 002ff000 fe:00 7  /opt/wasm-jobs
555505001000-555505003000 rw-p 05001000 fe:00 7  /opt/wasm-jobs
";
    assert_eq!(
        program_spans(packed, 0x555500400000).unwrap(),
        vec![span(0x555500400000..0x555505000000, 0x4c00000, true)]
    );
    // The last mapping of all rounds up too; a program not found is
    // an error.
    let last = "555500e00000-555500f00000 r-xp 00000000 fe:00 7  /opt/wasm-jobs\n";
    assert_eq!(
        program_spans(last, 0x555500e00100).unwrap(),
        vec![span(0x555500e00000..0x555501000000, 0x100000, true)]
    );
    assert!(matches!(
        program_spans(aligned, 0x1000),
        Err(HugePagesError::NoText)
    ));
}

#[test]
fn the_program_moves_into_huge_pages_and_runs_on() {
    if !huge_pages_on_request() {
        eprintln!("skipped: this kernel gives no huge pages");
        return;
    }
    // In a child: the move rewrites this process's own mappings.
    // SAFETY: the child only calls the move, reads a file and _exits;
    // glibc's fork leaves its allocator usable in the child.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let here = move_program_to_huge_pages as *const () as usize;
            let code = match move_program_to_huge_pages() {
                // The code that made the move runs on, from huge pages.
                Ok(moved) if moved >= HUGE => {
                    if anon_huge_kib(here.next_multiple_of(HUGE)) > 0 {
                        0
                    } else {
                        2
                    }
                }
                Ok(_) => 3,
                Err(_) => 4,
            };
            // SAFETY: _exit ends the child without the harness's
            // destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
}

#[test]
fn small_edges_are_the_ends_of_each_mapping_outside_whole_2_mib_pages() {
    const M: usize = HUGE;
    // A page of headers, then text to 5 MiB, then read-only data to 9 MiB
    // + 12 KiB; the text starts on a 2 MiB boundary.
    let base = 0x7f00_0000_0000 + M - 0x1000;
    let edges = small_edges(
        base..base + 9 * M / 2 + 0x3000,
        base + 0x1000..base + 5 * M / 2,
    );
    let text_start = base + 0x1000;
    assert_eq!(text_start % M, 0, "the text starts on a 2 MiB page here");
    assert_eq!(
        edges,
        vec![
            (base..text_start, false),
            (text_start + 2 * M..text_start + 5 * M / 2 - 0x1000, true),
            (text_start + 5 * M / 2 - 0x1000..text_start + 3 * M, false),
            (text_start + 4 * M..base + 9 * M / 2 + 0x3000, false),
        ]
    );
    // A mapping holding no whole 2 MiB page is an edge all of it.
    assert_eq!(
        small_edges(0x1000..0x9000, 0x2000..0x4800),
        vec![
            (0x1000..0x2000, false),
            (0x2000..0x5000, true),
            (0x5000..0x9000, false),
        ]
    );
}

#[test]
fn edges_of_a_text_outside_its_image_or_unaligned_are_refused_untouched() {
    let image = 0x7f00_0000_0000..0x7f00_0090_0000;
    for text in [
        0x1000..0x1000,
        0x7f00_0000_0000..0x7f00_00a0_0000,
        0x7f00_0000_0800..0x7f00_0010_0000,
    ] {
        // SAFETY: refused before any byte of either range is read or mapped.
        let refused = unsafe { file_back_edges(image.clone(), text) };
        assert!(
            matches!(refused, Err(HugePagesError::NotInImage(..))),
            "{refused:?}"
        );
    }
}

/// The path and permissions of the mapping holding `addr`.
fn mapping_of(addr: usize) -> (String, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let (_, perms, path) = parse_maps(&maps)
        .into_iter()
        .find(|(range, _, _)| range.contains(&addr))
        .unwrap();
    (perms.to_owned(), path.to_owned())
}

#[test]
fn edges_map_from_a_sealed_file_with_the_same_bytes_for_this_process_and_its_children() {
    let len = 9 << 20;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + 2 * HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(raw, libc::MAP_FAILED);
    // An image starting 12 KiB into a 2 MiB page, its text 8 KiB later.
    let start = (raw as usize).next_multiple_of(HUGE) + 0x3000;
    let image = start..start + len;
    let text = start + 0x2000..start + (5 << 20) + 100;
    // SAFETY: `image` lies inside the mapping made above.
    let bytes = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let text_end = text.end.next_multiple_of(4096);
    // SAFETY: protections on parts of the mapping made above, as wasmtime
    // publishes an image: all read-only, then the text executable.
    unsafe {
        assert_eq!(libc::mprotect(start as *mut _, len, libc::PROT_READ), 0);
        let exec = libc::PROT_READ | libc::PROT_EXEC;
        assert_eq!(
            libc::mprotect(text.start as *mut _, text_end - text.start, exec),
            0
        );
    }
    // SAFETY: the image is ours, read-only and written by nothing.
    let moved = unsafe { file_back_edges(image.clone(), text.clone()) }.unwrap();
    let edges = small_edges(image.clone(), text.clone());
    assert_eq!(moved, edges.iter().map(|(e, _)| e.len()).sum::<usize>());
    for (edge, exec) in &edges {
        let perms = if *exec { "r-xp" } else { "r--p" };
        for addr in [edge.start, edge.end - 1] {
            let (p, path) = mapping_of(addr);
            assert_eq!(p, perms, "{addr:x}");
            assert!(path.starts_with("/memfd:wasm-jobs-code-edges"), "{path}");
        }
    }
    // The interior stays anonymous, its protections as they were.
    assert_eq!(
        mapping_of(text.start + HUGE),
        ("r-xp".into(), String::new())
    );
    assert_eq!(
        mapping_of(start + (7 << 20)),
        ("r--p".into(), String::new())
    );
    let same = |b: &[u8]| b.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8);
    assert!(same(bytes));
    // SAFETY: the child only reads the image and _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // SAFETY: _exit ends the child without the harness's destructors.
            unsafe { libc::_exit(if same(bytes) { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    // SAFETY: unmapping the mapping made above; `bytes` is not used again.
    unsafe { libc::munmap(raw, len + 2 * HUGE) };
}
