//! How the fork server starts a call (in the fork server process): hand it
//! to a warm child set up for its module, tenant and policy, else start a
//! child for it; and keep the pool of warm children topped up as
//! [`super::warm`] decides. Children for the expected key are copies of its
//! template process when that is ready ([`super::template`]), else forked
//! here. A forked child closes every descriptor of the
//! fork server's but its own channel before it runs ([`super::child`]).

use super::output::OutputFile;
use super::protocol::{self, Event, Handover, Spawn, SpawnFailure};
use super::template::{self, Said, Template};
use super::warm::{MAX_AGE, Warm, WarmKey};
use super::{Call, Running, Server, child, fdpass, send_event};
use crate::executor::LoadedJob;
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid, fork, getpid};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

impl Server {
    /// Hand the call to a warm child set up for it; else, when the
    /// template for its key is ready, to the next copy it makes; else fork
    /// one for it.
    pub(super) fn start_call(&mut self, req: Spawn, key: &WarmKey, job: &LoadedJob) {
        let handover = Handover {
            process: req.process,
            message: req.message,
            call: req.call,
            trace: req.trace,
        };
        let output = if job.publishes_output {
            match OutputFile::new(key.policy.max_job_output) {
                Ok(file) => Some(file),
                Err(why) => return self.fail(handover.process, SpawnFailure::Passing, why),
            }
        } else {
            None
        };
        let call = Assigned { handover, output };
        if let Some(packet) = protocol::encode_handover(&call.handover) {
            if let Some(w) = self.warm.take(key) {
                match call.send(&w.channel, &packet) {
                    Ok(()) => return self.started(call, w.pid, w.channel, true),
                    Err(e) => {
                        // It died waiting; reaping it is a no-op now.
                        tracing::debug!(pid = w.pid.as_raw(), error = %e, "a warm child is gone");
                        let _ = nix::sys::signal::kill(w.pid, Signal::SIGKILL);
                    }
                }
            }
            if let Some(t) = self.template.as_mut()
                && t.ready
                && t.key == *key
            {
                // One more copy than the calls already waiting for one.
                if t.pending() > self.awaiting_copy.len() || t.request(Instant::now()).is_ok() {
                    self.awaiting_copy.push_back(call);
                    return;
                }
                self.retire_template("it takes no more requests");
            }
        }
        self.fork_for(call, key, job);
    }

    fn started(&mut self, call: Assigned, pid: Pid, channel: OwnedFd, warm: bool) {
        let process = call.handover.process;
        let tracked = Call {
            process,
            channel,
            output: call.output,
            listening: true,
        };
        self.running.insert(pid, Running::Call(tracked));
        send_event(
            &self.events,
            &Event::Started {
                process,
                pid: pid.as_raw(),
                warm,
            },
        );
    }

