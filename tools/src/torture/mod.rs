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
//! Disk full (`--tmpfs-mb`): the stores live on a tmpfs of that size (root only; a clear
//! error otherwise). In some network epochs the harness fills the tmpfs with a ballast file
//! and removes it at the next epoch. A process whose commit fails exits 1 with "store full":
//! the harness counts it (`disk_full_exits`) as an expected crash and restarts it after the
//! usual delay (it dies again while the disk is still full, which is fine: restart is the
//! documented recovery). The ballast is removed at heal time. Stores kept after a violation
//! are copied off the tmpfs before it is unmounted.

pub mod apps;
pub mod check;
pub mod member;

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use apps::TortureApp;
use member::{End, Member};

/// Stats lines per second asked of each process (`KEN_STATS_INTERVAL_MS`).
const STATS_INTERVAL_MS: u64 = 500;

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
}

/// `ken torture` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
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
    /// Longest time a killed process stays down, milliseconds (uniform from 0).
    #[arg(long, default_value_t = 1000)]
    pub restart_delay_ms: u64,
    /// Fraction of restarts armed with one crash point (`KEN_CRASH_AT`).
    #[arg(long, default_value_t = 0.3)]
    pub crash_point_restarts: f64,
    /// Probability per pass of an armed crash point (except `recovery`, which gets 0.5).
    #[arg(long, default_value_t = 0.002)]
    pub crash_point_p: f64,
    /// SIGSTOP pauses per second, cluster-wide.
    #[arg(long, default_value_t = 0.2)]
    pub pause_rate: f64,
    /// Shortest pause, milliseconds (above the 1 s RTO ceiling by default).
    #[arg(long, default_value_t = 1500)]
    pub pause_min_ms: u64,
    /// Longest pause, milliseconds.
    #[arg(long, default_value_t = 4000)]
    pub pause_max_ms: u64,
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
    /// Directory holding the app binaries (default: the `ken` binary's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Negative control: run the children with KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1.
    #[arg(long, hide = true)]
    pub unsafe_release_before_commit: bool,
}

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
}

/// The cluster under torture.
struct Cluster {
    app: Box<dyn TortureApp>,
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
}

/// Runs `ken torture`; the exit code is 0 only if no violation was found.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "ken torture: seed {seed} app {:?} (replay: {})",
        args.app,
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
    let app: Box<dyn TortureApp> = match args.app {
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
    };
    let mut cluster = Cluster::new(app, args.clone(), seed, &dir)?;
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

