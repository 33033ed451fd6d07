//! The one codec of Ken's durable and wire payloads.
//!
//! - [`encode`] / [`decode`]: serde values to bytes with bincode 2 (standard configuration:
//!   little-endian, variable-length integers) with a decode size limit, so hostile bytes can
//!   not make the decoder allocate without bound.
//! - [`seal_record`] / [`unseal_record`]: the record envelope every stored record goes
//!   through (format 3): `version 0x02 | body | crc32: u32 LE`, the CRC32 (IEEE, crc32fast)
//!   taken over the version, the record's identity ([`Record`]: its table and every other
//!   column of its row: the key columns, sequence numbers, times) and the body. The identity is
//!   not stored in the value (it is the row's other columns), so a renamed key, a moved
//!   sequence number or a value pasted into another row fails the check like a changed value.
//! - [`seal`] / [`unseal`]: the version-1 envelope, `0x01 | body | crc32(0x01 | body)`. Only
//!   the `magic` and `format_version` meta rows use it (their encoding is frozen so any build
//!   can tell a newer Ken store from a foreign file), and the migration reads format-2 stores
//!   with it.
//!
//! A record that fails the check is [`Corrupted`], naming table and key.
//!
//! Invariants: `unseal_record(r, seal_record(r, b)) == b` and `unseal(seal(b)) == b` for
//! every byte string `b`; neither unseal ever panics; a record sealed for one identity never
//! unseals for another (except with the probability of a CRC32 collision, 2^-32, and never
//! for identities that differ in at most 32 consecutive bits).

use crate::Corrupted;

/// Version byte of the record envelope written by this build ([`seal_record`]).
pub const RECORD_VERSION: u8 = 2;

/// Version byte of the frozen envelope of [`seal`] (the `magic` and `format_version` meta
/// rows, and every record of a format-2 store).
pub const RECORD_VERSION_V1: u8 = 1;

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

/// Wraps a body in the version-1 envelope: `0x01 | body | crc32(0x01 | body)`. Only for the
/// `magic` and `format_version` meta rows (see the module docs); every other record is sealed
/// with [`seal_record`].
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + SEAL_OVERHEAD);
    out.push(RECORD_VERSION_V1);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a version-1 envelope ([`seal`]) and returns its body. `table` and `key` name the
/// record in the error.
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
    if covered[0] != RECORD_VERSION_V1 {
        return Err(corrupted(format!(
            "envelope version {} where version {RECORD_VERSION_V1} belongs",
            covered[0]
        )));
    }
    Ok(&covered[1..])
}

/// One column of a row that a record's checksum covers besides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column<'a> {
    /// An `INTEGER` column (a sequence number, a time, a count): 8 bytes, u64 LE.
    Int(u64),
    /// A `TEXT` or `BLOB` column: its length as u32 LE, then its bytes.
    Bytes(&'a [u8]),
}

/// The identity of a stored record: its SQL table and the row's columns other than the sealed
/// one, in schema order. [`seal_record`] covers them with the body's CRC.
///
/// One constructor per table, so every writer and reader covers the same columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    table: &'static str,
    columns: [Option<Column<'a>>; 3],
}

