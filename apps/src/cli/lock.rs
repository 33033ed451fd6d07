//! `ken-lock` (also `ken app lock`): a lock service whose locks are freed when the holder's
//! FUSE group fails (see [`crate::lock`]).
//!
//! ```text
//! ken-lock serve --id s --listen ADDR --store PATH --peer h1=ADDR --peer h2=ADDR ...
//! ken-lock hold --id h1 --listen ADDR --store PATH --peer s=ADDR --server s --lock NAME
//!               [--hold-ms N] [--rounds R]
//! ken-lock inspect STORE [VIEW]        the views of `ken inspect`, the lock types decoded
//! ```
//!
//! Both roles print one JSON line per event on stdout (the list is in `ken_apps::lock`);
//! a holder with `--rounds R` prints a final `{"event":"done",...}` line and exits 0 after
//! R rounds. `--hold-ms 0` holds each grant until its group fails (for tests). Run the same
//! command again to restart a process from its store. FUSE timing (`--fuse-heartbeat-ms`,
//! `--fuse-t-fail-ms`, `--fuse-create-timeout-ms`, or the cluster file's `[settings.fuse]`,
//! or the environment: `KEN_FUSE_HEARTBEAT_MS`, `KEN_FUSE_T_FAIL_MS`,
//! `KEN_FUSE_CREATE_TIMEOUT_MS`) must be the same in every process. Usage errors are one
//! line on stderr and exit 2.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{self, PeerArg};
use crate::lock::{self, HolderConfig, Lock, Role, ServerConfig};
use clap::{Args as ClapArgs, Parser, Subcommand};
use ken::ProcessId;

/// A lock service: a lock is freed when its holder's FUSE group fails.
#[derive(Debug, Parser)]
#[command(name = "ken-lock", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the lock server (until killed).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Waiters queued per lock; more are refused.
        #[arg(long, default_value_t = lock::QUEUE_MAX)]
        queue_max: usize,
    },
    /// Run a holder: acquire --lock, hold it --hold-ms, release, repeat --rounds times.
    Hold {
        #[command(flatten)]
        common: Common,
        /// The server's id (one of the --peer entries).
        #[arg(long, value_parser = cli::parse_id)]
        server: ProcessId,
        /// The lock to acquire.
        #[arg(long, value_parser = parse_lock)]
        lock: String,
        /// How long to hold each grant, in milliseconds; 0 = until the group fails.
        #[arg(long, default_value_t = 500)]
        hold_ms: u64,
        /// Rounds to do, then print a report and exit 0 (default: forever).
        #[arg(long)]
        rounds: Option<u64>,
        /// Wait after a refusal (queue full) before asking again, in milliseconds.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        retry_ms: u64,
    },
    /// Look inside a store, decoding the lock service's types (the views of `ken inspect`).
    Inspect(ken_inspect::Args),
    /// What this binary would migrate in a store (`migrate STORE --dry-run`).
    Migrate(cli::MigrateArgs),
}

#[derive(Debug, ClapArgs)]
struct Common {
    #[command(flatten)]
    process: cli::ProcessArgs,
    /// Another process, as ID=ADDR (repeat for each; with --cluster, in addition to the
    /// file's other processes).
    #[arg(long)]
    peer: Vec<PeerArg>,
}

fn parse_lock(s: &str) -> Result<String, String> {
    lock::check_lock_name(s).map(|()| s.to_string())
}

/// Usage error: one line, exit 2.
fn usage(what: String) -> ExitCode {
    cli::usage("ken-lock", what)
}

/// The config, or a one-line reason the peers are unusable.
fn config(common: Common) -> Result<ken::Config, String> {
    common.process.config(&common.peer)
}

/// Runs `ken-lock` with command line `args` (the first is the program name); usage errors
/// exit the process with clap's status 2.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    let (config, role) = match args.command {
        Command::Inspect(args) => {
            return ken_inspect::main(&args, &crate::inspect::lock());
        }
        Command::Migrate(args) => {
            return cli::migrate(&args, |id| lock::Lock {
                id,
                role: lock::Role::Server(lock::ServerConfig::default()),
            })
        }
        Command::Serve { common, queue_max } => {
            if queue_max == 0 {
                return usage("--queue-max must be at least 1".into());
            }
            match config(common) {
                Ok(c) => (c, Role::Server(ServerConfig { queue_max })),
                Err(e) => return usage(e),
            }
        }
        Command::Hold {
            common,
            server,
            lock,
            hold_ms,
            rounds,
            retry_ms,
        } => {
            let config = match config(common) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            if !config.peers.contains_key(&server) && !config.peer_hosts.contains_key(&server) {
                return usage(format!(
                    "--server {server} is not among the --peer entries (or the cluster file's processes); add --peer {server}=ADDR"
                ));
            }
            let holder = HolderConfig {
                server,
                lock,
                hold: (hold_ms > 0).then(|| Duration::from_millis(hold_ms)),
                rounds,
                retry_after: Duration::from_millis(retry_ms),
            };
            (config, Role::Holder(holder))
        }
    };
    cli::init_tracing();
    let handler = Lock {
        id: config.id.clone(),
        role,
    };
    cli::run_to_exit(config, handler)
}
