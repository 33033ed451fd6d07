//! The wire frame: one frame per UDP datagram, at most [`MAX_FRAME_BYTES`].
//!
//! Layout (all integers little-endian; byte-level description in `transport/FRAME.md`):
//!
//! ```text
//! magic "KN" (2) | version u8 | kind u8 | protection u8 | key_id u32 |
//! from_len u8 | from (from_len bytes, UTF-8) | from_incarnation u64 |
//! to_len u8   | to (to_len bytes, UTF-8)     | to_incarnation u64 |
//! seq u64 | ack u64 | acked u64 | payload_len u32 | payload |
//! [nonce (24), when protection is 2] | [tag (16), when protection is not 0] |
//! crc32 u32 (over every byte before it)
//! ```
//!
//! Decoding is total: any byte string yields a [`Frame`] or a [`DecodeError`], never a panic.
//!
//! Authentication ([`Frame::seal`], [`Frame::open`], keys in [`crate::auth`]): a *tagged*
//! frame carries a keyed BLAKE3 tag (128 bits) over every byte before the tag: header,
//! payload and, with protection 2, the nonce; with protection 2 the payload is encrypted with
//! XChaCha20 first (encrypt-then-MAC; the header stays clear). [`Frame::open`] checks, before
//! it parses anything but what choosing the key needs (kind, protection, key id, and the raw
//! bytes of the two ids, which a client key derives from and the tag then covers): the CRC,
//! then the key, then the tag, and only then decrypts. A frame that fails is dropped with
//! its reason ([`DecodeError::is_auth`]).
//!
//! Invariants:
//! - A [`ProcessId`] is valid by construction (1 to [`MAX_ID_BYTES`] bytes of
//!   `[A-Za-z0-9._:-]`), so every [`Frame`] value encodes unless it is too large, and
//!   `decode(encode(f)) == f`.
//! - [`Frame::decode`] accepts exactly the byte strings [`Frame::encode`] produces: an
//!   untagged frame that decodes re-encodes to the same bytes (no slack, no trailing bytes,
//!   no alternative encodings). A tagged frame re-seals to other bytes (a fresh nonce).
//! - [`Frame::decode`] allocates at most the datagram's size (two ids and the payload, all
//!   cut from the datagram) and never panics.
//! - The CRC32 (IEEE, `crc32fast`) covers every byte before the trailer; the version is
//!   checked before the CRC so a future version may change the trailer.
//! - A tagged frame opens only under the key that sealed it, and only unchanged: every byte
//!   before the tag is under the tag.

use std::fmt;

use chacha20::cipher::{KeyIvInit, StreamCipher};

use crate::auth::{FrameKey, FrameKeys, KeyId, NoKeys};

/// Largest datagram Ken sends or accepts (the largest UDP payload over IPv4).
pub const MAX_FRAME_BYTES: usize = 65_507;

/// Longest process id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// Wire format version written by this build.
pub const WIRE_VERSION: u8 = 2;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"KN";

/// Bytes of an untagged frame that do not depend on the ids or the payload: magic, version,
/// kind, protection, key id, the two id lengths, two incarnations, seq, ack, acked, payload
/// length and the CRC trailer.
pub const FIXED_OVERHEAD_BYTES: usize = 2 + 1 + 1 + 1 + 4 + 1 + 8 + 1 + 8 + 8 + 8 + 8 + 4 + 4;

/// Most bytes authentication adds to a frame: the random nonce of an encrypted frame and the
/// tag (a frame that is only tagged adds [`TAG_BYTES`]).
pub const AUTH_TRAILER_BYTES: usize = NONCE_BYTES + TAG_BYTES;

/// Bytes of the tag: keyed BLAKE3, truncated to 128 bits.
pub const TAG_BYTES: usize = 16;

/// Largest header plus trailer (both ids at [`MAX_ID_BYTES`], tagged).
pub const MAX_OVERHEAD_BYTES: usize = FIXED_OVERHEAD_BYTES + AUTH_TRAILER_BYTES + 2 * MAX_ID_BYTES;

/// Smallest well-formed frame: untagged, one-byte ids and an empty payload. Shorter
/// datagrams are [`DecodeError::TooShort`].
pub const MIN_FRAME_BYTES: usize = FIXED_OVERHEAD_BYTES + 2;

/// Payload that always fits, whatever the ids, tagged or not.
pub const MIN_PAYLOAD_CAPACITY_BYTES: usize = MAX_FRAME_BYTES - MAX_OVERHEAD_BYTES;

/// Size of the CRC32 trailer.
const CRC_BYTES: usize = 4;

/// The XChaCha20 nonce of an encrypted frame.
const NONCE_BYTES: usize = 24;

/// Offsets of the fixed fields before the ids.
const KIND_OFFSET: usize = 3;
const PROTECTION_OFFSET: usize = 4;
const KEY_ID_OFFSET: usize = 5;
const FROM_LEN_OFFSET: usize = 9;

/// Values of the protection byte.
const PROTECTION_NONE: u8 = 0;
const PROTECTION_TAGGED: u8 = 1;
const PROTECTION_ENCRYPTED: u8 = 2;

