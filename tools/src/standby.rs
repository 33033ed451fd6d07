//! `ken standby serve`, `promote`, `detach` and `attach`: a process's standby replica
//! (issue 18, `ken::standby`), run, promoted, and taken away or given back by an operator.
//!
//! A standby never promotes itself and a primary never drops its standby by itself: either
//! would allow two live copies of one process in a partition. The operator decides: stop
//! the standby, `ken standby promote` its store (epoch + 1: from then on it refuses batches
//! from the old primary, which can therefore release nothing more; and detached: the
//! promoted process runs alone, on the record), and start the process's own binary on it at
//! the standby's address until a new standby is attached (`ken standby attach`). `ken
//! standby detach` lets a primary run alone, on the record (ken/STANDBY.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use ken::ProcessId;

/// `ken standby ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// Run the standby replica of one process: hold its store, apply every batch the primary
    /// ships (each fsynced before it is acknowledged), never run the application. Runs until
    /// killed. Prints `{"event":"standby","id":..,"addr":..}` on stderr once listening.
    Serve(ServeArgs),
    /// Promote a stopped standby's store: epoch + 1, on the record. Refused while a process
    /// runs on it. Then start the process's binary on this store at the standby's address
    /// with --no-standby (the old primary is fenced: any standby at the new epoch refuses it).
    Promote(PromoteArgs),
    /// Record in a stopped primary's store that it runs alone: from its next start it runs
    /// without the standby its cluster file declares, and says so at start, in `ken status`
    /// and in `ken inspect`. Refused while a process runs on the store. Only for a primary
    /// whose standby was NOT promoted (nothing would fence two copies): with --cluster and
    /// --id it asks the addresses the file declares first and refuses while a copy answers.
    Detach(DetachArgs),
    /// Remove the detach record of a stopped primary's store: from its next start it ships
    /// to its standby again (reseeding it) and waits for it. Refused while a process runs on
    /// the store.
    Attach(AttachArgs),
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The primary's store (its process stopped).
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
    /// Why (kept in the record, shown by `ken status` and `ken inspect`).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
    /// The cluster file, with --id: before writing, ask the process's address, its standby's
    /// and the address it has once promoted whether a copy of it runs (a promoted standby),
    /// and refuse if one answers (two live copies, nothing to fence them). Without it the
    /// detach is written unchecked.
    #[arg(long, value_name = "FILE", requires = "id")]
    pub cluster: Option<PathBuf>,
    #[arg(long, requires = "cluster")]
    pub id: Option<String>,
    /// The cluster key file to seal the questions with (default: the cluster file's
    /// key_file).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub key: Option<PathBuf>,
    /// How long to wait for each answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The primary's store (its process stopped).
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
}

/// Where the standby's settings come from: flags, else the cluster file's `standby` entry.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The process this is the standby of.
    #[arg(long)]
    pub id: String,
    /// The cluster file: the process's `standby = { ship, store }` and the cluster key.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// The replica store (with --cluster: defaults to the file's `standby.store`).
    #[arg(long, value_name = "PATH", required_unless_present = "cluster")]
    pub store: Option<PathBuf>,
    /// TCP address to listen on for the primary (with --cluster: defaults to the file's
    /// `standby.ship` when it is an IP address; port 0 picks one).
    #[arg(long, value_name = "ADDR", required_unless_present = "cluster")]
    pub listen: Option<SocketAddr>,
    /// The cluster key (with --cluster: defaults to the file's).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Another key accepted from the primary during a key rotation (repeatable; with
    /// --cluster, added to the file's `accept_key_files`). SECURITY.md's procedure restarts
    /// the standby like any process.
    #[arg(long, value_name = "FILE")]
    pub accept_key_file: Vec<PathBuf>,
    /// Require the primary to encrypt the stream (with --cluster: also when the file's
    /// `[settings] encrypt` is true). Needs a key. A primary that encrypts is served either
    /// way; one that ships in clear is refused.
    #[arg(long)]
    pub encrypt: bool,
    /// Refuse any primary below this epoch even while the replica is empty: start a new
    /// standby of a promoted process with the epoch `ken standby promote` printed.
    #[arg(long, default_value_t = 0)]
    pub min_epoch: u64,
}

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The standby's store.
    #[arg(long, value_name = "PATH", required_unless_present = "cluster")]
    pub store: Option<PathBuf>,
    /// With --id: the store is the file's `standby.store` of that process.
    #[arg(long, value_name = "FILE", requires = "id")]
    pub cluster: Option<PathBuf>,
    #[arg(long)]
    pub id: Option<String>,
}

pub fn main(args: &Args) -> ExitCode {
    let result = match &args.verb {
        Verb::Serve(a) => serve(a),
        Verb::Promote(a) => promote(a),
        Verb::Detach(a) => detach(a),
        Verb::Attach(a) => attach(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ken standby: {e}");
            ExitCode::from(1)
        }
    }
}

