//! The applications `ken torture` knows, behind [`TortureApp`]: how to start a member, when
//! the work is done, and the application's own invariants, checked from the stores
//! (read-only) and from what the processes printed.
//!
//! Every member runs `ken app NAME ..` (the app's own command line, [`ken_apps::cli`]), and
//! every check reads the app's own types and audits ([`ken_apps::bank::audit_run`],
//! [`ken_apps::pingpong::State`], ...): a change to an app's records breaks this module at
//! compile time, never a run silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ken_apps::cli::App;
use ken_apps::{bank, pingpong};
use ken_store::{codec, Reader};

/// What `ken torture` needs from an application.
pub trait TortureApp {
    /// The app's name (`--app`).
    fn name(&self) -> &'static str;
    /// The app members run (`ken app NAME ..`); `None`: a service described by a cluster
    /// file, started from its own command lines ([`super::custom`]).
    fn app(&self) -> Option<App>;
    /// The member ids, in a fixed order.
    fn members(&self) -> Vec<String>;
    /// The command line of member `index` (the app's, after `ken app NAME`), listening on
    /// `listen`, with its store at `store` and the others at `peers`.
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

fn root<T: serde::de::DeserializeOwned + Default>(reader: &Reader) -> Result<T, String> {
    match reader.root().map_err(|e| format!("read root: {e}"))? {
        None => Ok(T::default()),
        Some(bytes) => codec::decode(&bytes).map_err(|e| format!("decode root state: {e}")),
    }
}

fn open(store: &Path) -> Result<Reader, String> {
    Reader::open(store).map_err(|e| format!("open {}: {e}", store.display()))
}

/// The bank (`ken app bank`): `procs` members transferring money; each starts `transfers`.
#[derive(Debug, Clone)]
pub struct Bank {
    pub procs: usize,
    pub accounts: u32,
    pub initial_balance: i64,
    pub interval_ms: u64,
    pub transfers: u64,
}

/// Reads member `store`'s committed bank data.
pub fn bank_view(store: &Path) -> Result<bank::BankView, String> {
    bank::BankView::read(&open(store)?)
}

impl TortureApp for Bank {
    fn name(&self) -> &'static str {
        "bank"
    }

    fn app(&self) -> Option<App> {
        Some(App::Bank)
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
            match bank_view(s) {
                Ok(v) => views.push(v),
                Err(e) => violations.push(format!("bank: cannot read {}: {e}", s.display())),
            }
        }
        if !violations.is_empty() {
            return violations;
        }
        let transfers = quiesced.then_some(self.transfers);
        let mut out: Vec<String> =
            bank::audit_run(&views, self.accounts, self.initial_balance, transfers)
                .into_iter()
                .map(|v| format!("bank: {v}"))
                .collect();
        if out.len() > VIOLATIONS_LISTED_MAX {
            let more = out.len() - VIOLATIONS_LISTED_MAX;
            out.truncate(VIOLATIONS_LISTED_MAX);
            out.push(format!("bank: {more} more violations not listed"));
        }
        out
    }
}

/// Bank violations listed at most (the rest are counted in one line).
const VIOLATIONS_LISTED_MAX: usize = 50;

/// Pingpong (`ken app pingpong`): two members volley a counter up to `count`.
#[derive(Debug, Clone)]
pub struct PingPong {
    pub count: u64,
}

impl PingPong {
    /// Member 0 (`b`) serves and receives the odd values; member 1 (`a`) hits and receives
    /// the even ones.
    fn expected_received(&self, index: usize) -> u64 {
        pingpong::expected_received(self.count, index == 0)
    }
}

impl TortureApp for PingPong {
    fn name(&self) -> &'static str {
        "pingpong"
    }

    fn app(&self) -> Option<App> {
        Some(App::Pingpong)
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
            let Ok(r) = serde_json::from_str::<pingpong::Report>(line) else {
                out.push(format!(
                    "pingpong {id}: stdout line is not a report: {line:?}"
                ));
                continue;
            };
            let ok = r.id == *id && r.gaps == 0 && r.repeats == 0 && r.received == expected;
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
                let state: pingpong::State = root(&r)?;
                let rows = scan_all(&r, pingpong::RECEIVED_TABLE)?.len() as u64;
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
