//! Real-process tests of the FUSE lock service (`ken app lock`, `ken_apps::lock`): a server
//! and holders on loopback, SIGKILLed (and restarted, or not) while they contend for one
//! lock.
//!
//! FUSE runs fast here: `T_fail` 1000 ms, heartbeat 100 ms (creation timeout 2000 ms), set
//! in every process's environment. Timing claims are printed; the bounds asserted are
//! generous (seconds of slack) so that a loaded 2-core machine cannot make them flake.
//!
//! Replay the randomized test with the seed it printed: `KEN_SEED=<seed> cargo test
//! --release -p ken-tools --test real lock_`. The kill schedule replays exactly; what each
//! kill interrupts depends on the scheduler.
//!
//! Ports: free loopback ports are picked by binding port 0 and passed on the command lines
//! (addresses are not durable, and restarts reuse them). If a life cannot bind its port
//! (someone took it meanwhile), the whole scenario runs again on fresh ports.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ken_apps::lock::{self, LockEntry, Report};
use ken_tools::harness::{self, End, Process, Spec};

use crate::seed;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

const T_FAIL_MS: u64 = 1000;
const HEARTBEAT_MS: u64 = 100;
const CREATE_TIMEOUT_MS: u64 = 2000;
const LOCK: &str = "L";
/// Scenarios restarted on fresh ports after a bind failure, at most.
const ATTEMPTS_MAX: u32 = 3;

/// A life could not bind its port: run the scenario again on fresh ports.
#[derive(Debug)]
struct BindLost;

#[derive(Debug, Clone, Copy)]
struct HolderOpts {
    hold_ms: u64,
    rounds: Option<u64>,
}

/// Process 0 is the server `s`; process i >= 1 is holder `h<i>`.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    ports: Vec<u16>,
    holders: Vec<HolderOpts>,
    procs: Vec<Option<Process>>,
    started: Instant,
}

