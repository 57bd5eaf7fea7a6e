//! The one integration-test binary: executor outcomes and limits (WAT
//! fixtures), the sandbox against a hostile C guest, the four example guests
//! built with their real toolchains, and the `wasm-jobs exec` contract.

mod common;
mod exec_cli;
mod executor_outcomes;
mod guests;
mod sandbox;
