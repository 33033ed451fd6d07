//! `ken fuse-node`: one member of FUSE groups, as a real process, for `ken bench fuse` and the
//! real-process FUSE tests (`tools/tests/it/fuse.rs`).
//!
//! The handler ([`FuseNode`]) creates `--create` groups of `--members` on the first start of
//! its store, `--create-per-turn` per turn every `--create-interval-ms` (so ten thousand
//! groups do not leave as one burst of datagrams). How many it created is in its root state
//! and the next batch is a durable timer, so a restart continues the creation and never
//! creates a group twice. Every group it created is in table [`CREATED_TABLE`].
//!
//! Every notification it hears is recorded in table [`HEARD_TABLE`] (key: the group's 16
//! bytes, value: [`Heard`], the count of notifications for it and when the first came; a
//! count above 1 would be a FUSE bug) and printed, after the turn commits, as one line on
//! standard output:
//!
//! ```text
//! {"event":"fuse_failure","id":"n1","group":"g-1f..","at_ms":1700000000123,"count":1}
//! ```
//!
//! `at_ms` is `Turn::now` of the notification turn (wall clock, ms since the epoch). Other
//! lines: `{"event":"created","id":..,"groups":N,"at_ms":..}` once all its groups are
//! created, `{"event":"signalled","id":..,"groups":N,"at_ms":..}` when it signals them.
//!
//! Signals: `--signal-after-ms MS` signals every group this node created MS after the last
//! was created (a durable timer); a client request `signal` (any `ken::Client`) does the same
//! at once. The request path exists for tests that must arm network faults first (the reply
//! may be lost with everything else the node sends; the `signalled` line says it happened).
//!
//! The turn API does not tell a handler when its groups become `Live`, so with
//! `--expect-groups N` a watcher thread beside the runtime reads the node's own store
//! (`ken::store::Reader`, read-only, as `ken inspect` does) every [`WATCH_INTERVAL`] and prints
//! `{"event":"all_live","id":..,"groups":N,"at_ms":..}` once N groups are durably `Live`. That
//! thread does I/O, not the handler: the handler stays a pure function of its inputs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ken::engine::fuse::GroupRecord;
use ken::{Config, GroupId, GroupState, Handler, Input, ProcessId, Time, Turn};
use serde::{Deserialize, Serialize};

/// Table of the groups this node created: key = group id (16 bytes), value = `at_ms` (u64).
pub const CREATED_TABLE: &str = "created";

/// Table of the notifications heard: key = group id (16 bytes), value = [`Heard`].
pub const HEARD_TABLE: &str = "heard";

/// Exit code of a node that could not bind its UDP port.
pub const EXIT_BIND: u8 = 75;

/// Exit code of a node stopped by `--exit-at-ms`.
pub const EXIT_DEADLINE: u8 = 124;

/// Most groups one node creates (a bound on its tables and on a signal turn's scan).
pub const CREATE_MAX: u64 = 100_000;

/// How often the `--expect-groups` watcher reads the store.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Polls without a commit before the watcher reads the groups.
pub const WATCH_SETTLED_POLLS: u32 = 4;

/// The request that makes a node signal every group it created.
pub const SIGNAL_REQUEST: &str = "signal";

/// What the node remembers about one group's notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    /// Notifications heard for the group (exactly once: always 1).
    pub count: u64,
    /// `Turn::now` of the first, ms since the epoch.
    pub first_at_ms: u64,
}

/// `ken fuse-node` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FuseNodeArgs {
    /// This process's id.
    #[arg(long)]
    pub id: String,
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The store file (created if missing; run the same command again to restart).
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
    /// A peer: ID=ADDR (repeat for each).
    #[arg(long = "peer", value_name = "ID=ADDR")]
    pub peers: Vec<String>,
    /// Groups to create on the first start of the store.
    #[arg(long, default_value_t = 0, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=CREATE_MAX))]
    pub create: u64,
    /// Members of each created group besides this process, comma-separated (default: every
    /// peer).
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,..")]
    pub members: Option<Vec<String>>,
    /// Groups created per turn.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub create_per_turn: u64,
    /// Pause between two creation turns.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    pub create_interval_ms: u64,
    /// Signal every group this node created, this long after the last one was created.
    #[arg(long, value_name = "MS")]
    pub signal_after_ms: Option<u64>,
    /// Print an `all_live` line once this many groups are durably Live in the store.
    #[arg(long, value_name = "N")]
    pub expect_groups: Option<u64>,
    /// Exit (code 124) at this wall-clock time, ms since the epoch, whatever is happening: a
    /// backstop so that no node outlives the harness that started it.
    #[arg(long, value_name = "MS")]
    pub exit_at_ms: Option<u64>,
}

