//! `ken bench fuse`: what FUSE liveness costs on the wire, and how fast a permanent failure
//! is heard, with real processes on this machine.
//!
//! One round per group count (`--groups`, default 1, 100 and 10,000), each on a fresh
//! cluster of `--nodes` (default 8) `ken fuse-node` processes on 127.0.0.1, stores in a
//! temporary directory:
//!
//! 1. **Create.** The groups are split round-robin over the nodes as creators (each creates
//!    its share at its first start, paced by the node) and every group has **all the nodes**
//!    as members. All-member groups are the fair comparison: every round then monitors the
//!    same 28 pairs (for 8 nodes), so the only thing that changes from round to round is the
//!    number of groups, which is what must not matter (liveness is shared per pair: one
//!    heartbeat per pair per interval carrying a digest of the shared groups). Random subsets
//!    would monitor fewer pairs with one group than with ten thousand, and the comparison
//!    would measure pair coverage instead. It is also the hardest case for the engine: every
//!    heartbeat's digest covers every group, and a list exchange carries all of them.
//! 2. **Liveness bytes.** Once every node reports all its groups durably `Live`
//!    (`all_live`), and two heartbeat intervals more so that digests agree, each node's own
//!    counter `liveness_bytes_sent` (every heartbeat and list datagram it sent, whole frames,
//!    from the runtime's stats line, `KEN_STATS_INTERVAL_MS`) is read over a window of
//!    `--seconds` (the slope through every stats line in it, see [`rates`]): bytes per
//!    second per process, averaged over the nodes
//!    (`liveness_bytes_per_sec_N`). The 10,000-group figure must be within 1.1x of the
//!    1-group figure (`liveness_ratio`, `liveness_pass`).
//! 3. **Notification.** One node is SIGKILLed and never restarted. Every other node prints
//!    one line per notification with its turn's time; `notify_ms` is that time minus the
//!    moment just before the kill, per (member, group). Each (member, group) must be heard
//!    exactly once (`duplicates`, `missing`; a violation fails the command). The bound is
//!    `T_fail + 2 x heartbeat` from the victim's last frame (`bound_ms`); `within_bound`
//!    counts the notifications inside it.
//!
//! FUSE timing comes from `KEN_FUSE_HEARTBEAT_MS` and `KEN_FUSE_T_FAIL_MS` if set (the
//! children inherit them; defaults 200 ms and 3 s). The creation timeout is
//! [`CREATE_TIMEOUT_DEFAULT`] unless `KEN_FUSE_CREATE_TIMEOUT_MS` says otherwise: creating ten
//! thousand groups of 8 takes one to two seconds on a quiet 2-CPU machine and can take longer
//! than the runtime's default 3 s when other work competes for the CPUs, and creation is not
//! what this measures. The report says which values were used.
//!
//! The bound is counted from the failed member's *last frame*, which precedes the kill by up
//! to one heartbeat interval; so a kill-to-notification time can exceed the bound only by how
//! late the detecting tick ran (timer resolution, scheduling), and the report prints that
//! excess (`notify_ms_over_bound_max`). Every node exits at a deadline on its own
//! (`--exit-at-ms`) if `ken bench` dies, and is killed when its round ends.
//!
//! A round that fails (a deadline missed, a node dead) ends the run with exit 1, but the
//! rounds that succeeded before it are reported first (`"complete": false` and
//! `failed_round` in `--json`, an INCOMPLETE line in text), and the error carries a hint
//! when the one-minute load average is above the number of CPUs ([`busy_hint`]). A complete
//! run exits 0, or 2 when the liveness ratio is a MISS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ken::{Time, Tuning};
use ken_tools::harness::{self, Process, Spec};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{cpu_time, own_executable, percentile, CpuTime, Verdict, NO_FREE_PORT};

/// The most the 10,000-group liveness rate may be, relative to the 1-group rate.
pub const LIVENESS_RATIO_MAX: f64 = 1.1;

