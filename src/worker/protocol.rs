//! What the worker parent, the fork server and the worker children say to
//! each other, and how it is framed. This is the leaf both sides depend on:
//! it imports neither [`super::parent`] nor [`super::forkserver`].
//!
//! - Commands, parent -> fork server: a stream socket, each frame a 4-byte
//!   big-endian length and a JSON [`Command`]. One writer, one reader.
//! - Events, fork server -> parent: a `SOCK_SEQPACKET` socket, one JSON
//!   [`Event`] per packet.
//! - Each child and the fork server: a `SOCK_SEQPACKET` socket pair of its
//!   own, made at its fork. A pre-forked child reads its call there (one
//!   JSON [`Handover`] packet, at most [`MAX_HANDOVER_BYTES`]; a larger
//!   message is forked on demand instead; with it, as `SCM_RIGHTS`, the
//!   call's result file when the job publishes results), and every child
//!   writes one JSON [`Outcome`] packet there just before it exits. The
//!   fork server reads it as soon as it comes (or when it reaps a child
//!   that ended before it looked) and puts it in the child's
//!   [`Event::Exited`], so a child can speak only for itself; the
//!   child's published result comes before that, in [`Event::Output`]
//!   chunks of at most [`OUTPUT_CHUNK_BYTES`].
//!
//! The fork server is a separate executable image (`wasm-jobs
//! __fork-server`); it inherits the two sockets at [`COMMAND_FD`] and
//! [`EVENT_FD`] and its settings as one JSON argument ([`ForkServerConfig`]).

use crate::contract::JobMessage;
use crate::http::HttpUsage;
use crate::outcome::Outcome;
use crate::sandbox::SandboxPolicy;
use crate::trace_context::TraceContext;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The descriptor the fork server reads commands from.
pub(crate) const COMMAND_FD: i32 = 3;
/// The descriptor the fork server writes events to.
pub(crate) const EVENT_FD: i32 = 4;

/// Largest event packet; outcomes carry guest text, so reasons are cut to fit.
pub(crate) const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest reason text carried in an outcome event.
pub(crate) const MAX_REASON_BYTES: usize = 8 * 1024;
/// Largest handover packet to a pre-forked child (well under the default
/// socket buffer, so one packet always fits).
pub(crate) const MAX_HANDOVER_BYTES: usize = 64 * 1024;
/// Largest piece of a published result in one [`Event::Output`] (base64
/// makes it a third longer, still well inside [`MAX_EVENT_BYTES`]).
pub(crate) const OUTPUT_CHUNK_BYTES: usize = 32 * 1024;
/// Largest command frame (a 256 KiB message plus attributes, JSON-escaped).
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Which export a process calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CallKind {
    Run,
    OnExit { signal: u32 },
}

/// What the fork server needs to run jobs; passed as its one argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ForkServerConfig {
    /// Fuel metering on or off for the whole engine.
    pub(crate) fuel_metering: bool,
    /// The compiled-artifact cache.
    pub(crate) cache_dir: PathBuf,
    /// A compile helper is killed after this long (a passing failure).
    pub(crate) compile_timeout: Duration,
    /// A compile helper's address-space limit (`RLIMIT_AS`), in bytes.
    pub(crate) compile_memory: u64,
    /// The worker parent's pid: the fork server dies with it.
    pub(crate) parent: i32,
    /// How many children to keep forked and set up ahead of their calls
    /// (the worker's concurrency); 0 forks every call on demand.
    pub(crate) warm_children: usize,
    /// The budget for loaded components, in bytes: past it the least
    /// recently used are unloaded.
    pub(crate) loaded_modules_memory: u64,
}

/// The module a call runs, decided once when the message was admitted: the
/// fork server refuses a file whose content no longer has this digest, so
/// `run` and `on-exit` of one message always run the same code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModuleRef {
    /// The component file (a registry blob, or the worker's `--module`).
    pub(crate) path: PathBuf,
    /// sha256 of its bytes, lowercase hex.
    pub(crate) digest: String,
    /// What logs and metrics call it (`NAME@sha256:HEX` or the file path).
    pub(crate) label: String,
}

