//! `ken torture`: a cluster of real app processes on loopback, tortured from one seed, then
//! healed and checked. See `tools/TORTURE.md` for the flags, the faults, the checks and the
//! JSON summary.
//!
//! Phases:
//! 1. **Faults** for `--seconds`: SIGKILLs at exponential intervals and restarts after a
//!    random delay (some restarts armed with a `KEN_CRASH_AT` crash point), SIGSTOP/SIGCONT
//!    pauses longer than the runtime's RTO ceiling, and network epochs: every
//!    `--net-period-ms` each member's `KEN_FAULTS_FILE` is rewritten (loss, duplication,
//!    reordering, delay, corruption, truncation, or a partition cutting one member off), so
//!    partitions heal at the next epoch. With `--tmpfs-mb`, disk-full episodes.
//! 2. **Heal**: fault files emptied, paused members continued, dead members restarted with no
//!    crash point, no more kills. Then wait (deadline `--quiesce-seconds`) for quiescence:
//!    every outbox empty in the stores, the app's work done (bank: every transfer started;
//!    pingpong: both exited 0), and the committed turn count unchanged for a second.
//! 3. **Checks** ([`check`], [`apps::TortureApp`]), then the one-line JSON summary.
//!
//! Replay: every draw of the harness (victims, delays, crash points and their seeds, fault
//! configurations and their seeds, pauses) comes from one ChaCha8 stream seeded by `--seed`,
//! in the order of the harness's clock events. What a draw hits relative to the workload
//! (which turn a kill interrupts) depends on the OS scheduler, as in any real-process test.
//!
//! `--app lock` ([`lock`]): the lock service over FUSE groups, with FUSE timing shortened
//! through the children's `KEN_FUSE_*` variables, kill downtimes, pauses and short
//! partitions kept below half of `T_fail` (FUSE must mask them), plus **permanent kills** of
//! holders (never restarted) and **long partitions** (longer than 1.5 `T_fail`) between the
//! server and its sticky holder, healed later. The harness records every outage in wall-clock
//! time for the FUSE checks: the bound, no false positives, exactly once. While a long
//! partition lasts, and for the bound after a permanent kill, the members concerned (and the
//! server) are not killed, paused or cut off by other faults, so the measured notification
//! delays are FUSE's own.
//!
//! Rolling upgrade (`--upgrade`, bank only): every member starts as schema version 1
//! (`ken app bank`) and, one at a time at random moments of the fault phase's middle half,
//! is SIGKILLed and started again as version 2 on the same store (`ken app bank --schema 2`:
//! the store is migrated at start; half of these first starts are armed with a migration
//! crash point). Mixed versions run side by side meanwhile, under the same faults; version-1
//! members hold version-2 messages until they are upgraded themselves. A member still on
//! version 1 at heal time is upgraded then. On top of the usual checks: every store ends at
//! schema version 2, and no dead letter or poison input was recorded. The summary counts
//! `upgrades` and `messages_held` (held deliveries, from the stats lines). Negative control:
//! `--unsafe-drop-held` runs the children with `KEN_UNSAFE_DROP_HELD=1` (test builds only):
//! newer messages are consumed and dropped, and the bank audit reports lost transfers.
//!
//! Poison torture (`--upgrade --poison N`): version 1 carries a bug, a panic on every credit
//! of a transfer id that is a multiple of N. Each such turn is rolled back, recorded in
//! `ken.poison` and its pair held (retried, and panicking again, at each restart) until the
//! receiver runs version 2, the fix. Poison rows are then expected (`poison_inputs` counts
//! them), and the usual checks prove each poisoned credit applied exactly once.
//!
//! Disk full (`--tmpfs-mb`): the stores live on a tmpfs of that size (root only; a clear
//! error otherwise). In some network epochs the harness fills the tmpfs with a ballast file
//! and removes it at the next epoch. A process whose commit fails exits 1 with "store full":
//! the harness counts it (`disk_full_exits`) as an expected crash and restarts it after the
//! usual delay (it dies again while the disk is still full, which is fine: restart is the
//! documented recovery). The ballast is removed at heal time. Stores kept after a violation
//! are copied off the tmpfs before it is unmounted.
//!
//! Standby replicas (`--standby`, bank only, [`standby`]): every member ships its batches
//! to a `ken standby serve` of its own (killed and restarted, and SIGSTOPped for seconds: a
//! silent link, now and then like the members),
//! the members started from a cluster file written for the run. `--promotions` times a
//! member's standby is killed, then 3 s later the member is SIGKILLed, its store deleted (a
//! destroyed disk), the replica promoted (`ken standby promote`) and the member started on it
//! at its standby address with `--no-standby`; the replica is its store for every check from
//! then on. The summary counts `promotions` and the `promotion_to_first_turn_ms` of each.
//! Negative control: `--unsafe-release-before-standby` (`KEN_UNSAFE_RELEASE_BEFORE_STANDBY=1`,
//! test builds only) makes the promoted member lose what its peers saw.
//!
//! Any service (`--cluster FILE`, [`custom`]): the processes of a cluster file whose entries
//! carry a `command`, started from their own command lines on ports and stores the run
//! picks (a cluster file written for the run), under the same faults; quiescence is every
//! outbox empty, no task pending and the committed messages unchanged for a second (or, with
//! `[torture] finishes = true`, every process exited 0). The checks are the runtime's own,
//! plus the user's check command (`--check CMD`, also allowed with the built-in apps): run
//! by `sh -c` with the processes dead, the stores in `KEN_TORTURE_STORES`; exit 0 passes,
//! anything else is a violation that quotes its output.

pub mod apps;
pub mod check;
pub mod custom;
pub mod lock;
pub mod standby;

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use apps::TortureApp;
use ken_tools::harness::{self, loopback, End, Process, Spec};
use ken_tools::keys::{self, Held, KeyRing, RotationStep};

/// `--promotions` when not given.
const DEFAULT_PROMOTIONS: u64 = 2;

/// Interval of each process's stats lines (`KEN_STATS_INTERVAL_MS`).
const STATS_INTERVAL_MS: u64 = 500;

/// The same for lock runs: often enough that a gap of [`LOCK_STALL_GAP`] shows a stall.
const LOCK_STATS_INTERVAL_MS: u64 = 100;

/// Lock runs: a gap between a process's event lines longer than this is a stall (an
/// outage the harness did not make: CPU starvation, a stuck disk), which the FUSE checks
/// count like a pause. Above twice the stats interval, far below the 500 ms that matter.
const LOCK_STALL_GAP: Duration = Duration::from_millis(250);

/// The harness's scheduler wakes at least this often.
const TICK: Duration = Duration::from_millis(20);

/// How often the stores are read while waiting for quiescence.
const QUIESCE_POLL: Duration = Duration::from_millis(250);

/// The turn count must stay unchanged this long to count as quiescent.
const QUIESCE_STABLE: Duration = Duration::from_secs(1);

/// Crash points given to restarts (`recovery` passes once per life, so it gets its own
/// probability).
const CRASH_POINTS: [&str; 5] = [
    "before_commit",
    "after_commit",
    "mid_release",
    "after_release",
    "recovery",
];

/// Which application to torture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppName {
    Bank,
    Pingpong,
    /// `ken-lock`: one server, a sticky holder, contending holders; FUSE checks.
    Lock,
}

/// `ken torture` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = CLUSTER_HELP)]
pub struct Args {
    /// Torture your own service: a cluster file whose [[process]] entries carry
    /// `command = ["PROGRAM", "--cluster", "{cluster}", "--id", "{id}"]` (and optionally a
    /// [torture] table: `finishes`, `check`). Each process is started from its command with
    /// the run's own cluster file (ports, stores, key) as {cluster}. See below and
    /// tools/TORTURE.md.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["app", "procs", "upgrade", "rotate_key", "poison", "unsafe_drop_held"]
    )]
    pub cluster: Option<PathBuf>,
    /// A check run by `sh -c` after the run, with the processes dead: the store paths in
    /// $KEN_TORTURE_STORES (space-separated), the ids in $KEN_TORTURE_IDS, the run's cluster
    /// file in $KEN_TORTURE_CLUSTER (--cluster), $KEN_TORTURE_QUIESCED 1 or 0. Exit 0 passes;
    /// anything else is a violation quoting its output. Default: the cluster file's
    /// [torture] check, if any.
    #[arg(long, value_name = "CMD")]
    pub check: Option<String>,
    /// Bound on the check command's run time; it is killed after it (a violation).
    #[arg(long, default_value_t = 120)]
    pub check_timeout_seconds: u64,
    /// Application to run.
    #[arg(long, value_enum, default_value = "bank")]
    pub app: AppName,
    /// Members of the bank (pingpong always has 2).
    #[arg(long, default_value_t = 5)]
    pub procs: usize,
    /// Seconds of faults.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seed of every random draw (default: random, printed first).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Working directory for stores and logs (default: a fresh temporary directory, removed
    /// after a clean run, kept after a violation).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bound on the time to quiesce after healing.
    #[arg(long, default_value_t = 60)]
    pub quiesce_seconds: u64,
    /// SIGKILLs per second, cluster-wide (exponential intervals).
    #[arg(long, default_value_t = 0.5)]
    pub kill_rate: f64,
    /// Longest time a killed process stays down, milliseconds (uniform from 0) [default:
    /// 1000; lock: 0.3 x --t-fail-ms].
    #[arg(long)]
    pub restart_delay_ms: Option<u64>,
    /// Fraction of restarts armed with one crash point (`KEN_CRASH_AT`).
    #[arg(long, default_value_t = 0.3)]
    pub crash_point_restarts: f64,
    /// Probability per pass of an armed crash point (except `recovery`, which gets 0.5).
    #[arg(long, default_value_t = 0.002)]
    pub crash_point_p: f64,
    /// SIGSTOP pauses per second, cluster-wide.
    #[arg(long, default_value_t = 0.2)]
    pub pause_rate: f64,
    /// Shortest pause, milliseconds [default: 1500, above the 1 s RTO ceiling; lock: 50].
    #[arg(long)]
    pub pause_min_ms: Option<u64>,
    /// Longest pause, milliseconds [default: 4000; lock: 0.4 x --t-fail-ms].
    #[arg(long)]
    pub pause_max_ms: Option<u64>,
    /// Length of a network epoch: each member's fault file is rewritten this often.
    #[arg(long, default_value_t = 2000)]
    pub net_period_ms: u64,
    /// Probability that a member's link is faulty in an epoch (else clean).
    #[arg(long, default_value_t = 0.5)]
    pub net_faulty: f64,
    /// Datagram loss probability on a faulty link.
    #[arg(long, default_value_t = 0.03)]
    pub loss: f64,
    /// Duplication probability on a faulty link.
    #[arg(long, default_value_t = 0.03)]
    pub dup: f64,
    /// Reorder probability on a faulty link (held up to 30 ms).
    #[arg(long, default_value_t = 0.05)]
    pub reorder: f64,
    /// Delay probability on a faulty link (5-80 ms).
    #[arg(long, default_value_t = 0.05)]
    pub delay: f64,
    /// Bit-flip probability on a faulty link.
    #[arg(long, default_value_t = 0.01)]
    pub corrupt: f64,
    /// Truncation probability on a faulty link.
    #[arg(long, default_value_t = 0.01)]
    pub truncate: f64,
    /// Probability per epoch that one member is partitioned from all others (healed at the
    /// next epoch).
    #[arg(long, default_value_t = 0.2)]
    pub partition: f64,
    /// Put the stores on a tmpfs of this many MiB (root only) and fill it now and then.
    #[arg(long)]
    pub tmpfs_mb: Option<u64>,
    /// With --tmpfs-mb: probability per epoch of a disk-full episode.
    #[arg(long, default_value_t = 0.1)]
    pub disk_full: f64,
    /// Bank: transfers each member starts in all (default: seconds x 1000 / interval / 2,
    /// so the work lasts about the fault phase at 50% uptime).
    #[arg(long)]
    pub transfers: Option<u64>,
    /// Bank: milliseconds between two transfers of a member.
    #[arg(long, default_value_t = 5)]
    pub interval_ms: u64,
    /// Bank: accounts per member.
    #[arg(long, default_value_t = 16)]
    pub accounts: u32,
    /// Bank: opening balance of every account.
    #[arg(long, default_value_t = 1000)]
    pub initial_balance: i64,
    /// Pingpong: the last value of the volley (default: 100 x seconds).
    #[arg(long)]
    pub count: Option<u64>,
    /// Lock: contending holders (besides the sticky holder `z`).
    #[arg(long, default_value_t = 4)]
    pub holders: usize,
    /// Lock: locks the contending holders share.
    #[arg(long, default_value_t = 2)]
    pub locks: usize,
    /// Lock: milliseconds a contending holder keeps each grant.
    #[arg(long, default_value_t = 100)]
    pub hold_ms: u64,
    /// Lock: rounds of each contending holder (default: about the fault phase's worth).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Lock: contending holders SIGKILLed for good during the fault phase.
    #[arg(long, default_value_t = 1)]
    pub permanent: u64,
    /// Lock: partitions between the server and the sticky holder, each 2 to 2.5 x T_fail.
    #[arg(long, default_value_t = 1)]
    pub long_partitions: u64,
    /// Lock: FUSE T_fail for the children (`KEN_FUSE_T_FAIL_MS`), milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub t_fail_ms: u64,
    /// Lock: FUSE heartbeat interval (`KEN_FUSE_HEARTBEAT_MS`), milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Lock: FUSE creation timeout (`KEN_FUSE_CREATE_TIMEOUT_MS`) [default: --t-fail-ms].
    #[arg(long)]
    pub create_timeout_ms: Option<u64>,
    /// Lock: slack added to FUSE's bound before a measured notification delay is a
    /// violation, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub fuse_slack_ms: u64,
    /// Negative control: check notification delays against this bound (ms) instead of
    /// FUSE's.
    #[arg(long, hide = true)]
    pub unsafe_fuse_bound_ms: Option<u64>,
    /// Negative control: run the children with FUSE timing T_FAIL_MS:HEARTBEAT_MS while the
    /// checks assume --t-fail-ms and --heartbeat-ms.
    #[arg(long, hide = true)]
    pub unsafe_child_fuse: Option<String>,
    /// Negative control: run the children with KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1.
    #[arg(long, hide = true)]
    pub unsafe_release_before_commit: bool,
    /// Run the cluster without a cluster key (unauthenticated mode, SECURITY.md). By default
    /// a fresh key is written to `DIR/keys/key-0.key` and given to every process.
    #[arg(long)]
    pub no_key: bool,
    /// Rotate the cluster key N times (default 1) while the faults go on (bank, pingpong):
    /// a new key, then SECURITY.md's three passes of one SIGKILL and restart at a time
    /// (send old and accept new; send new and accept old; new alone). The first starts at a
    /// fifth of the fault phase; a rotation unfinished at the heal finishes before
    /// quiescence counts.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub rotate_key: Option<u32>,
    /// Bank: a rolling upgrade to schema version 2 during the fault phase (see UPGRADES.md).
    #[arg(long)]
    pub upgrade: bool,
    /// Poison torture (with --upgrade): version-1 members run a deliberate bug, a panic on
    /// every credit of a transfer id that is a multiple of N; version 2 is the fix.
    #[arg(long)]
    pub poison: Option<u64>,
    /// Negative control (with --upgrade): run the children with KEN_UNSAFE_DROP_HELD=1.
    #[arg(long, hide = true)]
    pub unsafe_drop_held: bool,
    /// Bank: give every member a standby replica (`ken standby serve`, killed and restarted
    /// now and then like the members) and, --promotions times, destroy a member's store
    /// for good and promote its standby (ken/STANDBY.md). The members are started from a
    /// cluster file the run writes into its directory (see tools/TORTURE.md).
    #[arg(long)]
    pub standby: bool,
    /// With --standby: destroyed disks and promotions, spread over the fault phase; each
    /// member is promoted at most once [default: 2].
    #[arg(long, value_name = "N", requires = "standby")]
    pub promotions: Option<u64>,
    /// Negative control (with --standby): run the members with
    /// KEN_UNSAFE_RELEASE_BEFORE_STANDBY=1 (test builds only): they release before their
    /// standby holds a batch, and a promotion loses what peers saw.
    #[arg(long, hide = true, requires = "standby")]
    pub unsafe_release_before_standby: bool,
    /// Negative control (with --standby and --rotate-key): restart the standbys in a
    /// rotation with the key they send with alone, as if `ken standby serve` ignored
    /// `--accept-key-file` (what it did before it took them): a pair whose two ends send
    /// with different keys cannot shake hands.
    #[arg(long, hide = true, requires = "rotate_key")]
    pub unsafe_standby_single_key: bool,
}