/// The creation timeout of the bench's nodes unless `KEN_FUSE_CREATE_TIMEOUT_MS` is set.
pub const CREATE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Stats lines per second asked of each node.
const STATS_INTERVAL: Duration = Duration::from_millis(100);

/// How long a round may take to get every group Live.
const LIVE_MAX: Duration = Duration::from_secs(60);

/// How long after the bound every notification must have arrived before the round fails.
const NOTIFY_SLACK: Duration = Duration::from_secs(30);

/// After the last expected notification, how long to keep watching for a duplicate.
const DUPLICATE_WATCH: Duration = Duration::from_millis(500);

/// Groups each creation turn of a node creates, and the pause between two such turns.
const CREATE_PER_TURN: u64 = 100;
const CREATE_INTERVAL_MS: u64 = 10;

/// Environment variables that would change what is measured; children run without them.
const SCRUBBED_ENV: [&str; 5] = [
    "KEN_FAULTS",
    "KEN_FAULTS_FILE",
    "KEN_UNSAFE_RELEASE_BEFORE_COMMIT",
    "KEN_CRASH_AT",
    "KEN_CRASH_SEED",
];

/// `ken bench fuse` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FuseArgs {
    /// Print one JSON object instead of the readable report.
    #[arg(long)]
    pub json: bool,
    /// Seconds of the liveness window of each round.
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    pub seconds: f64,
    /// Group counts, one round each, comma-separated; the ratio compares the last to the
    /// first.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 100, 10_000], value_name = "N,N,..")]
    pub groups: Vec<u64>,
    /// Processes per round (every group has all of them as members).
    #[arg(long, default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..=64))]
    pub nodes: u32,
    /// Directory for the stores (a fresh temporary directory is made inside it and removed
    /// at the end). Default: the system temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the directory (stores and each node's output) for `ken inspect`; its path is
    /// printed on standard error.
    #[arg(long)]
    pub keep: bool,
}

/// One round's numbers.
#[derive(Debug, Clone)]
struct Round {
    groups: u64,
    /// Spawn of the nodes to the last `all_live`.
    create_ms: u64,
    window_secs: f64,
    /// Per process, mean over the nodes, and the extremes.
    liveness_bytes_per_sec: f64,
    liveness_bytes_per_sec_min: f64,
    liveness_bytes_per_sec_max: f64,
    heartbeats_per_sec: f64,
    /// CPU of one node over the window, mean over the nodes, in cores (Linux).
    node_cpu_cores: Option<f64>,
    /// Kill-to-notification per (member, group).
    notify_ms: Vec<u64>,
    notifications_expected: u64,
    duplicates: u64,
    missing: u64,
}

