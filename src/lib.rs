//! wasm-jobs: run WebAssembly component jobs from a message queue, one
//! fresh sandboxed process per message.
//!
//! Module map (the README's "Code map" has the files):
//! - [`cli`]: the `wasm-jobs` command line, one module per subcommand.
//! - [`worker`]: the worker's three processes — the tokio parent (queues,
//!   batched receives and deletes, tenants, slots, leases, fates), the fork
//!   server (engine, compile helpers, one confined child per call,
//!   pre-forked ahead of it, copied from a template process that
//!   instantiated the job once) and the wire protocol between them.
//! - [`queue`]: the queue interface with SQS semantics; the embedded
//!   (SQLite) and SQS backends.
//! - [`registry`]: content-addressed modules per tenant, in a directory,
//!   S3 or an OCI registry, with a verified per-host download cache.
//! - [`policy`]: tenant policy files (sandbox, caps, weights, keys, queues).
//! - [`signing`]: HMAC signatures of messages on shared queues.
//! - `dashboard`: the operator's web pages (`wasm-jobs dashboard`): queues,
//!   dead letters and their actions, modules; access by token and CSRF.
//! - `trace_context`: a message's W3C `traceparent` as the job's parent span.
//! - [`contract`]: the `wasm-jobs:job/job` world on the host side.
//! - [`executor`]: load (validate, compile, cache) and call a job in a sandbox.
//! - [`sandbox`]: the limits and grants of one call and how they are enforced.
//! - [`http`]: outbound HTTP for jobs (`wasi:http`): grants, limits, sender;
//!   `addresses`: which addresses only an IP literal grant reaches.
//! - [`outcome`]: how a call ended, and the exit code for it.
//! - [`job_output`]: the result a job publishes (`wasm-jobs:job/output`).
//! - [`engine`], [`artifact_cache`], [`capture`], `linking`, `hugepages`,
//!   `guest_random`: the executor's parts (engine settings and epoch ticks,
//!   compiled-artifact cache, guest output capture, the WASI linker, machine
//!   code in huge pages so forked children start with it mapped, the
//!   guest's fork-safe random generator); `sealed_file`: memory files
//!   sealed against any change, that compiled code is mapped from.
//! - [`componentize`], `bundled`: core module to job component; the demo's
//!   bundled job.
//! - [`logging`], `paths`, `units`: log set-up, the data directory, byte
//!   sizes.
//! - [`wipe`]: the binary's allocator, which wipes freed memory in the fork
//!   server and every process forked from it; `fresh_heap`: the heap a
//!   template process and its copies allocate from.

pub(crate) mod addresses;
pub mod artifact_cache;
pub(crate) mod bundled;
pub mod capture;
pub mod cli;
pub mod componentize;
pub mod contract;
pub(crate) mod dashboard;
pub mod engine;
pub mod executor;
pub(crate) mod fresh_heap;
pub(crate) mod guest_random;
pub mod http;
pub(crate) mod hugepages;
pub mod job_output;
pub(crate) mod linking;
pub mod logging;
pub mod outcome;
pub(crate) mod paths;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub(crate) mod sealed_file;
pub mod signing;
pub(crate) mod trace_context;
pub(crate) mod units;
pub mod wipe;
pub mod worker;
