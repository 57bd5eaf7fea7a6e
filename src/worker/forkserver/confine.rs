//! What the fork server and each worker child give up, below wasmtime's own
//! sandbox. Built once in the fork server ([`Confinement::new`]: the seccomp
//! programs are compiled there, Landlock support is probed and logged once).
//!
//! The fork server confines itself once it is ready
//! ([`Confinement::confine_fork_server`]): a seccomp allow-list of what it,
//! its compile helpers and its children need, plus a filter that answers
//! `clone3` with ENOSYS (so the C library falls back to `clone`, whose flags
//! a filter can read). Filters are inherited across `fork` for free, so no
//! child pays for them; installing one costs time linear in its length (the
//! kernel emulates it for every system call number), about 0.6 ms for the
//! allow-list on the project's machine. Each child then adds, in two steps:
//!
//! 1. [`limit_process`], first thing after the fork: `no_new_privs`, no core
//!    dumps, bounded open files and file sizes, and a data-size backstop
//!    (`RLIMIT_DATA`) above the job's memory limit.
//! 2. [`Confinement::lock_down`], after the call is prepared (granted
//!    directories opened, allowed host names resolved) and before the guest
//!    is instantiated: Landlock, then a short seccomp filter that takes away
//!    what only the fork server needs. From then on the child needs no path
//!    outside the tenant's directories and no name lookup.
//!
//! Landlock limits the filesystem to the tenant's granted directories (read
//! only or read-write, as granted; the module's compiled code is already
//! mapped, so not even its file is needed), TCP `connect` to the granted
//! ports, `bind` to an ephemeral port, and, on kernels with scoping, signals
//! and abstract Unix sockets to the child itself.
//!
//! What a child may then do is the allow-list less the child's filter:
//! memory without new executable mappings, threads but no new processes, no
//! signals to other processes, files through already-open descriptors, TCP
//! and the runtime's own plumbing. Anything else kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`, seen as SIGSYS): the parent handles a
//! child's message like any killed worker, and a fork server that dies is
//! replaced. The lists were taken from `strace` of a worker running every
//! example guest and hostile fixture (files, sockets, output floods, memory
//! bombs, exits) with fresh compiles.

use crate::sandbox::{NetworkPolicy, SandboxPolicy};
use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;

/// Descriptors a child may open beyond those it inherits (the guest's open
/// files, sockets and preopens, plus the runtime's own). It inherits one
/// per module the fork server has loaded: wasmtime keeps each artifact's
/// file open for its copy-on-write memory images.
const MAX_OPEN_FILES: u64 = 256;
/// Largest file a child may write (into a read-write preopen).
const MAX_FILE_SIZE: u64 = 1 << 30;
/// What the data-size backstop allows above the fork server's own data and
/// the job's memory limit: room for the runtime's and wasmtime's bookkeeping,
/// which the memory limiter does not count (a trivial job uses ~2 MiB).
const DATA_HEADROOM: u64 = 128 << 20;

