//! Kv: a key-value store served to clients outside Ken, exactly once.
//!
//! Clients send a [`Request`] through a [`KvClient`] (a [`ken::BlockingClient`] typed with
//! kv's request and reply); each request runs as one turn and is answered with a [`Reply`]. The data lives in the
//! durable table [`KV_TABLE`]: key = the key's UTF-8 bytes, value = the value as a `String`
//! (codec-encoded). A turn touches only the keys it reads and writes, so a commit costs what
//! the request touched, not the size of the store.
//!
//! Requests: get, put, delete, compare-and-swap (absent = `None` on either side), list by
//! prefix (bounded: at most [`LIST_ROWS_MAX`] rows and a reply that fits one datagram;
//! `truncated` says there may be more), and `incr`, which adds to an integer value (absent
//! counts as 0). `incr` is what makes a double application visible: a counter that got
//! `+1` three times acknowledged must read exactly 3.
//!
//! Invariants:
//! - Bad input never panics the process: an over-long key, an over-long value, an `incr` of
//!   a value that is not an integer or that would overflow is answered with
//!   [`Reply::Error`] and changes nothing.
//! - Every reply fits one datagram (values are bounded at put time, lists by size).
//! - [`State::requests_applied`] counts the requests this store applied: with exactly-once
//!   clients it equals the number of distinct (client, request number) pairs answered `Ok`.

use ken::{BlockingClient, Handler, Input, Turn};
use serde::{Deserialize, Serialize};

/// The table holding the data.
pub const KV_TABLE: &str = "kv";

/// Longest key, in bytes (the runtime's table key limit).
pub const KEY_BYTES_MAX: usize = ken::limits::TABLE_KEY_BYTES_MAX;

/// Longest value, in bytes: a reply carrying it with its key (a `list` of one row) must fit
/// one datagram with room for the reply's framing.
pub const VALUE_BYTES_MAX: usize = ken::limits::MESSAGE_BYTES_MAX - KEY_BYTES_MAX - 1024;

/// Most rows one `list` returns.
pub const LIST_ROWS_MAX: u32 = 1000;

/// Bytes of keys and values (plus 16 per row for lengths) a `list` reply may carry; the rest
/// is cut (`truncated`). One row of the longest key and value always fits.
const LIST_REPLY_BYTES_MAX: usize = ken::limits::MESSAGE_BYTES_MAX - 512;

const _: () = assert!(KEY_BYTES_MAX + VALUE_BYTES_MAX + 16 <= LIST_REPLY_BYTES_MAX);

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Sets `key` to `new` (`None` deletes it) only if its value is `expected` (`None` =
    /// absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: Option<String>,
    },
    /// Keys starting with `prefix` (and greater than `start_after`, if given), in byte
    /// order, at most `limit` (capped at [`LIST_ROWS_MAX`]). Page with the last key of one
    /// reply as `start_after` of the next.
    List {
        prefix: String,
        limit: u32,
        start_after: Option<String>,
    },
    /// Adds `by` to the integer at `key` (absent = 0) and answers the new value.
    Incr {
        key: String,
        by: i64,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `get`: the value, if any.
    Value(Option<String>),
    /// `put`: the value it replaced, if any.
    Put { previous: Option<String> },
    /// `delete`: whether the key existed.
    Deleted(bool),
    /// `cas`: whether it swapped, and the value the key held before (the one compared).
    Cas {
        swapped: bool,
        current: Option<String>,
    },
    /// `list`: rows in key order; `truncated` if more may match.
    List {
        rows: Vec<(String, String)>,
        truncated: bool,
    },
    /// `incr`: the new value.
    Incr(i64),
    /// The request was not applied (nothing changed); the text says why.
    Error(String),
}

/// The kv handler. It has no configuration.
#[derive(Debug, Clone, Default)]
pub struct Kv;

/// A blocking exactly-once client of a kv server.
pub type KvClient = BlockingClient<Request, Reply>;

/// Kv's durable root state: counters only (the data is in [`KV_TABLE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Requests applied (each once), including those answered with [`Reply::Error`].
    /// (Requests that do not decode as a [`Request`] never reach the handler: the runtime
    /// answers them with an error and applies nothing.)
    pub requests_applied: u64,
}

impl Handler for Kv {
    const APP: &'static str = "kv";
    type State = State;
    type Message = ();
    type Request = Request;
    type Reply = Reply;

    fn on_turn(
        &self,
        state: &mut State,
        turn: &mut Turn<'_, (), Reply>,
        input: Input<(), Request>,
    ) {
        let Input::Request { request, .. } = input else {
            return;
        };
        state.requests_applied += 1;
        let reply = apply(turn, request);
        turn.reply(&reply)
            .expect("kv replies fit in a datagram (values and lists are capped)");
    }
}

fn check_key(key: &str) -> Result<(), Reply> {
    if key.len() > KEY_BYTES_MAX {
        return Err(Reply::Error(format!(
            "key of {} bytes exceeds the {KEY_BYTES_MAX}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), Reply> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Reply::Error(format!(
            "value of {} bytes exceeds the {VALUE_BYTES_MAX}-byte limit",
            value.len()
        )));
    }
    Ok(())
}

