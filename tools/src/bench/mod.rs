//! `ken bench`: measures this machine against the project's performance targets.
//!
//! Four measurements, one after the other, all on the disk under `--dir`:
//! 1. **Raw fsync rate** ([`ken::store::bench`]): a 4 KiB write plus `fdatasync` in a loop,
//!    the ceiling for a store that committed each turn on its own.
//! 2. **Pingpong round trip**: two processes of the example app ([`ken_apps::pingpong`])
//!    volley one ball; the hitter's driver times each ball from the turn that sent it to the
//!    frame that acknowledged it, which is the answering ball, handled in the hitter's next
//!    turn (the observation hook, [`ken::observe::Observer`]): A's commit, the datagram, B's
//!    turn and commit, the datagram back. Runs before the throughput phase, on a quiet disk.
//! 3. **Durable turns per second at one receiver**: one load-generator process ([`load`],
//!    `"load": "raw-frames"` in the report) speaks the frame protocol for `--senders`
//!    simulated senders, each keeping `--outstanding` messages unacknowledged to one
//!    receiver (a real Ken process, [`node::Receiver`]), whose handler does one table write
//!    per message. Turns are counted from the receiver's store ([`ken::store::Reader`]
//!    `meta`, read while it runs) at the start and end of a window after warm-up, so only
//!    durable turns count; `turns_per_commit` comes from the same two reads. At the end,
//!    what each simulated sender had acknowledged is checked against the receiver's peer
//!    rows in its store, and what all senders sent against what the receiver consumed.
//! 4. **Acknowledgement latency**, in the same run as 3: one extra, light sender (the
//!    probe, one message per millisecond, at most [`node::PROBE_OUTSTANDING`] outstanding)
//!    runs under the real driver with its observation hook set, which timestamps each
//!    message's send turn, first transmission and acknowledgement ([`node::ProbeReport`]):
//!    the latency a message sees at a saturated receiver.
//!
//! **Write volume**: the pingpong hitter (about one turn per commit) and the throughput
//! receiver (many turns per commit) each report, when done, what their store wrote (the
//! store's own syscall counters, [`ken::store::vfs::write_counters`]: WAL frames and pages
//! and checkpoints, not the WAL's one-time preallocation) and the turns and commits it made
//! durable: `bytes_per_turn_alone` and `bytes_per_turn_busy`, with the turns per commit each
//! was measured at (`alone_turns_per_commit`, `busy_turns_per_commit`).
//!
//! **The curve** (`--plot FILE`, after everything else): the unkeyed throughput measurement
//! of 3, without the probe, at each load of [`curve::LOADS`] (1 simulated sender keeping 1
//! message unacknowledged up to 8 keeping 256 each), one round each, 0.5 s warm-up and 2 s
//! window (0.3 s and 0.5 s with `--quick`). Each point ([`curve::CurvePoint`], the report's
//! `curve`) has the window's turns per second, turns per commit and commits per second, and
//! the receiver's store bytes per turn over its run with that run's turns per commit. The
//! points are drawn with the `plotters` crate into an SVG at FILE: durable turns per second
//! and bytes per turn, each against turns per commit (log axis), titled with the fsync rate,
//! the CPUs and the filesystem. FILE's directory is checked to be writable before anything
//! runs.
//!
//! **The cost of authentication**: phases 2 and 3 run three times, one after the other: with
//! no cluster key (the report's main numbers), with a key (every frame tagged), and with a
//! key and encryption; every process of a phase, the load generator included, holds the same
//! fresh key. The report's `auth` rows give each variant's turns per second, acknowledgement
//! latency and round trip, and their ratios to the unkeyed run (`keyed_turns_ratio`, target
//! [`AUTH_TURNS_RATIO_TARGET`]).
//!
//! All processes share this machine's CPUs and disk. The load is one light process (no
//! store, no engine; `load_cpu_cores` in the report says what it used) rather than one full
//! Ken process per sender, whose own commits and runtimes would compete with the receiver's
//! and measure the machine's contention instead of the receiver; a deployment with senders
//! on other machines would see neither. The receiver's CPU and run-queue wait
//! (`receiver_cpu_cores`, `receiver_cpu_wait_cores`) say whether it was still crowded out,
//! by the bench or by anything else running; `cpus` says how much there was to share. The
//! fsync rate is fsyncs over elapsed time, so a disk that stalls now and then has a rate far
//! below `1 / p50`; the report says so when it sees it, since the ratio to the target then
//! moves from run to run.
//!
//! Every Ken process is a child process (`ken bench-node`, run through the process harness,
//! [`ken_tools::harness`]), with its own store, runtime and UDP port on 127.0.0.1; so is the
//! load generator, with one port per simulated sender. Ports are picked by binding port 0
//! and releasing it just before the child binds it (peers need each other's address up
//! front); if another program takes one in between, the child exits with
//! [`node::EXIT_BIND`] and the phase is retried with new ports. The first process of a phase (receiver, echo) is started first and the others once
//! it announces that it listens, so no warm-up is lost to retransmission backoff. Children
//! finish on their own when the measurement is over; they are killed if they outlive their
//! phase (and kill themselves at a deadline if `ken bench` dies), so nothing runs after the
//! command exits. The stores live in a temporary directory that is removed at the end.
//!
//! Exit codes ([`EXIT_CODES_HELP`], also in `--help`): 0 every target met, [`EXIT_MISS`] (2)
//! a target missed (a MISS line), 1 an error. The hidden `--target-scale F` multiplies every
//! target by F so that a test can force a miss; real runs never set it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ken::store::bench::BenchOptions;
use ken::store::Reader;
use ken::Time;
use ken_tools::harness::{self, End, Process, Spec};
use serde::Serialize;

pub mod curve;
pub mod fuse;
pub mod fuse_node;
mod load;
pub mod node;

use load::LoadReport;
pub use node::NodeArgs;
use node::{NodeSpec, PingpongReport, ProbeReport, ReceiverReport, Role};

/// The project's throughput target: durable turns per second at one receiver, divided by
/// the disk's raw fsyncs per second, at least this.
pub const TURNS_PER_FSYNC_TARGET: f64 = 20.0;

/// The round-trip budget is `RTT_BUDGET_FSYNCS * fsync_us_p50 + RTT_BUDGET_SLACK_US`.
pub const RTT_BUDGET_FSYNCS: f64 = 3.0;
pub const RTT_BUDGET_SLACK_US: f64 = 200.0;

/// The most turns per second a key may cost: keyed turns/s over unkeyed turns/s at least
/// this (issue 12: at most 10% fewer).
pub const AUTH_TURNS_RATIO_TARGET: f64 = 0.9;

/// With a standby: keyed turns/s with a standby over keyed turns/s without, at least this
/// (issue 18).
pub const STANDBY_TURNS_RATIO_TARGET: f64 = 0.8;
/// With a standby: keyed pingpong round trip p50 with a standby over without, at most this.
pub const STANDBY_RTT_RATIO_TARGET: f64 = 1.5;

/// The throughput phase's load generator, in the report.
pub const LOAD_KIND: &str = "raw-frames";

