//! Template processes: a job instantiated once, before any message, and
//! copied by `fork` for each call. Both sides live here: the fork server's
//! handle on its template ([`Template`], used from [`super::start`]) and the
//! template process itself ([`run_template`]) with its copies.
//!
//! # Why
//! Instantiating a large guest is most of a call's cost: an 18 MB Python
//! component spends milliseconds building its instance (function tables,
//! globals, the first touches of its memory image) before `run` starts, in
//! every fresh child. A template does that once; each call then runs in a
//! copy-on-write copy of an instance nobody has called yet, which is what a
//! fresh instance is. A copy shares nothing with another copy: it has its
//! own memory, output buffers, runtime and timer, and its guest's random
//! numbers come from a generator reseeded from the kernel in the copy
//! (`guest_random::reseed_guest_random`), never from state copied out of the
//! template.
//! What instantiation itself did (the guest's start functions, output they
//! wrote) happened once and is seen, identically, by every copy.
//!
//! # How
//! The fork server forks a template for the key (module, tenant, policy)
//! it expects next ([`super::warm`]). The template first lets go of every
//! other component the fork server has loaded (`Server::shed_other_modules`
//! in [`super::start`]), so its copies carry only their own module's pages,
//! and allocates from then on from a heap of its own, apart from the holes
//! those modules left ([`crate::fresh_heap`]); then it confines itself like a child (limits, Landlock, seccomp:
//! [`super::confine`]), except that its filter lets it `clone` with
//! exactly `CLONE_PARENT | SIGCHLD`;
//! instantiates the job under the policy's timeout; says it is ready; then
//! serves copy requests on its channel. A request carries the copy's own
//! channel (`SCM_RIGHTS`); the template clones, and its answer is the
//! copy's pid. The fork server does not wait for it: it reads answers as
//! they come, adds each copy to the warm pool or hands it the oldest call
//! waiting for one (`Server::copies_arrived` in [`super::start`]). A copy
//! is sent its call only once its pid is known, so a template lost
//! between a clone and its answer costs no call, only a copy that exits
//! when its channel closes. `CLONE_PARENT`
//! makes the copy the fork server's child, not the template's, so the fork
//! server reaps, signals and reads it exactly as a child it forked itself
//! (`Running::Call`). The copy takes a process group, dies with the fork
//! server, adds the child's seccomp filter on top of the template's (which
//! takes `clone`, `setpgid` and `prctl` away again), starts a runtime of its
//! own, and makes the call. Before it says it is ready, the template copies
//! its instance's linear memory (mapped from wasmtime's memory image, which
//! instantiation barely touches) into anonymous huge pages, so a copy reads
//! it without faults ([`crate::hugepages::move_wasm_memories_to_huge_pages`]);
//! a copy never drops its instance: exiting unmaps it cheaper.
//!
//! A template whose instantiation fails dies before it is ready; its key's
//! calls fork on demand for [`super::warm::MAX_AGE`], so the failure reaches
//! a message with its outcome as before. Templates are retired with the warm
//! children's rules: another key expected, older than `MAX_AGE` (its store
//! resolved the policy's names when made), or no spawn for `MAX_AGE`.

use super::child::{
    ChildSetup, Handed, call_of, child_runtime, exit_now, host_error, job_span, leave_fork_server,
    report_and_exit, wait_for_call,
};
use super::confine::{COPY_CLONE_FLAGS, limit_process};
use super::die_with_parent;
use super::fdpass;
use super::warm::WarmKey;
use crate::executor::Instantiated;
use nix::sys::socket::{MsgFlags, recv, send};
use nix::unistd::{Pid, getpid, setpgid};
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// The template's one-byte word that its job is instantiated.
const READY: u8 = b'R';

/// How long a template may take to answer a copy request (a `clone` and a
/// write: about a millisecond at most when healthy) before it is retired.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The fork server's handle on a template process. Copy requests are
/// answered in order; the fork server does not wait for an answer (a
/// clone of a large process takes a few hundred microseconds, in which it
/// serves other commands) but reads answers when the channel is readable
/// ([`Template::read`]).
#[derive(Debug)]
pub(super) struct Template {
    pub(super) pid: Pid,
    pub(super) key: WarmKey,
    channel: OwnedFd,
    pub(super) ready: bool,
    pub(super) since: Instant,
    /// The fork server's ends of the channels of copies asked for and not
    /// answered yet, oldest first, with when each was asked for.
    pending: VecDeque<(OwnedFd, Instant)>,
}

