//! The one codec of Ken's durable and wire payloads.
//!
//! - [`encode`] / [`decode`]: serde values to bytes with bincode 2 (standard configuration:
//!   little-endian, variable-length integers) with a decode size limit, so hostile bytes can
//!   not make the decoder allocate without bound.
//! - [`seal`] / [`unseal`]: the record envelope every stored record goes through:
//!   `version: u8 | body | crc32: u32 LE`, the CRC32 (IEEE, crc32fast) taken over
//!   `version | body`. A record that fails the check is [`Corrupted`], naming table and key.
//!
//! Invariant: `unseal(seal(b)) == b` for every byte string `b`, and `unseal` never panics.

use crate::Corrupted;

/// Version byte of the record envelope written by this build.
pub const RECORD_VERSION: u8 = 1;

/// Envelope overhead: one version byte and four CRC bytes.
pub const SEAL_OVERHEAD: usize = 5;

/// Largest value [`decode`] will materialize (bytes of allocation), 64 MiB.
pub const DECODE_LIMIT_BYTES: usize = 64 << 20;

/// Why bytes did not decode into the requested type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable value: {0}")]
pub struct DecodeError(pub String);

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Encodes a serde value with bincode 2.
///
/// # Panics
/// If the value's `Serialize` impl fails, which for plain data types (no maps with
/// non-serializable keys, no custom errors) is a bug in the type, not bad input.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("serde value encodes with bincode")
}

/// Decodes a serde value. The whole input must be consumed.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Wraps a record body in the envelope: `version | body | crc32(version | body)`.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + SEAL_OVERHEAD);
    out.push(RECORD_VERSION);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a record envelope and returns its body. `table` and `key` name the record in the
/// error.
pub fn unseal<'a>(table: &str, key: &str, bytes: &'a [u8]) -> Result<&'a [u8], Corrupted> {
    let corrupted = |detail: String| Corrupted {
        table: table.to_string(),
        key: key.to_string(),
        detail,
    };
    if bytes.len() < SEAL_OVERHEAD {
        return Err(corrupted(format!(
            "record is {} bytes, shorter than the {SEAL_OVERHEAD}-byte envelope",
            bytes.len()
        )));
    }
    let (covered, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let actual = crc32fast::hash(covered);
    if stored != actual {
        return Err(corrupted(format!(
            "CRC32 mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    if covered[0] != RECORD_VERSION {
        return Err(corrupted(format!(
            "record version {} (this build reads {RECORD_VERSION})",
            covered[0]
        )));
    }
    Ok(&covered[1..])
}

/// Renders a key for error messages and tools: UTF-8 text as is if printable, else
/// `0x` + hex.
pub fn printable_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => {
            let mut out = String::with_capacity(2 + key.len() * 2);
            out.push_str("0x");
            for b in key {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_detects_any_single_bit_flip() {
        let body = b"hello ken".to_vec();
        let sealed = seal(&body);
        assert_eq!(unseal("t", "k", &sealed).unwrap(), &body[..]);
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = unseal("kv", "key1", &bad).unwrap_err();
            assert_eq!(err.table, "kv");
            assert_eq!(err.key, "key1");
        }
    }

    #[test]
    fn short_records_are_corrupted_not_panics() {
        for n in 0..SEAL_OVERHEAD {
            assert!(unseal("t", "k", &vec![0u8; n]).is_err());
        }
    }

    #[test]
    fn decode_rejects_trailing_bytes_and_garbage() {
        let mut bytes = encode(&(7u32, "x".to_string()));
        assert_eq!(
            decode::<(u32, String)>(&bytes).unwrap(),
            (7, "x".to_string())
        );
        bytes.push(0);
        assert!(decode::<(u32, String)>(&bytes).is_err());
        // A huge length prefix must not allocate without bound.
        assert!(
            decode::<Vec<u8>>(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err()
        );
    }
}
