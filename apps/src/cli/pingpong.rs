//! `ken-pingpong` (also `ken app pingpong`): two processes volley a counter up to N (see
//! [`crate::pingpong`]).
//!
//! `ken-pingpong --id .. --listen .. --store .. --peer .. --count ..` runs one player;
//! `ken-pingpong inspect STORE [VIEW]` looks inside a player's store, decoding pingpong's
//! types (the views of `ken inspect`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{self, PeerArg};
use crate::pingpong::PingPong;
use clap::{Parser, Subcommand};
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
    #[command(flatten)]
    run: Option<RunArgs>,
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
    /// This process's id.
    #[arg(long, value_parser = cli::parse_id)]
    id: ProcessId,
    /// UDP address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Checkpoint store file (created if missing).
    #[arg(long)]
    store: PathBuf,
    /// The other player, as ID=ADDR.
    #[arg(long)]
    peer: PeerArg,
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
    let args = match Cli::parse_from(args) {
        Cli {
            command: Some(Command::Inspect(args)),
            ..
        } => return ken_inspect::main(&args, &crate::inspect::pingpong()),
        Cli {
            command: Some(Command::Migrate(args)),
            ..
        } => {
            return cli::migrate(&args, |id| crate::pingpong::PingPong {
                peer: id.clone(),
                id,
                count: 0,
                serve: false,
            })
        }
        Cli { run: Some(run), .. } => run,
        Cli { run: None, .. } => {
            eprintln!("ken-pingpong: nothing to do; see ken-pingpong --help");
            return ExitCode::from(2);
        }
    };
    cli::init_tracing();
    let mut config = ken::Config::new(args.id.clone(), args.listen, args.store);
    config.peers.insert(args.peer.id.clone(), args.peer.addr);
    let handler = PingPong {
        id: args.id,
        peer: args.peer.id,
        count: args.count,
        serve: args.serve,
    };
    cli::run_to_exit(config, handler)
}