/// The Landlock ABI this code asks for; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Why a child could not be confined. The child exits with a host error and
/// the message is left for another try.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfineError {
    #[error("setting process limits: {0}")]
    Limits(#[from] nix::Error),
    #[error("Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("Landlock: {0}")]
    LandlockPath(#[from] landlock::PathFdError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("reading this process's data size: {0}")]
    Status(std::io::Error),
}

/// The fork server's prepared confinement, for itself and its children.
pub(crate) struct Confinement {
    /// What each child adds to the fork server's filters.
    child: BpfProgram,
}

impl Confinement {
    /// Compile the seccomp programs and probe Landlock (logged once here,
    /// not per child).
    pub(crate) fn new() -> Result<Self, ConfineError> {
        match landlock_support() {
            Some(abi) => tracing::info!(abi, "Landlock confines worker children"),
            None => tracing::warn!(
                "this kernel has no Landlock: worker children are not confined to their tenant's directories (seccomp and the WASI sandbox still apply)"
            ),
        }
        Ok(Confinement {
            child: child_filter()?,
        })
    }

    /// Install the `clone3` filter, then the allow-list, on this
    /// single-threaded fork server (in this order: installing a filter
    /// calls `prctl`, which the allow-list restricts in children only, but
    /// the `clone3` filter must be first to answer before it).
    pub(crate) fn confine_fork_server(&self) -> Result<(), ConfineError> {
        for filter in [clone3_enosys()?, allow_list()?] {
            seccompiler::apply_filter_all_threads(&filter)?;
        }
        Ok(())
    }

    /// Landlock, then the child's filter, on this (single-threaded) child.
    /// The tokio runtime's blocking threads start later and inherit both.
    pub(crate) fn lock_down(&self, policy: &SandboxPolicy) -> Result<(), ConfineError> {
        landlock_tenant(policy)?;
        seccompiler::apply_filter_all_threads(&self.child)?;
        Ok(())
    }
}

/// The running kernel's Landlock ABI version, if it has Landlock.
fn landlock_support() -> Option<i32> {
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the
    // VERSION flag only returns the ABI version (or an error); no memory is
    // read or written.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    (v > 0).then_some(v as i32)
}

/// Restrict this child to the tenant's directories and granted ports.
fn landlock_tenant(policy: &SandboxPolicy) -> Result<RulesetStatus, ConfineError> {
    let abi = LANDLOCK_ABI;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    for p in &policy.preopens {
        let access = if p.read_only {
            AccessFs::from_read(abi)
        } else {
            AccessFs::from_all(abi)
        };
        let fd = PathFd::new(&p.host_path)?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    // An ephemeral local port for outgoing connections (`bind` to port 0).
    ruleset = ruleset.add_rule(NetPort::new(0, AccessNet::BindTcp))?;
    if let NetworkPolicy::AllowList(targets) = &policy.network {
        for t in targets {
            ruleset = ruleset.add_rule(NetPort::new(t.port, AccessNet::ConnectTcp))?;
        }
    }
    Ok(ruleset.restrict_self()?.ruleset)
}

/// First thing in a child: no privilege can be gained through exec
/// (`no_new_privs`, which seccomp and Landlock also need), no core dump (it
/// would hold the guest's memory and the fork server's), bounded open files
/// and file sizes, and a data-size backstop in case a guest finds a way
/// around the memory limiter. The backstop counts writable private memory
/// (`RLIMIT_DATA`, not `RLIMIT_AS`, which wasmtime's multi-GiB address
/// reservations would hit at once): what the fork server already had, plus
/// the job's memory limit, plus [`DATA_HEADROOM`].
pub(crate) fn limit_process(max_memory: u64) -> Result<(), ConfineError> {
    use nix::sys::resource::{Resource, setrlimit};
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integers and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(nix::Error::last().into());
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    let files = open_files_limit(highest_open_fd().map_err(ConfineError::Status)?);
    setrlimit(Resource::RLIMIT_NOFILE, files, files)?;
    setrlimit(Resource::RLIMIT_FSIZE, MAX_FILE_SIZE, MAX_FILE_SIZE)?;
    let data = data_size_limit(current_data_size()?, max_memory);
    setrlimit(Resource::RLIMIT_DATA, data, data)?;
    Ok(())
}

/// `RLIMIT_NOFILE` for a process whose highest open descriptor is `highest`
/// (a limit is on descriptor numbers, so it must clear the inherited ones).
fn open_files_limit(highest: u64) -> u64 {
    highest + 1 + MAX_OPEN_FILES
}

/// The highest descriptor number open in this process.
fn highest_open_fd() -> Result<u64, std::io::Error> {
    let mut highest = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            highest = highest.max(fd);
        }
    }
    Ok(highest)
}

/// The backstop for a process that already has `current` bytes of data.
fn data_size_limit(current: u64, max_memory: u64) -> u64 {
    current
        .saturating_add(max_memory)
        .saturating_add(DATA_HEADROOM)
}

/// `VmData` of this process: the private writable memory `RLIMIT_DATA` counts.
fn current_data_size() -> Result<u64, ConfineError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(ConfineError::Status)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| ConfineError::Status(std::io::Error::other("no VmData line")))
}

