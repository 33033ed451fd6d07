//! The `ken` command line: a thin dispatcher, one module per subcommand.
//!
//! - `ken bench`: measures this machine (raw fsync rate, durable turns per second at one
//!   receiver, acknowledgement latency, pingpong round trip) against the project's targets.
//!
//! `demo`, `inspect` and `torture` arrive with their issues, each as its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;

/// Ken: crash-restart is invisible.
#[derive(Debug, Parser)]
#[command(name = "ken", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure this machine: disk fsync rate, turn throughput, ack latency, round trip.
    Bench(bench::Args),
    /// Internal: one process of a `ken bench` run (started by `ken bench`, not by hand).
    #[command(hide = true)]
    BenchNode(bench::NodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => match bench::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ken bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::BenchNode(args) => bench::node::main(&args),
    }
}