/// Runs `ken bench fuse`; `Ok` says whether the liveness target was met. When a round fails
/// after others succeeded, the rounds that succeeded are still reported (marked incomplete)
/// before the error, with a hint when the machine is busier than its CPUs ([`busy_hint`]).
pub fn run(args: &FuseArgs) -> anyhow::Result<Verdict> {
    if !(args.seconds.is_finite() && args.seconds >= 0.5 && args.seconds <= 600.0) {
        bail!("--seconds must be between 0.5 and 600");
    }
    if args.groups.is_empty() || args.groups.iter().any(|g| *g == 0 || *g > 100_000) {
        bail!("--groups must list group counts between 1 and 100000, e.g. --groups 1,100,10000");
    }
    let mut tuning = Tuning {
        fuse_create_timeout: CREATE_TIMEOUT_DEFAULT,
        ..Tuning::default()
    };
    tuning
        .apply_env()
        .map_err(|e| anyhow::anyhow!("{e}; unset it or fix it"))?;
    tuning
        .check()
        .map_err(|e| anyhow::anyhow!("bad KEN_FUSE_* settings: {e}"))?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("ken-bench-fuse-")
        .tempdir_in(&base)
        .with_context(|| format!("cannot make a directory in {}", base.display()))?;
    if args.keep {
        eprintln!("ken bench fuse: keeping {}", tmp.path().display());
    }
    let tmp_path = tmp.path().to_path_buf();
    // Removed when dropped at the end, unless kept.
    let _remove = if args.keep {
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let progress = |what: String| {
        if !args.json {
            eprintln!("ken bench fuse: {what}");
        }
    };
    let mut rounds = Vec::new();
    for (i, &groups) in args.groups.iter().enumerate() {
        progress(format!(
            "{groups} group(s) of all {} nodes: create, {:.1} s liveness window, SIGKILL one node",
            args.nodes, args.seconds
        ));
        let dir = tmp_path.join(format!("round-{i}-{groups}"));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        match round(&dir, args, &tuning, groups) {
            Ok(r) => rounds.push(r),
            Err(e) => {
                let failed = format!(
                    "round {} of {} ({groups} groups) failed",
                    i + 1,
                    args.groups.len()
                );
                if !rounds.is_empty() {
                    let mut report = report_json(args, &tuning, &rounds);
                    report["complete"] = json!(false);
                    report["failed_round"] = json!(format!("{failed}: {e:#}"));
                    if args.json {
                        println!("{report}");
                    } else {
                        print!("{}", report_text(&report, &rounds));
                        println!(
                            "  INCOMPLETE: {failed}; the rows above are the rounds that succeeded \
                             (the ratio and verdict compare those only)"
                        );
                    }
                }
                let hint = busy_hint(load_average(), cpus())
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default();
                return Err(e.context(format!("{failed}{hint}")));
            }
        }
    }
    let mut report = report_json(args, &tuning, &rounds);
    report["complete"] = json!(true);
    if args.json {
        println!("{report}");
    } else {
        print!("{}", report_text(&report, &rounds));
    }
    let broken: u64 = rounds.iter().map(|r| r.duplicates + r.missing).sum();
    if broken > 0 {
        bail!("FUSE exactly-once is broken: {broken} (member, group) notifications missing or repeated");
    }
    Ok(Verdict::of(report["liveness_pass"] == true))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The one-minute load average (Linux `/proc/loadavg`), if readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A hint for a failed round when the machine is busier than it has CPUs (the one-minute
/// load average above the number of CPUs): rounds then miss their deadlines for want of CPU,
/// not because FUSE is wrong.
pub fn busy_hint(load: Option<f64>, cpus: usize) -> Option<String> {
    let load = load?;
    (load > cpus as f64).then(|| {
        format!(
            "the machine is busy (load average {load:.2} on {cpus} CPUs): rounds can time out \
             for want of CPU; run it again when the machine is quieter, or with fewer --groups \
             or --nodes"
        )
    })
}

fn bound(t: &Tuning) -> Duration {
    t.fuse_t_fail + 2 * t.fuse_heartbeat
}

fn report_json(args: &FuseArgs, t: &Tuning, rounds: &[Round]) -> Value {
    let mut v = Map::new();
    v.insert("nodes".into(), json!(args.nodes));
    v.insert("group_members".into(), json!("all nodes"));
    v.insert(
        "cpus".into(),
        json!(std::thread::available_parallelism().map_or(1, usize::from)),
    );
    v.insert(
        "heartbeat_ms".into(),
        json!(t.fuse_heartbeat.as_millis() as u64),
    );
    v.insert("t_fail_ms".into(), json!(t.fuse_t_fail.as_millis() as u64));
    v.insert(
        "create_timeout_ms".into(),
        json!(t.fuse_create_timeout.as_millis() as u64),
    );
    v.insert("bound_ms".into(), json!(bound(t).as_millis() as u64));
    v.insert("window_secs".into(), json!(args.seconds));
    for r in rounds {
        v.insert(
            format!("liveness_bytes_per_sec_{}", r.groups),
            json!(round2(r.liveness_bytes_per_sec)),
        );
    }
    let (first, last) = (&rounds[0], &rounds[rounds.len() - 1]);
    let ratio = last.liveness_bytes_per_sec / first.liveness_bytes_per_sec;
    v.insert("liveness_ratio".into(), json!(round3(ratio)));
    v.insert(
        "liveness_ratio_of".into(),
        json!(format!(
            "{} groups / {} group(s)",
            last.groups, first.groups
        )),
    );
    v.insert("liveness_ratio_max".into(), json!(LIVENESS_RATIO_MAX));
    v.insert("liveness_pass".into(), json!(ratio <= LIVENESS_RATIO_MAX));
    let mut all: Vec<u64> = rounds.iter().flat_map(|r| r.notify_ms.clone()).collect();
    all.sort_unstable();
    let bound_ms = bound(t).as_millis() as u64;
    v.insert("notify_ms_p50".into(), json!(percentile(&all, 50)));
    v.insert("notify_ms_p99".into(), json!(percentile(&all, 99)));
    v.insert(
        "notify_ms_max".into(),
        json!(all.last().copied().unwrap_or(0)),
    );
    v.insert("notifications".into(), json!(all.len()));
    v.insert(
        "notifications_expected".into(),
        json!(rounds.iter().map(|r| r.notifications_expected).sum::<u64>()),
    );
    v.insert(
        "duplicates".into(),
        json!(rounds.iter().map(|r| r.duplicates).sum::<u64>()),
    );
    v.insert(
        "missing".into(),
        json!(rounds.iter().map(|r| r.missing).sum::<u64>()),
    );
    v.insert(
        "within_bound".into(),
        json!(all.iter().filter(|ms| **ms <= bound_ms).count()),
    );
    v.insert(
        "notify_ms_over_bound_max".into(),
        json!(all.last().map_or(0, |max| max.saturating_sub(bound_ms))),
    );
    let per_round: Vec<Value> = rounds
        .iter()
        .map(|r| {
            let mut n = r.notify_ms.clone();
            n.sort_unstable();
            json!({
                "groups": r.groups,
                "create_ms": r.create_ms,
                "window_secs": round3(r.window_secs),
                "liveness_bytes_per_sec": round2(r.liveness_bytes_per_sec),
                "liveness_bytes_per_sec_min": round2(r.liveness_bytes_per_sec_min),
                "liveness_bytes_per_sec_max": round2(r.liveness_bytes_per_sec_max),
                "heartbeats_per_sec": round2(r.heartbeats_per_sec),
                "node_cpu_cores": r.node_cpu_cores.map(round3),
                "notify_ms_p50": percentile(&n, 50),
                "notify_ms_p99": percentile(&n, 99),
                "notify_ms_max": n.last().copied().unwrap_or(0),
                "notifications": n.len(),
                "notifications_expected": r.notifications_expected,
                "duplicates": r.duplicates,
                "missing": r.missing,
            })
        })
        .collect();
    v.insert("rounds".into(), Value::Array(per_round));
    Value::Object(v)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn report_text(v: &Value, rounds: &[Round]) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "ken bench fuse: {} nodes on 127.0.0.1 ({} CPUs), every group of all of them; heartbeat {} ms, T_fail {} ms, bound T_fail + 2 x heartbeat = {} ms",
        v["nodes"], v["cpus"], v["heartbeat_ms"], v["t_fail_ms"], v["bound_ms"]
    ));
    line(
        "  GROUPS  CREATED IN  LIVENESS B/S PER PROCESS (MIN-MAX)  HEARTBEATS/S  NODE CPU  NOTIFY P50/P99/MAX MS  HEARD"
            .to_string(),
    );
    for r in rounds {
        let mut n = r.notify_ms.clone();
        n.sort_unstable();
        line(format!(
            "  {:<6}  {:>7} ms  {:>9.1} ({:.1}-{:.1})  {:>21.1}  {:>8}  {:>7}/{}/{}  {}/{}{}",
            r.groups,
            r.create_ms,
            r.liveness_bytes_per_sec,
            r.liveness_bytes_per_sec_min,
            r.liveness_bytes_per_sec_max,
            r.heartbeats_per_sec,
            r.node_cpu_cores
                .map_or("-".to_string(), |c| format!("{c:.3}")),
            percentile(&n, 50),
            percentile(&n, 99),
            n.last().copied().unwrap_or(0),
            n.len(),
            r.notifications_expected,
            if r.duplicates + r.missing > 0 {
                format!(" ({} repeated, {} missing)", r.duplicates, r.missing)
            } else {
                " exactly once".to_string()
            }
        ));
    }
    line(format!(
        "  liveness bytes/s, {}: {:.3}x   (at most {:.1}x)   {}",
        v["liveness_ratio_of"].as_str().unwrap_or_default(),
        v["liveness_ratio"].as_f64().unwrap_or(f64::NAN),
        LIVENESS_RATIO_MAX,
        if v["liveness_pass"] == true {
            "PASS"
        } else {
            "MISS"
        }
    ));
    line(format!(
        "  kill -> notification over every (member, group): p50 {} ms, p99 {} ms, max {} ms; {} of {} within the bound of {} ms",
        v["notify_ms_p50"], v["notify_ms_p99"], v["notify_ms_max"], v["within_bound"], v["notifications"], v["bound_ms"]
    ));
    if v["notify_ms_over_bound_max"].as_u64().unwrap_or(0) > 0 {
        line(format!(
            "    (the bound runs from the victim's last frame, up to one heartbeat before the kill: \
             {} ms over it is how late the detecting tick ran)",
            v["notify_ms_over_bound_max"]
        ));
    }
    s
}

/// One node of a round (dropping it SIGKILLs it if it still runs).
struct Node {
    proc: Process,
    /// Bytes of its standard output already parsed.
    out_read: u64,
}

/// The nodes of a round.
struct Cluster {
    nodes: Vec<Node>,
}

/// One line a node printed on standard output.
#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    at_ms: u64,
}