/// Allowed with any arguments.
#[rustfmt::skip]
const ANY_ARGS: &[i64] = &[
    // memory (mmap and mprotect: see FORK_SERVER_ONLY and child_filter)
    libc::SYS_brk, libc::SYS_munmap, libc::SYS_mremap, libc::SYS_madvise,
    // threads of this process, signals, time
    libc::SYS_futex, libc::SYS_set_robust_list, libc::SYS_rseq, libc::SYS_gettid,
    libc::SYS_getpid, libc::SYS_sched_getaffinity, libc::SYS_sched_yield,
    libc::SYS_exit, libc::SYS_exit_group, libc::SYS_restart_syscall,
    libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack, libc::SYS_setitimer, libc::SYS_getitimer,
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep, libc::SYS_gettimeofday, libc::SYS_getrandom,
    libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid,
    // descriptors the process holds, and files beneath granted directories
    // (Landlock decides which paths)
    libc::SYS_read, libc::SYS_write, libc::SYS_readv, libc::SYS_writev,
    libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_preadv, libc::SYS_pwritev,
    libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_lseek, libc::SYS_close,
    libc::SYS_fstat, libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_fstatfs,
    libc::SYS_fcntl, libc::SYS_dup, libc::SYS_dup3, libc::SYS_pipe2,
    libc::SYS_openat, libc::SYS_openat2, libc::SYS_getdents64,
    libc::SYS_mkdirat, libc::SYS_unlinkat, libc::SYS_renameat, libc::SYS_renameat2,
    libc::SYS_linkat, libc::SYS_symlinkat, libc::SYS_readlinkat, libc::SYS_faccessat,
    libc::SYS_faccessat2, libc::SYS_utimensat, libc::SYS_fsync, libc::SYS_fdatasync,
    libc::SYS_ftruncate, libc::SYS_fallocate, libc::SYS_fadvise64,
    libc::SYS_epoll_create1, libc::SYS_epoll_ctl, libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2, libc::SYS_eventfd2, libc::SYS_ppoll,
    // TCP (the WASI layer allows only granted addresses; Landlock only their ports)
    libc::SYS_connect, libc::SYS_bind, libc::SYS_getsockname, libc::SYS_getpeername,
    libc::SYS_getsockopt, libc::SYS_setsockopt, libc::SYS_sendto, libc::SYS_recvfrom,
    libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_shutdown,
];

/// Allowed with any arguments to the fork server and its compile helpers;
/// [`child_filter`] takes the dangerous ones (and some arguments of
/// `mmap`, `mprotect`, `clone` and `prctl`) away from children. Loading a
/// module maps executable code; forking, reaping, signalling, limits,
/// memory files and the confinement calls themselves are the fork server's.
#[rustfmt::skip]
const FORK_SERVER_ONLY: &[i64] = &[
    libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_clone, libc::SYS_prctl,
    libc::SYS_wait4, libc::SYS_waitid, libc::SYS_kill, libc::SYS_setpgid, libc::SYS_getppid,
    libc::SYS_signalfd4, libc::SYS_memfd_create, libc::SYS_prlimit64,
    libc::SYS_set_tid_address, libc::SYS_umask,
    libc::SYS_seccomp, libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_add_rule, libc::SYS_landlock_restrict_self,
];

/// Allowed with any arguments on x86_64 only (older calls aarch64 lacks).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ANY_ARGS_X86_64: &[i64] = &[
    libc::SYS_epoll_wait, libc::SYS_poll, libc::SYS_arch_prctl, libc::SYS_access,
    libc::SYS_dup2,
    // the C library's path calls here (the cache's create_dir_all, rename
    // and unlink), equivalents of the *at calls above
    libc::SYS_open, libc::SYS_stat, libc::SYS_lstat, libc::SYS_mkdir, libc::SYS_rmdir,
    libc::SYS_rename, libc::SYS_unlink, libc::SYS_link, libc::SYS_symlink,
    libc::SYS_readlink,
];
#[cfg(not(target_arch = "x86_64"))]
const ANY_ARGS_X86_64: &[i64] = &[];

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    Ok(SeccompCondition::new(arg, Len::Qword, op, value)?)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::Error> {
    Ok(SeccompRule::new(conditions)?)
}