/// Child id of the load generator.
const LOAD_ID: &str = "load";

/// Seed of the simulated senders' incarnations (fixed: a run is reproducible, and every run
/// has fresh stores, so no incarnation is ever reused against the same store).
const LOAD_SEED: u64 = 0x6b65_6e2d_6265_6e63;

/// Attempts per phase when a child could not bind the port picked for it.
const PORT_ATTEMPTS: u32 = 3;

/// Senders stop producing this long after the throughput window ends, so the window never
/// sees the load wind down.
const STOP_AFTER_WINDOW: Duration = Duration::from_millis(200);

/// A child still running this long after its phase stopped producing is killed and the
/// phase fails (draining a full outbox takes well under a second here).
const DRAIN_MAX: Duration = Duration::from_secs(15);

/// How long the first process of a phase (receiver, echo) may take to bind its port.
const LISTEN_MAX: Duration = Duration::from_secs(5);

/// How long to wait for the receiver's store to be readable at the window start.
const STORE_READY_MAX: Duration = Duration::from_secs(2);

/// Environment variables that would change what is measured (fault injection, crash
/// points, test-only switches, periodic stats); children run without them.
const SCRUBBED_ENV: [&str; 6] = [
    "KEN_FAULTS",
    "KEN_FAULTS_FILE",
    "KEN_UNSAFE_RELEASE_BEFORE_COMMIT",
    "KEN_CRASH_AT",
    "KEN_CRASH_SEED",
    "KEN_STATS_INTERVAL_MS",
];

/// `ken bench` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Another measurement instead of the default one (`ken bench fuse`).
    #[command(subcommand)]
    pub what: Option<What>,
    /// Print one JSON object (every number of the report) instead of the readable report.
    #[arg(long)]
    pub json: bool,
    /// Directory on the disk to measure; a fresh temporary directory is made inside it and
    /// removed at the end. Default: the system temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seconds per measurement (fsync loop, throughput window, pingpong).
    #[arg(
        long,
        default_value_t = 3.0,
        value_name = "N",
        conflicts_with = "quick"
    )]
    pub seconds: f64,
    /// Simulated senders loading the receiver, all run by one load-generator process (the
    /// latency probe is one more sender, a Ken process of its own).
    #[arg(long, default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub senders: u32,
    /// Unacknowledged messages each simulated sender keeps (its flow-control bound). The default is
    /// the runtime's in-flight window per peer: each sender's window stays full, and nothing
    /// queues behind it (which would only add latency).
    #[arg(long, default_value_t = ken::limits::WINDOW_MESSAGES_MAX as u32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub outstanding: u32,
    /// A smoke run of under 10 seconds: short windows, rough numbers.
    #[arg(long)]
    pub quick: bool,
    /// After the other phases, measure the curve: unkeyed throughput at five loads, from 1x1
    /// to 8x256 simulated senders x unacknowledged messages each (about 1 to hundreds of
    /// turns per commit; about 20 s, 7 s with --quick). Writes an SVG of turns/s and store
    /// bytes/turn against turns/commit to FILE, and adds the points to the report (`curve`
    /// in --json). FILE's directory must exist and be writable (checked first).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Rounds of the pingpong and throughput phases, each round running the three key
    /// variants (none, key, key and encryption; the next round in reverse order); each
    /// variant reports its median round.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Testing only: multiplies every target by F (divides the round-trip budget by F), so
    /// that a test can force a MISS and check the exit code. Real runs leave it at 1.
    #[arg(long, default_value_t = 1.0, value_name = "F", hide = true)]
    pub target_scale: f64,
}

/// Exit code of `ken bench` (and `ken bench fuse`) when it measured everything but missed a
/// target (printed a MISS line, or a `*_pass` field is false in `--json`).
pub const EXIT_MISS: u8 = 2;

/// What `ken bench` (and `ken bench fuse`) says in `--help` about its exit codes.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 every target met (every verdict PASS); \
1 the measurement could not be made (an error, printed on standard error); \
2 measured, but a target was missed (a MISS line; in --json a `*_pass` field is false).";

/// Whether every target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every target met: exit 0.
    Met,
    /// At least one MISS: exit [`EXIT_MISS`].
    Missed,
}

