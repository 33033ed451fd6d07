//! The cluster file: a cluster described once, in TOML, for every process and tool.
//!
//! A cluster file names every process with the address its peers reach it at, the settings
//! every process must share, and optionally where each process keeps its store. A process
//! is started from it with its id ([`crate::Config::from_cluster_file`], or `--cluster FILE
//! --id ID` on every app binary); its peers are all the other processes of the file.
//!
//! ```toml
//! # Every process of the cluster, in any order. Ids are unique, and so are addresses.
//! [[process]]
//! id = "kv-a"
//! address = "kv-a.example:7001"    # host name or IP, and port: how peers reach it
//! store = "/var/lib/ken/kv-a.db"   # optional: its store (else --store)
//! # listen = "0.0.0.0:7001"        # optional: what it binds (default: see below)
//!
//! [[process]]
//! id = "kv-b"
//! address = "[2001:db8::2]:7001"   # IPv6 in brackets
//!
//! # Settings every process must share (all optional).
//! [settings]
//! key_file = "cluster.key"         # the cluster key (`ken keygen FILE`); see SECURITY.md
//! accept_key_files = []            # older keys still accepted during a rotation
//! encrypt = false                  # encrypt peer payloads (needs key_file)
//! admit_replaced_peers = false     # admit a peer back with a new (empty) store without `ken admit`
//! stats_interval_ms = 0            # print a stats line this often (0 = never)
//!
//! [settings.fuse]                  # FUSE timing: the same in every process
//! heartbeat_ms = 200
//! t_fail_ms = 3000
//! create_timeout_ms = 3000
//!
//! [settings.tuning]                # the knobs of `ken::Tuning`; defaults in `ken::limits`
//! batch_turns_max = 1000
//! batch_bytes_max = 8388608
//! window_messages_max = 256
//! reorder_buffer_max = 1024
//! rto_initial_ms = 200
//! rto_min_ms = 20
//! rto_max_ms = 1000
//! ```
//!
//! **Torture keys.** Two more keys describe a service to `ken torture --cluster FILE`
//! (`tools/TORTURE.md`); the processes themselves ignore them:
//!
//! ```toml
//! [[process]]
//! id = "worker-1"
//! address = "127.0.0.1:7001"
//! # How ken torture starts this process. {id}, {cluster} and {store} are replaced by the
//! # process id, the cluster file ken torture writes for the run (its own ports, stores and
//! # key) and this process's store in that run. A relative program is relative to this
//! # file's directory; a bare name is looked up in PATH.
//! command = ["target/release/my-worker", "--cluster", "{cluster}", "--id", "{id}"]
//!
//! [torture]
//! finishes = false                 # true: every process exits 0 once its work is done
//! check = "./check-jobs.sh"        # run by `sh -c` after the run (else --check CMD)
//! ```
//!
//! **Standby.** A process may have a standby replica on another host (issue 18,
//! `ken::standby`): every committed batch is shipped to it and its outputs leave only once
//! the standby holds it, so a destroyed disk loses nothing a peer has seen.
//!
//! ```toml
//! [[process]]
//! id = "bank-a"
//! address = "10.0.0.1:7001"
//! # ship: where the standby listens for batches (TCP); address: the UDP address this
//! # process has once the standby is promoted (peers try it when bank-a stays quiet);
//! # store: the standby's replica (for `ken standby serve --cluster FILE --id bank-a`).
//! standby = { ship = "10.0.0.2:7101", address = "10.0.0.2:7001", store = "bank-a.standby.ken" }
//! ```
//!
//! Rules, each checked by [`ClusterFile::load`] with an error naming the line and saying what
//! to do:
//! - Unknown keys are errors (a misspelt `hearbeat_ms` is not silently ignored).
//! - `address` is `HOST:PORT`: a host name (resolved when the process starts, and again when
//!   the peer has acknowledged nothing for a while, so a peer that comes back on a new IP
//!   under the same name is found without a restart), an IPv4 address, or an IPv6 address in
//!   brackets. The port is not 0.
//! - `listen` defaults to `address` when that is an IP address, and to the unspecified
//!   address of the family the host name resolves to (`0.0.0.0:PORT` or `[::]:PORT`) when it
//!   is a name: a process cannot bind its public name.
//! - Relative paths (`store`, `key_file`, `accept_key_files`) are relative to the directory
//!   of the cluster file, not to where the process was started.
//! - The precedence of a setting: a command-line flag, then the file, then the environment
//!   variable that set it before cluster files (`KEN_FUSE_HEARTBEAT_MS`, `KEN_FUSE_T_FAIL_MS`,
//!   `KEN_FUSE_CREATE_TIMEOUT_MS`, `KEN_STATS_INTERVAL_MS`), then the default.
//!
//! `apps/deploy/cluster.example.toml` is a complete example.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ken_transport::{KeyFileError, ProcessId};
use serde::Deserialize;
use toml::Spanned;

