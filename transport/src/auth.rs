//! Keys: the cluster key, the subkeys derived from it, client credentials, and the keyring an
//! endpoint tags and checks frames with.
//!
//! The primitives (SECURITY.md says why these):
//! - Frames are tagged with keyed BLAKE3 (the `blake3` crate, by the BLAKE3 designers),
//!   truncated to 128 bits, over every byte of the frame before the tag: a deterministic PRF,
//!   so there is no nonce to manage for authentication. Encrypted frames also carry a random
//!   192-bit nonce and their payload is encrypted with XChaCha20 (RustCrypto's `chacha20`,
//!   audited by NCC Group) under a separate key, encrypt-then-MAC: the tag covers the nonce
//!   and the ciphertext and is checked before anything is decrypted. Random nonces of that
//!   size never repeat in practice, so nothing about them has to survive a crash.
//!   (`frame.rs` does the framing; this module only chooses keys.)
//! - Subkeys come from the cluster key through BLAKE3's key derivation mode, each with its
//!   own context string, so one key file serves every purpose without cross-use: the frame
//!   MAC key, the frame encryption key, the client-token key, and the key id.
//! - A client credential is a client id (16 random bytes) and its *token*, keyed BLAKE3 of
//!   the id under the client-token key. A server recomputes the token from the id a request
//!   names, so it keeps no table of secrets; nobody without the cluster key can make one.
//!
//! Invariants:
//! - Secret bytes are never printed (`Debug` shows the key id) and are zeroed when dropped.
//! - A key file is written only where no file exists, with mode 0600 on Unix.
//! - Key ids within one [`Keyring`] are distinct (checked when it is built), so the key id in
//!   a frame names exactly one key.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

use crate::frame::{Auth, EncodeError, Frame, FrameKind};

/// First word of a cluster key file.
pub const KEY_FILE_MAGIC: &str = "ken-key-v1";

/// First word of a client credential file.
pub const CREDENTIAL_FILE_MAGIC: &str = "ken-client-v1";

/// Largest key or credential file read, in bytes (a key file is 76 bytes).
pub const KEY_FILE_BYTES_MAX: u64 = 4096;

/// Bytes of a cluster key and of every derived key.
pub const KEY_BYTES: usize = 32;

/// Bytes of a client id.
pub const CLIENT_ID_BYTES: usize = 16;

/// Context strings of the derived keys (BLAKE3 `derive_key`: globally unique, fixed).
const CONTEXT_FRAME_MAC: &str = "ken 2026-12 frame mac v1";
const CONTEXT_FRAME_ENCRYPTION: &str = "ken 2026-12 frame encryption v1";
const CONTEXT_CLIENT: &str = "ken 2026-12 client token v1";
const CONTEXT_CLIENT_MAC: &str = "ken 2026-12 client mac v1";
const CONTEXT_CLIENT_ENCRYPTION: &str = "ken 2026-12 client encryption v1";
const CONTEXT_KEY_ID: &str = "ken 2026-12 key id v1";
const CONTEXT_STANDBY: &str = "ken 2026-12 standby v1";
const CONTEXT_STANDBY_SESSION: &str = "ken 2026-12 standby session v1";
const CONTEXT_STANDBY_ENCRYPTION: &str = "ken 2026-12 standby stream encryption v1";

/// The subkey of `key` for `context`.
fn derive(context: &str, key: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    blake3::derive_key(context, key)
}

/// Names a cluster key in frames and credentials without revealing it: the first four bytes
/// of a PRF of the key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a key or credential file could not be used. Nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("key file {path} does not exist (make one with `ken keygen {path}`)")]
    Missing { path: PathBuf },
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a {what} file: {why}")]
    NotAKey {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("{path}: the key is {bytes} bytes; a key is {KEY_BYTES} bytes (64 hex digits)")]
    WrongLength { path: PathBuf, bytes: usize },
    #[error("{path} exists already; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cluster's shared secret: 256 random bits. Every process of a cluster holds the same