/// `ken torture --help`'s closing section: the --cluster mode in a few lines.
const CLUSTER_HELP: &str = "\
Your own service (--cluster FILE):
  [[process]]
  id = \"worker-1\"
  address = \"127.0.0.1:7001\"        # replaced by a port the run picks
  command = [\"target/release/my-worker\", \"--cluster\", \"{cluster}\", \"--id\", \"{id}\"]
  [torture]
  finishes = false                  # true if every process exits 0 when its work is done
  check = \"./check.sh\"              # or --check CMD
Placeholders: {id}, {cluster} (the cluster file written for the run: its ports, stores and
key; the processes also get KEN_TORTURE_ID and KEN_TORTURE_CLUSTER), {store}. The processes
must be Ken processes configured from {cluster} (ken::Config::from_cluster_file), so the
network faults (KEN_FAULTS_FILE) and crash points (KEN_CRASH_AT) reach them. Checks: every
pair exactly-once and FIFO, output validity, every store's verify, then the check command.";

/// Counters of a run.
#[derive(Debug, Default)]
struct Counters {
    kills: u64,
    crash_points_hit: u64,
    pauses: u64,
    restarts: u64,
    operator_restarts: u64,
    disk_full_exits: u64,
    disk_full_episodes: u64,
    port_changes: u64,
    net_epochs: u64,
    partitions: u64,
    permanent_kills: u64,
    long_partitions: u64,
    /// Planned but not made: no eligible victim (or the sticky holder never held) in time.
    permanent_kills_skipped: u64,
    long_partitions_skipped: u64,
    /// Key rotations completed, and the SIGKILLs and restarts they made.
    key_rotations: u64,
    key_rotation_restarts: u64,
    /// Members replaced by schema version 2 (`--upgrade`), and how many of those at heal.
    upgrades: u64,
    upgrades_at_heal: u64,
}

/// Converts the harness's instants to wall-clock milliseconds since the Unix epoch, the
/// clock the runtime stamps `at_ms` and turn times with.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    base_ms: u64,
}

impl Clock {
    fn start() -> Clock {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            base: Instant::now(),
            base_ms,
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_ms + d.as_millis() as u64,
            None => self
                .base_ms
                .saturating_sub(self.base.duration_since(t).as_millis() as u64),
        }
    }
}

/// A partition in force: `member`'s endpoint drops all traffic to and from `cut_from`.
#[derive(Debug, Clone)]
struct Cut {
    member: usize,
    cut_from: Vec<usize>,
    /// When it heals; `None`: at the next network epoch.
    until: Option<Instant>,
    long: bool,
    /// Its entry in `Cluster::windows`.
    window: usize,
}

/// Lock runs: FUSE timing and the plan of permanent kills and long partitions.
#[derive(Debug, Clone)]
struct FusePlan {
    timing: lock::Timing,
    /// The children's `KEN_FUSE_*` values (T_fail, heartbeat, creation timeout).
    child: (u64, u64, u64),
    /// Permanent kills still to make, earliest first (offsets into the fault phase).
    permanent_at: Vec<Duration>,
    /// Long partitions still to make, earliest first: (earliest start, latest start, length),
    /// offsets into the fault phase.
    long_at: Vec<(Duration, Duration, Duration)>,
    /// While a permanent kill's notification is being timed, the server is left alone.
    server_quiet_until: Option<Instant>,
}

/// One member of the cluster: its process, and the harness's plans for it.
struct Member {
    proc: Process,
    /// Set while down: when to start the next life.
    restart_at: Option<Instant>,
    /// Set when the harness SIGKILLed it for good: it is never started again.
    killed_for_good: Option<Instant>,
}

impl Member {
    /// Starts its next life, with crash point `crash_at` if given.
    fn spawn(&mut self, crash_at: Option<(String, u64)>) -> std::io::Result<()> {
        assert!(
            self.killed_for_good.is_none(),
            "{} was killed for good and is never started again",
            self.proc.name()
        );
        self.proc.spawn(crash_at)
    }

    /// Exited 0 and is not to be restarted.
    fn finished(&self) -> bool {
        !self.proc.is_running()
            && self.restart_at.is_none()
            && self
                .proc
                .current_life()
                .is_some_and(|l| l.end == Some(End::Finished))
    }
}

/// The cluster under torture.
struct Cluster {
    app: Box<dyn TortureApp>,
    /// `--cluster`: the service's description (the same as `app`), for its programs and
    /// the run's cluster file.
    custom: Option<custom::Custom>,
    /// The run's directory.
    dir: PathBuf,
    /// What the check command did (`--check`, or the file's), once run.
    check_run: Option<custom::CheckRun>,
    members: Vec<Member>,
    stores: Vec<PathBuf>,
    faults_files: Vec<PathBuf>,
    ports: Vec<u16>,
    rng: ChaCha8Rng,
    counters: Counters,
    violations: Vec<String>,
    /// One line per member describing its lives (printed after violations).
    details: Vec<String>,
    args: Args,
    ballast: Option<PathBuf>,
    clock: Clock,
    /// Each member's faults of the current network epoch (`None`: a clean link), and the
    /// seed of its file.
    links: Vec<Option<String>>,
    link_seeds: Vec<u64>,
    /// Partitions in force.
    cuts: Vec<Cut>,
    /// Pauses and partitions as they happened, for the lock checks.
    windows: Vec<lock::Window>,
    /// Per member, the open pause's entry in `windows`.
    pause_window: Vec<Option<usize>>,
    /// Lock runs only.
    fuse: Option<FusePlan>,
    /// The run's key files (`None`: `--no-key`), and the keys each member holds.
    keys: Option<KeyRing>,
    held: Vec<Held>,
    rotation: Rotation,
    /// `--upgrade`: members running schema version 2 (from their next life on).
    upgraded: Vec<bool>,
    /// `--upgrade`: upgrades still to make, earliest first: (offset into the fault phase,
    /// member).
    upgrade_at: Vec<(Duration, usize)>,
    /// `--standby`: the standbys and the promotion plan.
    standbys: Option<standby::Standbys>,
    /// The executable the children run (the run's private copy of `ken`).
    program: PathBuf,
}

/// Gap between a rotation restart's process listening and the next rotation restart (and
/// before a rotation's first): longer than any delay the fault files put on a frame, so no
/// frame sealed under a key is still in flight when its last holder drops it.
const ROTATION_GAP: Duration = Duration::from_millis(300);

/// What a member logs when its standby's answer to `Hello` does not authenticate (the
/// shipper's `SessionEnd::Protocol` text, `ken/src/standby.rs`).
const STANDBY_HELLO_UNAUTHENTICATED: &str = "answer to Hello does not authenticate";

/// Key rotations (`--rotate-key`): what is left to do.
#[derive(Debug, Default)]
struct Rotation {
    /// Rotations not started yet.
    left: u32,
    /// The restarts of the rotation in progress, next first.
    steps: std::collections::VecDeque<RotationStep>,
    /// No restart before this time.
    next_at: Option<Instant>,
    /// The member restarted last, until it listens (or dies).
    waiting_on: Option<usize>,
}

impl Rotation {
    fn done(&self) -> bool {
        self.left == 0 && self.steps.is_empty() && self.waiting_on.is_none()
    }
}

