//! Machine code and guest memory in anonymous 2 MiB pages, so forked
//! processes start with them mapped. Used by the fork server (its own text,
//! at start), by the artifact cache (a job's compiled code, when loaded)
//! and by template processes (their instance's linear memory).
//!
//! Fork copies no page-table entries for a file mapping without private
//! pages (the kernel refills them on demand), so every worker child used to
//! page-fault the code it ran back in from the page cache: the host's
//! runtime set-up, wasmtime's instantiation, confinement and reporting
//! (about two hundred faults and most of a trivial child's CPU time), and
//! the guest's own compiled code. Anonymous memory is different: fork
//! copies its entries, and for 2 MiB pages one entry maps what 512
//! small-page faults would, so the copy is cheap too.
//!
//! - [`move_program_to_huge_pages`]: at the fork server's start, before it
//!   loads anything or forks, each of its read-only mappings (text,
//!   read-only data, and the data the loader made read-only after
//!   relocating it) is copied, from its first 2 MiB boundary, into fresh
//!   anonymous memory marked for huge pages, made read-only (and
//!   executable, for text), and moved over the original with one `mremap`
//!   (the bytes are identical, so the code running that call returns into
//!   the same instructions). A mapping's last partial 2 MiB page goes too
//!   when nothing is mapped between its end and that page's end, the rest
//!   of the page being zeros: `build.rs` links each segment to start on a
//!   2 MiB boundary, so every segment is moved whole. Nothing is ever
//!   writable and executable at once. The relocated data matters most: its
//!   1.6 MB were 400 small private pages, whose entries every fork copied
//!   and every exit dropped (about 100 µs of CPU per job). The cost is the
//!   text's size in memory not shared with the page cache (children share
//!   it copy-on-write and never write it); profilers see that range as
//!   anonymous memory.
//! - [`collapse`]: a compiled component deserialized from memory already
//!   lives in anonymous memory; its aligned interior is collapsed into huge
//!   pages in place (`MADV_COLLAPSE`). [`file_back_edges`]: what is left
//!   in small pages (the ends of its text and of its read-only data, about
//!   4 MB of an 18 MB guest's) is mapped from a sealed memory file instead,
//!   so that fork copies no entries for it and a child maps only what it
//!   reads (measured at c=2 in alternated pairs, with the fork server's
//!   own CPU per call as the gauge of the machine's speed: 8% less CPU per
//!   call with the Python example, 5% with the JavaScript one).
//! - [`move_wasm_memories_to_huge_pages`]: a template process's instance
//!   has its linear memory mapped from wasmtime's memory image file, which
//!   instantiation barely touches, so each copy used to fault in every page
//!   its call read (16 at a time, from the page cache) and copy every page
//!   it wrote: most of an 18 MB Python guest's call. The template copies
//!   that memory into anonymous huge pages once; a copy starts with all of
//!   it mapped (one entry per 2 MiB), reads without faults, and a write
//!   splits one huge entry and copies one small page.
//!
//! Any failure leaves the memory as it was: this is a speed-up, never a
//! condition for serving.

use std::ops::Range;

const HUGE: usize = 2 << 20;

const PAGE: usize = 4096;

/// Errors while moving the text; the text stays as it was.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HugePagesError {
    #[error("cannot read /proc/self/maps: {0}")]
    Maps(std::io::Error),
    #[error("this code is in no executable mapping of /proc/self/maps")]
    NoText,
    #[error("{0} bytes hold no aligned 2 MiB page")]
    TooSmall(usize),
    #[error("text {0:#x?} is not a page-aligned part of image {1:#x?}")]
    NotInImage(Range<usize>, Range<usize>),
    #[error("{0} failed: {1}")]
    Call(&'static str, std::io::Error),
}

/// The mappings of a `/proc/PID/maps` text: range, permissions, path (empty
/// for anonymous memory).
fn parse_maps(maps: &str) -> Vec<(Range<usize>, &str, &str)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let path = fields.nth(3).unwrap_or("");
            let range =
                usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
            Some((range, perms, path))
        })
        .collect()
}

/// A part of this program to move into huge pages: `range` (2 MiB-aligned
/// at both ends), of which the first `mapped` bytes are the program's and
/// the rest was unmapped (it becomes zeros), and whether it is executable.
#[derive(Debug, PartialEq)]
struct Span {
    range: Range<usize>,
    mapped: usize,
    exec: bool,
}

