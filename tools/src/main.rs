//! The `ken` command line: a thin dispatcher, one module per subcommand.
//!
//! - `ken bench`: measures this machine (raw fsync rate, durable turns per second at one
//!   receiver, acknowledgement latency, pingpong round trip) against the project's targets,
//!   without a cluster key, with one, and with one and encryption (the cost of
//!   authentication).
//!   `ken bench fuse`: FUSE liveness bytes per second for 1 to 10,000 groups and
//!   kill-to-notification times (its processes are `ken fuse-node`, hidden).
//!
//! - `ken torture`: a cluster of real app processes under seeded kills, crash points,
//!   pauses and network faults, then healed and checked (exactly-once, FIFO, output
//!   validity, the app's invariants, liveness). Keyed by default; `--rotate-key` rotates
//!   the cluster key mid-run. See `tools/TORTURE.md`.
//!
//! - `ken demo`: three bank processes and a kv service on loopback, SIGKILLed and restarted
//!   while clients use them, then checked (money conserved, every acknowledged request
//!   applied exactly once) with a short report. Keyed by default (`--no-key`: not).
//!
//! - `ken keygen FILE`: writes a fresh cluster key (mode 0600, never overwriting a file);
//!   `ken client-credential --key-file K --out FILE`: issues a client credential from it
//!   (SECURITY.md).
//!
//! - `ken inspect STORE [VIEW]`: looks inside a process's checkpoint store, live or dead
//!   (summary, outbox, peers, timers, tables, turns, state, verify, watch; `--json`). The
//!   views live in the `ken-inspect` crate because the app binaries use them too. See
//!   `ken/inspect/INSPECT.md`.
//!
//! - `ken dead-letters STORE replay|discard PEER SEQ` and `ken poison STORE dead-letter PEER
//!   SEQ`: the operator's actions on a stopped process's dead letters and poison messages,
//!   on the record (`ken::living`, UPGRADES.md).
//!
//! - `ken app NAME ARGS..` (hidden): runs an example app as its own binary would
//!   (`ken_apps::cli`), so that `ken torture`, `ken demo` and the real-process tests start
//!   app processes from this one executable.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod standby;
mod status;
mod torture;

