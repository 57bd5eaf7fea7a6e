//! Guest stdout/stderr capture: a WASI output stream that keeps a stream's
//! start and end up to a byte cap (half each; what is cut from the middle
//! is counted), and forwards each complete line to `tracing` tagged with
//! the message id, as it is written. What reaches the log is bounded too:
//! at most [`MAX_FORWARDED_LINES`] lines and [`MAX_FORWARDED_BYTES`] per
//! stream and call, then only the last [`LOG_TAIL_LINES`] lines, logged when
//! the call ends (so a job's final line is always seen), each line cut at
//! [`MAX_LINE_BYTES`], and control characters escaped, so a guest can
//! neither flood the log with a million newlines nor forge log lines or
//! terminal escapes in pretty output.
//!
//! The executor gives one `OutputCapture` per stream to the guest's WASI
//! context and reads the kept text back with `OutputCapture::finish`. Runs
//! where guests run: in each worker child, and in the CLI process for
//! `wasm-jobs exec`.

use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Most guest lines forwarded to the log per stream and call as written.
pub(crate) const MAX_FORWARDED_LINES: u64 = 1000;
/// Most guest bytes forwarded to the log per stream and call as written.
pub(crate) const MAX_FORWARDED_BYTES: u64 = 256 * 1024;
/// Lines past those caps of which the last are logged when the call ends.
pub(crate) const LOG_TAIL_LINES: usize = 20;
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
    /// The kept bytes, as UTF-8 (invalid sequences replaced): all of them,
    /// or the start and the end with a line saying how much was cut
    /// between them.
    pub text: String,
    /// Bytes the guest wrote past the cap, cut from the middle.
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
    /// The stream's first bytes, up to half the cap.
    head: Vec<u8>,
    /// Its last bytes after the head, up to the rest of the cap.
    tail: VecDeque<u8>,
    /// Bytes cut between the head and the tail.
    dropped: u64,
    /// The line being written, up to [`MAX_LINE_BYTES`] + 1 bytes, and how
    /// many more it had.
    line: Vec<u8>,
    line_cut: usize,
    /// Lines and bytes forwarded to the log so far.
    forwarded_lines: u64,
    forwarded_bytes: u64,
    /// Lines past the log caps: how many, and the last of them.
    suppressed_lines: u64,
    last_lines: VecDeque<String>,
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
                head: Vec::new(),
                tail: VecDeque::new(),
                dropped: 0,
                line: Vec::new(),
                line_cut: 0,
                forwarded_lines: 0,
                forwarded_bytes: 0,
                suppressed_lines: 0,
                last_lines: VecDeque::new(),
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
        st.keep(bytes);
        st.forward_lines(bytes);
    }

    /// Forward any unterminated last line, and the last lines past the log
    /// caps, and return what was kept.
    pub(crate) fn finish(&self) -> CapturedText {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.line.is_empty() || st.line_cut > 0 {
            st.end_line();
        }
        if st.suppressed_lines > 0 {
            let logged = st.last_lines.len() as u64;
            tracing::warn!(
                message_id = %st.message_id,
                stream = st.stream.as_str(),
                not_logged = st.suppressed_lines - logged,
                "guest lines over the log cap were not logged; its last lines follow"
            );
            let last = std::mem::take(&mut st.last_lines);
            for line in last {
                st.log(&line);
            }
        }
        let mut text = String::from_utf8_lossy(&st.head).into_owned();
        if st.dropped > 0 {
            tracing::warn!(
                message_id = %st.message_id,
                stream = st.stream.as_str(),
                dropped_bytes = st.dropped,
                "guest output over its cap; its start and end are kept"
            );
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("[… {} bytes cut here …]\n", st.dropped));
        }
        let (a, b) = st.tail.as_slices();
        text.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        CapturedText {
            text,
            dropped_bytes: st.dropped,
        }
    }
}