impl Verdict {
    fn of(all_pass: bool) -> Verdict {
        if all_pass {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

/// The measurements other than the default one.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// FUSE: liveness bytes per second per process for 1, 100 and 10,000 groups over the same
    /// 8 processes, and kill-to-notification times.
    #[command(after_help = EXIT_CODES_HELP)]
    Fuse(fuse::FuseArgs),
}

/// How long each phase runs.
#[derive(Debug, Clone)]
struct Plan {
    fsync: Duration,
    warmup: Duration,
    window: Duration,
    pingpong_warmup: Duration,
    pingpong: Duration,
    /// Warm-up and window of each point of the curve (`--plot`).
    curve_warmup: Duration,
    curve_window: Duration,
}

impl Plan {
    fn new(args: &Args) -> anyhow::Result<Plan> {
        if args.quick {
            return Ok(Plan {
                fsync: Duration::from_millis(500),
                warmup: Duration::from_millis(600),
                window: Duration::from_secs(1),
                pingpong_warmup: Duration::from_millis(300),
                pingpong: Duration::from_secs(1),
                curve_warmup: Duration::from_millis(300),
                curve_window: Duration::from_millis(500),
            });
        }
        if !(args.seconds.is_finite() && args.seconds >= 0.1 && args.seconds <= 600.0) {
            bail!("--seconds must be between 0.1 and 600");
        }
        let s = Duration::from_secs_f64(args.seconds);
        Ok(Plan {
            fsync: s,
            warmup: Duration::from_secs(1),
            window: s,
            pingpong_warmup: Duration::from_millis(500),
            pingpong: s,
            curve_warmup: Duration::from_millis(500),
            curve_window: Duration::from_secs(2),
        })
    }
}

/// Everything `ken bench` measured; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The directory the stores were in, and the filesystem holding it (Linux).
    pub dir: String,
    pub filesystem: Option<String>,
    /// CPUs available to the bench: every process of a phase shares them.
    pub cpus: usize,
    pub quick: bool,

    pub fsync_per_sec: f64,
    pub fsync_us_p50: u64,
    pub fsync_us_p99: u64,
    pub fsyncs: u64,

    /// What loaded the receiver: [`LOAD_KIND`] (one load-generator process speaking the
    /// frame protocol for `senders` simulated senders).
    pub load: &'static str,
    pub senders: u32,
    pub outstanding_per_sender: u32,
    pub window_secs: f64,
    /// Durable turns per second at the receiver over the window.
    pub turns_per_sec: f64,
    pub turns_per_commit: f64,
    pub commits_per_sec: f64,
    pub window_turns: u64,
    pub window_commits: u64,
    /// Messages the receiver consumed over the whole run (equal to what was sent: checked).
    pub messages_delivered: u64,
    /// CPU the receiver process used over the window, in cores (Linux): near 1 or more
    /// means it was bound by CPU rather than by the disk.
    pub receiver_cpu_cores: Option<f64>,
    /// Time the receiver's threads were runnable but waiting for a CPU over the window, per
    /// second (Linux): well above 0 means the other processes crowded it out.
    pub receiver_cpu_wait_cores: Option<f64>,
    /// CPU the load generator used over the window, in cores (Linux).
    pub load_cpu_cores: Option<f64>,
    /// Frames the load generator sent again after a timeout, over the whole run.
    pub load_retransmits: u64,

    /// Probe: send turn to acknowledgement received, at the saturated receiver.
    pub ack_latency_us_p50: u64,
    pub ack_latency_us_p99: u64,
    /// Probe: first transmission to acknowledgement received.
    pub ack_after_transmit_us_p50: u64,
    pub ack_after_transmit_us_p99: u64,
    pub ack_samples: u64,

    /// Hitter's send turn to its turn receiving the answer (the frame acknowledging its
    /// ball).
    pub pingpong_rtt_us_p50: u64,
    pub pingpong_rtt_us_p99: u64,
    pub pingpong_volleys: u64,

    /// Bytes the store wrote per durable turn (WAL frames and pages, checkpoints; its own
    /// syscall counters, without the WAL's one-time preallocation) in the pingpong hitter,
    /// whose turns commit about one per batch (`alone_turns_per_commit`), and in the
    /// throughput receiver under load (`busy_turns_per_commit`). Each process's whole run;
    /// the unkeyed variant's median rounds. `None` if a process did not report them.
    pub bytes_per_turn_alone: Option<f64>,
    pub alone_turns_per_commit: Option<f64>,
    pub bytes_per_turn_busy: Option<f64>,
    pub busy_turns_per_commit: Option<f64>,

    pub turns_per_fsync_ratio: f64,
    pub turns_per_fsync_target: f64,
    pub turns_per_fsync_pass: bool,
    /// `3 * fsync_us_p50 + 200`: the most `pingpong_rtt_us_p50` may be.
    pub rtt_budget_us: f64,
    pub rtt_pass: bool,

    /// The same measurements per authentication variant (`none` first: the numbers above).
    pub auth: Vec<AuthCost>,
    /// Turns per second with a key (and with a key and encryption) over turns per second
    /// without.
    pub keyed_turns_ratio: f64,
    pub encrypted_turns_ratio: f64,
    /// Pingpong round trip p50 with a key (with a key and encryption) over without.
    pub keyed_rtt_ratio: f64,
    pub encrypted_rtt_ratio: f64,
    pub auth_turns_ratio_target: f64,
    pub keyed_turns_pass: bool,
    /// Keyed turns/s with a standby over keyed turns/s without, and the same of the pingpong
    /// round trip p50 ([`STANDBY_TURNS_RATIO_TARGET`], [`STANDBY_RTT_RATIO_TARGET`]; reported,
    /// not part of the exit code).
    pub standby_turns_ratio: f64,
    pub standby_rtt_ratio: f64,
    pub standby_turns_pass: bool,
    pub standby_rtt_pass: bool,
    /// Rounds of each variant (`--rounds`); every figure is its variant's median round.
    pub rounds: u32,

    /// `--plot`: the curve's points, lightest load first (empty without `--plot`), and the
    /// SVG file drawn from them.
    pub curve: Vec<curve::CurvePoint>,
    pub plot: Option<String>,
}

/// How a measurement's processes protect their frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No cluster key.
    None,
    /// A cluster key: every frame tagged.
    Key,
    /// A cluster key and encryption of every peer frame's payload.
    KeyEncrypt,
    /// A cluster key, and every process with a store ships each batch to a standby replica
    /// on loopback before releasing it (issue 18, ken/STANDBY.md).
    KeyStandby,
}

impl AuthMode {
    const ALL: [AuthMode; 4] = [
        AuthMode::None,
        AuthMode::Key,
        AuthMode::KeyEncrypt,
        AuthMode::KeyStandby,
    ];

    fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Key => "key",
            AuthMode::KeyEncrypt => "key-encrypt",
            AuthMode::KeyStandby => "key-standby",
        }
    }
}

/// One authentication variant's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct AuthCost {
    pub mode: AuthMode,
    pub turns_per_sec: f64,
    /// `turns_per_sec` over the unkeyed run's.
    pub turns_ratio: f64,
    pub turns_per_commit: f64,
    pub receiver_cpu_cores: Option<f64>,
    pub ack_latency_us_p50: u64,
    pub ack_latency_us_p99: u64,
    pub pingpong_rtt_us_p50: u64,
    pub pingpong_rtt_us_p99: u64,
    /// `pingpong_rtt_us_p50` over the unkeyed run's.
    pub rtt_ratio: f64,
    /// Frames the load generator received from the receiver, and how many carried a tag
    /// that checked out under the key (the proof the variant ran keyed).
    pub load_frames_in: u64,
    pub load_frames_tagged: u64,
    /// Every round's turns per second and pingpong round trip p50, in round order (the
    /// figures above are the median rounds): the spread says how much to trust a ratio.
    pub turns_per_sec_rounds: Vec<f64>,
    pub pingpong_rtt_us_p50_rounds: Vec<u64>,
}

/// The keys of one variant's processes.
#[derive(Debug, Clone)]
struct AuthPlan {
    mode: AuthMode,
    key_file: Option<PathBuf>,
}

impl AuthPlan {
    fn apply(&self, spec: &mut NodeSpec) {
        spec.key_file = self.key_file.clone();
        spec.encrypt = self.mode == AuthMode::KeyEncrypt;
        spec.standby = self.mode == AuthMode::KeyStandby;
    }
}

/// The run whose `key` is the median (the lower middle one of an even count).
fn median_by<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    assert!(!runs.is_empty(), "at least one round");
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs.swap_remove((runs.len() - 1) / 2)
}

/// Nearest-rank percentile of sorted samples (0 if there are none).
pub(crate) fn percentile(sorted: &[u64], pct: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = (sorted.len() as u64 - 1) * pct / 100;
    sorted[idx as usize]
}

