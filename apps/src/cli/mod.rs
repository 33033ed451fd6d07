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

/// `migrate STORE --dry-run`, shared by every app's command line: what opening the store
/// with this binary would migrate (`ken::upgrade::dry_run`), without writing. The migration
/// itself runs when the process next starts on the store.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The store (live or not; it is only read).
    pub store: PathBuf,
    /// Report what would change without writing (required: the migration itself runs at
    /// the process's start).
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `migrate` for the handler `make` builds from the store's process id (the handler's
/// configuration does not matter to a migration); exit 0 with the report, 1 with a one-line
/// error, 2 without `--dry-run`.
pub fn migrate<H: ken::Handler>(args: &MigrateArgs, make: impl FnOnce(ProcessId) -> H) -> ExitCode {
    if !args.dry_run {
        eprintln!(
            "{}: migrate needs --dry-run: the migration itself runs when the process starts on \
             the store",
            H::APP
        );
        return ExitCode::from(2);
    }
    let id = match ken::store::Reader::open(&args.store).and_then(|r| {
        r.meta()
            .map_err(|e| ken::store::OpenError::Corrupted(corrupted(e)))
    }) {
        Ok(meta) => meta.process_id,
        Err(e) => {
            eprintln!("{}: {e}", H::APP);
            return ExitCode::from(1);
        }
    };
    let Ok(id) = ProcessId::new(id.clone()) else {
        eprintln!("{}: the store's process id `{id}` is not valid", H::APP);
        return ExitCode::from(1);
    };
    match ken::upgrade::dry_run(&args.store, &make(id)) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", H::APP);
            ExitCode::from(1)
        }
    }
}

fn corrupted(e: ken::store::ReadError) -> ken::store::Corrupted {
    match e {
        ken::store::ReadError::Corrupted(c) => c,
        other => ken::store::Corrupted {
            table: "meta".into(),
            key: String::new(),
            detail: other.to_string(),
        },
    }
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
