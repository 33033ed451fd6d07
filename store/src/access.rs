//! What the owner ([`crate::Store`]) and the readers ([`crate::Reader`]) share: the owner
//! lock file, classifying an opened file, the meta rows, the row queries, and one-query
//! reads with decoding. Neither `store.rs` nor `reader.rs` imports the other; both import
//! this.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use crate::codec;
use crate::error::{OpenError, ReadError};
use crate::schema;
use crate::FORMAT_VERSION;

/// The path of the owner lock file of the store at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Reads the pid an owner wrote into a lock file, for messages (the binary layout of
/// `witness`, or the text a format-2 owner wrote).
pub(crate) fn lock_holder(lock_path: &Path) -> Option<u32> {
    let mut bytes = Vec::new();
    File::open(lock_path)
        .ok()?
        .take(4096)
        .read_to_end(&mut bytes)
        .ok()?;
    match crate::witness::decode(&bytes) {
        Some(w) => (w.pid != 0).then_some(w.pid),
        None => std::str::from_utf8(&bytes).ok()?.trim().parse().ok(),
    }
}

/// Reads all `meta` rows (one query).
pub(crate) fn read_meta_rows(conn: &Connection) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached("SELECT key, value FROM meta")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Decodes the meta rows, turning the problems into open errors.
pub(crate) fn meta_or_open_error(
    path: &Path,
    rows: &[(String, Vec<u8>)],
) -> Result<schema::MetaValues, OpenError> {
    schema::decode_meta(rows).map_err(|p| meta_open_error(path, p))
}

fn meta_open_error(path: &Path, p: schema::MetaProblem) -> OpenError {
    match p {
        schema::MetaProblem::NotKen(detail) => OpenError::NotAKenStore {
            path: path.to_path_buf(),
            detail,
        },
        schema::MetaProblem::Newer(found) => OpenError::NewerFormat {
            found,
            supported: FORMAT_VERSION,
        },
        schema::MetaProblem::Older(found) => OpenError::OlderFormat {
            found,
            supported: FORMAT_VERSION,
        },
        schema::MetaProblem::Migratable(found) => OpenError::NeedsMigration {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        },
        schema::MetaProblem::Corrupted(c) => OpenError::Corrupted(c),
    }
}

/// What [`classify`] found in an opened file.
#[derive(Debug)]
pub(crate) enum Found {
    /// A database with no tables at all: a new file or an interrupted creation.
    Empty,
    /// A Ken store of this build's format.
    Store(schema::MetaValues),
    /// A Ken store of format [`schema::MIGRATES_FROM`] or [`schema::MIGRATES_FROM_3`] (the
    /// value): only the owner opens it, migrating.
    Migratable(u32),
}

/// Classifies an opened file without writing to it, or says why it is no store this build
/// reads.
pub(crate) fn classify(conn: &Connection, path: &Path) -> Result<Found, OpenError> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| match e.sqlite_error_code() {
            // A Ken store whose header page is damaged is no foreign file: its lock file
            // witnessed commits. Moving it away would start over.
            Some(rusqlite::ErrorCode::NotADatabase)
                if crate::witness::read_path(&lock_path(path)).is_some_and(|w| w.commits > 0) =>
            {
                OpenError::Damaged {
                    path: path.to_path_buf(),
                    detail: "its header is not SQLite's, but its owner lock file witnessed \
                             commits of a Ken store here"
                        .to_string(),
                }
            }
            Some(rusqlite::ErrorCode::NotADatabase) => OpenError::NotAKenStore {
                path: path.to_path_buf(),
                detail: "not an SQLite database".to_string(),
            },
            _ => sqlite_open_err(path)(e),
        })?;
    if tables.is_empty() {
        return Ok(Found::Empty);
    }
    if !tables.iter().any(|t| t == "meta") {
        return Err(OpenError::NotAKenStore {
            path: path.to_path_buf(),
            detail: "an SQLite database without Ken's `meta` table".to_string(),
        });
    }
    let rows = read_meta_rows(conn).map_err(|e| OpenError::NotAKenStore {
        path: path.to_path_buf(),
        detail: format!("its `meta` table is not Ken's: {e}"),
    })?;
    let found = match schema::decode_meta(&rows) {
        Ok(meta) => Found::Store(meta),
        Err(schema::MetaProblem::Migratable(from)) => {
            // Decode it as its format now, so that a damaged old store is refused before
            // anything is written.
            schema::decode_meta_as(&rows, from).map_err(|p| meta_open_error(path, p))?;
            Found::Migratable(from)
        }
        Err(p) => return Err(meta_open_error(path, p)),
    };
    // Formats 2 and 3 have every table but the journal (the migration adds it).
    let needed = match found {
        Found::Migratable(_) => &schema::TABLES[..schema::TABLES.len() - 1],
        _ => &schema::TABLES[..],
    };
    if let Some(missing) = needed
        .iter()
        .find(|t| !tables.iter().any(|have| have == *t))
    {
        return Err(OpenError::Corrupted(crate::Corrupted {
            table: missing.to_string(),
            key: String::new(),
            detail: "the table is missing".to_string(),
        }));
    }
    Ok(found)
}