impl CaptureState {
    /// Keep `bytes`: into the head while it has room, then into the tail,
    /// whose oldest bytes are cut when it is full.
    fn keep(&mut self, mut bytes: &[u8]) {
        let head_cap = self.limit / 2;
        let room = head_cap.saturating_sub(self.head.len());
        let into_head = bytes.len().min(room);
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        let tail_cap = self.limit - head_cap;
        if bytes.len() >= tail_cap {
            self.dropped += (self.tail.len() + bytes.len() - tail_cap) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - tail_cap..]);
        } else {
            let over = (self.tail.len() + bytes.len()).saturating_sub(tail_cap);
            self.tail.drain(..over);
            self.dropped += over as u64;
            self.tail.extend(bytes);
        }
    }

    fn forward_lines(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (text, ends) = match chunk.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (chunk, false),
            };
            let room = (MAX_LINE_BYTES + 1).saturating_sub(self.line.len());
            self.line.extend_from_slice(&text[..text.len().min(room)]);
            self.line_cut += text.len().saturating_sub(room);
            if ends {
                self.end_line();
            }
        }
    }

    /// The line written so far is complete: log it, or past the log caps
    /// keep it among the last lines.
    fn end_line(&mut self) {
        let raw = std::mem::take(&mut self.line);
        let extra = std::mem::take(&mut self.line_cut);
        let line = loggable(&raw, extra);
        if self.forwarded_lines >= MAX_FORWARDED_LINES
            || self.forwarded_bytes >= MAX_FORWARDED_BYTES
        {
            if self.suppressed_lines == 0 {
                tracing::warn!(
                    message_id = %self.message_id,
                    stream = self.stream.as_str(),
                    max_lines = MAX_FORWARDED_LINES,
                    max_bytes = MAX_FORWARDED_BYTES,
                    "guest output over the log cap; only its last lines are logged, when the call ends"
                );
            }
            self.suppressed_lines += 1;
            if self.last_lines.len() == LOG_TAIL_LINES {
                self.last_lines.pop_front();
            }
            self.last_lines.push_back(line);
            return;
        }
        self.forwarded_lines += 1;
        self.forwarded_bytes += (raw.len() + extra) as u64;
        self.log(&line);
    }

    fn log(&self, line: &str) {
        tracing::info!(
            target: "wasm_jobs::guest",
            message_id = %self.message_id,
            stream = self.stream.as_str(),
            line = %line,
        );
    }
}

/// A guest line as it may appear in the log: cut at [`MAX_LINE_BYTES`] (on
/// a character boundary, saying how much was cut, `extra` bytes more than
/// `raw` holds included), a trailing `\r` dropped, and control characters
/// other than tab escaped (`\u{1b}`, `\r`, ...).
fn loggable(raw: &[u8], extra: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r');
    let (kept, cut) = if text.len() > MAX_LINE_BYTES {
        let end = text.floor_char_boundary(MAX_LINE_BYTES);
        (&text[..end], text.len() - end + extra)
    } else {
        (text, extra)
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
    fn past_the_log_cap_the_last_lines_are_kept_for_the_end() {
        let c = OutputCapture::new(StreamName::Stdout, 64);
        for i in 0..MAX_FORWARDED_LINES + 100 {
            c.write_bytes(format!("line {i}\n").as_bytes());
        }
        c.write_bytes(b"result: 42");
        let st = c.state.lock().unwrap();
        assert_eq!(st.suppressed_lines, 100);
        assert_eq!(st.last_lines.back().map(String::as_str), Some("line 1099"));
        drop(st);
        let out = c.finish();
        // The unterminated last line is among the last lines logged.
        let st = c.state.lock().unwrap();
        assert_eq!(st.suppressed_lines, 101);
        assert!(st.last_lines.is_empty(), "logged at finish");
        assert!(out.text.ends_with("line 1099\nresult: 42"), "{}", out.text);
    }

    #[test]
    fn log_lines_are_cut_and_cannot_forge_lines_or_escapes() {
        assert_eq!(loggable(b"plain\ttext\r", 0), "plain\ttext");
        assert_eq!(
            loggable(b"a\rINFO forged\x1b[31m", 0),
            "a\\rINFO forged\\u{1b}[31m"
        );
        let long = loggable(&vec![b'y'; MAX_LINE_BYTES + 1], 9);
        assert!(long.starts_with(&"y".repeat(MAX_LINE_BYTES)));
        assert!(long.ends_with("… (10 bytes cut)"), "{long}");
        // A long line written in pieces is held to the bound while written.
        let c = OutputCapture::new(StreamName::Stdout, 16);
        for _ in 0..100 {
            c.write_bytes(&[b'z'; 1000]);
        }
        assert!(c.state.lock().unwrap().line.len() <= MAX_LINE_BYTES + 1);
    }

    #[test]
    fn keeps_the_start_and_the_end_and_counts_the_middle() {
        let c = OutputCapture::new(StreamName::Stdout, 10);
        c.write_bytes(b"hello\n");
        c.write_bytes(b"world, and more");
        let out = c.finish();
        assert_eq!(out.text, "hello\n[… 11 bytes cut here …]\n more");
        assert_eq!(out.dropped_bytes, 11);
        // Within the cap, everything in order, whatever the writes' sizes.
        let c = OutputCapture::new(StreamName::Stdout, 10);
        for b in b"0123456789" {
            c.write_bytes(&[*b]);
        }
        assert_eq!(
            c.finish(),
            CapturedText {
                text: "0123456789".into(),
                dropped_bytes: 0
            }
        );
        // A write larger than the cap keeps its own end.
        let c = OutputCapture::new(StreamName::Stdout, 10);
        c.write_bytes(b"abcdefghijklmnopqrstuvwxyz");
        assert_eq!(c.finish().text, "abcde\n[… 16 bytes cut here …]\nvwxyz");
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
