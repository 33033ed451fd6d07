//! `ken status --cluster FILE`: asks every process of a cluster file for its status (an
//! administrative request answered by the runtime, `ken::admin`), all at once with a
//! timeout, and prints one row per process; `--json` a stable document; `--watch` refreshes.
//! And `ken admit --cluster FILE --id X PEER`: the online admission of a replaced peer.
//!
//! Keys: the request is sealed with `--key FILE`, else with the cluster file's `key_file`
//! (the operator holds the key); `--no-key` sends it untagged (a keyed process drops it,
//! which is what its refusal looks like: no answer).
//!
//! Standbys: every process whose cluster file entry declares a `standby` has it asked too,
//! at `standby.ship` (its UDP port: `ken standby serve` answers there with
//! `ken::admin::StandbyStatus`, under the same key): one note line per standby (role,
//! epoch, the commit it holds, the primary it follows and whether it is connected), and a
//! role line per process with a standby, an epoch above 0 or a detach record (DETACHED).
//!
//! Exit codes: 0 every process and declared standby answered; 2 some did not (their rows say
//! "no answer"); 1 an error (a bad cluster file or key file).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use ken::admin::{AdminReply, AdminRequest, StandbyStatus, StatusReport};
use ken::transport::Keyring;
use ken::{ClusterFile, ClusterKey, ProcessId};

/// Exit code when some process did not answer.
pub const EXIT_SOME_DOWN: u8 = 2;

/// `ken status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cluster file (the processes and their addresses).
    #[arg(long)]
    pub cluster: PathBuf,
    /// The cluster key file to seal the requests with (default: the cluster file's key_file).
    #[arg(long, conflicts_with = "no_key")]
    pub key: Option<PathBuf>,
    /// Send the requests untagged even if the cluster file names a key (a keyed process
    /// drops them: it answers only its cluster's key).
    #[arg(long)]
    pub no_key: bool,
    /// Print one JSON document (`{"cluster", "at_ms", "processes": [{"id", "address", "up",
    /// "error" | "status"}], "standbys": [{"id", "ship", "up", "error" | "status"}]}`; the
    /// status fields are `ken::admin::StatusReport`'s and `ken::admin::StandbyStatus`'s).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (2 if not given) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
    /// How long to wait for each process's answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// `ken admit --cluster FILE --id X PEER`'s key options.
#[derive(Debug, Clone, Default)]
pub struct KeyChoice {
    pub key: Option<PathBuf>,
    pub no_key: bool,
}

/// One process's row: its answer or why there is none.
struct Row {
    id: ProcessId,
    address: String,
    answer: Result<StatusReport, String>,
}

/// One declared standby's row.
struct StandbyRow {
    /// The process it is the standby of.
    id: ProcessId,
    ship: String,
    answer: Result<StandbyStatus, String>,
}

