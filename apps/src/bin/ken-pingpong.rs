//! `ken-pingpong`: two processes volley a counter up to N (see `ken_apps::pingpong`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ken::ProcessId;
use ken_apps::cli::{self, PeerArg};
use ken_apps::pingpong::PingPong;

/// Volley a counter with a peer up to --count; print a JSON report and exit 0 when done.
#[derive(Debug, Parser)]
#[command(name = "ken-pingpong", version)]
struct Args {
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

fn main() -> ExitCode {
    cli::init_tracing();
    let args = Args::parse();
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