/// The spans of the program's read-only mappings (text, read-only data,
/// and the data made read-only after relocation), in `maps`, the program
/// being the file mapped executable at `here`. Each span is a mapping's
/// 2 MiB-aligned interior, and its last partial 2 MiB page too when
/// nothing is mapped between the mapping's end and that page's end: the
/// bytes there were unmapped and nothing may use them, so zeros do as
/// well.
fn program_spans(maps: &str, here: usize) -> Result<Vec<Span>, HugePagesError> {
    let parsed = parse_maps(maps);
    let program = parsed
        .iter()
        .find(|(range, perms, _)| perms.starts_with("r-x") && range.contains(&here))
        .map(|(_, _, path)| *path)
        .filter(|path| !path.is_empty())
        .ok_or(HugePagesError::NoText)?;
    let mut spans = Vec::new();
    for (i, (range, perms, path)) in parsed.iter().enumerate() {
        if *path != program || !perms.starts_with("r-") {
            continue;
        }
        let start = range.start.next_multiple_of(HUGE);
        let rounded = range.end.next_multiple_of(HUGE);
        let free_after = parsed.get(i + 1).is_none_or(|next| next.0.start >= rounded);
        let end = if free_after {
            rounded
        } else {
            range.end / HUGE * HUGE
        };
        if start < end {
            spans.push(Span {
                mapped: range.end.min(end) - start,
                range: start..end,
                exec: perms.starts_with("r-x"),
            });
        }
    }
    Ok(spans)
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), HugePagesError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(HugePagesError::Call(what, std::io::Error::last_os_error()))
    }
}

/// Move this program's read-only mappings (text, read-only data) into
/// anonymous huge pages, each from its first 2 MiB boundary ([`Span`]);
/// returns how many bytes moved. Call while single-threaded, before any
/// fork.
pub(crate) fn move_program_to_huge_pages() -> Result<usize, HugePagesError> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(HugePagesError::Maps)?;
    let here = move_program_to_huge_pages as *const () as usize;
    let mut moved = 0;
    for span in program_spans(&maps, here)? {
        let prot = if span.exec {
            libc::PROT_READ | libc::PROT_EXEC
        } else {
            libc::PROT_READ
        };
        // SAFETY: the span's first `mapped` bytes are readable program
        // text or data that nothing writes, and the rest of it is unmapped
        // (`program_spans`); the same bytes come back, never writable and
        // executable at once.
        if let Ok(bytes) = unsafe { replace_with_huge_pages(span.range, span.mapped, prot) } {
            moved += bytes;
        }
    }
    Ok(moved)
}

