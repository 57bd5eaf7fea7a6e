//! The worker: receives messages and runs each in a fresh forked process.
//!
//! # Theory of operation
//!
//! Three processes, one directory each:
//!
//! - [`parent`]: the `wasm-jobs worker` process, a tokio runtime. It owns
//!   the queues, leases and heartbeats, exit signals and metrics. It never
//!   forks and never runs guest code. For each message it decides who sent
//!   it (the queue's tenant binding, or a shared queue's signature), admits
//!   it once (policy, module digest), waits for a slot (tenant first, then
//!   worker), asks the fork server for a child, and settles the message
//!   through the pure `fate` table when the child ends.
//! - [`forkserver`]: `wasm-jobs __fork-server`, started by the parent with
//!   an empty environment and restarted if it dies. Single-threaded: it
//!   holds the wasmtime `Engine` and loaded components, compiles new ones in
//!   short-lived helpers, keeps children forked and set up ahead of their
//!   calls (`forkserver::warm`, one per free slot for the module it expects
//!   next) and forks on demand for any other call, reaps them, and is the
//!   only process that signals them.
//! - The children (`forkserver::child`): one call each, in a fresh instance,
//!   confined below wasmtime (`forkserver::confine`: limits, Landlock,
//!   seccomp) before their call is known, reporting the outcome on a
//!   channel of their own and exiting.
//!
//! [`protocol`] is what they say to each other; it depends on neither side.

pub(crate) mod forkserver;
pub(crate) mod parent;
pub(crate) mod protocol;

pub use parent::forks::{ForkServerSettings, ForkServers};
pub use parent::reply::ReplyQueues;
pub use parent::stats::WorkerStats;
pub use parent::{BoundQueue, WorkerConfig, WorkerExit, check_config, run, runtime};