/// key (or, during a rotation, the new one and the old one).
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; KEY_BYTES],
}

impl Drop for ClusterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.id())
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &ClusterKey) -> bool {
        // Compared only when building a keyring, never against attacker input.
        self.bytes == other.bytes
    }
}

impl Eq for ClusterKey {}

impl ClusterKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> ClusterKey {
        use rand::RngCore;
        let mut bytes = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        ClusterKey { bytes }
    }

    /// A key with these bytes (tests, and keys kept elsewhere than in a key file).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> ClusterKey {
        ClusterKey { bytes }
    }

    /// The key's id (what frames and credentials name it by).
    pub fn id(&self) -> KeyId {
        let out = derive(CONTEXT_KEY_ID, &self.bytes);
        KeyId(u32::from_le_bytes([out[0], out[1], out[2], out[3]]))
    }

    /// The text of a key file: `ken-key-v1 <64 lowercase hex digits>` and a newline.
    pub fn to_file_text(&self) -> String {
        format!("{KEY_FILE_MAGIC} {}\n", hex(&self.bytes))
    }

    /// Parses the text of a key file (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ClusterKey, KeyFileError> {
        let not_a_key = |why: String| KeyFileError::NotAKey {
            path: path.to_owned(),
            what: "Ken key",
            why,
        };
        let mut words = text.split_whitespace();
        match words.next() {
            Some(KEY_FILE_MAGIC) => {}
            Some(other) => {
                return Err(not_a_key(format!(
                    "it starts with {:?}, not {KEY_FILE_MAGIC:?}",
                    truncate(other)
                )))
            }
            None => return Err(not_a_key("it is empty".into())),
        }
        let digits = words
            .next()
            .ok_or_else(|| not_a_key("no key after the first word".into()))?;
        if words.next().is_some() {
            return Err(not_a_key("text after the key".into()));
        }
        let bytes = unhex(digits).ok_or_else(|| not_a_key("the key is not hex digits".into()))?;
        let bytes: [u8; KEY_BYTES] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyFileError::WrongLength {
                    path: path.to_owned(),
                    bytes: bytes.len(),
                })?;
        Ok(ClusterKey { bytes })
    }

    /// Reads a key file. A file that others than its owner may read is used, with a warning
    /// logged (the key is the cluster's only secret; `chmod 600 FILE`).
    pub fn load(path: &Path) -> Result<ClusterKey, KeyFileError> {
        let text = read_secret_file(path)?;
        ClusterKey::parse(&text, path)
    }

    /// Writes a fresh key to `path` (mode 0600), refusing to overwrite anything.
    pub fn write_new(path: &Path) -> Result<ClusterKey, KeyFileError> {
        let key = ClusterKey::generate();
        write_secret_file(path, &key.to_file_text())?;
        Ok(key)
    }

    /// The keys that tag and encrypt frames.
    pub fn frame_key(&self) -> FrameKey {
        FrameKey {
            id: self.id(),
            mac: derive(CONTEXT_FRAME_MAC, &self.bytes),
            encryption: derive(CONTEXT_FRAME_ENCRYPTION, &self.bytes),
        }
    }

    /// The key client tokens are derived under.
    fn client_key(&self) -> [u8; KEY_BYTES] {
        derive(CONTEXT_CLIENT, &self.bytes)
    }

    /// Issues the credential of client `id`: anyone holding it can speak as that client to
    /// any process that holds this key.
    pub fn credential(&self, id: [u8; CLIENT_ID_BYTES]) -> ClientCredential {
        let mut client_key = self.client_key();
        let token = token(&client_key, &id);
        client_key.zeroize();
        ClientCredential {
            id,
            key: self.id(),
            token,
        }
    }

    /// Issues a credential for a fresh random client id.
    pub fn new_credential(&self) -> ClientCredential {
        use rand::RngCore;
        let mut id = [0u8; CLIENT_ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut id);
        self.credential(id)
    }
}

