//! Bank: accounts spread over several processes, moved around by random transfers.
//!
//! Every member holds `accounts` accounts (table `accounts`). A durable timer drives
//! transfers: debit a local account, record the transfer in `sent` under a unique id (the
//! sender's transfer counter), and send a `Credit` to a random other member, which applies it
//! and records it in `applied` under (sender, transfer id). All in atomic turns, so:
//!
//! - **Conservation**: the sum of all balances plus the amounts of transfers sent but not
//!   yet applied is `members x accounts x initial_balance`, at every committed state.
//! - **Exactly once**: a transfer is applied at most once (the handler counts
//!   `duplicate_credits`, which must stay 0), and only if its debit was committed (every
//!   applied transfer is in the sender's `sent` table with the same amount).
//!
//! [`audit`] checks both over [`BankView`]s read from the stores.
//!
//! **Two schema versions** (issue 14, the rolling-upgrade torture): [`Bank`] is schema
//! version 1; [`BankV2`] (`ken app bank --schema 2`, same application name `bank`) is
//! version 2, a real schema change: balances move from table `accounts` to table
//! `balances`, `sent` rows and `Credit` messages gain a `memo`, and the root gains a
//! counter of credits that carried one ([`StateV2`]). [`BankV2`] migrates a version-1 store
//! at open ([`ken::Handler::migrate`]) and reads version-1 `Credit`s through
//! [`ken::Handler::upgrade_message`]; a version-1 member holds version-2 messages until it
//! is upgraded too. [`BankView::read`] reads either version.

use std::collections::BTreeMap;
use std::time::Duration;

use ken::{Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};

pub const ACCOUNTS_TABLE: &str = "accounts";
pub const SENT_TABLE: &str = "sent";
pub const APPLIED_TABLE: &str = "applied";
pub const TRANSFER_TIMER: &str = "transfer";
/// Schema version 2's table of balances (version 1 keeps them in [`ACCOUNTS_TABLE`]).
pub const BALANCES_TABLE: &str = "balances";

/// The bank handler of one member.
#[derive(Debug, Clone)]
pub struct Bank {
    pub id: ProcessId,
    /// Every member, this one included.
    pub members: Vec<ProcessId>,
    pub accounts: u32,
    pub initial_balance: i64,
    /// Time between two transfers.
    pub transfer_interval: Duration,
    /// Transfers to start in all (0 = no limit).
    pub transfers_max: u64,
    /// Skip a transfer when the outbox to its destination holds this many messages.
    pub outbox_limit: usize,
    /// A deliberate bug of version 1, for the poison torture (0 = none): the handler panics
    /// on every `Credit` whose transfer id is a multiple of this. [`BankV2`] is the fix: it
    /// ignores this field.
    pub panic_every: u64,
}

/// A member's durable root state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub next_transfer: u64,
    pub transfers_started: u64,
    pub transfers_skipped: u64,
    pub credits_applied: u64,
    /// Credits that arrived a second time. Exactly-once delivery keeps this 0.
    pub duplicate_credits: u64,
}

/// Messages between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Credit {
        transfer: u64,
        account: u32,
        amount: i64,
    },
}

/// A transfer as the sender recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub to: String,
    pub account: u32,
    pub amount: i64,
}

/// Key of an `applied` row: sender id, a zero byte, transfer id big-endian.
pub fn applied_key(from: &str, transfer: u64) -> Vec<u8> {
    let mut k = from.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&transfer.to_be_bytes());
    k
}

/// Inverse of [`applied_key`].
pub fn parse_applied_key(key: &[u8]) -> Option<(String, u64)> {
    let zero = key.iter().position(|&b| b == 0)?;
    let from = std::str::from_utf8(&key[..zero]).ok()?.to_string();
    let t: [u8; 8] = key[zero + 1..].try_into().ok()?;
    Some((from, u64::from_be_bytes(t)))
}

/// A transfer drawn by [`Bank::draw_transfer`]: the debit is not written yet.
struct Draw {
    to: ProcessId,
    from_account: u32,
    to_account: u32,
    balance: i64,
    amount: i64,
}

impl Bank {
    fn others(&self) -> Vec<&ProcessId> {
        self.members.iter().filter(|m| **m != self.id).collect()
    }

