//! A job instantiated before its message (in a template process,
//! `worker::forkserver::template`): [`Executor::instantiate`] makes the
//! instance under the policy's timeout, and each copy of the template makes
//! its one call on its copy of it ([`Instantiated::call`]).

use super::Call;
use super::{CallReport, Executor, HostState, LoadedJob, PreparedStore, bounded, make_call};
use crate::capture::OutputCapture;
use crate::contract::JobMessage;
use crate::contract::bindings::Job;
use crate::engine::{EPOCH_TICK, deadline_ticks};
use crate::job_output::Published;
use crate::outcome::Outcome;
use std::time::{Duration, Instant};
use wasmtime::Store;

impl Executor {
    /// Instantiate `job` in the prepared store, before any message: what a
    /// template process keeps and copies into each of its call processes
    /// (`worker::forkserver::template`). The policy's timeout bounds the
    /// instantiation too. A guest that fails to instantiate gets the report
    /// a call would have had.
    pub(crate) async fn instantiate(
        &self,
        job: &LoadedJob,
        prepared: PreparedStore,
    ) -> Result<Instantiated, CallReport> {
        let PreparedStore {
            mut store,
            timeout,
            stdout,
            stderr,
        } = prepared;
        let started = Instant::now();
        store.set_epoch_deadline(deadline_ticks(timeout));
        let instantiating = async {
            job.pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| Outcome::from_guest_error(&e, timeout))
        };
        let result = match tokio::time::timeout(timeout + EPOCH_TICK * 3, instantiating).await {
            Ok(r) => r,
            Err(_elapsed) => Err(Outcome::Timeout { limit: timeout }),
        };
        match result {
            Ok(job) => Ok(Instantiated {
                store,
                job,
                timeout,
                stdout,
                stderr,
            }),
            Err(outcome) => Err(CallReport {
                outcome,
                stdout: stdout.finish(),
                stderr: stderr.finish(),
                output: None,
                http: None,
                duration: started.elapsed(),
            }
            .explained()),
        }
    }
}

/// A job instantiated before its message ([`Executor::instantiate`]).
pub(crate) struct Instantiated {
    store: Store<HostState>,
    job: Job,
    timeout: Duration,
    stdout: OutputCapture,
    stderr: OutputCapture,
}

impl Instantiated {
    /// Send `traceparent` (the job's span) on its HTTP requests.
    pub(crate) fn set_traceparent(&mut self, traceparent: String) {
        self.store
            .data_mut()
            .http_hooks
            .set_traceparent(traceparent);
    }

    /// Make the call of `call` with `msg` on this instance. The timeout
    /// counts from here. The instance stays with the caller, for the reason
    /// [`Executor::run_prepared`] gives.
    pub(crate) async fn call(&mut self, msg: &JobMessage, call: Call) -> CallReport {
        self.stdout.set_message_id(&msg.id);
        self.stderr.set_message_id(&msg.id);
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        let started = Instant::now();
        let message = msg.to_wit();
        let outcome = bounded(
            make_call(&self.job, &mut self.store, &message, call),
            self.timeout,
        )
        .await;
        CallReport {
            outcome,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
            output: self.store.data_mut().output.take().map(Published),
            http: self.store.data().http_usage(),
            duration: started.elapsed(),
        }
        .explained()
    }
}
