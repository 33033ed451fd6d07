//! The applications `ken torture` knows, behind [`TortureApp`]: how to start a member, when
//! the work is done, and the application's own invariants, checked from the stores
//! (read-only) and from what the processes printed.
//!
//! Dependency direction: ken-tools depends on `ken` and `ken-store` only (DESIGN.md) and runs
//! the app binaries as processes; it does not link `ken-apps` (which may come to depend on a
//! ken-tools library target). So the few app types it reads from stores (bank's root state
//! and `sent` rows, pingpong's root state) are mirrored here field for field, decoded with
//! the store's codec. If an app changes its layout, decoding fails and the run reports it as
//! a violation naming the record: loud, never silently wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ken_store::{codec, Reader};
use serde::Deserialize;

/// What `ken torture` needs from an application.
pub trait TortureApp {
    /// The app's name (`--app`).
    fn name(&self) -> &'static str;
    /// The binary's file name, found next to the `ken` binary.
    fn binary(&self) -> &'static str;
    /// The member ids, in a fixed order.
    fn members(&self) -> Vec<String>;
    /// The command line of member `index`, listening on `listen`, with its store at `store`
    /// and the others at `peers`.
    fn args(
        &self,
        index: usize,
        listen: SocketAddr,
        store: &Path,
        peers: &[(String, SocketAddr)],
    ) -> Vec<String>;
    /// True if members exit 0 on their own once their work is done (pingpong); false if they
    /// run until killed (bank).
    fn finishes(&self) -> bool;
    /// Checks member `index`'s stdout lines (every life, in order). One line per violation.
    /// `quiesced`: the run reached quiescence, so the work must be complete; otherwise
    /// only what holds at any moment (safety) is checked.
    fn check_output(&self, index: usize, lines: &[String], quiesced: bool) -> Vec<String>;
    /// Checks the application's invariants over every member's store (committed state; the
    /// processes are dead). One line per violation. `quiesced` as for `check_output`.
    fn check(&self, stores: &[PathBuf], quiesced: bool) -> Vec<String>;
}

/// Reads `table` entirely, page by page.
fn scan_all(reader: &Reader, table: &str) -> Result<Vec<ken_store::KeyValue>, String> {
    let mut rows = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = reader
            .table_scan(table, &[], after.as_deref(), 5000)
            .map_err(|e| format!("scan {table}: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        rows.extend(page);
    }
    Ok(rows)
}

fn root<T: for<'de> Deserialize<'de> + Default>(reader: &Reader) -> Result<T, String> {
    match reader.root().map_err(|e| format!("read root: {e}"))? {
        None => Ok(T::default()),
        Some(bytes) => codec::decode(&bytes).map_err(|e| format!("decode root state: {e}")),
    }
}

fn open(store: &Path) -> Result<Reader, String> {
    Reader::open(store).map_err(|e| format!("open {}: {e}", store.display()))
}

/// The bank (`ken-bank`): `procs` members transferring money; each starts `transfers`.
#[derive(Debug, Clone)]
pub struct Bank {
    pub procs: usize,
    pub accounts: u32,
    pub initial_balance: i64,
    pub interval_ms: u64,
    pub transfers: u64,
}

/// Mirror of `ken_apps::bank::State` (same fields, same order).
#[derive(Debug, Clone, Default, Deserialize)]
struct BankState {
    #[allow(dead_code)]
    next_transfer: u64,
    transfers_started: u64,
    #[allow(dead_code)]
    transfers_skipped: u64,
    #[allow(dead_code)]
    credits_applied: u64,
    duplicate_credits: u64,
}

/// Mirror of `ken_apps::bank::Sent`.
#[derive(Debug, Clone, Deserialize)]
struct BankSent {
    to: String,
    #[allow(dead_code)]
    account: u32,
    amount: i64,
}

/// One member's committed bank data.
#[derive(Debug, Default)]
struct BankView {
    id: String,
    state: BankState,
    balances: i64,
    accounts: usize,
    sent: BTreeMap<u64, BankSent>,
    /// (sender, transfer) -> amount.
    applied: BTreeMap<(String, u64), i64>,
}

impl BankView {
    fn read(store: &Path) -> Result<BankView, String> {
        let reader = open(store)?;
        let id = reader.meta().map_err(|e| format!("meta: {e}"))?.process_id;
        let mut v = BankView {
            state: root(&reader)?,
            ..BankView::default()
        };
        for (k, val) in scan_all(&reader, "accounts")? {
            let b: i64 = codec::decode(&val).map_err(|e| format!("{id}: account row: {e}"))?;
            v.balances += b;
            v.accounts += 1;
            let _ = k;
        }
        for (k, val) in scan_all(&reader, "sent")? {
            let t = u64::from_be_bytes(
                k.as_slice()
                    .try_into()
                    .map_err(|_| format!("{id}: bad sent key"))?,
            );
            v.sent.insert(
                t,
                codec::decode(&val).map_err(|e| format!("{id}: sent row {t}: {e}"))?,
            );
        }
        for (k, val) in scan_all(&reader, "applied")? {
            // Key: sender id, a zero byte, transfer id big-endian (ken_apps::bank::applied_key).
            let zero = k
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| format!("{id}: bad applied key"))?;
            let from = String::from_utf8_lossy(&k[..zero]).into_owned();
            let t = u64::from_be_bytes(
                k[zero + 1..]
                    .try_into()
                    .map_err(|_| format!("{id}: bad applied key"))?,
            );
            let amount: i64 =
                codec::decode(&val).map_err(|e| format!("{id}: applied row {from}/{t}: {e}"))?;
            v.applied.insert((from, t), amount);
        }
        v.id = id;
        Ok(v)
    }
}

