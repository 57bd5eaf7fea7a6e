//! Memory files sealed against any change: a `memfd` filled once, then
//! sealed against writes, growing, shrinking and further seals
//! (`F_SEAL_WRITE`/`GROW`/`SHRINK`/`SEAL`). Compiled code is mapped from
//! them in whichever process loads it (the fork server, the CLI): the
//! artifact cache's code where the kernel gives no huge pages
//! ([`crate::artifact_cache`]), and the ends of a component's code that
//! fill no 2 MiB page ([`crate::hugepages`]). Once sealed, nothing can
//! change the bytes behind a mapping, whoever holds the descriptor.

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use std::ffi::CStr;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A memory file named `name` (as `/proc/PID/maps` shows its mappings)
/// holding each `(offset, bytes)` of `parts` at its offset, zeros between
/// them, sealed against any change.
pub(crate) fn sealed_file(name: &CStr, parts: &[(u64, &[u8])]) -> std::io::Result<File> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let file = File::from(fd);
    for (offset, bytes) in parts {
        file.write_all_at(bytes, *offset)?;
    }
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn a_sealed_file_holds_its_parts_and_cannot_change() {
        let mut file = sealed_file(c"test-sealed", &[(0, b"compiled"), (12, b"code")]).unwrap();
        assert!(file.write_all(b"x").is_err(), "writing is sealed");
        assert!(
            file.write_all_at(b"x", 9).is_err(),
            "writing at an offset is sealed"
        );
        assert!(file.set_len(4).is_err(), "shrinking is sealed");
        assert!(file.set_len(64).is_err(), "growing is sealed");
        let mut back = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"compiled\0\0\0\0code");
    }
}
