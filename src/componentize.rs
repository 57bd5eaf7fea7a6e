//! Turn a core WebAssembly module that implements the job world's canonical
//! ABI into a job component, with `wit-component` and the embedded
//! `wit/job.wit`. No guest toolchain needed.
//!
//! Used by the test fixtures and benchmarks (hand-written WAT jobs) and, in
//! the CLI process, by the bundled example job of `wasm-jobs demo`. Runs no
//! guest code.

use anyhow::Context;
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

/// The job contract, as shipped in this binary.
const JOB_WIT: &str = include_str!("../wit/job.wit");

/// Componentize a core module (binary or WAT text) exporting `run`,
/// `on-exit`, `memory` and `cabi_realloc`.
pub fn job_component_from_core(core: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut module = wat::parse_bytes(core)
        .context("parsing the core module")?
        .into_owned();
    let mut resolve = Resolve::default();
    let package = resolve.push_str("job.wit", JOB_WIT)?;
    let world = resolve.select_world(&[package], Some("job"))?;
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
        .context("encoding the component")
}