/// SQLite's extended result code of `e`, if it came from SQLite.
fn extended_code(e: &rusqlite::Error) -> Option<std::os::raw::c_int> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

pub(crate) fn sqlite_open_err(path: &Path) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |e| match (crate::error::checksum_failure(&e), e.sqlite_error_code()) {
        (Some(page), _) => OpenError::Damaged {
            path: path.to_path_buf(),
            detail: page,
        },
        // SQLite found the file damaged below the records: say so, not just "SQLite error".
        (_, Some(rusqlite::ErrorCode::DatabaseCorrupt)) => OpenError::Damaged {
            path: path.to_path_buf(),
            detail: format!("SQLite finds the database file malformed ({e})"),
        },
        // The tables are STRICT: a value of the wrong type is a damaged page, not a bug.
        _ if crate::error::is_type_mismatch(&e) => OpenError::Damaged {
            path: path.to_path_buf(),
            detail: format!("a row does not match the schema ({e})"),
        },
        // No space: for a write of the open itself, or to grow the `-shm` index (which
        // SQLite reports as an I/O error of its own, SQLITE_IOERR_SHMSIZE).
        (_, Some(rusqlite::ErrorCode::DiskFull)) => OpenError::Full {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ if extended_code(&e) == Some(rusqlite::ffi::SQLITE_IOERR_SHMSIZE) => OpenError::Full {
            path: path.to_path_buf(),
            detail: format!("{e}: the -shm index cannot grow"),
        },
        _ => OpenError::Sqlite {
            path: path.to_path_buf(),
            detail: match extended_code(&e) {
                Some(code) => format!("{e} (SQLite extended code {code})"),
                None => e.to_string(),
            },
        },
    }
}

/// Runs one query, collects the raw rows (ending the statement, and so the implicit read
/// transaction when there is no explicit one), then decodes each row.
pub(crate) fn query_decode<P, R, T, F, D>(
    conn: &Connection,
    sql: &str,
    params: P,
    raw: F,
    decode: D,
) -> Result<Vec<T>, ReadError>
where
    P: rusqlite::Params,
    F: FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    D: FnMut(R) -> Result<T, crate::Corrupted>,
{
    let rows: Vec<R> = {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, raw)?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    Ok(rows.into_iter().map(decode).collect::<Result<_, _>>()?)
}

/// One row of an application table (one query).
pub(crate) fn table_get(
    conn: &Connection,
    table: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, ReadError> {
    let value: Option<Vec<u8>> = conn
        .prepare_cached("SELECT value FROM kv WHERE tbl = ?1 AND key = ?2")?
        .query_row((table, key), |r| r.get(0))
        .optional()?;
    match value {
        None => Ok(None),
        Some(bytes) => {
            let body = codec::unseal_record(
                &codec::Record::kv(table, key),
                &schema::kv_table_name(table),
                &codec::printable_key(key),
                &bytes,
            )?;
            Ok(Some(body.to_vec()))
        }
    }
}

pub(crate) const SQL_PEERS: &str = "SELECT peer, record FROM peers ORDER BY peer";

pub(crate) const SQL_TIMERS: &str = "SELECT name, due_ms, payload FROM timers ORDER BY name";

/// Every durable timer in the table, by name, each checked.
pub(crate) fn timers(conn: &Connection) -> Result<Vec<crate::TimerRow>, ReadError> {
    query_decode(
        conn,
        SQL_TIMERS,
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        },
        |(name, due_ms, payload)| schema::decode_timer(name, due_ms, &payload),
    )
}

/// Every client row, each checked whole, returned with an empty `reply` (read one row at a
/// time, so the replies are never all in memory).
pub(crate) fn clients_without_replies(
    conn: &Connection,
) -> Result<Vec<crate::ClientRow>, ReadError> {
    let mut stmt = conn.prepare_cached(SQL_CLIENTS)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let client: Vec<u8> = r.get(0)?;
        let request_no: i64 = r.get(1)?;
        let updated_ms: i64 = r.get(2)?;
        let reply = r.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
        let mut row = schema::decode_client(&client, request_no, updated_ms, reply)?;
        row.reply = Vec::new();
        out.push(row);
    }
    Ok(out)
}

/// One client's row (its last request number and reply), checked.
pub(crate) fn client(
    conn: &Connection,
    client: &[u8; 16],
) -> Result<Option<crate::ClientRow>, ReadError> {
    let raw: Option<(Vec<u8>, i64, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT client, request_no, updated_ms, reply FROM clients WHERE client = ?1",
        )?
        .query_row([&client[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    match raw {
        None => Ok(None),
        Some((c, n, at, reply)) => Ok(Some(schema::decode_client(&c, n, at, &reply)?)),
    }
}

pub(crate) const SQL_CLIENTS: &str =
    "SELECT client, request_no, updated_ms, reply FROM clients ORDER BY client";

pub(crate) const SQL_GROUPS: &str = "SELECT group_id, record FROM fuse_groups ORDER BY group_id";