impl ClusterKey {
    /// The key that authenticates a primary's connection to its standby (`ken::standby`):
    /// distinct from every frame and client key.
    pub fn standby_key(&self) -> StandbyKey {
        StandbyKey {
            bytes: derive(CONTEXT_STANDBY, &self.bytes),
        }
    }
}

/// The XChaCha20 key of one standby connection ([`StandbyKey::stream_key`]).
pub struct StreamKey {
    bytes: [u8; KEY_BYTES],
}

impl Drop for StreamKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamKey(..)")
    }
}

impl StreamKey {
    /// Encrypts (or decrypts: the same operation) `data`, message `number` of direction
    /// `dir`; the nonce is the direction and the number.
    pub fn apply(&self, dir: u8, number: u64, data: &mut [u8]) {
        use chacha20::cipher::{KeyIvInit, StreamCipher};
        let mut nonce = [0u8; 24];
        nonce[0] = dir;
        nonce[1..9].copy_from_slice(&number.to_le_bytes());
        let mut cipher = chacha20::XChaCha20::new(&self.bytes.into(), &nonce.into());
        cipher.apply_keystream(data);
    }
}

/// A keyed-BLAKE3 MAC key of the standby stream (`ken::standby`): the cluster key's
/// standby key, or the per-connection key derived from it and both ends' nonces
/// ([`StandbyKey::session`]).
#[derive(Clone)]
pub struct StandbyKey {
    bytes: [u8; KEY_BYTES],
}

impl Drop for StandbyKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for StandbyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StandbyKey(..)")
    }
}

impl StandbyKey {
    /// Bytes of a tag.
    pub const TAG_BYTES: usize = 32;

    /// The key of one connection: derived from this key and the nonces both ends chose for
    /// it, so that nothing recorded from another connection verifies on this one.
    pub fn session(&self, primary_nonce: &[u8; 16], standby_nonce: &[u8; 16]) -> StandbyKey {
        let mut material = [0u8; KEY_BYTES + 32];
        material[..KEY_BYTES].copy_from_slice(&self.bytes);
        material[KEY_BYTES..KEY_BYTES + 16].copy_from_slice(primary_nonce);
        material[KEY_BYTES + 16..].copy_from_slice(standby_nonce);
        let bytes = blake3::derive_key(CONTEXT_STANDBY_SESSION, &material);
        material.zeroize();
        StandbyKey { bytes }
    }

    /// The key that encrypts this connection's messages ([`StreamKey::apply`]), derived
    /// from this one once per connection. Only for a connection's key
    /// ([`StandbyKey::session`]), where each (direction, number) names one message: never
    /// under the cluster's standby key, which every connection shares.
    pub fn stream_key(&self) -> StreamKey {
        StreamKey {
            bytes: blake3::derive_key(CONTEXT_STANDBY_ENCRYPTION, &self.bytes),
        }
    }

    /// The tag of `parts`, concatenated.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.bytes);
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// Whether `tag` is the tag of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; 32]>::try_from(tag) else {
            return false;
        };
        let mut h = blake3::Hasher::new_keyed(&self.bytes);
        for p in parts {
            h.update(p);
        }
        h.finalize() == blake3::Hash::from(tag)
    }
}

/// A client's token: keyed BLAKE3 of its id under the client-token key.
fn token(client_key: &[u8; KEY_BYTES], id: &[u8; CLIENT_ID_BYTES]) -> [u8; KEY_BYTES] {
    *blake3::keyed_hash(client_key, id).as_bytes()
}

/// The keys that tag (keyed BLAKE3) and may encrypt (XChaCha20) frames, and their key id.
#[derive(Clone)]
pub struct FrameKey {
    id: KeyId,
    pub(crate) mac: [u8; KEY_BYTES],
    pub(crate) encryption: [u8; KEY_BYTES],
}

