//! How the fork server starts a call (in the fork server process): hand it
//! to a warm child set up for its module, tenant and policy, else start a
//! child for it; and keep the pool of warm children topped up as
//! [`super::warm`] decides. Children for the expected key are copies of its
//! template process when that is ready ([`super::template`]), else forked
//! here. A forked child closes every descriptor of the
//! fork server's but its own channel before it runs ([`super::child`]).

use super::protocol::{self, Event, Handover, Spawn, SpawnFailure};
use super::template::{self, Template};
use super::warm::{MAX_AGE, Warm, WarmKey};
use super::{Running, Server, child, send_event};
use crate::executor::LoadedJob;
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, send};
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
        self.keep_template(now);
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

    /// Keep a template process for the key the pool expects: retire one
    /// kept for another key or past [`MAX_AGE`], start one when none is
    /// there (unless the last for this key died before it was ready, less
    /// than [`MAX_AGE`] ago).
    fn keep_template(&mut self, now: Instant) {
        let expected = self.warm.expected(now).cloned();
        if let Some(t) = &self.template
            && (Some(&t.key) != expected.as_ref() || now >= t.since + MAX_AGE)
        {
            // Not reaped yet, so the pid is still the template's.
            let _ = nix::sys::signal::kill(t.pid, Signal::SIGKILL);
            self.template = None;
        }
        let Some(key) = expected else { return };
        let failed = self
            .template_failed
            .as_ref()
            .is_some_and(|(k, when)| *k == key && now < *when + MAX_AGE);
        if self.template.is_some() || failed {
            return;
        }
        let Some(job) = self.modules.get(&key.module.digest).map(Rc::clone) else {
            return;
        };
        match self.fork_process(&key, &job, Role::Template) {
            Ok((pid, channel)) => self.template = Some(Template::new(pid, key, channel, now)),
            Err(why) => tracing::warn!(%why, "cannot start a template process"),
        }
    }

    /// A worker child for `key`, for `handed` or to wait for its call: a
    /// copy of the template kept for `key` if it is ready, else forked here.
    fn fork_child(
        &mut self,
        key: &WarmKey,
        job: &LoadedJob,
        handed: Option<Handover>,
    ) -> Result<(Pid, OwnedFd), String> {
        if let Some(t) = self.template.as_mut()
            && t.key == *key
            && t.is_ready()
        {
            match t.copy(handed.as_ref()) {
                Ok(copy) => return Ok(copy),
                Err(why) => {
                    tracing::warn!(%why, pid = t.pid.as_raw(), "a template failed; retiring it");
                    let _ = nix::sys::signal::kill(t.pid, Signal::SIGKILL);
                    self.template = None;
                }
            }
        }
        self.fork_process(key, job, Role::Call(handed))
    }

    /// Fork a process for `key` in `role`.
    fn fork_process(
        &self,
        key: &WarmKey,
        job: &LoadedJob,
        role: Role,
    ) -> Result<(Pid, OwnedFd), String> {
        let me = getpid();
        let (ours, theirs) = super::new_channel()?;
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
                let setup = child::ChildSetup {
                    fork_server: me,
                    job,
                    module: &key.module.label,
                    tenant: &key.tenant,
                    executor: &self.executor,
                    policy: &key.policy,
                    confinement: &self.confinement,
                    channel: theirs,
                    close,
                };
                match role {
                    Role::Call(handed) => child::run_child(setup, handed),
                    Role::Template => template::run_template(setup),
                }
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
        let template = self.template.as_ref().map(Template::channel);
        running.chain(self.warm.channels()).chain(template)
    }
}

/// What a process forked by the fork server becomes.
enum Role {
    /// A worker child: for this call, or to wait for one.
    Call(Option<Handover>),
    /// A template process ([`super::template`]).
    Template,
}