/// Runs `ken bench`; `Ok` says whether every target was met (the exit code, see
/// [`EXIT_CODES_HELP`]).
pub fn run(args: &Args) -> anyhow::Result<Verdict> {
    if let Some(What::Fuse(fuse_args)) = &args.what {
        return fuse::run(fuse_args);
    }
    if !(args.target_scale.is_finite() && args.target_scale > 0.0) {
        bail!("--target-scale must be a positive number");
    }
    let plan = Plan::new(args)?;
    if let Some(plot) = &args.plot {
        curve::check_writable(plot)?;
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("ken-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a directory in {}", base.display()))?;
    let dir = tmp.path().to_path_buf();
    let filesystem = describe_filesystem(&dir);
    let progress = |what: &str| {
        if !args.json {
            eprintln!("ken bench: {what}");
        }
    };
    progress(&format!(
        "stores in {} ({})",
        dir.display(),
        filesystem.as_deref().unwrap_or("filesystem unknown")
    ));

    progress(&format!(
        "raw fsync rate ({:.1} s)",
        plan.fsync.as_secs_f64()
    ));
    let fsync = ken::store::bench::run(
        &dir,
        &BenchOptions {
            fsync_time: plan.fsync,
            batch_time: Duration::ZERO,
            batch_sizes: Vec::new(),
            ..BenchOptions::full()
        },
    )?
    .fsync;
    if fsync.fsyncs == 0 {
        bail!("the fsync loop measured nothing");
    }

    let key_file = dir.join("bench.key");
    ken::ClusterKey::write_new(&key_file)?;
    let auths: Vec<AuthPlan> = AuthMode::ALL
        .iter()
        .map(|&mode| AuthPlan {
            mode,
            key_file: (mode != AuthMode::None).then(|| key_file.clone()),
        })
        .collect();
    // Round r runs the variants in order, the next round in reverse (ABC CBA ...), so that a
    // drift of the machine over the run does not favour one; each variant's figure is the
    // round with its median value.
    let rounds = args.rounds.max(1);
    let order = |r: u32| -> Vec<usize> {
        let mut o: Vec<usize> = (0..auths.len()).collect();
        if r % 2 == 1 {
            o.reverse();
        }
        o
    };
    let mut pingpong_runs: Vec<Vec<PingpongReport>> = vec![Vec::new(); auths.len()];
    for r in 0..rounds {
        for i in order(r) {
            let auth = &auths[i];
            progress(&format!(
                "pingpong round trips, keys: {} ({:.1} s, round {}/{rounds})",
                auth.mode.name(),
                plan.pingpong.as_secs_f64(),
                r + 1
            ));
            pingpong_runs[i].push(with_port_retries(|attempt| {
                pingpong(&dir, &plan, auth, r, attempt)
            })?);
        }
    }
    let mut load_runs: Vec<Vec<Throughput>> = auths.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for i in order(r) {
            let auth = &auths[i];
            progress(&format!(
                "throughput, keys: {}: {} simulated senders ({LOAD_KIND}) -> 1 receiver, plus the latency probe ({:.1} s warm-up, {:.1} s window, round {}/{rounds})",
                auth.mode.name(),
                args.senders,
                plan.warmup.as_secs_f64(),
                plan.window.as_secs_f64(),
                r + 1
            ));
            let shape = LoadShape {
                senders: args.senders,
                outstanding: args.outstanding,
                probe: true,
            };
            let name = format!("throughput-{}-{r}", auth.mode.name());
            load_runs[i].push(with_port_retries(|attempt| {
                throughput(&dir, shape, &plan, auth, &name, attempt)
            })?);
        }
    }
    let rtt_rounds: Vec<Vec<u64>> = pingpong_runs
        .iter()
        .map(|runs| runs.iter().map(|p| p.rtt_us_p50).collect())
        .collect();
    let turns_rounds: Vec<Vec<f64>> = load_runs
        .iter()
        .map(|runs| runs.iter().map(|t| t.turns_per_sec).collect())
        .collect();
    let pingpongs: Vec<PingpongReport> = pingpong_runs
        .into_iter()
        .map(|runs| median_by(runs, |p| p.rtt_us_p50 as f64))
        .collect();
    let loads: Vec<Throughput> = load_runs
        .into_iter()
        .map(|runs| median_by(runs, |t| t.turns_per_sec))
        .collect();
    let (pingpong, load) = (pingpongs[0].clone(), &loads[0]);
    let rounds_run = rounds;
    let auth: Vec<AuthCost> = auths
        .iter()
        .zip(pingpongs.iter().zip(&loads))
        .zip(turns_rounds.into_iter().zip(rtt_rounds))
        .map(|((a, (p, l)), (turns_rounds, rtt_rounds))| AuthCost {
            mode: a.mode,
            turns_per_sec: l.turns_per_sec,
            turns_ratio: l.turns_per_sec / load.turns_per_sec,
            turns_per_commit: l.turns_per_commit,
            receiver_cpu_cores: l.receiver_cpu_cores,
            ack_latency_us_p50: l.probe.ack_latency_us_p50,
            ack_latency_us_p99: l.probe.ack_latency_us_p99,
            pingpong_rtt_us_p50: p.rtt_us_p50,
            pingpong_rtt_us_p99: p.rtt_us_p99,
            rtt_ratio: p.rtt_us_p50 as f64 / pingpong.rtt_us_p50.max(1) as f64,
            load_frames_in: l.load_frames_in,
            load_frames_tagged: l.load_frames_tagged,
            turns_per_sec_rounds: turns_rounds,
            pingpong_rtt_us_p50_rounds: rtt_rounds,
        })
        .collect();

    let mut points = Vec::new();
    if args.plot.is_some() {
        for (i, &(senders, outstanding)) in curve::LOADS.iter().enumerate() {
            progress(&format!(
                "curve point {}/{}: {senders} simulated senders x {outstanding} outstanding -> 1 receiver, no keys ({:.1} s warm-up, {:.1} s window)",
                i + 1,
                curve::LOADS.len(),
                plan.curve_warmup.as_secs_f64(),
                plan.curve_window.as_secs_f64(),
            ));
            let shape = LoadShape {
                senders,
                outstanding,
                probe: false,
            };
            let curve_plan = Plan {
                warmup: plan.curve_warmup,
                window: plan.curve_window,
                ..plan.clone()
            };
            let name = format!("curve-{i}");
            let t = with_port_retries(|attempt| {
                throughput(&dir, shape, &curve_plan, &auths[0], &name, attempt)
            })?;
            let writes = t.receiver_writes.as_ref().with_context(|| {
                format!("the receiver of curve point {senders}x{outstanding} reported no write counters")
            })?;
            let (bytes_per_turn, run_turns_per_commit) = writes.per_turn();
            points.push(curve::CurvePoint {
                senders,
                outstanding_per_sender: outstanding,
                window_secs: t.window_secs,
                turns_per_sec: t.turns_per_sec,
                turns_per_commit: t.turns_per_commit,
                commits_per_sec: t.commits_per_sec,
                bytes_per_turn,
                run_turns_per_commit,
            });
        }
    }

    let turns_per_fsync_ratio = load.turns_per_sec / fsync.fsync_per_sec;
    let rtt_budget_us =
        (RTT_BUDGET_FSYNCS * fsync.fsync_us_p50 as f64 + RTT_BUDGET_SLACK_US) / args.target_scale;
    let turns_per_fsync_target = TURNS_PER_FSYNC_TARGET * args.target_scale;
    let auth_turns_ratio_target = AUTH_TURNS_RATIO_TARGET * args.target_scale;
    let result = BenchResult {
        dir: dir.display().to_string(),
        filesystem,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        quick: args.quick,
        fsync_per_sec: fsync.fsync_per_sec,
        fsync_us_p50: fsync.fsync_us_p50,
        fsync_us_p99: fsync.fsync_us_p99,
        fsyncs: fsync.fsyncs,
        load: LOAD_KIND,
        senders: args.senders,
        outstanding_per_sender: args.outstanding,
        window_secs: load.window_secs,
        turns_per_sec: load.turns_per_sec,
        turns_per_commit: load.turns_per_commit,
        commits_per_sec: load.commits_per_sec,
        window_turns: load.window_turns,
        window_commits: load.window_commits,
        messages_delivered: load.messages_delivered,
        receiver_cpu_cores: load.receiver_cpu_cores,
        receiver_cpu_wait_cores: load.receiver_cpu_wait_cores,
        load_cpu_cores: load.load_cpu_cores,
        load_retransmits: load.load_retransmits,
        ack_latency_us_p50: load.probe.ack_latency_us_p50,
        ack_latency_us_p99: load.probe.ack_latency_us_p99,
        ack_after_transmit_us_p50: load.probe.ack_after_transmit_us_p50,
        ack_after_transmit_us_p99: load.probe.ack_after_transmit_us_p99,
        ack_samples: load.probe.samples,
        pingpong_rtt_us_p50: pingpong.rtt_us_p50,
        pingpong_rtt_us_p99: pingpong.rtt_us_p99,
        pingpong_volleys: pingpong.volleys,
        bytes_per_turn_alone: pingpong.writes.as_ref().map(|w| w.per_turn().0),
        alone_turns_per_commit: pingpong.writes.as_ref().map(|w| w.per_turn().1),
        bytes_per_turn_busy: load.receiver_writes.as_ref().map(|w| w.per_turn().0),
        busy_turns_per_commit: load.receiver_writes.as_ref().map(|w| w.per_turn().1),
        turns_per_fsync_ratio,
        turns_per_fsync_target,
        turns_per_fsync_pass: turns_per_fsync_ratio >= turns_per_fsync_target,
        rtt_budget_us,
        rtt_pass: pingpong.rtt_us_p50 as f64 <= rtt_budget_us,
        keyed_turns_ratio: auth[1].turns_ratio,
        encrypted_turns_ratio: auth[2].turns_ratio,
        keyed_rtt_ratio: auth[1].rtt_ratio,
        encrypted_rtt_ratio: auth[2].rtt_ratio,
        auth_turns_ratio_target,
        keyed_turns_pass: auth[1].turns_ratio >= auth_turns_ratio_target,
        standby_turns_ratio: auth[3].turns_per_sec / auth[1].turns_per_sec,
        standby_rtt_ratio: auth[3].pingpong_rtt_us_p50 as f64
            / auth[1].pingpong_rtt_us_p50.max(1) as f64,
        standby_turns_pass: auth[3].turns_per_sec / auth[1].turns_per_sec
            >= STANDBY_TURNS_RATIO_TARGET * args.target_scale,
        standby_rtt_pass: auth[3].pingpong_rtt_us_p50 as f64
            / auth[1].pingpong_rtt_us_p50.max(1) as f64
            <= STANDBY_RTT_RATIO_TARGET / args.target_scale,
        rounds: rounds_run,
        auth,
        curve: points,
        plot: args.plot.as_ref().map(|p| p.display().to_string()),
    };
    if let Some(plot) = &args.plot {
        let machine = curve::Machine {
            fsync_per_sec: result.fsync_per_sec,
            cpus: result.cpus,
            filesystem: result.filesystem.as_deref(),
            quick: result.quick,
        };
        curve::write(plot, &result.curve, &machine)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", render(&result));
    }
    Ok(Verdict::of(
        result.turns_per_fsync_pass && result.rtt_pass && result.keyed_turns_pass,
    ))
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// The readable report.
fn render(r: &BenchResult) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "ken bench{}: stores in {} ({}), {} CPUs",
        if r.quick { " --quick" } else { "" },
        r.dir,
        r.filesystem.as_deref().unwrap_or("filesystem unknown"),
        r.cpus
    ));
    line(format!(
        "  disk        4 KiB write + fdatasync: {:.0}/s, p50 {} us, p99 {} us ({} fsyncs)",
        r.fsync_per_sec, r.fsync_us_p50, r.fsync_us_p99, r.fsyncs
    ));
    let fsync_us_mean = 1e6 / r.fsync_per_sec;
    if fsync_us_mean > 3.0 * r.fsync_us_p50 as f64 {
        line(format!(
            "              note: the mean fsync ({fsync_us_mean:.0} us) is far above the median: \
             the disk stalls now and then, so the rate (and the ratio below) varies from run to run"
        ));
    }
    line(format!(
        "  throughput  {} simulated senders x {} outstanding -> 1 receiver ({} load), {:.1} s window: {:.0} durable turns/s, {:.1} turns/commit, {:.0} commits/s",
        r.senders, r.outstanding_per_sender, r.load, r.window_secs, r.turns_per_sec, r.turns_per_commit, r.commits_per_sec
    ));
    if let (Some(cores), Some(wait)) = (r.receiver_cpu_cores, r.receiver_cpu_wait_cores) {
        line(format!(
            "              receiver threads: {cores:.2} s on a CPU and {wait:.2} s waiting for one, per second ({} CPUs)",
            r.cpus
        ));
    }
    if let Some(load) = r.load_cpu_cores {
        line(format!(
            "              load generator: {load:.2} s on a CPU per second, {} frames retransmitted",
            r.load_retransmits
        ));
    }
    line(format!(
        "  ack latency probe at the loaded receiver, send turn -> ack received: p50 {} us, p99 {} us ({} messages); first transmission -> ack: p50 {} us, p99 {} us",
        r.ack_latency_us_p50, r.ack_latency_us_p99, r.ack_samples, r.ack_after_transmit_us_p50, r.ack_after_transmit_us_p99
    ));
    line(format!(
        "  pingpong    round trip (A sends, B commits and answers, A's next turn): p50 {} us, p99 {} us ({} volleys)",
        r.pingpong_rtt_us_p50, r.pingpong_rtt_us_p99, r.pingpong_volleys
    ));
    if let (Some(alone), Some(alone_tpc), Some(busy), Some(busy_tpc)) = (
        r.bytes_per_turn_alone,
        r.alone_turns_per_commit,
        r.bytes_per_turn_busy,
        r.busy_turns_per_commit,
    ) {
        line(format!(
            "  writes      store bytes per durable turn (its syscall counters): {alone:.0} alone ({alone_tpc:.1} turns/commit, pingpong), {busy:.0} busy ({busy_tpc:.1} turns/commit, the receiver)"
        ));
    }
    line(format!(
        "  authentication (the same phases with a cluster key, and with a key and encryption; median of {} round{})",
        r.rounds,
        if r.rounds == 1 { "" } else { "s" }
    ));
    for a in &r.auth {
        line(format!(
            "    {:<12} {:>8.0} turns/s ({:>5.1}% of unkeyed)  ack latency p50 {:>6} us  pingpong rtt p50 {:>5} us ({:>5.1}% of unkeyed), p99 {} us",
            a.mode.name(),
            a.turns_per_sec,
            100.0 * a.turns_ratio,
            a.ack_latency_us_p50,
            a.pingpong_rtt_us_p50,
            100.0 * a.rtt_ratio,
            a.pingpong_rtt_us_p99
        ));
        if r.rounds > 1 {
            let turns: Vec<String> = a
                .turns_per_sec_rounds
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect();
            let rtt: Vec<String> = a
                .pingpong_rtt_us_p50_rounds
                .iter()
                .map(u64::to_string)
                .collect();
            line(format!(
                "                 rounds: turns/s {}; rtt p50 {} us",
                turns.join(" "),
                rtt.join(" ")
            ));
        }
    }
    if let Some(plot) = &r.plot {
        line(format!(
            "  curve       unkeyed throughput by load (senders x outstanding), plotted in {plot}:"
        ));
        for p in &r.curve {
            line(format!(
                "    {:>7} {:>8.0} turns/s  {:>6.1} turns/commit  {:>6.0} commits/s  {:>7.0} bytes/turn ({:.1} turns/commit over the run)",
                format!("{}x{}", p.senders, p.outstanding_per_sender),
                p.turns_per_sec,
                p.turns_per_commit,
                p.commits_per_sec,
                p.bytes_per_turn,
                p.run_turns_per_commit
            ));
        }
    }
    line("  targets".to_string());
    line(format!(
        "    turns/s / fsync/s = {:.1}   (target >= {:.0})   {}",
        r.turns_per_fsync_ratio,
        r.turns_per_fsync_target,
        pass(r.turns_per_fsync_pass)
    ));
    line(format!(
        "    pingpong rtt p50 = {} us   (budget 3 x fsync p50 + 200 = {:.0} us)   {}",
        r.pingpong_rtt_us_p50,
        r.rtt_budget_us,
        pass(r.rtt_pass)
    ));
    line(format!(
        "    keyed turns/s / unkeyed turns/s = {:.2}   (target >= {:.2})   {}",
        r.keyed_turns_ratio,
        r.auth_turns_ratio_target,
        pass(r.keyed_turns_pass)
    ));
    line(format!(
        "    with a standby / keyed without: turns/s {:.2} (target >= {STANDBY_TURNS_RATIO_TARGET:.2}) {}, pingpong rtt p50 {:.2}x (target <= {STANDBY_RTT_RATIO_TARGET:.1}x) {}   (reported; not in the exit code)",
        r.standby_turns_ratio,
        pass(r.standby_turns_pass),
        r.standby_rtt_ratio,
        pass(r.standby_rtt_pass)
    ));
    s
}

