//! What the fork server does when a call or a process it started ends (in
//! the fork server process):
//! - A worker child's call ends when its report comes: the child writes
//!   its result file, then its one report packet, and has nothing left to
//!   do but exit. The parent is told at once (`Output`, then `Exited` with
//!   the exit code the outcome gives, the code the child exits with), and
//!   the child is killed: its exit, which unmaps the whole process and
//!   takes a few hundred microseconds, is no longer between the call's end
//!   and its message's delete, and a child the parent stopped in that last
//!   instant does not stay behind. It is reaped later, silently.
//! - A worker child that ends without a report (killed, crashed, a limit)
//!   is told with its real exit status when it is reaped.
//! - A compile helper's end loads the module and puts the calls that
//!   waited for it first in line to start, or fails them.
//! - A template or a pre-forked child that dies waiting pauses pre-forking
//!   for its key ([`super::warm`]).

use super::protocol::{self, Command, Event, ExitStatus, SpawnFailure};
use super::{Call, Running, Server, output, send_event};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{MsgFlags, recv};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

/// The one packet a reaped child left on its report channel, if any, read
/// into `buf`, the fork server's one buffer (zeroing 64 KiB to read each
/// report, and wiping them as they were freed, cost every call). What the
/// packet held is zeroed again once decoded, so no call's report stays in
/// the memory later children are forked with ([`crate::wipe`]).
fn read_report(channel: &OwnedFd, buf: &mut [u8]) -> Option<protocol::Report> {
    match recv(channel.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => {
            let report = protocol::decode_report(&buf[..n]);
            buf[..n].fill(0);
            report
        }
        Err(_) => None,
    }
}

/// How a call that sent `report` ended: with its outcome's exit code,
/// the code its child exits with (`child::report_and_exit`), whatever
/// happens to the process after the report (a kill, a late signal).
fn reported_status(report: &protocol::Report) -> ExitStatus {
    ExitStatus::Code(report.outcome.exit_code().into())
}

impl Server {
    /// The channels of the calls whose report may still come.
    pub(super) fn listening(&self) -> Vec<(Pid, BorrowedFd<'_>)> {
        self.running
            .iter()
            .filter_map(|(pid, r)| match r {
                Running::Call(c) if c.listening => Some((*pid, c.channel.as_fd())),
                _ => None,
            })
            .collect()
    }

    /// `pid`'s channel is readable: its report is in (the call has ended),
    /// or the child is ending without one, which its reaping tells.
    pub(super) fn report_arrived(&mut self, pid: Pid) {
        let Some(Running::Call(call)) = self.running.get_mut(&pid) else {
            return;
        };
        let Some(report) = read_report(&call.channel, &mut self.report_buf) else {
            call.listening = false;
            return;
        };
        let Some(Running::Call(call)) = self.running.insert(pid, Running::Reported) else {
            return;
        };
        // Not reaped yet, so the pid (and its group) is still this child's.
        let _ = killpg(pid, Signal::SIGKILL);
        self.tell_end(call, reported_status(&report), Some(report));
    }

    /// Tell the parent how `call` ended: its result, then `Exited`.
    fn tell_end(&self, call: Call, status: ExitStatus, report: Option<protocol::Report>) {
        let (outcome, http) = match report {
            Some(r) => (Some(r.outcome), r.http),
            None => (None, None),
        };
        if let Some(file) = call.output {
            output::forward(&self.events, call.process, &file);
        }
        send_event(
            &self.events,
            &Event::Exited {
                process: call.process,
                status,
                outcome,
                http,
            },
        )
    }

    /// Report and reap every child that has ended. Each is looked at first
    /// (`WNOWAIT`) and reaped only after its `Exited` is sent: reaping frees
    /// the child's seccomp filter and Landlock domain, which takes tens of
    /// microseconds the parent need not wait for. A zombie is still this
    /// process's unreaped child, so its pid cannot be reused meanwhile.
    pub(super) fn reap(&mut self) {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let (pid, status) = match waitid(Id::All, peek) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(_) | Err(_) => return,
            };
            self.ended(pid, status);
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
    }

    /// `pid` has ended with `status` (not reaped yet): tell whoever waits.
    fn ended(&mut self, pid: Pid, status: ExitStatus) {
        match self.running.remove(&pid) {
            Some(Running::Call(call)) => {
                // Its report, if it came after this turn's poll: then, as
                // in `report_arrived`, the report decides how it ended.
                let report = read_report(&call.channel, &mut self.report_buf);
                let status = report.as_ref().map_or(status, reported_status);
                self.tell_end(call, status, report)
            }
            Some(Running::Reported) => {}
            Some(Running::Helper(digest)) => self.compiled(&digest, status),
            None if self.template.as_ref().is_some_and(|t| t.pid == pid) => {
                // What it said last (a copy's answer) still counts.
                self.template_said();
                if let Some(t) = &self.template
                    && !t.ready
                {
                    tracing::warn!(
                        pid = pid.as_raw(),
                        ?status,
                        module = %t.key.module.label,
                        "a template process ended before its job was instantiated; forking on demand for a while"
                    );
                    self.template_failed = Some((t.key.clone(), Instant::now()));
                } else if let Some(t) = &self.template {
                    // A ready template is retired (and forgotten) before it
                    // is reaped: this one died on its own, or was killed.
                    tracing::warn!(
                        pid = pid.as_raw(),
                        ?status,
                        module = %t.key.module.label,
                        "a template process died; its calls fork on demand, and another is started"
                    );
                }
                self.retire_template("it ended");
            }
            None => {
                if self.warm.reaped(pid, Instant::now()) {
                    tracing::warn!(
                        pid = pid.as_raw(),
                        ?status,
                        "a pre-forked worker child died waiting; forking on demand for a while"
                    );
                }
            }
        }
    }

    /// A compile helper ended: fork the waiting calls, or fail them.
    fn compiled(&mut self, digest: &str, status: ExitStatus) {
        let Some(c) = self.compiling.remove(digest) else {
            return;
        };
        let (result, waiting) = c.finish(status);
        let loaded = result.and_then(|bytes| {
            let module = waiting
                .first()
                .map(|r| r.module.clone())
                .ok_or((SpawnFailure::Passing, String::new()))?;
            self.load(&module, &bytes)?.map(drop).ok_or_else(|| {
                let why = "the artifact its compile helper stored did not load";
                (SpawnFailure::Passing, why.to_owned())
            })
        });
        match loaded {
            Ok(()) => {
                // First in line, in their order, for the loop to start: a
                // process forked for one of them then finds the others
                // where it lets go of them (`shed_other_calls`), not held
                // here.
                for req in waiting.into_iter().rev() {
                    self.pending.push_front(Command::Spawn(req));
                }
            }
            Err((failure, why)) => {
                tracing::warn!(%digest, %why, ?failure, "compiling a module failed");
                for req in waiting {
                    self.fail(req.process, failure, why.clone());
                }
            }
        }
    }
}
