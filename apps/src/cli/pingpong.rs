//! `ken-pingpong` (also `ken app pingpong`): two processes volley a counter up to N (see
//! [`crate::pingpong`]).
//!
//! `ken-pingpong --id .. --listen .. --store .. --peer .. --count ..` runs one player;
//! `ken-pingpong inspect STORE [VIEW]` looks inside a player's store, decoding pingpong's
//! types (the views of `ken inspect`).

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::{self, PeerArg};
use crate::pingpong::PingPong;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ken::ProcessId;

/// Volley a counter with a peer up to --count; print a JSON report and exit 0 when done.
#[derive(Debug, Parser)]
#[command(
    name = "ken-pingpong",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// (Parsed by hand in [`main`]: clap's derive cannot tell whether an optional group
    /// holding a flattened group was given.)
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Look inside a store, decoding pingpong's types (the views of `ken inspect`).
    Inspect(ken_inspect::Args),
    /// What this binary would migrate in a store (`migrate STORE --dry-run`).
    Migrate(cli::MigrateArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    process: cli::ProcessArgs,
    /// The other player, as ID=ADDR (with --cluster: the file's other process).
    #[arg(long)]
    peer: Option<PeerArg>,
    /// The last value of the volley.
    #[arg(long)]
    count: u64,
    /// Wait for the first ball instead of hitting it.
    #[arg(long)]
    serve: bool,
}

/// Runs `ken-pingpong` with command line `args` (the first is the program name); usage
/// errors exit the process with clap's status 2.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let matches = Cli::command().get_matches_from(args);
    if matches.subcommand().is_some() {
        match Command::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()) {
            Command::Inspect(args) => return ken_inspect::main(&args, &crate::inspect::pingpong()),
            Command::Migrate(args) => {
                return cli::migrate(&args, |id| PingPong {
                    peer: id.clone(),
                    id,
                    count: 0,
                    serve: false,
                })
            }
        }
    }
    let args = RunArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_tracing();
    let config = match args.process.config(args.peer.as_slice()) {
        Ok(c) => c,
        Err(e) => return cli::usage("ken-pingpong", e),
    };
    let mut peers: Vec<ProcessId> = config.peers.keys().cloned().collect();
    peers.extend(config.peer_hosts.keys().cloned());
    peers.sort();
    peers.dedup();
    let peer = match <[ProcessId; 1]>::try_from(peers) {
        Ok([peer]) => peer,
        Err(peers) if peers.is_empty() => {
            return cli::usage("ken-pingpong", "no other player: give --peer ID=ADDR");
        }
        Err(peers) => {
            return cli::usage(
                "ken-pingpong",
                format!(
                    "pingpong plays with exactly one peer, and this has {} ({}); use a cluster file of two processes",
                    peers.len(),
                    peers.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    };
    let handler = PingPong {
        id: config.id.clone(),
        peer,
        count: args.count,
        serve: args.serve,
    };
    cli::run_to_exit(config, handler)
}
