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
//! mapped, so not even its file is needed), TCP `connect` to the ports of
//! its TCP and HTTP grants, `bind` to an ephemeral port, and, on kernels with scoping, signals
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
    /// What a template adds instead: the child's, less what copying needs.
    template: BpfProgram,
    /// What a template's copy adds to the template's filters.
    copy: BpfProgram,
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
            template: template_filter()?,
            copy: copy_filter()?,
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

    /// As [`Self::lock_down`] for a template process, whose filter still
    /// lets it make copies of itself.
    pub(crate) fn lock_down_template(&self, policy: &SandboxPolicy) -> Result<(), ConfineError> {
        landlock_tenant(policy)?;
        seccompiler::apply_filter_all_threads(&self.template)?;
        Ok(())
    }

    /// A template's copy, once it has its process group and death signal:
    /// the copy's filter on top of the template's (filters only add up), so
    /// the copy is confined exactly as a forked child.
    pub(crate) fn lock_down_copy(&self) -> Result<(), ConfineError> {
        seccompiler::apply_filter_all_threads(&self.copy)?;
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
    // The host's own HTTP client connects for the guest's wasi:http requests.
    for g in &policy.http.grants {
        ruleset = ruleset.add_rule(NetPort::new(g.port, AccessNet::ConnectTcp))?;
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

/// The `clone` flags of a template process's copies ([`super::template`]):
/// a plain fork whose parent is the template's parent, the fork server.
pub(crate) const COPY_CLONE_FLAGS: u64 = (libc::CLONE_PARENT | libc::SIGCHLD) as u64;

/// What a child gives up of the fork server's allow-list: new processes,
/// new executable memory, signals to other processes, waiting, process
/// groups, limits, memory files and every `prctl` but naming a thread.
fn child_filter() -> Result<BpfProgram, seccompiler::Error> {
    deny_filter(false)
}

/// The child's filter less what a template process needs to make its
/// copies: `clone` with exactly [`COPY_CLONE_FLAGS`], and, for each copy,
/// `setpgid`, `prctl(PR_SET_PDEATHSIG)` and the `prctl(PR_SET_NO_NEW_PRIVS)`
/// that installing a filter makes. Each copy adds the child's filter
/// on top at once, which takes all three away again.
fn template_filter() -> Result<BpfProgram, seccompiler::Error> {
    deny_filter(true)
}

/// Exactly what [`template_filter`] lets a template do and a child may
/// not: `clone` but for threads, `setpgid`, and every `prctl` but naming a
/// thread. On top of the template's filters this confines a copy as
/// [`child_filter`] confines a child; it is a third of the child's filter,
/// and the kernel compiles each copy's filter anew (a JIT pass per copy).
fn copy_filter() -> Result<BpfProgram, seccompiler::Error> {
    let thread = libc::CLONE_THREAD as u64;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [
        (libc::SYS_setpgid, Vec::new()),
        (
            libc::SYS_clone,
            vec![rule(vec![cond(0, Op::MaskedEq(thread), 0)?])?],
        ),
        (
            libc::SYS_prctl,
            vec![rule(vec![cond(0, Op::Ne, libc::PR_SET_NAME as u64)?])?],
        ),
    ]
    .into_iter()
    .collect();
    kill_on(rules)
}

/// A filter that kills the process on a call matching `rules` and passes
/// every other call on to the filters installed before it.
fn kill_on(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, seccompiler::Error> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

fn deny_filter(template: bool) -> Result<BpfProgram, seccompiler::Error> {
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
        libc::SYS_signalfd4,
        libc::SYS_memfd_create,
        libc::SYS_prlimit64,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    if !template {
        rules.insert(libc::SYS_setpgid, Vec::new());
    }
    rules.insert(libc::SYS_mmap, vec![rule(vec![exec()?])?]);
    rules.insert(libc::SYS_mprotect, vec![rule(vec![exec()?])?]);
    // Threads only (and a template's copies): a new process could escape
    // the parent's accounting.
    let mut clone = vec![cond(0, Op::MaskedEq(thread), 0)?];
    let mut prctl = vec![cond(0, Op::Ne, libc::PR_SET_NAME as u64)?];
    if template {
        clone.push(cond(0, Op::Ne, COPY_CLONE_FLAGS)?);
        prctl.push(cond(0, Op::Ne, libc::PR_SET_PDEATHSIG as u64)?);
        // Installing the copy's filter sets no_new_privs (already set).
        prctl.push(cond(0, Op::Ne, libc::PR_SET_NO_NEW_PRIVS as u64)?);
    }
    rules.insert(libc::SYS_clone, vec![rule(clone)?]);
    rules.insert(libc::SYS_prctl, vec![rule(prctl)?]);
    kill_on(rules)
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
mod tests;
