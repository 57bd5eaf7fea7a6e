//! How the fork server starts a call (in the fork server process): hand it
//! to a warm child set up for its module, tenant and policy, else fork a
//! child for it; and keep the pool of warm children topped up as
//! [`super::warm`] decides. A forked child closes every descriptor of the
//! fork server's but its own channel before it runs ([`super::child`]).

use super::protocol::{self, Event, Handover, Spawn, SpawnFailure};
use super::warm::{Warm, WarmKey};
use super::{Running, Server, child, send_event};
use crate::executor::LoadedJob;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, send, socketpair};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

impl Server {
    /// Hand the call to a warm child set up for it, else fork one for it.
    pub(super) fn start_call(&mut self, req: Spawn, key: &WarmKey, job: &LoadedJob) {
        let handover = Handover {
            process: req.process,
            message: req.message,
            call: req.call,
        };
        if let Some(packet) = protocol::encode_handover(&handover)
            && let Some(w) = self.warm.take(key)
        {
            match send(w.channel.as_raw_fd(), &packet, MsgFlags::MSG_DONTWAIT) {
                Ok(_) => return self.started(handover.process, w.pid, w.channel, true),
                Err(e) => {
                    // It died waiting; reaping it is a no-op now.
                    tracing::debug!(pid = w.pid.as_raw(), error = %e, "a warm child is gone");
                    let _ = nix::sys::signal::kill(w.pid, Signal::SIGKILL);
                }
            }
        }
        let process = handover.process;
        match self.fork_child(key, job, Some(handover)) {
            Ok((pid, channel)) => self.started(process, pid, channel, false),
            Err(why) => self.fail(process, SpawnFailure::Passing, why),
        }
    }

    fn started(&mut self, process: u64, pid: Pid, channel: OwnedFd, warm: bool) {
        self.running.insert(pid, Running::Call(process, channel));
        send_event(
            &self.events,
            &Event::Started {
                process,
                pid: pid.as_raw(),
                warm,
            },
        );
    }

    /// Retire what the pool no longer wants and fork what it does.
    pub(super) fn top_up(&mut self) {
        let busy = self
            .running
            .values()
            .filter(|r| matches!(r, Running::Call(..)))
            .count();
        let now = Instant::now();
        let plan = self.warm.plan(busy, now);
        for pid in plan.retire {
            // Not reaped yet, so the pid is still this child's.
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        // The usual case on this loop's every turn: nothing to fork, so no
        // key (module, tenant, policy) to copy.
        if plan.fork == 0 {
            return;
        }
        let Some(key) = self.warm.expected(now).cloned() else {
            return;
        };
        let Some(job) = self.modules.get(&key.module.digest).map(Rc::clone) else {
            return;
        };
        for _ in 0..plan.fork {
            match self.fork_child(&key, &job, None) {
                Ok((pid, channel)) => self.warm.add(Warm {
                    pid,
                    key: key.clone(),
                    channel,
                    since: now,
                }),
                Err(why) => {
                    tracing::warn!(%why, "cannot pre-fork a worker child");
                    return;
                }
            }
        }
    }

    /// Fork a worker child for `key`: for `handed`, or to wait for its call.
    fn fork_child(
        &self,
        key: &WarmKey,
        job: &LoadedJob,
        handed: Option<Handover>,
    ) -> Result<(Pid, OwnedFd), String> {
        let me = getpid();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("cannot make a channel: {e}"))?;
        // SAFETY: this process is single-threaded (see module docs).
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                drop(theirs);
                // Also set the group here, so it exists before anyone signals it.
                let _ = nix::unistd::setpgid(child, child);
                Ok((child, ours))
            }
            Ok(ForkResult::Child) => {
                let mut close: Vec<RawFd> = vec![
                    self.commands.as_raw_fd(),
                    self.sigfd.as_raw_fd(),
                    self.events.as_raw_fd(),
                    ours.as_raw_fd(),
                ];
                close.extend(self.channels());
                child::run_child(
                    child::ChildSetup {
                        fork_server: me,
                        job,
                        module: &key.module.label,
                        tenant: &key.tenant,
                        executor: &self.executor,
                        policy: &key.policy,
                        confinement: &self.confinement,
                        channel: theirs,
                        close,
                    },
                    handed,
                )
            }
            Err(e) => Err(format!("fork failed: {e}")),
        }
    }

    /// The fork server's end of every child's channel.
    pub(super) fn channels(&self) -> impl Iterator<Item = RawFd> + '_ {
        let running = self.running.values().filter_map(|r| match r {
            Running::Call(_, fd) => Some(fd.as_raw_fd()),
            Running::Helper(_) => None,
        });
        running.chain(self.warm.channels())
    }
}
