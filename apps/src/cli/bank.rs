//! `ken-bank` (also `ken app bank`): one member of a bank whose accounts are spread over
//! processes (see [`crate::bank`]).
//!
//! `ken-bank --id .. --listen .. --store .. --peer ..` runs a member;
//! `ken-bank inspect STORE [VIEW]` looks inside a member's store, decoding the bank's types
//! (the views of `ken inspect`). `--schema 2` runs schema version 2 ([`BankV2`]).

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::bank::{Bank, BankV2};
use crate::cli::{self, PeerArg};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ken::ProcessId;

/// Run one bank member; it transfers money to the other members until killed.
#[derive(Debug, Parser)]
#[command(
    name = "ken-bank",
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
    /// Look inside a store, decoding the bank's types (the views of `ken inspect`).
    Inspect(ken_inspect::Args),
    /// What this binary would migrate in a store (`migrate STORE --dry-run`).
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    #[command(flatten)]
    migrate: cli::MigrateArgs,
    /// The schema version to migrate to (1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    schema: u32,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    process: cli::ProcessArgs,
    /// Another member, as ID=ADDR (repeat for each; with --cluster, in addition to the
    /// file's other processes).
    #[arg(long = "peer")]
    peers: Vec<PeerArg>,
    /// Accounts held by each member.
    #[arg(long, default_value_t = 16)]
    accounts: u32,
    /// Opening balance of every account.
    #[arg(long, default_value_t = 1000)]
    initial_balance: i64,
    /// Milliseconds between two transfers started by this member.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Transfers this member starts in all (0 = no limit).
    #[arg(long, default_value_t = 0)]
    transfers: u64,
    /// Skip a transfer when this many messages to its destination await acknowledgement.
    #[arg(long, default_value_t = 1000)]
    outbox_limit: usize,
    /// Schema version to run: 1, or 2 (balances in table `balances`, a memo on every
    /// transfer; migrates a version-1 store at start; see UPGRADES.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    schema: u32,
    /// TEST: a deliberate bug of schema version 1 (the poison torture): panic on every
    /// credit whose transfer id is a multiple of this (0 = never). Version 2 is the fix.
    #[arg(long, default_value_t = 0, hide = true)]
    bug_panic_every: u64,
}

/// Runs `ken-bank` with command line `args` (the first is the program name); usage errors
/// exit the process with clap's status 2.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let matches = Cli::command().get_matches_from(args);
    if matches.subcommand().is_some() {
        return match Command::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()) {
            Command::Inspect(args) => {
                // The store's own schema version picks the types to decode with.
                let version = ken::store::Reader::open(&args.store)
                    .ok()
                    .and_then(|r| r.meta().ok())
                    .and_then(|m| m.app)
                    .map_or(1, |a| a.schema_version);
                let decoder = match version {
                    2 => crate::inspect::bank_v2(),
                    _ => crate::inspect::bank(),
                };
                ken_inspect::main(&args, &decoder)
            }
            Command::Migrate(args) => {
                let bank = |id: ProcessId| Bank {
                    members: vec![id.clone()],
                    id,
                    accounts: 16,
                    initial_balance: 1000,
                    transfer_interval: Duration::from_millis(5),
                    transfers_max: 0,
                    outbox_limit: 1000,
                    panic_every: 0,
                };
                match args.schema {
                    2 => cli::migrate(&args.migrate, |id| BankV2(bank(id))),
                    _ => cli::migrate(&args.migrate, bank),
                }
            }
        };
    }
    let args = RunArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli::init_tracing();
    let config = match args.process.config(&args.peers) {
        Ok(c) => c,
        Err(e) => return cli::usage("ken-bank", e),
    };
    let mut members: Vec<ProcessId> = config.peers.keys().cloned().collect();
    members.extend(config.peer_hosts.keys().cloned());
    members.push(config.id.clone());
    members.sort();
    members.dedup();
    let handler = Bank {
        id: config.id.clone(),
        members,
        accounts: args.accounts,
        initial_balance: args.initial_balance,
        transfer_interval: Duration::from_millis(args.interval_ms),
        transfers_max: args.transfers,
        outbox_limit: args.outbox_limit,
        panic_every: args.bug_panic_every,
    };
    match args.schema {
        2 => cli::run_to_exit(config, BankV2(handler)),
        _ => cli::run_to_exit(config, handler),
    }
}
