//! Compile helpers, in the fork server process: a component not yet in the
//! artifact cache is compiled by a short-lived forked helper, so the fork
//! server never starts compiler threads and its loop keeps serving other
//! modules meanwhile. The helper runs under an address-space limit and is
//! killed at its deadline; a helper that is killed or times out is a passing
//! failure (the message is left for redelivery), and only a helper that says
//! the component is invalid makes the calls waiting for it fail for good.

use crate::executor::Executor;
use crate::worker::protocol::{ExitStatus, ForkServerConfig, ModuleRef, Spawn, SpawnFailure};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use std::io::{Read, Write};
use std::time::Instant;

/// The exit code a helper uses for "not a valid job component".
const INVALID: i32 = crate::outcome::exit_code::INVALID_COMPONENT as i32;
/// The most error text a helper reports.
const MAX_ERROR_BYTES: usize = 4096;

/// A compile under way.
pub(super) struct Compiling {
    pub(super) helper: Pid,
    pub(super) deadline: Instant,
    pub(super) timed_out: bool,
    /// The calls to fork once it is done (the first one started it).
    pub(super) waiting: Vec<Spawn>,
    /// The component's bytes, to load once the artifact is cached.
    bytes: Vec<u8>,
    /// The helper's error text (it writes less than a pipe buffer, then exits).
    errors: std::io::PipeReader,
}

/// Read a module file and check it still has the digest it was admitted
/// with. A mismatch is the file's fault, not the message's: passing.
pub(super) fn read_verified(module: &ModuleRef) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(&module.path)
        .map_err(|e| format!("cannot read module {}: {e}", module.path.display()))?;
    let digest = crate::artifact_cache::content_digest(&bytes);
    if digest != module.digest {
        return Err(format!(
            "module file {} no longer has digest {} (it has {digest})",
            module.path.display(),
            module.digest
        ));
    }
    Ok(bytes)
}

/// What a finished compile gives: the bytes to load, or whose fault it is.
pub(super) type Compiled = Result<Vec<u8>, (SpawnFailure, String)>;

/// Fork a helper that compiles `bytes` into the artifact cache for `first`
/// and the calls that join it in [`Compiling::waiting`]. The helper first
/// lets go of `first`, then calls `shed` (which lets go of the fork
/// server's other calls): it runs none of them.
pub(super) fn start(
    executor: &Executor,
    bytes: Vec<u8>,
    config: &ForkServerConfig,
    close: &[std::os::fd::RawFd],
    first: Spawn,
    shed: impl FnOnce(),
) -> Result<Compiling, String> {
    let (read_end, write_end) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let me = getpid();
    // SAFETY: the fork server is single-threaded (see its module docs).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(first);
            shed();
            drop(read_end);
            super::die_with_parent(me);
            for fd in close {
                // SAFETY: the fork server's own sockets; this helper never
                // runs its loop, and must not keep them open.
                unsafe { libc::close(*fd) };
            }
            let _ = setrlimit(
                Resource::RLIMIT_AS,
                config.compile_memory,
                config.compile_memory,
            );
            let code = match executor.compile_bytes(&bytes) {
                Ok(_) => 0,
                Err(e) => {
                    let mut text = e.to_string();
                    text.truncate(text.floor_char_boundary(MAX_ERROR_BYTES));
                    let mut w = write_end;
                    let _ = w.write_all(text.as_bytes());
                    if e.is_invalid_component() { INVALID } else { 1 }
                }
            };
            // SAFETY: _exit ends the helper at once, running nothing of the
            // fork server's state it copied.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => Ok(Compiling {
            helper: child,
            deadline: Instant::now() + config.compile_timeout,
            timed_out: false,
            waiting: vec![first],
            bytes,
            errors: read_end,
        }),
        Err(e) => Err(format!("fork failed: {e}")),
    }
}

impl Compiling {
    /// The helper was reaped with `status`: the bytes to load, or whose
    /// fault the failure is; and the calls that waited.
    pub(super) fn finish(mut self, status: ExitStatus) -> (Compiled, Vec<Spawn>) {
        let mut error = String::new();
        // The helper has exited, so this read ends at once.
        let _ = (&mut self.errors)
            .take(MAX_ERROR_BYTES as u64)
            .read_to_string(&mut error);
        let result = match status {
            ExitStatus::Code(0) => Ok(self.bytes),
            ExitStatus::Code(INVALID) => Err((SpawnFailure::InvalidComponent, error)),
            _ if self.timed_out => Err((
                SpawnFailure::Passing,
                "compiling the module took too long; the helper was killed".to_owned(),
            )),
            ExitStatus::Signal(sig) => Err((
                SpawnFailure::Passing,
                format!("the compile helper was killed by signal {sig}"),
            )),
            ExitStatus::Code(code) => Err((
                SpawnFailure::Passing,
                format!("compiling the module failed (helper exit code {code}): {error}"),
            )),
        };
        (result, self.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiling(timed_out: bool, error: &str) -> Compiling {
        let (errors, mut w) = std::io::pipe().unwrap();
        w.write_all(error.as_bytes()).unwrap();
        Compiling {
            helper: Pid::from_raw(1),
            deadline: Instant::now(),
            timed_out,
            waiting: Vec::new(),
            bytes: b"wasm".to_vec(),
            errors,
        }
    }

    #[test]
    fn only_a_helper_that_says_invalid_fails_its_calls_for_good() {
        let (ok, _) = compiling(false, "").finish(ExitStatus::Code(0));
        assert_eq!(ok, Ok(b"wasm".to_vec()));
        let (invalid, _) = compiling(false, "not a component").finish(ExitStatus::Code(INVALID));
        assert_eq!(
            invalid,
            Err((SpawnFailure::InvalidComponent, "not a component".into()))
        );
        let (killed, _) = compiling(false, "").finish(ExitStatus::Signal(9));
        assert!(matches!(killed, Err((SpawnFailure::Passing, why)) if why.contains("signal 9")));
        let (late, _) = compiling(true, "").finish(ExitStatus::Signal(9));
        assert!(matches!(late, Err((SpawnFailure::Passing, why)) if why.contains("too long")));
        let (crashed, _) = compiling(false, "out of memory").finish(ExitStatus::Code(1));
        assert!(
            matches!(crashed, Err((SpawnFailure::Passing, why)) if why.contains("out of memory"))
        );
    }
}