/// One call to make in a fresh process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spawn {
    /// The parent's number for this process.
    pub(crate) process: u64,
    pub(crate) module: ModuleRef,
    /// The tenant the message was admitted for (logs only).
    pub(crate) tenant: String,
    pub(crate) message: JobMessage,
    pub(crate) call: CallKind,
    /// The tenant's sandbox for this call.
    pub(crate) policy: SandboxPolicy,
    /// The job's span in the sender's trace (logs, outgoing requests).
    pub(crate) trace: TraceContext,
}

/// Fork server -> a pre-forked child: the call it makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handover {
    /// The parent's number for this process.
    pub(crate) process: u64,
    pub(crate) message: JobMessage,
    pub(crate) call: CallKind,
    pub(crate) trace: TraceContext,
}

/// Parent -> fork server. Each command is serialized once and read once, so
/// the size of `Spawn` costs nothing worth boxing for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Fork a process that loads a module and makes one call.
    Spawn(Spawn),
    /// Signal a process's group, if the fork server has not reaped it yet.
    Signal { process: u64, signal: i32 },
    /// The worker is stopping: do not start this call if it has not started
    /// yet (it fails with [`SpawnFailure::Cancelled`]): its spawn still
    /// unread, or waiting for its module's compile or load. A call already
    /// started is left alone.
    Cancel { process: u64 },
}

/// Whose fault a failed spawn is, which decides the message's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SpawnFailure {
    /// The component itself is broken (not a job component): dead-letter.
    InvalidComponent,
    /// Something passing: a fork failed, a compile helper was killed or timed
    /// out, the module file changed. Leave the message for redelivery.
    Passing,
    /// Not started, as the parent asked ([`Command::Cancel`]).
    Cancelled,
}

/// How a process ended, as `waitpid` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Fork server or child -> parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Event {
    /// The fork server has built its engine and reads commands.
    Ready { pid: i32 },
    /// The process was forked (or, `warm`, a pre-forked one was handed the
    /// call); it leads its own process group `pid`.
    Started { process: u64, pid: i32, warm: bool },
    /// The module could not be loaded or no process could be forked.
    SpawnFailed {
        process: u64,
        error: String,
        failure: SpawnFailure,
    },
    /// The next piece of what the process published as its result, in
    /// base64; all of them come before its `Exited`.
    Output { process: u64, chunk: String },
    /// The call has ended. Either its report came (`outcome`): `status` is
    /// then the exit code that outcome gives, and the process, killed, is
    /// reaped later. Or the process ended without one and was reaped:
    /// `status` is how it ended.
    Exited {
        process: u64,
        status: ExitStatus,
        outcome: Option<Outcome>,
        /// What its HTTP requests did, if it made or tried any.
        http: Option<HttpUsage>,
    },
}

/// Cut guest-supplied text in an outcome so the event fits in one packet.
pub(crate) fn trim_outcome(outcome: Outcome) -> Outcome {
    fn cut(mut s: String) -> String {
        if s.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push_str("… (truncated)");
        }
        s
    }
    match outcome {
        Outcome::Retry {
            reason,
            delay_seconds,
        } => Outcome::Retry {
            reason: cut(reason),
            delay_seconds,
        },
        Outcome::Fatal { reason } => Outcome::Fatal {
            reason: cut(reason),
        },
        Outcome::OnExitFailed { reason } => Outcome::OnExitFailed {
            reason: cut(reason),
        },
        Outcome::Trap { kind, detail } => Outcome::Trap {
            kind,
            detail: cut(detail),
        },
        other => other,
    }
}

pub(crate) fn write_command(w: &mut impl Write, cmd: &Command) -> io::Result<()> {
    let json = serde_json::to_vec(cmd)?;
    let len = u32::try_from(json.len()).map_err(|_| io::Error::other("command too large"))?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    w.write_all(&frame)
}