/// What a template said of a copy request (its word that it is ready
/// only sets [`Template::ready`]).
#[derive(Debug)]
pub(super) enum Said {
    /// The copy asked for first is this process, on this channel.
    Copy(Pid, OwnedFd),
    /// It could not make the copy asked for first.
    NoCopy(String),
}

impl Template {
    pub(super) fn new(pid: Pid, key: WarmKey, channel: OwnedFd, since: Instant) -> Self {
        Template {
            pid,
            key,
            channel,
            ready: false,
            since,
            pending: VecDeque::new(),
        }
    }

    pub(super) fn channel(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }

    /// Copies asked for and not answered yet.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest unanswered request is overdue.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.pending.front().map(|(_, at)| *at + ANSWER_TIMEOUT)
    }

    /// Ask for a copy that waits for its call; its pid comes later
    /// ([`Self::read`]). A copy is never sent a call before its pid is
    /// known, so a template lost mid-request loses no call.
    pub(super) fn request(&mut self, now: Instant) -> Result<(), String> {
        let (ours, theirs) = super::new_channel()?;
        fdpass::send(self.channel.as_fd(), &[], Some(theirs.as_fd()))
            .map_err(|e| format!("cannot ask the template for a copy: {e}"))?;
        self.pending.push_back((ours, now));
        Ok(())
    }

    /// Everything the template has said since the last read, without
    /// waiting.
    pub(super) fn read(&mut self) -> Vec<Said> {
        let mut said = Vec::new();
        let mut word = [0u8; 4];
        loop {
            match recv(self.channel.as_raw_fd(), &mut word, MsgFlags::MSG_DONTWAIT) {
                Ok(1) if word[0] == READY && !self.ready => {
                    self.ready = true;
                    tracing::info!(
                        pid = self.pid.as_raw(),
                        module = %self.key.module.label,
                        tenant = %self.key.tenant,
                        "template process ready"
                    );
                }
                Ok(4) => {
                    let Some((ours, _)) = self.pending.pop_front() else {
                        said.push(Said::NoCopy("an answer nobody asked for".into()));
                        continue;
                    };
                    said.push(match i32::from_le_bytes(word) {
                        pid if pid > 0 => {
                            let pid = Pid::from_raw(pid);
                            // Also set the group here, so it exists before
                            // anyone signals it (the copy sets it too).
                            let _ = setpgid(pid, pid);
                            Said::Copy(pid, ours)
                        }
                        errno => Said::NoCopy(format!(
                            "the template could not copy itself: {}",
                            nix::errno::Errno::from_raw(-errno)
                        )),
                    });
                }
                // End of stream: it is gone, and reaping it says so.
                Ok(_) | Err(_) => return said,
            }
        }
    }
}

