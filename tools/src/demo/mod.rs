//! `ken demo`: a small cluster on loopback, SIGKILLed and restarted while clients use it,
//! then checked.
//!
//! 1. **Start** three `ken-bank` members (each starts a bounded number of transfers) and one
//!    `ken-kv` process, stores in a fresh directory (or `--dir`). Keyed: a fresh cluster key
//!    (`keys/key-0.key`, [`ken_tools::keys`]) is given to every process (`--key-file`) and
//!    the kv clients hold credentials issued from it; `--no-key` runs unauthenticated, with
//!    a loud warning.
//! 2. **Faults** for `--seconds`: four client threads send `incr`s of a few counters and
//!    `put`s of fresh keys to kv (a timed-out request is retried with the same number until
//!    answered); meanwhile the demo SIGKILLs a random process every 0.3-1.2 s and restarts
//!    it with the same command after 50-500 ms. A progress line every second: committed
//!    turns per second (from the stores' `meta`), kills, restarts, requests answered.
//! 3. **Heal**: no more kills, every process running, clients stopped; wait (bounded) until
//!    every outbox is empty, every bank member started all its transfers and the committed
//!    turn count is stable.
//! 4. **Check** and report: money conserved and every transfer applied exactly once (the
//!    bank audit, `ken_apps::bank::audit_run`, over the stores), every pair's messages
//!    consumed exactly once (`torture::check`), every counter equal to the sum of its
//!    acknowledged increments, every acknowledged put present. Exit 0 only if all of it
//!    held.
//! 5. **Clean up**: a temporary directory (no `--dir`) is removed at the end unless `--keep`
//!    is given or a check failed; then, and with `--dir`, the report prints the absolute path
//!    of the stores and a `ken inspect` command line naming this executable by its absolute
//!    path, so it works as printed after `cargo run` too.
//!
//! The processes run this executable (`ken app bank ..`, `ken app kv serve ..`: the apps'
//! own command lines, `ken_apps::cli`) through the process harness
//! ([`ken_tools::harness`]); there is nothing to build or find beside `ken`.

mod kv;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ken_tools::harness::{self, End, Process, Spec};
use ken_tools::keys::{Held, KeyRing};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::torture::apps::{self, TortureApp};
use crate::torture::check;

/// Bank members.
const BANK_MEMBERS: usize = 3;

/// kv client threads.
const CLIENTS: usize = 4;

/// Bound on the wait for quiescence after healing.
const QUIESCE_DEADLINE: Duration = Duration::from_secs(25);

/// The committed turn count must stay unchanged this long to count as quiescent.
const QUIESCE_STABLE: Duration = Duration::from_millis(600);

/// `ken demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds of kills and restarts.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seed of the kill schedule and the clients' requests (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory for the stores and logs, kept at the end (default: a fresh temporary
    /// directory, removed at the end unless --keep is given or a check failed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory (stores, keys, each process's output) at the end and
    /// print where it is, to look inside with `ken inspect`.
    #[arg(long)]
    pub keep: bool,
    /// Run the cluster without a cluster key (unauthenticated mode, SECURITY.md). By default
    /// the demo writes a fresh key to `DIR/keys/key-0.key`, starts every process with it and
    /// gives its kv clients credentials issued from it.
    #[arg(long)]
    pub no_key: bool,
}

/// One process of the cluster.
struct Proc {
    member: Process,
    store: PathBuf,
}