impl Drop for FrameKey {
    fn drop(&mut self) {
        self.mac.zeroize();
        self.encryption.zeroize();
    }
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameKey({})", self.id)
    }
}

impl FrameKey {
    /// The frame keys of a client token.
    fn of_token(id: KeyId, token: &[u8; KEY_BYTES]) -> FrameKey {
        FrameKey {
            id,
            mac: derive(CONTEXT_CLIENT_MAC, token),
            encryption: derive(CONTEXT_CLIENT_ENCRYPTION, token),
        }
    }

    /// The id written in the frames this key tags.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

/// What a client shows to prove it is client `id`: the id, the cluster key it was issued
/// under, and its token. Issued by [`ClusterKey::credential`] (`ken client-credential`).
#[derive(Clone)]
pub struct ClientCredential {
    pub id: [u8; CLIENT_ID_BYTES],
    /// The cluster key the token derives from.
    pub key: KeyId,
    token: [u8; KEY_BYTES],
}

impl Drop for ClientCredential {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientCredential(c-{}, key {})", hex(&self.id), self.key)
    }
}

impl ClientCredential {
    /// The key that tags (and encrypts) this client's requests and the replies to them.
    pub fn frame_key(&self) -> FrameKey {
        FrameKey::of_token(self.key, &self.token)
    }

    /// The text of a credential file: `ken-client-v1 <32 hex id> <8 hex key id> <64 hex
    /// token>` and a newline.
    pub fn to_file_text(&self) -> String {
        format!(
            "{CREDENTIAL_FILE_MAGIC} {} {} {}\n",
            hex(&self.id),
            self.key,
            hex(&self.token)
        )
    }

    /// Parses the text of a credential file (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ClientCredential, KeyFileError> {
        let not_one = |why: &str| KeyFileError::NotAKey {
            path: path.to_owned(),
            what: "Ken client credential",
            why: why.to_owned(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let [magic, id, key, token] = words.as_slice() else {
            return Err(not_one("expected 4 words"));
        };
        if *magic != CREDENTIAL_FILE_MAGIC {
            return Err(not_one("it does not start with ken-client-v1"));
        }
        let id: [u8; CLIENT_ID_BYTES] = unhex(id)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| not_one("the client id is not 32 hex digits"))?;
        let key: [u8; 4] = unhex(key)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| not_one("the key id is not 8 hex digits"))?;
        let token: [u8; KEY_BYTES] = unhex(token)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| not_one("the token is not 64 hex digits"))?;
        Ok(ClientCredential {
            id,
            key: KeyId(u32::from_be_bytes(key)),
            token,
        })
    }

    /// Reads a credential file (warns, as [`ClusterKey::load`] does, if others may read it).
    pub fn load(path: &Path) -> Result<ClientCredential, KeyFileError> {
        let text = read_secret_file(path)?;
        ClientCredential::parse(&text, path)
    }

    /// Writes this credential to `path` (mode 0600), refusing to overwrite anything.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        write_secret_file(path, &self.to_file_text())
    }
}

/// One cluster key as a keyring uses it: its frame key and its client-token key.
struct KeySet {
    frame: FrameKey,
    client: [u8; KEY_BYTES],
}

impl Drop for KeySet {
    fn drop(&mut self) {
        self.client.zeroize();
    }
}

impl KeySet {
    fn of(key: &ClusterKey) -> KeySet {
        KeySet {
            frame: key.frame_key(),
            client: key.client_key(),
        }
    }

    fn client_frame_key(&self, client: &[u8; CLIENT_ID_BYTES]) -> FrameKey {
        let mut token = token(&self.client, client);
        let key = FrameKey::of_token(self.frame.id, &token);
        token.zeroize();
        key
    }
}

/// Why a keyring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("two different keys have the same key id {0}; generate another key")]
    IdCollision(KeyId),
}

