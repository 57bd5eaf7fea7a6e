//! What the fork server does when a process it started ends (in the fork
//! server process): a worker child's end is reported to the parent with
//! the outcome and result the child left (`Output`, then `Exited`); a
//! compile helper's end loads the module and starts the calls that waited
//! for it, or fails them; a template or a pre-forked child that dies
//! waiting pauses pre-forking for its key ([`super::warm`]).

use super::protocol::{self, Event, ExitStatus, SpawnFailure};
use super::warm::WarmKey;
use super::{Running, Server, output, send_event};
use nix::sys::socket::{MsgFlags, recv};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

/// The one packet a reaped child left on its report channel, if any.
fn read_report(channel: &OwnedFd) -> Option<protocol::Report> {
    let mut buf = vec![0u8; protocol::MAX_EVENT_BYTES];
    match recv(channel.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => protocol::decode_report(&buf[..n]),
        Err(_) => None,
    }
}

impl Server {
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
            Some(Running::Call(process, report, output)) => {
                let (outcome, http) = match read_report(&report) {
                    Some(r) => (Some(r.outcome), r.http),
                    None => (None, None),
                };
                if let Some(file) = output {
                    output::forward(&self.events, process, &file);
                }
                send_event(
                    &self.events,
                    &Event::Exited {
                        process,
                        status,
                        outcome,
                        http,
                    },
                )
            }
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
        let job = result.and_then(|bytes| {
            let module = waiting
                .first()
                .map(|r| r.module.clone())
                .ok_or((SpawnFailure::Passing, String::new()))?;
            self.load(&module, &bytes)?.ok_or_else(|| {
                let why = "the artifact its compile helper stored did not load";
                (SpawnFailure::Passing, why.to_owned())
            })
        });
        match job {
            Ok(job) => {
                for req in waiting {
                    let key = WarmKey::of(&req);
                    self.start_call(req, &key, &job);
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
