//! What the apps' stored bytes mean, for their `inspect` subcommands
//! (`ken-bank inspect STORE state`): one [`AppDecoder`] per app, naming its root state type,
//! its message type and, per table, its key layout and value type.
//!
//! The views themselves live in `ken_inspect` (shared with `ken inspect`, which
//! cannot know these types and shows previews only).

use ken::client::ReplyBody;
use ken::store::codec;
use ken_inspect::{keys, AppDecoder};
use serde_json::{json, Value};

use crate::{bank, kv, lock, pingpong};

/// `ken-pingpong`: root [`pingpong::State`], messages [`pingpong::Msg`], table `received`
/// (value received, u64 big-endian -> the turn that received it).
pub fn pingpong() -> AppDecoder {
    AppDecoder::new("ken-pingpong")
        .root::<pingpong::State>()
        .message::<pingpong::Msg>()
        .table::<u64>(pingpong::RECEIVED_TABLE, keys::u64_be)
}

/// `ken-bank`: root [`bank::State`], messages [`bank::Msg`], tables `accounts` (account,
/// u32 big-endian -> balance), `sent` (transfer id, u64 big-endian -> [`bank::Sent`]) and
/// `applied` ([`bank::applied_key`] -> amount).
pub fn bank() -> AppDecoder {
    AppDecoder::new("ken-bank")
        .root::<bank::State>()
        .message::<bank::Msg>()
        .table::<i64>(bank::ACCOUNTS_TABLE, keys::u32_be)
        .table::<bank::Sent>(bank::SENT_TABLE, keys::u64_be)
        .table::<i64>(bank::APPLIED_TABLE, applied_key)
}

/// `ken-bank` on a store of schema version 2 ([`bank::BankV2`]): root [`bank::StateV2`],
/// messages [`bank::MsgV2`], tables `balances` (account, u32 big-endian -> balance), `sent`
/// (-> [`bank::SentV2`]) and `applied`.
pub fn bank_v2() -> AppDecoder {
    AppDecoder::new("ken-bank")
        .root::<bank::StateV2>()
        .message::<bank::MsgV2>()
        .table::<i64>(bank::BALANCES_TABLE, keys::u32_be)
        .table::<bank::SentV2>(bank::SENT_TABLE, keys::u64_be)
        .table::<i64>(bank::APPLIED_TABLE, applied_key)
}

/// `ken-kv`: root [`kv::State`], table `kv` (the key's UTF-8 bytes -> the value, a
/// `String`), and cached client replies ([`kv::Reply`] in the runtime's reply envelope).
pub fn kv() -> AppDecoder {
    AppDecoder::new("ken-kv")
        .root::<kv::State>()
        .table::<String>(kv::KV_TABLE, keys::utf8)
        .reply_with(kv_reply)
}

/// `ken-lock`: root [`lock::State`], messages [`lock::Msg`], server tables `locks` (lock
/// name, UTF-8 -> [`lock::LockEntry`]), `grants` (group id, 16 bytes shown as `g-<hex>` ->
/// lock name) and `rounds` (holder id, UTF-8 -> the highest round accepted, u64).
pub fn lock() -> AppDecoder {
    AppDecoder::new("ken-lock")
        .root::<lock::State>()
        .message::<lock::Msg>()
        .table::<lock::LockEntry>(lock::LOCKS_TABLE, keys::utf8)
        .table::<String>(lock::GRANTS_TABLE, group_key)
        .table::<u64>(lock::ROUNDS_TABLE, keys::utf8)
}

/// A `grants` key: a [`ken::GroupId`] as it prints (`g-` and 32 hex digits).
fn group_key(key: &[u8]) -> Result<Value, String> {
    let id: [u8; 16] = key
        .try_into()
        .map_err(|_| format!("{}-byte key, expected a 16-byte group id", key.len()))?;
    Ok(Value::from(ken::GroupId(id).to_string()))
}

