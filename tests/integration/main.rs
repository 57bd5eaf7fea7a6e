//! The one integration-test binary: executor outcomes and limits (WAT
//! fixtures), the sandbox against a hostile C guest, the four example guests
//! built with their real toolchains, the `wasm-jobs exec` contract, and the
//! queue conformance suite against the embedded queue and a moto server.

// Helpers shared by tests unwrap like the tests do: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod architecture;
mod artifacts;
mod batching;
mod chaos;
mod common;
mod confinement;
mod dashboard;
mod dashboard_browser;
mod deploy;
mod exec_cli;
mod executor_outcomes;
mod first_hour;
mod fleet;
mod guests;
mod host_memory;
mod http;
mod job_output;
mod observability;
mod oci;
mod outcomes;
mod prefork;
mod queue_backends;
mod queue_cli;
mod queue_conformance;
mod registry;
mod resilience;
mod sandbox;
mod signing;
mod starter;
mod tenancy;
mod tenants;
mod worker;
mod worker_harness;
mod worker_serving;