/// Run as a template process for `c`'s key; never returns.
pub(super) fn run_template(c: ChildSetup<'_>) -> ! {
    leave_fork_server(&c);
    let span = tracing::info_span!("template", module = %c.module, tenant = %c.tenant, pid = getpid().as_raw());
    let entered = span.enter();
    if let Err(e) = limit_process(c.policy.max_memory) {
        host_error("cannot limit the template", &e)
    }
    let store = match c.executor.prepare_store(c.policy) {
        Ok(s) => s,
        Err(e) => host_error("cannot prepare the template's store", &e),
    };
    // Opened now: confinement takes the path away, and the memory to move
    // is only mapped by the instantiation below.
    let maps = std::fs::File::open("/proc/self/maps");
    if let Err(e) = c.confinement.lock_down_template(c.policy) {
        host_error("cannot confine the template", &e)
    }
    if let Err(e) = c.executor.use_timer_signal_ticks() {
        host_error("cannot start the epoch timer", &e)
    }
    // Dropping the runtime joins any blocking thread it started, so this
    // process is single-threaded again before its first copy.
    let instantiated = {
        let runtime = child_runtime();
        runtime.block_on(c.executor.instantiate(c.job, store))
    };
    let _ = crate::engine::pause_tick_timer(true);
    let instance = match instantiated {
        Ok(i) => i,
        Err(report) => {
            // Calls for this key fork on demand and meet this there.
            tracing::debug!(outcome = %report.outcome, "the job does not instantiate; no template");
            exit_now(0)
        }
    };
    // Its linear memory into anonymous huge pages, so copies start with it
    // mapped ([`crate::hugepages`]).
    let moved = maps
        .map_err(crate::hugepages::HugePagesError::Maps)
        .and_then(|mut maps| {
            // SAFETY: this process is single-threaded (its runtime is gone)
            // and no guest code runs until a copy's call.
            unsafe { crate::hugepages::move_wasm_memories_to_huge_pages(&mut maps) }
        });
    match moved {
        Ok(bytes) => tracing::debug!(bytes, "guest memory in huge pages"),
        Err(e) => tracing::debug!(error = %e, "guest memory stays where it is"),
    }
    if send(c.channel.as_raw_fd(), &[READY], MsgFlags::empty()).is_err() {
        exit_now(0)
    }
    drop(entered);
    let mut instance = Some(instance);
    loop {
        let channel = next_request(&c.channel);
        // SAFETY: a raw clone (not the C library's fork) because only the
        // raw call takes CLONE_PARENT; the copy continues on a copy of this
        // stack, as with fork. This process is single-threaded here (its
        // runtime is gone), so no lock is held by a thread the copy lacks.
        // The C library's cached thread id in the copy is this process's,
        // which matters only to its robust-mutex and recursive-lock owner
        // bookkeeping, both consistent within the copy while this process
        // (whose id it is) lives, and the copy dies with the fork server.
        let pid = unsafe { libc::syscall(libc::SYS_clone, COPY_CLONE_FLAGS, 0, 0, 0, 0) };
        match pid {
            0 => {
                let instance = instance.take().expect("the copy's instance");
                run_copy(&c, instance, channel)
            }
            -1 => {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                answer(&c.channel, -errno);
            }
            pid => answer(&c.channel, pid as i32),
        }
    }
}

fn answer(channel: &OwnedFd, word: i32) {
    if send(channel.as_raw_fd(), &word.to_le_bytes(), MsgFlags::empty()).is_err() {
        exit_now(0)
    }
}

/// The next copy request: the copy's channel. End of stream (the fork
/// server retiring this template) exits quietly.
fn next_request(channel: &OwnedFd) -> OwnedFd {
    match fdpass::recv(channel.as_fd(), &mut [0u8; 16]) {
        Ok((_, Some(fd))) => fd,
        Ok((_, None)) => exit_now(0),
        Err(e) => host_error("cannot read a copy request", &e),
    }
}

/// Run as a template's copy: become a child like any other, then make the
/// call on the instance copied from the template.
fn run_copy(c: &ChildSetup<'_>, mut instance: Instantiated, channel: OwnedFd) -> ! {
    // SAFETY: the template's channel is the template's; this process never
    // runs the template's loop again.
    unsafe { libc::close(c.channel.as_raw_fd()) };
    crate::guest_random::reseed_guest_random();
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    die_with_parent(c.fork_server);
    if let Err(e) = c.confinement.lock_down_copy() {
        host_error("cannot confine the worker child", &e)
    }
    let pid = getpid().as_raw();
    let runtime = child_runtime();
    let _in_runtime = runtime.enter();
    let Handed { handover, output } = wait_for_call(&channel);
    let span = job_span(c.module, c.tenant, &handover, pid);
    let _entered = span.enter();
    if let Err(e) = crate::engine::pause_tick_timer(false) {
        host_error("cannot start the epoch timer", &e)
    }
    instance.set_traceparent(handover.trace.traceparent());
    let report = runtime.block_on(instance.call(&handover.message, call_of(&handover)));
    report_and_exit(&channel, report, output)
}
