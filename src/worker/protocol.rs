//! What the worker parent, the fork server and the worker children say to
//! each other, and how it is framed.
//!
//! - Commands, parent -> fork server: a stream socket, each frame a 4-byte
//!   big-endian length and a JSON [`Command`]. One writer, one reader.
//! - Events, fork server and children -> parent: a `SOCK_SEQPACKET` socket,
//!   one JSON [`Event`] per packet, so many writers never interleave.

use crate::contract::JobMessage;
use crate::outcome::Outcome;
use crate::sandbox::SandboxPolicy;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Largest event packet; outcomes carry guest text, so reasons are cut to fit.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest reason text carried in an outcome event.
pub const MAX_REASON_BYTES: usize = 8 * 1024;
/// Largest command frame (a 256 KiB message plus attributes, JSON-escaped).
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Which export a process calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    Run,
    OnExit { signal: u32 },
}

/// Parent -> fork server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Fork a process that loads `module` and makes one call.
    Spawn {
        process: u64,
        module: PathBuf,
        message: JobMessage,
        call: CallKind,
        /// The tenant's sandbox for this call.
        policy: SandboxPolicy,
    },
}

/// How a process ended, as `waitpid` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Fork server or child -> parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The process was forked; it leads its own process group `pid`.
    Started { process: u64, pid: i32 },
    /// The module could not be loaded; no process was forked.
    SpawnFailed {
        process: u64,
        error: String,
        invalid_component: bool,
    },
    /// Sent by the child itself just before it exits.
    Finished {
        process: u64,
        outcome: Outcome,
        duration_ms: f64,
    },
    /// The process has been reaped.
    Exited { process: u64, status: ExitStatus },
}

/// Cut guest-supplied text in an outcome so the event fits in one packet.
pub fn trim_outcome(outcome: Outcome) -> Outcome {
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

pub fn write_command(w: &mut impl Write, cmd: &Command) -> io::Result<()> {
    let json = serde_json::to_vec(cmd)?;
    let len = u32::try_from(json.len()).map_err(|_| io::Error::other("command too large"))?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    w.write_all(&frame)
}

/// Read one command; `Ok(None)` at end of stream (the parent is gone).
pub fn read_command(r: &mut impl Read) -> io::Result<Option<Command>> {
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

pub fn encode_event(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("events always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_frames() {
        let cmd = Command::Spawn {
            process: 7,
            module: "/x/job.wasm".into(),
            message: JobMessage {
                id: "m".into(),
                body: "b".repeat(300_000),
                attributes: vec![("k".into(), "v".into())],
                receive_count: 2,
            },
            call: CallKind::OnExit { signal: 15 },
            policy: SandboxPolicy::default(),
        };
        let mut buf = Vec::new();
        write_command(&mut buf, &cmd).unwrap();
        write_command(&mut buf, &cmd).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_command(&mut r).unwrap(), Some(cmd.clone()));
        assert_eq!(read_command(&mut r).unwrap(), Some(cmd));
        assert_eq!(read_command(&mut r).unwrap(), None);
    }

    #[test]
    fn long_reasons_are_cut_to_fit_a_packet() {
        let o = trim_outcome(Outcome::Fatal {
            reason: "é".repeat(MAX_EVENT_BYTES),
        });
        let event = encode_event(&Event::Finished {
            process: 1,
            outcome: o,
            duration_ms: 1.0,
        });
        assert!(event.len() < MAX_EVENT_BYTES);
    }
}
