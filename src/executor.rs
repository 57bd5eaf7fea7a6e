//! The executor: loads job components (validated, compiled once, cached) and
//! makes one sandboxed call of `run` or `on-exit` in a fresh `Store`,
//! returning a typed [`Outcome`].
//!
//! Loading happens in the fork server (which keeps loaded jobs and forks a
//! child per call), in its compile helpers, and in the CLI process (`exec`,
//! `module push|inspect`); calls are made in each worker child and, for
//! `wasm-jobs exec`, in the CLI process. It never forks and holds no queue.
//! Loading starts no thread. The first call starts the epoch ticker: a
//! thread, unless the process chose SIGALRM ticks first (worker children).
//! A template process instantiates its job before any message and copies
//! the instance for each call ([`instance`]); what a call returns is in
//! [`report`].

use crate::artifact_cache::{ArtifactCache, CompileSource, content_digest};
use crate::capture::{OutputCapture, StreamName};
use crate::contract::bindings::{Job, JobPre, wasm_jobs::job::types::Failure};
use crate::contract::{self, ContractError, JobMessage};
use crate::engine::{EPOCH_TICK, EngineSettings, EpochTicker, build_engine, deadline_ticks};
use crate::guest_random::GuestRandom;
use crate::http::{HttpHooks, HttpUsage};
use crate::job_output::{HasJobOutput, JobOutput, Published};
use crate::linking;
use crate::outcome::Outcome;
use crate::sandbox::{MemoryLimiter, SandboxError, SandboxPolicy};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod instance;
mod report;
pub(crate) use instance::Instantiated;
pub use report::{Call, CallError, CallReport, LoadError};

/// Per-call host state kept in the `Store`.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    output: JobOutput,
    http: WasiHttpCtx,
    http_hooks: HttpHooks,
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl HostState {
    /// What the call's HTTP requests did, if it made or tried any.
    fn http_usage(&self) -> Option<HttpUsage> {
        let u = self.http_hooks.usage();
        (u != HttpUsage::default()).then_some(u)
    }
}