fn name(i: usize) -> String {
    if i == 0 {
        "s".to_string()
    } else {
        format!("h{i}")
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

impl Cluster {
    fn new(holders: &[HolderOpts]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ken-lock-real-")
            .tempdir()
            .expect("temp dir");
        // Every life runs the same build: a private copy, immune to a concurrent rebuild.
        let bin = dir.path().join("ken");
        std::fs::copy(crate::ken(), &bin).expect("copy ken");
        let n = holders.len() + 1;
        Cluster {
            dir,
            bin,
            ports: harness::free_ports(n).expect("free UDP ports"),
            holders: holders.to_vec(),
            procs: (0..n).map(|_| None).collect(),
            started: Instant::now(),
        }
    }

    fn addr(&self, i: usize) -> String {
        harness::loopback(self.ports[i]).to_string()
    }

    fn store(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.db", name(i)))
    }

    fn spec(&self, i: usize) -> Spec {
        let mut args: Vec<String> = Vec::new();
        let id = name(i);
        if i == 0 {
            args.extend(["serve".into(), "--id".into(), id]);
            for h in 1..self.ports.len() {
                args.extend(["--peer".into(), format!("{}={}", name(h), self.addr(h))]);
            }
        } else {
            let o = self.holders[i - 1];
            args.extend(["hold".into(), "--id".into(), id]);
            args.extend(["--peer".into(), format!("s={}", self.addr(0))]);
            args.extend(["--server".into(), "s".into(), "--lock".into(), LOCK.into()]);
            args.extend(["--hold-ms".into(), o.hold_ms.to_string()]);
            if let Some(r) = o.rounds {
                args.extend(["--rounds".into(), r.to_string()]);
            }
        }
        args.extend(["--listen".into(), self.addr(i)]);
        args.extend(["--store".into(), self.store(i).display().to_string()]);
        let envs = [
            ("KEN_FUSE_T_FAIL_MS", T_FAIL_MS),
            ("KEN_FUSE_HEARTBEAT_MS", HEARTBEAT_MS),
            ("KEN_FUSE_CREATE_TIMEOUT_MS", CREATE_TIMEOUT_MS),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v.to_string())))
        .to_vec();
        let app = ["app".to_string(), "lock".to_string()];
        Spec {
            name: name(i),
            program: self.bin.clone(),
            args: app.into_iter().chain(args).map(OsString::from).collect(),
            envs,
            env_remove: Vec::new(),
            log_dir: self.dir.path().to_path_buf(),
        }
    }

    fn start(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "{} already started", name(i));
        self.procs[i] = Some(Process::start(self.spec(i)).expect("spawn ken app lock"));
    }

    fn proc(&mut self, i: usize) -> &mut Process {
        self.procs[i].as_mut().expect("started")
    }

    /// SIGKILLs process `i`. False if it had just exited 0 on its own (a holder that
    /// finished); anything else but death by our signal fails the test.
    fn kill(&mut self, i: usize) -> bool {
        match self.proc(i).kill().expect("kill") {
            End::KilledByUs => true,
            end if i > 0 && end.is_success() => false,
            end => panic!("{} ended with {end:?}\n{}", name(i), self.describe()),
        }
    }

    fn restart(&mut self, i: usize) {
        self.proc(i).restart().expect("restart ken app lock");
    }

    /// Notes lives that ended on their own: a bind failure is `Err`; any exit other than a
    /// holder's exit 0 fails the test.
    fn poll(&mut self) -> Result<(), BindLost> {
        for i in 0..self.procs.len() {
            let Some(p) = self.procs[i].as_mut() else {
                continue;
            };
            let Some(end) = p.poll().expect("poll") else {
                continue;
            };
            if end == End::BindError {
                println!("{} could not bind its port: fresh ports", name(i));
                return Err(BindLost);
            }
            assert!(
                i > 0 && end.is_success(),
                "{} ended unexpectedly: {end:?}\n{}",
                name(i),
                self.describe()
            );
        }
        Ok(())
    }

    /// Every JSON line process `i` printed, with its life.
    fn lines(&self, i: usize) -> Vec<(u32, Value)> {
        let Some(p) = &self.procs[i] else {
            return Vec::new();
        };
        p.stdout_lines()
            .into_iter()
            .map(|(life, l)| {
                let v = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", name(i)));
                (life, v)
            })
            .collect()
    }

    fn events(&self, i: usize, event: &str) -> Vec<Value> {
        self.lines(i)
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Polls until `cond` gives a value; fails the test with every process's story at
    /// `timeout`.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Cluster) -> Option<T>,
    ) -> Result<T, BindLost> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll()?;
            if let Some(v) = cond(self) {
                return Ok(v);
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's record of the lock, read from its store (safe while it runs).
    fn lock_entry(&self) -> Option<LockEntry> {
        let reader = ken::store::Reader::open(&self.store(0)).ok()?;
        let bytes = reader
            .table_get(lock::LOCKS_TABLE, LOCK.as_bytes())
            .ok()??;
        Some(ken::store::codec::decode(&bytes).expect("a LockEntry"))
    }

    fn describe(&self) -> String {
        let mut out = format!(
            "after {} ms, in {}:\n",
            self.started.elapsed().as_millis(),
            self.dir.path().display()
        );
        for p in self.procs.iter().flatten() {
            out.push_str(&p.report(2, 15));
        }
        out
    }
}

/// Runs `scenario` on fresh ports until no life lost its port (at most [`ATTEMPTS_MAX`]).
fn on_fresh_ports<T>(mut scenario: impl FnMut() -> Result<T, BindLost>) -> T {
    for attempt in 1..=ATTEMPTS_MAX {
        match scenario() {
            Ok(v) => return v,
            Err(BindLost) => println!("attempt {attempt}: a port was taken; again on fresh ports"),
        }
    }
    panic!("{ATTEMPTS_MAX} attempts lost a port to another process");
}

fn token(v: &Value) -> u64 {
    v["token"].as_u64().expect("a token")
}

