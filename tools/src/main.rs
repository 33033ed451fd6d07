//! The `ken` command line: a thin dispatcher, one module per subcommand.
//!
//! - `ken bench`: measures this machine (raw fsync rate, durable turns per second at one
//!   receiver, acknowledgement latency, pingpong round trip) against the project's targets.
//!   `ken bench fuse`: FUSE liveness bytes per second for 1 to 10,000 groups and
//!   kill-to-notification times (its processes are `ken fuse-node`, hidden).
//!
//! - `ken torture`: a cluster of real app processes under seeded kills, crash points,
//!   pauses and network faults, then healed and checked (exactly-once, FIFO, output
//!   validity, the app's invariants, liveness). See `tools/TORTURE.md`.
//!
//! - `ken demo`: three bank processes and a kv service on loopback, SIGKILLed and restarted
//!   while clients use them, then checked (money conserved, every acknowledged request
//!   applied exactly once) with a short report.
//!
//! - `ken inspect STORE [VIEW]`: looks inside a process's checkpoint store, live or dead
//!   (summary, outbox, peers, timers, tables, turns, state, verify, watch; `--json`). The
//!   views live in the `ken-inspect` crate because the app binaries use them too. See
//!   `ken/inspect/INSPECT.md`.
//!
//! - `ken app NAME ARGS..` (hidden): runs an example app as its own binary would
//!   (`ken_apps::cli`), so that `ken torture`, `ken demo` and the real-process tests start
//!   app processes from this one executable.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
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
    /// Look inside a process's checkpoint store, live or dead (see `ken inspect --help`).
    Inspect(ken_inspect::Args),
    /// Measure this machine: disk fsync rate, turn throughput, ack latency, round trip.
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
    /// Internal: run an example app, `ken app bank ARGS..` as `ken-bank ARGS..` would (how
    /// `ken torture`, `ken demo` and the tests start app processes).
    #[command(hide = true, disable_help_flag = true)]
    App(AppArgs),
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
        Command::Bench(args) => match bench::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ken bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::BenchNode(args) => bench::node::main(&args),
        Command::FuseNode(args) => bench::fuse_node::main(&args),
        Command::Torture(args) => match torture::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ken torture: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::App(a) => ken_apps::cli::run(a.app, a.args),
    }
}