/// The keys of a process with a cluster key: the current key, which tags everything it sends,
/// and older keys still accepted (a rotation in progress).
pub struct Keyring {
    current: KeySet,
    accepted: Vec<KeySet>,
    encrypt: bool,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.frame.id)
            .field(
                "accepted",
                &self.accepted.iter().map(|k| k.frame.id).collect::<Vec<_>>(),
            )
            .field("encrypt", &self.encrypt)
            .finish()
    }
}

impl Keyring {
    /// A keyring that sends with `current` and accepts frames tagged with `current` or any of
    /// `accepted` (a key given twice counts once). `encrypt`: encrypt the payload of every
    /// peer frame sent (frames are accepted encrypted or not either way).
    pub fn new(
        current: &ClusterKey,
        accepted: &[ClusterKey],
        encrypt: bool,
    ) -> Result<Keyring, KeyringError> {
        let mut keys: Vec<&ClusterKey> = vec![current];
        for key in accepted {
            if keys.contains(&key) {
                continue;
            }
            if keys.iter().any(|k| k.id() == key.id()) {
                return Err(KeyringError::IdCollision(key.id()));
            }
            keys.push(key);
        }
        Ok(Keyring {
            current: KeySet::of(current),
            accepted: keys[1..].iter().map(|k| KeySet::of(k)).collect(),
            encrypt,
        })
    }

    /// The id of the key frames are sent with.
    pub fn current(&self) -> KeyId {
        self.current.frame.id
    }

    /// Whether peer frames are sent encrypted.
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    fn set(&self, id: KeyId) -> Option<&KeySet> {
        std::iter::once(&self.current)
            .chain(&self.accepted)
            .find(|k| k.frame.id == id)
    }

    /// The key and the encryption a frame to send is sealed with, as its [`Auth`] asks:
    /// `Cluster` uses the current key and this keyring's policy; `Client` uses the token of
    /// the client the frame names (`to`, a reply), derived under the key the client's own
    /// request named. `None` for [`Auth::None`], or a client key this keyring does not hold.
    pub fn seal_key(
        &self,
        auth: Auth,
        client: Option<[u8; CLIENT_ID_BYTES]>,
    ) -> Option<(FrameKey, bool)> {
        match auth {
            Auth::None => None,
            Auth::Cluster => Some((self.current.frame.clone(), self.encrypt)),
            Auth::Client { key, encrypted } => {
                let set = self.set(key)?;
                Some((set.client_frame_key(&client?), encrypted))
            }
        }
    }
}

impl Keyring {
    /// Encodes `frame` as its [`Frame::auth`] asks: untagged, sealed with the current frame
    /// key (and this keyring's encryption policy), or sealed with the token of the client it
    /// names (`to` of a reply, `from` of a request).
    pub fn seal(&self, frame: &Frame) -> Result<Vec<u8>, EncodeError> {
        if frame.auth == Auth::None {
            return frame.encode();
        }
        let client = match frame.kind {
            FrameKind::ClientRequest => client_id_bytes(frame.from.as_str().as_bytes()),
            _ => client_id_bytes(frame.to.as_str().as_bytes()),
        };
        let (key, encrypt) = self
            .seal_key(frame.auth, client)
            .ok_or(EncodeError::NoKey(frame.auth))?;
        frame.seal(&key, encrypt)
    }
}

impl FrameKeys for Keyring {
    fn accepts_untagged(&self, kind: FrameKind) -> bool {
        // Requests of anonymous clients pass; the runtime decides whether it serves them.
        kind == FrameKind::ClientRequest
    }

    fn key(&self, kind: FrameKind, id: KeyId, from: &[u8], _to: &[u8]) -> Option<(FrameKey, Auth)> {
        let set = self.set(id)?;
        if kind == FrameKind::ClientRequest {
            let client = client_id_bytes(from)?;
            return Some((
                set.client_frame_key(&client),
                Auth::Client {
                    key: id,
                    encrypted: false,
                },
            ));
        }
        Some((set.frame.clone(), Auth::Cluster))
    }
}