/// A cached kv reply: `{"Ok": <kv::Reply>}`, or the runtime's `TooOld` / `Refused`.
fn kv_reply(bytes: &[u8]) -> Result<Value, String> {
    let body: ReplyBody = codec::decode(bytes).map_err(|e| e.to_string())?;
    let json = match body {
        ReplyBody::Ok(reply) => {
            let reply: kv::Reply = codec::decode(&reply).map_err(|e| format!("kv reply: {e}"))?;
            json!({ "Ok": reply })
        }
        other => serde_json::to_value(&other).map_err(|e| e.to_string())?,
    };
    Ok(json)
}

/// An `applied` key as `{"from": sender, "transfer": id}`.
fn applied_key(key: &[u8]) -> Result<Value, String> {
    let (from, transfer) = bank::parse_applied_key(key)
        .ok_or_else(|| "not a sender id, a zero byte and a u64 big-endian".to_string())?;
    Ok(json!({ "from": from, "transfer": transfer }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ken::store::codec::encode;

    #[test]
    fn kv_replies_and_rows_decode_to_json() {
        let app = kv();
        let reply = encode(&ReplyBody::Ok(encode(&kv::Reply::Incr(7))));
        assert_eq!(
            app.reply_blob(&reply).decoded,
            Some(json!({"Ok": {"Incr": 7}}))
        );
        let refused = encode(&ReplyBody::Refused("busy".into()));
        assert_eq!(
            app.reply_blob(&refused).decoded,
            Some(json!({"Refused": "busy"}))
        );
        assert!(app.reply_blob(&[0xff]).decode_error.is_some());
        let row = app.value_blob(kv::KV_TABLE, &encode(&"v1".to_string()));
        assert_eq!(row.decoded, Some(json!("v1")));
        assert_eq!(app.key_json(kv::KV_TABLE, b"k1"), Some(json!("k1")));
    }

    #[test]
    fn bank_rows_decode_to_json() {
        let app = bank();
        let sent = bank::Sent {
            to: "b".into(),
            account: 3,
            amount: 42,
        };
        let blob = app.value_blob(bank::SENT_TABLE, &encode(&sent));
        assert_eq!(
            blob.decoded,
            Some(json!({"to": "b", "account": 3, "amount": 42}))
        );
        assert_eq!(
            app.key_json(bank::APPLIED_TABLE, &bank::applied_key("a", 7)),
            Some(json!({"from": "a", "transfer": 7}))
        );
        assert_eq!(
            app.key_json(bank::ACCOUNTS_TABLE, &5u32.to_be_bytes()),
            Some(json!(5))
        );
        let blob = app.message_blob(&encode(&bank::Msg::Credit {
            transfer: 1,
            account: 2,
            amount: 3,
        }));
        assert_eq!(
            blob.decoded,
            Some(json!({"Credit": {"transfer": 1, "account": 2, "amount": 3}}))
        );
    }

    #[test]
    fn lock_rows_and_messages_decode_to_json() {
        let app = lock();
        let group = ken::GroupId([0xab; 16]);
        assert_eq!(
            app.key_json(lock::GRANTS_TABLE, &group.0),
            Some(json!(group.to_string()))
        );
        assert_eq!(app.key_json(lock::GRANTS_TABLE, b"short"), None);
        let entry = lock::LockEntry {
            next_token: 3,
            grant: None,
            queue: [lock::Waiter {
                holder: "h2".into(),
                round: 4,
            }]
            .into(),
        };
        let blob = app.value_blob(lock::LOCKS_TABLE, &encode(&entry));
        assert_eq!(
            blob.decoded,
            Some(json!({"next_token": 3, "grant": null, "queue": [{"holder": "h2", "round": 4}]}))
        );
        let blob = app.message_blob(&encode(&lock::Msg::Acquire {
            lock: "L".into(),
            round: 2,
        }));
        assert_eq!(
            blob.decoded,
            Some(json!({"Acquire": {"lock": "L", "round": 2}}))
        );
    }

    #[test]
    fn pingpong_root_decodes_and_garbage_does_not() {
        let app = pingpong();
        let state = pingpong::State {
            received: 2,
            ..Default::default()
        };
        assert_eq!(
            app.root_blob(&encode(&state)).decoded.unwrap()["received"],
            json!(2)
        );
        let junk = app.root_blob(&[0xff; 3]);
        assert!(junk.decoded.is_none() && junk.decode_error.is_some());
    }
}