/// (1) Two holders contend for one lock, 15 rounds each, holding 50 ms, while random
/// processes (the server included) are SIGKILLed at seeded random moments and restarted at
/// once. Every round completes; per the server's lines tokens strictly increase, none is
/// granted twice and at most one grant is live at a time (`lock::audit_server`); the
/// server's store ends with exactly one grant per round; the holders' tokens are disjoint,
/// increasing, and match the holder the server named (a grant released before its commit
/// and then rolled back would reuse its token for someone else).
#[test]
fn lock_rounds_complete_with_increasing_tokens_across_random_sigkills() {
    let seed = seed::seed("lock_rounds_complete_with_increasing_tokens_across_random_sigkills");
    const ROUNDS: u64 = 15;
    const KILL_GAP_MS: std::ops::Range<u64> = 80..250;
    let started = Instant::now();
    let (c, kills) = on_fresh_ports(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let opts = HolderOpts {
            hold_ms: 50,
            rounds: Some(ROUNDS),
        };
        let mut c = Cluster::new(&[opts, opts]);
        for i in 0..3 {
            c.start(i);
        }
        let mut kills = [0u32; 3];
        let mut since_server_kill = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next_kill = Instant::now() + Duration::from_millis(rng.gen_range(KILL_GAP_MS));
        let done = |c: &Cluster, i: usize| !c.events(i, "done").is_empty();
        // Kill while the rounds run; a holder that reported done only lingers, so it and
        // (once both are done) the server are left alone.
        while !(done(&c, 1) && done(&c, 2)) {
            c.poll()?;
            assert!(
                Instant::now() < deadline,
                "seed {seed}: the rounds did not complete within 60 s\n{}",
                c.describe()
            );
            if Instant::now() >= next_kill {
                let candidates: Vec<usize> = (0..3)
                    .filter(|i| *i == 0 || !done(&c, *i))
                    .filter(|i| c.procs[*i].as_ref().is_some_and(|p| p.is_running()))
                    .collect();
                // Random victims, but the server at least every third kill.
                let victim = if since_server_kill >= 2 {
                    0
                } else {
                    candidates[rng.gen_range(0..candidates.len())]
                };
                let down = Duration::from_millis(rng.gen_range(0..30));
                if c.kill(victim) {
                    std::thread::sleep(down);
                    c.restart(victim);
                    kills[victim] += 1;
                }
                since_server_kill = if victim == 0 {
                    0
                } else {
                    since_server_kill + 1
                };
                next_kill = Instant::now() + Duration::from_millis(rng.gen_range(KILL_GAP_MS));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        c.wait("both holders to exit 0", Duration::from_secs(20), |c| {
            (1..3)
                .all(|i| {
                    c.procs[i].as_ref().is_some_and(|p| {
                        p.current_life().and_then(|l| l.end.as_ref()) == Some(&End::Finished)
                    })
                })
                .then_some(())
        })?;
        // The server frees the last grant once it hears the group fail.
        c.wait(
            "the server's store to show every grant freed",
            Duration::from_secs(10),
            |c| {
                c.lock_entry()
                    .filter(|e| e.grant.is_none() && e.next_token > 2 * ROUNDS)
            },
        )?;
        Ok((c, kills))
    });
    let wall = started.elapsed();

    let server_lines = c.procs[0].as_ref().expect("server").stdout_lines();
    let audit = lock::audit_server(&server_lines);
    assert!(
        audit.violations.is_empty(),
        "seed {seed}: {:?}\n{}",
        audit.violations,
        c.describe()
    );
    let entry = c.lock_entry().expect("the server's lock entry");
    assert_eq!(
        entry.next_token,
        2 * ROUNDS + 1,
        "seed {seed}: exactly one grant per round\n{}",
        c.describe()
    );
    assert!(entry.queue.is_empty(), "{entry:?}");
    // Lines are at most once (`Turn::emit`): a SIGKILL of the server between a grant's commit
    // and its print loses that line, so the last token printed may be below the last granted
    // (the store, checked above, is the truth) by at most one per server kill.
    let printed = audit.last_token.get(LOCK).copied().unwrap_or(0);
    assert!(
        printed <= 2 * ROUNDS && 2 * ROUNDS - printed <= u64::from(kills[0]),
        "seed {seed}: last token printed {printed}, granted {}, server kills {}",
        2 * ROUNDS,
        kills[0]
    );

    let granted_to: BTreeMap<u64, String> = c
        .events(0, "granted")
        .iter()
        .map(|g| (token(g), g["holder"].as_str().expect("holder").to_string()))
        .collect();
    let mut all_tokens = BTreeSet::new();
    let mut lost = 0;
    for i in 1..=2 {
        let lines = c.lines(i);
        let report: Report = lines
            .iter()
            .rev()
            .find(|(_, v)| v["event"] == "done")
            .map(|(_, v)| serde_json::from_value(v.clone()).expect("a report"))
            .unwrap_or_else(|| panic!("seed {seed}: h{i} has no report\n{}", c.describe()));
        assert_eq!(report.rounds, ROUNDS, "{report:?}");
        assert_eq!(report.released + report.lost, ROUNDS, "{report:?}");
        lost += report.lost;
        let held: Vec<u64> = c.events(i, "holding").iter().map(token).collect();
        assert!(
            held.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: h{i} held tokens {held:?}"
        );
        for t in held {
            assert!(
                (1..=2 * ROUNDS).contains(&t) && all_tokens.insert(t),
                "seed {seed}: token {t} held twice or never granted"
            );
            if let Some(h) = granted_to.get(&t) {
                assert_eq!(
                    h,
                    &name(i),
                    "seed {seed}: token {t} granted to {h}, held by h{i}"
                );
            }
        }
    }
    println!(
        "seed {seed}: {} rounds, kills s/h1/h2 {kills:?}, granted lines {}, freed lines {}, \
         unconfirmed (lines lost with a killed life) {}, lost rounds {lost}, {:.2} s",
        2 * ROUNDS,
        audit.granted,
        audit.freed,
        audit.unconfirmed,
        wall.as_secs_f64()
    );
    if std::env::var_os("KEN_LOCK_DESCRIBE").is_some() {
        println!("{}", c.describe());
    }
    let total: u32 = kills.iter().sum();
    assert!(
        total >= 5 && kills[0] >= 1,
        "seed {seed}: kills {kills:?}: too few to mean anything"
    );
}

/// (2) h1 holds the lock forever and is SIGKILLed for good while h2 waits: the server frees
/// h1's lock within `T_fail + 2 x heartbeat` (asserted with 2 s of slack) and h2 gets it
/// with the next token. The kill-to-freed time is printed, by the server's clock (`at_ms`
/// of the `freed` line) and as the test saw the line.
#[test]
fn lock_of_a_holder_killed_for_good_is_freed_within_the_bound_and_the_waiter_gets_it() {
    let forever = HolderOpts {
        hold_ms: 0,
        rounds: None,
    };
    let started = Instant::now();
    let (took_server_ms, took_seen) = on_fresh_ports(|| {
        let mut c = Cluster::new(&[forever, forever]);
        c.start(0);
        c.start(1);
        c.wait("h1 to hold the lock", Duration::from_secs(10), |c| {
            c.events(1, "holding").first().cloned()
        })?;
        c.start(2);
        c.wait("h2 to be queued", Duration::from_secs(10), |c| {
            c.events(0, "queued").first().cloned()
        })?;
        let killed_ms = wall_ms();
        let killed = Instant::now();
        assert!(c.kill(1));
        let freed = c.wait(
            "the server to free h1's lock",
            Duration::from_secs(10),
            |c| c.events(0, "freed").first().cloned(),
        )?;
        let took_seen = killed.elapsed();
        assert_eq!((token(&freed), freed["holder"].as_str()), (1, Some("h1")));
        let took_server_ms = freed["at_ms"]
            .as_u64()
            .expect("at_ms")
            .saturating_sub(killed_ms);
        let holding = c.wait("h2 to hold the lock", Duration::from_secs(10), |c| {
            c.events(2, "holding").first().cloned()
        })?;
        assert_eq!(token(&holding), 2);
        let audit = lock::audit_server(&c.procs[0].as_ref().expect("server").stdout_lines());
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        Ok((took_server_ms, took_seen))
    });
    let bound_ms = T_FAIL_MS + 2 * HEARTBEAT_MS;
    println!(
        "kill to freed: {took_server_ms} ms by the server's clock, {} ms as seen by the test \
         (FUSE bound T_fail + 2 x heartbeat = {bound_ms} ms); test wall time {:.2} s",
        took_seen.as_millis(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        took_seen.as_millis() as u64 <= bound_ms + 2000,
        "freed {} ms after the kill: over the bound {bound_ms} ms + 2 s",
        took_seen.as_millis()
    );
    // Freed by FUSE's silence bound, not by anything faster: the server last heard h1 at
    // most a heartbeat before the kill, and a silence of T_fail + 2 heartbeats fails it.
    assert!(
        took_server_ms >= T_FAIL_MS / 2,
        "freed only {took_server_ms} ms after the kill: not FUSE's silence bound"
    );
}

/// (3) h1 holds the lock forever, h2 waits. h1 is SIGKILLed and restarted after
/// 0.3 x T_fail: it keeps its lock (no `freed` for its token, no `lost` at h1, h2 never
/// holds) for 2 x T_fail. Then the control: h1 down for 1.5 x T_fail is *not* masked: the
/// server frees token 1, h2 gets token 2, and h1, restarted, reports token 1 lost.
#[test]
fn lock_of_a_holder_restarted_within_t_fail_is_kept_and_a_longer_outage_loses_it() {
    let forever = HolderOpts {
        hold_ms: 0,
        rounds: None,
    };
    let started = Instant::now();
    on_fresh_ports(|| {
        let mut c = Cluster::new(&[forever, forever]);
        c.start(0);
        c.start(1);
        c.wait("h1 to hold the lock", Duration::from_secs(10), |c| {
            c.events(1, "holding").first().cloned()
        })?;
        c.start(2);
        c.wait("h2 to be queued", Duration::from_secs(10), |c| {
            c.events(0, "queued").first().cloned()
        })?;

        // Masked: down 0.3 x T_fail (the outage itself is the scenario, not a wait).
        assert!(c.kill(1));
        std::thread::sleep(Duration::from_millis(T_FAIL_MS * 3 / 10));
        c.restart(1);
        let watch_until = Instant::now() + Duration::from_millis(2 * T_FAIL_MS);
        let disturbed = c.wait("2 x T_fail to pass", Duration::from_secs(30), |c| {
            let freed = c.events(0, "freed");
            let lost = c.events(1, "lost");
            let h2 = c.events(2, "holding");
            if !freed.is_empty() || !lost.is_empty() || !h2.is_empty() {
                return Some(Some(format!(
                    "freed {freed:?}, lost at h1 {lost:?}, h2 holding {h2:?}"
                )));
            }
            (Instant::now() >= watch_until).then_some(None)
        })?;
        assert_eq!(
            disturbed,
            None,
            "a restart after 0.3 x T_fail lost the lock\n{}",
            c.describe()
        );
        let entry = c.lock_entry().expect("the server's lock entry");
        let grant = entry.grant.expect("h1 still holds the lock at the server");
        assert_eq!((grant.holder.as_str(), grant.token), ("h1", 1));

        // Control: down 1.5 x T_fail is not masked.
        assert!(c.kill(1));
        let killed = Instant::now();
        let freed = c.wait("the server to free token 1", Duration::from_secs(10), |c| {
            c.events(0, "freed").first().cloned()
        })?;
        assert_eq!(token(&freed), 1);
        let h2 = c.wait("h2 to hold the lock", Duration::from_secs(10), |c| {
            c.events(2, "holding").first().cloned()
        })?;
        assert_eq!(token(&h2), 2);
        let down = Duration::from_millis(T_FAIL_MS * 3 / 2);
        std::thread::sleep(down.saturating_sub(killed.elapsed()));
        c.restart(1);
        let lost = c.wait("h1 to report token 1 lost", Duration::from_secs(10), |c| {
            c.events(1, "lost").first().cloned()
        })?;
        assert_eq!(token(&lost), 1);
        assert_eq!(c.events(1, "lost").len(), 1, "reported once");
        let audit = lock::audit_server(&c.procs[0].as_ref().expect("server").stdout_lines());
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        Ok(())
    });
    println!(
        "restart after 0.3 x T_fail kept the lock for 2 x T_fail; 1.5 x T_fail lost it; {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