/// Ken: crash-restart is invisible.
#[derive(Debug, Parser)]
#[command(name = "ken", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a small cluster (3 bank processes and a kv service), SIGKILL and restart them
    /// while clients use them, then check money conservation and exactly-once requests.
    Demo(demo::Args),
    /// Look inside a process's checkpoint store, live or dead: summary, outbox, peers, timers,
    /// tables, turns, state, verify, watch.
    Inspect(ken_inspect::Args),
    /// Check the stores of a cluster against each other: every pair's counters, FUSE groups,
    /// each store's own verify. Names the store that lost history (safe while they run).
    Audit(ken_inspect::audit::AuditArgs),
    /// Measure this machine: disk fsync rate, turn throughput, ack latency, round trip.
    #[command(after_help = bench::EXIT_CODES_HELP)]
    Bench(bench::Args),
    /// Internal: one process of a `ken bench` run (started by `ken bench`, not by hand).
    #[command(hide = true)]
    BenchNode(bench::NodeArgs),
    /// Internal: one FUSE group member (`ken bench fuse` and the FUSE process tests).
    #[command(hide = true)]
    FuseNode(bench::fuse_node::FuseNodeArgs),
    /// Torture a cluster of real app processes (kills, crash points, pauses, network
    /// faults), heal, and check exactly-once, FIFO, output validity and liveness.
    Torture(Box<torture::Args>),
    /// Admit a replaced peer: a process whose store was lost came back as a new incarnation
    /// and the process owning STORE refuses it (it logs who and this command). Run with that
    /// process stopped; when it runs again it admits the new incarnation as a fresh peer
    /// (what the old one never acknowledged is withdrawn; the FUSE groups shared with the old
    /// one have already failed). Recorded in the store (`ken.admit`, then the turn log).
    /// Online: `ken admit --cluster FILE --id X PEER` asks the running process X to do the
    /// same at PEER's next frame (an administrative request under the cluster key).
    Admit(AdmitArgs),
    /// Ask every process of a cluster file for its status (answered by the runtime, not the
    /// app) and print one row per process: up or no answer, incarnation, version, uptime,
    /// turns/s, commit latency, outbox and oldest unacknowledged message, held, poison and
    /// dead letters, FUSE groups by state. Exit 0: all answered; 2: some did not.
    Status(status::Args),
    /// Write a fresh cluster key to FILE (mode 0600; refuses to overwrite a file).
    Keygen {
        /// Where to write the key.
        file: std::path::PathBuf,
    },
    /// Issue a client credential (a fresh client id and its token) from the cluster key.
    ClientCredential {
        /// The cluster key file.
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// Where to write the credential (mode 0600; refuses to overwrite a file).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Replay or discard one dead letter of a stopped process's store, on the record (a
    /// turn-log entry). Refused while a process runs on the store (stop it first); a
    /// replayed letter runs when the process starts again, normally with a fixed binary.
    DeadLetters(DeadLettersArgs),
    /// Move one poison message (its turn panicked; its pair is held) of a stopped process's
    /// store to the dead letters, on the record (a turn-log entry). At its next start the
    /// process consumes it as a dead letter instead of running it, and the pair flows again
    /// (even on the same binary). Refused while a process runs on the store.
    Poison(PoisonArgs),
    /// A process's standby replica (every committed batch shipped to another host before its
    /// outputs leave): `serve` runs one, `promote` makes a stopped one's store the primary's
    /// (epoch + 1, fencing the old primary), `detach` / `attach` record that a primary runs
    /// alone and end it. See ken/STANDBY.md.
    Standby(standby::Args),
    /// Internal: run an example app, `ken app bank ARGS..` as `ken-bank ARGS..` would (how
    /// `ken torture`, `ken demo` and the tests start app processes).
    #[command(hide = true, disable_help_flag = true)]
    App(AppArgs),
}