    /// Draws the next transfer out of the balances in `table`, or `None` (counted in
    /// `skipped` when the outbox is full or the account empty).
    fn draw_transfer<M: Serialize>(
        &self,
        turn: &mut Turn<'_, M>,
        table: &str,
        skipped: &mut u64,
    ) -> Option<Draw> {
        let others = self.others();
        if others.is_empty() || self.accounts == 0 {
            return None;
        }
        let to = others[turn.random_below(others.len() as u64) as usize].clone();
        if turn.outbox_depth(&to) >= self.outbox_limit {
            *skipped += 1;
            return None;
        }
        let from_account = turn.random_below(self.accounts as u64) as u32;
        let to_account = turn.random_below(self.accounts as u64) as u32;
        let balance: i64 = turn
            .table(table)
            .get(from_account.to_be_bytes())
            .unwrap_or(0);
        if balance <= 0 {
            *skipped += 1;
            return None;
        }
        let amount = 1 + turn.random_below(balance.min(100) as u64) as i64;
        Some(Draw {
            to,
            from_account,
            to_account,
            balance,
            amount,
        })
    }

    fn transfer(&self, state: &mut State, turn: &mut Turn<'_, Msg>) {
        let Some(d) = self.draw_transfer(turn, ACCOUNTS_TABLE, &mut state.transfers_skipped) else {
            return;
        };
        let transfer = state.next_transfer;
        state.next_transfer += 1;
        state.transfers_started += 1;
        turn.table(ACCOUNTS_TABLE)
            .put(d.from_account.to_be_bytes(), &(d.balance - d.amount));
        turn.table(SENT_TABLE).put(
            transfer.to_be_bytes(),
            &Sent {
                to: d.to.to_string(),
                account: d.to_account,
                amount: d.amount,
            },
        );
        turn.send(
            &d.to,
            &Msg::Credit {
                transfer,
                account: d.to_account,
                amount: d.amount,
            },
        )
        .expect("members are in the address book");
    }
}

impl Handler for Bank {
    const APP: &'static str = "bank";
    type State = State;
    type Message = Msg;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut State, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        match input {
            Input::Start => {
                for a in 0..self.accounts {
                    turn.table(ACCOUNTS_TABLE)
                        .put(a.to_be_bytes(), &self.initial_balance);
                }
                turn.set_timer(TRANSFER_TIMER, self.transfer_interval);
            }
            Input::Timer { name, .. } if name == TRANSFER_TIMER => {
                let exhausted =
                    self.transfers_max > 0 && state.transfers_started >= self.transfers_max;
                if !exhausted {
                    self.transfer(state, turn);
                    turn.set_timer(TRANSFER_TIMER, self.transfer_interval);
                }
            }
            Input::Message {
                from,
                message:
                    Msg::Credit {
                        transfer,
                        account,
                        amount,
                    },
                ..
            } => {
                if self.panic_every > 0 && transfer % self.panic_every == 0 {
                    panic!("bank v1 bug: cannot credit transfer {transfer} from {from}");
                }
                let key = applied_key(from.as_str(), transfer);
                if turn.table(APPLIED_TABLE).contains(&key) {
                    state.duplicate_credits += 1;
                    return;
                }
                let balance: i64 = turn
                    .table(ACCOUNTS_TABLE)
                    .get(account.to_be_bytes())
                    .unwrap_or(0);
                turn.table(ACCOUNTS_TABLE)
                    .put(account.to_be_bytes(), &(balance + amount));
                turn.table(APPLIED_TABLE).put(&key, &amount);
                state.credits_applied += 1;
            }
            _ => {}
        }
    }
}

/// Schema version 2 of the bank ([`Bank`] is version 1): the same members and workload,
/// with balances in table [`BALANCES_TABLE`], a memo on every transfer ([`SentV2`],
/// [`MsgV2`]) and a root with one more counter ([`StateV2`]). See the module docs.
#[derive(Debug, Clone)]
pub struct BankV2(pub Bank);

/// Version 2's root state: version 1's [`State`] plus `memos_received`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateV2 {
    pub next_transfer: u64,
    pub transfers_started: u64,
    pub transfers_skipped: u64,
    pub credits_applied: u64,
    /// Credits that arrived a second time. Exactly-once delivery keeps this 0.
    pub duplicate_credits: u64,
    /// Credits applied that carried a non-empty memo (sent by a version-2 member).
    pub memos_received: u64,
}

impl StateV2 {
    /// The version-1 view of this state (`memos_received` dropped).
    pub fn v1(&self) -> State {
        State {
            next_transfer: self.next_transfer,
            transfers_started: self.transfers_started,
            transfers_skipped: self.transfers_skipped,
            credits_applied: self.credits_applied,
            duplicate_credits: self.duplicate_credits,
        }
    }
}

/// Version 2's messages: a `Credit` with a memo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MsgV2 {
    Credit {
        transfer: u64,
        account: u32,
        amount: i64,
        memo: String,
    },
}