/// `n` distinct loopback UDP ports that were free a moment ago.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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
    fn new(app: Box<dyn TortureApp>, args: Args, seed: u64, dir: &Path) -> anyhow::Result<Self> {
        let stores_dir = dir.join("stores");
        let logs = dir.join("logs");
        let faults_dir = dir.join("faults");
        let bin = dir.join("bin");
        for d in [&stores_dir, &logs, &faults_dir, &bin] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        if let Some(mb) = args.tmpfs_mb {
            mount_tmpfs(&stores_dir, mb)?;
        }
        // A private copy of the binary: immune to a rebuild while the run lasts. Written
        // before any child is forked, so no child inherits its write descriptor (ETXTBSY).
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("the ken binary's directory")?
                .to_path_buf(),
        };
        let source = bin_dir.join(app.binary());
        if !source.is_file() {
            bail!(
                "{} not found (build it: cargo build -p ken-apps --bin {}; or pass --bin-dir)",
                source.display(),
                app.binary()
            );
        }
        let program = bin.join(app.binary());
        std::fs::copy(&source, &program)
            .with_context(|| format!("copy {} to {}", source.display(), program.display()))?;
        let ids = app.members();
        let ports = free_ports(ids.len())?;
        let stores: Vec<PathBuf> = ids
            .iter()
            .map(|id| stores_dir.join(format!("{id}.ken")))
            .collect();
        let faults_files: Vec<PathBuf> = ids.iter().map(|id| faults_dir.join(id)).collect();
        let mut members = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            write_atomic(&faults_files[i], "")?;
            let mut envs = vec![
                ("KEN_ANNOUNCE".to_string(), "1".to_string()),
                (
                    "KEN_STATS_INTERVAL_MS".to_string(),
                    STATS_INTERVAL_MS.to_string(),
                ),
                (
                    "KEN_FAULTS_FILE".to_string(),
                    faults_files[i].display().to_string(),
                ),
                ("KEN_FAULTS".to_string(), String::new()),
            ];
            if args.unsafe_release_before_commit {
                envs.push((
                    "KEN_UNSAFE_RELEASE_BEFORE_COMMIT".to_string(),
                    "1".to_string(),
                ));
            }
            members.push(Member::new(
                id.clone(),
                program.clone(),
                Vec::new(),
                envs,
                logs.clone(),
            ));
        }
        let mut cluster = Cluster {
            app,
            members,
            stores,
            faults_files,
            ports,
            rng: ChaCha8Rng::seed_from_u64(seed),
            counters: Counters::default(),
            violations: Vec::new(),
            details: Vec::new(),
            ballast: args.tmpfs_mb.map(|_| stores_dir.join("ballast")),
            args,
        };
        cluster.set_args();
        Ok(cluster)
    }

    /// (Re)writes every member's command line from the current ports.
    fn set_args(&mut self) {
        let ids = self.app.members();
        for i in 0..self.members.len() {
            let peers: Vec<(String, SocketAddr)> = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, id)| (id.clone(), loopback(self.ports[j])))
                .collect();
            self.members[i].args =
                self.app
                    .args(i, loopback(self.ports[i]), &self.stores[i], &peers);
        }
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
        Duration::from_millis(self.rng.gen_range(0..=self.args.restart_delay_ms))
    }

    /// Handles lives that ended on their own. During the fault phase the dead are restarted
    /// after a random delay; when healing, at once.
    fn reap(&mut self, healing: bool) -> anyhow::Result<()> {
        let mut rebind = false;
        for i in 0..self.members.len() {
            let Some(end) = self.members[i].poll()? else {
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
                    self.violations.push(format!(
                        "{} life {} ended unexpectedly: {why}",
                        m.id,
                        m.lives.len()
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
            self.ports = free_ports(self.members.len())?;
            self.set_args();
            for m in &mut self.members {
                if m.is_running() {
                    m.kill()?;
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
        let waiting = self.members.iter().any(|m| {
            m.is_running()
                && m.current_life()
                    .is_some_and(|l| l.stdout_lines().is_empty())
        });
        if !waiting {
            return Ok(());
        }
        for m in &mut self.members {
            let finished = !m.is_running()
                && m.restart_at.is_none()
                && m.current_life()
                    .is_some_and(|l| l.end == Some(End::Finished));
            if finished {
                m.spawn(None)?;
                self.counters.restarts += 1;
                self.counters.operator_restarts += 1;
            }
        }
        Ok(())
    }

    fn all_finished(&self) -> bool {
        self.members.iter().all(|m| {
            !m.is_running()
                && m.restart_at.is_none()
                && m.current_life()
                    .is_some_and(|l| l.end == Some(End::Finished))
        })
    }

    /// Writes a new network epoch into every fault file.
    fn net_epoch(&mut self) -> anyhow::Result<()> {
        self.counters.net_epochs += 1;
        let n = self.members.len();
        let cut = if self.rng.gen_bool(self.args.partition.clamp(0.0, 1.0)) {
            self.counters.partitions += 1;
            Some(self.rng.gen_range(0..n))
        } else {
            None
        };
        for i in 0..n {
            let mut parts = Vec::new();
            if self.rng.gen_bool(self.args.net_faulty.clamp(0.0, 1.0)) {
                let a = &self.args;
                parts.push(format!(
                    "drop={},dup={},reorder={},reorder_ms=30,delay={},delay_ms=5-80,corrupt={},truncate={}",
                    a.loss, a.dup, a.reorder, a.delay, a.corrupt, a.truncate
                ));
            }
            if cut == Some(i) {
                let others: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| loopback(self.ports[j]).to_string())
                    .collect();
                parts.push(format!("partition={}", others.join("+")));
            }
            let text = if parts.is_empty() {
                String::new()
            } else {
                format!("seed={},{}", self.rng.gen::<u64>(), parts.join(","))
            };
            write_atomic(&self.faults_files[i], &text)?;
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
            for m in &mut self.members {
                if m.paused_until.is_some_and(|t| t <= now) {
                    m.resume();
                }
            }
            if next_kill.is_some_and(|t| t <= now) {
                let running: Vec<usize> = (0..self.members.len())
                    .filter(|i| self.members[*i].is_running())
                    .collect();
                if !running.is_empty() {
                    let i = running[self.rng.gen_range(0..running.len())];
                    let end = self.members[i].kill()?;
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
            if next_pause.is_some_and(|t| t <= now) {
                let candidates: Vec<usize> = (0..self.members.len())
                    .filter(|i| {
                        self.members[*i].is_running() && self.members[*i].paused_until.is_none()
                    })
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[self.rng.gen_range(0..candidates.len())];
                    let ms = self.rng.gen_range(
                        self.args.pause_min_ms..=self.args.pause_max_ms.max(self.args.pause_min_ms),
                    );
                    self.members[i].pause(now + Duration::from_millis(ms));
                    self.counters.pauses += 1;
                }
                next_pause = self.exp_interval(self.args.pause_rate).map(|d| now + d);
            }
            if now >= next_epoch {
                self.net_epoch()?;
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
        for f in &self.faults_files {
            write_atomic(f, "")?;
        }
        if let Some(b) = &self.ballast {
            let _ = std::fs::remove_file(b);
        }
        for m in &mut self.members {
            m.resume();
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
            let now = Instant::now();
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
        if self.app.finishes() {
            if !self.all_finished() {
                missing.push("not every member exited 0".into());
            }
        } else {
            if self.members.iter().any(|m| !m.is_running()) {
                missing.push("a member is down".into());
            }
        }
        if now.duration_since(stable_since) < QUIESCE_STABLE {
            missing.push(format!("turns/messages moving ({moving})"));
        }
        Ok((!missing.is_empty()).then(|| missing.join(", ")))
    }

    /// SIGKILLs every running member (the end of a run; not counted as a kill).
    fn stop_all(&mut self) {
        for m in &mut self.members {
            m.resume();
            if m.is_running() {
                let _ = m.kill();
            }
        }
    }

    /// Runs the checks and builds the JSON summary (violations are added to `self`).
    fn summary(&mut self, seed: u64, quiesced: Option<Duration>) -> serde_json::Value {
        self.stop_all();
        // Safety is checked after every run; completeness only after quiescence.
        let q = quiesced.is_some();
        let ids = self.app.members();
        self.violations
            .extend(check::check_pairs(&ids, &self.stores, q));
        self.violations.extend(self.app.check(&self.stores, q));
        for (i, m) in self.members.iter().enumerate() {
            let lines: Vec<String> = m.lives.iter().flat_map(|l| l.stdout_lines()).collect();
            self.violations.extend(self.app.check_output(i, &lines, q));
        }
        self.details = self.members.iter().map(Member::describe).collect();
        let totals = check::totals(&self.stores).unwrap_or_default();
        let mut recovery: Vec<u64> = self
            .members
            .iter()
            .flat_map(|m| m.lives.iter().skip(1))
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
        let stats: Vec<member::Stats> = self
            .members
            .iter()
            .flat_map(|m| m.lives.iter().filter_map(|l| l.stats()))
            .collect();
        let c = &self.counters;
        serde_json::json!({
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
            "recovery_ms_p50": pct(0.5),
            "recovery_ms_p99": pct(0.99),
            "quiesce_ms": quiesced.map(|d| d.as_millis() as u64),
            "violations": self.violations.len(),
        })
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