use crate::{Config, Tuning};

/// Largest cluster file read, in bytes.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 1 << 20;

/// Why a cluster file (or a process's config from it) was refused. Nothing was started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, has a key this format does not know, or a value of the
    /// wrong type or out of range; `line` is 1-based.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The id asked for is not in the file.
    #[error("{path}: no process `{id}` in the cluster file (its processes: {known}); add a [[process]] entry with id = \"{id}\" or use one of those ids")]
    UnknownId {
        path: PathBuf,
        id: String,
        known: String,
    },
    /// Neither the file nor the caller says where the process's store is.
    #[error("{path}: process `{id}` has no store: add store = \"PATH\" to its [[process]] entry, or pass --store")]
    NoStore { path: PathBuf, id: String },
    /// The process's own address could not be turned into an address to listen on.
    #[error("{path}: cannot choose what process `{id}` listens on: {why}; add listen = \"IP:PORT\" to its [[process]] entry, or pass --listen")]
    Listen {
        path: PathBuf,
        id: String,
        why: String,
    },
    /// A key file named by the settings could not be used.
    #[error("{0}")]
    Key(#[from] KeyFileError),
}

/// A peer's address as written: a host name, an IPv4 address or a bracketed IPv6 address,
/// and a port. A name is resolved when the process starts and again when the peer stops
/// acknowledging (so a peer that moves to a new IP under the same name is found).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    /// The host as written, without brackets.
    pub host: String,
    pub port: u16,
}

impl PeerAddress {
    /// The address itself, when the host is an IP address (no resolution needed).
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Resolves it now (blocking: the system resolver), preferring IPv4 addresses when a name
    /// has both (a peer listening on `0.0.0.0` is not reached on its IPv6 address).
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Some(addr) = self.literal() {
            return Ok(addr);
        }
        pick(
            (self.host.as_str(), self.port).to_socket_addrs()?.collect(),
            &self.to_string(),
        )
    }
}

/// The address to use among those a name resolved to (IPv4 first, then the resolver's order).
pub(crate) fn pick(addrs: Vec<SocketAddr>, what: &str) -> std::io::Result<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{what} resolves to no address"),
            )
        })
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for PeerAddress {
    type Err = String;

    /// Parses `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`; the error says what to write.
    fn from_str(s: &str) -> Result<PeerAddress, String> {
        let example = "write HOST:PORT, for example kv-a.example:7001, 10.0.0.5:7001 or [::1]:7001";
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("bad address `{s}`: {example}"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "bad address `{s}`: `{host}` in brackets is not an IPv6 address"
                ));
            }
            (host, port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("bad address `{s}`: no port; {example}"))?;
            if host.contains(':') {
                return Err(format!(
                    "bad address `{s}`: an IPv6 address goes in brackets, as [{host}]:{port}"
                ));
            }
            (host, port)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bad address `{s}`: port `{port}` is not a number 1-65535"))?;
        if port == 0 {
            return Err(format!(
                "bad address `{s}`: port 0 cannot be reached; give the port the process listens on"
            ));
        }
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if host.parse::<IpAddr>().is_err() && !valid_name {
            return Err(format!(
                "bad address `{s}`: `{host}` is neither an IP address nor a host name; {example}"
            ));
        }
        Ok(PeerAddress {
            host: host.to_string(),
            port,
        })
    }
}