/// Runs `ken torture`; the exit code is 0 only if no violation was found.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    check_args(args)?;
    // A cluster file is read (and refused) before anything is created or started.
    let mut custom = match &args.cluster {
        Some(path) => Some(custom::Custom::load(path)?),
        None => None,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let what = match &args.cluster {
        Some(path) => format!("cluster {}", path.display()),
        None => format!("app {:?}", args.app),
    };
    println!(
        "ken torture: seed {seed} {what} (replay: {})",
        replay_command(seed)
    );
    let (dir, temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            (d.clone(), false)
        }
        None => (
            tempfile::Builder::new()
                .prefix("ken-torture-")
                .tempdir()?
                .keep(),
            true,
        ),
    };
    if let Some(c) = &mut custom {
        c.run_file = dir.join(custom::RUN_FILE);
    }
    let app: Box<dyn TortureApp> = match args.app {
        _ if custom.is_some() => Box::new(custom.clone().expect("checked")),
        AppName::Bank => Box::new(apps::Bank {
            procs: args.procs.max(2),
            accounts: args.accounts,
            initial_balance: args.initial_balance,
            interval_ms: args.interval_ms.max(1),
            transfers: args
                .transfers
                .unwrap_or((args.seconds * 1000 / args.interval_ms.max(1) / 2).max(10)),
        }),
        AppName::Pingpong => Box::new(apps::PingPong {
            count: args.count.unwrap_or((args.seconds * 100).max(100)),
        }),
        AppName::Lock => Box::new(lock::Lock {
            holders: args.holders,
            locks: args.locks,
            hold_ms: args.hold_ms,
            rounds: args.rounds.unwrap_or_else(|| default_rounds(args)),
        }),
    };
    let mut cluster = Cluster::new(app, custom, args.clone(), seed, &dir)?;
    let quiesced = match cluster.torture() {
        Ok(q) => q,
        Err(e) => {
            cluster.violations.push(format!("harness error: {e:#}"));
            None
        }
    };
    let summary = cluster.summary(seed, quiesced);
    cluster.stop_all();
    let violations = std::mem::take(&mut cluster.violations);
    let details = std::mem::take(&mut cluster.details);
    let tmpfs = cluster.args.tmpfs_mb.is_some();
    drop(cluster);
    let mut summary = summary;
    summary["violations"] = violations.len().into();
    let keep = !violations.is_empty() || !temp;
    if tmpfs {
        unmount_tmpfs(&dir, keep);
    }
    if violations.is_empty() {
        if temp {
            let _ = std::fs::remove_dir_all(&dir);
        }
    } else {
        for v in &violations {
            println!("violation: {v}");
        }
        for d in &details {
            println!("lives: {d}");
        }
        println!("seed: {seed}");
        println!("replay: {}", replay_command(seed));
        println!(
            "kept: {} (stores in stores/, logs in logs/; try `ken inspect`)",
            dir.display()
        );
    }
    println!("{summary}");
    let _ = std::io::stdout().flush();
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Rounds of a contending holder lasting about the fault phase: each lock passes from
/// holder to holder about every `hold + 30` ms, and `holders / locks` holders share one.
fn default_rounds(args: &Args) -> u64 {
    let per_lock_ms = (args.hold_ms + 30) * args.holders.max(1) as u64 / args.locks.max(1) as u64;
    (args.seconds * 1000 / per_lock_ms.max(1)).max(10)
}

/// Rejects flag combinations that cannot make a meaningful run, in one line each.
fn check_args(args: &Args) -> anyhow::Result<()> {
    if args.unsafe_release_before_commit && !ken::Tuning::RELEASE_BEFORE_COMMIT_COMPILED {
        bail!(
            "--unsafe-release-before-commit: this `ken` was built without the test-only switch \
             (its children would run safely and the negative control would prove nothing); \
             it exists only in test builds (`cargo test`, or the cargo feature \
             ken/unsafe-release-before-commit)"
        );
    }
    if args.rotate_key.is_some() && args.no_key {
        bail!("--rotate-key needs a cluster key: drop --no-key");
    }
    if args.rotate_key.is_some() && args.app == AppName::Lock {
        bail!("--rotate-key works with --app bank and --app pingpong (the lock checks would count its restarts as unplanned outages)");
    }
    if let (Some(min), Some(max)) = (args.pause_min_ms, args.pause_max_ms) {
        if min > max {
            bail!("--pause-min-ms {min} is above --pause-max-ms {max}; swap them");
        }
    }
    if args.upgrade && args.app != AppName::Bank {
        bail!("--upgrade is a rolling upgrade of the bank to schema version 2: use it with --app bank");
    }
    if args.poison.is_some() && !args.upgrade {
        bail!("--poison makes version 1 buggy and needs --upgrade to deploy the fix (version 2)");
    }
    if args.poison == Some(0) {
        bail!("--poison 0 would poison nothing; give N >= 1 (every credit of a transfer id that is a multiple of N panics)");
    }
    if args.unsafe_drop_held && !args.upgrade {
        bail!("--unsafe-drop-held only matters with --upgrade (no newer messages otherwise)");
    }
    if args.standby {
        if args.app != AppName::Bank {
            bail!("--standby works with --app bank (the audit proves no transfer lost across a promotion)");
        }
        for (set, flag) in [
            (args.upgrade, "--upgrade"),
            (args.tmpfs_mb.is_some(), "--tmpfs-mb"),
            (
                args.unsafe_release_before_commit,
                "--unsafe-release-before-commit",
            ),
        ] {
            if set {
                bail!("--standby does not combine with {flag} yet; run them separately");
            }
        }
        let n = args.promotions.unwrap_or(DEFAULT_PROMOTIONS);
        if n > args.procs.max(2) as u64 {
            bail!(
                "--promotions {n} is more than the {} members (--procs): each member is promoted at most once",
                args.procs.max(2)
            );
        }
        if n > 0 && args.seconds * 1000 * 8 / 10 / n < 2 * standby::PRE_KILL.as_millis() as u64 {
            bail!(
                "--seconds {} is too short for {n} promotions: each needs {} s of the fault phase's middle 80%; raise --seconds or lower --promotions",
                args.seconds,
                2 * standby::PRE_KILL.as_secs()
            );
        }
    }
    if args.unsafe_release_before_standby && !ken::Tuning::RELEASE_BEFORE_COMMIT_COMPILED {
        bail!(
            "--unsafe-release-before-standby: this `ken` was built without the test-only switch \
             (its children would wait for their standbys and the negative control would prove \
             nothing); it exists only in test builds (`cargo test`, or the cargo feature \
             ken/unsafe-release-before-commit)"
        );
    }
    if args.unsafe_drop_held && !ken::Tuning::DROP_HELD_COMPILED {
        bail!(
            "--unsafe-drop-held: this `ken` was built without the test-only switch (its \
             children would hold messages and the negative control would prove nothing); it \
             exists only in test builds (`cargo test`, or the cargo feature ken/unsafe-drop-held)"
        );
    }
    if args.app != AppName::Lock {
        return Ok(());
    }
    if args.holders == 0 || args.locks == 0 {
        bail!("--app lock needs at least one holder and one lock (--holders, --locks)");
    }
    if args.hold_ms == 0 {
        bail!("--hold-ms 0 would hold every grant forever; give the contending holders a hold time (the sticky holder z already holds until failure)");
    }
    if args.permanent > args.holders as u64 {
        bail!(
            "--permanent {} is more than the {} contending holders (--holders)",
            args.permanent,
            args.holders
        );
    }
    if args.heartbeat_ms == 0 || 2 * args.heartbeat_ms >= args.t_fail_ms {
        bail!(
            "--heartbeat-ms {} and --t-fail-ms {}: FUSE needs at least two heartbeats per T_fail; lower the heartbeat or raise T_fail",
            args.heartbeat_ms,
            args.t_fail_ms
        );
    }
    if args.create_timeout_ms == Some(0) {
        bail!("--create-timeout-ms must be positive");
    }
    // Each long partition gets a slot of the fault phase's middle 70% at least 3 x T_fail
    // long (up to 2.5 x T_fail of cut, and time for the sticky holder to hold again).
    let slot_ms = args.seconds * 700 / args.long_partitions.max(1);
    if args.long_partitions > 0 && slot_ms < 3 * args.t_fail_ms {
        bail!(
            "--seconds {} is too short for {} long partitions of 2-2.5 x T_fail ({} ms): give each at least 3 x T_fail in 70% of the run (raise --seconds or lower --long-partitions)",
            args.seconds,
            args.long_partitions,
            args.t_fail_ms
        );
    }
    if let Some(spec) = &args.unsafe_child_fuse {
        parse_child_fuse(spec)?;
    }
    Ok(())
}

/// `T_FAIL_MS:HEARTBEAT_MS` of `--unsafe-child-fuse`.
fn parse_child_fuse(spec: &str) -> anyhow::Result<(u64, u64)> {
    let parsed = spec
        .split_once(':')
        .and_then(|(t, h)| Some((t.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)));
    match parsed {
        Some((t, h)) if h > 0 && 2 * h < t => Ok((t, h)),
        _ => bail!(
            "--unsafe-child-fuse {spec:?}: expected T_FAIL_MS:HEARTBEAT_MS with two heartbeats per T_fail, e.g. 150:30"
        ),
    }
}

/// The command line of this run with `--seed` set and `--dir` dropped.
fn replay_command(seed: u64) -> String {
    let mut out = vec!["ken".to_string()];
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--seed" || a == "--dir" {
            skip = true;
            continue;
        }
        if a.starts_with("--seed=") || a.starts_with("--dir=") {
            continue;
        }
        out.push(a);
    }
    out.push("--seed".into());
    out.push(seed.to_string());
    out.join(" ")
}

/// Draws the FUSE plan of a lock run: timing, and when the permanent kills and long
/// partitions are due (offsets into the fault phase).
fn fuse_plan(args: &Args, rng: &mut ChaCha8Rng) -> FusePlan {
    let create = args.create_timeout_ms.unwrap_or(args.t_fail_ms);
    let stated = lock::Timing::stated_bound_ms(args.t_fail_ms, args.heartbeat_ms, create);
    let timing = lock::Timing {
        t_fail_ms: args.t_fail_ms,
        heartbeat_ms: args.heartbeat_ms,
        create_timeout_ms: create,
        bound_ms: args.unsafe_fuse_bound_ms.unwrap_or(stated),
        slack_ms: args.fuse_slack_ms,
    };
    let child = match args.unsafe_child_fuse.as_deref().map(parse_child_fuse) {
        Some(Ok((t, h))) => (t, h, create),
        _ => (args.t_fail_ms, args.heartbeat_ms, create),
    };
    let fault_ms = args.seconds * 1000;
    // Permanent kills in the fault phase's 15%..65%, so that the bound passes before heal.
    let mut permanent_at: Vec<Duration> = (0..args.permanent)
        .map(|_| Duration::from_millis(rng.gen_range(fault_ms * 15 / 100..=fault_ms * 65 / 100)))
        .collect();
    permanent_at.sort();
    // Long partitions: one per slot of the middle 70%, 2 to 2.5 x T_fail long, starting in
    // the slot's first part (postponed until the sticky holder holds, within the slot).
    let n = args.long_partitions;
    let slot = fault_ms * 70 / 100 / n.max(1);
    let long_at = (0..n)
        .map(|k| {
            let len = rng.gen_range(args.t_fail_ms * 2..=args.t_fail_ms * 5 / 2);
            let first = fault_ms / 10 + k * slot;
            let last = (first + slot).saturating_sub(len);
            let earliest = rng.gen_range(first..=first + (last - first) / 3);
            (
                Duration::from_millis(earliest),
                Duration::from_millis(last),
                Duration::from_millis(len),
            )
        })
        .collect();
    FusePlan {
        timing,
        child,
        permanent_at,
        long_at,
        server_quiet_until: None,
    }
}

/// `--upgrade`: when each member is replaced by schema version 2, earliest first (offsets
/// into the fault phase): the members in a random order, one in each of `members` equal
/// slots of the phase's middle half, at a random moment of its slot.
fn upgrade_plan(seconds: u64, members: usize, rng: &mut ChaCha8Rng) -> Vec<(Duration, usize)> {
    let mut order: Vec<usize> = (0..members).collect();
    for k in (1..order.len()).rev() {
        order.swap(k, rng.gen_range(0..=k));
    }
    let phase_ms = seconds * 1000;
    let slot = (phase_ms / 2 / members.max(1) as u64).max(1);
    order
        .into_iter()
        .enumerate()
        .map(|(k, i)| {
            let at = phase_ms / 4 + k as u64 * slot + rng.gen_range(0..slot);
            (Duration::from_millis(at), i)
        })
        .collect()
}