fn standby_entry(
    cluster: &std::path::Path,
    id: &ProcessId,
) -> Result<(ken::ClusterFile, ken::cluster::StandbyEntry), String> {
    let file = ken::ClusterFile::load(cluster).map_err(|e| e.to_string())?;
    let entry = file
        .processes
        .iter()
        .find(|p| p.id == *id)
        .ok_or_else(|| format!("{}: no process `{id}`", cluster.display()))?;
    let sb = entry.standby.clone().ok_or_else(|| {
        format!(
            "{}: process `{id}` has no standby (add standby = {{ ship = \"HOST:PORT\", address = \"HOST:PORT\", store = \"PATH\" }})",
            cluster.display()
        )
    })?;
    Ok((file, sb))
}

fn serve(a: &ServeArgs) -> Result<(), String> {
    ken::app::init_tracing();
    let id = ProcessId::new(&a.id).map_err(|e| format!("bad --id: {e}"))?;
    let (mut store, mut listen, mut key) = (a.store.clone(), a.listen, None);
    let mut accepted_files: Vec<PathBuf> = Vec::new();
    let mut encrypt = a.encrypt;
    if let Some(cluster) = &a.cluster {
        let (file, sb) = standby_entry(cluster, &id)?;
        store = store.or(sb.store.clone());
        listen = listen.or_else(|| sb.ship.literal());
        if let Some(k) = &file.settings.key_file {
            key = Some(ken::ClusterKey::load(k).map_err(|e| e.to_string())?);
        }
        accepted_files.extend(file.settings.accept_key_files.iter().cloned());
        encrypt |= file.settings.encrypt;
    }
    accepted_files.extend(a.accept_key_file.iter().cloned());
    if let Some(k) = &a.key_file {
        key = Some(ken::ClusterKey::load(k).map_err(|e| e.to_string())?);
    }
    if encrypt && key.is_none() {
        return Err(
            "--encrypt needs a cluster key: give --key-file (or a cluster file with key_file)"
                .into(),
        );
    }
    if key.is_none() && !accepted_files.is_empty() {
        return Err(
            "accepted keys need a cluster key to send with: give --key-file (or a \
                    cluster file with key_file)"
                .into(),
        );
    }
    let accepted_keys = accepted_files
        .iter()
        .map(|k| ken::ClusterKey::load(k).map_err(|e| format!("{}: {e}", k.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let store = store.ok_or("no store: give --store or the cluster file's standby.store")?;
    let listen = listen
        .ok_or("no listen address: give --listen (the file's standby.ship is a host name)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // `ken status` asks the standby on UDP at the same port (its cluster file's
        // `standby.ship`).
        let admin = match tokio::net::UdpSocket::bind(addr).await {
            Ok(socket) => Some(socket),
            Err(e) => {
                eprintln!(
                    "ken standby: warning: cannot bind UDP {addr} for `ken status` ({e}); the \
                     standby answers no status"
                );
                None
            }
        };
        eprintln!("{{\"event\":\"standby\",\"id\":\"{id}\",\"addr\":\"{addr}\"}}");
        ken::standby::serve(ken::standby::StandbyConfig {
            process: id,
            store,
            listener,
            key,
            accepted_keys,
            min_epoch: a.min_epoch,
            encrypt,
            admin,
        })
        .await
        .map_err(|e| e.to_string())
    })
}

fn promote(a: &PromoteArgs) -> Result<(), String> {
    let store = match (&a.store, &a.cluster, &a.id) {
        (Some(s), _, _) => s.clone(),
        (None, Some(cluster), Some(id)) => {
            let id = ProcessId::new(id).map_err(|e| format!("bad --id: {e}"))?;
            standby_entry(cluster, &id)?
                .1
                .store
                .ok_or("the cluster file's standby has no store: give --store")?
        }
        _ => return Err("give --store PATH, or --cluster FILE --id X".into()),
    };
    let epoch = ken::standby::promote(&store).map_err(|e| on_store(&store, e))?;
    println!(
        "promoted {}: epoch {epoch}, detached (no standby yet). Start the process on it at the \
         standby's address; any standby at epoch {epoch} or later refuses the old primary. \
         Once a new standby runs (ken standby serve --min-epoch {epoch}), stop the process, \
         `ken standby attach --store {}`, start it",
        store.display(),
        store.display()
    );
    Ok(())
}

/// One line for an error on `store`: the path, then what is wrong and what to do (the
/// store's own errors name the path already).
fn on_store(store: &std::path::Path, e: ken::standby::PromoteError) -> String {
    let line = e.to_string();
    if line.contains(&store.display().to_string()) {
        line
    } else {
        format!("{}: {line}", store.display())
    }
}

/// Who runs this command, for the record: `ken standby detach by user@host`.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("ken standby detach by {user}@{host}")
}

/// What the addresses a cluster file declares for a process said before a detach: a copy
/// of the process that answers is refused (`Err`); otherwise one line per address for the
/// operator.
fn check_no_live_copy(
    a: &DetachArgs,
    cluster: &std::path::Path,
    id: &str,
) -> Result<Vec<String>, String> {
    use ken::admin::{AdminReply, AdminRequest};
    let id = ProcessId::new(id).map_err(|e| format!("bad --id: {e}"))?;
    let file = ken::ClusterFile::load(cluster).map_err(|e| e.to_string())?;
    let entry = file.process(&id).map_err(|e| e.to_string())?;
    let epoch = ken::standby::read_role(&a.store)
        .map_err(|e| on_store(&a.store, e))?
        .epoch;
    let keys = crate::status::keyring(
        &file,
        &crate::status::KeyChoice {
            key: a.key.clone(),
            no_key: false,
        },
    )
    .map_err(|e| format!("{e:#}"))?;
    // The process's own address (a copy moved there), its standby's, and the address it
    // has once promoted.
    let mut asked: Vec<(&str, &ken::cluster::PeerAddress)> = vec![("its address", &entry.address)];
    if let Some(sb) = &entry.standby {
        asked.push(("its standby's", &sb.ship));
        asked.push(("its promoted address", &sb.address));
    }
    let timeout = std::time::Duration::from_millis(a.timeout_ms);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let answers = runtime.block_on(crate::status::futures_join_all(asked.iter().map(
        |(_, address)| {
            let keys = keys.as_ref();
            let id = &id;
            async move {
                let addr = address
                    .resolve()
                    .map_err(|e| format!("cannot resolve: {e}"))?;
                ken::admin::ask(addr, id, keys, &AdminRequest::Status, timeout)
                    .await
                    .map(|reply| (addr, reply))
                    .map_err(|e| e.to_string())
            }
        },
    )));
    let mut lines = Vec::new();
    for ((what, address), answer) in asked.iter().zip(answers) {
        match answer {
            Ok((addr, AdminReply::Status(r))) if r.id == id.as_str() => {
                return Err(format!(
                    "process `{id}` runs at {addr} ({what}: {}, epoch {}; this store's epoch is \
                     {epoch}): a detached {} would be a second live copy, and nothing would fence \
                     it. Do not run this store: retire it, or reseed it as a standby of the running \
                     copy. Nothing written",
                    r.role.role,
                    r.role.epoch,
                    a.store.display()
                ));
            }
            Ok((addr, AdminReply::Standby(st))) if st.id == id.as_str() && st.epoch > epoch => {
                return Err(format!(
                    "the standby of `{id}` at {addr} accepts only epoch {} and later; this store's \
                     epoch is {epoch}: its standby was promoted, and this store is fenced. Do not \
                     run it. Nothing written",
                    st.epoch
                ));
            }
            Ok((addr, AdminReply::Standby(st))) => lines.push(format!(
                "{what} {addr}: a standby of `{}` at epoch {} answered (not promoted)",
                st.id, st.epoch
            )),
            Ok((addr, other)) => lines.push(format!(
                "{what} {addr}: answered as something else ({})",
                match other {
                    AdminReply::Status(r) => format!("process `{}`", r.id),
                    other => format!("{other:?}"),
                }
            )),
            Err(e) => lines.push(format!("{what} {address}: no answer ({e})")),
        }
    }
    Ok(lines)
}

fn detach(a: &DetachArgs) -> Result<(), String> {
    match (&a.cluster, &a.id) {
        (Some(cluster), Some(id)) => {
            for line in check_no_live_copy(a, cluster, id)? {
                println!("checked: {line}");
            }
        }
        _ => println!(
            "not checked for a running copy of the process (a promoted standby): give --cluster \
             FILE --id X to ask the addresses it declares first"
        ),
    }
    let outcome = ken::standby::detach(&a.store, &operator(), &a.reason)
        .map_err(|e| on_store(&a.store, e))?;
    match outcome {
        ken::standby::DetachOutcome::Detached(d) => println!(
            "{}: {d}. From its next start the process runs WITHOUT its standby, on the \
             record; `ken standby attach --store {}` ends it",
            a.store.display(),
            a.store.display()
        ),
        ken::standby::DetachOutcome::Already(d) => {
            println!("{}: already {d}; nothing written", a.store.display())
        }
    }
    Ok(())
}

fn attach(a: &AttachArgs) -> Result<(), String> {
    match ken::standby::attach(&a.store).map_err(|e| on_store(&a.store, e))? {
        Some(d) => println!(
            "{}: attached (the record said: {d}). From its next start the process ships to \
             its standby (reseeding it) and waits for it",
            a.store.display()
        ),
        None => println!(
            "{}: not detached; nothing written (the process ships to its standby when its \
             cluster file declares one)",
            a.store.display()
        ),
    }
    Ok(())
}
