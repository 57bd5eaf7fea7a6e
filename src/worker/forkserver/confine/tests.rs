//! Tests of the confinement: each runs in a forked child confined as a
//! worker child (or a template process) would be.

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

/// A template process may copy itself (`clone` with exactly
/// [`COPY_CLONE_FLAGS`]) but not fork otherwise; a copy, once it adds its
/// filter, may not copy itself again, change its process group or its
/// death signal: what a template may do and a child may not.
#[test]
fn a_template_makes_copies_that_cannot_copy_themselves() {
    // SAFETY (all): raw syscalls whose arguments point at nothing.
    let forbidden: [Forbidden; 3] = [
        ("copy", || unsafe {
            libc::syscall(libc::SYS_clone, COPY_CLONE_FLAGS, 0, 0, 0, 0)
        }),
        ("setpgid", || unsafe {
            libc::syscall(libc::SYS_setpgid, 0, 0)
        }),
        ("prctl(PR_SET_PDEATHSIG)", || unsafe {
            libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL)
        }),
    ];
    let c = Confinement::new().unwrap();
    let policy = SandboxPolicy::default();
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: as in `in_confined_child`.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = match c
                .confine_fork_server()
                .and_then(|()| limit_process(policy.max_memory))
                .and_then(|()| c.lock_down_template(&policy))
            {
                Ok(()) => {
                    for (_, call) in forbidden {
                        // SAFETY: a raw clone with no stack or pointers: a
                        // fork whose parent is the test process.
                        let pid =
                            unsafe { libc::syscall(libc::SYS_clone, COPY_CLONE_FLAGS, 0, 0, 0, 0) };
                        if pid == 0 {
                            let code = match c.lock_down_copy() {
                                // The filter must answer first.
                                Ok(()) => {
                                    call();
                                    0
                                }
                                Err(_) => 98,
                            };
                            // SAFETY: _exit ends the copy at once.
                            unsafe { libc::_exit(code) }
                        }
                        let _ = nix::unistd::write(&w, &(pid as i32).to_le_bytes());
                    }
                    // SAFETY: a plain fork, which the filter must refuse.
                    unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
                    0
                }
                Err(_) => 99,
            };
            // SAFETY: _exit ends the child without running the test
            // harness's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let template = waitpid(child, None).unwrap();
            assert!(
                matches!(template, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                "a plain fork in the template: {template:?}"
            );
            for (name, _) in forbidden {
                let mut word = [0u8; 4];
                nix::unistd::read(&r, &mut word).unwrap();
                let copy = i32::from_le_bytes(word);
                assert!(copy > 0, "the template could not copy itself: {copy}");
                let copy = waitpid(nix::unistd::Pid::from_raw(copy), None).unwrap();
                assert!(
                    matches!(copy, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                    "{name} in a copy: {copy:?}"
                );
            }
        }
    }
}
