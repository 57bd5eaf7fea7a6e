//! Cross-process wake-ups for long polls on the embedded queue: a sender
//! rewrites `<data>/wake/<queue>` after it commits; a long poll watches that
//! file with inotify, so it returns as soon as a message arrives, whichever
//! process sent it (a worker parent or a CLI process).

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// The wake files of one data directory.
#[derive(Debug, Clone)]
pub(crate) struct WakeFiles {
    dir: PathBuf,
}

impl WakeFiles {
    /// The wake files under `data_dir/wake` (the directory is created).
    pub(crate) fn new(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("wake");
        std::fs::create_dir_all(&dir)?;
        Ok(WakeFiles { dir })
    }

    fn path(&self, queue: &str) -> PathBuf {
        self.dir.join(queue)
    }

    /// Tell every long poll on `queue` that something changed. Best effort: a
    /// missed wake-up only delays a poll until its next periodic check.
    pub(crate) fn notify(&self, queue: &str) {
        if let Err(e) = std::fs::write(self.path(queue), b"1") {
            tracing::debug!(queue, error = %e, "could not write wake file");
        }
    }

    /// Start watching `queue`. Create the watch *before* checking the queue,
    /// so that a send between the check and the wait is not missed.
    pub(crate) fn watch(&self, queue: &str) -> std::io::Result<WakeWatch> {
        let path = self.path(queue);
        if !path.exists() {
            std::fs::write(&path, b"")?;
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            &path,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MODIFY,
        )?;
        // SAFETY: `InotifyFd` owns the inotify descriptor and always returns
        // that same open descriptor until the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register(InotifyFd(inotify)) }.map_err(std::io::Error::from)?;
        Ok(WakeWatch { fd })
    }
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An armed watch on one queue's wake file.
pub(crate) struct WakeWatch {
    fd: AsyncFd<InotifyFd>,
}

impl WakeWatch {
    /// Forget the changes seen so far, so that [`Self::wait`] returns for
    /// the next one. A watch is kept for many polls (closing an inotify
    /// descriptor waits for an RCU grace period: about 20 ms here), so each
    /// poll clears it before it checks the queue.
    pub(crate) fn clear(&mut self) {
        while let Ok(events) = self.fd.get_ref().0.read_events() {
            if events.is_empty() {
                break;
            }
        }
    }

    /// Wait until the wake file changes or `timeout` passes: `Ok(true)` for
    /// a change, `Ok(false)` for the timeout, `Err` if the watch no longer
    /// works (its runtime is gone, say) and should be dropped.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
        let wait = async {
            loop {
                let mut guard = self.fd.readable().await?;
                match guard.get_inner().0.read_events() {
                    Ok(events) if !events.is_empty() => return Ok(true),
                    Ok(_) | Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(e) => return Err(std::io::Error::from(e)),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Ok(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notify_wakes_a_watch_and_silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let wake = WakeFiles::new(dir.path()).unwrap();
        let mut watch = wake.watch("q").unwrap();
        assert!(!watch.wait(Duration::from_millis(50)).await.unwrap());
        let other = wake.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.notify("q");
        });
        let started = std::time::Instant::now();
        assert!(watch.wait(Duration::from_secs(5)).await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(2));
        sender.join().unwrap();
        // Kept for the next poll: cleared, it waits for a new change.
        wake.notify("q");
        watch.clear();
        assert!(!watch.wait(Duration::from_millis(50)).await.unwrap());
        wake.notify("q");
        assert!(watch.wait(Duration::from_secs(5)).await.unwrap());
    }
}