// The id length is one byte on the wire, the payload length four.
const _: () = assert!(MAX_ID_BYTES <= u8::MAX as usize);
const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize);
const _: () = assert!(MAX_OVERHEAD_BYTES < MAX_FRAME_BYTES);
const _: () = assert!(MIN_FRAME_BYTES > CRC_BYTES + 3);

/// A process's durable name. 1 to [`MAX_ID_BYTES`] bytes of `[A-Za-z0-9._:-]`.
///
/// Valid by construction: [`ProcessId::new`] and deserialization both validate.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String")]
pub struct ProcessId(String);

/// A random 64-bit number chosen when a process's store is created; 0 means "unknown".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Incarnation(pub u64);

/// A per-pair sequence number. The first message of a pair is 1; 0 means "none".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
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
    /// The sender withdrew its messages up to `seq` (the application forgot this peer): the
    /// receiver treats every one of them it has not consumed as consumed, and acknowledges
    /// `seq`. `ack` and `acked` as in a data frame; no payload.
    Skip = 8,
    /// An operator's administrative request (`ken status`), answered by the runtime, never
    /// by the application: `from` is the operator tool's id, `seq` its request number, the
    /// payload the runtime's request. Under the cluster's frame key when the receiver has one.
    AdminRequest = 9,
    /// The runtime's answer to an [`FrameKind::AdminRequest`]: `seq` the request number
    /// answered, the payload the runtime's reply.
    AdminReply = 10,
}

/// How a frame is (or, to send, is to be) protected. A received frame says what its tag
/// proved; a frame to send says which key seals it (see [`crate::Keyring::seal_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    /// No tag: anyone could have sent it.
    #[default]
    None,
    /// Tagged with the cluster's frame key (a key of the receiver's keyring).
    Cluster,
    /// Tagged with the credential of the client the frame names (`from` of a request, `to` of
    /// a reply), issued under cluster key `key`; `encrypted`: the payload was (is to be)
    /// encrypted.
    Client { key: KeyId, encrypted: bool },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// What protected it (decoded), or what is to seal it (to send).
    pub auth: Auth,
    pub from: ProcessId,
    pub from_incarnation: Incarnation,
    pub to: ProcessId,
    /// The incarnation of `to` the sender expects; 0 when the sender does not know it yet.
    pub to_incarnation: Incarnation,
    pub seq: Seq,
    pub ack: Seq,
    /// The sender's view of the reverse direction of `ack`: the highest of the sender's own
    /// messages to the receiver that the receiver has acknowledged (0 = none, or not said).
    /// With `ack` it lets the receiver check its own store against what the sender knows
    /// of it (a store that rolled back is found out by its peers).
    pub acked: Seq,
    pub payload: Vec<u8>,
}

/// Why a frame could not be encoded. Nothing was written or sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte datagram limit")]
    TooLarge { size: usize },
    /// The frame asks to be sealed ([`Frame::auth`] is not `None`) and no key was given.
    #[error("the frame must be sealed ({0:?}) and no key for it is here")]
    NoKey(Auth),
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
    #[error("unknown protection {0}")]
    BadProtection(u8),
    /// An untagged frame of a kind the receiver takes only tagged (it has a key).
    #[error("untagged frame (this process requires the cluster key)")]
    Untagged,
    /// Tagged with a key the receiver does not hold (another cluster, a retired key, or no
    /// key here at all).
    #[error("tagged with unknown key {0}")]
    UnknownKey(KeyId),
    /// The tag does not match: forged or altered (the CRC matched, so not by accident).
    #[error("bad tag (forged or altered frame)")]
    BadTag,
}

impl DecodeError {
    /// True for the drops of [`Frame::open`]'s authentication (untagged, unknown key, bad
    /// tag), false for bytes that are not a well-formed frame.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            DecodeError::Untagged | DecodeError::UnknownKey(_) | DecodeError::BadTag
        )
    }
}

/// Why a string is not a valid [`ProcessId`]. Carried as text in [`DecodeError::BadId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty id")]
    Empty,
    #[error("id of {len} bytes exceeds the {MAX_ID_BYTES}-byte limit")]
    TooLong { len: usize },
    #[error("byte {byte:#04x} at offset {offset} is not one of [A-Za-z0-9._:-]")]
    BadByte { byte: u8, offset: usize },
}

impl From<IdError> for DecodeError {
    fn from(error: IdError) -> DecodeError {
        DecodeError::BadId(error.to_string())
    }
}

/// True for the bytes a process id may contain.
fn is_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-')
}

impl ProcessId {
    /// Validates and wraps a process id.
    ///
    /// Errors with [`DecodeError::BadId`] (whose text is the [`IdError`]) if the id is empty,
    /// longer than [`MAX_ID_BYTES`], or has a byte outside `[A-Za-z0-9._:-]`.
    pub fn new(id: impl Into<String>) -> Result<ProcessId, DecodeError> {
        let id = id.into();
        ProcessId::validate(id.as_bytes())?;
        Ok(ProcessId(id))
    }

