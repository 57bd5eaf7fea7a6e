//! Guest stdout/stderr capture: a WASI output stream that keeps up to a byte
//! cap, drops the rest (counting it), and forwards each complete line to
//! `tracing` tagged with the message id, as it is written.
//!
//! The executor gives one `OutputCapture` per stream to the guest's WASI
//! context and reads the kept text back with `OutputCapture::finish`. Runs
//! where guests run: in each worker child, and in the CLI process for
//! `wasm-jobs exec`.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Which guest stream a capture is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamName {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl StreamName {
    /// The name logged in the `stream` field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// What a capture kept once the call is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CapturedText {
    /// The kept bytes, as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// Bytes the guest wrote past the cap, dropped.
    pub dropped_bytes: u64,
}

/// A capped, line-forwarding output stream shared by all handles the guest
/// opens on it. Cloning shares the buffer.
#[derive(Clone)]
pub(crate) struct OutputCapture {
    state: Arc<Mutex<CaptureState>>,
}

struct CaptureState {
    stream: StreamName,
    message_id: String,
    limit: usize,
    kept: Vec<u8>,
    /// Start of the line not yet forwarded to tracing.
    line_start: usize,
    dropped: u64,
}

impl OutputCapture {
    /// A capture of `stream` that keeps `limit` bytes and tags its log
    /// lines with `message_id`.
    pub(crate) fn new(stream: StreamName, message_id: &str, limit: usize) -> Self {
        OutputCapture {
            state: Arc::new(Mutex::new(CaptureState {
                stream,
                message_id: message_id.to_owned(),
                limit,
                kept: Vec::new(),
                line_start: 0,
                dropped: 0,
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let room = st.limit.saturating_sub(st.kept.len());
        let take = bytes.len().min(room);
        st.kept.extend_from_slice(&bytes[..take]);
        let dropped_now = bytes.len() - take;
        if dropped_now > 0 {
            if st.dropped == 0 {
                tracing::warn!(
                    message_id = %st.message_id,
                    stream = st.stream.as_str(),
                    limit_bytes = st.limit,
                    "guest output over its cap; dropping the rest"
                );
            }
            st.dropped += dropped_now as u64;
        }
        st.forward_complete_lines();
    }

    /// Forward any unterminated last line and return what was kept.
    pub(crate) fn finish(&self) -> CapturedText {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.forward_rest();
        if st.dropped > 0 {
            tracing::warn!(
                message_id = %st.message_id,
                stream = st.stream.as_str(),
                dropped_bytes = st.dropped,
                "guest output truncated"
            );
        }
        CapturedText {
            text: String::from_utf8_lossy(&st.kept).into_owned(),
            dropped_bytes: st.dropped,
        }
    }
}

impl CaptureState {
    fn forward_complete_lines(&mut self) {
        while let Some(nl) = self.kept[self.line_start..]
            .iter()
            .position(|&b| b == b'\n')
        {
            let end = self.line_start + nl;
            self.emit(self.line_start, end);
            self.line_start = end + 1;
        }
    }

    fn forward_rest(&mut self) {
        if self.line_start < self.kept.len() {
            self.emit(self.line_start, self.kept.len());
            self.line_start = self.kept.len();
        }
    }

    fn emit(&self, start: usize, end: usize) {
        let line = String::from_utf8_lossy(&self.kept[start..end]);
        let line = line.trim_end_matches('\r');
        tracing::info!(
            target: "wasm_jobs::guest",
            message_id = %self.message_id,
            stream = self.stream.as_str(),
            line = %line,
        );
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Largest write the guest is offered at once; keeps host allocations small.
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accept: past the cap, bytes are dropped, not refused, so a
        // chatty guest never blocks or sees an error.
        Ok(WRITE_BUDGET)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_and_counts_the_rest() {
        let c = OutputCapture::new(StreamName::Stdout, "m1", 10);
        c.write_bytes(b"hello\n");
        c.write_bytes(b"world, and more");
        let out = c.finish();
        assert_eq!(out.text, "hello\nworl");
        assert_eq!(out.dropped_bytes, 11);
    }

    #[test]
    fn clones_share_one_buffer() {
        let a = OutputCapture::new(StreamName::Stderr, "m1", 100);
        let mut b = a.clone();
        a.write_bytes(b"one ");
        OutputStream::write(&mut b, Bytes::from_static(b"two")).unwrap();
        assert_eq!(a.finish().text, "one two");
    }
}
