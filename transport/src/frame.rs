//! The wire frame: one frame per UDP datagram, at most [`MAX_FRAME_BYTES`].
//!
//! Layout (all integers little-endian; byte-level description in `transport/FRAME.md`):
//!
//! ```text
//! magic "KN" (2) | version u8 | kind u8 |
//! from_len u8 | from (from_len bytes, UTF-8) | from_incarnation u64 |
//! to_len u8   | to (to_len bytes, UTF-8)     | to_incarnation u64 |
//! seq u64 | ack u64 | payload_len u32 | payload | crc32 u32 (over every byte before it)
//! ```
//!
//! Decoding is total: any byte string yields a [`Frame`] or a [`DecodeError`], never a panic.

use std::fmt;

/// Largest datagram Ken sends or accepts (the largest UDP payload over IPv4).
pub const MAX_FRAME_BYTES: usize = 65_507;

/// Longest process id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// Wire format version written by this build.
pub const WIRE_VERSION: u8 = 1;

/// A process's durable name. 1 to [`MAX_ID_BYTES`] bytes of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProcessId(String);

/// A random 64-bit number chosen when a process's store is created; 0 means "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Incarnation(pub u64);

/// A per-pair sequence number. The first message of a pair is 1; 0 means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Seq(pub u64);

/// What a frame carries. The header is common; payload layouts are owned by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// An application message: `seq` is its sequence number, `ack` piggybacks the cumulative
    /// acknowledgement of the reverse direction.
    Data = 1,
    /// A bare cumulative acknowledgement (`ack`); `seq` is 0.
    Ack = 2,
    /// FUSE liveness heartbeat.
    Heartbeat = 3,
    /// FUSE control (create, confirm, fail, list exchange).
    Fuse = 4,
    /// A client request: `from` is the client id, `seq` the request number.
    ClientRequest = 5,
    /// A reply to a client request: `to` is the client id, `seq` the request number.
    ClientReply = 6,
    /// Rejection of a frame addressed to another incarnation of this process.
    Reject = 7,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub from: ProcessId,
    pub from_incarnation: Incarnation,
    pub to: ProcessId,
    /// The incarnation of `to` the sender expects; 0 when the sender does not know it yet.
    pub to_incarnation: Incarnation,
    pub seq: Seq,
    pub ack: Seq,
    pub payload: Vec<u8>,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte datagram limit")]
    TooLarge { size: usize },
}

/// Why bytes are not a frame. Every variant means the datagram is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("datagram of {len} bytes is shorter than a frame header")]
    TooShort { len: usize },
    #[error("datagram of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLong { len: usize },
    #[error("bad magic bytes (not a Ken frame)")]
    BadMagic,
    #[error("wire version {0} is not supported (this build speaks {WIRE_VERSION})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("CRC32 mismatch")]
    BadChecksum,
    #[error("invalid process id: {0}")]
    BadId(String),
    #[error("length fields do not match the datagram size")]
    BadLength,
}

impl ProcessId {
    /// Validates and wraps a process id.
    pub fn new(id: impl Into<String>) -> Result<ProcessId, DecodeError> {
        let _ = id;
        unimplemented!("implemented by the transport work")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Frame {
    /// Encodes the frame into one datagram.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        unimplemented!("implemented by the transport work")
    }

    /// Decodes one datagram. Total: never panics.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        let _ = bytes;
        unimplemented!("implemented by the transport work")
    }

    /// Bytes of header and trailer around the payload for these ids.
    pub fn overhead(from: &ProcessId, to: &ProcessId) -> usize {
        2 + 1 + 1 + 1 + from.0.len() + 8 + 1 + to.0.len() + 8 + 8 + 8 + 4 + 4
    }
}
