//! Build script: links the `wasm-jobs` binary with its loadable segments
//! (read-only data, code, data) each starting on a 2 MiB boundary, in the
//! file and in memory.
//!
//! The fork server moves its code and read-only data into huge pages
//! (`src/hugepages.rs`), which every forked child then shares with one
//! page-table entry per 2 MiB, from each mapping's first 2 MiB boundary
//! (and up to its last one, rounded up when nothing follows it there).
//! With the default 4 KiB alignment each segment began partway into a
//! 2 MiB page and ended partway into another, right before the next
//! segment, and those heads and tails stayed in small pages: hundreds more
//! entries for each fork to copy, and page faults in every child. Here
//! every segment starts on a boundary and is followed by free space up to
//! the next, so all of it moves. The cost is up to 2 MiB of padding per
//! segment in the file (the binary grows by about 2 MB).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=0x200000");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,separate-loadable-segments");
    println!("cargo:rerun-if-changed=build.rs");
}