impl<'a> Record<'a> {
    fn new(table: &'static str, columns: [Option<Column<'a>>; 3]) -> Record<'a> {
        Record { table, columns }
    }

    /// A `meta` row (`key` column).
    pub fn meta(key: &'a str) -> Record<'a> {
        Record::new("meta", [Some(Column::Bytes(key.as_bytes())), None, None])
    }

    /// The `root` row (`id` column, always 0).
    pub fn root() -> Record<'static> {
        Record::new("root", [Some(Column::Int(0)), None, None])
    }

    /// A `kv` row: application table `table`, key `key`.
    pub fn kv(table: &'a str, key: &'a [u8]) -> Record<'a> {
        Record::new(
            "kv",
            [
                Some(Column::Bytes(table.as_bytes())),
                Some(Column::Bytes(key)),
                None,
            ],
        )
    }

    /// An `outbox` row.
    pub fn outbox(peer: &'a str, seq: u64, created_ms: u64) -> Record<'a> {
        Record::new(
            "outbox",
            [
                Some(Column::Bytes(peer.as_bytes())),
                Some(Column::Int(seq)),
                Some(Column::Int(created_ms)),
            ],
        )
    }

    /// A `peers` row.
    pub fn peer(peer: &'a str) -> Record<'a> {
        Record::new("peers", [Some(Column::Bytes(peer.as_bytes())), None, None])
    }

    /// A `timers` row.
    pub fn timer(name: &'a str, due_ms: u64) -> Record<'a> {
        Record::new(
            "timers",
            [
                Some(Column::Bytes(name.as_bytes())),
                Some(Column::Int(due_ms)),
                None,
            ],
        )
    }

    /// A `clients` row.
    pub fn client(client: &'a [u8], request_no: u64, updated_ms: u64) -> Record<'a> {
        Record::new(
            "clients",
            [
                Some(Column::Bytes(client)),
                Some(Column::Int(request_no)),
                Some(Column::Int(updated_ms)),
            ],
        )
    }

    /// A `fuse_groups` row.
    pub fn group(group: &'a [u8]) -> Record<'a> {
        Record::new("fuse_groups", [Some(Column::Bytes(group)), None, None])
    }

    /// A `turn_log` row: its first turn and its entry count.
    pub fn turn_log(turn: u64, turns: u64) -> Record<'a> {
        Record::new(
            "turn_log",
            [Some(Column::Int(turn)), Some(Column::Int(turns)), None],
        )
    }

    /// A `journal` row: its sequence number (the store's commit count after the commit).
    pub fn journal(seq: u64) -> Record<'a> {
        Record::new("journal", [Some(Column::Int(seq)), None, None])
    }

    /// The SQL table.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// The CRC32 of `version | identity | body` (the layout is in `FORMAT.md`).
    fn crc(&self, version: u8, body: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&[version]);
        let table = self.table.as_bytes();
        h.update(&[u8::try_from(table.len()).expect("table names are short")]);
        h.update(table);
        for column in self.columns.iter().flatten() {
            match column {
                Column::Int(v) => h.update(&v.to_le_bytes()),
                Column::Bytes(b) => {
                    let len = u32::try_from(b.len()).expect("column bytes fit a u32");
                    h.update(&len.to_le_bytes());
                    h.update(b);
                }
            }
        }
        h.update(body);
        h.finalize()
    }
}

/// Wraps a record body in the envelope: `0x02 | body | crc32(0x02 | identity | body)`.
pub fn seal_record(record: &Record<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + SEAL_OVERHEAD);
    out.push(RECORD_VERSION);
    out.extend_from_slice(body);
    let crc = record.crc(RECORD_VERSION, body);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a record envelope against the record's identity and returns its body. On failure,
/// the detail (the caller names the table and key: see [`unseal_record`]).
pub fn check_record<'b>(record: &Record<'_>, bytes: &'b [u8]) -> Result<&'b [u8], String> {
    if bytes.len() < SEAL_OVERHEAD {
        return Err(format!(
            "record is {} bytes, shorter than the {SEAL_OVERHEAD}-byte envelope",
            bytes.len()
        ));
    }
    let (covered, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let body = &covered[1..];
    let actual = record.crc(covered[0], body);
    if stored != actual {
        return Err(format!(
            "CRC32 mismatch: stored {stored:#010x}, computed {actual:#010x} over the value and \
             its row's table and key columns"
        ));
    }
    if covered[0] != RECORD_VERSION {
        return Err(format!(
            "envelope version {} (this build reads {RECORD_VERSION})",
            covered[0]
        ));
    }
    Ok(body)
}

/// [`check_record`], naming the record `table` / `key` in the error.
pub fn unseal_record<'b>(
    record: &Record<'_>,
    table: &str,
    key: &str,
    bytes: &'b [u8],
) -> Result<&'b [u8], Corrupted> {
    check_record(record, bytes).map_err(|detail| Corrupted {
        table: table.to_string(),
        key: key.to_string(),
        detail,
    })
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
            assert!(check_record(&Record::root(), &vec![0u8; n]).is_err());
        }
    }

    #[test]
    fn a_record_checks_only_under_its_own_identity() {
        let body = b"100";
        let sealed = seal_record(&Record::kv("accounts", b"alice"), body);
        assert_eq!(
            check_record(&Record::kv("accounts", b"alice"), &sealed).unwrap(),
            body
        );
        // A renamed key, another table, a key moved across the table/key boundary, another
        // kind of record: all fail.
        for other in [
            Record::kv("accounts", b"alicf"),
            Record::kv("accounts", b"alice\0"),
            Record::kv("account", b"salice"),
            Record::kv("accountsa", b"lice"),
            Record::meta("accounts"),
            Record::outbox("accounts", 1, 0),
        ] {
            assert!(check_record(&other, &sealed).is_err(), "{other:?}");
        }
        // Every bit of the stored value is covered too.
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(check_record(&Record::kv("accounts", b"alice"), &bad).is_err());
        }
        // Integer columns: a moved sequence number or time fails.
        let m = seal_record(&Record::outbox("b", 7, 1000), b"m");
        assert!(check_record(&Record::outbox("b", 7, 1000), &m).is_ok());
        assert!(check_record(&Record::outbox("b", 8, 1000), &m).is_err());
        assert!(check_record(&Record::outbox("b", 7, 1001), &m).is_err());
        assert!(check_record(&Record::outbox("c", 7, 1000), &m).is_err());
        // A version-1 envelope of the same body is not a version-2 record.
        assert!(check_record(&Record::kv("accounts", b"alice"), &seal(body)).is_err());
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
