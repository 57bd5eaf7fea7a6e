//! The parent's commands, as the fork server reads and applies them: a
//! spawn waits its turn in the loop, a signal goes to a call's process
//! group, and a cancel drops a call not started yet.

use super::{Command, Running, Server, SpawnFailure, protocol};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use std::os::fd::AsFd;

impl Server {
    /// Read every command the parent has sent so far, waiting for none. A
    /// cancel is applied at once; the others wait in `pending`, in order.
    pub(super) fn read_commands(&mut self) {
        while self.commands_ended.is_none() {
            let mut ready = [PollFd::new(self.commands.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut ready, PollTimeout::ZERO), Ok(n) if n > 0) {
                return;
            }
            match protocol::read_command(&mut self.commands) {
                Ok(Some(Command::Cancel { process })) => self.cancel(process),
                Ok(Some(command)) => self.pending.push_back(command),
                Ok(None) => self.commands_ended = Some(0),
                Err(e) => {
                    tracing::error!(error = %e, "fork server: bad command stream");
                    self.commands_ended = Some(1);
                }
            }
        }
    }

    /// Signal the process group of `process`'s call, if it is running.
    pub(super) fn signal(&self, process: u64, sig: i32) {
        let Ok(sig) = Signal::try_from(sig) else {
            return;
        };
        let pid = self
            .running
            .iter()
            .find(|(_, r)| matches!(r, Running::Call(c) if c.process == process))
            .map(|(pid, _)| *pid);
        // Not found: already reaped (or never started); nothing to signal.
        if let Some(pid) = pid
            && let Err(e) = killpg(pid, sig)
        {
            tracing::debug!(pid = pid.as_raw(), signal = ?sig, error = %e, "killpg failed");
        }
    }

    /// Drop the call of `process` if it has not started: queued in
    /// `pending` (where a call goes back after its module's load), or
    /// waiting for its module's compile. The parent hears it was not
    /// started. Any other call is left as it is.
    fn cancel(&mut self, process: u64) {
        let queued = self
            .pending
            .iter()
            .position(|c| matches!(c, Command::Spawn(s) if s.process == process));
        if let Some(i) = queued {
            self.pending.remove(i);
        } else if let Some(c) = self
            .compiling
            .values_mut()
            .find(|c| c.waiting.iter().any(|w| w.process == process))
        {
            c.waiting.retain(|w| w.process != process);
        } else {
            return;
        }
        self.fail(
            process,
            SpawnFailure::Cancelled,
            "not started: the worker is stopping".into(),
        );
    }
}