impl TortureApp for Bank {
    fn name(&self) -> &'static str {
        "bank"
    }

    fn binary(&self) -> &'static str {
        "ken-bank"
    }

    fn members(&self) -> Vec<String> {
        (0..self.procs).map(|i| format!("m{i}")).collect()
    }

    fn args(
        &self,
        index: usize,
        listen: SocketAddr,
        store: &Path,
        peers: &[(String, SocketAddr)],
    ) -> Vec<String> {
        let mut a = vec![
            "--id".to_string(),
            self.members()[index].clone(),
            "--listen".into(),
            listen.to_string(),
            "--store".into(),
            store.display().to_string(),
            "--accounts".into(),
            self.accounts.to_string(),
            "--initial-balance".into(),
            self.initial_balance.to_string(),
            "--interval-ms".into(),
            self.interval_ms.to_string(),
            "--transfers".into(),
            self.transfers.to_string(),
        ];
        for (id, addr) in peers {
            a.push("--peer".into());
            a.push(format!("{id}={addr}"));
        }
        a
    }

    fn finishes(&self) -> bool {
        false
    }

    fn check_output(&self, index: usize, lines: &[String], quiesced: bool) -> Vec<String> {
        // A bank member prints nothing on stdout.
        let _ = quiesced;
        lines
            .iter()
            .take(3)
            .map(|l| format!("{}: unexpected stdout line {l:?}", self.members()[index]))
            .collect()
    }

    fn check(&self, stores: &[PathBuf], quiesced: bool) -> Vec<String> {
        let mut views = Vec::new();
        let mut violations = Vec::new();
        for s in stores {
            match BankView::read(s) {
                Ok(v) => views.push(v),
                Err(e) => violations.push(format!("bank: cannot read {}: {e}", s.display())),
            }
        }
        if !violations.is_empty() {
            return violations;
        }
        violations.extend(bank_audit(
            &views,
            self.accounts,
            self.initial_balance,
            quiesced.then_some(self.transfers),
        ));
        violations
    }
}

/// The bank invariants (as `ken_apps::bank::audit`, plus the transfer counts): money
/// conserved, no duplicate credit, every applied transfer committed by its sender with the
/// same amount and destination; and after quiescence (`transfers` given) every member started
/// `transfers` transfers and every sent transfer was applied.
fn bank_audit(
    views: &[BankView],
    accounts: u32,
    initial: i64,
    transfers: Option<u64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let by_id: BTreeMap<&str, &BankView> = views.iter().map(|v| (v.id.as_str(), v)).collect();
    let expected_total = views.len() as i64 * accounts as i64 * initial;
    let mut balances = 0i64;
    let mut in_flight = 0i64;
    for v in views {
        balances += v.balances;
        if v.accounts != accounts as usize {
            out.push(format!(
                "bank {}: {} accounts, expected {accounts}",
                v.id, v.accounts
            ));
        }
        if v.state.duplicate_credits != 0 {
            out.push(format!(
                "bank {}: {} credits arrived twice (exactly-once violated)",
                v.id, v.state.duplicate_credits
            ));
        }
        // At most `transfers`: a member left with no money cannot reach its quota once the
        // others stopped (see the quiescence note in mod.rs).
        if let Some(t) = transfers.filter(|t| *t < v.state.transfers_started) {
            out.push(format!(
                "bank {}: started {} transfers, expected {t}",
                v.id, v.state.transfers_started
            ));
        }
        for (t, s) in &v.sent {
            match by_id.get(s.to.as_str()) {
                None => out.push(format!("bank {}: transfer {t} to unknown {}", v.id, s.to)),
                Some(d) if !d.applied.contains_key(&(v.id.clone(), *t)) => {
                    in_flight += s.amount;
                    if transfers.is_none() {
                        continue;
                    }
                    out.push(format!(
                        "bank {}: transfer {t} of {} to {} never applied after quiescence (lost)",
                        v.id, s.amount, s.to
                    ));
                }
                Some(_) => {}
            }
        }
        for ((from, t), amount) in &v.applied {
            match by_id.get(from.as_str()).and_then(|s| s.sent.get(t)) {
                None => out.push(format!(
                    "bank {}: applied transfer {from}/{t} of {amount} that {from} never committed \
                     (output validity violated)",
                    v.id
                )),
                Some(s) if s.amount != *amount || s.to != v.id => out.push(format!(
                    "bank {}: applied transfer {from}/{t} of {amount}, but {from} committed {} to {} \
                     (output validity violated)",
                    v.id, s.amount, s.to
                )),
                Some(_) => {}
            }
        }
    }
    if balances + in_flight != expected_total {
        out.push(format!(
            "bank: money not conserved: balances {balances} + in flight {in_flight} != {expected_total}"
        ));
    }
    if out.len() > 50 {
        let more = out.len() - 50;
        out.truncate(50);
        out.push(format!("bank: {more} more violations not listed"));
    }
    out
}

