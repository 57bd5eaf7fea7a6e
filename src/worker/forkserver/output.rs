//! How a job's published result (`wasm-jobs:job/output`) gets from a
//! worker child to the fork server: a sealed memory file per call.
//!
//! The fork server makes the file when it starts a call of a job that
//! imports `output` ([`OutputFile::new`]), sized to the tenant's limit plus
//! an 8-byte header and sealed against growing, so even a child that broke
//! out of wasmtime can write no more than that (its pages cost nothing
//! until written). The child gets the file with its call (inherited when
//! it is forked for the call, else passed with the handover) and, once the
//! call has ended, writes the result and then the header
//! ([`write_result`]), all before it sends its report. The fork server
//! reads it when that report comes, or when it reaps a child that ended
//! without one ([`OutputFile::read`]), and forwards it to the parent in
//! chunks before the child's `Exited` event (the child's channel carries
//! only its outcome: a socket's buffer could not take a 256 KiB result).
//!
//! Header: the result's length plus one, little-endian; zero (the file as
//! made) means nothing was published.

use super::protocol::{Event, OUTPUT_CHUNK_BYTES};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

const HEADER: usize = 8;

/// Send what the child of `process` published, if anything, to the parent
/// as [`Event::Output`] chunks (one empty chunk for an empty result).
pub(super) fn forward(events: &impl AsFd, process: u64, file: &OutputFile) {
    use base64::Engine as _;
    let data = match file.read() {
        Ok(Some(data)) => data,
        Ok(None) => return,
        Err(why) => return tracing::warn!(process, %why, "a child's result is unreadable; dropped"),
    };
    let mut chunks: Vec<&[u8]> = data.chunks(OUTPUT_CHUNK_BYTES).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for chunk in chunks {
        let chunk = base64::engine::general_purpose::STANDARD.encode(chunk);
        super::send_event(events, &Event::Output { process, chunk });
    }
}

/// The fork server's end of one call's result file.
pub(super) struct OutputFile {
    file: File,
    limit: usize,
}

impl OutputFile {
    /// An empty result file that takes at most `limit` bytes.
    pub(super) fn new(limit: usize) -> Result<Self, String> {
        let fd = memfd_create(
            c"wasm-jobs-output",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| format!("cannot make a result file: {e}"))?;
        let size = i64::try_from(HEADER + limit).map_err(|e| e.to_string())?;
        nix::unistd::ftruncate(&fd, size).map_err(|e| format!("cannot size a result file: {e}"))?;
        let seals = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| format!("cannot seal a result file: {e}"))?;
        Ok(OutputFile {
            file: File::from(fd),
            limit,
        })
    }

    /// The descriptor the child writes to.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// What the child published: `Ok(None)` for nothing, `Err` for a
    /// header no honest child writes.
    pub(super) fn read(&self) -> Result<Option<Vec<u8>>, String> {
        let unreadable = |e: std::io::Error| format!("cannot read the result file: {e}");
        let mut header = [0u8; HEADER];
        self.file
            .read_exact_at(&mut header, 0)
            .map_err(unreadable)?;
        let len = match u64::from_le_bytes(header) {
            0 => return Ok(None),
            n => usize::try_from(n - 1).map_err(|e| e.to_string())?,
        };
        if len > self.limit {
            return Err(format!(
                "the child claims a {len}-byte result; its limit is {}",
                self.limit
            ));
        }
        let mut data = vec![0u8; len];
        self.file
            .read_exact_at(&mut data, HEADER as u64)
            .map_err(unreadable)?;
        Ok(Some(data))
    }
}

/// In the child, after its call: write `data` and then the header. Fails
/// (and the result is lost, logged) only if `data` is longer than the file
/// allows, which the host import already refused.
pub(super) fn write_result(file: &File, data: &[u8]) -> Result<(), String> {
    let write = || -> std::io::Result<()> {
        file.write_all_at(data, HEADER as u64)?;
        file.write_all_at(&(data.len() as u64 + 1).to_le_bytes(), 0)
    };
    write().map_err(|e| format!("cannot write the result: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_round_trips_and_cannot_outgrow_its_file() {
        let file = OutputFile::new(16).unwrap();
        assert_eq!(file.read(), Ok(None));
        // The child's copy of the descriptor, as it gets it.
        let child = File::from(file.fd().try_clone_to_owned().unwrap());
        write_result(&child, b"hello").unwrap();
        assert_eq!(file.read(), Ok(Some(b"hello".to_vec())));
        write_result(&child, b"").unwrap();
        assert_eq!(file.read(), Ok(Some(Vec::new())));
        // The file is sealed at its size: a longer write fails, and a
        // header claiming more than the limit is refused.
        assert!(write_result(&child, &[1u8; 17]).is_err());
        child.write_all_at(&(17u64 + 1).to_le_bytes(), 0).unwrap();
        assert!(file.read().unwrap_err().contains("17-byte"));
    }
}
