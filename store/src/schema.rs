//! The on-disk schema: table definitions, `meta` keys, fixed-width record bodies, and the
//! conversions between Rust values and SQLite columns.
//!
//! Everything here is shared by the owner ([`crate::Store`]) and the read-only
//! [`crate::Reader`], so both decode a row the same way. `FORMAT.md` documents the same facts
//! for humans; change both together.
//!
//! Invariants:
//! - Every sealed column is decoded through [`codec::unseal_record`] with the identity of its
//!   row ([`codec::Record`]: the table and every other column), so a damaged key, sequence
//!   number or time fails like a damaged value; a bad envelope or a body of the wrong length
//!   is a [`Corrupted`] naming the table and key, never a panic. Only the frozen `magic` and
//!   `format_version` meta rows use the version-1 envelope ([`codec::unseal`]).
//! - Ordered integers (sequence numbers, times, counters) are stored as SQLite `INTEGER`
//!   and must be `<= i64::MAX` (asserted on write; a negative value read back is
//!   `Corrupted`). Identifiers that use all 64 bits (incarnations) are never stored in an
//!   `INTEGER` column: they live inside sealed records.

use crate::codec::{self, Record};
use crate::{ClientRow, Corrupted, GroupRow, OutboxRow, PeerRow, TimerRow};

/// Value of the `magic` meta row: tells a Ken store from any other SQLite file.
pub(crate) const MAGIC: &[u8] = b"ken-store";

/// `meta` keys. `magic` and `format_version` keep their encoding in every format version, so
/// any build can tell a newer store from a foreign file.
pub(crate) const META_MAGIC: &str = "magic";
pub(crate) const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_PROCESS_ID: &str = "process_id";
pub(crate) const META_INCARNATION: &str = "incarnation";
pub(crate) const META_CREATED_MS: &str = "created_ms";
pub(crate) const META_COUNTERS: &str = "counters";
/// The application identity (schema version u32 LE, then the name in UTF-8). Optional: a
/// store written before it existed has none until an owner that names its app adopts it.
pub(crate) const META_APP: &str = "app";

/// Every `meta` key a complete store has.
pub(crate) const META_KEYS: [&str; 6] = [
    META_MAGIC,
    META_FORMAT_VERSION,
    META_PROCESS_ID,
    META_INCARNATION,
    META_CREATED_MS,
    META_COUNTERS,
];

/// The `key` under which the single `root` row is named in errors.
pub(crate) const ROOT_KEY: &str = "root";

/// Body length of a `peers.record`: incarnation, next_seq, acked, delivered (u64 LE each).
pub(crate) const PEER_RECORD_BYTES: usize = 32;
/// Body length of a `peers.record` of a pair with a `forgotten` mark: the four counters and
/// `forgotten`.
pub(crate) const PEER_RECORD_FORGOTTEN_BYTES: usize = 40;
/// Body length of the `counters` meta record: turns_committed, commits, last_commit_ms.
pub(crate) const COUNTERS_RECORD_BYTES: usize = 24;