/// Pingpong (`ken-pingpong`): two members volley a counter up to `count`.
#[derive(Debug, Clone)]
pub struct PingPong {
    pub count: u64,
}

/// Mirror of `ken_apps::pingpong::State`.
#[derive(Debug, Clone, Default, Deserialize)]
struct PingPongState {
    received: u64,
    #[allow(dead_code)]
    last_received: u64,
    gaps: u64,
    repeats: u64,
    #[allow(dead_code)]
    last_sent: u64,
}

impl PingPong {
    /// Member 0 (`b`) serves and receives the odd values; member 1 (`a`) hits and receives
    /// the even ones.
    fn expected_received(&self, index: usize) -> u64 {
        if index == 0 {
            self.count.div_ceil(2)
        } else {
            self.count / 2
        }
    }
}

impl TortureApp for PingPong {
    fn name(&self) -> &'static str {
        "pingpong"
    }

    fn binary(&self) -> &'static str {
        "ken-pingpong"
    }

    fn members(&self) -> Vec<String> {
        vec!["b".into(), "a".into()]
    }

    fn args(
        &self,
        index: usize,
        listen: SocketAddr,
        store: &Path,
        peers: &[(String, SocketAddr)],
    ) -> Vec<String> {
        let mut a = vec![
            "--id".to_string(),
            self.members()[index].clone(),
            "--listen".into(),
            listen.to_string(),
            "--store".into(),
            store.display().to_string(),
            "--count".into(),
            self.count.to_string(),
        ];
        for (id, addr) in peers {
            a.push("--peer".into());
            a.push(format!("{id}={addr}"));
        }
        if index == 0 {
            a.push("--serve".into());
        }
        a
    }

    fn finishes(&self) -> bool {
        true
    }

    fn check_output(&self, index: usize, lines: &[String], quiesced: bool) -> Vec<String> {
        let id = &self.members()[index];
        let expected = self.expected_received(index);
        let mut out = Vec::new();
        if lines.is_empty() && quiesced {
            out.push(format!("pingpong {id}: never printed its report"));
        }
        for line in lines {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                out.push(format!(
                    "pingpong {id}: stdout line is not a report: {line:?}"
                ));
                continue;
            };
            let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
            let ok = v.get("id").and_then(|i| i.as_str()) == Some(id)
                && n("gaps") == Some(0)
                && n("repeats") == Some(0)
                && n("received") == Some(expected);
            if !ok {
                out.push(format!(
                    "pingpong {id}: bad report {line} (expected received {expected}, gaps 0, repeats 0)"
                ));
            }
        }
        out
    }

    fn check(&self, stores: &[PathBuf], quiesced: bool) -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            let id = &self.members()[i];
            let expected = self.expected_received(i);
            let result = open(s).and_then(|r| {
                let state: PingPongState = root(&r)?;
                let rows = scan_all(&r, "received")?.len() as u64;
                Ok((state, rows))
            });
            match result {
                Err(e) => out.push(format!("pingpong {id}: {e}")),
                Ok((st, rows)) => {
                    let complete = st.received == expected && rows == expected;
                    if st.gaps != 0
                        || st.repeats != 0
                        || rows != st.received
                        || (quiesced && !complete)
                    {
                        out.push(format!(
                            "pingpong {id}: store says received {} ({rows} rows), gaps {}, repeats {}; \
                             expected received {expected}, gaps 0, repeats 0",
                            st.received, st.gaps, st.repeats
                        ));
                    }
                }
            }
        }
        out
    }
}
