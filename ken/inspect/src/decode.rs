//! Turning stored bytes into something a person can read: a bounded hex and escaped-text
//! preview of any byte string ([`Blob`]), and, when an app supplies its types
//! ([`AppDecoder`]), the decoded value as JSON.
//!
//! The generic `ken inspect` cannot know an application's types, so it uses
//! [`AppDecoder::generic`], which decodes nothing. An app binary builds an [`AppDecoder`]
//! naming its root state type, its message type and, per table, its key layout and value
//! type; values are decoded with [`ken_store::codec::decode`] (the runtime's one codec).
//!
//! Invariant: decoding never panics and never hides bytes: a value that does not decode gets
//! a `decode_error` next to its preview, and the rest of the view goes on.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::output::Blob;

/// How many leading bytes of a value the `hex` and `text` previews show.
pub const PREVIEW_BYTES: usize = 32;

/// A decoder from stored bytes to JSON. Errors are one-line reasons.
pub type DecodeFn = Box<dyn Fn(&[u8]) -> Result<Value, String> + Send + Sync>;

struct TableTypes {
    key: DecodeFn,
    value: DecodeFn,
}

/// What an application's stored bytes mean: its root state, its message type and its
/// tables. Built once by an app binary and handed to [`super::main`].
///
/// ```
/// use ken_inspect::{keys, AppDecoder};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct State { pings: u64 }
///
/// let app = AppDecoder::new("ken-counter")
///     .root::<State>()
///     .table::<i64>("balances", keys::u32_be);
/// let blob = app.root_blob(&ken_store::codec::encode(&State { pings: 7 }));
/// assert_eq!(blob.decoded, Some(serde_json::json!({"pings": 7})));
/// ```
pub struct AppDecoder {
    command: String,
    root: Option<DecodeFn>,
    message: Option<DecodeFn>,
    reply: Option<DecodeFn>,
    tables: BTreeMap<String, TableTypes>,
}

impl fmt::Debug for AppDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppDecoder")
            .field("command", &self.command)
            .field("root", &self.root.is_some())
            .field("message", &self.message.is_some())
            .field("reply", &self.reply.is_some())
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Decodes `bytes` as a `T` with the runtime's codec and renders it as JSON.
fn decode_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<Value, String> {
    let value: T = ken_store::codec::decode(bytes).map_err(|e| e.to_string())?;
    serde_json::to_value(&value).map_err(|e| format!("no JSON form: {e}"))
}

impl AppDecoder {
    /// The generic decoder of `ken inspect`: previews only, nothing decoded.
    pub fn generic() -> AppDecoder {
        AppDecoder {
            command: "ken inspect".to_string(),
            root: None,
            message: None,
            reply: None,
            tables: BTreeMap::new(),
        }
    }

    /// A decoder for the app binary `program` (used in messages: `<program> inspect: ...`),
    /// decoding nothing until told the types.
    pub fn new(program: &str) -> AppDecoder {
        AppDecoder {
            command: format!("{program} inspect"),
            ..AppDecoder::generic()
        }
    }

    /// The root state is a `T`.
    pub fn root<T: DeserializeOwned + Serialize + 'static>(mut self) -> AppDecoder {
        self.root = Some(Box::new(decode_json::<T>));
        self
    }

    /// Messages (outbox payloads) are `T`s.
    pub fn message<T: DeserializeOwned + Serialize + 'static>(mut self) -> AppDecoder {
        self.message = Some(Box::new(decode_json::<T>));
        self
    }

    /// Cached client replies (the `clients` view) decode with `decode`. The stored bytes are
    /// the runtime's reply envelope around the app's reply, so the app supplies the whole
    /// decoder.
    pub fn reply_with(
        mut self,
        decode: impl Fn(&[u8]) -> Result<Value, String> + Send + Sync + 'static,
    ) -> AppDecoder {
        self.reply = Some(Box::new(decode));
        self
    }

    /// Table `name` has keys laid out as `key` decodes them (see [`keys`]) and values of
    /// type `V`.
    pub fn table<V: DeserializeOwned + Serialize + 'static>(
        mut self,
        name: &str,
        key: impl Fn(&[u8]) -> Result<Value, String> + Send + Sync + 'static,
    ) -> AppDecoder {
        self.tables.insert(
            name.to_string(),
            TableTypes {
                key: Box::new(key),
                value: Box::new(decode_json::<V>),
            },
        );
        self
    }

    /// How messages name the command (`ken inspect`, `ken-bank inspect`).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// True if this decoder knows any type (an app's, not the generic one).
    pub fn decodes_anything(&self) -> bool {
        self.root.is_some()
            || self.message.is_some()
            || self.reply.is_some()
            || !self.tables.is_empty()
    }

    /// The root state, previewed and decoded if the type is known.
    pub fn root_blob(&self, bytes: &[u8]) -> Blob {
        Blob::new(bytes, self.root.as_ref())
    }

    /// An outbox payload, previewed and decoded if the message type is known.
    pub fn message_blob(&self, bytes: &[u8]) -> Blob {
        Blob::new(bytes, self.message.as_ref())
    }

    /// A cached client reply, previewed and decoded if the app supplied a decoder.
    pub fn reply_blob(&self, bytes: &[u8]) -> Blob {
        Blob::new(bytes, self.reply.as_ref())
    }

    /// A table value, previewed and decoded if the table is known.
    pub fn value_blob(&self, table: &str, bytes: &[u8]) -> Blob {
        Blob::new(bytes, self.tables.get(table).map(|t| &t.value))
    }

    /// A table key decoded, `None` if the table is not known or the key does not decode.
    pub fn key_json(&self, table: &str, key: &[u8]) -> Option<Value> {
        self.tables.get(table).and_then(|t| (t.key)(key).ok())
    }
}