/// One `[[process]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    pub id: ProcessId,
    /// How its peers reach it.
    pub address: PeerAddress,
    /// What it binds, when the file says.
    pub listen: Option<SocketAddr>,
    /// Its store, resolved against the file's directory, when the file says.
    pub store: Option<PathBuf>,
    /// The line of its `id`, for messages.
    pub line: usize,
    /// How `ken torture --cluster` starts it (program and arguments, placeholders not yet
    /// replaced; module docs), when the file says. Never empty.
    pub command: Option<Vec<String>>,
    /// Its standby, when the file declares one (module docs, issue 18).
    pub standby: Option<StandbyEntry>,
}

/// `standby = { ship = .., address = .., store = .. }` of a `[[process]]`: where the
/// process's standby replica runs (`crate::standby`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyEntry {
    /// Where the standby listens for batches (TCP), `HOST:PORT`: the primary ships there.
    pub ship: PeerAddress,
    /// The UDP address the process has once its standby is promoted: peers try it when the
    /// process stays quiet.
    pub address: PeerAddress,
    /// The standby's replica store (for `ken standby serve --cluster`), resolved against
    /// the file's directory.
    pub store: Option<PathBuf>,
}

/// `[torture]`: how `ken torture --cluster` treats the service (module docs). The processes
/// ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TortureSettings {
    /// Every process exits 0 on its own once its work is done (else they run until killed,
    /// and quiescence is every outbox empty and no task pending).
    pub finishes: bool,
    /// The check command (`sh -c`), run after the run with the processes dead.
    pub check: Option<String>,
}

/// The FUSE timing of `[settings.fuse]`; `None`: not in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuseSettings {
    pub heartbeat: Option<Duration>,
    pub t_fail: Option<Duration>,
    pub create_timeout: Option<Duration>,
}

/// `[settings]`: what every process of the cluster shares. `None`/empty: not in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The cluster key file, resolved against the file's directory.
    pub key_file: Option<PathBuf>,
    /// Older keys still accepted, resolved likewise.
    pub accept_key_files: Vec<PathBuf>,
    pub encrypt: bool,
    /// `admit_replaced_peers` ([`Tuning::admit_replaced_peers`]).
    pub admit_replaced_peers: bool,
    /// `stats_interval_ms`; `Some(ZERO)` turns stats off even if the environment sets them.
    pub stats_interval: Option<Duration>,
    pub fuse: FuseSettings,
    /// `[settings.tuning]` applied to the defaults (FUSE timing included), when present.
    pub tuning: TuningSettings,
}

/// `[settings.tuning]`: the knobs of [`Tuning`] the file sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningSettings {
    pub batch_turns_max: Option<u32>,
    pub batch_bytes_max: Option<usize>,
    pub window_messages_max: Option<usize>,
    pub reorder_buffer_max: Option<u64>,
    pub rto_initial_ms: Option<u64>,
    pub rto_min_ms: Option<u64>,
    pub rto_max_ms: Option<u64>,
}

impl Settings {
    /// Applies the file's tuning and FUSE timing to `tuning`.
    pub fn apply(&self, tuning: &mut Tuning) {
        let t = &self.tuning;
        let ms = Duration::from_millis;
        if let Some(v) = t.batch_turns_max {
            tuning.batch_turns_max = v;
        }
        if let Some(v) = t.batch_bytes_max {
            tuning.batch_bytes_max = v;
        }
        if let Some(v) = t.window_messages_max {
            tuning.window_messages_max = v;
        }
        if let Some(v) = t.reorder_buffer_max {
            tuning.reorder_buffer_max = v;
        }
        if let Some(v) = t.rto_initial_ms {
            tuning.rto_initial = ms(v);
        }
        if let Some(v) = t.rto_min_ms {
            tuning.rto_min = ms(v);
        }
        if let Some(v) = t.rto_max_ms {
            tuning.rto_max = ms(v);
        }
        if let Some(v) = self.fuse.heartbeat {
            tuning.fuse_heartbeat = v;
        }
        if let Some(v) = self.fuse.t_fail {
            tuning.fuse_t_fail = v;
        }
        if let Some(v) = self.fuse.create_timeout {
            tuning.fuse_create_timeout = v;
        }
    }
}