impl HasJobOutput for HostState {
    fn job_output(&mut self) -> &mut JobOutput {
        &mut self.output
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A store made ready by [`Executor::prepare_store`] for one call under a
/// tenant's policy, before the message is known: a pre-forked worker child
/// holds one while it waits for its message.
pub(crate) struct PreparedStore {
    store: Store<HostState>,
    timeout: Duration,
    stdout: OutputCapture,
    stderr: OutputCapture,
}

impl PreparedStore {
    /// Send `traceparent` (the job's span) on its HTTP requests.
    pub(crate) fn set_traceparent(&mut self, traceparent: String) {
        self.store
            .data_mut()
            .http_hooks
            .set_traceparent(traceparent);
    }

    /// The call of `call` with `msg` in this store. The timeout's epoch
    /// deadline counts from here, not from when the store was made.
    pub(crate) fn for_message(mut self, msg: &JobMessage, call: Call) -> PreparedCall {
        self.stdout.set_message_id(&msg.id);
        self.stderr.set_message_id(&msg.id);
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        PreparedCall {
            store: self.store,
            message: msg.to_wit(),
            call,
            timeout: self.timeout,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// A call made ready by [`Executor::prepare`]: its store and what it sends.
pub(crate) struct PreparedCall {
    store: Store<HostState>,
    message: contract::bindings::wasm_jobs::job::types::Message,
    call: Call,
    timeout: Duration,
    stdout: OutputCapture,
    stderr: OutputCapture,
}

/// A validated, compiled job component ready to instantiate.
pub struct LoadedJob {
    pre: JobPre<HostState>,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Whether it was compiled now or came from the artifact cache.
    pub source: CompileSource,
    /// It imports `wasm-jobs:job/output`, so its calls may publish a result.
    pub publishes_output: bool,
}

impl LoadedJob {
    /// The size of its compiled code and data in memory (the component's
    /// image).
    pub(crate) fn code_bytes(&self) -> u64 {
        let image = self.pre.instance_pre().component().image_range();
        (image.end as usize - image.start as usize) as u64
    }
}

/// Loads components and calls them. Cheap to share by reference.
pub struct Executor {
    engine: Engine,
    settings: EngineSettings,
    linker: Linker<HostState>,
    cache: ArtifactCache,
    ticker: OnceLock<EpochTicker>,
}

impl Executor {
    /// An executor whose compiled artifacts live in `cache_dir`.
    pub fn new(settings: EngineSettings, cache_dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let engine = build_engine(settings)?;
        let linker =
            linking::base_linker(&engine).map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        Ok(Executor {
            engine,
            settings,
            linker,
            cache: ArtifactCache::new(cache_dir),
            ticker: OnceLock::new(),
        })
    }

    /// The engine every component is compiled for and run in.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled-artifact cache.
    pub fn cache(&self) -> &ArtifactCache {
        &self.cache
    }

    /// Read `path` and load it like [`Executor::load_bytes`].
    pub fn load_file(&self, path: &Path) -> Result<LoadedJob, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(&bytes)
    }

    /// Validate `wasm` against the job contract and compile it (or load it
    /// from the artifact cache).
    pub fn load_bytes(&self, wasm: &[u8]) -> Result<LoadedJob, LoadError> {
        contract::check_header(wasm)?;
        let (component, source) = self.cache.load_or_compile(&self.engine, wasm)?;
        self.job(wasm, &component, source)
    }

    /// Compile `wasm` into the cache (replacing any entry) and load it: a
    /// fork server's compile helper, after the fork server found no usable
    /// entry.
    pub(crate) fn compile_bytes(&self, wasm: &[u8]) -> Result<LoadedJob, LoadError> {
        contract::check_header(wasm)?;
        let (component, source) = self.cache.compile(&self.engine, wasm)?;
        self.job(wasm, &component, source)
    }

    /// Load `wasm` only if its verified artifact is already cached: `None`
    /// means it must be compiled first (the fork server never compiles).
    pub(crate) fn load_cached(&self, wasm: &[u8]) -> Result<Option<LoadedJob>, LoadError> {
        contract::check_header(wasm)?;
        match self.cache.load_cached(&self.engine, wasm)? {
            Some(component) => self.job(wasm, &component, CompileSource::Cached).map(Some),
            None => Ok(None),
        }
    }

    /// Check a compiled component against the job contract and link it.
    fn job(
        &self,
        wasm: &[u8],
        component: &Component,
        source: CompileSource,
    ) -> Result<LoadedJob, LoadError> {
        contract::check_world(&self.engine, component)?;
        // WASI interfaces we do not implement (e.g. wasi:http) are linked as
        // stubs: the job instantiates, and using them is denied at call time.
        let stubbed;
        let linker = if linking::unimplemented_wasi_imports(&self.engine, component).is_empty() {
            &self.linker
        } else {
            let mut l = self.linker.clone();
            linking::stub_unimplemented_wasi(&mut l, &self.engine, component)
                .map_err(|e| ContractError::Invalid(format!("{e:#}")))?;
            stubbed = l;
            &stubbed
        };
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| ContractError::Invalid(format!("{e:#}")))?;
        let pre = JobPre::new(instance_pre).map_err(|e| ContractError::WrongWorld {
            problem: format!("{e:#}"),
            exports: component
                .component_type()
                .exports(&self.engine)
                .map(|(n, _)| n.to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let publishes_output = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name == contract::OUTPUT_INTERFACE);
        Ok(LoadedJob {
            pre,
            digest: content_digest(wasm),
            source,
            publishes_output,
        })
    }

    /// The import and export names of a component (compiling it into the
    /// cache if needed), for `module inspect`.
    pub(crate) fn describe(&self, wasm: &[u8]) -> Result<(Vec<String>, Vec<String>), LoadError> {
        contract::check_header(wasm)?;
        let (component, _) = self.cache.load_or_compile(&self.engine, wasm)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        Ok((imports, exports))
    }

    /// Make one call in a fresh instance under `policy`. A guest misbehaving
    /// in any way ends in `Ok(report)` with a typed outcome; `Err` is for
    /// host-side problems only.
    pub async fn call(
        &self,
        job: &LoadedJob,
        msg: &JobMessage,
        call: Call,
        policy: &SandboxPolicy,
    ) -> Result<CallReport, CallError> {
        let mut prepared = self.prepare(msg, call, policy)?;
        Ok(self.run_prepared(job, &mut prepared).await)
    }

    /// Everything host-side a call needs, done before any guest code runs:
    /// the store, the granted directories opened, allowed names resolved.
    pub(crate) fn prepare(
        &self,
        msg: &JobMessage,
        call: Call,
        policy: &SandboxPolicy,
    ) -> Result<PreparedCall, CallError> {
        self.ensure_ticker()?;
        Ok(self.prepare_store(policy)?.for_message(msg, call))
    }

    /// The store of one call under `policy`, before its message is known. A
    /// worker child confines itself between this and [`Self::run_prepared`],
    /// so it needs no path and no name lookup once the guest runs. Epochs
    /// must be ticking (a ticker thread or [`Self::use_timer_signal_ticks`])
    /// by the time the call runs.
    pub(crate) fn prepare_store(&self, policy: &SandboxPolicy) -> Result<PreparedStore, CallError> {
        if policy.fuel.is_some() && !self.settings.fuel_metering {
            return Err(CallError::FuelNeedsMetering);
        }
        let stdout = OutputCapture::new(StreamName::Stdout, policy.max_output);
        let stderr = OutputCapture::new(StreamName::Stderr, policy.max_output);
        let mut builder = WasiCtxBuilder::new();
        policy.apply_to(&mut builder)?;
        let http_hooks = HttpHooks::new(&policy.http).map_err(SandboxError::from)?;
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .secure_random(GuestRandom::new())
            .insecure_random(GuestRandom::new());
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi: builder.build(),
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(policy.max_memory),
                output: JobOutput::new(policy.max_job_output),
                http: WasiHttpCtx::new(),
                http_hooks,
            },
        );
        store.limiter(|s| &mut s.limiter);
        if self.settings.fuel_metering {
            store
                .set_fuel(policy.fuel.unwrap_or(u64::MAX))
                .expect("fuel metering is on");
        }
        store.epoch_deadline_trap();
        Ok(PreparedStore {
            store,
            timeout: policy.timeout,
            stdout,
            stderr,
        })
    }

    /// Instantiate `job` in the prepared store and make the call. The store
    /// stays with the caller: a worker child never drops it, since dropping
    /// a store unmaps its memory reservation and fiber stack one range at a
    /// time (with TLB flushes), about half a millisecond for a large guest,
    /// which the child's exit does at once and cheaper.
    pub(crate) async fn run_prepared(&self, job: &LoadedJob, p: &mut PreparedCall) -> CallReport {
        let PreparedCall {
            store,
            message,
            call,
            timeout,
            stdout,
            stderr,
        } = p;
        let started = Instant::now();
        let guest = async {
            let job: Job = job.pre.instantiate_async(&mut *store).await?;
            make_call(&job, &mut *store, &*message, *call).await
        };
        let outcome = bounded(guest, *timeout).await;
        CallReport {
            outcome,
            stdout: stdout.finish(),
            stderr: stderr.finish(),
            output: store.data_mut().output.take().map(Published),
            http: store.data().http_usage(),
            duration: started.elapsed(),
        }
        .explained()
    }

    /// Tick this process's epochs with a SIGALRM timer instead of a thread
    /// (for a forked child that makes one call). Call before the first call.
    pub(crate) fn use_timer_signal_ticks(&self) -> Result<(), CallError> {
        let ticker =
            EpochTicker::start_with_timer_signal(&self.engine).map_err(CallError::Ticker)?;
        let _ = self.ticker.set(ticker);
        Ok(())
    }

    fn ensure_ticker(&self) -> Result<(), CallError> {
        if self.ticker.get().is_none() {
            let ticker = EpochTicker::start(&self.engine).map_err(CallError::Ticker)?;
            // A racing caller may have set it first; its ticker serves both.
            let _ = self.ticker.set(ticker);
        }
        Ok(())
    }
}

/// Call the export `call` names on an instance.
async fn make_call(
    job: &Job,
    store: &mut Store<HostState>,
    message: &contract::bindings::wasm_jobs::job::types::Message,
    call: Call,
) -> wasmtime::Result<Outcome> {
    match call {
        Call::Run => job.call_run(&mut *store, message).await.map(|r| match r {
            Ok(()) => Outcome::Ok,
            Err(Failure::Retry(info)) => Outcome::Retry {
                reason: info.reason,
                delay_seconds: info.delay_seconds,
            },
            Err(Failure::Fatal(reason)) => Outcome::Fatal { reason },
        }),
        Call::OnExit { signal } => job
            .call_on_exit(&mut *store, message, signal)
            .await
            .map(|r| match r {
                Ok(()) => Outcome::Ok,
                Err(reason) => Outcome::OnExitFailed { reason },
            }),
    }
}

/// Run a guest call to its outcome within `timeout`. The epoch deadline
/// stops a guest spinning in wasm; this timer stops one blocked in a host
/// call (a WASI sleep or poll), which epochs cannot reach. Three ticks of
/// slack let the epoch path report first.
async fn bounded(
    guest: impl std::future::Future<Output = wasmtime::Result<Outcome>>,
    timeout: Duration,
) -> Outcome {
    match tokio::time::timeout(timeout + EPOCH_TICK * 3, guest).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(err)) => Outcome::from_guest_error(&err, timeout),
        Err(_elapsed) => Outcome::Timeout { limit: timeout },
    }
}
