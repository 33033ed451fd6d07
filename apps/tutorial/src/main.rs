//! The `tally` binary: `tally run ...` runs one process, `tally check STORE...` checks
//! what the processes' stores say (the check `ken torture --cluster` runs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ken::store::{codec, Reader};
use tally::{Tally, RECEIVED, SENT};

#[derive(Parser)]
enum Cli {
    /// Runs one process of the service.
    Run {
        #[command(flatten)]
        process: Box<ken::app::ProcessArgs>,
        /// The other processes, without a cluster file: ID=HOST:PORT.
        #[arg(long = "peer")]
        peers: Vec<ken::app::PeerArg>,
        #[arg(long, default_value_t = 200)]
        rounds: u64,
        #[arg(long, default_value_t = 20)]
        every_ms: u64,
    },
    /// Checks that, for every pair of stores, what one sent is what the other received.
    Check { stores: Vec<PathBuf> },
}

fn main() -> ExitCode {
    ken::app::init_tracing();
    match Cli::parse() {
        Cli::Run {
            process,
            peers,
            rounds,
            every_ms,
        } => {
            let config = match process.config(&peers) {
                Ok(config) => config,
                Err(e) => return ken::app::usage("tally", e),
            };
            let mut peers: Vec<_> = config.peers.keys().cloned().collect();
            peers.extend(config.peer_hosts.keys().cloned());
            peers.sort();
            let tally = Tally {
                peers,
                rounds,
                every: Duration::from_millis(every_ms),
            };
            ken::app::run_to_exit(config, tally)
        }
        Cli::Check { stores } => match check(&stores) {
            Ok(pairs) => {
                println!("tally check: {pairs} pairs agree");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("tally check: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// (process, peer) -> total, for one table of every store.
type Totals = BTreeMap<(String, String), u64>;

fn check(stores: &[PathBuf]) -> Result<usize, String> {
    let (mut sent, mut received) = (Totals::new(), Totals::new());
    for path in stores {
        let reader = Reader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let me = reader.meta().map_err(|e| e.to_string())?.process_id;
        for (table, totals) in [(SENT, &mut sent), (RECEIVED, &mut received)] {
            let rows = reader
                .table_scan(table, b"", None, 10_000)
                .map_err(|e| e.to_string())?;
            for (key, value) in rows {
                let peer = String::from_utf8_lossy(&key).into_owned();
                let total: u64 = codec::decode(&value).map_err(|e| e.to_string())?;
                totals.insert((me.clone(), peer), total);
            }
        }
    }
    // Settled (the torture quiesced): equal. Otherwise only: never more received than sent.
    let settled = std::env::var("KEN_TORTURE_QUIESCED").map_or(true, |v| v == "1");
    for ((from, to), &s) in &sent {
        let r = received
            .get(&(to.clone(), from.clone()))
            .copied()
            .unwrap_or(0);
        if r > s || (settled && r != s) {
            return Err(format!("{from} sent {to} {s} in all, {to} received {r}"));
        }
    }
    Ok(sent.len())
}