/// The counters of the runtime's stats line that this bench reads.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Stats {
    liveness_bytes_sent: u64,
    heartbeats_sent: u64,
    at_ms: u64,
}

impl Node {
    fn id(&self) -> &str {
        self.proc.name()
    }

    /// New complete lines of standard output since the last call.
    fn new_events(&mut self) -> anyhow::Result<Vec<Event>> {
        let Some(life) = self.proc.current_life() else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        for l in life.new_stdout_lines(&mut self.out_read)? {
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            events.push(serde_json::from_str(l).with_context(|| {
                format!("{} printed a line that is not an event: {l}", self.id())
            })?);
        }
        Ok(events)
    }

    fn stats(&self) -> Vec<Stats> {
        let Some(life) = self.proc.current_life() else {
            return Vec::new();
        };
        std::fs::read_to_string(&life.stderr_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"event\":\"stats\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Fails if the node exited, quoting its error output.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(end) = self.proc.poll()? {
            let err = self
                .proc
                .current_life()
                .map(|l| std::fs::read_to_string(&l.stderr_path).unwrap_or_default())
                .unwrap_or_default();
            let tail: Vec<&str> = err
                .lines()
                .filter(|l| !l.contains("\"event\":\"stats\""))
                .collect();
            bail!(
                "node {} exited ({end:?}): {}",
                self.id(),
                tail[tail.len().saturating_sub(5)..].join("\n")
            );
        }
        Ok(())
    }
}