/// A loaded, validated cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Every process, in file order.
    pub processes: Vec<ProcessEntry>,
    pub settings: Settings,
    /// `[torture]`, read by `ken torture --cluster` only.
    pub torture: TortureSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    process: Vec<RawProcess>,
    #[serde(default)]
    settings: Option<RawSettings>,
    #[serde(default)]
    torture: Option<RawTorture>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTorture {
    #[serde(default)]
    finishes: bool,
    check: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    id: Spanned<String>,
    address: Spanned<String>,
    listen: Option<Spanned<String>>,
    store: Option<String>,
    command: Option<Spanned<Vec<String>>>,
    standby: Option<Spanned<RawStandby>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStandby {
    ship: String,
    address: String,
    store: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    key_file: Option<String>,
    #[serde(default)]
    accept_key_files: Vec<String>,
    #[serde(default)]
    encrypt: bool,
    #[serde(default)]
    admit_replaced_peers: bool,
    stats_interval_ms: Option<u64>,
    fuse: Option<RawFuse>,
    tuning: Option<Spanned<TuningSettings>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFuse {
    heartbeat_ms: Option<Spanned<u64>>,
    t_fail_ms: Option<Spanned<u64>>,
    create_timeout_ms: Option<Spanned<u64>>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl ClusterFile {
    /// Reads and validates the cluster file at `path` (module docs: the format and rules).
    ///
    /// # Errors
    /// The first problem found, naming the line and saying what to do.
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterError> {
        let read = |source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > CLUSTER_FILE_BYTES_MAX {
            return Err(read(std::io::Error::other(format!(
                "{} bytes; a cluster file is at most {CLUSTER_FILE_BYTES_MAX}",
                meta.len()
            ))));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        ClusterFile::parse(&text, path)
    }

    /// Validates `text` as the cluster file at `path` (relative paths in it are resolved
    /// against `path`'s directory).
    ///
    /// # Errors
    /// As [`ClusterFile::load`].
    pub fn parse(text: &str, path: &Path) -> Result<ClusterFile, ClusterError> {
        let invalid = |line: usize, message: String| ClusterError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(line, e.message().trim().to_string())
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        if raw.process.is_empty() {
            return Err(invalid(
                1,
                "no processes: add one [[process]] entry (id, address) per process".into(),
            ));
        }
        let mut processes = Vec::with_capacity(raw.process.len());
        let mut ids: HashMap<ProcessId, usize> = HashMap::new();
        let mut addresses: HashMap<String, (usize, String)> = HashMap::new();
        for p in raw.process {
            let line = line_of(text, p.id.span().start);
            let id = ProcessId::new(p.id.get_ref().as_str())
                .map_err(|e| invalid(line, format!("bad process id `{}`: {e}", p.id.get_ref())))?;
            if let Some(first) = ids.insert(id.clone(), line) {
                return Err(invalid(
                    line,
                    format!("process id `{id}` is given twice (first on line {first}); give each process its own id"),
                ));
            }
            let addr_line = line_of(text, p.address.span().start);
            let address: PeerAddress = p
                .address
                .get_ref()
                .parse()
                .map_err(|e| invalid(addr_line, e))?;
            let key = address.to_string().to_ascii_lowercase();
            if let Some((first, other)) = addresses.insert(key, (addr_line, id.to_string())) {
                return Err(invalid(
                    addr_line,
                    format!("address {address} of `{id}` is also the address of `{other}` (line {first}); each process needs its own address"),
                ));
            }
            let listen = match p.listen {
                None => None,
                Some(l) => Some(l.get_ref().parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        line_of(text, l.span().start),
                        format!(
                            "bad listen address `{}`: write IP:PORT, for example 0.0.0.0:7001 or [::]:7001",
                            l.get_ref()
                        ),
                    )
                })?),
            };
            if let Some(c) = &p.command {
                if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                    return Err(invalid(
                        line_of(text, c.span().start),
                        format!("process `{id}`: command is empty: give the program and its arguments, for example [\"target/release/my-app\", \"--cluster\", \"{{cluster}}\", \"--id\", \"{{id}}\"]"),
                    ));
                }
            }
            let standby = match p.standby {
                None => None,
                Some(sb) => {
                    let at = line_of(text, sb.span().start);
                    let sb = sb.into_inner();
                    let ship: PeerAddress = sb.ship.parse().map_err(|e| {
                        invalid(at, format!("process `{id}`: standby ship address: {e}"))
                    })?;
                    let standby_address: PeerAddress = sb.address.parse().map_err(|e| {
                        invalid(at, format!("process `{id}`: standby address: {e}"))
                    })?;
                    if standby_address == address {
                        return Err(invalid(
                            at,
                            format!("process `{id}`: its standby's address is its own address {address}; a standby runs on another host (or port)"),
                        ));
                    }
                    Some(StandbyEntry {
                        ship,
                        address: standby_address,
                        store: sb.store.as_deref().map(resolve),
                    })
                }
            };
            processes.push(ProcessEntry {
                standby,
                id,
                address,
                listen,
                store: p.store.as_deref().map(resolve),
                line,
                command: p.command.map(Spanned::into_inner),
            });
        }
        let settings = match raw.settings {
            None => Settings::default(),
            Some(s) => {
                let mut fuse = FuseSettings::default();
                if let Some(f) = s.fuse {
                    let ms = |v: Option<Spanned<u64>>, name: &str| match v {
                        None => Ok(None),
                        Some(v) if *v.get_ref() == 0 => Err(invalid(
                            line_of(text, v.span().start),
                            format!("{name} = 0: give a positive number of milliseconds"),
                        )),
                        Some(v) => Ok(Some(Duration::from_millis(*v.get_ref()))),
                    };
                    fuse.heartbeat = ms(f.heartbeat_ms, "heartbeat_ms")?;
                    fuse.t_fail = ms(f.t_fail_ms, "t_fail_ms")?;
                    fuse.create_timeout = ms(f.create_timeout_ms, "create_timeout_ms")?;
                }
                if s.encrypt && s.key_file.is_none() {
                    return Err(invalid(
                        1,
                        "[settings] encrypt = true needs key_file = \"PATH\" (make a key with `ken keygen PATH`)".into(),
                    ));
                }
                let settings = Settings {
                    key_file: s.key_file.as_deref().map(resolve),
                    accept_key_files: s.accept_key_files.iter().map(|p| resolve(p)).collect(),
                    encrypt: s.encrypt,
                    admit_replaced_peers: s.admit_replaced_peers,
                    stats_interval: s.stats_interval_ms.map(Duration::from_millis),
                    fuse,
                    tuning: s
                        .tuning
                        .as_ref()
                        .map(|t| t.get_ref().clone())
                        .unwrap_or_default(),
                };
                let mut tuning = Tuning::default();
                settings.apply(&mut tuning);
                if let Err(e) = tuning.check() {
                    let line = s
                        .tuning
                        .as_ref()
                        .map_or(1, |t| line_of(text, t.span().start));
                    return Err(invalid(
                        line,
                        format!("the settings do not hold together: {e}"),
                    ));
                }
                settings
            }
        };
        let torture = raw
            .torture
            .map_or_else(TortureSettings::default, |t| TortureSettings {
                finishes: t.finishes,
                check: t.check,
            });
        Ok(ClusterFile {
            path: path.to_path_buf(),
            processes,
            settings,
            torture,
        })
    }

    /// The entry of process `id`.
    ///
    /// # Errors
    /// [`ClusterError::UnknownId`], listing the ids the file has.
    pub fn process(&self, id: &ProcessId) -> Result<&ProcessEntry, ClusterError> {
        self.processes
            .iter()
            .find(|p| p.id == *id)
            .ok_or_else(|| ClusterError::UnknownId {
                path: self.path.clone(),
                id: id.to_string(),
                known: self
                    .processes
                    .iter()
                    .map(|p| p.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Every process but `id`, with its address: the peers of `id`.
    pub fn peers_of(&self, id: &ProcessId) -> BTreeMap<ProcessId, PeerAddress> {
        self.processes
            .iter()
            .filter(|p| p.id != *id)
            .map(|p| (p.id.clone(), p.address.clone()))
            .collect()
    }

    /// What process `id` listens on (module docs: the default).
    ///
    /// # Errors
    /// [`ClusterError::UnknownId`]; [`ClusterError::Listen`] if its address is a name that
    /// does not resolve now.
    pub fn listen_of(&self, id: &ProcessId) -> Result<SocketAddr, ClusterError> {
        let entry = self.process(id)?;
        if let Some(listen) = entry.listen {
            return Ok(listen);
        }
        if let Some(addr) = entry.address.literal() {
            return Ok(addr);
        }
        let resolved = entry.address.resolve().map_err(|e| ClusterError::Listen {
            path: self.path.clone(),
            id: id.to_string(),
            why: format!("its address {} does not resolve ({e})", entry.address),
        })?;
        let any: IpAddr = if resolved.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        Ok(SocketAddr::new(any, entry.address.port))
    }

    /// The runtime config of process `id`: its listen address, its store (`store`, else the
    /// file's), every other process as a peer (names resolved now where they resolve; the
    /// others later, [`Config::add_peer`]), the key files, encryption, stats interval and
    /// tuning of `[settings]` (environment variables only where the file is silent).
    ///
    /// # Errors
    /// An unknown id, no store, an unusable listen address or key file.
    pub fn config(&self, id: &ProcessId, store: Option<PathBuf>) -> Result<Config, ClusterError> {
        let entry = self.process(id)?;
        let store = store
            .or_else(|| entry.store.clone())
            .ok_or_else(|| ClusterError::NoStore {
                path: self.path.clone(),
                id: id.to_string(),
            })?;
        let listen = self.listen_of(id)?;
        let mut config = Config::new(id.clone(), listen, store);
        for (peer, address) in self.peers_of(id) {
            config.add_peer(peer, address);
        }
        for p in &self.processes {
            match &p.standby {
                Some(sb) if p.id == *id => config.standby = Some(sb.ship.to_string()),
                Some(sb) => {
                    config
                        .peer_standbys
                        .insert(p.id.clone(), sb.address.clone());
                }
                None => {}
            }
        }
        self.apply_settings(&mut config)?;
        Ok(config)
    }

    /// Applies `[settings]` to `config`: key files, encryption, stats interval, tuning.
    /// FUSE timing and the stats interval fall back to their environment variables where
    /// the file is silent (read now), and [`Config::read_env`] is turned off.
    ///
    /// # Errors
    /// A key file that cannot be used; an environment variable that is not a number.
    pub fn apply_settings(&self, config: &mut Config) -> Result<(), ClusterError> {
        let s = &self.settings;
        if let Some(key) = &s.key_file {
            config.key = Some(ken_transport::ClusterKey::load(key)?);
        }
        for k in &s.accept_key_files {
            config
                .accepted_keys
                .push(ken_transport::ClusterKey::load(k)?);
        }
        config.encrypt |= s.encrypt;
        config
            .tuning
            .apply_env()
            .map_err(|e| ClusterError::Invalid {
                path: self.path.clone(),
                line: 1,
                message: format!("{e} (an environment variable; the file's [settings.fuse] takes precedence over it when set)"),
            })?;
        s.apply(&mut config.tuning);
        config.tuning.admit_replaced_peers |= s.admit_replaced_peers;
        config.stats_interval = s
            .stats_interval
            .or_else(crate::driver::stats_interval_from_env);
        config.read_env = false;
        Ok(())
    }
}

impl Config {
    /// The config of process `id` from the cluster file at `path`: see
    /// [`ClusterFile::config`] (the store must be in the file).
    ///
    /// # Errors
    /// As [`ClusterFile::load`] and [`ClusterFile::config`].
    pub fn from_cluster_file(path: &Path, id: &ProcessId) -> Result<Config, ClusterError> {
        ClusterFile::load(path)?.config(id, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterFile, ClusterError> {
        ClusterFile::parse(text, Path::new("/etc/ken/cluster.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
[[process]]
id = "a"
address = "127.0.0.1:7001"
store = "a.db"

[[process]]
id = "b"
address = "kv-b.example:7002"
store = "/var/lib/ken/b.db"

[[process]]
id = "c"
address = "[::1]:7003"
listen = "[::]:7003"

[settings]
key_file = "cluster.key"
accept_key_files = ["old.key"]
encrypt = true
stats_interval_ms = 500

[settings.fuse]
heartbeat_ms = 100
t_fail_ms = 1000

[settings.tuning]
rto_max_ms = 2000
"#;

    #[test]
    fn a_good_file_is_read_whole() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.processes.len(), 3);
        let b = &f.processes[1];
        assert_eq!(b.address.host, "kv-b.example");
        assert_eq!(b.address.port, 7002);
        assert_eq!(b.line, 8);
        assert_eq!(
            f.processes[0].store.as_deref(),
            Some(Path::new("/etc/ken/a.db"))
        );
        assert_eq!(b.store.as_deref(), Some(Path::new("/var/lib/ken/b.db")));
        let c = &f.processes[2];
        assert_eq!(c.address.literal(), Some("[::1]:7003".parse().unwrap()));
        assert_eq!(c.address.to_string(), "[::1]:7003");
        assert_eq!(
            f.listen_of(&ProcessId::new("c").unwrap()).unwrap(),
            "[::]:7003".parse().unwrap()
        );
        assert_eq!(
            f.listen_of(&ProcessId::new("a").unwrap()).unwrap(),
            "127.0.0.1:7001".parse().unwrap()
        );
        let s = &f.settings;
        assert_eq!(
            s.key_file.as_deref(),
            Some(Path::new("/etc/ken/cluster.key"))
        );
        assert_eq!(s.accept_key_files, vec![PathBuf::from("/etc/ken/old.key")]);
        assert!(s.encrypt);
        assert_eq!(s.stats_interval, Some(Duration::from_millis(500)));
        let mut t = Tuning::default();
        s.apply(&mut t);
        assert_eq!(t.fuse_heartbeat, Duration::from_millis(100));
        assert_eq!(t.fuse_t_fail, Duration::from_millis(1000));
        assert_eq!(t.fuse_create_timeout, Tuning::default().fuse_create_timeout);
        assert_eq!(t.rto_max, Duration::from_secs(2));
        let peers = f.peers_of(&ProcessId::new("a").unwrap());
        assert_eq!(
            peers.keys().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../apps/deploy/cluster.example.toml");
        let f = parse(text).unwrap();
        assert_eq!(f.processes.len(), 3);
        assert_eq!(f.processes[2].address.to_string(), "[2001:db8::13]:7001");
        assert_eq!(f.settings.fuse.t_fail, Some(Duration::from_secs(3)));
    }

    #[test]
    fn duplicate_ids_name_both_lines() {
        let e = err("[[process]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[process]]\nid = \"a\"\naddress = \"127.0.0.1:2\"\n");
        assert!(
            e.starts_with(
                "/etc/ken/cluster.toml:5: process id `a` is given twice (first on line 2)"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let e = err("[[process]]\nid = \"a\"\naddress = \"Host:1\"\n[[process]]\nid = \"b\"\naddress = \"host:1\"\n");
        assert!(
            e.contains(":6: address host:1 of `b` is also the address of `a` (line 3)"),
            "{e}"
        );
    }

    #[test]
    fn bad_addresses_say_what_to_write() {
        for (addr, says) in [
            ("::1:7001", "goes in brackets, as [::1]:7001"),
            ("host", "no port"),
            ("host:0", "port 0"),
            ("host:99999", "not a number 1-65535"),
            ("[host]:1", "not an IPv6 address"),
            ("bad host:1", "neither an IP address nor a host name"),
        ] {
            let e = err(&format!("[[process]]\nid = \"a\"\naddress = \"{addr}\"\n"));
            assert!(
                e.contains(":3: bad address") && e.contains(says),
                "{addr}: {e}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_ids_are_named() {
        let e =
            err("[[process]]\nid = \"a\"\naddress = \"h:1\"\n[settings.fuse]\nhearbeat_ms = 5\n");
        assert!(e.contains(":5:") && e.contains("hearbeat_ms"), "{e}");
        let f = parse("[[process]]\nid = \"a\"\naddress = \"h:1\"\n").unwrap();
        let e = f
            .process(&ProcessId::new("z").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no process `z`") && e.contains("(its processes: a)"),
            "{e}"
        );
        let e = f
            .config(&ProcessId::new("a").unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no store"), "{e}");
    }

    #[test]
    fn settings_that_do_not_hold_together_are_refused() {
        let base = "[[process]]\nid = \"a\"\naddress = \"h:1\"\n";
        let e = err(&format!(
            "{base}[settings.fuse]\nheartbeat_ms = 600\nt_fail_ms = 1000\n"
        ));
        assert!(e.contains("two heartbeats per T_fail"), "{e}");
        let e = err(&format!("{base}[settings.fuse]\nt_fail_ms = 0\n"));
        assert!(e.contains(":5: t_fail_ms = 0"), "{e}");
        let e = err(&format!("{base}[settings]\nencrypt = true\n"));
        assert!(e.contains("needs key_file"), "{e}");
        let e = err("");
        assert!(e.contains("no processes"), "{e}");
    }

    #[test]
    fn torture_keys_are_read_and_checked() {
        let f = parse(
            "[[process]]\nid = \"a\"\naddress = \"h:1\"\ncommand = [\"bin/a\", \"--id\", \"{id}\"]\n\
             [[process]]\nid = \"b\"\naddress = \"h:2\"\n\
             [torture]\nfinishes = true\ncheck = \"./check.sh\"\n",
        )
        .unwrap();
        assert_eq!(
            f.processes[0].command.as_deref(),
            Some(&["bin/a".to_string(), "--id".into(), "{id}".into()][..])
        );
        assert_eq!(f.processes[1].command, None);
        assert!(f.torture.finishes);
        assert_eq!(f.torture.check.as_deref(), Some("./check.sh"));
        let none = parse("[[process]]\nid = \"a\"\naddress = \"h:1\"\n").unwrap();
        assert_eq!(none.torture, TortureSettings::default());
        let e = err("[[process]]\nid = \"a\"\naddress = \"h:1\"\ncommand = []\n");
        assert!(e.contains(":4: process `a`: command is empty"), "{e}");
        let e = err("[[process]]\nid = \"a\"\naddress = \"h:1\"\n[torture]\nfinish = true\n");
        assert!(e.contains(":5:") && e.contains("finish"), "{e}");
    }

    #[test]
    fn a_config_comes_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = ken_transport::ClusterKey::write_new(&dir.path().join("k.key")).unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\nstore = \"a.db\"\n\
             [[process]]\nid = \"b\"\naddress = \"127.0.0.1:7002\"\n\
             [settings]\nkey_file = \"k.key\"\nstats_interval_ms = 0\n",
        )
        .unwrap();
        let c = Config::from_cluster_file(&path, &ProcessId::new("a").unwrap()).unwrap();
        assert_eq!(c.store, dir.path().join("a.db"));
        assert_eq!(c.listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(c.peers.len(), 1);
        assert_eq!(
            c.peers[&ProcessId::new("b").unwrap()],
            "127.0.0.1:7002".parse().unwrap()
        );
        assert_eq!(c.key.as_ref().map(|k| k.id()), Some(key.id()));
        assert_eq!(c.stats_interval, Some(Duration::ZERO));
        assert!(!c.read_env);
    }
}
