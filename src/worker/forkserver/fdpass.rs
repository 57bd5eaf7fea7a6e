//! One packet with at most one descriptor attached (`SCM_RIGHTS`), on the
//! fork server's `SOCK_SEQPACKET` channels: a copy request to a template
//! carries the copy's channel, and a handover carries the call's result
//! file ([`super::output`]). Used by the fork server (sending) and by
//! templates and children (receiving).

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Send `packet` on `channel` with `fd` attached, if any, without waiting.
pub(super) fn send(
    channel: BorrowedFd<'_>,
    packet: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> nix::Result<usize> {
    let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        channel.as_raw_fd(),
        &[IoSlice::new(packet)],
        &cmsgs,
        MsgFlags::MSG_DONTWAIT,
        None,
    )
}

/// Wait for the next packet on `channel`: its length in `buf` (0 at end of
/// stream) and the descriptor attached to it, if any. Extra descriptors a
/// misbehaving sender attaches are closed.
pub(super) fn recv(
    channel: BorrowedFd<'_>,
    buf: &mut [u8],
) -> nix::Result<(usize, Option<OwnedFd>)> {
    loop {
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut fd = None;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just gave this process these
                    // descriptors; nothing else owns them.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        return Ok((msg.bytes, fd));
    }
}
