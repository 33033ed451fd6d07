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
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use ken::ProcessId;

/// What every app process is told: who it is, where it listens, where its store is.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// This process's id.
    #[arg(long, value_parser = parse_id)]
    pub id: ProcessId,
    /// UDP address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Checkpoint store file (created if missing).
    #[arg(long)]
    pub store: PathBuf,
}

impl ProcessArgs {
    /// A runtime config for this process, with no peers yet.
    pub fn config(&self) -> ken::Config {
        ken::Config::new(self.id.clone(), self.listen, &self.store)
    }
}

/// A `--peer ID=ADDR` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    pub id: ProcessId,
    pub addr: SocketAddr,
}

impl FromStr for PeerArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ID=ADDR (for example b=127.0.0.1:7001), got `{s}`"))?;
        let id = ProcessId::new(id).map_err(|e| format!("bad peer id `{id}`: {e}"))?;
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address `{addr}` for peer {id}: {e}"))?;
        Ok(PeerArg { id, addr })
    }
}

/// Parses a process id argument.
pub fn parse_id(s: &str) -> Result<ProcessId, String> {
    ProcessId::new(s).map_err(|e| format!("bad process id `{s}`: {e}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a handler with `config` and maps the outcome to a process exit code: 0 when the
/// handler finished, 1 (with the error on stderr) when the process had to stop.
pub fn run_to_exit<H: ken::Handler>(config: ken::Config, handler: H) -> std::process::ExitCode {
    match ken::run(config.with_env_switches(), handler) {
        Ok(ken::Exit::Finished { .. }) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

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