/// A child could not bind the port picked for it; the phase may be retried.
#[derive(Debug)]
struct PortTaken(String);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} could not bind its UDP port", self.0)
    }
}

impl std::error::Error for PortTaken {}

fn with_port_retries<T>(mut phase: impl FnMut(u32) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut attempt = 1;
    loop {
        match phase(attempt) {
            Err(e) if e.is::<PortTaken>() && attempt < PORT_ATTEMPTS => attempt += 1,
            r => return r,
        }
    }
}

/// What a failed [`harness::free_addrs`] says.
const NO_FREE_PORT: &str = "cannot bind a UDP port on 127.0.0.1";

/// When a phase measures, as wall-clock instants handed to its children.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    measure_from: Time,
    measure_until: Time,
    /// Producers stop at this instant.
    stop_at: Time,
    /// Children exit by themselves at this instant ([`node::EXIT_DEADLINE`]). Late enough
    /// for a schedule made up to [`LISTEN_MAX`] later to drain, so the first process of a
    /// phase can be started on an early schedule, before the others' is known.
    deadline: Time,
}

impl Schedule {
    fn from_now(warmup: Duration, window: Duration, stop_after: Duration) -> Schedule {
        let measure_from = Time::now_wall().plus(warmup);
        let measure_until = measure_from.plus(window);
        let stop_at = measure_until.plus(stop_after);
        Schedule {
            measure_from,
            measure_until,
            stop_at,
            deadline: stop_at.plus(DRAIN_MAX).plus(LISTEN_MAX),
        }
    }
}

