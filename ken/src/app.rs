//! The glue every Ken service needs around its handler, so that an application's `main` is
//! a few lines: its command line ([`ProcessArgs`]: this process's id, a cluster file or
//! `--listen`/`--store`/`--peer` flags, the cluster settings, each flag falling back to the
//! cluster file and then to the environment), logging ([`init_tracing`]), running to an
//! exit code ([`run_to_exit`]: 0 finished, 1 stopped with the error on stderr, 2 a usage
//! error), `migrate --dry-run` for upgrades ([`MigrateArgs`]), and a client whose identity
//! and unanswered request survive the client's own crash ([`DurableClient`]).
//!
//! A whole service `main` (the tutorial, ken/TUTORIAL.md, builds one):
//!
//! ```no_run
//! # use ken::{Handler, Input, Turn};
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] struct S;
//! # struct Counter;
//! # impl Handler for Counter {
//! #     const APP: &'static str = "counter";
//! #     type State = S; type Message = (); type Request = (); type Reply = ();
//! #     fn on_turn(&self, _: &mut S, _: &mut Turn<'_, ()>, _: Input<()>) {}
//! # }
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     process: ken::app::ProcessArgs,
//!     /// Other processes, when there is no cluster file: ID=HOST:PORT.
//!     #[arg(long = "peer")]
//!     peers: Vec<ken::app::PeerArg>,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     ken::app::init_tracing();
//!     let args = Args::parse();
//!     match args.process.config(&args.peers) {
//!         Ok(config) => ken::app::run_to_exit(config, Counter),
//!         Err(e) => ken::app::usage("counter", e),
//!     }
//! }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::{BlockingClient, ClientError, ClientId, ClientOptions};
use crate::ProcessId;

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
    /// one's peers. Format: the rustdoc of `crate::cluster`; an example:
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
    /// Ship every committed batch to the standby listening (TCP) at HOST:PORT and release a
    /// batch's outputs only once it holds it (with --cluster: defaults to the file's
    /// `standby.ship`). Start the standby with `ken standby serve`.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "no_standby")]
    pub standby: Option<String>,
    /// Run without a standby even though the cluster file declares one: the process alone
    /// holds its outputs (a promoted standby before its new standby is attached, or an
    /// operator's decision). Logged loudly.
    #[arg(long)]
    pub no_standby: bool,
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
    /// default 1024; an existing store keeps its own). Smaller pages write less per commit
    /// and cost more for large values: a pingpong turn wrote 7.6 KB to the WAL at 1024
    /// against 27.7 KB at 4096, at the same round trip (README, "Numbers").
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
    pub fn apply(&self, config: &mut crate::Config) -> Result<(), String> {
        if let Some(path) = &self.key_file {
            config.key = Some(crate::ClusterKey::load(path).map_err(|e| e.to_string())?);
        }
        for path in &self.accept_key_file {
            config
                .accepted_keys
                .push(crate::ClusterKey::load(path).map_err(|e| e.to_string())?);
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
    pub fn config(&self, peers: &[PeerArg]) -> Result<crate::Config, String> {
        let mut config = match &self.cluster {
            Some(path) => {
                let file = crate::ClusterFile::load(path).map_err(|e| e.to_string())?;
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
                let mut config = crate::Config::new(self.id.clone(), listen, store);
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
        if let Some(standby) = &self.standby {
            config.standby = Some(standby.clone());
        }
        if self.no_standby {
            if let Some(declared) = config.standby.take() {
                eprintln!(
                    "warning: --no-standby: running WITHOUT the standby at {declared} that the cluster \
                     file declares, for this run only and not on the record; a destroyed disk here \
                     loses what this process commits (to run alone on the record: ken standby detach)"
                );
                config.standby_skipped = Some(declared);
            }
        }
        config.metrics = self.metrics;
        config.ready_line = true;
        Ok(config)
    }
}

/// Checks the `--peer` flags against this process and the peers it has already (from a
/// cluster file): none names this process, none is given twice, and no two processes share
/// an address. One line saying what to fix, or `Ok`.
pub fn check_peers(config: &crate::Config, peers: &[PeerArg]) -> Result<(), String> {
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
    pub address: crate::PeerAddress,
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
/// with this binary would migrate (`crate::upgrade::dry_run`), without writing. The migration
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
pub fn migrate<H: crate::Handler>(
    args: &MigrateArgs,
    make: impl FnOnce(ProcessId) -> H,
) -> ExitCode {
    if !args.dry_run {
        eprintln!(
            "{}: migrate needs --dry-run: the migration itself runs when the process starts on \
             the store",
            H::APP
        );
        return ExitCode::from(2);
    }
    let id = match ken_store::Reader::open(&args.store).and_then(|r| {
        r.meta()
            .map_err(|e| ken_store::OpenError::Corrupted(corrupted(e)))
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
    match crate::upgrade::dry_run(&args.store, &make(id)) {
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

fn corrupted(e: ken_store::ReadError) -> ken_store::Corrupted {
    match e {
        ken_store::ReadError::Corrupted(c) => c,
        other => ken_store::Corrupted {
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
pub fn run_to_exit<H: crate::Handler>(config: crate::Config, handler: H) -> std::process::ExitCode {
    match crate::run(config.with_env_switches(), handler) {
        Ok(crate::Exit::Finished { .. }) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// A client that survives its own crash.

/// What a [`DurableClient`] keeps in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    id: [u8; 16],
    next_request: u64,
    pending: Option<crate::client::PendingRequest>,
}

/// First bytes of a [`DurableClient`] file: `ken-client` and the format version 1.
const CLIENT_FILE_MAGIC: &[u8; 11] = b"ken-client\x01";

/// Why a [`DurableClient`] could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableClientError {
    /// The request itself failed: see [`ClientError`] for whether it may have been
    /// applied. A timeout or `NotListening` leaves it pending ([`DurableClient::pending`]):
    /// [`DurableClient::resume`] retries it with its number.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An earlier request is still unanswered (perhaps from before a crash): resume it
    /// first ([`DurableClient::resume`]), so that it is applied at most once and its answer
    /// is not lost.
    #[error("request {request_no} of this client is still unanswered (perhaps from before a crash): resume it first")]
    Pending { request_no: u64 },
    /// The client file could not be read or written.
    #[error("client file {path}: {error}")]
    File { path: PathBuf, error: String },
}

/// A blocking client whose identity (its [`ClientId`]), request numbering and unanswered
/// request live in a small file, so that a client program that crashes (SIGKILL included)
/// and starts again is the same client: its unanswered request is sent again with the same
/// number and first-sent time (applied at most once in all, and its reply is the answer),
/// and its next requests continue the numbering. Without this a restarted client is a new
/// client, and a request that was applied just before the crash is applied again if the
/// program sends it again.
///
/// Each new request is written to the file (and fsynced) before it is first sent, and
/// cleared once answered. One file per client program instance: two programs sharing a
/// file would share an identity.
///
/// ```no_run
/// # fn demo(server: std::net::SocketAddr) -> Result<(), ken::app::DurableClientError> {
/// let mut client = ken::app::DurableClient::<String, u64>::open("jobs-client.ken".as_ref())?;
/// if let Some(reply) = client.resume(server) {
///     println!("the request before the crash was answered: {}", reply?);
/// }
/// let n = client.call(server, &"job 7".to_string())?;
/// # let _ = n; Ok(()) }
/// ```
pub struct DurableClient<Q, R> {
    path: PathBuf,
    client: BlockingClient<Q, R>,
    record: ClientRecord,
}

impl<Q, R> std::fmt::Debug for DurableClient<Q, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableClient")
            .field("path", &self.path)
            .field("id", &ClientId(self.record.id))
            .field("next_request", &self.record.next_request)
            .field(
                "pending",
                &self.record.pending.as_ref().map(|p| p.request_no),
            )
            .finish()
    }
}

impl<Q: Serialize, R: DeserializeOwned> DurableClient<Q, R> {
    /// Opens the client file at `path`, or creates it with a new random identity (written
    /// before this returns). Anonymous: for servers without a cluster key.
    pub fn open(path: &Path) -> Result<Self, DurableClientError> {
        Self::open_with(path, None, ClientOptions::default())
    }

    /// As [`DurableClient::open`], speaking as the client of `credential` (its id is the
    /// credential's; a file made with another identity is refused) and with `options`.
    pub fn open_with(
        path: &Path,
        credential: Option<crate::ClientCredential>,
        options: ClientOptions,
    ) -> Result<Self, DurableClientError> {
        let file_err = |error: String| DurableClientError::File {
            path: path.to_path_buf(),
            error,
        };
        let record = match std::fs::read(path) {
            Ok(bytes) => decode_client_file(&bytes).map_err(file_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = credential
                    .as_ref()
                    .map_or_else(|| ClientId::random().0, |c| c.id);
                let record = ClientRecord {
                    id,
                    next_request: 1,
                    pending: None,
                };
                write_client_file(path, &record).map_err(file_err)?;
                record
            }
            Err(e) => return Err(file_err(e.to_string())),
        };
        if let Some(c) = &credential {
            if c.id != record.id {
                return Err(file_err(format!(
                    "it holds the identity {}, not the credential's {}: use the file made \
                     with this credential, or another path",
                    ClientId(record.id),
                    ClientId(c.id)
                )));
            }
        }
        let mut client = match credential {
            Some(c) => BlockingClient::with_credential(c, record.next_request, options)?,
            None => BlockingClient::with_id(ClientId(record.id), record.next_request, options)?,
        };
        if let Some(p) = &record.pending {
            client.restore(p.clone());
        }
        Ok(DurableClient {
            path: path.to_path_buf(),
            client,
            record,
        })
    }

    /// This client's identity.
    pub fn id(&self) -> ClientId {
        ClientId(self.record.id)
    }

    /// The number of the unanswered request, if there is one (perhaps sent by the life
    /// before a crash).
    pub fn pending(&self) -> Option<u64> {
        self.record.pending.as_ref().map(|p| p.request_no)
    }

    /// Sends the unanswered request again, if there is one, with its number: `None` if
    /// there was none, else its answer (decoded as `R`; the request is applied at most
    /// once in all). It stays pending after a timeout or `NotListening`.
    pub fn resume(&mut self, server: SocketAddr) -> Option<Result<R, DurableClientError>> {
        self.record.pending.as_ref()?;
        let result = self.client.retry_last(server);
        Some(self.finish(result))
    }

    /// Sends a new request and waits for its answer. The request is recorded in the file
    /// before it is first sent; see [`DurableClient::resume`] for a request left pending.
    ///
    /// # Errors
    /// [`DurableClientError::Pending`] if an earlier request is unanswered (nothing sent).
    pub fn call(&mut self, server: SocketAddr, request: &Q) -> Result<R, DurableClientError> {
        if let Some(p) = &self.record.pending {
            return Err(DurableClientError::Pending {
                request_no: p.request_no,
            });
        }
        let pending = self.client.prepare(request)?;
        self.record.next_request = pending.request_no + 1;
        self.record.pending = Some(pending);
        self.save()?;
        let result = self.client.retry_last(server);
        self.finish(result)
    }

    /// Clears the pending request once the server answered it (whatever the answer).
    fn finish(&mut self, result: Result<R, ClientError>) -> Result<R, DurableClientError> {
        let answered = !matches!(
            result,
            Err(ClientError::Timeout { .. })
                | Err(ClientError::NotListening { .. })
                | Err(ClientError::Io(_))
        );
        if answered {
            self.record.pending = None;
            self.save()?;
        }
        Ok(result?)
    }

    fn save(&self) -> Result<(), DurableClientError> {
        write_client_file(&self.path, &self.record).map_err(|error| DurableClientError::File {
            path: self.path.clone(),
            error,
        })
    }
}

fn decode_client_file(bytes: &[u8]) -> Result<ClientRecord, String> {
    let body = bytes.strip_prefix(&CLIENT_FILE_MAGIC[..]).ok_or(
        "not a Ken client file (wrong first bytes): give the path of a file this client made, \
         or a new path",
    )?;
    if body.len() < 4 {
        return Err("truncated: remove it to start as a new client".into());
    }
    let (body, crc) = body.split_at(body.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("checksum mismatch (damaged): remove it to start as a new client".into());
    }
    ken_store::codec::decode(body).map_err(|e| format!("does not decode ({e})"))
}

/// Writes the record durably and atomically: a temporary file beside it, fsynced, renamed
/// over it, and the directory fsynced.
fn write_client_file(path: &Path, record: &ClientRecord) -> Result<(), String> {
    use std::io::Write;
    let body = ken_store::codec::encode(record);
    let mut bytes = CLIENT_FILE_MAGIC.to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename into place: {e}"))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
