//! The `wasm-jobs` binary: everything lives in the library; see `cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    wasm_jobs::cli::main()
}
