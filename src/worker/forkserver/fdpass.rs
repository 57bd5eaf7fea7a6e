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

/// Wait for the next packet on `channel` and return it in a buffer of its
/// own size (cut to `max + 1` bytes when longer, for the caller to refuse),
/// with its descriptor, if any; empty at end of stream.
///
/// The length comes first (`MSG_PEEK | MSG_TRUNC` on a sequenced-packet
/// socket gives a packet's whole length and leaves it queued). A buffer
/// of the largest size, zeroed, would be written through for nothing: in a
/// child, whose heap is the fork server's copy-on-write, that was sixteen
/// page copies per call for a packet of a few hundred bytes.
pub(super) fn recv_whole(
    channel: BorrowedFd<'_>,
    max: usize,
) -> nix::Result<(Vec<u8>, Option<OwnedFd>)> {
    let len = loop {
        match nix::sys::socket::recv(
            channel.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut buf = vec![0u8; len.min(max + 1)];
    let (n, fd) = recv(channel, &mut buf)?;
    buf.truncate(n);
    Ok((buf, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_whole_packet_comes_in_a_buffer_of_its_size_with_its_descriptor() {
        let (a, b) = pair();
        let (file, _) = pair();
        send(a.as_fd(), b"hello", Some(file.as_fd())).unwrap();
        send(a.as_fd(), &[7u8; 300], None).unwrap();
        let (bytes, fd) = recv_whole(b.as_fd(), 1000).unwrap();
        assert_eq!((bytes.as_slice(), fd.is_some()), (&b"hello"[..], true));
        let (bytes, fd) = recv_whole(b.as_fd(), 100).unwrap();
        assert_eq!(
            bytes,
            vec![7u8; 101],
            "cut to max + 1, for the caller to refuse"
        );
        assert!(fd.is_none());
        drop(a);
        let (bytes, fd) = recv_whole(b.as_fd(), 100).unwrap();
        assert!(bytes.is_empty() && fd.is_none(), "end of stream");
    }
}
