//! The `wasm-jobs` binary: everything lives in the library; see `cli`. Every
//! process runs it: the CLI (and so the worker parent), and the fork server,
//! which the parent starts by executing this binary again as
//! `wasm-jobs __fork-server`.

use std::process::ExitCode;

/// Wipes freed blocks in the fork server and what it forks (see `wipe`).
#[global_allocator]
static ALLOCATOR: wasm_jobs::wipe::WipingAllocator = wasm_jobs::wipe::WipingAllocator;

fn main() -> ExitCode {
    wasm_jobs::cli::main()
}
