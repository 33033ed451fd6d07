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

/// Exit code of a usage or configuration error: a bad flag, a bad cluster file, a peer list
/// that names this process or a process twice. Nothing was started.
pub const EXIT_USAGE: u8 = 2;

/// What every app process is told: who it is, where it listens, where its store is, and the
/// settings it shares with its cluster; from flags, or from a cluster file (`--cluster`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// This process's id (with --cluster: the id of its [[process]] entry).
    #[arg(long, value_parser = parse_id)]
    pub id: ProcessId,
    /// The cluster file (TOML): every process's address (host names and IPv6 allowed), the
    /// settings they share, optionally their stores; the other processes in it are this
    /// one's peers. Format: the rustdoc of `ken::cluster`; an example:
    /// apps/deploy/cluster.example.toml.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// UDP address to listen on (with --cluster: defaults to the file's).
    #[arg(long, required_unless_present = "cluster")]
    pub listen: Option<SocketAddr>,
    /// Checkpoint store file, created if missing (with --cluster: defaults to the file's).
    #[arg(long, value_name = "PATH", required_unless_present = "cluster")]
    pub store: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (TCP; port 0 picks one, printed as
    /// `metrics: http://..` on stderr). Each metric is described in ken/METRICS.md.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// The settings every process of a cluster shares. Each is taken from its flag, else from
/// the cluster file's `[settings]`, else from its environment variable, else the default.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    next_help_heading = "Cluster settings (flag, else the cluster file, else the environment variable)"
)]
pub struct SettingsArgs {
    /// The cluster key (make one with `ken keygen FILE`): every peer frame is authenticated
    /// with it and clients need a credential (`ken client-credential`). Without one the
    /// process is open to anyone who can send it a datagram (SECURITY.md).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// An older cluster key still accepted, during a rotation (repeat for each).
    #[arg(long, value_name = "FILE")]
    pub accept_key_file: Vec<PathBuf>,
    /// Encrypt the payload of every peer frame (needs a key).
    #[arg(long)]
    pub encrypt: bool,
    /// Admit at once a peer that comes back with a new (empty) store, as a fresh peer,
    /// instead of refusing it until an operator runs `ken admit` (apps/deploy/DEPLOY.md, section 5).
    #[arg(long)]
    pub admit_replaced_peers: bool,
    /// FUSE heartbeat interval in ms, the same in every process [env: KEN_FUSE_HEARTBEAT_MS].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub fuse_heartbeat_ms: Option<u64>,
    /// FUSE silence bound T_fail in ms, the same in every process [env: KEN_FUSE_T_FAIL_MS].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub fuse_t_fail_ms: Option<u64>,
    /// FUSE group creation timeout in ms [env: KEN_FUSE_CREATE_TIMEOUT_MS].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub fuse_create_timeout_ms: Option<u64>,
    /// Print a JSON stats line to stderr every MS milliseconds; 0 = never
    /// [env: KEN_STATS_INTERVAL_MS].
    #[arg(long, value_name = "MS")]
    pub stats_interval_ms: Option<u64>,
    /// Page size in bytes of a store this process creates (512 to 65536, a power of two;
    /// default 4096; an existing store keeps its own). Smaller pages write less per commit
    /// and cost more for large values: 1024 wrote 6.0 KB per single-turn commit against
    /// 21.6 KB at 4096, at the same commit rate (`cargo bench -p ken-store`).
    #[arg(long, value_name = "BYTES", value_parser = parse_page_size)]
    pub store_page_size: Option<u32>,
}

fn parse_page_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if (512..=65536).contains(&n) && n.is_power_of_two() {
        Ok(n)
    } else {
        Err(format!(
            "{n} is not a power of two from 512 to 65536 (512, 1024, 2048, 4096, ...)"
        ))
    }
}

impl SettingsArgs {
    /// Applies the flags that were given to `config` (they override the file and the
    /// environment).
    pub fn apply(&self, config: &mut ken::Config) -> Result<(), String> {
        if let Some(path) = &self.key_file {
            config.key = Some(ken::ClusterKey::load(path).map_err(|e| e.to_string())?);
        }
        for path in &self.accept_key_file {
            config
                .accepted_keys
                .push(ken::ClusterKey::load(path).map_err(|e| e.to_string())?);
        }
        config.encrypt |= self.encrypt;
        config.tuning.admit_replaced_peers |= self.admit_replaced_peers;
        if let Some(n) = self.store_page_size {
            config.store_options.page_size = Some(n);
        }
        let ms = std::time::Duration::from_millis;
        if let Some(v) = self.fuse_heartbeat_ms {
            config.tuning.fuse_heartbeat = ms(v);
        }
        if let Some(v) = self.fuse_t_fail_ms {
            config.tuning.fuse_t_fail = ms(v);
        }
        if let Some(v) = self.fuse_create_timeout_ms {
            config.tuning.fuse_create_timeout = ms(v);
        }
        if let Some(v) = self.stats_interval_ms {
            config.stats_interval = Some(ms(v));
        }
        if config.encrypt && config.key.is_none() {
            return Err("--encrypt needs a cluster key: give --key-file FILE (make one with `ken keygen FILE`)".into());
        }
        config
            .tuning
            .check()
            .map_err(|e| format!("the FUSE settings do not hold together: {e}"))
    }
}