impl Blob {
    /// Previews `bytes` and decodes them with `decoder` if there is one.
    pub(crate) fn new(bytes: &[u8], decoder: Option<&DecodeFn>) -> Blob {
        let head = &bytes[..bytes.len().min(PREVIEW_BYTES)];
        let (decoded, decode_error) = match decoder.map(|d| d(bytes)) {
            None => (None, None),
            Some(Ok(v)) => (Some(v), None),
            Some(Err(e)) => (None, Some(e)),
        };
        Blob {
            bytes: bytes.len() as u64,
            hex: hex(head),
            text: escape(head),
            decoded,
            decode_error,
        }
    }

    /// A plain preview, for bytes no app type describes (timer payloads, group records).
    pub(crate) fn plain(bytes: &[u8]) -> Blob {
        Blob::new(bytes, None)
    }
}

/// Lower-case hex of `bytes`, no prefix.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `bytes` as text: printable ASCII as is, `\\`, `\n`, `\r`, `\t` escaped, anything else
/// `\xNN` (so the result is one line of ASCII and maps back to the bytes).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Parses a key given on the command line: `0x` followed by an even number of hex digits is
/// those bytes; anything else is its UTF-8 bytes.
pub fn parse_key_arg(s: &str) -> Vec<u8> {
    s.strip_prefix("0x")
        .and_then(unhex)
        .unwrap_or_else(|| s.as_bytes().to_vec())
}

/// Hex digits to bytes; `None` unless the length is even and every digit is hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Key layouts for [`AppDecoder::table`].
pub mod keys {
    use serde_json::Value;

    /// A big-endian u32 (4 bytes).
    pub fn u32_be(key: &[u8]) -> Result<Value, String> {
        let b: [u8; 4] = key
            .try_into()
            .map_err(|_| format!("{}-byte key, expected 4 (u32 big-endian)", key.len()))?;
        Ok(Value::from(u32::from_be_bytes(b)))
    }

    /// A big-endian u64 (8 bytes).
    pub fn u64_be(key: &[u8]) -> Result<Value, String> {
        let b: [u8; 8] = key
            .try_into()
            .map_err(|_| format!("{}-byte key, expected 8 (u64 big-endian)", key.len()))?;
        Ok(Value::from(u64::from_be_bytes(b)))
    }

    /// UTF-8 text.
    pub fn utf8(key: &[u8]) -> Result<Value, String> {
        std::str::from_utf8(key)
            .map(Value::from)
            .map_err(|e| format!("key is not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_is_one_line_of_ascii() {
        assert_eq!(escape(b"ab\\\n\x00\xff"), "ab\\\\\\n\\x00\\xff");
    }

    #[test]
    fn key_args_are_hex_or_text() {
        assert_eq!(parse_key_arg("0x0001ff"), vec![0, 1, 0xff]);
        assert_eq!(parse_key_arg("0x1"), b"0x1".to_vec());
        assert_eq!(parse_key_arg("0xzz"), b"0xzz".to_vec());
        assert_eq!(parse_key_arg("alice"), b"alice".to_vec());
        assert_eq!(parse_key_arg(""), Vec::<u8>::new());
    }

    #[test]
    fn undecodable_values_keep_their_preview() {
        let app = AppDecoder::new("t").table::<u64>("t", keys::u64_be);
        let blob = app.value_blob("t", &[0xff, 0xff]);
        assert_eq!(blob.bytes, 2);
        assert_eq!(blob.hex, "ffff");
        assert!(blob.decoded.is_none());
        assert!(blob.decode_error.is_some());
        let blob = app.value_blob("other", &[1]);
        assert!(blob.decoded.is_none() && blob.decode_error.is_none());
        assert_eq!(app.key_json("t", &7u64.to_be_bytes()), Some(Value::from(7)));
        assert_eq!(app.key_json("t", &[1]), None);
    }

    #[test]
    fn previews_are_bounded() {
        let blob = Blob::plain(&[b'a'; 1000]);
        assert_eq!(blob.bytes, 1000);
        assert_eq!(blob.text.len(), PREVIEW_BYTES);
        assert_eq!(blob.hex.len(), 2 * PREVIEW_BYTES);
    }
}
