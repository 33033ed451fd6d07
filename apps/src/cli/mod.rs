//! The apps' command lines: each app's `main` (what its binary runs, taking the command
//! line as an argument) and the pieces they share.
//!
//! Every app runs two ways, with the same code: as its own thin binary (`ken-bank ARGS..`,
//! `src/bin/`), and as a hidden subcommand of the `ken` command (`ken app bank ARGS..`, see
//! [`run`]), which is how `ken torture`, `ken demo` and the real-process tests start app
//! processes: from their own executable, with nothing to build or find beside it.

pub mod bank;
pub mod kv;
pub mod lock;
pub mod pingpong;

use std::ffi::OsString;
use std::process::ExitCode;

/// The glue every app shares, now in the library ([`ken::app`]); re-exported here for the
/// apps' command lines.
pub use ken::app::{
    check_peers, init_tracing, migrate, parse_id, run_to_exit, usage, MigrateArgs, PeerArg,
    ProcessArgs, SettingsArgs, EXIT_USAGE,
};

/// The example apps, by the name `ken app NAME` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum App {
    Bank,
    Kv,
    Lock,
    Pingpong,
}

impl App {
    /// The app's own binary (`ken-bank`, ...): the program name its command line reports.
    pub fn binary(self) -> &'static str {
        match self {
            App::Bank => "ken-bank",
            App::Kv => "ken-kv",
            App::Lock => "ken-lock",
            App::Pingpong => "ken-pingpong",
        }
    }

    /// The name `ken app NAME` takes.
    pub fn name(self) -> &'static str {
        match self {
            App::Bank => "bank",
            App::Kv => "kv",
            App::Lock => "lock",
            App::Pingpong => "pingpong",
        }
    }
}

/// Runs `app` with `args` (its arguments, without a program name), exactly as its binary
/// would run with them: `run(App::Bank, args)` is `ken-bank args..`.
pub fn run(app: App, args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from(app.binary())).chain(args);
    match app {
        App::Bank => bank::main(argv),
        App::Kv => kv::main(argv),
        App::Lock => lock::main(argv),
        App::Pingpong => pingpong::main(argv),
    }
}