fn sleep_until(t: Time) {
    std::thread::sleep(t.since(Time::now_wall()));
}

/// The bench's child processes. Dropping it kills (SIGKILL) and reaps any still running.
struct Children {
    dir: PathBuf,
    procs: Vec<Process>,
}

impl Children {
    fn new(dir: &Path) -> Children {
        Children {
            dir: dir.to_path_buf(),
            procs: Vec::new(),
        }
    }

    fn spawn(&mut self, spec: &NodeSpec) -> anyhow::Result<()> {
        let args = ["bench-node".to_string(), serde_json::to_string(spec)?];
        let mut child = Spec::new(spec.id.clone(), own_executable()?, args, &self.dir);
        child.env_remove = SCRUBBED_ENV.map(Into::into).to_vec();
        let p = Process::start(child).context("cannot start a bench process")?;
        self.procs.push(p);
        Ok(())
    }

    fn get(&self, id: &str) -> anyhow::Result<&Process> {
        self.procs
            .iter()
            .find(|p| p.name() == id)
            .with_context(|| format!("no bench process {id}"))
    }

    /// Fails if a child has ended other than by exiting 0 (or by our [`Children::stop`]),
    /// naming it and quoting its error output.
    fn check(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.poll()?;
        }
        for p in &self.procs {
            let Some(life) = p.current_life() else {
                continue;
            };
            match &life.end {
                None | Some(End::Finished) | Some(End::KilledByUs) => {}
                Some(End::BindError) => return Err(PortTaken(p.name().to_string()).into()),
                Some(end) => bail!(
                    "bench process {} failed ({end:?}): {}",
                    p.name(),
                    life.stderr_tail(5).trim()
                ),
            }
        }
        Ok(())
    }

    /// Waits until child `id` has bound its port (the runtime's `announce` line on its
    /// standard error), so that the others' first datagrams are not lost to a socket that
    /// does not exist yet (their retransmission backoff would eat into the warm-up).
    fn wait_listening(&mut self, id: &str) -> anyhow::Result<()> {
        let until = Instant::now() + LISTEN_MAX;
        loop {
            let life = self.get(id)?.current_life();
            if life.is_some_and(|l| l.listening_at().is_some()) {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= until {
                bail!("bench process {id} did not start listening within {LISTEN_MAX:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Fails if any child has exited at all (none should before its phase ends).
    fn check_running(&mut self) -> anyhow::Result<()> {
        self.check()?;
        if let Some(p) = self.procs.iter().find(|p| !p.is_running()) {
            bail!("bench process {} exited early", p.name());
        }
        Ok(())
    }

    /// Waits until every child named in `ids` (all, if empty) exited successfully; fails
    /// at `deadline`.
    fn wait(&mut self, ids: &[&str], deadline: Instant) -> anyhow::Result<()> {
        loop {
            self.check()?;
            let running: Vec<&str> = self
                .procs
                .iter()
                .filter(|p| p.is_running() && (ids.is_empty() || ids.contains(&p.name())))
                .map(|p| p.name())
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "bench processes did not finish in time: {}",
                    running.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs child `id` (one that keeps nothing the bench still needs).
    fn stop(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(p) = self.procs.iter_mut().find(|p| p.name() == id) {
            if p.is_running() {
                p.kill()?;
            }
        }
        Ok(())
    }

    /// The process id of child `id`.
    fn pid(&self, id: &str) -> Option<u32> {
        self.get(id).ok().and_then(Process::pid)
    }

    /// The last line a child printed on standard output that parses as a `T` (JSON): a
    /// child may print several reports of different kinds.
    fn report<T: serde::de::DeserializeOwned>(&self, id: &str) -> anyhow::Result<T> {
        let lines = self
            .get(id)?
            .current_life()
            .map(|l| l.stdout_lines())
            .unwrap_or_default();
        let mut error = None;
        for line in lines.iter().rev() {
            match serde_json::from_str(line) {
                Ok(t) => return Ok(t),
                Err(e) => error = error.or(Some(e)),
            }
        }
        Err(anyhow::anyhow!(
            "bench process {id} printed no report of the kind expected ({}; got {lines:?})",
            error.map_or("no lines".to_string(), |e| e.to_string())
        ))
    }
}

/// The executable children are started from: this process's own. On Linux that is
/// `/proc/self/exe`, which stays valid when the file is replaced or deleted while the bench
/// runs (a concurrent `cargo build`), and guarantees the children run the same code as the
/// parent; elsewhere, the path it was started from.
fn own_executable() -> anyhow::Result<PathBuf> {
    let proc_self = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe().context("cannot find the ken executable")
}

/// Opens a store for reading once its owner has created it.
fn open_reader(path: &Path) -> anyhow::Result<Reader> {
    let until = Instant::now() + STORE_READY_MAX;
    loop {
        match Reader::open(path) {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= until => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn phase_dir(dir: &Path, name: &str, attempt: u32) -> anyhow::Result<PathBuf> {
    let d = dir.join(format!("{name}-{attempt}"));
    std::fs::create_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

fn pingpong(
    dir: &Path,
    plan: &Plan,
    auth: &AuthPlan,
    round: u32,
    attempt: u32,
) -> anyhow::Result<PingpongReport> {
    let name = format!("pingpong-{}-{round}", auth.mode.name());
    let dir = phase_dir(dir, &name, attempt)?;
    let addrs = harness::free_addrs(2).context(NO_FREE_PORT)?;
    let (hitter, echo) = (("hitter", addrs[0]), ("echo", addrs[1]));
    let spec = |role: Role, me: (&str, SocketAddr), peer: (&str, SocketAddr), at: &Schedule| {
        let mut spec = NodeSpec {
            role,
            id: me.0.to_string(),
            listen: me.1,
            store: dir.join(format!("{}.ken", me.0)),
            peers: vec![(peer.0.to_string(), peer.1)],
            target: Some(peer.0.to_string()),
            stop_at_us: at.stop_at.as_micros(),
            measure_from_us: at.measure_from.as_micros(),
            measure_until_us: at.measure_until.as_micros(),
            deadline_us: at.deadline.as_micros(),
            outstanding: 0,
            expect_done: 0,
            simulated: Vec::new(),
            seed: 0,
            key_file: None,
            encrypt: false,
            standby: false,
        };
        auth.apply(&mut spec);
        spec
    };
    let mut children = Children::new(&dir);
    let early = Schedule::from_now(plan.pingpong_warmup, plan.pingpong, Duration::ZERO);
    children.spawn(&spec(Role::Echo, echo, hitter, &early))?;
    children.wait_listening(echo.0)?;
    let at = Schedule::from_now(plan.pingpong_warmup, plan.pingpong, Duration::ZERO);
    children.spawn(&spec(Role::Hitter, hitter, echo, &at))?;
    sleep_until(at.measure_until);
    // The hitter exits once every ball of the window came back; the echo volleys on until
    // it is stopped.
    children.wait(&[hitter.0], Instant::now() + DRAIN_MAX)?;
    let report: PingpongReport = children.report(hitter.0)?;
    children.stop(echo.0)?;
    if report.volleys == 0 {
        bail!("pingpong measured no round trip in its window");
    }
    Ok(report)
}

#[derive(Debug)]
struct Throughput {
    window_secs: f64,
    turns_per_sec: f64,
    turns_per_commit: f64,
    commits_per_sec: f64,
    window_turns: u64,
    window_commits: u64,
    messages_delivered: u64,
    receiver_cpu_cores: Option<f64>,
    receiver_cpu_wait_cores: Option<f64>,
    load_cpu_cores: Option<f64>,
    load_retransmits: u64,
    /// Frames the load generator received from the receiver, and how many were tagged.
    load_frames_in: u64,
    load_frames_tagged: u64,
    /// What the receiver's store wrote over its run.
    receiver_writes: Option<node::NodeWrites>,
    probe: ProbeReport,
}

/// The load of one throughput run.
#[derive(Debug, Clone, Copy)]
struct LoadShape {
    /// Simulated senders in the load generator.
    senders: u32,
    /// Unacknowledged messages each keeps.
    outstanding: u32,
    /// Whether the latency probe runs too (the curve runs without it: its own messages
    /// would be most of the load at its lightest point).
    probe: bool,
}

fn throughput(
    dir: &Path,
    shape: LoadShape,
    plan: &Plan,
    auth: &AuthPlan,
    name: &str,
    attempt: u32,
) -> anyhow::Result<Throughput> {
    let dir = phase_dir(dir, name, attempt)?;
    let senders = shape.senders as usize;
    let addrs = harness::free_addrs(senders + 2).context(NO_FREE_PORT)?;
    let receiver = ("receiver".to_string(), addrs[0]);
    let simulated: Vec<(String, SocketAddr)> = (0..senders)
        .map(|i| (format!("load-{i}"), addrs[i + 1]))
        .collect();
    let probe = ("probe".to_string(), addrs[senders + 1]);
    let mut receiver_peers = simulated.clone();
    if shape.probe {
        receiver_peers.push(probe.clone());
    }

    let spec = |role: Role, me: &(String, SocketAddr), peers, at: &Schedule| {
        let mut spec = NodeSpec {
            role,
            id: me.0.clone(),
            listen: me.1,
            store: dir.join(format!("{}.ken", me.0)),
            target: (role != Role::Receiver).then(|| receiver.0.clone()),
            peers,
            stop_at_us: at.stop_at.as_micros(),
            measure_from_us: at.measure_from.as_micros(),
            measure_until_us: at.measure_until.as_micros(),
            deadline_us: at.deadline.as_micros(),
            outstanding: shape.outstanding as usize,
            expect_done: receiver_peers.len() as u64,
            simulated: Vec::new(),
            seed: 0,
            key_file: None,
            encrypt: false,
            standby: false,
        };
        auth.apply(&mut spec);
        spec
    };
    let mut children = Children::new(&dir);
    let early = Schedule::from_now(plan.warmup, plan.window, STOP_AFTER_WINDOW);
    let receiver_spec = spec(Role::Receiver, &receiver, receiver_peers.clone(), &early);
    children.spawn(&receiver_spec)?;
    children.wait_listening(&receiver.0)?;
    let at = Schedule::from_now(plan.warmup, plan.window, STOP_AFTER_WINDOW);
    let load_spec = NodeSpec {
        simulated: simulated.clone(),
        seed: LOAD_SEED,
        ..spec(
            Role::Load,
            &(LOAD_ID.to_string(), simulated[0].1),
            vec![receiver.clone()],
            &at,
        )
    };
    children.spawn(&load_spec)?;
    if shape.probe {
        children.spawn(&spec(Role::Probe, &probe, vec![receiver.clone()], &at))?;
    }

    sleep_until(at.measure_from);
    children.check_running()?;
    let reader = open_reader(&receiver_spec.store)?;
    let receiver_pid = children.pid(&receiver.0);
    let load_pid = children.pid(LOAD_ID);
    let start = reader.meta()?;
    let started = Instant::now();
    let cpu_start = receiver_pid.and_then(cpu_time);
    let load_cpu_start = load_pid.and_then(cpu_time);
    sleep_until(at.measure_until);
    let end = reader.meta()?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_end = receiver_pid.and_then(cpu_time);
    let load_cpu_end = load_pid.and_then(cpu_time);
    let per_sec = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() / elapsed;
    let (receiver_cpu_cores, receiver_cpu_wait_cores) = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => (
            Some(per_sec(a.running, b.running)),
            Some(per_sec(a.waiting, b.waiting)),
        ),
        _ => (None, None),
    };
    let load_cpu_cores = match (load_cpu_start, load_cpu_end) {
        (Some(a), Some(b)) => Some(per_sec(a.running, b.running)),
        _ => None,
    };
    children.check_running()?;
    children.wait(&[], Instant::now() + STOP_AFTER_WINDOW + DRAIN_MAX)?;

    let received: ReceiverReport = children.report(&receiver.0)?;
    let load: LoadReport = children.report(LOAD_ID)?;
    let probe: ProbeReport = if shape.probe {
        children.report(&probe.0)?
    } else {
        ProbeReport::default()
    };
    check_load(&load, &simulated, &reader)?;
    drop(reader);
    let sent = load.data() + probe.sent;
    if received.received != sent {
        bail!(
            "the senders sent {sent} messages but the receiver consumed {}: \
             exactly-once delivery is broken",
            received.received
        );
    }
    let window_turns = end.turns_committed - start.turns_committed;
    let window_commits = end.commits - start.commits;
    if window_turns == 0 || window_commits == 0 || (shape.probe && probe.samples == 0) {
        bail!(
            "nothing measured in the window ({window_turns} turns, {window_commits} commits, \
             {} probe samples)",
            probe.samples
        );
    }
    Ok(Throughput {
        window_secs: elapsed,
        turns_per_sec: window_turns as f64 / elapsed,
        turns_per_commit: window_turns as f64 / window_commits as f64,
        commits_per_sec: window_commits as f64 / elapsed,
        window_turns,
        window_commits,
        messages_delivered: received.received,
        receiver_cpu_cores,
        receiver_cpu_wait_cores,
        load_cpu_cores,
        load_retransmits: load.retransmits(),
        load_frames_in: load.frames_in().0,
        load_frames_tagged: load.frames_in().1,
        receiver_writes: children.report::<node::NodeWrites>(&receiver.0).ok(),
        probe,
    })
}

/// Checks the load generator's report against what it was told and against the receiver's
/// store (read after the receiver exited): every simulated sender finished with everything
/// acknowledged, under the incarnation it was given, and the receiver's committed
/// `delivered` for it is exactly its highest acknowledged sequence number.
fn check_load(
    load: &LoadReport,
    simulated: &[(String, SocketAddr)],
    reader: &Reader,
) -> anyhow::Result<()> {
    if load.senders.len() != simulated.len() {
        bail!(
            "the load generator reports {} simulated senders, {} were asked for",
            load.senders.len(),
            simulated.len()
        );
    }
    let peers = reader.peers()?;
    for (i, (s, (id, _))) in load.senders.iter().zip(simulated).enumerate() {
        if s.id != *id || s.incarnation != load::incarnation(LOAD_SEED, i as u64) {
            bail!(
                "simulated sender {i} reports itself as {} ({:x})",
                s.id,
                s.incarnation
            );
        }
        if s.acked != s.data + 1 {
            bail!(
                "{id} sent {} messages and Done, but only 1..{} were acknowledged",
                s.data,
                s.acked
            );
        }
        let Some(row) = peers.iter().find(|p| p.peer == *id) else {
            bail!("the receiver's store has no peer row for {id}");
        };
        if row.delivered != s.acked || row.incarnation != s.incarnation {
            bail!(
                "{id}: the receiver's store says delivered {} from incarnation {:x}, the load \
                 generator says acknowledged {} at incarnation {:x}: exactly-once delivery is \
                 broken",
                row.delivered,
                row.incarnation,
                s.acked,
                s.incarnation
            );
        }
    }
    Ok(())
}

/// Scheduler times of a process so far, summed over its threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CpuTime {
    /// Time running on a CPU.
    running: Duration,
    /// Time runnable but waiting for a CPU.
    waiting: Duration,
}

/// The scheduler times of process `pid`, from `/proc/PID/task/*/schedstat` (Linux); `None`
/// elsewhere.
fn cpu_time(pid: u32) -> Option<CpuTime> {
    let (mut running_ns, mut waiting_ns) = (0u64, 0u64);
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread may end between the listing and the read: its time is then not counted.
        let Ok(stat) = std::fs::read_to_string(entry.ok()?.path().join("schedstat")) else {
            continue;
        };
        let mut fields = stat.split_whitespace();
        running_ns += fields.next()?.parse::<u64>().ok()?;
        waiting_ns += fields.next()?.parse::<u64>().ok()?;
    }
    Some(CpuTime {
        running: Duration::from_nanos(running_ns),
        waiting: Duration::from_nanos(waiting_ns),
    })
}

/// "FSTYPE on DEVICE, mounted at M" for the filesystem holding `path`, from
/// `/proc/self/mounts` (Linux); `None` elsewhere.
fn describe_filesystem(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mount_point = f[1].replace("\\040", " ");
        if path.starts_with(&mount_point)
            && best.as_ref().is_none_or(|(n, _)| mount_point.len() >= *n)
        {
            let what = format!("{} on {}, mounted at {mount_point}", f[2], f[0]);
            best = Some((mount_point.len(), what));
        }
    }
    best.map(|(_, what)| what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[7], 99), 7);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
    }

    #[test]
    fn cpu_time_of_this_process_grows_on_linux() {
        if cfg!(target_os = "linux") {
            let a = cpu_time(std::process::id()).expect("schedstat is readable");
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(20) {
                std::hint::black_box(0u64);
            }
            let b = cpu_time(std::process::id()).expect("schedstat is readable");
            assert!(b.running > a.running, "{a:?} then {b:?}");
        }
    }

    #[test]
    fn filesystem_of_the_temp_dir_is_described_on_linux() {
        if cfg!(target_os = "linux") {
            let d = describe_filesystem(&std::env::temp_dir()).expect("a mount holds /tmp");
            assert!(d.contains(", mounted at /"), "{d}");
        }
    }
}