/// Runs the demo; exit 0 only if every check held.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let program = std::env::current_exe().context("the ken executable's path")?;
    // Absolute, so that every path printed works from any directory. `temp` removes a
    // temporary directory when dropped (after `procs`, declared later, killed the children).
    let (dir, mut temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            let abs =
                std::fs::canonicalize(d).with_context(|| format!("resolve {}", d.display()))?;
            (abs, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ken-demo-")
                .tempdir()
                .context("make a temporary directory")?;
            let abs = std::fs::canonicalize(t.path())
                .with_context(|| format!("resolve {}", t.path().display()))?;
            (abs, Some(t))
        }
    };
    let fresh = std::fs::read_dir(&dir)?.next().is_none();
    if !fresh {
        bail!(
            "{} is not empty: the demo needs fresh stores (pass an empty or new --dir)",
            dir.display()
        );
    }
    println!(
        "ken demo: seed {seed}, {} s of SIGKILLs, stores in {}",
        args.seconds,
        dir.display()
    );
    let ring = if args.no_key {
        println!("ken demo: {}", ken_tools::keys::NO_KEY_WARNING);
        None
    } else {
        let ring = KeyRing::create(&dir.join("keys"))?;
        println!(
            "ken demo: cluster key {} in {} (every frame authenticated, clients with credentials)",
            ring.key(0)?.id(),
            ring.file(0).display()
        );
        Some(ring)
    };
    let key_args = ring
        .as_ref()
        .map(|r| Held::only(0).args(r))
        .unwrap_or_default();
    let key = ring.as_ref().map(|r| r.key(0)).transpose()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bank = apps::Bank {
        procs: BANK_MEMBERS,
        accounts: 16,
        initial_balance: 1000,
        interval_ms: 5,
        // About half the fault phase of work at full speed: done before the heal.
        transfers: (args.seconds * 1000 / 5 / 2).max(50),
    };
    let mut ids = bank.members();
    ids.push("kv1".into());
    let ports = harness::free_ports(ids.len()).context("pick free UDP ports")?;
    let addrs: Vec<SocketAddr> = ports.iter().map(|p| harness::loopback(*p)).collect();
    let mut procs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let store = dir.join(format!("{id}.db"));
        let mut args = vec!["app".to_string()];
        if i < BANK_MEMBERS {
            let peers: Vec<(String, SocketAddr)> = (0..BANK_MEMBERS)
                .filter(|&j| j != i)
                .map(|j| (ids[j].clone(), addrs[j]))
                .collect();
            args.push(ken_apps::cli::App::Bank.name().into());
            args.extend(bank.args(i, addrs[i], &store, &peers));
        } else {
            args.extend([
                ken_apps::cli::App::Kv.name().to_string(),
                "serve".into(),
                "--id".into(),
                id.clone(),
                "--listen".into(),
                addrs[i].to_string(),
                "--store".into(),
                store.display().to_string(),
            ]);
        }
        args.extend(key_args.iter().cloned());
        let member = Process::start(Spec::new(id.clone(), &program, args, &dir))?;
        procs.push(Proc { member, store });
    }
    let stores: Vec<PathBuf> = procs.iter().map(|p| p.store.clone()).collect();
    let kv_addr = addrs[BANK_MEMBERS];
    let kv_store = stores[BANK_MEMBERS].clone();

    // Clients.
    let live = Arc::new(kv::Live::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let live = Arc::clone(&live);
            let client_seed = rng.gen::<u64>();
            let key = key.clone();
            std::thread::spawn(move || {
                kv::client_thread(i, client_seed, kv_addr, key.as_ref(), &live)
            })
        })
        .collect();

    // Faults.
    let tty = std::io::stdout().is_terminal();
    let mut problems: Vec<String> = Vec::new();
    let mut kills = vec![0u32; ids.len()];
    let mut restarts = 0u32;
    let started = Instant::now();
    let fault_end = started + Duration::from_secs(args.seconds);
    let mut next_kill = started + Duration::from_millis(rng.gen_range(300..1200));
    let mut next_progress = started + Duration::from_secs(1);
    let mut last_turns = (started, turns(&stores).unwrap_or(0));
    let mut restart_at: Vec<Option<Instant>> = vec![None; ids.len()];
    while Instant::now() < fault_end {
        let now = Instant::now();
        for (i, p) in procs.iter_mut().enumerate() {
            if let Some(end) = p.member.poll()? {
                problems.push(format!("{} ended on its own: {end:?}", ids[i]));
                restart_at[i] = Some(now);
            }
            if restart_at[i].is_some_and(|t| t <= now) {
                restart_at[i] = None;
                p.member.restart()?;
                restarts += 1;
            }
        }
        if now >= next_kill {
            next_kill = now + Duration::from_millis(rng.gen_range(300..1200));
            let victim = rng.gen_range(0..ids.len());
            let delay = Duration::from_millis(rng.gen_range(50..500));
            if procs[victim].member.is_running() {
                match procs[victim].member.kill()? {
                    End::KilledByUs => kills[victim] += 1,
                    other => problems.push(format!("{} ended on its own: {other:?}", ids[victim])),
                }
                restart_at[victim] = Some(now + delay);
            }
        }
        if now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            let t = turns(&stores).unwrap_or(last_turns.1);
            let rate = (t.saturating_sub(last_turns.1)) as f64
                / now.duration_since(last_turns.0).as_secs_f64();
            last_turns = (now, t);
            let line = format!(
                "[{:>2} s] {:>6.0} turns/s  kills {:>2}  restarts {:>2}  requests answered {:>6} ({} after a retry)",
                now.duration_since(started).as_secs(),
                rate,
                kills.iter().sum::<u32>(),
                restarts,
                live.answered.load(std::sync::atomic::Ordering::Relaxed),
                live.retried.load(std::sync::atomic::Ordering::Relaxed),
            );
            if tty {
                print!("\r{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if tty {
        println!();
    }

    // Heal.
    for (i, p) in procs.iter_mut().enumerate() {
        if !p.member.is_running() {
            restart_at[i] = None;
            p.member.restart()?;
            restarts += 1;
        }
    }
    live.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let logs: Vec<kv::ClientLog> = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread panicked"))
        .collect();
    println!(
        "healed after {:.1} s: every process running, no more kills; waiting for quiescence",
        started.elapsed().as_secs_f64()
    );
    let quiesced = quiesce(&bank, &stores);
    if let Err(e) = &quiesced {
        problems.push(format!("not quiescent: {e}"));
    }
    for (i, p) in procs.iter_mut().enumerate() {
        if let Some(end) = p.member.poll()? {
            problems.push(format!(
                "{} ended on its own after the heal: {end:?}",
                ids[i]
            ));
        }
    }

    // Checks: counters through the running kv, then everything else from the stores of
    // stopped processes (one consistent committed state).
    let mut kv_problems: Vec<String> = logs.iter().flat_map(|l| l.problems.clone()).collect();
    let mut acked: std::collections::BTreeMap<String, i64> = Default::default();
    for l in &logs {
        for (k, v) in &l.acked_incr {
            *acked.entry(k.clone()).or_default() += v;
        }
    }
    let cluster_key = key.as_ref();
    let mut counter_lines = Vec::new();
    for i in 0..kv::COUNTERS {
        let key = kv::counter_key(i);
        let want = acked.get(&key).copied().unwrap_or(0);
        match kv::read_counter(kv_addr, &key, cluster_key) {
            Ok(found) if found == want => counter_lines.push(format!("{key}={found}")),
            Ok(found) => kv_problems.push(format!(
                "{key} is {found}, but its acknowledged increments sum to {want}"
            )),
            Err(e) => kv_problems.push(e),
        }
    }
    for p in &mut procs {
        if p.member.is_running() {
            p.member.kill()?;
        }
    }
    let bank_problems = bank.check(&stores[..BANK_MEMBERS], quiesced.is_ok());
    let pair_problems = check::check_pairs(&ids, &stores, quiesced.is_ok());
    let puts: Vec<(String, String)> = logs.iter().flat_map(|l| l.acked_puts.clone()).collect();
    kv_problems.extend(kv::check_puts(&kv_store, &puts));
    let totals = check::totals(&stores).unwrap_or_default();
    let (requests, answered, after_retry, unanswered) = logs.iter().fold((0, 0, 0, 0), |a, l| {
        (
            a.0 + l.requests,
            a.1 + l.answered,
            a.2 + l.answered_after_retry,
            a.3 + l.unanswered,
        )
    });
    let incrs_acked: i64 = acked.values().sum();

    // Report.
    let killed: Vec<String> = ids
        .iter()
        .zip(&kills)
        .map(|(id, k)| format!("{id} x{k}"))
        .collect();
    let ok = |v: &[String]| if v.is_empty() { "ok" } else { "FAILED" };
    println!();
    println!(
        "what was killed: {} SIGKILLs ({}), {restarts} restarts",
        kills.iter().sum::<u32>(),
        killed.join(", ")
    );
    println!(
        "traffic: {} committed turns; {} bank messages; {requests} kv requests, {answered} answered ({after_retry} after a timeout and a retry with the same number), {unanswered} unanswered",
        totals.turns, totals.messages
    );
    println!(
        "check money conserved, every transfer applied exactly once ({} members, {} transfers each): {}",
        BANK_MEMBERS,
        bank.transfers,
        ok(&bank_problems)
    );
    println!(
        "check every message consumed exactly once, in order, outboxes empty: {}",
        ok(&pair_problems)
    );
    println!(
        "check every acknowledged request applied exactly once ({} puts present, {} increments summing to {incrs_acked}: {}): {}",
        puts.len(),
        logs.iter().map(|l| l.incrs_acked).sum::<u64>(),
        counter_lines.join(" "),
        ok(&kv_problems)
    );
    let all: Vec<&String> = problems
        .iter()
        .chain(&bank_problems)
        .chain(&pair_problems)
        .chain(&kv_problems)
        .collect();
    for p in all.iter().take(20) {
        println!("problem: {p}");
    }
    let verdict = all.is_empty();
    let ken = program.display();
    // Kept: a --dir, --keep, or a failed check (the stores are the evidence).
    let kept = temp.is_none() || args.keep || !verdict;
    if kept {
        println!("stores kept in {}", dir.display());
        println!("look inside a store: {ken} inspect {}", kv_store.display());
    } else {
        println!(
            "stores in {} removed at exit (--keep keeps them, to look inside with `{ken} inspect`)",
            dir.display()
        );
    }
    println!(
        "replay this run: {ken} demo --seconds {} --seed {seed}{}{}",
        args.seconds,
        if args.no_key { " --no-key" } else { "" },
        if args.keep { " --keep" } else { "" }
    );
    println!(
        "{} in {:.1} s",
        if verdict {
            "all checks held"
        } else {
            "SOME CHECKS FAILED"
        },
        started.elapsed().as_secs_f64()
    );
    drop(procs);
    if kept {
        if let Some(t) = temp.take() {
            let _ = t.keep();
        }
    } else if let Some(t) = temp.take() {
        let path = t.path().display().to_string();
        t.close().with_context(|| format!("remove {path}"))?;
    }
    Ok(if verdict {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Committed turns over all stores.
fn turns(stores: &[PathBuf]) -> Result<u64, String> {
    check::totals(stores).map(|t| t.turns)
}

/// Waits until every outbox is empty, the bank's work is done and the turn count is stable.
fn quiesce(bank: &apps::Bank, stores: &[PathBuf]) -> Result<(), String> {
    let deadline = Instant::now() + QUIESCE_DEADLINE;
    let mut stable_since: Option<(Instant, u64)> = None;
    let mut last = String::new();
    while Instant::now() < deadline {
        match (
            check::totals(stores),
            bank_work_done(&stores[..BANK_MEMBERS], bank.transfers),
        ) {
            (Ok(t), Ok(done)) if t.outbox == 0 && done => match stable_since {
                Some((since, turns)) if turns == t.turns => {
                    if since.elapsed() >= QUIESCE_STABLE {
                        return Ok(());
                    }
                }
                _ => stable_since = Some((Instant::now(), t.turns)),
            },
            (t, done) => {
                stable_since = None;
                last = format!("totals {t:?}, bank work done {done:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("after {QUIESCE_DEADLINE:?}: {last}"))
}

/// True once every bank member committed the start of all its `transfers`.
fn bank_work_done(stores: &[PathBuf], transfers: u64) -> Result<bool, String> {
    for s in stores {
        let reader = ken_store::Reader::open(s).map_err(|e| format!("{}: {e}", s.display()))?;
        let state: ken_apps::bank::State = match reader.root().map_err(|e| e.to_string())? {
            None => ken_apps::bank::State::default(),
            Some(b) => ken_store::codec::decode(&b).map_err(|e| format!("bank state: {e}"))?,
        };
        if state.transfers_started < transfers {
            return Ok(false);
        }
    }
    Ok(true)
}