/// The schema, created in the same transaction as the `meta` rows.
pub(crate) const SCHEMA_SQL: &str = "
CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE root (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 0),
    value BLOB NOT NULL
) STRICT;
CREATE TABLE kv (
    tbl   TEXT NOT NULL,
    key   BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tbl, key)
) STRICT, WITHOUT ROWID;
CREATE TABLE outbox (
    peer       TEXT    NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq > 0),
    created_ms INTEGER NOT NULL CHECK (created_ms >= 0),
    payload    BLOB    NOT NULL,
    PRIMARY KEY (peer, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE peers (
    peer   TEXT NOT NULL PRIMARY KEY,
    record BLOB NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE timers (
    name    TEXT    NOT NULL PRIMARY KEY,
    due_ms  INTEGER NOT NULL CHECK (due_ms >= 0),
    payload BLOB    NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE clients (
    client     BLOB    NOT NULL PRIMARY KEY CHECK (length(client) = 16),
    request_no INTEGER NOT NULL CHECK (request_no >= 0),
    updated_ms INTEGER NOT NULL CHECK (updated_ms >= 0),
    reply      BLOB    NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE fuse_groups (
    group_id BLOB NOT NULL PRIMARY KEY CHECK (length(group_id) = 16),
    record   BLOB NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE turn_log (
    turn    INTEGER NOT NULL PRIMARY KEY CHECK (turn >= 0),
    turns   INTEGER NOT NULL CHECK (turns > 0),
    entries BLOB    NOT NULL
) STRICT;
CREATE TABLE journal (
    seq    INTEGER NOT NULL PRIMARY KEY CHECK (seq > 0),
    record BLOB    NOT NULL
) STRICT;
";

/// The table format 4 added (the batch journal), created by the migration from format 3.
pub(crate) const JOURNAL_SQL: &str = "
CREATE TABLE journal (
    seq    INTEGER NOT NULL PRIMARY KEY CHECK (seq > 0),
    record BLOB    NOT NULL
) STRICT;
";

/// Names of the tables [`SCHEMA_SQL`] creates.
pub(crate) const TABLES: [&str; 10] = [
    "meta",
    "root",
    "kv",
    "outbox",
    "peers",
    "timers",
    "clients",
    "fuse_groups",
    "turn_log",
    "journal",
];

/// Converts an ordered quantity to its `INTEGER` column value.
///
/// # Panics
/// If `value > i64::MAX`: such a sequence number, time or counter is a bug in the caller.
pub(crate) fn sql_u64(value: u64, what: &str) -> i64 {
    assert!(
        value <= i64::MAX as u64,
        "{what} = {value} does not fit the store's INTEGER columns (max i64::MAX)"
    );
    value as i64
}

/// Reads back an ordered quantity; a negative value is corruption.
pub(crate) fn u64_from_sql(
    value: i64,
    table: &str,
    key: &str,
    column: &str,
) -> Result<u64, Corrupted> {
    u64::try_from(value).map_err(|_| Corrupted {
        table: table.to_string(),
        key: key.to_string(),
        detail: format!("column `{column}` is negative ({value})"),
    })
}

/// Renders 16-byte ids (clients, groups) for error messages: always `0x` + hex.
pub(crate) fn hex_key(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The table name used in errors for rows of application table `table` (stored in `kv`).
pub(crate) fn kv_table_name(table: &str) -> String {
    format!("kv:{table}")
}

/// The key used in errors for an outbox row.
pub(crate) fn outbox_key(peer: &str, seq: u64) -> String {
    format!("{peer}/{seq}")
}

fn wrong_length(table: &str, key: &str, want: usize, got: usize) -> Corrupted {
    Corrupted {
        table: table.to_string(),
        key: key.to_string(),
        detail: format!("record body is {got} bytes, expected {want}"),
    }
}

/// Reads `N` little-endian u64s from a body of exactly `8 * N` bytes.
pub(crate) fn u64s_le<const N: usize>(
    table: &str,
    key: &str,
    body: &[u8],
) -> Result<[u64; N], Corrupted> {
    if body.len() != 8 * N {
        return Err(wrong_length(table, key, 8 * N, body.len()));
    }
    let mut out = [0u64; N];
    for (i, chunk) in body.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(word);
    }
    Ok(out)
}

/// Body of a `peers.record`.
/// 32 bytes, or 40 with a `forgotten` mark (so stores that never forget a peer keep the
/// record of format 3 byte for byte).
pub(crate) fn peer_body(row: &PeerRow) -> Vec<u8> {
    let words = [
        row.incarnation,
        row.next_seq,
        row.acked,
        row.delivered,
        row.forgotten,
    ];
    let n = if row.forgotten == 0 { 4 } else { 5 };
    let mut out = Vec::with_capacity(PEER_RECORD_FORGOTTEN_BYTES);
    debug_assert!(n * 8 == PEER_RECORD_BYTES || n * 8 == PEER_RECORD_FORGOTTEN_BYTES);
    for v in &words[..n] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes a `peers` row.
pub(crate) fn decode_peer(peer: String, record: &[u8]) -> Result<PeerRow, Corrupted> {
    let body = codec::unseal_record(&Record::peer(&peer), "peers", &peer, record)?;
    let [incarnation, next_seq, acked, delivered, forgotten] =
        if body.len() == PEER_RECORD_FORGOTTEN_BYTES {
            u64s_le::<5>("peers", &peer, body)?
        } else {
            let [i, n, a, d] = u64s_le::<4>("peers", &peer, body)?;
            [i, n, a, d, 0]
        };
    Ok(PeerRow {
        peer,
        incarnation,
        next_seq,
        acked,
        delivered,
        forgotten,
    })
}

/// Body of the `counters` meta record.
pub(crate) fn counters_body(
    turns_committed: u64,
    commits: u64,
    last_commit_ms: u64,
) -> [u8; COUNTERS_RECORD_BYTES] {
    let mut out = [0u8; COUNTERS_RECORD_BYTES];
    out[0..8].copy_from_slice(&turns_committed.to_le_bytes());
    out[8..16].copy_from_slice(&commits.to_le_bytes());
    out[16..24].copy_from_slice(&last_commit_ms.to_le_bytes());
    out
}

/// Decodes an `outbox` row read as (peer, seq, created_ms, payload).
pub(crate) fn decode_outbox(
    peer: String,
    seq: i64,
    created_ms: i64,
    payload: &[u8],
) -> Result<OutboxRow, Corrupted> {
    let seq_u64 = u64_from_sql(seq, "outbox", &format!("{peer}/{seq}"), "seq")?;
    let key = outbox_key(&peer, seq_u64);
    let created_ms = u64_from_sql(created_ms, "outbox", &key, "created_ms")?;
    let payload = codec::unseal_record(
        &Record::outbox(&peer, seq_u64, created_ms),
        "outbox",
        &key,
        payload,
    )?
    .to_vec();
    Ok(OutboxRow {
        peer,
        seq: seq_u64,
        payload,
        created_ms,
    })
}

/// Decodes a `timers` row read as (name, due_ms, payload).
pub(crate) fn decode_timer(
    name: String,
    due_ms: i64,
    payload: &[u8],
) -> Result<TimerRow, Corrupted> {
    let due_ms = u64_from_sql(due_ms, "timers", &name, "due_ms")?;
    let payload =
        codec::unseal_record(&Record::timer(&name, due_ms), "timers", &name, payload)?.to_vec();
    Ok(TimerRow {
        name,
        due_ms,
        payload,
    })
}

fn id16(table: &str, bytes: &[u8]) -> Result<[u8; 16], Corrupted> {
    <[u8; 16]>::try_from(bytes).map_err(|_| Corrupted {
        table: table.to_string(),
        key: hex_key(bytes),
        detail: format!("id is {} bytes, expected 16", bytes.len()),
    })
}

/// Decodes a `clients` row read as (client, request_no, updated_ms, reply).
pub(crate) fn decode_client(
    client: &[u8],
    request_no: i64,
    updated_ms: i64,
    reply: &[u8],
) -> Result<ClientRow, Corrupted> {
    let client = id16("clients", client)?;
    // The key is named only in an error: formatting it for every healthy row was a third of
    // a reader's time at 10,000 rows.
    let named = |mut c: Corrupted| {
        c.key = hex_key(&client);
        c
    };
    let request_no = u64_from_sql(request_no, "clients", "", "request_no").map_err(named)?;
    let updated_ms = u64_from_sql(updated_ms, "clients", "", "updated_ms").map_err(named)?;
    let reply = codec::unseal_record(
        &Record::client(&client, request_no, updated_ms),
        "clients",
        "",
        reply,
    )
    .map_err(named)?
    .to_vec();
    Ok(ClientRow {
        client,
        request_no,
        updated_ms,
        reply,
    })
}

/// Decodes a `fuse_groups` row read as (group_id, record).
pub(crate) fn decode_group(group: &[u8], record: &[u8]) -> Result<GroupRow, Corrupted> {
    let group = id16("fuse_groups", group)?;
    let record = codec::unseal_record(&Record::group(&group), "fuse_groups", "", record)
        .map_err(|mut c| {
            c.key = hex_key(&group);
            c
        })?
        .to_vec();
    Ok(GroupRow { group, record })
}

/// Decodes a `turn_log` row read as (turn, turns, entries): the entries of one batch, the
/// first numbered `turn`, `turns` of them, increasing.
pub(crate) fn decode_turns(
    turn: i64,
    turns: i64,
    entries: &[u8],
) -> Result<Vec<crate::TurnLogEntry>, Corrupted> {
    let key = turn.to_string();
    let first = u64_from_sql(turn, "turn_log", &key, "turn")?;
    let count = u64_from_sql(turns, "turn_log", &key, "turns")?;
    let body = codec::unseal_record(&Record::turn_log(first, count), "turn_log", &key, entries)?;
    let bad = |detail: String| Corrupted {
        table: "turn_log".to_string(),
        key: key.clone(),
        detail,
    };
    let decoded: Vec<crate::TurnLogEntry> = codec::decode(body).map_err(|e| bad(e.to_string()))?;
    if decoded.len() as u64 != count {
        return Err(bad(format!(
            "{} entries where the row says {count}",
            decoded.len()
        )));
    }
    if decoded.first().map(|e| e.turn) != Some(first) {
        return Err(bad(format!(
            "first entry is turn {:?}, the row's key says {first}",
            decoded.first().map(|e| e.turn)
        )));
    }
    if decoded.windows(2).any(|w| w[0].turn >= w[1].turn) {
        return Err(bad("entries not increasing by turn".to_string()));
    }
    Ok(decoded)
}

/// The decoded `meta` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaValues {
    pub(crate) format_version: u32,
    pub(crate) process_id: String,
    pub(crate) incarnation: u64,
    pub(crate) created_ms: u64,
    pub(crate) turns_committed: u64,
    pub(crate) commits: u64,
    pub(crate) last_commit_ms: u64,
    /// The `app` row, if the store has one.
    pub(crate) app: Option<crate::AppIdentity>,
}

/// Body of the `app` meta row.
pub(crate) fn app_body(app: &crate::AppIdentity) -> Vec<u8> {
    let mut out = app.schema_version.to_le_bytes().to_vec();
    out.extend_from_slice(app.name.as_bytes());
    out
}

/// Decodes the body of the `app` meta row.
pub(crate) fn decode_app(body: &[u8]) -> Result<crate::AppIdentity, Corrupted> {
    let bad = |detail: &str| Corrupted {
        table: "meta".to_string(),
        key: META_APP.to_string(),
        detail: detail.to_string(),
    };
    if body.len() < 4 {
        return Err(bad("shorter than its 4-byte schema version"));
    }
    let schema_version = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    if schema_version == 0 {
        return Err(bad("schema version 0 does not exist"));
    }
    let name = std::str::from_utf8(&body[4..])
        .map_err(|_| bad("application name is not UTF-8"))?
        .to_string();
    Ok(crate::AppIdentity {
        name,
        schema_version,
    })
}

/// The format version whose stores `Store::open` migrates to [`crate::FORMAT_VERSION`]
/// (format 2: the same schema, every record sealed with the version-1 envelope).
pub(crate) const MIGRATES_FROM: u32 = 2;

/// Format 3: format 4 without the `journal` table; `Store::open` adds it (and migrates a
/// format-2 store through format 3 in the same transaction).
pub(crate) const MIGRATES_FROM_3: u32 = 3;

/// Why the `meta` rows did not decode.
#[derive(Debug)]
pub(crate) enum MetaProblem {
    /// No `magic` row, or the wrong magic: not a Ken store.
    NotKen(String),
    /// A Ken store of a newer format.
    Newer(u32),
    /// A Ken store of an older format this build has no migration from.
    Older(u32),
    /// A Ken store of format [`MIGRATES_FROM`]: the owner migrates it at open.
    Migratable(u32),
    /// A Ken store whose meta rows are damaged or missing.
    Corrupted(Corrupted),
}

impl From<Corrupted> for MetaProblem {
    fn from(c: Corrupted) -> Self {
        MetaProblem::Corrupted(c)
    }
}

/// Decodes the `meta` rows (key, sealed value) of a store of this build's format, in the
/// order: magic, format version, rest. A store of format [`MIGRATES_FROM`] is
/// [`MetaProblem::Migratable`].
pub(crate) fn decode_meta(rows: &[(String, Vec<u8>)]) -> Result<MetaValues, MetaProblem> {
    decode_meta_as(rows, crate::FORMAT_VERSION)
}

/// The meta row's body: the frozen rows and every row of a format-2 store with the
/// version-1 envelope, the others with the record envelope.
fn meta_body<'a>(key: &str, raw: &'a [u8], format: u32) -> Result<&'a [u8], Corrupted> {
    if format == MIGRATES_FROM || key == META_MAGIC || key == META_FORMAT_VERSION {
        codec::unseal("meta", key, raw)
    } else {
        codec::unseal_record(&Record::meta(key), "meta", key, raw)
    }
}

/// Seals a meta row's body as this build writes it (see [`meta_body`]).
pub(crate) fn seal_meta(key: &str, body: &[u8]) -> Vec<u8> {
    if key == META_MAGIC || key == META_FORMAT_VERSION {
        codec::seal(body)
    } else {
        codec::seal_record(&Record::meta(key), body)
    }
}

/// Decodes the `meta` rows as a store of format `expect` (this build's, or
/// [`MIGRATES_FROM`] for the migration).
pub(crate) fn decode_meta_as(
    rows: &[(String, Vec<u8>)],
    expect: u32,
) -> Result<MetaValues, MetaProblem> {
    let find = |key: &str| {
        rows.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    };
    let missing = |key: &str| Corrupted {
        table: "meta".to_string(),
        key: key.to_string(),
        detail: "row missing".to_string(),
    };
    let magic = find(META_MAGIC)
        .ok_or_else(|| MetaProblem::NotKen("its `meta` table has no `magic` row".to_string()))?;
    match codec::unseal("meta", META_MAGIC, magic) {
        Ok(m) if m == MAGIC => {}
        _ => {
            return Err(MetaProblem::NotKen(
                "its `meta.magic` row is not Ken's".to_string(),
            ))
        }
    }
    let version_raw = find(META_FORMAT_VERSION).ok_or_else(|| missing(META_FORMAT_VERSION))?;
    let version_body = codec::unseal("meta", META_FORMAT_VERSION, version_raw)?;
    let format_version = match <[u8; 4]>::try_from(version_body) {
        Ok(b) => u32::from_le_bytes(b),
        Err(_) => {
            return Err(wrong_length("meta", META_FORMAT_VERSION, 4, version_body.len()).into())
        }
    };
    if format_version > crate::FORMAT_VERSION {
        return Err(MetaProblem::Newer(format_version));
    }
    if format_version == 0 {
        return Err(Corrupted {
            table: "meta".to_string(),
            key: META_FORMAT_VERSION.to_string(),
            detail: "format version 0 does not exist".to_string(),
        }
        .into());
    }
    if format_version != expect {
        return Err(
            if format_version == MIGRATES_FROM || format_version == MIGRATES_FROM_3 {
                MetaProblem::Migratable(format_version)
            } else {
                MetaProblem::Older(format_version)
            },
        );
    }
    let body = |key: &str| -> Result<&[u8], Corrupted> {
        meta_body(key, find(key).ok_or_else(|| missing(key))?, format_version)
    };
    let process_id = std::str::from_utf8(body(META_PROCESS_ID)?)
        .map_err(|_| Corrupted {
            table: "meta".to_string(),
            key: META_PROCESS_ID.to_string(),
            detail: "process id is not UTF-8".to_string(),
        })?
        .to_string();
    let [incarnation] = u64s_le::<1>("meta", META_INCARNATION, body(META_INCARNATION)?)?;
    let [created_ms] = u64s_le::<1>("meta", META_CREATED_MS, body(META_CREATED_MS)?)?;
    let [turns_committed, commits, last_commit_ms] =
        u64s_le::<3>("meta", META_COUNTERS, body(META_COUNTERS)?)?;
    let app = match find(META_APP) {
        Some(raw) => Some(decode_app(meta_body(META_APP, raw, format_version)?)?),
        None => None,
    };
    if incarnation == 0 {
        return Err(Corrupted {
            table: "meta".to_string(),
            key: META_INCARNATION.to_string(),
            detail: "incarnation is 0 (stores never choose 0)".to_string(),
        }
        .into());
    }
    Ok(MetaValues {
        format_version,
        process_id,
        incarnation,
        created_ms,
        turns_committed,
        commits,
        last_commit_ms,
        app,
    })
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when there is none (empty prefix or all `0xff`).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<crate::Store>();
        send::<crate::Reader>();
    }

    /// Pins the worked examples of FORMAT.md.
    #[test]
    fn envelopes_match_the_examples_in_format_md() {
        assert_eq!(
            codec::seal(b"hi"),
            [0x01, 0x68, 0x69, 0x76, 0x8b, 0xc9, 0x67]
        );
        let magic = codec::seal(MAGIC);
        assert_eq!(&magic[..10], b"\x01ken-store");
        assert_eq!(&magic[10..], [0xd4, 0x3c, 0xbb, 0x13]);
        assert_eq!(
            codec::seal(&2u32.to_le_bytes()),
            [0x01, 0x02, 0x00, 0x00, 0x00, 0x26, 0x16, 0x4b, 0x51]
        );
        assert_eq!(
            codec::seal(&3u32.to_le_bytes()),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x43, 0x71, 0xf7, 0xe9]
        );
        assert_eq!(crate::FORMAT_VERSION, 4);
        assert_eq!(
            seal_meta(META_FORMAT_VERSION, &crate::FORMAT_VERSION.to_le_bytes()),
            [0x01, 0x04, 0x00, 0x00, 0x00, 0xfa, 0x49, 0x20, 0x74]
        );
        // A record: table `kv`, application table "t", key "k", value "hi".
        assert_eq!(
            codec::seal_record(&Record::kv("t", b"k"), b"hi"),
            [0x02, 0x68, 0x69, 0x19, 0x0c, 0x69, 0xd2]
        );
        let mut covered = vec![0x02, 0x02, b'k', b'v', 1, 0, 0, 0, b't', 1, 0, 0, 0, b'k'];
        covered.extend_from_slice(b"hi");
        assert_eq!(crc32fast::hash(&covered), 0xd269_0c19);
    }

    #[test]
    fn prefix_successor_bounds_the_prefix_range() {
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
    }

    #[test]
    fn peer_record_round_trips_and_rejects_wrong_lengths() {
        let row = PeerRow {
            peer: "b".into(),
            incarnation: u64::MAX,
            next_seq: 9,
            acked: 3,
            delivered: 7,
            forgotten: 0,
        };
        let sealed = codec::seal_record(&Record::peer("b"), &peer_body(&row));
        assert_eq!(decode_peer("b".into(), &sealed).unwrap(), row);
        // Another peer's record pasted here does not check.
        assert!(decode_peer("c".into(), &sealed).is_err());
        let short = codec::seal_record(&Record::peer("b"), &peer_body(&row)[..31]);
        let err = decode_peer("b".into(), &short).unwrap_err();
        assert_eq!((err.table.as_str(), err.key.as_str()), ("peers", "b"));
    }

    #[test]
    fn negative_integers_read_back_are_corrupted() {
        let err = decode_timer(
            "t".into(),
            -1,
            &codec::seal_record(&Record::timer("t", 0), b""),
        )
        .unwrap_err();
        assert_eq!((err.table.as_str(), err.key.as_str()), ("timers", "t"));
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn writing_an_integer_above_i64_max_is_a_bug() {
        sql_u64(u64::MAX, "seq");
    }
}