/// `ken admit STORE PEER` (offline) or `ken admit --cluster FILE --id X PEER` (online).
#[derive(Debug, clap::Args)]
struct AdmitArgs {
    /// Offline: STORE PEER (the store of the stopped process that refuses PEER). Online
    /// (with --cluster): PEER only.
    #[arg(num_args = 1..=2, value_name = "STORE PEER | PEER", required = true)]
    args: Vec<String>,
    /// Online: the cluster file naming the running process and its address.
    #[arg(long, requires = "id")]
    cluster: Option<std::path::PathBuf>,
    /// Online: the process that refuses the peer (it must be running).
    #[arg(long, requires = "cluster")]
    id: Option<String>,
    /// Online: the cluster key file (default: the cluster file's key_file).
    #[arg(long, requires = "cluster", conflicts_with = "no_key")]
    key: Option<std::path::PathBuf>,
    /// Online: send the request untagged (a keyed process drops it).
    #[arg(long, requires = "cluster")]
    no_key: bool,
    /// Online: how long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// `ken dead-letters STORE ACTION PEER SEQ`.
#[derive(Debug, clap::Args)]
struct DeadLettersArgs {
    /// The store (its process stopped).
    store: std::path::PathBuf,
    /// `replay`: queue it for the next start; `discard`: delete it.
    #[arg(value_enum)]
    action: DeadLetterVerb,
    /// The peer that sent it (as `ken inspect STORE dead-letters` lists).
    peer: String,
    /// Its sequence number.
    seq: u64,
}

/// `ken poison STORE dead-letter PEER SEQ`.
#[derive(Debug, clap::Args)]
struct PoisonArgs {
    /// The store (its process stopped).
    store: std::path::PathBuf,
    /// `dead-letter`: move it to the dead letters at the process's next start.
    #[arg(value_enum)]
    action: PoisonVerb,
    /// The peer that sent it (as `ken inspect STORE poison` lists).
    peer: String,
    /// Its sequence number.
    seq: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PoisonVerb {
    DeadLetter,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DeadLetterVerb {
    Replay,
    Discard,
}

/// `ken app NAME ARGS..`.
#[derive(Debug, clap::Args)]
struct AppArgs {
    /// Which app.
    #[arg(value_enum)]
    app: ken_apps::cli::App,
    /// Its command line, as its own binary takes it.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => match demo::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ken demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Inspect(args) => ken_inspect::main(&args, &ken_inspect::AppDecoder::generic()),
        Command::Audit(args) => ken_inspect::audit::main(&args),
        Command::Bench(args) => match bench::run(&args) {
            Ok(bench::Verdict::Met) => ExitCode::SUCCESS,
            Ok(bench::Verdict::Missed) => ExitCode::from(bench::EXIT_MISS),
            Err(e) => {
                eprintln!("ken bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status(args) => match status::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ken status: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Admit(a) => admit(a),
        Command::Keygen { file } => match ken::ClusterKey::write_new(&file) {
            Ok(key) => {
                println!("wrote cluster key {} to {}", key.id(), file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ken keygen: {e}");
                ExitCode::FAILURE
            }
        },
        Command::ClientCredential { key_file, out } => {
            if let Some(mode) = ken::transport::auth::loose_permissions(&key_file) {
                eprintln!(
                    "ken client-credential: warning: {} has mode {mode:o}: others may read the \
                     cluster key; run `chmod 600` on it",
                    key_file.display()
                );
            }
            let written = ken::ClusterKey::load(&key_file).and_then(|key| {
                let credential = key.new_credential();
                credential.write_new(&out).map(|()| credential)
            });
            match written {
                Ok(credential) => {
                    println!("wrote {credential:?} to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ken client-credential: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::BenchNode(args) => bench::node::main(&args),
        Command::FuseNode(args) => bench::fuse_node::main(&args),
        Command::Torture(args) => match torture::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ken torture: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::DeadLetters(a) => {
            let action = match a.action {
                DeadLetterVerb::Replay => ken::living::DeadLetterAction::Replay,
                DeadLetterVerb::Discard => ken::living::DeadLetterAction::Discard,
            };
            match ken::living::dead_letter_action(&a.store, &a.peer, a.seq, action) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ken dead-letters: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Poison(a) => {
            let PoisonVerb::DeadLetter = a.action;
            match ken::living::poison_dead_letter(&a.store, &a.peer, a.seq) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ken poison: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::App(a) => ken_apps::cli::run(a.app, a.args),
        Command::Standby(a) => standby::main(&a),
    }
}

/// `ken admit`: offline on a stopped process's store, or online through the cluster file.
fn admit(a: AdmitArgs) -> ExitCode {
    if let (Some(cluster), Some(id)) = (&a.cluster, &a.id) {
        let [peer] = a.args.as_slice() else {
            eprintln!(
                "ken admit: with --cluster, give only the peer: ken admit --cluster FILE --id X PEER"
            );
            return ExitCode::from(2);
        };
        let keys = status::KeyChoice {
            key: a.key.clone(),
            no_key: a.no_key,
        };
        let timeout = std::time::Duration::from_millis(a.timeout_ms.max(1));
        return match status::admit_online(cluster, id, peer, &keys, timeout) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ken admit: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let [store, peer] = a.args.as_slice() else {
        eprintln!(
            "ken admit: give the stopped process's store and the peer (ken admit STORE PEER), \
             or admit online (ken admit --cluster FILE --id X PEER)"
        );
        return ExitCode::from(2);
    };
    let store = std::path::PathBuf::from(store);
    let admitted = ken::ProcessId::new(peer.as_str())
        .map_err(|e| format!("`{peer}` is not a process id: {e}"))
        .and_then(|id| {
            ken::living::admit_offline(&store, &id, "ken admit").map_err(|e| e.to_string())
        });
    match admitted {
        Ok(known) => {
            println!(
                "{}: the next new incarnation of `{peer}` will be admitted as a fresh \
                 peer (the store knew incarnation {known:016x}); start the process again",
                store.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ken admit: {e}");
            ExitCode::FAILURE
        }
    }
}
