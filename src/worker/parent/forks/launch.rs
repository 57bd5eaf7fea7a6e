//! Starting one fork server, in the worker parent process: its command
//! line, an empty environment, its own process group, the command and event
//! sockets at fixed descriptors (every other descriptor close-on-exec), and
//! the task that reads its events as they arrive and hands each to
//! [`Conn::dispatch`].

use super::{Conn, ForkServerSettings, READY_TIMEOUT};
use crate::worker::protocol::{self, COMMAND_FD, EVENT_FD, Event};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, socketpair};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

struct EventFd(OwnedFd);
impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Start one fork server and wait until it is ready.
pub(super) async fn launch(
    l: &ForkServerSettings,
) -> std::io::Result<(Arc<Conn>, tokio::process::Child)> {
    let (cmd_parent, cmd_server) = std::os::unix::net::UnixStream::pair()?;
    let (ev_parent, ev_server) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let config = l.config();
    let mut cmd = std::process::Command::new(&l.exe);
    cmd.arg("__fork-server")
        .args([
            "--log-format",
            l.log.format.name(),
            "--log-filter",
            &l.log.filter,
        ])
        .arg(serde_json::to_string(&config)?)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .process_group(0);
    let (c, e) = (cmd_server.as_raw_fd(), ev_server.as_raw_fd());
    // SAFETY: runs between fork and exec in the new process, and calls only
    // fcntl, dup2 and close_range, which are async-signal-safe system calls.
    // The temporaries are close-on-exec; the copies at 3 and 4 are not, so
    // exec passes them on. Every other descriptor is made close-on-exec
    // (not closed: the standard library's exec-error pipe must live until
    // the exec), so one the worker inherited without it (a service
    // manager's or a build tool's) reaches neither the fork server nor its
    // children.
    unsafe {
        cmd.pre_exec(move || {
            let c2 = libc::fcntl(c, libc::F_DUPFD_CLOEXEC, 10);
            let e2 = libc::fcntl(e, libc::F_DUPFD_CLOEXEC, 10);
            if c2 < 0 || e2 < 0 || libc::dup2(c2, COMMAND_FD) < 0 || libc::dup2(e2, EVENT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let first = (EVENT_FD + 1) as libc::c_uint;
            let all = libc::c_uint::MAX;
            if libc::syscall(libc::SYS_close_range, first, all, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                let e = std::io::Error::last_os_error();
                // Kernels before 5.11 lack it: go on without.
                if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
                    return Err(e);
                }
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd).spawn()?;
    drop((cmd_server, ev_server));
    let pid = Pid::from_raw(child.id().map_or(0, |p| p as i32));
    cmd_parent.set_nonblocking(true)?;
    nix::fcntl::fcntl(
        &ev_parent,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let conn = Arc::new(Conn {
        pid,
        commands: tokio::sync::Mutex::new(tokio::net::UnixStream::from_std(cmd_parent)?),
        pending: Mutex::new(HashMap::new()),
        dead: std::sync::atomic::AtomicBool::new(false),
        ready: Mutex::new(Some(ready_tx)),
    });
    // SAFETY: `EventFd` owns the descriptor for the `AsyncFd`'s lifetime.
    let events = unsafe { AsyncFd::register(EventFd(ev_parent)) }.map_err(std::io::Error::from)?;
    tokio::spawn(read_events(events, Arc::clone(&conn)));
    tokio::select! {
        ready = tokio::time::timeout(READY_TIMEOUT, ready_rx) => match ready {
            Ok(Ok(())) => Ok((conn, child)),
            _ => {
                let _ = child.start_kill();
                Err(std::io::Error::other("the fork server did not get ready"))
            }
        },
        status = child.wait() => Err(std::io::Error::other(format!(
            "the fork server exited while starting ({})",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        ))),
    }
}

async fn read_events(fd: AsyncFd<EventFd>, conn: Arc<Conn>) {
    let mut buf = vec![0u8; protocol::MAX_EVENT_BYTES];
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(_) => break,
        };
        match recv(fd.get_ref().as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => break,
            Ok(n) => match serde_json::from_slice::<Event>(&buf[..n]) {
                Ok(event) => conn.dispatch(event),
                Err(e) => tracing::error!(error = %e, "unreadable event from the fork server"),
            },
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                tracing::error!(error = %e, "reading fork server events failed");
                break;
            }
        }
    }
}