/// Version 2's `sent` rows: version 1's [`Sent`] plus the memo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentV2 {
    pub to: String,
    pub account: u32,
    pub amount: i64,
    pub memo: String,
}

impl BankV2 {
    fn transfer(&self, state: &mut StateV2, turn: &mut Turn<'_, MsgV2>) {
        let Some(d) = self
            .0
            .draw_transfer(turn, BALANCES_TABLE, &mut state.transfers_skipped)
        else {
            return;
        };
        let transfer = state.next_transfer;
        state.next_transfer += 1;
        state.transfers_started += 1;
        let memo = format!("{}/{transfer}", self.0.id);
        turn.table(BALANCES_TABLE)
            .put(d.from_account.to_be_bytes(), &(d.balance - d.amount));
        turn.table(SENT_TABLE).put(
            transfer.to_be_bytes(),
            &SentV2 {
                to: d.to.to_string(),
                account: d.to_account,
                amount: d.amount,
                memo: memo.clone(),
            },
        );
        turn.send(
            &d.to,
            &MsgV2::Credit {
                transfer,
                account: d.to_account,
                amount: d.amount,
                memo,
            },
        )
        .expect("members are in the address book");
    }
}

impl Handler for BankV2 {
    const APP: &'static str = "bank";
    const SCHEMA_VERSION: u32 = 2;
    type State = StateV2;
    type Message = MsgV2;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut StateV2, turn: &mut Turn<'_, MsgV2>, input: Input<MsgV2>) {
        let bank = &self.0;
        match input {
            Input::Start => {
                for a in 0..bank.accounts {
                    turn.table(BALANCES_TABLE)
                        .put(a.to_be_bytes(), &bank.initial_balance);
                }
                turn.set_timer(TRANSFER_TIMER, bank.transfer_interval);
            }
            Input::Timer { name, .. } if name == TRANSFER_TIMER => {
                let exhausted =
                    bank.transfers_max > 0 && state.transfers_started >= bank.transfers_max;
                if !exhausted {
                    self.transfer(state, turn);
                    turn.set_timer(TRANSFER_TIMER, bank.transfer_interval);
                }
            }
            Input::Message {
                from,
                message:
                    MsgV2::Credit {
                        transfer,
                        account,
                        amount,
                        memo,
                    },
                ..
            } => {
                let key = applied_key(from.as_str(), transfer);
                if turn.table(APPLIED_TABLE).contains(&key) {
                    state.duplicate_credits += 1;
                    return;
                }
                let balance: i64 = turn
                    .table(BALANCES_TABLE)
                    .get(account.to_be_bytes())
                    .unwrap_or(0);
                turn.table(BALANCES_TABLE)
                    .put(account.to_be_bytes(), &(balance + amount));
                turn.table(APPLIED_TABLE).put(&key, &amount);
                state.credits_applied += 1;
                if !memo.is_empty() {
                    state.memos_received += 1;
                }
            }
            _ => {}
        }
    }

    /// Version 1 to 2: the root gains `memos_received` (0), every `accounts` row moves to
    /// `balances`, every `sent` row gains an empty memo.
    fn migrate(&self, from_version: u32, m: &mut ken::Migration<'_>) -> Result<(), String> {
        if from_version != 1 {
            return Err(format!(
                "bank has no migration step from schema version {from_version}"
            ));
        }
        let old: State = m.root()?;
        m.set_root(&StateV2 {
            next_transfer: old.next_transfer,
            transfers_started: old.transfers_started,
            transfers_skipped: old.transfers_skipped,
            credits_applied: old.credits_applied,
            duplicate_credits: old.duplicate_credits,
            memos_received: 0,
        });
        for (k, balance) in m.rows::<i64>(ACCOUNTS_TABLE)? {
            m.put(BALANCES_TABLE, &k, &balance);
            m.delete(ACCOUNTS_TABLE, &k);
        }
        for (k, sent) in m.rows::<Sent>(SENT_TABLE)? {
            m.put(
                SENT_TABLE,
                &k,
                &SentV2 {
                    to: sent.to,
                    account: sent.account,
                    amount: sent.amount,
                    memo: String::new(),
                },
            );
        }
        Ok(())
    }

    /// A version-1 `Credit` is a version-2 `Credit` with an empty memo.
    fn upgrade_message(&self, from_version: u32, bytes: &[u8]) -> Result<MsgV2, String> {
        if from_version != 1 {
            return Err(format!(
                "bank reads messages of schema versions 1 and 2, not {from_version}"
            ));
        }
        let Msg::Credit {
            transfer,
            account,
            amount,
        } = ken::store::codec::decode(bytes)
            .map_err(|e| format!("a version-1 bank message does not decode: {e}"))?;
        Ok(MsgV2::Credit {
            transfer,
            account,
            amount,
            memo: String::new(),
        })
    }
}