/// Replace the bytes `range` with a copy of its first `mapped` bytes, and
/// zeros after them, in fresh anonymous memory marked for huge pages (at
/// the same offset within a 2 MiB page, so aligned parts get huge pages),
/// protected `prot`; returns the length.
///
/// # Safety
/// The first `mapped` bytes of `range` must be mapped and readable, the
/// rest of it unmapped, and nothing may write it while this runs (it is
/// read once and replaced).
unsafe fn replace_with_huge_pages(
    range: Range<usize>,
    mapped: usize,
    prot: libc::c_int,
) -> Result<usize, HugePagesError> {
    let (start, len) = (range.start, range.end - range.start);
    // SAFETY: a fresh private anonymous mapping that nothing else refers to;
    // the extra 2 MiB lets an aligned start be cut out of it.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(HugePagesError::Call(
            "mmap",
            std::io::Error::last_os_error(),
        ));
    }
    let raw = raw as usize;
    let copy = raw + (start % HUGE + HUGE - raw % HUGE) % HUGE;
    // SAFETY: the head and tail cut here lie inside the mapping just made
    // and outside [copy, copy + len), which is all that is used below.
    unsafe {
        if copy > raw {
            libc::munmap(raw as *mut _, copy - raw);
        }
        let tail = copy + len;
        if raw + len + HUGE > tail {
            libc::munmap(tail as *mut _, raw + len + HUGE - tail);
        }
    }
    let moved = (|| {
        // SAFETY: [copy, copy + len) is our writable mapping; `range`
        // begins with `mapped` (at most `len`) readable bytes (the
        // caller's word); they do not overlap.
        unsafe {
            check(
                "madvise(MADV_HUGEPAGE)",
                libc::madvise(copy as *mut _, len, libc::MADV_HUGEPAGE),
            )?;
            std::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, mapped.min(len));
            check("mprotect", libc::mprotect(copy as *mut _, len, prot))?;
            // One call replaces the range with identical bytes: code
            // running it, possibly inside a text range, returns into the
            // same instructions now held in the new pages.
            let to = libc::mremap(
                copy as *mut _,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                start as *mut libc::c_void,
            );
            if to == libc::MAP_FAILED {
                return Err(HugePagesError::Call(
                    "mremap",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(len)
    })();
    if moved.is_err() {
        // SAFETY: the copy was not moved over the text, so it is still our
        // own mapping and nothing refers to it.
        unsafe { libc::munmap(copy as *mut _, len) };
    }
    moved
}

/// The name of wasmtime's memory image files, as `/proc/self/maps` shows
/// their mappings.
const IMAGE_MAPPING: &str = "/memfd:wasm-memory-image";

/// A linear memory larger than this stays as it is: copying it would make
/// every template hold that much memory of its own.
const MAX_MEMORY_MOVED: usize = 64 << 20;

/// The accessible part of each linear memory mapped from a memory image: a
/// run of contiguous private read-write mappings, anonymous or of an image
/// file, that holds an image mapping and lies between two inaccessible
/// ones (the memory's reservation and guard), so it is all one memory.
fn image_memories(maps: &str) -> Vec<Range<usize>> {
    let parsed = parse_maps(maps);
    let part = |i: usize| {
        let (_, perms, path) = parsed[i];
        perms == "rw-p" && (path.is_empty() || path.starts_with(IMAGE_MAPPING))
    };
    let next_to = |a: usize, b: usize| parsed[a].0.end == parsed[b].0.start;
    let mut memories = Vec::new();
    let mut i = 0;
    while i < parsed.len() {
        if !(part(i) && parsed[i].2.starts_with(IMAGE_MAPPING)) {
            i += 1;
            continue;
        }
        let (mut first, mut last) = (i, i);
        while first > 0 && part(first - 1) && next_to(first - 1, first) {
            first -= 1;
        }
        while last + 1 < parsed.len() && part(last + 1) && next_to(last, last + 1) {
            last += 1;
        }
        let guard = |j: usize| parsed[j].1 == "---p";
        if first > 0
            && last + 1 < parsed.len()
            && guard(first - 1)
            && next_to(first - 1, first)
            && guard(last + 1)
            && next_to(last, last + 1)
        {
            memories.push(parsed[first].0.start..parsed[last].0.end);
        }
        i = last + 1;
    }
    memories
}

/// Copy each linear memory of this process that is mapped from a memory
/// image (and is at most [`MAX_MEMORY_MOVED`]) into anonymous huge pages,
/// as the module doc says; returns how many bytes moved.
///
/// `maps` is this process's `/proc/self/maps`, opened before confinement
/// took the path away (it is read afresh from its start).
///
/// # Safety
/// No other thread may run, and nothing may use the memories while this
/// runs (a template process between instantiation and its first copy).
/// The bytes stay the same and so does the protection, so every pointer
/// into them stays valid.
pub(crate) unsafe fn move_wasm_memories_to_huge_pages(
    maps: &mut std::fs::File,
) -> Result<usize, HugePagesError> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    maps.rewind()
        .and_then(|_| maps.read_to_string(&mut text))
        .map_err(HugePagesError::Maps)?;
    let maps = text;
    let mut moved = 0;
    for memory in image_memories(&maps) {
        if memory.end - memory.start > MAX_MEMORY_MOVED {
            continue;
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: `memory` is mapped read-write (the maps just read) and,
        // by the caller's word, nothing uses it meanwhile.
        moved += unsafe { replace_with_huge_pages(memory.clone(), memory.len(), prot) }?;
    }
    Ok(moved)
}

/// `MADV_COLLAPSE` (Linux 6.1), which the libc crate does not name yet.
const MADV_COLLAPSE: libc::c_int = 25;

/// Back the 2 MiB-aligned interior of `range`, anonymous memory this
/// process mapped, with huge pages now; returns how many bytes are.
///
/// # Safety
/// `range` must lie inside one anonymous private mapping of this process
/// (`MADV_COLLAPSE` keeps contents and protection, so any such mapping
/// stays as valid as it was).
pub(crate) unsafe fn collapse(range: Range<usize>) -> Result<usize, HugePagesError> {
    let start = range.start.next_multiple_of(HUGE);
    let end = range.end / HUGE * HUGE;
    if end <= start {
        return Err(HugePagesError::TooSmall(range.end - range.start));
    }
    // SAFETY: advice on memory the caller vouches for; neither call
    // changes its contents.
    unsafe {
        check(
            "madvise(MADV_HUGEPAGE)",
            libc::madvise(start as *mut _, end - start, libc::MADV_HUGEPAGE),
        )?;
        check(
            "madvise(MADV_COLLAPSE)",
            libc::madvise(start as *mut _, end - start, MADV_COLLAPSE),
        )?;
    }
    Ok(end - start)
}

/// The parts of a compiled image left in small pages once its interior is
/// in huge ones: the edges of each of its two mappings (read-only data
/// around the executable text) that hold no whole aligned 2 MiB page, with
/// whether each is executable. `image` and `text` are page-aligned at their
/// starts; the text's mapping ends on the page boundary after it.
fn small_edges(image: Range<usize>, text: Range<usize>) -> Vec<(Range<usize>, bool)> {
    let text_end = text.end.next_multiple_of(PAGE);
    let mappings = [
        (image.start..text.start, false),
        (text.start..text_end, true),
        (text_end..image.end.next_multiple_of(PAGE), false),
    ];
    let mut edges = Vec::new();
    for (mapping, exec) in mappings {
        let (up, down) = (
            mapping.start.next_multiple_of(HUGE),
            mapping.end / HUGE * HUGE,
        );
        let parts = if up < down {
            [mapping.start..up, down..mapping.end]
        } else {
            [mapping.clone(), 0..0]
        };
        edges.extend(
            parts
                .into_iter()
                .filter(|part| part.start < part.end)
                .map(|part| (part, exec)),
        );
    }
    edges
}

/// Map the small-page edges of a compiled image ([`small_edges`]) from a
/// sealed memory file holding the same bytes, in place of the anonymous
/// pages they were in; returns how many bytes now are. Fork copies no
/// page-table entry for a file mapping nothing wrote, and exit drops none:
/// a child maps the few of those pages its call reads, shared, instead of
/// every child copying and dropping an entry for each of them (about a
/// thousand for an 18 MB guest). The aligned interior stays in huge pages
/// ([`collapse`]). A `text` that is not a page-aligned part of `image` is
/// refused before anything is read; on a later failure an edge not yet
/// replaced stays as it was.
///
/// # Safety
/// `image` must be a compiled image mapped read-only by this process, with
/// `text` the executable part of it (wasmtime's published code memory),
/// that nothing writes; the bytes and protections come back the same, so
/// every pointer into it stays valid.
pub(crate) unsafe fn file_back_edges(
    image: Range<usize>,
    text: Range<usize>,
) -> Result<usize, HugePagesError> {
    use std::os::fd::AsRawFd;
    let aligned = image.start.is_multiple_of(PAGE) && text.start.is_multiple_of(PAGE);
    if !(aligned && image.start <= text.start && text.start <= text.end && text.end <= image.end) {
        return Err(HugePagesError::NotInImage(text, image));
    }
    let edges = small_edges(image.clone(), text);
    // SAFETY: each edge lies in the image, mapped readable and unchanging
    // (the caller's word) while the file is filled.
    let part = |edge: &Range<usize>| unsafe {
        std::slice::from_raw_parts(edge.start as *const u8, edge.end - edge.start)
    };
    let parts: Vec<(u64, &[u8])> = edges
        .iter()
        .map(|(edge, _)| ((edge.start - image.start) as u64, part(edge)))
        .collect();
    let file = crate::sealed_file::sealed_file(c"wasm-jobs-code-edges", &parts)
        .map_err(|e| HugePagesError::Call("sealing a memory file", e))?;
    let mut moved = 0;
    for (edge, exec) in edges {
        let prot = if exec {
            libc::PROT_READ | libc::PROT_EXEC
        } else {
            libc::PROT_READ
        };
        // SAFETY: the file holds the edge's bytes at this offset and can no
        // longer change; they replace the same bytes with the same
        // protection (the caller's word), in one call.
        let to = unsafe {
            libc::mmap(
                edge.start as *mut _,
                edge.end - edge.start,
                prot,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                (edge.start - image.start) as libc::off_t,
            )
        };
        if to == libc::MAP_FAILED {
            return Err(HugePagesError::Call(
                "mmap",
                std::io::Error::last_os_error(),
            ));
        }
        moved += edge.end - edge.start;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests;