/// Applies one request in `turn` and returns its reply.
fn apply(turn: &mut Turn<'_, (), Reply>, request: Request) -> Reply {
    let checked = match &request {
        Request::Get { key } | Request::Delete { key } | Request::Incr { key, .. } => {
            check_key(key)
        }
        Request::Put { key, value } => check_key(key).and_then(|()| check_value(value)),
        Request::Cas { key, new, .. } => {
            check_key(key).and_then(|()| new.as_deref().map_or(Ok(()), check_value))
        }
        Request::List { .. } => Ok(()),
    };
    if let Err(reply) = checked {
        return reply;
    }
    let mut table = turn.table(KV_TABLE);
    match request {
        Request::Get { key } => Reply::Value(table.get(&key)),
        Request::Put { key, value } => {
            let previous = table.get(&key);
            table.put(&key, &value);
            Reply::Put { previous }
        }
        Request::Delete { key } => {
            let existed = table.contains(&key);
            table.delete(&key);
            Reply::Deleted(existed)
        }
        Request::Cas { key, expected, new } => {
            let current: Option<String> = table.get(&key);
            let swapped = current == expected;
            if swapped {
                match &new {
                    Some(v) => table.put(&key, v),
                    None => table.delete(&key),
                }
            }
            Reply::Cas { swapped, current }
        }
        Request::List {
            prefix,
            limit,
            start_after,
        } => {
            let limit = limit.min(LIST_ROWS_MAX);
            // One row more than asked, to tell whether more match.
            let found = table.scan_after::<String>(&prefix, start_after, limit.saturating_add(1));
            let mut truncated = found.len() > limit as usize;
            let mut rows = Vec::new();
            let mut bytes = 0;
            for (k, v) in found.into_iter().take(limit as usize) {
                // Keys were written from `String`s; a non-UTF-8 key cannot come from a client.
                let k = String::from_utf8_lossy(&k).into_owned();
                bytes += k.len() + v.len() + 16;
                if bytes > LIST_REPLY_BYTES_MAX {
                    truncated = true;
                    break;
                }
                rows.push((k, v));
            }
            Reply::List { rows, truncated }
        }
        Request::Incr { key, by } => {
            let current: Option<String> = table.get(&key);
            let n = match current.as_deref().map(str::parse::<i64>) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return Reply::Error(format!("the value at `{key}` is not an integer"))
                }
            };
            let Some(sum) = n.checked_add(by) else {
                return Reply::Error(format!("{n} + {by} overflows a 64-bit integer"));
            };
            table.put(&key, &sum.to_string());
            Reply::Incr(sum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_through_the_codec() {
        let requests = [
            Request::Get { key: "a".into() },
            Request::Cas {
                key: "k".into(),
                expected: None,
                new: Some("v".into()),
            },
            Request::Incr {
                key: "c".into(),
                by: -3,
            },
        ];
        for r in requests {
            let bytes = ken::store::codec::encode(&r);
            assert_eq!(ken::store::codec::decode::<Request>(&bytes).unwrap(), r);
        }
        let reply = Reply::List {
            rows: vec![("a".into(), "1".into())],
            truncated: false,
        };
        let bytes = ken::store::codec::encode(&reply);
        assert_eq!(ken::store::codec::decode::<Reply>(&bytes).unwrap(), reply);
        assert!(ken::store::codec::decode::<Reply>(b"\xff").is_err());
    }

    /// `list` pages through sparse keys with `start_after`: every key once, in order.
    #[test]
    fn list_pages_with_start_after() {
        use ken::engine::EngineConfig;
        use ken::testing::Cluster;
        use ken::{ClientId, ProcessId, Time, Tuning};
        let mut c = Cluster::new(tempfile::tempdir().unwrap(), Time::from_millis(1 << 40), 5);
        let id = ProcessId::new("kv").unwrap();
        c.add(
            EngineConfig {
                id,
                peers: vec![],
                tuning: Tuning::default(),
                seed: 1,
            },
            || Kv,
        );
        c.start_all();
        let client = ClientId([3; 16]);
        let keys: Vec<String> = (0..25).map(|i| format!("k{:03}", i * 7)).collect();
        let mut n = 0;
        for k in &keys {
            n += 1;
            let put = Request::Put {
                key: k.clone(),
                value: "v".into(),
            };
            c.request(0, client, n, &put);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            n += 1;
            let list = Request::List {
                prefix: "k".into(),
                limit: 10,
                start_after: after.clone(),
            };
            c.request(0, client, n, &list);
            c.run_for(std::time::Duration::from_millis(20));
            let frame = c.node(0).replies().last().expect("a reply").clone();
            assert_eq!(frame.seq.0, n);
            let body: ken::client::ReplyBody = ken::store::codec::decode(&frame.payload).unwrap();
            let ken::client::ReplyBody::Ok(bytes) = body else {
                panic!("{body:?}")
            };
            let Reply::List { rows, truncated } = ken::store::codec::decode(&bytes).unwrap() else {
                panic!("not a list reply")
            };
            seen.extend(rows.iter().map(|(k, _)| k.clone()));
            after = rows.last().map(|(k, _)| k.clone());
            if !truncated {
                break;
            }
        }
        assert_eq!(seen, keys);
    }

    #[test]
    fn the_largest_value_fits_a_reply() {
        let reply = Reply::List {
            rows: vec![("k".repeat(KEY_BYTES_MAX), "v".repeat(VALUE_BYTES_MAX))],
            truncated: true,
        };
        let body = ken::client::ReplyBody::Ok(ken::store::codec::encode(&reply));
        assert!(ken::store::codec::encode(&body).len() <= ken::limits::MESSAGE_BYTES_MAX);
    }
}