/// One member's committed bank data, as read from its store (or a model of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BankView {
    pub id: String,
    pub balances: BTreeMap<u32, i64>,
    pub sent: BTreeMap<u64, Sent>,
    /// (sender, transfer) -> amount.
    pub applied: BTreeMap<(String, u64), i64>,
    pub state: State,
}

impl BankView {
    /// Applies one committed table write (as found in a commit batch) to the view.
    pub fn apply_write(
        &mut self,
        table: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let decode_err = |e: ken::store::codec::DecodeError| format!("{table}: {e}");
        match table {
            ACCOUNTS_TABLE | BALANCES_TABLE => {
                let k = u32::from_be_bytes(key.try_into().map_err(|_| "bad account key")?);
                match value {
                    Some(v) => {
                        self.balances
                            .insert(k, ken::store::codec::decode(v).map_err(decode_err)?);
                    }
                    None => {
                        self.balances.remove(&k);
                    }
                }
            }
            SENT_TABLE => {
                let k = u64::from_be_bytes(key.try_into().map_err(|_| "bad transfer key")?);
                match value {
                    Some(v) => {
                        // Either version: a version-1 row is a strict prefix of a
                        // version-2 one and the codec refuses trailing bytes, so exactly
                        // one of the two decodes.
                        let sent = match ken::store::codec::decode::<Sent>(v) {
                            Ok(s) => s,
                            Err(_) => {
                                let s: SentV2 = ken::store::codec::decode(v).map_err(decode_err)?;
                                Sent {
                                    to: s.to,
                                    account: s.account,
                                    amount: s.amount,
                                }
                            }
                        };
                        self.sent.insert(k, sent);
                    }
                    None => {
                        self.sent.remove(&k);
                    }
                }
            }
            APPLIED_TABLE => {
                let k = parse_applied_key(key).ok_or("bad applied key")?;
                match value {
                    Some(v) => {
                        self.applied
                            .insert(k, ken::store::codec::decode(v).map_err(decode_err)?);
                    }
                    None => {
                        self.applied.remove(&k);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads a member's committed bank data from its store, of either schema version.
    pub fn read(reader: &ken::store::Reader) -> Result<BankView, String> {
        let meta = reader.meta().map_err(|e| e.to_string())?;
        let mut view = BankView {
            id: meta.process_id,
            ..BankView::default()
        };
        let version = meta.app.map_or(1, |a| a.schema_version);
        if let Some(root) = reader.root().map_err(|e| e.to_string())? {
            view.state = match version {
                1 => ken::store::codec::decode(&root).map_err(|e| e.to_string())?,
                2 => ken::store::codec::decode::<StateV2>(&root)
                    .map_err(|e| e.to_string())?
                    .v1(),
                v => return Err(format!("bank schema version {v} is unknown to this build")),
            };
        }
        for table in [ACCOUNTS_TABLE, BALANCES_TABLE, SENT_TABLE, APPLIED_TABLE] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let rows = reader
                    .table_scan(table, &[], after.as_deref(), 1000)
                    .map_err(|e| e.to_string())?;
                let Some(last) = rows.last() else { break };
                after = Some(last.0.clone());
                for (k, v) in &rows {
                    view.apply_write(table, k, Some(v))?;
                }
            }
        }
        Ok(view)
    }
}

/// Checks conservation and exactly-once over every member's committed data. Returns one line
/// per violation (empty = all good).
pub fn audit(views: &[BankView], accounts: u32, initial_balance: i64) -> Vec<String> {
    audit_with(views, accounts, initial_balance, None, false)
}

/// [`audit`] of a run's stores once every member ran (`ken torture`, `ken demo`), plus what
/// then holds: every member holds exactly `accounts` accounts; and with `transfers` (the run
/// quiesced: no fault, every outbox empty) every member started at most `transfers` transfers
/// (a member left without money cannot reach its quota once the others stopped) and every
/// transfer sent was applied (one in flight after quiescence was lost).
pub fn audit_run(
    views: &[BankView],
    accounts: u32,
    initial_balance: i64,
    transfers: Option<u64>,
) -> Vec<String> {
    audit_with(views, accounts, initial_balance, transfers, true)
}

fn audit_with(
    views: &[BankView],
    accounts: u32,
    initial_balance: i64,
    quiesced_transfers: Option<u64>,
    all_accounts_open: bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    let expected_total = views.len() as i64 * accounts as i64 * initial_balance;
    let balances: i64 = views.iter().flat_map(|v| v.balances.values()).sum();
    let mut in_flight = 0i64;
    for v in views {
        if all_accounts_open && v.balances.len() != accounts as usize {
            violations.push(format!(
                "{}: {} accounts, expected {accounts}",
                v.id,
                v.balances.len()
            ));
        }
        if v.state.duplicate_credits != 0 {
            violations.push(format!(
                "{}: {} credits arrived twice (exactly-once violated)",
                v.id, v.state.duplicate_credits
            ));
        }
        if let Some(t) = quiesced_transfers.filter(|t| *t < v.state.transfers_started) {
            violations.push(format!(
                "{}: started {} transfers, expected {t}",
                v.id, v.state.transfers_started
            ));
        }
        for (t, s) in &v.sent {
            let Some(dest) = views.iter().find(|d| d.id == s.to) else {
                violations.push(format!("{}: transfer {t} to unknown member {}", v.id, s.to));
                continue;
            };
            if !dest.applied.contains_key(&(v.id.clone(), *t)) {
                in_flight += s.amount;
                if quiesced_transfers.is_some() {
                    violations.push(format!(
                        "{}: transfer {t} of {} to {} never applied after quiescence (lost)",
                        v.id, s.amount, s.to
                    ));
                }
            }
        }
        for ((from, t), amount) in &v.applied {
            let sent = views
                .iter()
                .find(|s| s.id == *from)
                .and_then(|s| s.sent.get(t));
            match sent {
                None => violations.push(format!(
                    "{}: applied transfer {from}/{t} of {amount} that {from} never committed (output validity violated)",
                    v.id
                )),
                Some(s) if s.amount != *amount || s.to != v.id => violations.push(format!(
                    "{}: applied transfer {from}/{t} of {amount}, but {from} committed {} to {} (output validity violated)",
                    v.id, s.amount, s.to
                )),
                Some(_) => {}
            }
        }
    }
    if balances + in_flight != expected_total {
        violations.push(format!(
            "money not conserved: balances {balances} + in flight {in_flight} = {}, expected {expected_total}",
            balances + in_flight
        ));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use ken::store::codec;

    fn v2() -> BankV2 {
        let id = ProcessId::new("m0").unwrap();
        BankV2(Bank {
            members: vec![id.clone()],
            id,
            accounts: 2,
            initial_balance: 10,
            transfer_interval: Duration::from_millis(5),
            transfers_max: 0,
            outbox_limit: 10,
            panic_every: 0,
        })
    }

    #[test]
    fn version_2_reads_a_version_1_credit_with_an_empty_memo_and_refuses_others() {
        let old = codec::encode(&Msg::Credit {
            transfer: 7,
            account: 1,
            amount: 5,
        });
        assert_eq!(
            v2().upgrade_message(1, &old),
            Ok(MsgV2::Credit {
                transfer: 7,
                account: 1,
                amount: 5,
                memo: String::new(),
            })
        );
        assert!(v2().upgrade_message(1, &[0xff; 3]).is_err());
        assert!(v2().upgrade_message(3, &old).is_err());
    }

    #[test]
    fn a_view_reads_sent_rows_and_balances_of_either_version() {
        let mut view = BankView::default();
        let v1 = Sent {
            to: "m1".into(),
            account: 1,
            amount: 5,
        };
        let v2 = SentV2 {
            to: "m2".into(),
            account: 0,
            amount: 9,
            memo: "m0/1".into(),
        };
        view.apply_write(SENT_TABLE, &0u64.to_be_bytes(), Some(&codec::encode(&v1)))
            .unwrap();
        view.apply_write(SENT_TABLE, &1u64.to_be_bytes(), Some(&codec::encode(&v2)))
            .unwrap();
        view.apply_write(
            ACCOUNTS_TABLE,
            &0u32.to_be_bytes(),
            Some(&codec::encode(&3i64)),
        )
        .unwrap();
        view.apply_write(
            BALANCES_TABLE,
            &1u32.to_be_bytes(),
            Some(&codec::encode(&4i64)),
        )
        .unwrap();
        assert_eq!(view.sent[&0], v1);
        assert_eq!(
            view.sent[&1],
            Sent {
                to: "m2".into(),
                account: 0,
                amount: 9,
            }
        );
        assert_eq!(view.balances.values().sum::<i64>(), 7);
        assert!(view
            .apply_write(SENT_TABLE, &2u64.to_be_bytes(), Some(&[0xff; 2]))
            .is_err());
    }
}