impl FrameKeys for ClientCredential {
    fn accepts_untagged(&self, _kind: FrameKind) -> bool {
        false
    }

    fn key(&self, kind: FrameKind, id: KeyId, _from: &[u8], to: &[u8]) -> Option<(FrameKey, Auth)> {
        let ours = matches!(kind, FrameKind::ClientReply | FrameKind::Reject)
            && id == self.key
            && client_id_bytes(to) == Some(self.id);
        ours.then(|| {
            (
                self.frame_key(),
                Auth::Client {
                    key: id,
                    encrypted: false,
                },
            )
        })
    }
}

/// Where [`crate::Frame::open`] finds the key of a tagged frame, and whether it takes
/// untagged ones. Implemented by [`Keyring`] (a process), [`ClientCredential`] (a client) and
/// [`NoKeys`] (no key: only untagged frames).
pub trait FrameKeys {
    /// Whether an untagged frame of `kind` is accepted.
    fn accepts_untagged(&self, kind: FrameKind) -> bool;

    /// The key of a frame of `kind` tagged with key `id`, whose `from` and `to` ids are these
    /// bytes (not yet validated: they are read before the tag is checked), and the [`Auth`]
    /// the frame will carry once it checks out (`encrypted` is set by the decoder). `None`:
    /// no such key here (the frame is dropped as [`crate::DecodeError::UnknownKey`]).
    fn key(&self, kind: FrameKind, id: KeyId, from: &[u8], to: &[u8]) -> Option<(FrameKey, Auth)>;
}

/// No keys: untagged frames only (a process in unauthenticated mode, a tool).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeys;

impl FrameKeys for NoKeys {
    fn accepts_untagged(&self, _kind: FrameKind) -> bool {
        true
    }

    fn key(&self, _: FrameKind, _: KeyId, _: &[u8], _: &[u8]) -> Option<(FrameKey, Auth)> {
        None
    }
}