/// Replaces `path` atomically with `text` (write a sibling, rename).
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn mount_tmpfs(dir: &Path, mb: u64) -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        bail!("--tmpfs-mb needs root (to mount a tmpfs); run without it or as root");
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "ken-torture"])
        .arg(dir)
        .status()
        .context("run mount")?;
    if !status.success() {
        bail!(
            "--tmpfs-mb: `mount -t tmpfs` on {} failed ({status}); this environment does not \
             allow mounts (a container without CAP_SYS_ADMIN?)",
            dir.display()
        );
    }
    Ok(())
}

/// Room one store needs besides its growth: the preallocated WAL and a first database.
const STORE_MIN_BYTES: u64 = WAL_BYTES + (1 << 20);

/// The preallocated WAL of a store with the default page size.
const WAL_BYTES: u64 =
    ken_store::vfs::wal_preallocate_bytes(ken_store::DEFAULT_PAGE_SIZE as usize) as u64;

/// The smallest `--tmpfs-mb` for `members` stores: each store's minimum plus 2 MiB for the
/// stores' growth between disk-full episodes.
fn tmpfs_mb_min(members: usize) -> u64 {
    (members as u64 * STORE_MIN_BYTES).div_ceil(1 << 20) + 2
}

/// Refuses a tmpfs too small for the stores to exist at all: the run would report every
/// open that fails (on the lock file, the WAL) as a violation instead of exercising disk-full
/// episodes, which the ballast makes anyway.
fn check_tmpfs_size(mb: u64, members: usize) -> anyhow::Result<()> {
    let min = tmpfs_mb_min(members);
    if mb < min {
        bail!(
            "--tmpfs-mb {mb} is too small for {members} processes: each store needs about \
             {:.1} MiB before it grows (a {:.1} MiB preallocated WAL and the database); use \
             --tmpfs-mb {min} or more (disk-full episodes come from the ballast file, not from \
             a small tmpfs)",
            STORE_MIN_BYTES as f64 / (1 << 20) as f64,
            WAL_BYTES as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}

/// Unmounts the stores' tmpfs, copying the stores to `stores-kept/` first if `keep`.
fn unmount_tmpfs(dir: &Path, keep: bool) {
    let stores = dir.join("stores");
    if keep {
        let kept = dir.join("stores-kept");
        let _ = std::fs::create_dir_all(&kept);
        if let Ok(entries) = std::fs::read_dir(&stores) {
            for e in entries.flatten() {
                let _ = std::fs::copy(e.path(), kept.join(e.file_name()));
            }
        }
        println!("stores copied off the tmpfs to {}", kept.display());
    }
    let _ = std::process::Command::new("umount").arg(&stores).status();
}

impl Cluster {
    fn new(
        app: Box<dyn TortureApp>,
        custom: Option<custom::Custom>,
        args: Args,
        seed: u64,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let stores_dir = dir.join("stores");
        let logs = dir.join("logs");
        let faults_dir = dir.join("faults");
        let bin = dir.join("bin");
        for d in [&stores_dir, &logs, &faults_dir, &bin] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        if let Some(mb) = args.tmpfs_mb {
            check_tmpfs_size(mb, app.members().len())?;
            mount_tmpfs(&stores_dir, mb)?;
        }
        // The members run this executable (`ken app NAME ..`, the app's own command line),
        // from a private copy: immune to a rebuild while the run lasts. Written before any
        // child is forked, so no child inherits its write descriptor (ETXTBSY).
        let source = std::env::current_exe().context("the ken executable's path")?;
        let program = bin.join("ken");
        std::fs::copy(&source, &program)
            .with_context(|| format!("copy {} to {}", source.display(), program.display()))?;
        let ids = app.members();
        let keys = if args.no_key {
            println!("ken torture: {}", keys::NO_KEY_WARNING);
            None
        } else {
            Some(KeyRing::create(&dir.join("keys"))?)
        };
        let ports = harness::free_ports(ids.len()).context("pick free UDP ports")?;
        let stores: Vec<PathBuf> = ids
            .iter()
            .map(|id| stores_dir.join(format!("{id}.ken")))
            .collect();
        let faults_files: Vec<PathBuf> = ids.iter().map(|id| faults_dir.join(id)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fuse = (args.app == AppName::Lock).then(|| fuse_plan(&args, &mut rng));
        let mut members = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            write_atomic(&faults_files[i], "")?;
            let mut envs = vec![
                ("KEN_ANNOUNCE".to_string(), "1".to_string()),
                (
                    "KEN_STATS_INTERVAL_MS".to_string(),
                    if fuse.is_some() {
                        LOCK_STATS_INTERVAL_MS
                    } else {
                        STATS_INTERVAL_MS
                    }
                    .to_string(),
                ),
                (
                    "KEN_FAULTS_FILE".to_string(),
                    faults_files[i].display().to_string(),
                ),
                ("KEN_FAULTS".to_string(), String::new()),
            ];
            if args.standby && std::env::var_os("RUST_LOG").is_none() {
                // The shipper's catch-ups and take-backs are info lines; the summary counts them.
                envs.push(("RUST_LOG".to_string(), "warn,ken::standby=info".to_string()));
            }
            if args.unsafe_drop_held {
                envs.push(("KEN_UNSAFE_DROP_HELD".to_string(), "1".to_string()));
            }
            if args.unsafe_release_before_standby {
                envs.push((
                    "KEN_UNSAFE_RELEASE_BEFORE_STANDBY".to_string(),
                    "1".to_string(),
                ));
            }
            if args.unsafe_release_before_commit {
                envs.push((
                    "KEN_UNSAFE_RELEASE_BEFORE_COMMIT".to_string(),
                    "1".to_string(),
                ));
            }
            if let Some(plan) = &fuse {
                let (t_fail, heartbeat, create) = plan.child;
                envs.push(("KEN_FUSE_T_FAIL_MS".to_string(), t_fail.to_string()));
                envs.push(("KEN_FUSE_HEARTBEAT_MS".to_string(), heartbeat.to_string()));
                envs.push(("KEN_FUSE_CREATE_TIMEOUT_MS".to_string(), create.to_string()));
            }
            if let Some(c) = &custom {
                envs.push(("KEN_TORTURE_ID".to_string(), id.clone()));
                envs.push((
                    "KEN_TORTURE_CLUSTER".to_string(),
                    c.run_file.display().to_string(),
                ));
            }
            let program = match &custom {
                Some(c) => c.program(i).to_path_buf(),
                None => program.clone(),
            };
            let mut spec = Spec::new(id.clone(), program, Vec::<String>::new(), &logs);
            spec.envs = envs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
            let mut proc = Process::new(spec);
            if fuse.is_some() {
                proc.set_stall_gap(Some(LOCK_STALL_GAP));
            }
            members.push(Member {
                proc,
                restart_at: None,
                killed_for_good: None,
            });
        }
        let upgrade_at = if args.upgrade {
            upgrade_plan(args.seconds, ids.len(), &mut rng)
        } else {
            Vec::new()
        };
        let standbys = if args.standby {
            Some(standby::Standbys::new(
                &ids,
                dir,
                &program,
                args.seconds,
                args.promotions.unwrap_or(DEFAULT_PROMOTIONS),
                &mut rng,
            )?)
        } else {
            None
        };
        let mut cluster = Cluster {
            app,
            custom,
            dir: dir.to_path_buf(),
            check_run: None,
            members,
            stores,
            faults_files,
            ports,
            rng,
            counters: Counters::default(),
            violations: Vec::new(),
            details: Vec::new(),
            ballast: args.tmpfs_mb.map(|_| stores_dir.join("ballast")),
            args,
            clock: Clock::start(),
            links: vec![None; ids.len()],
            link_seeds: vec![0; ids.len()],
            cuts: Vec::new(),
            windows: Vec::new(),
            pause_window: vec![None; ids.len()],
            fuse,
            keys,
            held: vec![Held::only(0); ids.len()],
            rotation: Rotation::default(),
            upgraded: vec![false; ids.len()],
            upgrade_at,
            standbys,
            program,
        };
        if let Some(n) = cluster.args.rotate_key {
            cluster.rotation.left = n;
        }
        cluster.set_args()?;
        Ok(cluster)
    }

    /// (Re)writes every member's command line from the current ports (`--cluster`: and the
    /// run's cluster file).
    fn set_args(&mut self) -> anyhow::Result<()> {
        let ids = self.app.members();
        if let Some(c) = &self.custom {
            let addrs: Vec<SocketAddr> = self.ports.iter().map(|p| loopback(*p)).collect();
            let key = self.keys.as_ref().map(|ring| ring.file(0));
            c.write_run_file(&addrs, &self.stores, key, STATS_INTERVAL_MS)?;
            for (i, m) in self.members.iter_mut().enumerate() {
                let args = c.args(i, addrs[i], &self.stores[i], &[]);
                m.proc.set_args(args.into_iter().map(Into::into).collect());
            }
            return Ok(());
        }
        if let Some(sb) = &self.standbys {
            // The members read each other (and their standbys) from the run's cluster file.
            let addrs: Vec<SocketAddr> = self.ports.iter().map(|p| loopback(*p)).collect();
            let key = self.keys.as_ref().map(|ring| ring.file(0));
            sb.write_run_file(&ids, &addrs, &self.stores, key, STATS_INTERVAL_MS)?;
        }
        for i in 0..self.members.len() {
            let peers: Vec<(String, SocketAddr)> = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, id)| (id.clone(), loopback(self.ports[j])))
                .collect();
            let name = self.app.app().map_or("", |a| a.name());
            let mut args = vec!["app".into(), name.into()];
            let peers = if self.standbys.is_some() {
                &[][..]
            } else {
                &peers[..]
            };
            args.extend(
                self.app
                    .args(i, loopback(self.ports[i]), &self.stores[i], peers)
                    .into_iter()
                    .map(Into::into),
            );
            if let Some(sb) = &self.standbys {
                args.extend(["--cluster".into(), sb.run_file.clone().into_os_string()]);
                if sb.promoted[i] {
                    args.push("--no-standby".into());
                }
            }
            if let Some(ring) = &self.keys {
                args.extend(self.held[i].args(ring).into_iter().map(Into::into));
            }
            if self.upgraded[i] {
                args.extend(["--schema".into(), "2".into()]);
            } else if let Some(n) = self.args.poison {
                args.extend(["--bug-panic-every".into(), n.to_string().into()]);
            }
            self.members[i].proc.set_args(args);
        }
        Ok(())
    }

    fn exp_interval(&mut self, rate: f64) -> Option<Duration> {
        if rate <= 0.0 {
            return None;
        }
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        Some(Duration::from_secs_f64((-u.ln() / rate).min(3600.0)))
    }

    /// Draws the crash point of a restart, if any.
    fn draw_crash_point(&mut self) -> Option<(String, u64)> {
        if !self
            .rng
            .gen_bool(self.args.crash_point_restarts.clamp(0.0, 1.0))
        {
            return None;
        }
        let point = CRASH_POINTS[self.rng.gen_range(0..CRASH_POINTS.len())];
        let p = if point == "recovery" {
            0.5
        } else {
            self.args.crash_point_p.clamp(0.0, 1.0)
        };
        Some((format!("{point}:{p}"), self.rng.gen()))
    }

    fn restart_delay(&mut self) -> Duration {
        let max = self.args.restart_delay_ms.unwrap_or(match &self.fuse {
            Some(p) => p.timing.t_fail_ms * 3 / 10,
            None => 1000,
        });
        Duration::from_millis(self.rng.gen_range(0..=max))
    }

    /// Shortest and longest pause, milliseconds (lock: below half of T_fail, to be masked).
    fn pause_range_ms(&self) -> (u64, u64) {
        let (min, max) = match &self.fuse {
            Some(p) => (50, p.timing.t_fail_ms * 4 / 10),
            None => (1500, 4000),
        };
        let min = self.args.pause_min_ms.unwrap_or(min);
        (min, self.args.pause_max_ms.unwrap_or(max).max(min))
    }

    /// `--standby`: snapshots the members sent their standbys (each a copy of the whole
    /// store), counted from their `reseeding the standby` log lines: an empty replica's
    /// first seeding, and a replica not exactly behind by the batches its primary still
    /// holds (after a primary's restart, say). A lost connection alone is caught up by
    /// shipping (ken/STANDBY.md).
    fn standby_reseeds(&self) -> u64 {
        self.members_log_lines("reseeding the standby")
    }

    /// Lines of the members' standard error (every life) that contain `needle`.
    fn members_log_lines(&self, needle: &str) -> u64 {
        self.members
            .iter()
            .flat_map(|m| m.proc.lives())
            .map(|life| {
                std::fs::read_to_string(&life.stderr_path)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .count() as u64
            })
            .sum()
    }

    /// True if member `i` must not be killed, paused or cut off now: it was killed for good,
    /// or a long partition involves it, or (the server) a permanent kill is being timed, or
    /// (`--standby`) its disk is about to be destroyed: between its standby's kill and the
    /// promotion it must run and be heard, or a build that releases before the standby
    /// holds a batch could go unseen (the negative control once missed that way).
    fn busy(&self, i: usize, now: Instant) -> bool {
        if self.members[i].killed_for_good.is_some() {
            return true;
        }
        if self
            .standbys
            .as_ref()
            .and_then(|sb| sb.pending)
            .is_some_and(|p| p.member == i)
        {
            return true;
        }
        if self
            .cuts
            .iter()
            .any(|c| c.long && (c.member == i || c.cut_from.contains(&i)))
        {
            return true;
        }
        i == lock::SERVER
            && self
                .fuse
                .as_ref()
                .and_then(|p| p.server_quiet_until)
                .is_some_and(|t| now < t)
    }

    /// SIGSTOPs member `i` until `until`, recording the pause.
    fn pause_member(&mut self, i: usize, now: Instant, until: Instant) {
        if !self.members[i].proc.is_running() {
            return;
        }
        self.members[i].proc.pause(until);
        self.windows.push(lock::Window {
            member: i,
            cut_from: None,
            long: false,
            start_ms: self.clock.ms(now),
            end_ms: None,
        });
        self.pause_window[i] = Some(self.windows.len() - 1);
        self.counters.pauses += 1;
    }

    /// SIGCONTs member `i` if paused, closing its pause window.
    fn resume_member(&mut self, i: usize) {
        if self.members[i].proc.paused_until().is_none() {
            self.close_pause_if_dead(i);
            return;
        }
        self.members[i].proc.resume();
        if let Some(w) = self.pause_window[i].take() {
            self.windows[w].end_ms = Some(self.clock.ms(Instant::now()));
        }
    }

    /// A paused member that was killed (or died) is no longer paused: its pause window ends
    /// where its life did (its downtime follows).
    fn close_pause_if_dead(&mut self, i: usize) {
        if self.members[i].proc.paused_until().is_some() {
            return;
        }
        if let Some(w) = self.pause_window[i].take() {
            let ended = self.members[i].proc.current_life().and_then(|l| l.ended_at);
            self.windows[w].end_ms = Some(self.clock.ms(ended.unwrap_or_else(Instant::now)));
        }
    }

    /// Cuts member `i` off from `cut_from` until `until` (`None`: the next epoch).
    fn start_cut(
        &mut self,
        i: usize,
        cut_from: Vec<usize>,
        until: Option<Instant>,
        long: bool,
    ) -> anyhow::Result<()> {
        self.windows.push(lock::Window {
            member: i,
            cut_from: Some(cut_from.clone()),
            long,
            start_ms: self.clock.ms(Instant::now()),
            end_ms: None,
        });
        self.cuts.push(Cut {
            member: i,
            cut_from,
            until,
            long,
            window: self.windows.len() - 1,
        });
        self.write_faults(i)
    }

    /// Heals the cuts `which` selects, rewriting the files concerned.
    fn end_cuts(&mut self, which: impl Fn(&Cut) -> bool) -> anyhow::Result<()> {
        let now_ms = self.clock.ms(Instant::now());
        let (ended, kept): (Vec<Cut>, Vec<Cut>) = std::mem::take(&mut self.cuts)
            .into_iter()
            .partition(|c| which(c));
        self.cuts = kept;
        for c in &ended {
            self.windows[c.window].end_ms = Some(now_ms);
        }
        let members: BTreeSet<usize> = ended.iter().map(|c| c.member).collect();
        for i in members {
            self.write_faults(i)?;
        }
        Ok(())
    }

    /// Writes member `i`'s faults file: its link faults of the epoch and its cuts.
    fn write_faults(&mut self, i: usize) -> anyhow::Result<()> {
        let mut parts: Vec<String> = self.links[i].iter().cloned().collect();
        let cut: BTreeSet<usize> = self
            .cuts
            .iter()
            .filter(|c| c.member == i)
            .flat_map(|c| c.cut_from.iter().copied())
            .collect();
        if !cut.is_empty() {
            let addrs: Vec<String> = cut
                .iter()
                .map(|j| loopback(self.ports[*j]).to_string())
                .collect();
            parts.push(format!("partition={}", addrs.join("+")));
        }
        let text = if parts.is_empty() {
            String::new()
        } else {
            format!("seed={},{}", self.link_seeds[i], parts.join(","))
        };
        write_atomic(&self.faults_files[i], &text)?;
        Ok(())
    }

    /// Handles lives that ended on their own. During the fault phase the dead are restarted
    /// after a random delay; when healing, at once.
    fn reap(&mut self, healing: bool) -> anyhow::Result<()> {
        let mut rebind = false;
        for i in 0..self.members.len() {
            let Some(end) = self.members[i].proc.poll()? else {
                continue;
            };
            let down_for = match end {
                End::Finished => continue,
                End::CrashPoint(_) => {
                    self.counters.crash_points_hit += 1;
                    true
                }
                End::StoreFull => {
                    self.counters.disk_full_exits += 1;
                    true
                }
                End::BindError => {
                    rebind = true;
                    false
                }
                End::KilledByUs => true,
                End::Unexpected(why) => {
                    let m = &self.members[i];
                    if self.custom.is_some() && m.proc.lives().len() == 1 {
                        // A command that cannot run: stop at once with what it said, rather
                        // than restarting it for the whole run.
                        bail!(
                            "process `{}` failed at its first start ({why}); fix its command \
                             in the cluster file or the program (logs in {})",
                            m.proc.name(),
                            m.proc.spec().log_dir.display()
                        );
                    }
                    self.violations.push(format!(
                        "{} life {} ended unexpectedly: {why}",
                        m.proc.name(),
                        m.proc.lives().len()
                    ));
                    true
                }
            };
            if down_for {
                let delay = if healing {
                    Duration::ZERO
                } else {
                    self.restart_delay()
                };
                self.members[i].restart_at = Some(Instant::now() + delay);
            }
        }
        if rebind {
            // Someone took a port: new ports for everyone, everyone restarted with the new
            // address book (addresses are not durable state).
            self.counters.port_changes += 1;
            self.ports = harness::free_ports(self.members.len()).context("pick free UDP ports")?;
            self.set_args()?;
            for i in 0..self.members.len() {
                // Partitions name addresses: rewrite them for the new ports.
                self.write_faults(i)?;
            }
            for m in &mut self.members {
                if m.killed_for_good.is_some() {
                    continue;
                }
                if m.proc.is_running() {
                    m.proc.kill()?;
                }
                m.restart_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Starts the members whose restart is due.
    fn restart_due(&mut self, healing: bool) -> anyhow::Result<()> {
        let now = Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].restart_at.is_some_and(|t| t <= now) {
                self.members[i].restart_at = None;
                let crash = if healing {
                    None
                } else {
                    self.draw_crash_point()
                };
                self.members[i].spawn(crash)?;
                self.counters.restarts += 1;
            }
        }
        Ok(())
    }

    /// Pingpong's operator rule (see ken-tests' pingpong harness): a finished member whose
    /// peer runs without having reported in its current life may be needed to acknowledge
    /// the peer's last message: restart it.
    fn operator_rule(&mut self) -> anyhow::Result<()> {
        if !self.app.finishes() {
            return Ok(());
        }
        if self.custom.is_some() {
            return self.custom_operator_rule();
        }
        let waiting = self.members.iter().any(|m| {
            m.proc.is_running()
                && m.proc
                    .current_life()
                    .is_some_and(|l| l.stdout_lines().is_empty())
        });
        if !waiting {
            return Ok(());
        }
        for m in &mut self.members {
            let finished = m.finished();
            if finished {
                m.spawn(None)?;
                self.counters.restarts += 1;
                self.counters.operator_restarts += 1;
            }
        }
        Ok(())
    }

    /// `--cluster` with `finishes = true`: a process that exited 0 while messages to or from
    /// it are unacknowledged (its acknowledgement was lost, they were sent after it left, or
    /// its own last messages were never acknowledged) is started again to settle them; it
    /// finishes again.
    fn custom_operator_rule(&mut self) -> anyhow::Result<()> {
        if !self.members.iter().any(Member::finished) {
            return Ok(());
        }
        let ids = self.app.members();
        let mut waiting: BTreeSet<String> = BTreeSet::new();
        for (id, s) in ids.iter().zip(&self.stores) {
            let Ok(r) = ken_store::Reader::open(s) else {
                continue;
            };
            for o in r.outbox_stats().unwrap_or_default() {
                if o.depth > 0 {
                    waiting.insert(o.peer);
                    waiting.insert(id.clone());
                }
            }
        }
        for m in &mut self.members {
            if m.finished() && waiting.contains(m.proc.name()) {
                m.spawn(None)?;
                self.counters.restarts += 1;
                self.counters.operator_restarts += 1;
            }
        }
        Ok(())
    }

    fn all_finished(&self) -> bool {
        self.members.iter().all(|m| m.finished())
    }

    /// A new network epoch: every member's link faults are redrawn. Bank and pingpong cut
    /// one member off from all others until the next epoch; lock cuts one member off for a
    /// short time (100 ms to 0.25 x T_fail: with the faults file's poll period, well below
    /// half of T_fail, so that FUSE must mask it).
    fn net_epoch(&mut self, now: Instant) -> anyhow::Result<()> {
        self.counters.net_epochs += 1;
        let n = self.members.len();
        self.end_cuts(|c| c.until.is_none())?;
        let mut cut = None;
        if self.rng.gen_bool(self.args.partition.clamp(0.0, 1.0)) {
            let candidates: Vec<usize> = (0..n).filter(|i| !self.busy(*i, now)).collect();
            if !candidates.is_empty() {
                self.counters.partitions += 1;
                cut = Some(candidates[self.rng.gen_range(0..candidates.len())]);
            }
        }
        for i in 0..n {
            let a = &self.args;
            let faulty = self.rng.gen_bool(a.net_faulty.clamp(0.0, 1.0));
            self.links[i] = faulty.then(|| {
                format!(
                    "drop={},dup={},reorder={},reorder_ms=30,delay={},delay_ms=5-80,corrupt={},truncate={}",
                    a.loss, a.dup, a.reorder, a.delay, a.corrupt, a.truncate
                )
            });
            self.link_seeds[i] = self.rng.gen();
            self.write_faults(i)?;
        }
        if let Some(i) = cut {
            let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
            let until = match &self.fuse {
                Some(p) => {
                    let max = (p.timing.t_fail_ms / 4).max(100);
                    Some(now + Duration::from_millis(self.rng.gen_range(100..=max)))
                }
                None => None,
            };
            self.start_cut(i, others, until, false)?;
        }
        if let Some(sb) = &mut self.standbys {
            if self.rng.gen_bool(standby::LINK_FAULT_SHARE) {
                sb.link_fault(&mut self.rng);
            }
        }
        if let Some(ballast) = self.ballast.clone() {
            let _ = std::fs::remove_file(&ballast);
            if self.rng.gen_bool(self.args.disk_full.clamp(0.0, 1.0)) {
                self.counters.disk_full_episodes += 1;
                fill(&ballast);
            }
        }
        Ok(())
    }

    /// The fault phase, healing, and quiescence. Returns the time quiescence took, `None` if
    /// it did not come within the bound (a liveness violation, recorded).
    fn torture(&mut self) -> anyhow::Result<Option<Duration>> {
        if let Some(sb) = &mut self.standbys {
            sb.start_all()?;
        }
        for m in &mut self.members {
            m.spawn(None)?;
        }
        let start = Instant::now();
        let end = start + Duration::from_secs(self.args.seconds);
        let progress = Progress::new(self.args.seconds);
        let mut next_kill = self.exp_interval(self.args.kill_rate).map(|d| start + d);
        let mut next_pause = self.exp_interval(self.args.pause_rate).map(|d| start + d);
        let net_period = Duration::from_millis(self.args.net_period_ms.max(100));
        let mut next_epoch = start + net_period;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.reap(false)?;
            self.restart_due(false)?;
            self.operator_rule()?;
            if self.app.finishes() && self.all_finished() {
                progress.line("all members finished before the end of the fault phase");
                break;
            }
            for i in 0..self.members.len() {
                if self.members[i]
                    .proc
                    .paused_until()
                    .is_some_and(|t| t <= now)
                {
                    self.resume_member(i);
                }
                self.close_pause_if_dead(i);
            }
            self.end_cuts(|c| c.until.is_some_and(|t| t <= now))?;
            self.fuse_events(now, now.duration_since(start))?;
            self.rotate_keys(now, start + Duration::from_secs(self.args.seconds) / 5)?;
            self.upgrades_due(now.duration_since(start))?;
            self.standby_tick(now, Some(now.duration_since(start)), false)?;
            let standby_killed = next_kill.is_some_and(|t| t <= now)
                && self.standbys.is_some()
                && self.rng.gen_bool(standby::STANDBY_KILL_SHARE)
                && {
                    let delay = self.restart_delay();
                    let sb = self.standbys.as_mut().expect("checked");
                    sb.kill_one(&mut self.rng, delay)?
                };
            if standby_killed {
                next_kill = self.exp_interval(self.args.kill_rate).map(|d| now + d);
            }
            if next_kill.is_some_and(|t| t <= now) {
                let running: Vec<usize> = (0..self.members.len())
                    .filter(|i| self.members[*i].proc.is_running() && !self.busy(*i, now))
                    .collect();
                if !running.is_empty() {
                    let i = running[self.rng.gen_range(0..running.len())];
                    let end = self.members[i].proc.kill()?;
                    match end {
                        End::KilledByUs => self.counters.kills += 1,
                        End::CrashPoint(_) => self.counters.crash_points_hit += 1,
                        End::StoreFull => self.counters.disk_full_exits += 1,
                        End::Finished | End::BindError | End::Unexpected(_) => {}
                    }
                    if end != End::Finished {
                        let delay = self.restart_delay();
                        self.members[i].restart_at = Some(Instant::now() + delay);
                    }
                }
                next_kill = self.exp_interval(self.args.kill_rate).map(|d| now + d);
            }
            let standby_paused = next_pause.is_some_and(|t| t <= now)
                && self.standbys.is_some()
                && self.rng.gen_bool(standby::STANDBY_PAUSE_SHARE)
                && {
                    let (min, max) = self.pause_range_ms();
                    let ms = self.rng.gen_range(min..=max);
                    let sb = self.standbys.as_mut().expect("checked");
                    sb.pause_one(&mut self.rng, now + Duration::from_millis(ms))
                };
            if standby_paused {
                next_pause = self.exp_interval(self.args.pause_rate).map(|d| now + d);
            }
            if next_pause.is_some_and(|t| t <= now) {
                let candidates: Vec<usize> = (0..self.members.len())
                    .filter(|i| {
                        self.members[*i].proc.is_running()
                            && self.members[*i].proc.paused_until().is_none()
                            && !self.busy(*i, now)
                    })
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[self.rng.gen_range(0..candidates.len())];
                    let (min, max) = self.pause_range_ms();
                    let ms = self.rng.gen_range(min..=max);
                    self.pause_member(i, now, now + Duration::from_millis(ms));
                }
                next_pause = self.exp_interval(self.args.pause_rate).map(|d| now + d);
            }
            if now >= next_epoch {
                self.net_epoch(now)?;
                next_epoch = now + net_period;
            }
            progress.tick(now.duration_since(start), &self.counters);
            let mut wake = (now + TICK).min(end).min(next_epoch);
            for t in [next_kill, next_pause].into_iter().flatten() {
                wake = wake.min(t);
            }
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        // Heal.
        progress.line("healing: faults off, paused continued, dead restarted");
        if let Some(plan) = &mut self.fuse {
            self.counters.permanent_kills_skipped += plan.permanent_at.len() as u64;
            self.counters.long_partitions_skipped += plan.long_at.len() as u64;
            plan.permanent_at.clear();
            plan.long_at.clear();
        }
        self.links.iter_mut().for_each(|l| *l = None);
        self.end_cuts(|_| true)?;
        for f in &self.faults_files {
            write_atomic(f, "")?;
        }
        if let Some(b) = &self.ballast {
            let _ = std::fs::remove_file(b);
        }
        if let Some(sb) = &mut self.standbys {
            // A promotion under way finishes now (its victim's standby is already down);
            // those not started are skipped.
            sb.skipped += sb.plan.len() as u64;
            sb.plan.clear();
        }
        self.standby_tick(Instant::now(), None, true)?;
        if self.args.upgrade {
            // Whoever is still on version 1 is upgraded now: version-2 messages to it would
            // be held for ever.
            let left: Vec<usize> = std::mem::take(&mut self.upgrade_at)
                .into_iter()
                .map(|(_, i)| i)
                .collect();
            for i in left {
                self.resume_member(i);
                self.upgrade(i, false)?;
                self.counters.upgrades_at_heal += 1;
            }
        }
        for i in 0..self.members.len() {
            self.resume_member(i);
            let m = &mut self.members[i];
            if m.restart_at.is_some() {
                m.restart_at = Some(Instant::now());
            }
        }
        let healed = Instant::now();
        let deadline = healed + Duration::from_secs(self.args.quiesce_seconds);
        let mut last_turns: Option<(u64, Instant)> = None;
        let mut last_state;
        loop {
            self.reap(true)?;
            self.restart_due(true)?;
            self.operator_rule()?;
            self.lock_operator_rule()?;
            let now = Instant::now();
            self.standby_tick(now, None, true)?;
            self.rotate_keys(now, now)?;
            match self.quiescent(&mut last_turns, now) {
                Ok(None) => {
                    let took = now.duration_since(healed);
                    progress.finish(&format!("quiescent {} ms after healing", took.as_millis()));
                    return Ok(Some(took));
                }
                Ok(Some(state)) => last_state = state,
                Err(e) => last_state = format!("stores unreadable: {e}"),
            }
            if now >= deadline {
                progress.finish("not quiescent");
                self.violations.push(format!(
                    "liveness: not quiescent {} s after healing ({last_state})",
                    self.args.quiesce_seconds
                ));
                return Ok(None);
            }
            std::thread::sleep(QUIESCE_POLL.min(deadline.saturating_duration_since(now)));
        }
    }

    /// `Ok(None)` when quiescent, else what is still missing.
    fn quiescent(
        &mut self,
        last_turns: &mut Option<(u64, Instant)>,
        now: Instant,
    ) -> Result<Option<String>, String> {
        if self.fuse.is_some() {
            return self.lock_quiescent(last_turns, now);
        }
        let t = check::totals(&self.stores)?;
        // Bank: committed messages, not turns, must stop moving: a member whose accounts
        // are all drained keeps firing its transfer timer (skipping) once the others have
        // finished and stopped crediting it, so its turns never stop and its quota may
        // never be reached (the workload's property, not the runtime's).
        let moving = if self.app.finishes() {
            t.turns
        } else {
            t.messages
        };
        let stable_since = match *last_turns {
            Some((seen, since)) if seen == moving => since,
            _ => {
                *last_turns = Some((moving, now));
                now
            }
        };
        let mut missing = Vec::new();
        if t.outbox != 0 {
            missing.push(format!("{} messages in outboxes", t.outbox));
        }
        if t.tasks_pending != 0 {
            missing.push(format!("{} stores with pending tasks", t.tasks_pending));
        }
        if self.app.finishes() {
            if !self.all_finished() {
                missing.push("not every member exited 0".into());
            }
        } else {
            if self.members.iter().any(|m| !m.proc.is_running()) {
                missing.push("a member is down".into());
            }
        }
        if now.duration_since(stable_since) < QUIESCE_STABLE {
            missing.push(format!("turns/messages moving ({moving})"));
        }
        if !self.rotation.done() {
            missing.push("a key rotation in progress".into());
        }
        Ok((!missing.is_empty()).then(|| missing.join(", ")))
    }

    /// `--rotate-key`: starts a rotation once `first_at` has passed (a new key, the plan of
    /// [`keys::rotation_plan`]) and makes its restarts one at a time: each member is
    /// SIGKILLed and started again at once holding its next keys, the next one only
    /// [`ROTATION_GAP`] after it listens. A member that is down or finished just gets its new
    /// keys for its next start.
    fn rotate_keys(&mut self, now: Instant, first_at: Instant) -> anyhow::Result<()> {
        let Some(ring) = &mut self.keys else {
            return Ok(());
        };
        if let Some(i) = self.rotation.waiting_on {
            let proc = &self.members[i].proc;
            let listening = proc
                .current_life()
                .is_some_and(|l| l.listening_at().is_some());
            if !listening && proc.is_running() {
                return Ok(());
            }
            self.rotation.waiting_on = None;
            self.rotation.next_at = Some(now + ROTATION_GAP);
            if self.rotation.steps.is_empty() {
                self.counters.key_rotations += 1;
            }
        }
        if self.rotation.next_at.unwrap_or(first_at) > now {
            return Ok(());
        }
        if self.rotation.steps.is_empty() {
            if self.rotation.left == 0 {
                return Ok(());
            }
            self.rotation.left -= 1;
            let old = ring.newest();
            let new = ring.generate()?;
            // With `--standby`, the standbys are processes of the procedure too (slots after
            // the members'): each pass restarts them after the members, so that a standby
            // always accepts the key its primary sends with.
            let standbys = self.standbys.as_ref().map_or(0, |sb| sb.procs.len());
            self.rotation.steps =
                keys::rotation_plan(self.members.len() + standbys, old, new).into();
        }
        let Some(step) = self.rotation.steps.pop_front() else {
            return Ok(());
        };
        if let Some(j) = step.member.checked_sub(self.members.len()) {
            let sb = self
                .standbys
                .as_mut()
                .expect("a standby slot of a --standby run");
            let mut key_args = step.held.args(ring);
            if self.args.unsafe_standby_single_key {
                key_args.truncate(2);
            }
            if sb.rekey(j, key_args)? {
                self.counters.key_rotation_restarts += 1;
            }
            self.rotation.next_at = Some(now + ROTATION_GAP);
            if self.rotation.steps.is_empty() {
                self.counters.key_rotations += 1;
            }
            return Ok(());
        }
        let i = step.member;
        self.held[i] = step.held;
        self.set_args()?;
        if self.members[i].proc.is_running() && self.members[i].killed_for_good.is_none() {
            self.resume_member(i);
            match self.members[i].proc.kill()? {
                End::KilledByUs => {}
                End::CrashPoint(_) => self.counters.crash_points_hit += 1,
                End::StoreFull => self.counters.disk_full_exits += 1,
                End::Finished | End::BindError | End::Unexpected(_) => {}
            }
            self.close_pause_if_dead(i);
            self.members[i].restart_at = None;
            self.members[i].spawn(None)?;
            self.counters.restarts += 1;
            self.counters.key_rotation_restarts += 1;
            self.rotation.waiting_on = Some(i);
        } else if self.rotation.steps.is_empty() {
            self.counters.key_rotations += 1;
            self.rotation.next_at = Some(now + ROTATION_GAP);
        }
        Ok(())
    }

    /// `--standby`: reaps and restarts the standbys, makes the promotions that are due
    /// (`elapsed` into the fault phase; `None` when healing: a promotion under way is
    /// finished at once) and measures the promoted members' first turns.
    fn standby_tick(
        &mut self,
        now: Instant,
        elapsed: Option<Duration>,
        healing: bool,
    ) -> anyhow::Result<()> {
        let Some(sb) = &mut self.standbys else {
            return Ok(());
        };
        let died = sb.reap_and_restart(healing, Duration::from_millis(500))?;
        self.violations.extend(died);
        sb.measure();
        if let Some(p) = sb.pending {
            if healing || now >= p.destroy_at {
                self.destroy_and_promote(p.member)?;
            }
            return Ok(());
        }
        let Some(elapsed) = elapsed else {
            return Ok(());
        };
        if sb.plan.first().is_none_or(|t| *t > elapsed) {
            return Ok(());
        }
        let promoted = sb.promoted.clone();
        let candidates: Vec<usize> = (0..self.members.len())
            .filter(|i| !promoted[*i] && !self.busy(*i, now))
            .collect();
        let sb = self.standbys.as_mut().expect("checked");
        if candidates.is_empty() {
            sb.plan.remove(0);
            sb.skipped += 1;
            return Ok(());
        }
        let i = candidates[self.rng.gen_range(0..candidates.len())];
        let sb = self.standbys.as_mut().expect("checked");
        sb.plan.remove(0);
        sb.begin(i, now)?;
        // The victim runs through the window (see `busy`), a pause included.
        self.resume_member(i);
        Ok(())
    }

    /// `--standby`: member `i`'s disk is destroyed for good and its standby promoted, as an
    /// operator would (ken/STANDBY.md): SIGKILL, every file of its store deleted, `ken
    /// standby promote` on the replica (its standby is already down), and `i` started on the
    /// replica at its standby address with `--no-standby`. The replica is `i`'s store from
    /// now on, for every check.
    fn destroy_and_promote(&mut self, i: usize) -> anyhow::Result<()> {
        self.resume_member(i);
        if self.members[i].proc.is_running() {
            match self.members[i].proc.kill()? {
                End::CrashPoint(_) => self.counters.crash_points_hit += 1,
                End::StoreFull => self.counters.disk_full_exits += 1,
                End::KilledByUs | End::Finished | End::BindError | End::Unexpected(_) => {}
            }
        }
        self.close_pause_if_dead(i);
        self.members[i].restart_at = None;
        standby::Standbys::destroy(&self.stores[i])?;
        let sb = self.standbys.as_mut().expect("a --standby run");
        sb.promote(&self.program, i)?;
        self.stores[i] = sb.replicas[i].clone();
        self.ports[i] = sb.address[i].port();
        self.set_args()?;
        for j in 0..self.members.len() {
            // Partitions name addresses: i's is new.
            self.write_faults(j)?;
        }
        self.members[i].spawn(None)?;
        self.counters.restarts += 1;
        Ok(())
    }

    /// `--upgrade`: makes the upgrades that are due.
    fn upgrades_due(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        while self.upgrade_at.first().is_some_and(|(t, _)| *t <= elapsed) {
            let (_, i) = self.upgrade_at.remove(0);
            self.upgrade(i, true)?;
        }
        Ok(())
    }

    /// Replaces member `i` by schema version 2: SIGKILL if running, then start the new
    /// version on the same store at once, with a migration crash point if `crash_points`
    /// and a coin says so. A member that is down starts as version 2 at its planned restart.
    fn upgrade(&mut self, i: usize, crash_points: bool) -> anyhow::Result<()> {
        self.upgraded[i] = true;
        self.set_args()?;
        self.counters.upgrades += 1;
        if !self.members[i].proc.is_running() {
            return Ok(());
        }
        match self.members[i].proc.kill()? {
            End::CrashPoint(_) => self.counters.crash_points_hit += 1,
            End::StoreFull => self.counters.disk_full_exits += 1,
            End::KilledByUs | End::Finished | End::BindError | End::Unexpected(_) => {}
        }
        self.close_pause_if_dead(i);
        let crash = (crash_points && self.rng.gen_bool(0.5)).then(|| {
            let point = ["migrate_step", "migrate_commit"][self.rng.gen_range(0..2)];
            (format!("{point}:0.5"), self.rng.gen())
        });
        self.members[i].restart_at = None;
        self.members[i].spawn(crash)?;
        self.counters.restarts += 1;
        Ok(())
    }

    /// `--upgrade`: every store at schema version 2, and no dead letter anywhere, nor a
    /// poison input unless `--poison` (then their number is returned: each was run by the
    /// fixed version, which the other checks prove: every transfer applied exactly once).
    /// One line per violation.
    fn check_upgrade(&self) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        let mut poison_inputs = 0;
        for s in &self.stores {
            let r = match ken_store::Reader::open(s) {
                Ok(r) => r,
                Err(e) => {
                    out.push(format!("upgrade: cannot open {}: {e}", s.display()));
                    continue;
                }
            };
            match r.meta() {
                Ok(m) => {
                    let v = m.app.map(|a| a.schema_version);
                    if v != Some(2) {
                        out.push(format!(
                            "upgrade: {} ends at schema version {v:?}, expected 2",
                            m.process_id
                        ));
                    }
                }
                Err(e) => out.push(format!("upgrade: meta of {}: {e}", s.display())),
            }
            if self.args.poison.is_some() {
                match r.table_scan(ken::living::POISON_TABLE, &[], None, u32::MAX) {
                    Ok(rows) => poison_inputs += rows.len() as u64,
                    Err(e) => out.push(format!("upgrade: scan poison of {}: {e}", s.display())),
                }
            }
            let tables: &[&str] = if self.args.poison.is_some() {
                &[ken::living::DEAD_LETTERS_TABLE]
            } else {
                &[ken::living::DEAD_LETTERS_TABLE, ken::living::POISON_TABLE]
            };
            for &table in tables {
                match r.table_scan(table, &[], None, 5) {
                    Ok(rows) if rows.is_empty() => {}
                    Ok(rows) => out.push(format!(
                        "upgrade: {} holds {}{} rows in {table} (an input of the rolling upgrade was not processed)",
                        s.display(),
                        rows.len(),
                        if rows.len() == 5 { " or more" } else { "" }
                    )),
                    Err(e) => out.push(format!("upgrade: scan {table} of {}: {e}", s.display())),
                }
            }
        }
        (out, poison_inputs)
    }

    /// SIGKILLs every running member (the end of a run; not counted as a kill).
    fn stop_all(&mut self) {
        if let Some(sb) = &mut self.standbys {
            sb.stop_all();
        }
        for i in 0..self.members.len() {
            self.resume_member(i);
            let m = &mut self.members[i];
            if m.proc.is_running() {
                let _ = m.proc.kill();
            }
        }
    }

    /// Lock runs: makes the permanent kills and long partitions that are due.
    fn fuse_events(&mut self, now: Instant, elapsed: Duration) -> anyhow::Result<()> {
        let Some(plan) = &self.fuse else {
            return Ok(());
        };
        let bound = Duration::from_millis(plan.timing.bound_ms + plan.timing.slack_ms / 2);
        if plan.permanent_at.first().is_some_and(|t| *t <= elapsed) {
            // A contending holder at work: running, not paused, not finished, not in a cut.
            let candidates: Vec<usize> = (2..self.members.len())
                .filter(|i| {
                    let m = &self.members[*i];
                    m.proc.is_running()
                        && m.proc.paused_until().is_none()
                        && !self.busy(*i, now)
                        && !self
                            .cuts
                            .iter()
                            .any(|c| c.member == *i || c.cut_from.contains(i))
                })
                .collect();
            if !candidates.is_empty() {
                let i = candidates[self.rng.gen_range(0..candidates.len())];
                let killed_at = Instant::now();
                let end = self.members[i].proc.kill()?;
                let plan = self.fuse.as_mut().expect("lock run");
                if end == End::Finished {
                    // It finished its rounds a moment ago: not a kill; another victim later.
                    return Ok(());
                }
                self.members[i].killed_for_good = Some(killed_at);
                self.members[i].restart_at = None;
                plan.permanent_at.remove(0);
                plan.server_quiet_until = Some(killed_at + bound);
                self.counters.permanent_kills += 1;
            }
        }
        let Some(plan) = &self.fuse else {
            return Ok(());
        };
        if let Some((earliest, latest, len)) = plan.long_at.first().copied() {
            if elapsed > latest {
                self.fuse.as_mut().expect("lock run").long_at.remove(0);
                self.counters.long_partitions_skipped += 1;
            } else if elapsed >= earliest && self.long_partition_ready(now) {
                self.fuse.as_mut().expect("lock run").long_at.remove(0);
                self.counters.long_partitions += 1;
                self.start_cut(lock::STICKY, vec![lock::SERVER], Some(now + len), true)?;
            }
        }
        Ok(())
    }

    /// A long partition may start: the server and the sticky holder run, unpaused, with no
    /// cut and no permanent kill being timed, and the sticky holder holds its lock (its last
    /// line says `holding`).
    fn long_partition_ready(&self, now: Instant) -> bool {
        let pair = [lock::SERVER, lock::STICKY];
        let up = pair.iter().all(|i| {
            let m = &self.members[*i];
            m.proc.is_running() && m.proc.paused_until().is_none() && !self.busy(*i, now)
        });
        let cut = self
            .cuts
            .iter()
            .any(|c| pair.contains(&c.member) || c.cut_from.iter().any(|j| pair.contains(j)));
        if !up || cut {
            return false;
        }
        let last = self.members[lock::STICKY]
            .proc
            .lives()
            .iter()
            .rev()
            .flat_map(|l| l.stdout_lines().into_iter().rev())
            .find(|l| !l.contains("\"refused\""));
        last.is_some_and(|l| l.contains("\"event\":\"holding\""))
    }

    /// Lock runs: a contending holder that finished while the server still has messages for
    /// it (a `Freed` sent after it left) is started again to take them (it finishes again).
    fn lock_operator_rule(&mut self) -> anyhow::Result<()> {
        if self.fuse.is_none() {
            return Ok(());
        }
        let pending =
            lock::outbox_depths(&self.stores[lock::SERVER]).map_err(anyhow::Error::msg)?;
        let ids = self.app.members();
        for (i, id) in ids.iter().enumerate().skip(2) {
            let m = &self.members[i];
            let finished = m.finished() && m.killed_for_good.is_none();
            if finished && pending.get(id).is_some_and(|d| *d > 0) {
                self.members[i].spawn(None)?;
                self.counters.restarts += 1;
                self.counters.operator_restarts += 1;
            }
        }
        Ok(())
    }

    /// Lock runs: `Ok(None)` when quiescent, else what is still missing.
    fn lock_quiescent(
        &mut self,
        last_turns: &mut Option<(u64, Instant)>,
        now: Instant,
    ) -> Result<Option<String>, String> {
        let mut missing = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if m.killed_for_good.is_some() {
                continue;
            }
            let finished = m.finished();
            if i < 2 && !m.proc.is_running() {
                missing.push(format!("{} is down", m.proc.name()));
            } else if i >= 2 && !finished {
                missing.push(format!("{} has not finished its rounds", m.proc.name()));
            }
        }
        let gone: Vec<bool> = self
            .members
            .iter()
            .map(|m| m.killed_for_good.is_some())
            .collect();
        missing.extend(lock::unsettled(&self.app.members(), &self.stores, &gone)?);
        let turns = check::totals(&self.stores)?.turns;
        let stable_since = match *last_turns {
            Some((seen, since)) if seen == turns => since,
            _ => {
                *last_turns = Some((turns, now));
                now
            }
        };
        if now.duration_since(stable_since) < QUIESCE_STABLE {
            missing.push(format!("turns moving ({turns})"));
        }
        Ok((!missing.is_empty()).then(|| missing.join(", ")))
    }

    /// Runs the checks and builds the JSON summary (violations are added to `self`).
    fn summary(&mut self, seed: u64, quiesced: Option<Duration>) -> serde_json::Value {
        // Deaths from here on are the end of the run, not downtime.
        let end_ms = self.clock.ms(Instant::now());
        self.stop_all();
        // Safety is checked after every run; completeness only after quiescence.
        let q = quiesced.is_some();
        let ids = self.app.members();
        let gone: Vec<bool> = self
            .members
            .iter()
            .map(|m| m.killed_for_good.is_some())
            .collect();
        self.violations
            .extend(check::check_pairs_except(&ids, &self.stores, &gone, q));
        let fuse = self.fuse.as_ref().map(|plan| {
            let record = self.lock_record(plan.timing, q, end_ms);
            let checked = lock::check(&record);
            if let Some(dir) = self
                .members
                .first()
                .and_then(|m| m.proc.spec().log_dir.parent())
            {
                let mut text = lock::timeline(&record, self.clock.base_ms);
                text.push_str("# what the checks found (Unix ms)\n");
                for n in &checked.1.notes {
                    text.push_str(n);
                    text.push('\n');
                }
                let _ = std::fs::write(dir.join("timeline.txt"), text);
            }
            checked
        });
        if let Some((violations, _)) = &fuse {
            self.violations.extend(violations.iter().cloned());
        }
        self.violations.extend(self.app.check(&self.stores, q));
        let check_cmd = self.args.check.clone().or_else(|| {
            self.custom
                .as_ref()
                .and_then(|c| c.file.torture.check.clone())
        });
        if let Some(cmd) = &check_cmd {
            let run = custom::run_check(
                cmd,
                &self.dir,
                &ids,
                &self.stores,
                self.custom.as_ref().map(|c| c.run_file.as_path()),
                q,
                Duration::from_secs(self.args.check_timeout_seconds),
            );
            if !run.passed {
                let how = match (&run.problem, run.exit) {
                    (Some(p), _) => p.clone(),
                    (None, Some(code)) => format!("exited {code}"),
                    (None, None) => "failed".into(),
                };
                self.violations
                    .push(format!("check command `{cmd}` {how}; its output:"));
                self.violations
                    .extend(run.lines.iter().map(|l| format!("check: {l}")));
            }
            self.check_run = Some(run);
        }
        if let (Some(_), Some(sb)) = (self.args.rotate_key, &self.standbys) {
            // Each bit the link harness flips can spoil one handshake; more refusals than
            // that mean a standby did not accept the key its primary sent with.
            let refused = self.members_log_lines(STANDBY_HELLO_UNAUTHENTICATED);
            let flips = sb.link_bit_flips();
            if refused > flips {
                self.violations.push(format!(
                    "key rotation: {refused} answers of standbys to their primary's Hello did \
                     not authenticate, more than the {flips} bits the link harness flipped: a \
                     standby did not accept the key its primary sent with (the pair released \
                     nothing until both held the same key)"
                ));
            }
        }
        let mut poison_inputs = 0;
        if self.args.upgrade {
            let (upgrade, poisoned) = self.check_upgrade();
            self.violations.extend(upgrade);
            poison_inputs = poisoned;
        }
        for (i, m) in self.members.iter().enumerate() {
            let lines: Vec<String> = m
                .proc
                .lives()
                .iter()
                .flat_map(|l| l.stdout_lines())
                .collect();
            self.violations.extend(self.app.check_output(i, &lines, q));
        }
        self.details = self.members.iter().map(|m| m.proc.describe()).collect();
        if let Some(sb) = &self.standbys {
            self.details.extend(sb.procs.iter().map(|p| p.describe()));
        }
        let totals = check::totals(&self.stores).unwrap_or_default();
        let mut recovery: Vec<u64> = self
            .members
            .iter()
            .flat_map(|m| m.proc.lives().iter().skip(1))
            .filter_map(|l| l.recovery_ms())
            .collect();
        recovery.sort_unstable();
        let pct = |p: f64| -> u64 {
            if recovery.is_empty() {
                0
            } else {
                recovery[((recovery.len() as f64 * p).ceil() as usize).clamp(1, recovery.len()) - 1]
            }
        };
        let stats: Vec<harness::Stats> = self
            .members
            .iter()
            .flat_map(|m| m.proc.lives().iter().filter_map(|l| l.stats()))
            .collect();
        let c = &self.counters;
        let mut summary = serde_json::json!({
            "seed": seed,
            "app": self.app.name(),
            "seconds": self.args.seconds,
            "processes": self.members.len(),
            "kills": c.kills,
            "crash_points_hit": c.crash_points_hit,
            "pauses": c.pauses,
            "restarts": c.restarts,
            "operator_restarts": c.operator_restarts,
            "disk_full_exits": c.disk_full_exits,
            "disk_full_episodes": c.disk_full_episodes,
            "net_epochs": c.net_epochs,
            "partitions": c.partitions,
            "port_changes": c.port_changes,
            "turns": totals.turns,
            "messages": totals.messages,
            "retransmits": stats.iter().map(|s| s.retransmits).sum::<u64>(),
            "duplicates_dropped": stats.iter().map(|s| s.duplicates_dropped).sum::<u64>(),
            "frames_corrupted_dropped": stats.iter().map(|s| s.junk_dropped).sum::<u64>(),
            "keyed": self.keys.is_some(),
            "key_rotations": c.key_rotations,
            "key_rotation_restarts": c.key_rotation_restarts,
            "frames_unknown_key_dropped": stats.iter().map(|s| s.unknown_key_dropped).sum::<u64>(),
            "frames_bad_tag_dropped": stats.iter().map(|s| s.bad_tag_dropped + s.untagged_dropped).sum::<u64>(),
            "frames_old_key": stats.iter().map(|s| s.old_key_frames).sum::<u64>(),
            "recovery_ms_p50": pct(0.5),
            "recovery_ms_p99": pct(0.99),
            "quiesce_ms": quiesced.map(|d| d.as_millis() as u64),
            "violations": self.violations.len(),
        });
        if let Some(sb) = &self.standbys {
            summary["standby"] = true.into();
            summary["promotions"] = sb.first_turn_ms.len().into();
            summary["promotions_skipped"] = sb.skipped.into();
            summary["promotion_to_first_turn_ms"] = sb.first_turn_ms.clone().into();
            summary["standby_kills"] = sb.kills.into();
            summary["standby_pauses"] = sb.pauses.into();
            summary["standby_link_cuts"] = sb.link_cuts.into();
            summary["standby_link_bit_flips"] = sb.link_bit_flips().into();
            summary["standby_restarts"] = sb.restarts.into();
            summary["standby_reseeds"] = self.standby_reseeds().into();
            // Restarted primaries whose replica was ahead (batches taken back from the
            // standby) or behind by commits of their store's journal: each a reseed before.
            summary["standby_take_backs"] = self.members_log_lines("took back").into();
            // Answers to a member's Hello it could not authenticate: a standby holding another
            // key (a rotation step out of order), or a bit the link harness flipped.
            summary["standby_hello_unauthenticated"] =
                self.members_log_lines(STANDBY_HELLO_UNAUTHENTICATED).into();
            summary["standby_given_back_from_journal"] = sb.given_back_from_journal().into();
            summary["standby_journal_catch_ups"] =
                self.members_log_lines("from the store's journal").into();
            summary["unsafe_release_before_standby"] =
                self.args.unsafe_release_before_standby.into();
        }
        if let Some(cmd) = &check_cmd {
            let run = self.check_run.clone().unwrap_or_default();
            summary["check"] = serde_json::json!({
                "command": cmd,
                "passed": run.passed,
                "exit": run.exit,
                "ms": run.ms,
                "output": run.lines,
            });
        }
        if let Some(c) = &self.custom {
            summary["cluster_file"] = c.file.path.display().to_string().into();
            summary["run_cluster_file"] = c.run_file.display().to_string().into();
        }
        if self.args.upgrade {
            let extra = serde_json::json!({
                "upgrades": c.upgrades,
                "upgrades_at_heal": c.upgrades_at_heal,
                "messages_held": stats.iter().map(|s| s.messages_held).sum::<u64>(),
                "dead_letters": stats.iter().map(|s| s.dead_letters).sum::<u64>(),
                "poison_inputs": poison_inputs,
            });
            if let (Some(out), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
                out.extend(extra.clone());
            }
        }
        if let (Some(plan), Some((_, r))) = (&self.fuse, &fuse) {
            let mut notify = r.notify_ms.clone();
            notify.sort_unstable();
            let t = plan.timing;
            let extra = serde_json::json!({
                "holders": self.args.holders,
                "locks": self.args.locks,
                "hold_ms": self.args.hold_ms,
                "rounds": self.args.rounds.unwrap_or_else(|| default_rounds(&self.args)),
                "t_fail_ms": t.t_fail_ms,
                "heartbeat_ms": t.heartbeat_ms,
                "create_timeout_ms": t.create_timeout_ms,
                "children_t_fail_ms": plan.child.0,
                "children_heartbeat_ms": plan.child.1,
                "fuse_bound_ms": t.bound_ms,
                "fuse_slack_ms": t.slack_ms,
                "permanent_kills": c.permanent_kills,
                "permanent_kills_skipped": c.permanent_kills_skipped,
                "long_partitions": c.long_partitions,
                "long_partitions_skipped": c.long_partitions_skipped,
                "groups_created": r.groups_created,
                "groups_failed": r.groups_failed,
                "groups_live": r.groups_live,
                "grants": r.grants,
                "freed": r.freed,
                "token_max": r.token_max,
                "notify_samples": notify.len(),
                "notify_ms_max": notify.last(),
                "notify_ms_p50": notify.get(notify.len().saturating_sub(1) / 2),
                "notify_unmeasured": r.notify_unmeasured,
                "false_positives": r.false_positives,
                "failures_signalled": r.failures_signalled,
                "failures_excused": r.failures_excused,
                "failures_unclassified": r.failures_unclassified,
                "outages_masked": r.outages_masked,
                "outage_masked_ms_max": r.outage_masked_ms_max,
                "outages_long_other": r.outages_long_other,
                "lines_unconfirmed": r.lines_unconfirmed,
            });
            if let (Some(out), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
                out.extend(extra.clone());
            }
        }
        summary
    }

    /// The record of a lock run for [`lock::check`]: every life's lines and times in wall
    /// clock, the pauses and partitions, the permanent kills.
    fn lock_record(&self, timing: lock::Timing, quiesced: bool, end_ms: u64) -> lock::RunRecord {
        let clock = self.clock;
        let members = self
            .members
            .iter()
            .zip(&self.stores)
            .map(|(m, store)| lock::MemberRecord {
                id: m.proc.name().to_string(),
                store: store.clone(),
                lives: m
                    .proc
                    .lives()
                    .iter()
                    .map(|l| lock::LifeRecord {
                        lines: l.stdout_lines(),
                        listening_ms: l.listening_at().map(|t| clock.ms(t)),
                        ended_ms: l.ended_at.map(|t| clock.ms(t)),
                        stalls: l
                            .stalls()
                            .into_iter()
                            .map(|(a, b)| (clock.ms(a), clock.ms(b)))
                            .collect(),
                        end: l.end.clone(),
                    })
                    .collect(),
                permanent_kill_ms: m.killed_for_good.map(|t| clock.ms(t)),
            })
            .collect();
        lock::RunRecord {
            members,
            rounds: self
                .args
                .rounds
                .unwrap_or_else(|| default_rounds(&self.args)),
            windows: self.windows.clone(),
            timing,
            quiesced,
            end_ms,
        }
    }
}

/// Writes `path` until the disk is full (a disk-full episode).
fn fill(path: &Path) {
    let Ok(mut f) = std::fs::File::create(path) else {
        return;
    };
    let chunk = vec![0u8; 1 << 20];
    // Bounded: at most 64 GiB, far above any --tmpfs-mb.
    for _ in 0..(64 << 10) {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
}

/// A progress bar on a terminal, plain lines every 10 s otherwise (both on stderr).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    fn new(seconds: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(seconds);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            last_line: std::cell::Cell::new(None),
        }
    }

    fn tick(&self, elapsed: Duration, c: &Counters) {
        let msg = format!(
            "kills {} crash points {} pauses {} restarts {} partitions {}",
            c.kills, c.crash_points_hit, c.pauses, c.restarts, c.partitions
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_secs());
                bar.set_message(msg);
            }
            None => {
                let now = Instant::now();
                if self
                    .last_line
                    .get()
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    self.last_line.set(Some(now));
                    eprintln!("ken torture: {} s: {msg}", elapsed.as_secs());
                }
            }
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("ken torture: {text}"),
        }
    }

    fn finish(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(text.to_string()),
            None => eprintln!("ken torture: {text}"),
        }
    }
}