    /// Retire what the pool no longer wants and fork (or ask the template
    /// for) what it does.
    pub(super) fn top_up(&mut self) {
        let busy = self
            .running
            .values()
            .filter(|r| matches!(r, Running::Call(_)))
            .count();
        let now = Instant::now();
        self.keep_template(now);
        let plan = self.warm.plan(busy, now);
        for pid in plan.retire {
            // Not reaped yet, so the pid is still this child's.
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        // Copies on their way count as already there.
        let coming = self
            .template
            .as_ref()
            .map_or(0, |t| t.pending().saturating_sub(self.awaiting_copy.len()));
        let fork = plan.fork.saturating_sub(coming);
        // The usual case on this loop's every turn: nothing to fork, so no
        // key (module, tenant, policy) to copy.
        if fork == 0 {
            return;
        }
        let Some(key) = self.warm.expected(now).cloned() else {
            return;
        };
        if let Some(t) = self.template.as_mut()
            && t.ready
            && t.key == key
        {
            for _ in 0..fork {
                if let Err(why) = t.request(now) {
                    tracing::warn!(%why, "cannot ask the template for a copy");
                    return self.retire_template("it takes no more requests");
                }
            }
            return;
        }
        let Some(job) = self.modules.get(&key.module.digest) else {
            return;
        };
        for _ in 0..fork {
            match self.fork_process(&key, &job, Role::Call(None)) {
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

    /// The template said something: it is ready, or a copy it was asked
    /// for is there (handed the oldest call waiting for one, else added to
    /// the pool), or it could not make one (it is retired).
    pub(super) fn template_said(&mut self) {
        let Some(t) = self.template.as_mut() else {
            return;
        };
        let key = t.key.clone();
        let now = Instant::now();
        for said in t.read() {
            match said {
                Said::Copy(pid, channel) => match self.awaiting_copy.pop_front() {
                    Some(h) => self.hand_to_copy(h, pid, channel, &key),
                    None => self.warm.add(Warm {
                        pid,
                        key: key.clone(),
                        channel,
                        since: now,
                    }),
                },
                Said::NoCopy(why) => {
                    tracing::warn!(%why, "a template could not copy itself");
                    self.retire_template("it could not copy itself");
                }
            }
        }
    }

    fn hand_to_copy(&mut self, call: Assigned, pid: Pid, channel: OwnedFd, key: &WarmKey) {
        let sent = protocol::encode_handover(&call.handover)
            .is_some_and(|p| call.send(&channel, &p).is_ok());
        if sent {
            return self.started(call, pid, channel, false);
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        match self.modules.get(&key.module.digest) {
            Some(job) => self.fork_for(call, key, &job),
            None => self.fail(
                call.handover.process,
                SpawnFailure::Passing,
                "module unloaded".into(),
            ),
        }
    }

    /// Fork a child for `call` now: it inherits the call and its result file.
    fn fork_for(&mut self, call: Assigned, key: &WarmKey, job: &LoadedJob) {
        let handed = child::Handed {
            handover: call.handover.clone(),
            output: None,
        };
        let output = call.output.as_ref().map(|f| f.fd().as_raw_fd());
        match self.fork_process(key, job, Role::Call(Some(Box::new((handed, output))))) {
            Ok((pid, channel)) => self.started(call, pid, channel, false),
            Err(why) => self.fail(call.handover.process, SpawnFailure::Passing, why),
        }
    }

    /// Kill the template (not reaped yet, so its pid is still its own) and
    /// fork on demand for the calls that waited for its copies. Copies it
    /// made but did not answer for exit when their channels close here.
    pub(super) fn retire_template(&mut self, why: &str) {
        let Some(t) = self.template.take() else {
            return;
        };
        tracing::debug!(pid = t.pid.as_raw(), why, "retiring a template process");
        let _ = nix::sys::signal::kill(t.pid, Signal::SIGKILL);
        let job = self.modules.get(&t.key.module.digest);
        // One at a time: the others stay in `awaiting_copy`, where a process
        // forked for this one lets go of them (`shed_other_calls`).
        while let Some(call) = self.awaiting_copy.pop_front() {
            match &job {
                Some(job) => self.fork_for(call, &t.key, job),
                None => self.fail(
                    call.handover.process,
                    SpawnFailure::Passing,
                    "module unloaded".into(),
                ),
            }
        }
    }

    /// Keep a template process for the key the pool expects: retire one
    /// kept for another key or past [`MAX_AGE`] (once it owes no answer),
    /// or one overdue with an answer; start one when none is there (unless
    /// the last for this key died before it was ready, less than
    /// [`MAX_AGE`] ago).
    fn keep_template(&mut self, now: Instant) {
        let expected = self.warm.expected(now).cloned();
        if let Some(t) = &self.template {
            if t.deadline().is_some_and(|d| d <= now) {
                tracing::warn!(
                    pid = t.pid.as_raw(),
                    "a template did not answer; retiring it"
                );
                self.retire_template("it did not answer");
            } else if t.pending() == 0
                && (Some(&t.key) != expected.as_ref() || now >= t.since + MAX_AGE)
            {
                self.retire_template("another key is expected, or it is old");
            }
        }
        let Some(key) = expected else { return };
        let failed = self
            .template_failed
            .as_ref()
            .is_some_and(|(k, when)| *k == key && now < *when + MAX_AGE);
        if self.template.is_some() || failed {
            return;
        }
        let Some(job) = self.modules.get(&key.module.digest) else {
            return;
        };
        match self.fork_process(&key, &job, Role::Template) {
            Ok((pid, channel)) => self.template = Some(Template::new(pid, key, channel, now)),
            Err(why) => tracing::warn!(%why, "cannot start a template process"),
        }
    }

    /// Fork a process for `key` in `role`. `job` must not be borrowed
    /// from the loaded components: a template lets go of those.
    fn fork_process(
        &mut self,
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
                super::shed_other_calls(
                    &mut self.pending,
                    &mut self.awaiting_copy,
                    &mut self.compiling,
                );
                if matches!(role, Role::Template) {
                    self.shed_other_modules();
                }
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
                    Role::Call(handed) => child::run_child(setup, handed.map(|h| inherit(*h))),
                    Role::Template => template::run_template(setup),
                }
            }
            Err(e) => Err(format!("fork failed: {e}")),
        }
    }

    /// In a new template process: let go of every loaded component (its
    /// own job is held by the caller of [`Self::fork_process`]) and hand
    /// the memory they held back to the kernel. Every copy inherits the
    /// template's page tables, and every fork copies and every exit drops
    /// them: with a Python and a JavaScript component loaded beside a
    /// trivial one, the trivial job's template held 5,600 small pages (14
    /// MB of the components' metadata on the heap, the unaligned ends of
    /// their code), and each of its calls cost 2,990 µs of CPU; letting go
    /// leaves 200 pages and 1,540 µs. A copy runs only its own module.
    fn shed_other_modules(&mut self) {
        self.modules.clear();
        // SAFETY: glibc's `malloc_trim` only returns free heap pages to the
        // kernel; this process is single-threaded, so no other thread is
        // inside the allocator.
        unsafe { libc::malloc_trim(0) };
        // What the template and its copies allocate from now on goes on
        // pages of its own, not into the holes those components left.
        if let Err(e) = crate::fresh_heap::start() {
            tracing::warn!(error = %e, "template: allocating from the fork server's heap");
        }
    }

    /// The fork server's end of every child's channel, and every result
    /// file: what no new child may hold.
    pub(super) fn channels(&self) -> impl Iterator<Item = RawFd> + '_ {
        let running = self.running.values().flat_map(|r| match r {
            Running::Call(c) => {
                vec![
                    Some(c.channel.as_raw_fd()),
                    c.output.as_ref().map(|f| f.fd().as_raw_fd()),
                ]
            }
            Running::Reported | Running::Helper(_) => Vec::new(),
        });
        let awaiting = self
            .awaiting_copy
            .iter()
            .map(|c| c.output.as_ref().map(|f| f.fd().as_raw_fd()));
        let template = self.template.as_ref().map(|t| t.channel().as_raw_fd());
        running
            .chain(awaiting)
            .flatten()
            .chain(self.warm.channels())
            .chain(template)
    }
}

/// A call the fork server has taken on: its handover and, when the job
/// publishes results, its result file (the fork server keeps its end).
pub(super) struct Assigned {
    handover: Handover,
    output: Option<OutputFile>,
}

impl Assigned {
    /// Send the encoded handover to a waiting child, with the result file.
    fn send(&self, channel: &OwnedFd, packet: &[u8]) -> nix::Result<()> {
        let output = self.output.as_ref().map(|f| f.fd());
        fdpass::send(channel.as_fd(), packet, output).map(drop)
    }
}

/// In a child forked for a call: take ownership of the inherited result file.
fn inherit((mut handed, output): (child::Handed, Option<RawFd>)) -> child::Handed {
    // SAFETY: the fork server made this descriptor for this call; the child
    // inherited it and is the only one here that uses it.
    handed.output = output.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    handed
}

/// What a process forked by the fork server becomes.
enum Role {
    /// A worker child: for this call (and the descriptor of its inherited
    /// result file), or to wait for one.
    Call(Option<Box<(child::Handed, Option<RawFd>)>>),
    /// A template process ([`super::template`]).
    Template,
}