/// The 16 bytes of a client id in its frame form, `c-` and 32 lowercase hex digits.
pub fn client_id_bytes(id: &[u8]) -> Option<[u8; CLIENT_ID_BYTES]> {
    let digits = id.strip_prefix(b"c-")?;
    if digits.len() != 2 * CLIENT_ID_BYTES {
        return None;
    }
    let mut out = [0u8; CLIENT_ID_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (nibble(digits[2 * i])? << 4) | nibble(digits[2 * i + 1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(digits: &str) -> Option<Vec<u8>> {
    let digits = digits.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let lower = |d: u8| nibble(d.to_ascii_lowercase());
            Some((lower(pair[0])? << 4) | lower(pair[1])?)
        })
        .collect()
}

fn truncate(word: &str) -> String {
    word.chars().take(24).collect()
}

/// The mode of `path` if others than its owner may read or write it (`None` if not, or if
/// it cannot be read; always `None` off Unix), for tools that print their own warning.
pub fn loose_permissions(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Reads a small secret file, warning if its mode lets others than the owner read it.
fn read_secret_file(path: &Path) -> Result<String, KeyFileError> {
    let read_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            KeyFileError::Missing {
                path: path.to_owned(),
            }
        } else {
            KeyFileError::Read {
                path: path.to_owned(),
                source,
            }
        }
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.len() > KEY_FILE_BYTES_MAX {
        return Err(KeyFileError::NotAKey {
            path: path.to_owned(),
            what: "Ken key",
            why: format!("{} bytes is far too long", metadata.len()),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "key file is readable by others than its owner; run `chmod 600` on it"
            );
        }
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    String::from_utf8(bytes).map_err(|_| KeyFileError::NotAKey {
        path: path.to_owned(),
        what: "Ken key",
        why: "it is not text".into(),
    })
}

/// Creates `path` with `text`, mode 0600, failing if it exists; the data is synced.
fn write_secret_file(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyFileError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_text_round_trips_and_subkeys_differ() {
        let key = ClusterKey::from_bytes([7; KEY_BYTES]);
        let text = key.to_file_text();
        assert!(text.starts_with("ken-key-v1 0707"));
        assert_eq!(text.len(), 11 + 64 + 1);
        assert_eq!(ClusterKey::parse(&text, Path::new("k")).unwrap(), key);
        // Distinct labels give distinct keys; the key id is stable.
        let frame = key.frame_key();
        assert_ne!(frame.mac, frame.encryption);
        assert_ne!(frame.mac, key.client_key());
        assert_eq!(key.id(), ClusterKey::from_bytes([7; KEY_BYTES]).id());
        assert_ne!(key.id(), ClusterKey::from_bytes([8; KEY_BYTES]).id());
    }

    #[test]
    fn bad_key_files_say_why() {
        let p = Path::new("k");
        let cases = [
            ("", "empty"),
            ("ken-key-v2 00", "starts with"),
            ("ken-key-v1", "no key"),
            ("ken-key-v1 zz", "not hex"),
            ("ken-key-v1 00 11", "text after"),
        ];
        for (text, why) in cases {
            let error = ClusterKey::parse(text, p).unwrap_err().to_string();
            assert!(error.contains(why), "{text:?}: {error}");
        }
        let short = format!("ken-key-v1 {}", "ab".repeat(31));
        assert!(matches!(
            ClusterKey::parse(&short, p),
            Err(KeyFileError::WrongLength { bytes: 31, .. })
        ));
    }

    #[test]
    fn credentials_derive_from_the_key_and_round_trip() {
        let key = ClusterKey::from_bytes([1; KEY_BYTES]);
        let a = key.credential([2; 16]);
        let b = key.credential([3; 16]);
        assert_ne!(a.token, b.token);
        assert_eq!(a.token, key.credential([2; 16]).token);
        assert_eq!(a.key, key.id());
        let text = a.to_file_text();
        let back = ClientCredential::parse(&text, Path::new("c")).unwrap();
        assert_eq!((back.id, back.key, back.token), (a.id, a.key, a.token));
        let other = ClusterKey::from_bytes([9; KEY_BYTES]).credential([2; 16]);
        assert_ne!(other.token, a.token);
    }

    #[test]
    fn client_ids_parse_only_in_frame_form() {
        assert_eq!(
            client_id_bytes(b"c-000102030405060708090a0b0c0d0e0f"),
            Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        );
        for bad in [
            &b"c-00"[..],
            b"x-000102030405060708090a0b0c0d0e0f",
            b"c-000102030405060708090A0B0C0D0E0F",
            b"",
        ] {
            assert_eq!(client_id_bytes(bad), None);
        }
    }

    #[test]
    fn keyring_refuses_colliding_ids_and_dedups() {
        let a = ClusterKey::from_bytes([1; KEY_BYTES]);
        let b = ClusterKey::from_bytes([2; KEY_BYTES]);
        let ring = Keyring::new(&a, &[a.clone(), b.clone()], false).unwrap();
        assert_eq!(ring.accepted.len(), 1);
        assert!(ring.set(b.id()).is_some());
        assert!(ring.set(KeyId(b.id().0 ^ 1)).is_none() || b.id().0 ^ 1 == a.id().0);
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = ClusterKey::write_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(loose_permissions(&path), None);
            let other = dir.path().join("shared.key");
            std::fs::write(&other, key.to_file_text()).unwrap();
            std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(loose_permissions(&other), Some(0o644));
            // Still usable (with a warning logged).
            assert_eq!(ClusterKey::load(&other).unwrap(), key);
        }
        assert_eq!(ClusterKey::load(&path).unwrap(), key);
        assert!(matches!(
            ClusterKey::write_new(&path),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(ClusterKey::load(&path).unwrap(), key, "unchanged");
        assert!(matches!(
            ClusterKey::load(&dir.path().join("nope")),
            Err(KeyFileError::Missing { .. })
        ));
    }
}