fn arch() -> Result<seccompiler::TargetArch, seccompiler::Error> {
    Ok(std::env::consts::ARCH.try_into()?)
}

/// The fork server's allow-list (its helpers' and children's too);
/// anything else kills the process.
fn allow_list() -> Result<BpfProgram, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ANY_ARGS
        .iter()
        .chain(ANY_ARGS_X86_64)
        .chain(FORK_SERVER_ONLY)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // clone3's flags are behind a pointer; the other filter answers ENOSYS.
    rules.insert(libc::SYS_clone3, Vec::new());
    let mut sockets = Vec::new();
    for domain in [libc::AF_INET, libc::AF_INET6] {
        sockets.push(rule(vec![
            cond(0, Op::Eq, domain as u64)?,
            cond(1, Op::MaskedEq(0xf), libc::SOCK_STREAM as u64)?,
        ])?);
    }
    rules.insert(libc::SYS_socket, sockets);
    rules.insert(
        libc::SYS_socketpair,
        vec![rule(vec![cond(0, Op::Eq, libc::AF_UNIX as u64)?])?],
    );
    let ioctls: [u64; 4] = [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::FIONREAD];
    rules.insert(
        libc::SYS_ioctl,
        ioctls
            .iter()
            .map(|&req| rule(vec![cond(1, Op::Eq, req)?]))
            .collect::<Result<_, _>>()?,
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// What a child gives up of the fork server's allow-list: new processes,
/// new executable memory, signals to other processes, waiting, process
/// groups, limits, memory files and every `prctl` but naming a thread.
fn child_filter() -> Result<BpfProgram, seccompiler::Error> {
    let exec = || {
        cond(
            2,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            libc::PROT_EXEC as u64,
        )
    };
    let thread = libc::CLONE_THREAD as u64;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_kill,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_setpgid,
        libc::SYS_signalfd4,
        libc::SYS_memfd_create,
        libc::SYS_prlimit64,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    rules.insert(libc::SYS_mmap, vec![rule(vec![exec()?])?]);
    rules.insert(libc::SYS_mprotect, vec![rule(vec![exec()?])?]);
    // Threads only: a new process could escape the parent's accounting.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, Op::MaskedEq(thread), 0)?])?],
    );
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![cond(0, Op::Ne, libc::PR_SET_NAME as u64)?])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// `clone3` answers ENOSYS; everything else passes to the allow-list.
fn clone3_enosys() -> Result<BpfProgram, seccompiler::Error> {
    let filter = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Preopen;
    use nix::sys::signal::Signal;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    /// Run `f` in a forked, confined child; how did the child end?
    fn in_confined_child(policy: &SandboxPolicy, f: impl FnOnce() -> i32) -> WaitStatus {
        let c = Confinement::new().unwrap();
        // SAFETY: the test harness is multi-threaded; the child allocates
        // (glibc's fork resets its allocator locks in the child) and takes
        // no other lock a vanished thread could hold before it _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // As in a worker: the fork server's filters, then the child's.
                let code = match c
                    .confine_fork_server()
                    .and_then(|()| limit_process(policy.max_memory))
                    .and_then(|()| c.lock_down(policy))
                {
                    Ok(()) => f(),
                    Err(_) => 99,
                };
                // SAFETY: _exit ends the child without running the test
                // harness's destructors.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    /// A name and a raw system call the allow-list refuses.
    type Forbidden = (&'static str, fn() -> i64);

    #[test]
    fn forbidden_syscalls_kill_the_child() {
        let forbidden: [Forbidden; 4] = [
            // SAFETY (all): raw syscalls whose arguments point at nothing.
            ("ptrace", || unsafe {
                libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0)
            }),
            ("kill", || unsafe { libc::syscall(libc::SYS_kill, 1, 0) }),
            ("fork", || unsafe {
                libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0)
            }),
            ("listen", || unsafe {
                libc::syscall(libc::SYS_listen, 0, 1)
            }),
        ];
        for (name, call) in forbidden {
            let status = in_confined_child(&SandboxPolicy::default(), || {
                call();
                0
            });
            assert!(
                matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                "{name}: {status:?}"
            );
        }
    }

    #[test]
    fn the_fork_server_itself_can_still_fork_reap_and_map_code() {
        let c = Confinement::new().unwrap();
        // SAFETY: as in `in_confined_child`.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let ok = c.confine_fork_server().is_ok()
                    // SAFETY: an anonymous executable mapping, never run.
                    && unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            4096,
                            libc::PROT_READ | libc::PROT_EXEC,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        )
                    } != libc::MAP_FAILED
                    // SAFETY: the grandchild only calls _exit.
                    && match unsafe { fork() } {
                        Ok(ForkResult::Child) => unsafe { libc::_exit(7) },
                        Ok(ForkResult::Parent { child }) => {
                            waitpid(child, None) == Ok(WaitStatus::Exited(child, 7))
                        }
                        Err(_) => false,
                    };
                // SAFETY: _exit ends the child without running destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn new_executable_memory_is_refused() {
        let status = in_confined_child(&SandboxPolicy::default(), || {
            // SAFETY: an anonymous mapping request; nothing is dereferenced.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
            0
        });
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{status:?}"
        );
    }

    #[test]
    fn a_clone3_falls_back_and_threads_still_start() {
        let status = in_confined_child(&SandboxPolicy::default(), || {
            // SAFETY: clone3 with a null argument; the filter answers first.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            let enosys = r == -1 && nix::Error::last() == nix::Error::ENOSYS;
            let thread = std::thread::spawn(|| 7).join().ok() == Some(7);
            if enosys && thread { 0 } else { 1 }
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn files_outside_the_granted_directories_cannot_be_opened() {
        if landlock_support().is_none() {
            eprintln!("no Landlock on this kernel; skipped");
            return;
        }
        let granted = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(granted.path().join("in"), "x").unwrap();
        std::fs::write(other.path().join("out"), "x").unwrap();
        let policy = SandboxPolicy {
            preopens: vec![Preopen {
                host_path: granted.path().into(),
                guest_path: "/data".into(),
                read_only: true,
            }],
            ..SandboxPolicy::default()
        };
        let (inside, outside) = (granted.path().join("in"), other.path().join("out"));
        let status = in_confined_child(&policy, move || {
            let read_in = std::fs::read(&inside).is_ok();
            let read_out = std::fs::read(&outside).is_ok();
            let write_in = std::fs::write(&inside, "y").is_ok();
            match (read_in, read_out, write_in) {
                (true, false, false) => 0,
                _ => 1,
            }
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn the_data_backstop_stops_what_the_limiter_would_not() {
        let status = in_confined_child(&SandboxPolicy::default(), || {
            let size = (DEFAULT_MEMORY_FOR_TEST + 2 * DATA_HEADROOM) as usize;
            // SAFETY: an anonymous writable mapping; nothing is dereferenced.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED { 0 } else { 1 }
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    const DEFAULT_MEMORY_FOR_TEST: u64 = crate::sandbox::DEFAULT_MAX_MEMORY;

    #[test]
    fn the_open_files_limit_clears_inherited_descriptors() {
        assert_eq!(open_files_limit(2), 3 + MAX_OPEN_FILES);
        // 300 inherited descriptors (as from 300 loaded modules): the child
        // can still make MAX_OPEN_FILES of its own, and not unboundedly many.
        let held: Vec<std::fs::File> = (0..300)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let status = in_confined_child(&SandboxPolicy::default(), || {
            // SAFETY: dup of stderr; the copies are left for _exit to close.
            let made = (0..5_000)
                .take_while(|_| unsafe { libc::dup(2) } >= 0)
                .count();
            i32::from(!(MAX_OPEN_FILES as usize..5_000).contains(&made))
        });
        drop(held);
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn the_backstop_sits_above_what_the_process_has() {
        assert_eq!(data_size_limit(10, 20), 30 + DATA_HEADROOM);
        assert_eq!(data_size_limit(u64::MAX, 1), u64::MAX);
        assert!(current_data_size().unwrap() > 0);
    }
}