impl ProcessArgs {
    /// The runtime config of this process, with `peers` (the `--peer` flags) added to the
    /// cluster file's processes, checked ([`check_peers`]): a one-line reason if unusable
    /// (print it and exit [`EXIT_USAGE`]).
    pub fn config(&self, peers: &[PeerArg]) -> Result<ken::Config, String> {
        let mut config = match &self.cluster {
            Some(path) => {
                let file = ken::ClusterFile::load(path).map_err(|e| e.to_string())?;
                let mut config = file
                    .config(&self.id, self.store.clone())
                    .map_err(|e| e.to_string())?;
                if let Some(listen) = self.listen {
                    config.listen = listen;
                }
                config
            }
            None => {
                let (Some(listen), Some(store)) = (self.listen, &self.store) else {
                    return Err("--listen and --store are required without --cluster".into());
                };
                let mut config = ken::Config::new(self.id.clone(), listen, store);
                config.tuning.apply_env().map_err(|e| e.to_string())?;
                config.stats_interval = std::env::var("KEN_STATS_INTERVAL_MS")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .map(std::time::Duration::from_millis);
                config.read_env = false;
                config
            }
        };
        check_peers(&config, peers)?;
        for p in peers {
            config.add_peer(p.id.clone(), p.address.clone());
        }
        self.settings.apply(&mut config)?;
        config.metrics = self.metrics;
        config.ready_line = true;
        Ok(config)
    }
}

/// Checks the `--peer` flags against this process and the peers it has already (from a
/// cluster file): none names this process, none is given twice, and no two processes share
/// an address. One line saying what to fix, or `Ok`.
pub fn check_peers(config: &ken::Config, peers: &[PeerArg]) -> Result<(), String> {
    let mut addresses: Vec<(String, String)> = Vec::new();
    if !config.listen.ip().is_unspecified() {
        addresses.push((
            config.listen.to_string(),
            format!("this process (--listen {})", config.listen),
        ));
    }
    for (id, addr) in &config.peers {
        addresses.push((addr.to_string(), format!("peer {id}")));
    }
    for (id, addr) in &config.peer_hosts {
        addresses.push((addr.to_string().to_ascii_lowercase(), format!("peer {id}")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in peers {
        if p.id == config.id {
            return Err(format!(
                "--peer {}={} names this process itself; list only the other processes",
                p.id, p.address
            ));
        }
        if config.peers.contains_key(&p.id) || config.peer_hosts.contains_key(&p.id) {
            return Err(format!(
                "--peer {} is already a process of the cluster file; drop the flag or the entry",
                p.id
            ));
        }
        if !seen.insert(p.id.clone()) {
            return Err(format!(
                "--peer {} is given twice; give each peer once",
                p.id
            ));
        }
        let key = match p.address.literal() {
            Some(a) => a.to_string(),
            None => p.address.to_string().to_ascii_lowercase(),
        };
        if let Some((_, other)) = addresses.iter().find(|(a, _)| *a == key) {
            return Err(format!(
                "--peer {}={} has the same address as {other}; each process listens on its own address",
                p.id, p.address
            ));
        }
        addresses.push((key, format!("peer {}", p.id)));
    }
    Ok(())
}

/// A `--peer ID=ADDR` argument: ADDR is `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    pub id: ProcessId,
    pub address: ken::PeerAddress,
}

impl FromStr for PeerArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s.split_once('=').ok_or_else(|| {
            format!(
                "expected ID=ADDR (for example b=127.0.0.1:7001 or b=kv-b.example:7001), got `{s}`"
            )
        })?;
        let id = ProcessId::new(id).map_err(|e| format!("bad peer id `{id}`: {e}"))?;
        let address = addr.parse().map_err(|e| format!("peer {id}: {e}"))?;
        Ok(PeerArg { id, address })
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

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`), with colours only when stderr
/// is a terminal.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Usage error: `program: what` on stderr, exit [`EXIT_USAGE`].
pub fn usage(program: &str, what: impl std::fmt::Display) -> ExitCode {
    eprintln!("{program}: {what}");
    ExitCode::from(EXIT_USAGE)
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
