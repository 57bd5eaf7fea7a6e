//! Build script: links the `wasm-jobs` binary with its loadable segments
//! (read-only data, code, data) each starting on a 2 MiB boundary, in the
//! file and in memory.
//!
//! The fork server moves the 2 MiB-aligned part of its code and read-only
//! data into huge pages (`src/hugepages.rs`), which every forked child then
//! shares with one page-table entry per 2 MiB. With the default 4 KiB
//! alignment each segment began partway into a 2 MiB page, and that head
//! (about 1.6 MB of read-only data and 1.9 MB of code) stayed in small
//! pages: about 400 more entries for each fork to copy, and about 8 more
//! page faults per child. The cost is up to 2 MiB of padding per segment
//! in the file (the binary grows by about 2 MB).

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=0x200000");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,separate-loadable-segments");
    println!("cargo:rerun-if-changed=build.rs");
}
