//! `ken standby serve` and `ken standby promote`: a process's standby replica (issue 18,
//! `ken::standby`), run and promoted by an operator.
//!
//! A standby never promotes itself and a primary never drops its standby by itself: either
//! would allow two live copies of one process in a partition. The operator decides: stop
//! the standby, `ken standby promote` its store (epoch + 1: from then on it refuses batches
//! from the old primary, which can therefore release nothing more), and start the process's
//! own binary on it at the standby's address with `--no-standby` until a new standby is
//! attached.

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
    if let Some(cluster) = &a.cluster {
        let (file, sb) = standby_entry(cluster, &id)?;
        store = store.or(sb.store.clone());
        listen = listen.or_else(|| sb.ship.literal());
        if let Some(k) = &file.settings.key_file {
            key = Some(ken::ClusterKey::load(k).map_err(|e| e.to_string())?);
        }
    }
    if let Some(k) = &a.key_file {
        key = Some(ken::ClusterKey::load(k).map_err(|e| e.to_string())?);
    }
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
        eprintln!("{{\"event\":\"standby\",\"id\":\"{id}\",\"addr\":\"{addr}\"}}");
        ken::standby::serve(ken::standby::StandbyConfig {
            process: id,
            store,
            listener,
            key,
            min_epoch: a.min_epoch,
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
    let epoch = ken::standby::promote(&store).map_err(|e| e.to_string())?;
    println!(
        "promoted {}: epoch {epoch}. Start the process on it at the standby's address with \
         --no-standby; any standby at epoch {epoch} or later refuses the old primary",
        store.display()
    );
    Ok(())
}