/// Read one command; `Ok(None)` at end of stream (the parent is gone).
pub(crate) fn read_command(r: &mut impl Read) -> io::Result<Option<Command>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_COMMAND_BYTES {
        return Err(io::Error::other(format!("command frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(io::Error::other)
}

pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("events always serialize")
}

/// A handover packet, or `None` if it would not fit in one.
pub(crate) fn encode_handover(handover: &Handover) -> Option<Vec<u8>> {
    let bytes = serde_json::to_vec(handover).expect("handovers always serialize");
    (bytes.len() <= MAX_HANDOVER_BYTES).then_some(bytes)
}

/// A handover as the child reads it; `None` if it is not one.
pub(crate) fn decode_handover(packet: &[u8]) -> Option<Handover> {
    serde_json::from_slice(packet).ok()
}

/// What a child writes on its channel just before it exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// How the call ended, already cut by [`trim_outcome`].
    pub(crate) outcome: Outcome,
    /// What its HTTP requests did, if it made or tried any.
    pub(crate) http: Option<HttpUsage>,
}

/// A child's report as one packet.
pub(crate) fn encode_report(report: &Report) -> Vec<u8> {
    serde_json::to_vec(report).expect("reports always serialize")
}

/// A child's report as the fork server reads it; `None` for anything that
/// is not a well-formed report (the child's exit status then speaks alone).
pub(crate) fn decode_report(packet: &[u8]) -> Option<Report> {
    serde_json::from_slice(packet).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_frames() {
        let cmd = Command::Spawn(Spawn {
            process: 7,
            module: ModuleRef {
                path: "/x/job.wasm".into(),
                digest: "ab".repeat(32),
                label: "job".into(),
            },
            tenant: "acme".into(),
            message: JobMessage {
                id: "m".into(),
                body: "b".repeat(300_000),
                attributes: vec![("k".into(), "v".into())],
                receive_count: 2,
            },
            call: CallKind::OnExit { signal: 15 },
            policy: SandboxPolicy::default(),
            trace: TraceContext::for_job(None),
        });
        let cancel = Command::Cancel { process: 7 };
        let mut buf = Vec::new();
        write_command(&mut buf, &cmd).unwrap();
        write_command(&mut buf, &cancel).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_command(&mut r).unwrap(), Some(cmd));
        assert_eq!(read_command(&mut r).unwrap(), Some(cancel));
        assert_eq!(read_command(&mut r).unwrap(), None);
    }

    #[test]
    fn a_handover_fits_one_packet_or_is_refused() {
        let mut h = Handover {
            process: 3,
            message: JobMessage {
                id: "m".into(),
                body: "\u{1}".repeat(MAX_HANDOVER_BYTES / 8),
                attributes: vec![("k".into(), "v".into())],
                receive_count: 1,
            },
            call: CallKind::Run,
            trace: TraceContext::for_job(None),
        };
        let packet = encode_handover(&h).expect("an escaped 8 KiB body fits");
        assert_eq!(decode_handover(&packet), Some(h.clone()));
        // Through a real socket pair of the kind the fork server makes.
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        h.message.body = "x".repeat(MAX_HANDOVER_BYTES - 400);
        let packet = encode_handover(&h).expect("just under the limit");
        let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        use std::os::fd::AsRawFd;
        assert_eq!(
            nix::sys::socket::send(a.as_raw_fd(), &packet, flags),
            Ok(packet.len())
        );
        let mut buf = vec![0u8; MAX_HANDOVER_BYTES];
        let n = nix::sys::socket::recv(b.as_raw_fd(), &mut buf, flags).unwrap();
        assert_eq!(decode_handover(&buf[..n]), Some(h.clone()));
        h.message.body = "x".repeat(MAX_HANDOVER_BYTES);
        assert_eq!(encode_handover(&h), None);
        assert_eq!(decode_handover(b"{}"), None);
    }

    #[test]
    fn long_reasons_are_cut_to_fit_a_packet() {
        let o = trim_outcome(Outcome::Fatal {
            reason: "é".repeat(MAX_EVENT_BYTES),
        });
        let report = Report {
            outcome: o.clone(),
            http: Some(HttpUsage::default()),
        };
        assert!(encode_report(&report).len() < MAX_EVENT_BYTES);
        assert_eq!(decode_report(&encode_report(&report)), Some(report));
        let event = encode_event(&Event::Exited {
            process: 1,
            status: ExitStatus::Code(0),
            outcome: Some(o),
            http: None,
        });
        assert!(event.len() < MAX_EVENT_BYTES);
        assert_eq!(decode_report(b"{\"not\":\"an outcome\"}"), None);
    }
}