    /// Checks that `bytes` are a valid process id, saying why not.
    pub fn validate(bytes: &[u8]) -> Result<(), IdError> {
        if bytes.is_empty() {
            return Err(IdError::Empty);
        }
        if bytes.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong { len: bytes.len() });
        }
        match bytes.iter().position(|&byte| !is_id_byte(byte)) {
            Some(offset) => Err(IdError::BadByte {
                byte: bytes[offset],
                offset,
            }),
            None => Ok(()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes (1 to [`MAX_ID_BYTES`]).
    pub fn len_bytes(&self) -> usize {
        self.0.len()
    }
}

impl TryFrom<String> for ProcessId {
    type Error = DecodeError;

    fn try_from(id: String) -> Result<ProcessId, DecodeError> {
        ProcessId::new(id)
    }
}

impl std::str::FromStr for ProcessId {
    type Err = DecodeError;

    fn from_str(id: &str) -> Result<ProcessId, DecodeError> {
        ProcessId::new(id)
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

impl FrameKind {
    /// Every kind, in wire-value order.
    pub const ALL: [FrameKind; 10] = [
        FrameKind::Data,
        FrameKind::Ack,
        FrameKind::Heartbeat,
        FrameKind::Fuse,
        FrameKind::ClientRequest,
        FrameKind::ClientReply,
        FrameKind::Reject,
        FrameKind::Skip,
        FrameKind::AdminRequest,
        FrameKind::AdminReply,
    ];

    /// The kind with this wire value, if any.
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        FrameKind::ALL
            .into_iter()
            .find(|kind| kind.as_u8() == value)
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl Frame {
    /// Encodes an untagged frame into one datagram.
    ///
    /// Errors with [`EncodeError::TooLarge`] if the datagram would exceed
    /// [`MAX_FRAME_BYTES`] (a frame of exactly that size is accepted), and with
    /// [`EncodeError::NoKey`] if the frame asks to be sealed ([`Frame::auth`] is not
    /// [`Auth::None`]): use [`Frame::seal`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        if self.auth != Auth::None {
            return Err(EncodeError::NoKey(self.auth));
        }
        self.encode_with(None)
    }

    /// Encodes the frame tagged with `key` (whatever [`Frame::auth`] says), its payload
    /// encrypted if `encrypt`, with a fresh random nonce.
    pub fn seal(&self, key: &FrameKey, encrypt: bool) -> Result<Vec<u8>, EncodeError> {
        self.encode_with(Some((key, encrypt)))
    }

    fn encode_with(&self, seal: Option<(&FrameKey, bool)>) -> Result<Vec<u8>, EncodeError> {
        let trailer = match seal {
            None => 0,
            Some((_, false)) => TAG_BYTES,
            Some((_, true)) => AUTH_TRAILER_BYTES,
        };
        let size = self.untagged_len().saturating_add(trailer);
        if size > MAX_FRAME_BYTES {
            return Err(EncodeError::TooLarge { size });
        }
        let (protection, key_id) = match seal {
            None => (PROTECTION_NONE, KeyId(0)),
            Some((key, false)) => (PROTECTION_TAGGED, key.id()),
            Some((key, true)) => (PROTECTION_ENCRYPTED, key.id()),
        };
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.kind.as_u8());
        out.push(protection);
        out.extend_from_slice(&key_id.0.to_le_bytes());
        put_id(&mut out, &self.from);
        out.extend_from_slice(&self.from_incarnation.0.to_le_bytes());
        put_id(&mut out, &self.to);
        out.extend_from_slice(&self.to_incarnation.0.to_le_bytes());
        out.extend_from_slice(&self.seq.0.to_le_bytes());
        out.extend_from_slice(&self.ack.0.to_le_bytes());
        out.extend_from_slice(&self.acked.0.to_le_bytes());
        let payload_len = u32::try_from(self.payload.len())
            .expect("payload length is bounded by MAX_FRAME_BYTES, checked above");
        out.extend_from_slice(&payload_len.to_le_bytes());
        let payload_start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some((key, encrypt)) = seal {
            if encrypt {
                let nonce: [u8; NONCE_BYTES] = rand::random();
                let mut cipher = chacha20::XChaCha20::new(&key.encryption.into(), &nonce.into());
                cipher.apply_keystream(&mut out[payload_start..]);
                out.extend_from_slice(&nonce);
            }
            let tag = tag(key, &out);
            out.extend_from_slice(&tag);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(out.len(), size, "encoded length disagrees with encoded_len");
        Ok(out)
    }

    /// Size of this frame's datagram in bytes (may exceed [`MAX_FRAME_BYTES`]), with the tag
    /// (and the nonce of an encrypted client frame) its [`Frame::auth`] asks for. (Whether
    /// a cluster frame is encrypted is the keyring's policy: its 24-byte nonce is not
    /// counted.)
    pub fn encoded_len(&self) -> usize {
        let trailer = match self.auth {
            Auth::None => 0,
            Auth::Cluster
            | Auth::Client {
                encrypted: false, ..
            } => TAG_BYTES,
            Auth::Client {
                encrypted: true, ..
            } => AUTH_TRAILER_BYTES,
        };
        self.untagged_len().saturating_add(trailer)
    }

    fn untagged_len(&self) -> usize {
        FIXED_OVERHEAD_BYTES + self.from.0.len() + self.to.0.len() + self.payload.len()
    }

    /// Decodes one untagged datagram (a process or tool without keys). Total: never panics.
    /// A tagged frame is [`DecodeError::UnknownKey`].
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        Frame::open(bytes, &NoKeys)
    }

    /// Decodes one datagram, checking its tag with `keys`. Total: never panics.
    ///
    /// Checks, in order: the size bounds, the magic, the version, the CRC32, the kind and
    /// the protection byte; then, for an untagged frame, whether `keys` takes one of this
    /// kind ([`DecodeError::Untagged`]); for a tagged one, the key ([`DecodeError::UnknownKey`])
    /// and the tag ([`DecodeError::BadTag`]), decrypting the payload if it is encrypted; then
    /// the structure (id lengths and bytes, `payload_len` equal to exactly the bytes left
    /// before the trailer). Nothing but the fixed fields and the raw id bytes is read before
    /// the tag is checked.
    pub fn open(bytes: &[u8], keys: &dyn FrameKeys) -> Result<Frame, DecodeError> {
        let len = bytes.len();
        if len > MAX_FRAME_BYTES {
            return Err(DecodeError::TooLong { len });
        }
        if len < MIN_FRAME_BYTES {
            return Err(DecodeError::TooShort { len });
        }
        let (body, trailer) = bytes.split_at(len - CRC_BYTES);
        if body[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = body[MAGIC.len()];
        if version != WIRE_VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let crc = u32::from_le_bytes(trailer.try_into().map_err(|_| DecodeError::BadLength)?);
        if crc != crc32fast::hash(body) {
            return Err(DecodeError::BadChecksum);
        }
        let kind_value = body[KIND_OFFSET];
        let kind = FrameKind::from_u8(kind_value).ok_or(DecodeError::BadKind(kind_value))?;
        let protection = body[PROTECTION_OFFSET];
        let mut key_bytes = [0u8; 4];
        key_bytes.copy_from_slice(&body[KEY_ID_OFFSET..KEY_ID_OFFSET + 4]);
        let key_id = KeyId(u32::from_le_bytes(key_bytes));
        match protection {
            PROTECTION_NONE => {
                if !keys.accepts_untagged(kind) {
                    return Err(DecodeError::Untagged);
                }
                if key_id.0 != 0 {
                    return Err(DecodeError::BadLength);
                }
                Frame::parse(body, kind, Auth::None, None)
            }
            PROTECTION_TAGGED | PROTECTION_ENCRYPTED => {
                let encrypted = protection == PROTECTION_ENCRYPTED;
                let trailer = if encrypted {
                    AUTH_TRAILER_BYTES
                } else {
                    TAG_BYTES
                };
                let sealed_len = body
                    .len()
                    .checked_sub(trailer)
                    .filter(|n| *n >= MIN_FRAME_BYTES - CRC_BYTES)
                    .ok_or(DecodeError::BadLength)?;
                let (sealed, auth_trailer) = body.split_at(sealed_len);
                let (from, to, payload_start) = raw_ids(sealed).ok_or(DecodeError::BadLength)?;
                let (key, auth) = keys
                    .key(kind, key_id, from, to)
                    .ok_or(DecodeError::UnknownKey(key_id))?;
                let (nonce, received) = auth_trailer.split_at(auth_trailer.len() - TAG_BYTES);
                let expected = tag(&key, &body[..body.len() - TAG_BYTES]);
                if !constant_time_eq(&expected, received) {
                    return Err(DecodeError::BadTag);
                }
                let auth = match auth {
                    Auth::Client { key, .. } => Auth::Client { key, encrypted },
                    other => other,
                };
                if encrypted {
                    let mut plain = sealed.to_vec();
                    let nonce: [u8; NONCE_BYTES] =
                        nonce.try_into().map_err(|_| DecodeError::BadLength)?;
                    let mut cipher =
                        chacha20::XChaCha20::new(&key.encryption.into(), &nonce.into());
                    cipher.apply_keystream(&mut plain[payload_start..]);
                    Frame::parse(&plain, kind, auth, Some(key_id))
                } else {
                    Frame::parse(sealed, kind, auth, Some(key_id))
                }
            }
            other => Err(DecodeError::BadProtection(other)),
        }
    }

    /// Parses the header and payload of `body` (the frame less its trailers), whose kind and
    /// protection were read and checked by [`Frame::open`].
    fn parse(
        body: &[u8],
        kind: FrameKind,
        auth: Auth,
        key_id: Option<KeyId>,
    ) -> Result<Frame, DecodeError> {
        let mut reader = Reader {
            bytes: body,
            pos: FROM_LEN_OFFSET,
        };
        debug_assert!(key_id.is_some() == (auth != Auth::None));
        let from = reader.id()?;
        let from_incarnation = Incarnation(reader.u64()?);
        let to = reader.id()?;
        let to_incarnation = Incarnation(reader.u64()?);
        let seq = Seq(reader.u64()?);
        let ack = Seq(reader.u64()?);
        let acked = Seq(reader.u64()?);
        let payload_len = usize::try_from(reader.u32()?).map_err(|_| DecodeError::BadLength)?;
        if payload_len != reader.remaining() {
            return Err(DecodeError::BadLength);
        }
        let payload = reader.take(payload_len)?.to_vec();
        Ok(Frame {
            kind,
            auth,
            from,
            from_incarnation,
            to,
            to_incarnation,
            seq,
            ack,
            acked,
            payload,
        })
    }

    /// Bytes of header and trailers around the payload for these ids, encrypted (the largest
    /// case; a tagged frame is 24 bytes smaller, an untagged one [`AUTH_TRAILER_BYTES`]).
    pub fn overhead(from: &ProcessId, to: &ProcessId) -> usize {
        FIXED_OVERHEAD_BYTES + AUTH_TRAILER_BYTES + from.0.len() + to.0.len()
    }

    /// Largest payload a frame between these ids can carry, tagged or not.
    pub fn max_payload(from: &ProcessId, to: &ProcessId) -> usize {
        let overhead = Frame::overhead(from, to);
        assert!(
            overhead <= MAX_OVERHEAD_BYTES,
            "ids are at most MAX_ID_BYTES"
        );
        MAX_FRAME_BYTES - overhead
    }
}

/// The tag of `bytes` under `key`: keyed BLAKE3, truncated to [`TAG_BYTES`].
fn tag(key: &FrameKey, bytes: &[u8]) -> [u8; TAG_BYTES] {
    let hash = blake3::keyed_hash(&key.mac, bytes);
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&hash.as_bytes()[..TAG_BYTES]);
    tag
}

/// Compares two tags without an early exit (the time does not tell how much matched).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key id of a well-formed tagged datagram (read without checking anything else).
pub fn key_id_of(datagram: &[u8]) -> Option<KeyId> {
    let bytes = datagram.get(KEY_ID_OFFSET..KEY_ID_OFFSET + 4)?;
    Some(KeyId(u32::from_le_bytes(bytes.try_into().ok()?)))
}

/// The raw bytes of the two ids of a sealed body, and where its payload starts: read (bounds
/// checked, not validated) before the tag is checked, because a client's key derives from its
/// id and an encrypted payload's start depends on the id lengths. The tag covers them all.
fn raw_ids(sealed: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let from_len = usize::from(*sealed.get(FROM_LEN_OFFSET)?);
    let from_start = FROM_LEN_OFFSET + 1;
    let from = sealed.get(from_start..from_start + from_len)?;
    let to_len_at = from_start + from_len + 8;
    let to_len = usize::from(*sealed.get(to_len_at)?);
    let to = sealed.get(to_len_at + 1..to_len_at + 1 + to_len)?;
    // to_incarnation, seq, ack, acked, payload_len
    let payload_start = to_len_at + 1 + to_len + 8 + 8 + 8 + 8 + 4;
    (payload_start <= sealed.len()).then_some((from, to, payload_start))
}

/// Writes an id as its length byte and its bytes.
fn put_id(out: &mut Vec<u8>, id: &ProcessId) {
    let len = u8::try_from(id.0.len()).expect("ProcessId is valid by construction");
    out.push(len);
    out.extend_from_slice(id.0.as_bytes());
}

/// A cursor over untrusted bytes: every read is bounds-checked and fails with
/// [`DecodeError::BadLength`] past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::BadLength)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::BadLength)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::BadLength)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length byte and that many id bytes. The length is validated before the bytes are
    /// read, so an absurd length is [`DecodeError::BadId`], a truncated id
    /// [`DecodeError::BadLength`].
    fn id(&mut self) -> Result<ProcessId, DecodeError> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Err(IdError::Empty.into());
        }
        if len > MAX_ID_BYTES {
            return Err(IdError::TooLong { len }.into());
        }
        let bytes = self.take(len)?;
        ProcessId::validate(bytes)?;
        let id = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::BadId("not UTF-8".to_owned()))?
            .to_owned();
        Ok(ProcessId(id))
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ProcessId {
        ProcessId::new(s).expect("valid test id")
    }

    fn sample() -> Frame {
        Frame {
            kind: FrameKind::Data,
            auth: Auth::None,
            from: id("alice"),
            from_incarnation: Incarnation(0x0102_0304_0506_0708),
            to: id("bob:1"),
            to_incarnation: Incarnation(7),
            seq: Seq(42),
            ack: Seq(41),
            acked: Seq(40),
            payload: b"hello".to_vec(),
        }
    }

    /// Recomputes the trailer after a test edits the body.
    fn fix_crc(bytes: &mut [u8]) {
        let n = bytes.len() - CRC_BYTES;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn layout_matches_frame_md() {
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[0..2], b"KN");
        assert_eq!(bytes[2], WIRE_VERSION);
        assert_eq!(bytes[3], FrameKind::Data as u8);
        assert_eq!(bytes[4], PROTECTION_NONE);
        assert_eq!(&bytes[5..9], &[0, 0, 0, 0]);
        assert_eq!(bytes[9], 5);
        assert_eq!(&bytes[10..15], b"alice");
        assert_eq!(&bytes[15..23], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[23], 5);
        assert_eq!(&bytes[24..29], b"bob:1");
        assert_eq!(&bytes[29..37], &7u64.to_le_bytes());
        assert_eq!(&bytes[37..45], &42u64.to_le_bytes());
        assert_eq!(&bytes[45..53], &41u64.to_le_bytes());
        assert_eq!(&bytes[53..61], &40u64.to_le_bytes());
        assert_eq!(&bytes[61..65], &5u32.to_le_bytes());
        assert_eq!(&bytes[65..70], b"hello");
        assert_eq!(&bytes[70..74], &crc32fast::hash(&bytes[..70]).to_le_bytes());
        // The worked example in FRAME.md.
        assert_eq!(&bytes[70..74], &FRAME_MD_CRC);
        assert_eq!(bytes.len(), 74);
        assert_eq!(bytes.len(), sample().encoded_len());
        assert_eq!(Frame::decode(&bytes), Ok(sample()));
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind.as_u8()), Some(kind));
            let frame = Frame { kind, ..sample() };
            assert_eq!(Frame::decode(&frame.encode().unwrap()), Ok(frame));
        }
        assert_eq!(FrameKind::from_u8(0), None);
        assert_eq!(FrameKind::from_u8(11), None);
    }

    /// The CRC of the worked example in FRAME.md.
    const FRAME_MD_CRC: [u8; 4] = [0xb3, 0x36, 0x58, 0xad];

    #[test]
    fn process_id_validation() {
        for good in [
            "a",
            "Z",
            "0",
            "node-1",
            "c-0123456789abcdef0123456789abcdef",
            "a.b_c:d-e",
        ] {
            assert_eq!(id(good).as_str(), good);
        }
        assert_eq!(
            ProcessId::new("x".repeat(MAX_ID_BYTES))
                .unwrap()
                .len_bytes(),
            MAX_ID_BYTES
        );
        assert_eq!(ProcessId::validate(b""), Err(IdError::Empty));
        assert_eq!(
            ProcessId::validate("x".repeat(MAX_ID_BYTES + 1).as_bytes()),
            Err(IdError::TooLong {
                len: MAX_ID_BYTES + 1
            })
        );
        assert_eq!(
            ProcessId::validate(b"a b"),
            Err(IdError::BadByte {
                byte: b' ',
                offset: 1
            })
        );
        assert_eq!(
            ProcessId::validate(b"a/b"),
            Err(IdError::BadByte {
                byte: b'/',
                offset: 1
            })
        );
        assert_eq!(
            ProcessId::validate("é".as_bytes()),
            Err(IdError::BadByte {
                byte: 0xc3,
                offset: 0
            })
        );
        for bad in ["", "a b", "a\0", "a\n", "ü", "a,b", "a+b", "a=b"] {
            assert!(
                matches!(ProcessId::new(bad), Err(DecodeError::BadId(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ProcessId::new("y".repeat(65)),
            Err(DecodeError::BadId(_))
        ));
        assert!("bad id".parse::<ProcessId>().is_err());
        assert_eq!("good".parse::<ProcessId>(), Ok(id("good")));
    }

    #[test]
    fn process_id_deserialization_validates() {
        // serde goes through TryFrom<String>: an invalid id cannot be smuggled in.
        use serde::de::value::{Error as DeError, StrDeserializer};
        use serde::de::IntoDeserializer;
        use serde::Deserialize;
        let ok: StrDeserializer<'_, DeError> = "node-1".into_deserializer();
        assert_eq!(ProcessId::deserialize(ok), Ok(id("node-1")));
        let bad: StrDeserializer<'_, DeError> = "no spaces".into_deserializer();
        assert!(ProcessId::deserialize(bad).is_err());
    }

    #[test]
    fn encode_too_large_at_exactly_the_boundary() {
        let key = crate::auth::ClusterKey::from_bytes([5; 32]).frame_key();
        let mut frame = sample();
        let max = Frame::max_payload(&frame.from, &frame.to);
        frame.payload = vec![0xab; max];
        // Encrypted: `max_payload` is exact; tagged only, 24 bytes are spare.
        let bytes = frame
            .seal(&key, true)
            .expect("a sealed frame of exactly MAX_FRAME_BYTES");
        assert_eq!(bytes.len(), MAX_FRAME_BYTES);
        let bytes = frame.seal(&key, false).expect("a tagged frame fits");
        assert_eq!(
            bytes.len(),
            MAX_FRAME_BYTES - (AUTH_TRAILER_BYTES - TAG_BYTES)
        );
        // Untagged: the trailer's bytes are free for payload.
        frame.payload = vec![0xab; max + AUTH_TRAILER_BYTES];
        let bytes = frame
            .encode()
            .expect("a frame of exactly MAX_FRAME_BYTES encodes");
        assert_eq!(bytes.len(), MAX_FRAME_BYTES);
        assert_eq!(Frame::decode(&bytes), Ok(frame.clone()));
        assert!(matches!(
            frame.seal(&key, true),
            Err(EncodeError::TooLarge { .. })
        ));
        frame.payload.push(0);
        assert_eq!(
            frame.encode(),
            Err(EncodeError::TooLarge {
                size: MAX_FRAME_BYTES + 1
            })
        );
    }

    #[test]
    fn max_payload_bounds() {
        let long = ProcessId::new("L".repeat(MAX_ID_BYTES)).unwrap();
        assert_eq!(Frame::max_payload(&long, &long), MIN_PAYLOAD_CAPACITY_BYTES);
        assert_eq!(
            Frame::max_payload(&id("a"), &id("b")),
            MAX_FRAME_BYTES - MIN_FRAME_BYTES - AUTH_TRAILER_BYTES
        );
        let empty = Frame {
            from: id("a"),
            to: id("b"),
            payload: Vec::new(),
            ..sample()
        };
        assert_eq!(empty.encode().unwrap().len(), MIN_FRAME_BYTES);
    }

    #[test]
    fn decode_too_short() {
        for len in 0..MIN_FRAME_BYTES {
            assert_eq!(
                Frame::decode(&vec![0; len]),
                Err(DecodeError::TooShort { len })
            );
        }
        let mut bytes = sample().encode().unwrap();
        bytes.truncate(MIN_FRAME_BYTES - 1);
        assert_eq!(
            Frame::decode(&bytes),
            Err(DecodeError::TooShort {
                len: MIN_FRAME_BYTES - 1
            })
        );
    }

    #[test]
    fn decode_too_long() {
        let len = MAX_FRAME_BYTES + 1;
        assert_eq!(
            Frame::decode(&vec![0; len]),
            Err(DecodeError::TooLong { len })
        );
    }

    #[test]
    fn decode_bad_magic() {
        let mut bytes = sample().encode().unwrap();
        bytes[1] = b'X';
        fix_crc(&mut bytes);
        assert_eq!(Frame::decode(&bytes), Err(DecodeError::BadMagic));
    }

    #[test]
    fn decode_bad_version() {
        let mut bytes = sample().encode().unwrap();
        bytes[2] = WIRE_VERSION + 1;
        fix_crc(&mut bytes);
        assert_eq!(
            Frame::decode(&bytes),
            Err(DecodeError::BadVersion(WIRE_VERSION + 1))
        );
    }

    #[test]
    fn decode_bad_kind() {
        for kind in [0u8, 11, 255] {
            let mut bytes = sample().encode().unwrap();
            bytes[3] = kind;
            fix_crc(&mut bytes);
            assert_eq!(Frame::decode(&bytes), Err(DecodeError::BadKind(kind)));
        }
    }

    #[test]
    fn decode_bad_checksum() {
        let good = sample().encode().unwrap();
        for index in [3, 10, good.len() - 6, good.len() - 1] {
            let mut bytes = good.clone();
            bytes[index] ^= 0x10;
            assert_eq!(
                Frame::decode(&bytes),
                Err(DecodeError::BadChecksum),
                "byte {index}"
            );
        }
    }

    #[test]
    fn decode_bad_id() {
        let good = sample().encode().unwrap();
        // A forbidden byte inside `from`.
        let mut bytes = good.clone();
        bytes[FROM_LEN_OFFSET + 2] = b' ';
        fix_crc(&mut bytes);
        assert!(matches!(Frame::decode(&bytes), Err(DecodeError::BadId(_))));
        // A forbidden byte inside `to` (offset 24 is its first byte for the sample).
        let mut bytes = good.clone();
        bytes[24] = 0xff;
        fix_crc(&mut bytes);
        assert!(matches!(Frame::decode(&bytes), Err(DecodeError::BadId(_))));
        // Zero-length and over-long ids.
        for len in [0u8, MAX_ID_BYTES as u8 + 1, 255] {
            let mut bytes = good.clone();
            bytes[FROM_LEN_OFFSET] = len;
            fix_crc(&mut bytes);
            assert!(
                matches!(Frame::decode(&bytes), Err(DecodeError::BadId(_))),
                "len {len}"
            );
        }
    }

    #[test]
    fn decode_bad_length() {
        let good = sample().encode().unwrap();
        let payload_len_offset = good.len() - CRC_BYTES - 5 - 4;
        // payload_len one too big, one too small, huge.
        for delta in [1i64, -1, 1 << 31] {
            let mut bytes = good.clone();
            let value = (5 + delta) as u32;
            bytes[payload_len_offset..payload_len_offset + 4].copy_from_slice(&value.to_le_bytes());
            fix_crc(&mut bytes);
            assert_eq!(
                Frame::decode(&bytes),
                Err(DecodeError::BadLength),
                "delta {delta}"
            );
        }
        // An extra byte before the trailer.
        let mut bytes = good.clone();
        bytes.insert(good.len() - CRC_BYTES, 0);
        fix_crc(&mut bytes);
        assert_eq!(Frame::decode(&bytes), Err(DecodeError::BadLength));
        // `from_len` claims more bytes than the datagram has.
        let tiny = Frame {
            from: id("a"),
            to: id("b"),
            payload: Vec::new(),
            ..sample()
        };
        let mut bytes = tiny.encode().unwrap();
        bytes[FROM_LEN_OFFSET] = MAX_ID_BYTES as u8;
        fix_crc(&mut bytes);
        assert_eq!(Frame::decode(&bytes), Err(DecodeError::BadLength));
    }

    #[test]
    fn decoded_frames_reencode_identically() {
        let bytes = sample().encode().unwrap();
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.encode().unwrap(), bytes);
    }

    /// A keyring over one key, as a process holds it.
    fn ring(byte: u8) -> crate::auth::Keyring {
        crate::auth::Keyring::new(&crate::auth::ClusterKey::from_bytes([byte; 32]), &[], false)
            .unwrap()
    }

    #[test]
    fn sealed_frames_open_under_their_key_only() {
        let ours = ring(1);
        let key = crate::auth::ClusterKey::from_bytes([1; 32]).frame_key();
        for encrypt in [false, true] {
            let bytes = sample().seal(&key, encrypt).unwrap();
            let trailer = if encrypt {
                AUTH_TRAILER_BYTES
            } else {
                TAG_BYTES
            };
            assert_eq!(bytes.len(), sample().encoded_len() + trailer);
            assert_eq!(bytes[PROTECTION_OFFSET], if encrypt { 2 } else { 1 });
            let opened = Frame::open(&bytes, &ours).unwrap();
            assert_eq!(
                opened,
                Frame {
                    auth: Auth::Cluster,
                    ..sample()
                }
            );
            // Encryption hides the payload; a tag alone does not.
            let clear = bytes.windows(5).any(|w| w == b"hello");
            assert_eq!(clear, !encrypt);
            // Another cluster's key, or none.
            assert_eq!(
                Frame::open(&bytes, &ring(2)),
                Err(DecodeError::UnknownKey(key.id()))
            );
            assert_eq!(
                Frame::decode(&bytes),
                Err(DecodeError::UnknownKey(key.id()))
            );
        }
        // An untagged peer frame is refused by a process with a key.
        let plain = sample().encode().unwrap();
        assert_eq!(Frame::open(&plain, &ours), Err(DecodeError::Untagged));
        // ...but an anonymous client's request passes (the runtime decides).
        let request = Frame {
            kind: FrameKind::ClientRequest,
            ..sample()
        };
        let opened = Frame::open(&request.encode().unwrap(), &ours).unwrap();
        assert_eq!(opened.auth, Auth::None);
    }

    #[test]
    fn every_altered_byte_of_a_sealed_frame_is_refused() {
        let ours = ring(3);
        let key = crate::auth::ClusterKey::from_bytes([3; 32]).frame_key();
        for encrypt in [false, true] {
            let good = sample().seal(&key, encrypt).unwrap();
            for i in 0..good.len() - CRC_BYTES {
                for flip in [0x01u8, 0x80] {
                    let mut bytes = good.clone();
                    bytes[i] ^= flip;
                    // A forger fixes the CRC too: only the tag can tell.
                    fix_crc(&mut bytes);
                    let result = Frame::open(&bytes, &ours);
                    assert!(
                        result.is_err(),
                        "byte {i} ^ {flip:#x} (encrypt {encrypt}) opened: {result:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn client_frames_use_the_clients_token() {
        let cluster = crate::auth::ClusterKey::from_bytes([4; 32]);
        let ring = crate::auth::Keyring::new(&cluster, &[], false).unwrap();
        let credential = cluster.credential([0xab; 16]);
        let client = ProcessId::new(format!("c-{}", "ab".repeat(16))).unwrap();
        let request = Frame {
            kind: FrameKind::ClientRequest,
            from: client.clone(),
            ..sample()
        };
        let bytes = request.seal(&credential.frame_key(), true).unwrap();
        let opened = Frame::open(&bytes, &ring).unwrap();
        assert_eq!(
            opened.auth,
            Auth::Client {
                key: cluster.id(),
                encrypted: true
            }
        );
        // The same bytes from another client id do not open: the token is per id.
        let other = cluster.credential([0xac; 16]);
        let forged = Frame {
            from: ProcessId::new(format!("c-{}", "ab".repeat(16))).unwrap(),
            ..request.clone()
        }
        .seal(&other.frame_key(), false)
        .unwrap();
        assert_eq!(Frame::open(&forged, &ring), Err(DecodeError::BadTag));
        // The reply, sealed by the keyring, opens with the credential only.
        let reply = Frame {
            kind: FrameKind::ClientReply,
            from: id("server"),
            to: client,
            auth: opened.auth,
            ..sample()
        };
        let (key, encrypt) = ring.seal_key(reply.auth, Some([0xab; 16])).unwrap();
        let bytes = reply.seal(&key, encrypt).unwrap();
        assert_eq!(Frame::open(&bytes, &credential).unwrap().payload, b"hello");
        assert!(Frame::open(&bytes, &other).is_err());
    }
}
