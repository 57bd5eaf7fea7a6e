//! wasm-jobs: run WebAssembly component jobs from a message queue.
//!
//! Module map (see README "Code map"):
//! - [`contract`]: the `wasm-jobs:job/job` world on the host side.
//! - [`executor`]: load (validate, compile, cache) and call a job in a sandbox.
//! - [`sandbox`]: the policy of one call and how it is enforced.
//! - [`outcome`]: how a call ended, and the exit code for it.
//! - [`engine`], [`artifact_cache`], [`capture`]: the executor's parts.
//! - [`cli`]: the `wasm-jobs` command line.

pub mod artifact_cache;
pub mod bundled;
pub mod capture;
pub mod cli;
pub mod componentize;
pub mod contract;
pub mod engine;
pub mod executor;
pub mod linking;
pub mod logging;
pub mod outcome;
pub mod paths;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub mod worker;
