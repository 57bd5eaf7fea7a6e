//! Guest stdout/stderr capture: a WASI output stream that keeps up to a byte
//! cap, drops the rest (counting it), and forwards each complete line to
//! `tracing` tagged with the message id, as it is written. What reaches the
//! log is bounded too: at most [`MAX_FORWARDED_LINES`] lines and
//! [`MAX_FORWARDED_BYTES`] per stream and call (the rest is counted and
//! reported once), each line cut at [`MAX_LINE_BYTES`], and control
//! characters escaped, so a guest can neither flood the log with a million
//! newlines nor forge log lines or terminal escapes in pretty output.
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

/// Most guest lines forwarded to the log per stream and call.
pub(crate) const MAX_FORWARDED_LINES: u64 = 1000;
/// Most guest bytes forwarded to the log per stream and call.
pub(crate) const MAX_FORWARDED_BYTES: u64 = 256 * 1024;
/// Longest guest line forwarded as it is; longer ones are cut.
pub(crate) const MAX_LINE_BYTES: usize = 4096;

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
    /// Lines and bytes forwarded to the log so far.
    forwarded_lines: u64,
    forwarded_bytes: u64,
    /// Lines kept but not forwarded, past the log caps.
    suppressed_lines: u64,
}

impl OutputCapture {
    /// A capture of `stream` that keeps `limit` bytes; its log lines carry
    /// the message id given to [`Self::set_message_id`].
    pub(crate) fn new(stream: StreamName, limit: usize) -> Self {
        OutputCapture {
            state: Arc::new(Mutex::new(CaptureState {
                stream,
                message_id: String::new(),
                limit,
                kept: Vec::new(),
                line_start: 0,
                dropped: 0,
                forwarded_lines: 0,
                forwarded_bytes: 0,
                suppressed_lines: 0,
            })),
        }
    }

    /// Tag the log lines of the call this capture belongs to.
    pub(crate) fn set_message_id(&self, message_id: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        message_id.clone_into(&mut st.message_id);
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
        if st.suppressed_lines > 0 {
            tracing::warn!(
                message_id = %st.message_id,
                stream = st.stream.as_str(),
                suppressed_lines = st.suppressed_lines,
                "guest lines not forwarded to the log (over the log cap)"
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

    fn emit(&mut self, start: usize, end: usize) {
        if self.forwarded_lines >= MAX_FORWARDED_LINES
            || self.forwarded_bytes >= MAX_FORWARDED_BYTES
        {
            if self.suppressed_lines == 0 {
                tracing::warn!(
                    message_id = %self.message_id,
                    stream = self.stream.as_str(),
                    max_lines = MAX_FORWARDED_LINES,
                    max_bytes = MAX_FORWARDED_BYTES,
                    "guest output over the log cap; further lines are kept but not logged"
                );
            }
            self.suppressed_lines += 1;
            return;
        }
        let line = loggable(&self.kept[start..end]);
        self.forwarded_lines += 1;
        self.forwarded_bytes += (end - start) as u64;
        tracing::info!(
            target: "wasm_jobs::guest",
            message_id = %self.message_id,
            stream = self.stream.as_str(),
            line = %line,
        );
    }
}

/// A guest line as it may appear in the log: cut at [`MAX_LINE_BYTES`] (on
/// a character boundary, saying how much was cut), a trailing `\r` dropped,
/// and control characters other than tab escaped (`\u{1b}`, `\r`, ...).
fn loggable(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r');
    let (kept, cut) = if text.len() > MAX_LINE_BYTES {
        let end = text.floor_char_boundary(MAX_LINE_BYTES);
        (&text[..end], text.len() - end)
    } else {
        (text, 0)
    };
    let mut out = String::with_capacity(kept.len());
    for c in kept.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut > 0 {
        out.push_str(&format!("… ({cut} bytes cut)"));
    }
    out
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
    fn a_newline_flood_forwards_a_bounded_number_of_lines() {
        let c = OutputCapture::new(StreamName::Stdout, 1 << 20);
        c.write_bytes(&vec![b'\n'; 1 << 20]);
        let text = c.finish();
        assert_eq!(text.text.len(), 1 << 20, "kept up to the output cap");
        let st = c.state.lock().unwrap();
        assert_eq!(st.forwarded_lines, MAX_FORWARDED_LINES);
        assert_eq!(st.suppressed_lines, (1 << 20) - MAX_FORWARDED_LINES);
        drop(st);
        let c = OutputCapture::new(StreamName::Stdout, 4 << 20);
        c.write_bytes(&vec![b'x'; 3 << 20]);
        c.write_bytes(b"\nlast\n");
        c.finish();
        let st = c.state.lock().unwrap();
        assert!(st.forwarded_bytes <= MAX_FORWARDED_BYTES + (3 << 20));
        assert_eq!((st.forwarded_lines, st.suppressed_lines), (1, 1));
    }

    #[test]
    fn log_lines_are_cut_and_cannot_forge_lines_or_escapes() {
        assert_eq!(loggable(b"plain\ttext\r"), "plain\ttext");
        assert_eq!(
            loggable(b"a\rINFO forged\x1b[31m"),
            "a\\rINFO forged\\u{1b}[31m"
        );
        let long = loggable(&vec![b'y'; MAX_LINE_BYTES + 10]);
        assert!(long.starts_with(&"y".repeat(MAX_LINE_BYTES)));
        assert!(long.ends_with("… (10 bytes cut)"), "{long}");
    }

    #[test]
    fn keeps_up_to_the_cap_and_counts_the_rest() {
        let c = OutputCapture::new(StreamName::Stdout, 10);
        c.write_bytes(b"hello\n");
        c.write_bytes(b"world, and more");
        let out = c.finish();
        assert_eq!(out.text, "hello\nworl");
        assert_eq!(out.dropped_bytes, 11);
    }

    #[test]
    fn clones_share_one_buffer() {
        let a = OutputCapture::new(StreamName::Stderr, 100);
        let mut b = a.clone();
        a.write_bytes(b"one ");
        OutputStream::write(&mut b, Bytes::from_static(b"two")).unwrap();
        assert_eq!(a.finish().text, "one two");
    }
}
