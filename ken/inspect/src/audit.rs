//! `ken audit STORE...`: the stores of a cluster checked against each other, the auditor over
//! committed stores that a single store's `verify` cannot be.
//!
//! Three kinds of check, all read-only (safe while the owners run):
//!
//! - **each store alone**: everything `ken inspect STORE verify` checks (every record's CRC,
//!   the `-wal` file, the owner lock file's witness, FUSE group records);
//! - **every pair** of processes that exchanged messages ([`ken_store::audit`]): A's
//!   acknowledged <= B's delivered <= A's last issued sequence number, and B knows A's
//!   current incarnation. A store that went back in time (a restored older copy, a deleted
//!   `-wal`) is named here even when it is internally sound;
//! - **every FUSE group** held by two or more audited stores: the same creator and members
//!   everywhere, and a group one store holds as `live` (or `joined`) is known to every
//!   audited member (a member's record is committed before anyone can see the group go live,
//!   and records are never deleted, so a member without one lost history);
//! - **client caches**: request numbers within the store's range.
//!
//! Soundness while the owners run: every store is read twice (all of them, then all again);
//! what must exist is taken from the first pass and what must not be missing from the second,
//! and the counters only grow, so a running, healthy cluster is never reported broken.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ken::engine::fuse::{GroupRecord, GroupState};
use ken_store::audit::BrokenPair;
use ken_store::{ReadError, Reader};
use serde::Serialize;

use crate::{collect, fuse, EXIT_CLEAN, EXIT_DAMAGED, EXIT_ERROR};

/// Check the checkpoint stores of a cluster against each other (safe while they run).
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Exit status: 0 when every store and every pair checks out, 1 when something is broken (each \
problem is one line naming the store, pair or group and which store lost history), 2 when a \
store cannot be read or the arguments are wrong.")]
pub struct AuditArgs {
    /// The stores (at least one; pass every process's store to check every pair).
    #[arg(required = true)]
    pub stores: Vec<PathBuf>,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// What `ken audit` found (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Nothing is broken (exit status 0).
    pub clean: bool,
    /// One entry per store, in the order given.
    pub stores: Vec<StoreAudit>,
    /// Broken ordered pairs (sender, receiver), with the process whose store is behind.
    pub pairs: Vec<PairFinding>,
    /// FUSE groups the stores disagree on.
    pub groups: Vec<GroupFinding>,
    /// How many ordered pairs had a `peers` row on both sides (were checked).
    pub pairs_checked: u64,
    /// How many groups were held by two or more of the stores (were compared).
    pub groups_checked: u64,
}

/// One store on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreAudit {
    pub path: String,
    pub process: String,
    /// `"0x"` + 16 hex digits.
    pub incarnation: String,
    /// What `verify` found, one sentence each (`TABLE KEY: WHAT`).
    pub problems: Vec<String>,
}

/// A broken pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairFinding {
    pub sender: String,
    pub receiver: String,
    /// The process whose store lost history (or was replaced).
    pub suspect: String,
    pub what: String,
}

/// A FUSE group the stores disagree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupFinding {
    /// `"0x"` + 32 hex digits.
    pub group: String,
    /// The process whose store is suspect, if one can be named.
    pub suspect: Option<String>,
    pub what: String,
}

struct Loaded {
    path: PathBuf,
    reader: Reader,
    process: String,
}

/// Why the audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditRunError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: ken_store::OpenError,
    },
    #[error("cannot read store {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error(
        "stores {first} and {second} both belong to process `{process}`; pass each process's \
         store once (an older copy of a store is audited by passing it instead of the current \
         one)"
    )]
    SameProcess {
        first: PathBuf,
        second: PathBuf,
        process: String,
    },
}