/// The handler of `ken fuse-node` (see the module docs).
#[derive(Debug, Clone)]
pub struct FuseNode {
    /// Members of each created group besides this process.
    pub members: Vec<ProcessId>,
    pub create: u64,
    pub create_per_turn: u64,
    pub create_interval: Duration,
    pub signal_after: Option<Duration>,
}

/// The node's root state: small whatever the number of groups (those are in tables).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FuseNodeState {
    /// Groups created so far.
    pub created: u64,
    /// Notifications heard so far (over every life).
    pub heard: u64,
}

impl FuseNode {
    fn create_some(&self, state: &mut FuseNodeState, turn: &mut Turn<'_, (), String>) {
        let n = self.create_per_turn.min(self.create - state.created);
        let at_ms = turn.now().as_millis();
        for _ in 0..n {
            let id = turn
                .fuse_create(&self.members)
                .expect("members were checked against the address book at startup");
            turn.table(CREATED_TABLE).put(id.0, &at_ms);
            state.created += 1;
        }
        if state.created < self.create {
            turn.set_timer("create", self.create_interval);
            return;
        }
        let line = serde_json::json!({
            "event": "created", "id": turn.id().as_str(), "groups": state.created, "at_ms": at_ms,
        });
        turn.emit(line.to_string());
        if let Some(after) = self.signal_after {
            turn.set_timer("signal", after);
        }
    }

    fn signal_all(&self, turn: &mut Turn<'_, (), String>) {
        let rows = turn.table(CREATED_TABLE).scan::<u64>([], CREATE_MAX as u32);
        let mut n = 0u64;
        for (key, _) in rows {
            if let Ok(id) = <[u8; 16]>::try_from(key.as_slice()) {
                turn.fuse_signal(GroupId(id));
                n += 1;
            }
        }
        let line = serde_json::json!({
            "event": "signalled", "id": turn.id().as_str(), "groups": n,
            "at_ms": turn.now().as_millis(),
        });
        turn.emit(line.to_string());
    }
}

impl Handler for FuseNode {
    const APP: &'static str = "fuse-node";
    type State = FuseNodeState;
    type Message = ();
    type Request = String;
    type Reply = String;

    fn on_turn(
        &self,
        state: &mut FuseNodeState,
        turn: &mut Turn<'_, (), String>,
        input: Input<(), String>,
    ) {
        match input {
            Input::Start if self.create > 0 => self.create_some(state, turn),
            Input::Timer { name, .. } if name == "create" => self.create_some(state, turn),
            Input::Timer { name, .. } if name == "signal" => self.signal_all(turn),
            Input::Request { request, .. } => {
                let reply = if request == SIGNAL_REQUEST {
                    self.signal_all(turn);
                    "ok"
                } else {
                    "unknown request: the only request is `signal`"
                };
                turn.reply(&reply.to_string())
                    .expect("a short reply fits a datagram");
            }
            Input::FuseFailure { group } => {
                let now_ms = turn.now().as_millis();
                let mut heard = turn
                    .table(HEARD_TABLE)
                    .get::<Heard>(group.0)
                    .unwrap_or(Heard {
                        count: 0,
                        first_at_ms: now_ms,
                    });
                heard.count += 1;
                turn.table(HEARD_TABLE).put(group.0, &heard);
                state.heard += 1;
                let line = serde_json::json!({
                    "event": "fuse_failure", "id": turn.id().as_str(), "group": group.to_string(),
                    "at_ms": now_ms, "count": heard.count,
                });
                turn.emit(line.to_string());
            }
            _ => {}
        }
    }
}

fn pid(s: &str) -> anyhow::Result<ProcessId> {
    ProcessId::new(s).map_err(|e| anyhow::anyhow!("bad process id `{s}`: {e}"))
}

