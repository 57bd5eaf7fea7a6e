//! The one wasmtime `Engine` configuration used to compile and to load job
//! components, and the epoch ticker that enforces wall-time deadlines.
//!
//! The artifact cache keys compiled code by this configuration (through
//! wasmtime's compatibility hash), so compile and load can never disagree.
//! Building an engine starts no thread: the fork server may hold one. The
//! [`EpochTicker`] thread is started only where guests run.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use wasmtime::{Config, Engine, OptLevel};

/// Period of the epoch ticker. Deadlines are counted in these ticks, so a
/// timeout fires at most one tick late.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine settings that change the compiled code, and so the cache key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSettings {
    /// Instrument guests to count fuel, so a policy can set a CPU budget.
    /// Costs some speed on every guest, so it is off unless asked for.
    pub fuel_metering: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot configure the WebAssembly engine: {0}")]
pub struct EngineError(#[source] wasmtime::Error);

/// Build the engine every component is compiled for and run in.
pub fn build_engine(settings: EngineSettings) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(settings.fuel_metering)
        .cranelift_opt_level(OptLevel::Speed)
        // Guest stack for wasm frames; deep recursion traps as stack overflow.
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        // Copy-on-write images of initial memory make instantiation cheap.
        .memory_init_cow(true)
        // A job may never be interrupted mid-compilation by a fork, but the
        // fork server compiles in a child, so parallel compilation is safe.
        .parallel_compilation(true);
    Engine::new(&config).map_err(EngineError)
}

/// Increments an engine's epoch every [`EPOCH_TICK`] on a background thread
/// until dropped. One per process that runs guests.
pub struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let engine = engine.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The number of ticks after which a call with this timeout is interrupted.
/// One tick more than the timeout holds, because the tick in progress when
/// the call starts is partly over: the call is never stopped early, and at
/// most two ticks late.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_and_covers_the_partial_first_tick() {
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(11)), 3);
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(Duration::from_secs(900)), 90_001);
    }

    #[test]
    fn ticker_stops_when_dropped() {
        let engine = build_engine(EngineSettings::default()).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        thread::sleep(EPOCH_TICK * 3);
        drop(ticker); // joins the thread; a hang here fails the test run
    }
}