/// Runs the audit over the stores at `paths`.
///
/// # Errors
/// A store cannot be opened or read (other than a corrupt record, which is a finding), or two
/// stores belong to the same process.
pub fn audit_paths(paths: &[PathBuf]) -> Result<AuditReport, AuditRunError> {
    let mut loaded: Vec<Loaded> = Vec::new();
    for path in paths {
        let reader = Reader::open(path).map_err(|source| AuditRunError::Open {
            path: path.clone(),
            source,
        })?;
        let meta = reader.meta().map_err(|source| AuditRunError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some(other) = loaded.iter().find(|l| l.process == meta.process_id) {
            return Err(AuditRunError::SameProcess {
                first: other.path.clone(),
                second: path.clone(),
                process: meta.process_id,
            });
        }
        loaded.push(Loaded {
            path: path.clone(),
            reader,
            process: meta.process_id,
        });
    }
    let read_err = |l: &Loaded| {
        let path = l.path.clone();
        move |source| AuditRunError::Read { path, source }
    };

    // Each store alone.
    let mut stores = Vec::new();
    for l in &loaded {
        let v = collect::verify(&l.reader).map_err(read_err(l))?;
        let meta = l.reader.meta().map_err(read_err(l))?;
        let mut problems: Vec<String> = v
            .problems
            .iter()
            .map(|p| {
                let key = if p.key.is_empty() { "-" } else { &p.key };
                format!("{} {}: {}", p.table, key, p.what)
            })
            .collect();
        match l.reader.clients() {
            Ok(rows) => {
                for c in rows.iter().filter(|c| c.request_no > i64::MAX as u64) {
                    problems.push(format!(
                        "clients {}: request number {} is beyond what the runtime stores",
                        crate::decode::hex(&c.client),
                        c.request_no
                    ));
                }
            }
            Err(ReadError::Corrupted(c)) => problems.push(format!("clients: {c}")),
            Err(e) => return Err(read_err(l)(e)),
        }
        stores.push(StoreAudit {
            path: l.path.display().to_string(),
            process: l.process.clone(),
            incarnation: format!("0x{:016x}", meta.incarnation),
            problems,
        });
    }

    // Every pair.
    let readers: Vec<&Reader> = loaded.iter().map(|l| &l.reader).collect();
    let broken = ken_store::audit::audit(&readers).map_err(|e| AuditRunError::Read {
        path: e.path.clone(),
        source: e.source,
    })?;
    let pairs_checked = count_pairs(&loaded).map_err(|(l, e)| read_err(l)(e))?;
    let pairs = broken.iter().map(pair_finding).collect();

    // Every group: holders from the first pass, absences from the second.
    let first = groups_of(&loaded).map_err(|(l, e)| read_err(l)(e))?;
    let second = groups_of(&loaded).map_err(|(l, e)| read_err(l)(e))?;
    let (groups, groups_checked) = compare_groups(&loaded, &first, &second);

    let clean =
        stores.iter().all(|s| s.problems.is_empty()) && broken.is_empty() && groups.is_empty();
    Ok(AuditReport {
        clean,
        stores,
        pairs,
        groups,
        pairs_checked,
        groups_checked,
    })
}

fn pair_finding(b: &BrokenPair) -> PairFinding {
    PairFinding {
        sender: b.sender.clone(),
        receiver: b.receiver.clone(),
        suspect: b.suspect.clone(),
        what: b.to_string(),
    }
}

fn count_pairs(loaded: &[Loaded]) -> Result<u64, (&Loaded, ReadError)> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for l in loaded {
        let peers = l.reader.peers().map_err(|e| (l, e))?;
        rows.push((
            l.process.clone(),
            peers.into_iter().map(|p| p.peer).collect(),
        ));
    }
    let mut n = 0;
    for (a, a_peers) in &rows {
        for (b, b_peers) in &rows {
            if a != b && a_peers.contains(b) && b_peers.contains(a) {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Per store (by index), its decodable group records by group id. Undecodable records are
/// `verify`'s findings already.
type Groups = Vec<BTreeMap<[u8; 16], GroupRecord>>;

fn groups_of(loaded: &[Loaded]) -> Result<Groups, (&Loaded, ReadError)> {
    let mut out = Vec::new();
    for l in loaded {
        let rows = match l.reader.groups() {
            Ok(rows) => rows,
            Err(ReadError::Corrupted(_)) => Vec::new(),
            Err(e) => return Err((l, e)),
        };
        out.push(
            rows.iter()
                .filter_map(|r| fuse::decode(r).ok().map(|rec| (r.group, rec)))
                .collect(),
        );
    }
    Ok(out)
}

fn compare_groups(loaded: &[Loaded], first: &Groups, second: &Groups) -> (Vec<GroupFinding>, u64) {
    let mut findings = Vec::new();
    let mut checked = 0;
    let mut ids: Vec<&[u8; 16]> = first.iter().flat_map(|g| g.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let holders: Vec<(usize, &GroupRecord)> = first
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.get(id).map(|r| (i, r)))
            .collect();
        if holders.len() >= 2 {
            checked += 1;
        }
        let group = fuse::key(id);
        // The same creator and members everywhere.
        let (i0, r0) = holders[0];
        for &(i, r) in &holders[1..] {
            if r.creator != r0.creator || r.members != r0.members {
                findings.push(GroupFinding {
                    group: group.clone(),
                    suspect: None,
                    what: format!(
                        "`{}` holds creator `{}` and members {:?}, but `{}` holds creator `{}` \
                         and members {:?}: a record was damaged",
                        loaded[i0].process,
                        r0.creator,
                        r0.members,
                        loaded[i].process,
                        r.creator,
                        r.members
                    ),
                });
            }
        }
        // A group some store holds past creation is known to every audited member.
        for &(i, r) in &holders {
            let past_creation = matches!(r.state, GroupState::Live | GroupState::Joined);
            if !past_creation {
                continue;
            }
            for (j, l) in loaded.iter().enumerate() {
                if j == i || !r.members.contains(&l.process) || second[j].contains_key(id) {
                    continue;
                }
                // `joined` at a member proves only the creator's record.
                if r.state == GroupState::Joined && l.process != r.creator {
                    continue;
                }
                if findings
                    .iter()
                    .any(|f| f.group == group && f.suspect.as_deref() == Some(&l.process))
                {
                    continue;
                }
                findings.push(GroupFinding {
                    group: group.clone(),
                    suspect: Some(l.process.clone()),
                    what: format!(
                        "`{}` holds the group as {} with member `{}`, but `{}`'s store has no \
                         record of it: `{}`'s store lost history",
                        loaded[i].process,
                        fuse::state_name(r.state),
                        l.process,
                        l.process,
                        l.process
                    ),
                });
            }
        }
    }
    (findings, checked)
}

/// The readable report.
pub fn text(r: &AuditReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in &r.stores {
        for p in &s.problems {
            let _ = writeln!(out, "STORE {} ({}): {p}", s.process, s.path);
        }
    }
    for p in &r.pairs {
        let _ = writeln!(out, "PAIR {}", p.what);
    }
    for g in &r.groups {
        let _ = writeln!(out, "GROUP {}: {}", g.group, g.what);
    }
    let broken =
        r.stores.iter().map(|s| s.problems.len()).sum::<usize>() + r.pairs.len() + r.groups.len();
    let _ = writeln!(
        out,
        "{}: {} stores, {} pairs and {} shared groups checked{}",
        if r.clean { "clean" } else { "BROKEN" },
        r.stores.len(),
        r.pairs_checked,
        r.groups_checked,
        if r.clean {
            String::new()
        } else {
            format!(", {broken} problem(s)")
        }
    );
    let mut suspects: Vec<&str> = r
        .pairs
        .iter()
        .map(|p| p.suspect.as_str())
        .chain(r.groups.iter().filter_map(|g| g.suspect.as_deref()))
        .collect();
    suspects.sort();
    suspects.dedup();
    if !suspects.is_empty() {
        let _ = writeln!(
            out,
            "stores behind their peers: {}; do not run from them: restore each from a \
             standby or backup",
            suspects.join(", ")
        );
    }
    out
}

/// `ken audit`: prints the report and returns the exit status.
pub fn main(args: &AuditArgs) -> ExitCode {
    match audit_paths(&args.stores) {
        Ok(report) => {
            let printed = if args.json {
                serde_json::to_string_pretty(&report)
                    .map(|s| s + "\n")
                    .map_err(std::io::Error::other)
            } else {
                Ok(text(&report))
            };
            let mut out = std::io::stdout().lock();
            match printed.and_then(|s| out.write_all(s.as_bytes())) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => {
                    eprintln!("ken audit: cannot write the output: {e}");
                    return ExitCode::from(EXIT_ERROR);
                }
            }
            ExitCode::from(if report.clean {
                EXIT_CLEAN
            } else {
                EXIT_DAMAGED
            })
        }
        Err(e) => {
            eprintln!("ken audit: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
