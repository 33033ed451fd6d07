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

/// Reads the pid an owner wrote into a lock file, for messages.
pub(crate) fn lock_holder(lock_path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(lock_path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
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
    schema::decode_meta(rows).map_err(|p| match p {
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
        schema::MetaProblem::Corrupted(c) => OpenError::Corrupted(c),
    })
}

/// Classifies an opened file without writing to it: `Ok(None)` for a database with no
/// tables at all, `Ok(Some(meta))` for a Ken store this build reads, else the reason not.
pub(crate) fn classify(
    conn: &Connection,
    path: &Path,
) -> Result<Option<schema::MetaValues>, OpenError> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => OpenError::NotAKenStore {
                path: path.to_path_buf(),
                detail: "not an SQLite database".to_string(),
            },
            _ => sqlite_open_err(path)(e),
        })?;
    if tables.is_empty() {
        return Ok(None);
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
    let meta = meta_or_open_error(path, &rows)?;
    if let Some(missing) = schema::TABLES
        .iter()
        .find(|t| !tables.iter().any(|have| have == *t))
    {
        return Err(OpenError::Corrupted(crate::Corrupted {
            table: missing.to_string(),
            key: String::new(),
            detail: "the table is missing".to_string(),
        }));
    }
    Ok(Some(meta))
}

pub(crate) fn sqlite_open_err(path: &Path) -> impl Fn(rusqlite::Error) -> OpenError + '_ {
    move |e| OpenError::Sqlite {
        path: path.to_path_buf(),
        detail: e.to_string(),
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
            let body = codec::unseal(
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

pub(crate) const SQL_CLIENTS: &str =
    "SELECT client, request_no, updated_ms, reply FROM clients ORDER BY client";

pub(crate) const SQL_GROUPS: &str = "SELECT group_id, record FROM fuse_groups ORDER BY group_id";
