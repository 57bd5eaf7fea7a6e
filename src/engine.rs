//! The one wasmtime `Engine` configuration used to compile and to load job
//! components, and the epoch ticker that enforces wall-time deadlines.
//!
//! The artifact cache keys compiled code by this configuration (through
//! wasmtime's compatibility hash), so compile and load can never disagree.
//!
//! Engines are built wherever components are loaded: in the fork server
//! (which forks, so building one must start no thread; its compile helpers
//! and worker children inherit its engine) and in the CLI process (`exec`,
//! `module`). The epoch ticker runs only where guests run: a SIGALRM timer in
//! each worker child, a thread in `exec`.

use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::Duration;
use wasmtime::{Config, Engine, OptLevel};

/// Period of the epoch ticker. Deadlines are counted in these ticks, so a
/// timeout fires at most one tick late.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine settings that change the compiled code, and so the cache key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSettings {
    /// Instrument guests to count fuel, so a policy can set a CPU budget.
    /// Costs some speed on every guest, so it is off unless asked for.
    pub fuel_metering: bool,
}

/// The engine configuration was refused (e.g. by this CPU or platform).
#[derive(Debug, thiserror::Error)]
#[error("cannot configure the WebAssembly engine: {0}")]
pub(crate) struct EngineError(#[source] wasmtime::Error);

/// Build the engine every component is compiled for and run in.
pub(crate) fn build_engine(settings: EngineSettings) -> Result<Engine, EngineError> {
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
        // Compiler threads must never run in a process that forks; the fork
        // server compiles only in helper children, so parallel compilation
        // is safe.
        .parallel_compilation(true);
    Engine::new(&config).map_err(EngineError)
}

/// Increments an engine's epoch every [`EPOCH_TICK`] until dropped. One per
/// process that runs guests: a background thread, or (in a forked worker
/// child, where a thread costs more than the whole call) a SIGALRM timer.
pub(crate) enum EpochTicker {
    /// A thread that ticks until `stop` is dropped, joined on drop.
    Thread {
        stop: Option<mpsc::Sender<()>>,
        thread: Option<thread::JoinHandle<()>>,
    },
    /// This process's SIGALRM interval timer, disarmed on drop.
    TimerSignal,
}

/// The engine the SIGALRM handler ticks (set once per process).
static SIGNAL_TICKED_ENGINE: OnceLock<Engine> = OnceLock::new();

extern "C" fn on_tick_signal(_: libc::c_int) {
    // An atomic increment: safe in a signal handler.
    if let Some(engine) = SIGNAL_TICKED_ENGINE.get() {
        engine.increment_epoch();
    }
}

fn set_tick_timer(interval: std::time::Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: interval.as_secs() as libc::time_t,
        tv_usec: interval.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer with valid pointers; no old value requested.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl EpochTicker {
    /// Tick with SIGALRM every [`EPOCH_TICK`] instead of a thread. For a
    /// process that runs one call and exits; threads it starts later should
    /// block SIGALRM ([`block_tick_signal`]). SA_RESTART keeps interrupted
    /// system calls going.
    pub(crate) fn start_with_timer_signal(engine: &Engine) -> std::io::Result<Self> {
        if SIGNAL_TICKED_ENGINE.set(engine.clone()).is_err() {
            return Err(std::io::Error::other(
                "the SIGALRM epoch ticker is already in use",
            ));
        }
        // SAFETY: installing a handler that only does an atomic increment.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_tick_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        set_tick_timer(EPOCH_TICK)?;
        Ok(EpochTicker::TimerSignal)
    }

    /// Tick from a background thread named `epoch-ticker`.
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let engine = engine.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker::Thread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        match self {
            EpochTicker::Thread { stop, thread } => {
                drop(stop.take());
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            EpochTicker::TimerSignal => {
                let _ = set_tick_timer(std::time::Duration::ZERO);
            }
        }
    }
}

/// Stop or restart this process's SIGALRM ticks, started by
/// [`EpochTicker::start_with_timer_signal`]: a template process stops them
/// once it has instantiated its job, and each call process copied from it
/// (timers are not inherited across a fork) starts them again.
pub(crate) fn pause_tick_timer(paused: bool) -> std::io::Result<()> {
    set_tick_timer(if paused { Duration::ZERO } else { EPOCH_TICK })
}

/// Block SIGALRM in the calling thread, so timer ticks go to the thread
/// running the guest (use in runtime thread-start hooks).
pub(crate) fn block_tick_signal() {
    // SAFETY: changing this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The number of ticks after which a call with this timeout is interrupted.
/// One tick more than the timeout holds, because the tick in progress when
/// the call starts is partly over: the call is never stopped early, and at
/// most two ticks late.
pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
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
    fn the_timer_signal_ticker_advances_the_epoch() {
        // Runs in a forked child: the signal handler and timer are per
        // process. Compile first: the child must not need compiler threads.
        let engine = build_engine(EngineSettings::default()).unwrap();
        let module = wasmtime::Module::new(
            &engine,
            wat::parse_str("(module (func (export \"spin\") (loop br 0)))").unwrap(),
        )
        .unwrap();
        // SAFETY: the child only instantiates, ticks, checks and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ticker = EpochTicker::start_with_timer_signal(&engine).unwrap();
                let mut store = wasmtime::Store::new(&engine, ());
                store.set_epoch_deadline(5);
                store.epoch_deadline_trap();
                let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
                let spin = instance
                    .get_typed_func::<(), ()>(&mut store, "spin")
                    .unwrap();
                let err = spin.call(&mut store, ()).unwrap_err();
                let interrupted =
                    err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt);
                drop(ticker);
                unsafe { libc::_exit(if interrupted { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn ticker_stops_when_dropped() {
        let engine = build_engine(EngineSettings::default()).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        thread::sleep(EPOCH_TICK * 3);
        drop(ticker); // joins the thread; a hang here fails the test run
    }
}