impl FuseNodeArgs {
    /// The runtime configuration and the handler, checked: every peer is `ID=ADDR`, every
    /// member is a peer.
    pub fn build(&self) -> anyhow::Result<(Config, FuseNode)> {
        let me = pid(&self.id)?;
        let mut config = Config::new(me.clone(), self.listen, &self.store).with_env_switches();
        for p in &self.peers {
            let (id, addr) = p.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--peer {p:?}: expected ID=ADDR, e.g. n1=127.0.0.1:7001")
            })?;
            let addr: SocketAddr = addr.parse().map_err(|e| {
                anyhow::anyhow!("--peer {p:?}: bad address `{addr}` ({e}); expected IP:PORT")
            })?;
            config.peers.insert(pid(id)?, addr);
        }
        let members = match &self.members {
            Some(list) => list
                .iter()
                .map(|m| pid(m))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => config.peers.keys().cloned().collect(),
        };
        for m in &members {
            if *m != me && !config.peers.contains_key(m) {
                anyhow::bail!("--members: `{m}` is not a peer; add --peer {m}=ADDR");
            }
        }
        if self.create > 0 && members.iter().all(|m| *m == me) {
            anyhow::bail!("--create needs at least one member besides this process");
        }
        let node = FuseNode {
            members,
            create: self.create,
            create_per_turn: self.create_per_turn,
            create_interval: Duration::from_millis(self.create_interval_ms),
            signal_after: self.signal_after_ms.map(Duration::from_millis),
        };
        Ok((config, node))
    }
}

/// Entry point of `ken fuse-node`.
pub fn main(args: &FuseNodeArgs) -> ExitCode {
    let (config, node) = match args.build() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ken fuse-node: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(at_ms) = args.exit_at_ms {
        let id = args.id.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Time::from_millis(at_ms).since(Time::now_wall()));
            eprintln!("ken fuse-node {id}: --exit-at-ms passed, exiting");
            std::process::exit(i32::from(EXIT_DEADLINE));
        });
    }
    if let Some(expect) = args.expect_groups {
        let (id, store) = (args.id.clone(), args.store.clone());
        std::thread::spawn(move || watch_live(&id, &store, expect));
    }
    match ken::run(config, node) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ken fuse-node {}: {e}", args.id);
            let bind = matches!(e, ken::RunError::Bind { .. });
            ExitCode::from(if bind { EXIT_BIND } else { 1 })
        }
    }
}

/// Prints `all_live` once `expect` groups of the store at `path` are durably Live. Reading
/// ten thousand group records costs milliseconds of CPU that the node itself needs while it
/// creates groups, so they are read only when the store has stopped changing (the same commit
/// count for [`WATCH_SETTLED_POLLS`] polls in a row) and has committed since they were last
/// read; in between, a poll is one row of `meta`.
fn watch_live(id: &str, path: &Path, expect: u64) {
    let reader = loop {
        std::thread::sleep(WATCH_INTERVAL);
        if let Ok(r) = ken::store::Reader::open(path) {
            break r;
        }
    };
    let (mut last_commits, mut same, mut checked_at) = (u64::MAX, 0, u64::MAX);
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let Ok(meta) = reader.meta() else {
            continue;
        };
        same = if meta.commits == last_commits {
            same + 1
        } else {
            0
        };
        last_commits = meta.commits;
        if same < WATCH_SETTLED_POLLS || checked_at == meta.commits {
            continue;
        }
        checked_at = meta.commits;
        let live = match live_groups(&reader) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("ken fuse-node {id}: watcher: {e}");
                return;
            }
        };
        if live >= expect {
            let line = serde_json::json!({
                "event": "all_live", "id": id, "groups": live,
                "at_ms": Time::now_wall().as_millis(),
            });
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            return;
        }
    }
}

/// Groups durably Live in a store.
pub fn live_groups(reader: &ken::store::Reader) -> anyhow::Result<u64> {
    let mut live = 0;
    for row in reader.groups()? {
        let rec: GroupRecord = ken::store::codec::decode(&row.record)
            .map_err(|e| anyhow::anyhow!("group {}: {e}", GroupId(row.group)))?;
        if rec.state == GroupState::Live {
            live += 1;
        }
    }
    Ok(live)
}