/// The keyring to seal requests with: `--key`, else the file's key, unless `--no-key`.
pub fn keyring(file: &ClusterFile, choice: &KeyChoice) -> anyhow::Result<Option<Keyring>> {
    if choice.no_key {
        return Ok(None);
    }
    let Some(path) = choice.key.as_ref().or(file.settings.key_file.as_ref()) else {
        return Ok(None);
    };
    let key = ClusterKey::load(path).with_context(|| format!("key file {}", path.display()))?;
    let accepted = file
        .settings
        .accept_key_files
        .iter()
        .map(|p| ClusterKey::load(p).with_context(|| format!("key file {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(Keyring::new(&key, &accepted, file.settings.encrypt)?))
}

/// Resolves a process's address (blocking for a host name).
fn resolve(entry: &ken::cluster::ProcessEntry) -> Result<SocketAddr, String> {
    entry
        .address
        .resolve()
        .map_err(|e| format!("cannot resolve {}: {e}", entry.address))
}

/// Asks every declared standby at once.
async fn ask_standbys(
    file: &ClusterFile,
    keys: Option<&Keyring>,
    timeout: Duration,
) -> Vec<StandbyRow> {
    let asks = file.processes.iter().filter_map(|entry| {
        let sb = entry.standby.as_ref()?;
        Some(async move {
            let ship = sb.ship.to_string();
            let answer = match sb.ship.resolve() {
                Err(e) => Err(format!("cannot resolve {ship}: {e}")),
                Ok(addr) => {
                    match ken::admin::ask(addr, &entry.id, keys, &AdminRequest::Status, timeout)
                        .await
                    {
                        Ok(AdminReply::Standby(st)) if st.id == entry.id.as_str() => Ok(*st),
                        Ok(AdminReply::Standby(st)) => Err(format!(
                            "the standby at {addr} replicates `{}`, not `{}`: check the cluster \
                             file",
                            st.id, entry.id
                        )),
                        Ok(other) => Err(format!(
                            "{addr} answered as a process, not a standby: {}",
                            match other {
                                AdminReply::Status(r) => format!("process `{}`", r.id),
                                other => format!("{other:?}"),
                            }
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            StandbyRow {
                id: entry.id.clone(),
                ship,
                answer,
            }
        })
    });
    futures_join_all(asks).await
}

/// Asks every process at once.
async fn ask_all(file: &ClusterFile, keys: Option<&Keyring>, timeout: Duration) -> Vec<Row> {
    let asks = file.processes.iter().map(|entry| async move {
        let address = entry.address.to_string();
        let answer = match resolve(entry) {
            Err(e) => Err(e),
            Ok(addr) => {
                match ken::admin::ask(addr, &entry.id, keys, &AdminRequest::Status, timeout).await {
                    Ok(AdminReply::Status(report)) if report.id == entry.id.as_str() => Ok(*report),
                    Ok(AdminReply::Status(report)) => Err(format!(
                        "process `{}` answered at {addr}, not `{}`: check the cluster file",
                        report.id, entry.id
                    )),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        Row {
            id: entry.id.clone(),
            address,
            answer,
        }
    });
    futures_join_all(asks).await
}

/// Runs the futures concurrently on the current runtime, results in order.
pub async fn futures_join_all<T, F: std::future::Future<Output = T>>(
    futures: impl Iterator<Item = F>,
) -> Vec<T> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<T>> = (0..set.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..set.len()).collect();
    std::future::poll_fn(|cx| {
        pending.retain(|&i| match set[i].as_mut().poll(cx) {
            std::task::Poll::Ready(row) => {
                out[i] = Some(row);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|r| r.expect("every future finished"))
        .collect()
}

fn duration_text(ms: u64) -> String {
    match ms {
        0..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=5_999_999 => format!("{}s", ms / 1000),
        _ => format!("{}m", ms / 60_000),
    }
}

/// The role line and the DETACHED line of a process, when it has something to say.
fn role_notes(id: &ProcessId, s: &StatusReport, notes: &mut Vec<String>) {
    let r = &s.role;
    if s.standby.is_some() || r.epoch > 0 || r.detached.is_some() || r.alone.is_some() {
        notes.push(format!("{id}: role {}, epoch {}", r.role, r.epoch));
    }
    let unused = r.standby_unused.as_deref().map_or(String::new(), |at| {
        format!("; runs WITHOUT the standby at {at} that the cluster file declares")
    });
    if let Some(d) = &r.detached {
        notes.push(format!(
            "{id}: DETACHED ({d}){unused}; to ship to a standby again: stop it, `ken standby \
             attach --store STORE`, start it"
        ));
    } else if r.alone.as_deref() == Some("--no-standby") {
        notes.push(format!(
            "{id}: ALONE for this run (--no-standby, not on the record){unused}"
        ));
    }
}

/// A standby's note line.
fn standby_note(row: &StandbyRow) -> String {
    match &row.answer {
        Ok(st) => format!(
            "{} (standby at {}): role {}, epoch {}, holds commit {} (incarnation {}); {}",
            row.id,
            row.ship,
            st.role,
            st.epoch,
            st.commits,
            st.incarnation,
            match (&st.primary, st.connected) {
                (Some(p), true) => format!("follows the primary at {p}, connected"),
                (Some(p), false) => format!("NOT CONNECTED to a primary (last: {p})"),
                (None, _) => "NOT CONNECTED: no primary since it started".to_string(),
            }
        ),
        Err(e) => format!("{} (standby at {}): no answer: {e}", row.id, row.ship),
    }
}

/// The text table.
fn render_text(rows: &[Row], standbys: &[StandbyRow]) -> String {
    let mut out = String::new();
    let header = [
        "ID",
        "STATE",
        "INCARNATION",
        "APP",
        "UPTIME",
        "TURNS/S",
        "COMMIT p50/p99",
        "OUTBOX",
        "OLDEST",
        "HELD/POISON/DEAD",
        "FUSE",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(ToString::to_string).collect()];
    let mut notes = Vec::new();
    for row in rows {
        match &row.answer {
            Ok(s) => {
                let fuse = if s.fuse_groups.is_empty() {
                    "-".to_string()
                } else {
                    s.fuse_groups
                        .iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                table.push(vec![
                    row.id.to_string(),
                    "up".into(),
                    s.incarnation.clone(),
                    format!("{} v{}", s.app, s.schema_version),
                    duration_text(s.uptime_ms),
                    format!("{:.1}", s.turns_per_s),
                    if s.commit_latency.samples == 0 {
                        "-".into()
                    } else {
                        format!("{}/{} us", s.commit_latency.p50_us, s.commit_latency.p99_us)
                    },
                    s.outbox_total().to_string(),
                    s.oldest_unacked_age_ms().map_or("-".into(), duration_text),
                    format!(
                        "{}/{}/{}{}",
                        s.held,
                        s.poisoned,
                        s.dead_letters,
                        if s.dead_letters_capped { "+" } else { "" }
                    ),
                    fuse,
                ]);
                role_notes(&row.id, s, &mut notes);
                if let Some(sb) = &s.standby {
                    notes.push(format!(
                        "{}: standby at {}: {} commit {} of {} (lag {}){}",
                        row.id,
                        sb.target,
                        if sb.connected {
                            "holds"
                        } else {
                            "NOT CONNECTED, holds"
                        },
                        sb.acked,
                        sb.commits,
                        sb.lag(),
                        if sb.fenced {
                            "; FENCED: a promoted copy of this process exists, stop this one"
                        } else {
                            ""
                        }
                    ));
                }
                for p in &s.peers {
                    if p.awaiting_admission {
                        notes.push(format!(
                            "{}: a new incarnation of {} is refused until admitted (`ken admit --cluster FILE --id {} {}`)",
                            row.id, p.id, row.id, p.id
                        ));
                    }
                    if p.refuses_us {
                        notes.push(format!(
                            "{}: refused by {} (it knew an earlier incarnation)",
                            row.id, p.id
                        ));
                    }
                    if let Some(h) = &p.held {
                        notes.push(format!("{}: messages from {} held: {h}", row.id, p.id));
                    }
                }
            }
            Err(e) => {
                table.push(vec![
                    row.id.to_string(),
                    "no answer".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                notes.push(format!("{} at {}: {e}", row.id, row.address));
            }
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &table {
        let line = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    notes.extend(standbys.iter().map(standby_note));
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// The JSON document.
fn render_json(
    file: &ClusterFile,
    rows: &[Row],
    standbys: &[StandbyRow],
) -> anyhow::Result<String> {
    let processes = rows
        .iter()
        .map(|row| json_row(&row.id, ("address", &row.address), &row.answer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let standbys = standbys
        .iter()
        .map(|row| json_row(&row.id, ("ship", &row.ship), &row.answer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let doc = serde_json::json!({
        "cluster": file.path.display().to_string(),
        "at_ms": ken::Time::now_wall().as_millis(),
        "processes": processes,
        "standbys": standbys,
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// One JSON row of `--json`: the id, where it was asked (`address` or `ship`), whether it
/// answered, and its status or the error.
fn json_row<T: serde::Serialize>(
    id: &ProcessId,
    (place, addr): (&str, &str),
    answer: &Result<T, String>,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::json!({ "id": id.as_str(), "up": answer.is_ok() });
    v[place] = serde_json::Value::String(addr.to_string());
    match answer {
        Ok(s) => v["status"] = serde_json::to_value(s)?,
        Err(e) => v["error"] = serde_json::Value::String(e.clone()),
    }
    Ok(v)
}

/// Runs `ken status`.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let file = ClusterFile::load(&args.cluster)?;
    let keys = keyring(
        &file,
        &KeyChoice {
            key: args.key.clone(),
            no_key: args.no_key,
        },
    )?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let interval = match args.watch {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            bail!("--watch {secs}: give a number of seconds above 0")
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        // Both at once: a down process and a down standby cost one timeout, not two.
        let (rows, standbys) = rt.block_on(async {
            tokio::join!(
                ask_all(&file, keys.as_ref(), timeout),
                ask_standbys(&file, keys.as_ref(), timeout)
            )
        });
        let text = if args.json {
            render_json(&file, &rows, &standbys)?
        } else {
            render_text(&rows, &standbys)
        };
        let clear = interval.is_some() && terminal && !args.json;
        let written = {
            let mut stdout = std::io::stdout().lock();
            // Clear the screen only on a terminal (no escape codes in a pipe).
            (if clear {
                write!(stdout, "\x1b[2J\x1b[H")
            } else {
                Ok(())
            })
            .and_then(|()| writeln!(stdout, "{}", text.trim_end()))
            .and_then(|()| stdout.flush())
        };
        match written {
            // The reader went away (`ken status --watch | head`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            other => other?,
        }
        let all_up =
            rows.iter().all(|r| r.answer.is_ok()) && standbys.iter().all(|r| r.answer.is_ok());
        match interval {
            None => {
                return Ok(if all_up {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_SOME_DOWN)
                })
            }
            Some(i) => {
                if !terminal || args.json {
                    let _ = writeln!(std::io::stdout());
                }
                std::thread::sleep(i);
            }
        }
    }
}

/// Runs `ken admit --cluster FILE --id X PEER`: the live process X admits the next new
/// incarnation of PEER. Returns the line to print.
pub fn admit_online(
    cluster: &std::path::Path,
    id: &str,
    peer: &str,
    keys: &KeyChoice,
    timeout: Duration,
) -> anyhow::Result<String> {
    let file = ClusterFile::load(cluster)?;
    let id = ProcessId::new(id).map_err(|e| anyhow::anyhow!("`{id}` is not a process id: {e}"))?;
    let entry = file.process(&id)?;
    let keyring = keyring(&file, keys)?;
    let addr = resolve(entry).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let request = AdminRequest::Admit {
        peer: peer.to_string(),
    };
    let reply = rt
        .block_on(ken::admin::ask(
            addr,
            &id,
            keyring.as_ref(),
            &request,
            timeout,
        ))
        .with_context(|| {
            format!(
                "{id} at {addr} did not answer: is it running, and has this tool its cluster key? \
                 (a stopped process: `ken admit STORE {peer}`)"
            )
        })?;
    match reply {
        AdminReply::Admitted {
            peer,
            known_incarnation,
        } => Ok(format!(
            "{id}: the next new incarnation of `{peer}` will be admitted as a fresh peer when it \
             next speaks (it knew incarnation {known_incarnation:016x})"
        )),
        AdminReply::Refused { reason } => bail!("{id} refused: {reason}"),
        other => bail!("{id} gave an unexpected answer: {other:?}"),
    }
}