/// A node's rates over the window `[t0_ms, t1_ms]`: (liveness bytes, heartbeats) per second,
/// the least-squares slope of its counters over every stats line in the window. A node sends
/// its heartbeats to all its peers in one burst per interval, so its counters are steps; the
/// difference between two lines would count one burst more or less depending on where the
/// window's ends fall between bursts (about 7% of a 3 s window at 200 ms), where the slope
/// through all of them averages over every phase. `None` with fewer than 3 lines.
fn rates(samples: &[Stats], t0_ms: u64, t1_ms: u64) -> Option<(f64, f64)> {
    let inside: Vec<&Stats> = samples
        .iter()
        .filter(|x| x.at_ms >= t0_ms && x.at_ms <= t1_ms)
        .collect();
    if inside.len() < 3 {
        return None;
    }
    let n = inside.len() as f64;
    let x = |s: &Stats| (s.at_ms - t0_ms) as f64 / 1000.0;
    let x_mean = inside.iter().map(|s| x(s)).sum::<f64>() / n;
    let sxx: f64 = inside.iter().map(|s| (x(s) - x_mean).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = |y: &dyn Fn(&Stats) -> f64| {
        let y_mean = inside.iter().map(|s| y(s)).sum::<f64>() / n;
        inside
            .iter()
            .map(|s| (x(s) - x_mean) * (y(s) - y_mean))
            .sum::<f64>()
            / sxx
    };
    Some((
        slope(&|s| s.liveness_bytes_sent as f64),
        slope(&|s| s.heartbeats_sent as f64),
    ))
}

fn round(dir: &Path, args: &FuseArgs, t: &Tuning, groups: u64) -> anyhow::Result<Round> {
    let n = args.nodes as usize;
    let addrs = harness::free_addrs(n).context(NO_FREE_PORT)?;
    let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let exe = own_executable()?;
    let started = Instant::now();
    // Every node exits by itself at this time if the bench dies.
    let exit_at = Time::now_wall().plus(
        LIVE_MAX + NOTIFY_SLACK + bound(t) + Duration::from_secs(30 + args.seconds.ceil() as u64),
    );
    let mut cluster = Cluster { nodes: Vec::new() };
    for i in 0..n {
        let create = groups / n as u64 + u64::from((i as u64) < groups % n as u64);
        let mut args = vec![
            "fuse-node".to_string(),
            "--id".into(),
            ids[i].clone(),
            "--listen".into(),
            addrs[i].to_string(),
            "--store".into(),
            dir.join(format!("{}.ken", ids[i])).display().to_string(),
            "--create".into(),
            create.to_string(),
            "--create-per-turn".into(),
            CREATE_PER_TURN.to_string(),
            "--create-interval-ms".into(),
            CREATE_INTERVAL_MS.to_string(),
            "--expect-groups".into(),
            groups.to_string(),
            "--exit-at-ms".into(),
            exit_at.as_millis().to_string(),
        ];
        for j in (0..n).filter(|j| *j != i) {
            args.push("--peer".into());
            args.push(format!("{}={}", ids[j], addrs[j]));
        }
        let spec = Spec::new(ids[i].clone(), &exe, args, dir)
            .env(
                "KEN_STATS_INTERVAL_MS",
                STATS_INTERVAL.as_millis().to_string(),
            )
            .env(
                "KEN_FUSE_CREATE_TIMEOUT_MS",
                t.fuse_create_timeout.as_millis().to_string(),
            );
        let spec = Spec {
            env_remove: SCRUBBED_ENV.map(Into::into).to_vec(),
            ..spec
        };
        let proc = Process::start(spec).context("cannot start a fuse node")?;
        cluster.nodes.push(Node { proc, out_read: 0 });
    }

    // 1. Every node has every group durably Live.
    let mut live = vec![false; n];
    let until = Instant::now() + LIVE_MAX;
    while !live.iter().all(|l| *l) {
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            node.check_running()?;
            for e in node.new_events()? {
                match e.event.as_str() {
                    "all_live" => live[i] = true,
                    "fuse_failure" => bail!(
                        "{groups} groups: {} heard a failure of {} before every group was live \
                         (creation timed out? raise KEN_FUSE_CREATE_TIMEOUT_MS)",
                        node.id(),
                        e.group.unwrap_or_default()
                    ),
                    _ => {}
                }
            }
        }
        if Instant::now() >= until {
            bail!("{groups} groups were not all live at every node within {LIVE_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let create_ms = started.elapsed().as_millis() as u64;

    // 2. Liveness bytes over the window, from each node's own counter.
    std::thread::sleep(2 * t.fuse_heartbeat + 2 * STATS_INTERVAL);
    let pids: Vec<Option<u32>> = cluster.nodes.iter().map(|n| n.proc.pid()).collect();
    let cpu_start: Vec<Option<CpuTime>> = pids.iter().map(|p| p.and_then(cpu_time)).collect();
    let t0 = Time::now_wall();
    let cpu_clock = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let cpu_end: Vec<Option<CpuTime>> = pids.iter().map(|p| p.and_then(cpu_time)).collect();
    let cpu_secs = cpu_clock.elapsed().as_secs_f64();
    let t1 = Time::now_wall();
    // Wait for a stats line after the window from each node.
    let until = Instant::now() + Duration::from_secs(5);
    let samples = loop {
        for node in &mut cluster.nodes {
            node.check_running()?;
        }
        let s: Vec<Vec<Stats>> = cluster.nodes.iter().map(Node::stats).collect();
        if s.iter()
            .all(|v| v.last().is_some_and(|l| l.at_ms >= t1.as_millis()))
        {
            break s;
        }
        if Instant::now() >= until {
            bail!("the nodes stopped printing stats lines");
        }
        std::thread::sleep(STATS_INTERVAL / 2);
    };
    let mut byte_rates = Vec::new();
    let mut heartbeat_rates = Vec::new();
    for (node, s) in cluster.nodes.iter().zip(&samples) {
        let Some((bytes, heartbeats)) = rates(s, t0.as_millis(), t1.as_millis()) else {
            bail!("{}: fewer than 3 stats lines inside the window", node.id());
        };
        byte_rates.push(bytes);
        heartbeat_rates.push(heartbeats);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let cores: Vec<f64> = cpu_start
        .iter()
        .zip(&cpu_end)
        .filter_map(|(a, b)| Some(b.as_ref()?.running.saturating_sub(a.as_ref()?.running)))
        .map(|d| d.as_secs_f64() / cpu_secs)
        .collect();
    let node_cpu_cores = (cores.len() == n).then(|| mean(&cores));

    // 3. SIGKILL the last node for good; everyone else hears every group, once.
    let victim = n - 1;
    let kill_ms = Time::now_wall().as_millis();
    cluster.nodes[victim]
        .proc
        .kill()
        .context("cannot SIGKILL the victim")?;
    let mut heard: Vec<BTreeMap<String, Vec<u64>>> = vec![BTreeMap::new(); n];
    let until = Instant::now() + bound(t) + NOTIFY_SLACK;
    let mut complete_at: Option<Instant> = None;
    loop {
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            if i == victim {
                continue;
            }
            node.check_running()?;
            for e in node.new_events()? {
                if e.event == "fuse_failure" {
                    heard[i]
                        .entry(e.group.unwrap_or_default())
                        .or_default()
                        .push(e.at_ms);
                }
            }
        }
        let complete = (0..n)
            .filter(|i| *i != victim)
            .all(|i| heard[i].len() as u64 >= groups);
        match complete_at {
            None if complete => complete_at = Some(Instant::now()),
            Some(at) if at.elapsed() >= DUPLICATE_WATCH => break,
            _ => {}
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_groups: BTreeSet<&String> = heard.iter().flat_map(|h| h.keys()).collect();
    let expected = groups * (n as u64 - 1);
    let mut notify_ms = Vec::new();
    let mut duplicates = 0;
    let mut heard_pairs = 0;
    for (_, h) in heard.iter().enumerate().filter(|(i, _)| *i != victim) {
        for times in h.values() {
            heard_pairs += 1;
            duplicates += times.len() as u64 - 1;
            notify_ms.push(times[0].saturating_sub(kill_ms));
        }
    }
    if all_groups.len() as u64 != groups {
        bail!(
            "{groups} groups were created but the members heard of {} distinct groups",
            all_groups.len()
        );
    }
    drop(cluster);
    Ok(Round {
        groups,
        create_ms,
        window_secs: (t1.as_millis() - t0.as_millis()) as f64 / 1000.0,
        liveness_bytes_per_sec: mean(&byte_rates),
        liveness_bytes_per_sec_min: byte_rates.iter().copied().fold(f64::INFINITY, f64::min),
        liveness_bytes_per_sec_max: byte_rates.iter().copied().fold(0.0, f64::max),
        heartbeats_per_sec: mean(&heartbeat_rates),
        node_cpu_cores,
        notify_ms,
        notifications_expected: expected,
        duplicates,
        missing: expected - heard_pairs.min(expected),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_do_not_depend_on_where_the_window_falls_between_bursts() {
        // Lines every 101 ms, bursts of 100 bytes every 200 ms at phase 50 ms.
        let samples: Vec<Stats> = (0..40u64)
            .map(|i| {
                let at_ms = 1000 + 101 * i;
                let bursts = (at_ms - 50) / 200;
                Stats {
                    liveness_bytes_sent: 100 * bursts,
                    heartbeats_sent: bursts,
                    at_ms,
                }
            })
            .collect();
        for t0 in (1000..1200).step_by(7) {
            let (bytes, heartbeats) = rates(&samples, t0, t0 + 3000).unwrap();
            assert!((bytes - 500.0).abs() < 10.0, "{bytes} B/s from {t0}");
            assert!((heartbeats - 5.0).abs() < 0.1, "{heartbeats}/s from {t0}");
        }
    }

    #[test]
    fn the_report_states_the_ratio_and_the_bound() {
        let r = |groups, bytes: f64| Round {
            groups,
            create_ms: 1,
            window_secs: 3.0,
            liveness_bytes_per_sec: bytes,
            liveness_bytes_per_sec_min: bytes,
            liveness_bytes_per_sec_max: bytes,
            heartbeats_per_sec: 35.0,
            node_cpu_cores: None,
            notify_ms: vec![3300, 3100, 3500],
            notifications_expected: 3,
            duplicates: 0,
            missing: 0,
        };
        let args = FuseArgs {
            json: true,
            seconds: 3.0,
            groups: vec![1, 10_000],
            nodes: 8,
            dir: None,
            keep: false,
        };
        let v = report_json(
            &args,
            &Tuning::default(),
            &[r(1, 1000.0), r(10_000, 1200.0)],
        );
        assert_eq!(v["liveness_bytes_per_sec_1"], 1000.0);
        assert_eq!(v["liveness_ratio"], 1.2);
        assert_eq!(v["liveness_pass"], false);
        assert_eq!(v["bound_ms"], 3400);
        assert_eq!(v["within_bound"], 4);
        assert_eq!(v["notify_ms_p50"], 3300);
        assert_eq!(v["notify_ms_max"], 3500);
        let text = report_text(&v, &[r(1, 1000.0)]);
        assert!(text.contains("1.200x") && text.contains("MISS"), "{text}");
    }

    #[test]
    fn a_busy_machine_gets_a_hint_and_a_quiet_one_does_not() {
        let hint = busy_hint(Some(3.5), 2).expect("load 3.5 on 2 CPUs is busy");
        assert!(hint.contains("load average 3.50 on 2 CPUs"), "{hint}");
        assert_eq!(busy_hint(Some(1.9), 2), None);
        assert_eq!(busy_hint(Some(2.0), 2), None);
        assert_eq!(busy_hint(None, 2), None);
    }
}
