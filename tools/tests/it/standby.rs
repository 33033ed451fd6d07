//! A destroyed disk loses nothing (issue 18): pingpong `a` runs with a standby replica
//! (`ken standby serve`), `b` without. Mid-volley `a` is SIGKILLed and its store destroyed
//! (every file of it deleted), the standby is stopped and promoted (`ken standby promote`),
//! and `a` starts again on the replica at the standby's address with `--no-standby`. `b`
//! is never restarted: it finds `a` at its standby address once `a` stays quiet (the
//! cluster file's `standby.address`). Both finish with every ball received exactly once
//! (the reports: no gap, no repeat, the full count).
//!
//! Negative control: the same with the primary releasing before the standby's
//! acknowledgement (`KEN_UNSAFE_RELEASE_BEFORE_STANDBY=1`) and the standby stopped early, so
//! that the primary runs ahead of its replica: the promoted `a` restarts behind what `b`
//! has seen, and the pair never completes cleanly (the runtime stops it as rolled back).
//! And with the protection on, the same early stop of the standby stalls the primary: it
//! releases nothing the standby does not hold.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ken_apps::pingpong::{expected_received, Report};
use ken_tools::harness::{self, Process, Spec};

const KEN: &str = env!("CARGO_BIN_EXE_ken");
const COUNT: u64 = 3000;

struct Setup {
    dir: tempfile::TempDir,
    cluster: PathBuf,
    /// a's UDP address after promotion.
    a2: std::net::SocketAddr,
    /// Where a's standby listens for batches.
    ship: std::net::SocketAddr,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let udp = harness::free_addrs(3).unwrap();
        let ship = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let out = std::process::Command::new(KEN)
            .arg("keygen")
            .arg(dir.path().join("cluster.key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let cluster = dir.path().join("cluster.toml");
        std::fs::write(
            &cluster,
            format!(
                r#"[[process]]
id = "a"
address = "{}"
store = "a.ken"
standby = {{ ship = "{ship}", address = "{}", store = "a.standby.ken" }}

[[process]]
id = "b"
address = "{}"
store = "b.ken"

[settings]
key_file = "cluster.key"
"#,
                udp[0], udp[2], udp[1]
            ),
        )
        .unwrap();
        Setup {
            dir,
            cluster,
            a2: udp[2],
            ship,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
        let mut all: Vec<OsString> = Vec::new();
        for a in args {
            all.push(
                a.replace("{cluster}", self.cluster.to_str().unwrap())
                    .into(),
            );
        }
        let mut spec = Spec::new(name, KEN, all, self.dir.path().join("logs"));
        for (k, v) in envs {
            spec = spec.env(k, v);
        }
        std::fs::create_dir_all(self.dir.path().join("logs")).unwrap();
        Process::start(spec).unwrap()
    }

    fn standby(&self) -> Process {
        self.spawn(
            "standby",
            &["standby", "serve", "--cluster", "{cluster}", "--id", "a"],
            &[],
        )
    }

    fn player(&self, id: &str, extra: &[&str], envs: &[(&str, &str)]) -> Process {
        self.named_player(id, id, extra, envs)
    }

    /// A player whose logs are named `name` (a second process of the same id keeps its own).
    fn named_player(&self, name: &str, id: &str, extra: &[&str], envs: &[(&str, &str)]) -> Process {
        let count = COUNT.to_string();
        let mut args = vec![
            "app",
            "pingpong",
            "--cluster",
            "{cluster}",
            "--id",
            id,
            "--count",
            &count,
        ];
        if id == "b" {
            args.push("--serve");
        }
        args.extend_from_slice(extra);
        self.spawn(name, &args, envs)
    }

    /// Turns committed in a's store (0 while it cannot be read).
    fn a_turns(&self) -> u64 {
        ken::store::Reader::open(&self.path("a.ken"))
            .ok()
            .and_then(|r| r.meta().ok())
            .map_or(0, |m| m.turns_committed)
    }

    /// SIGKILLs `a` and deletes every file of its store: a destroyed disk.
    fn destroy_a(&self, a: &mut Process) {
        a.kill().unwrap();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("a.ken") {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }

    fn promote(&self) -> std::process::Output {
        std::process::Command::new(KEN)
            .args(["standby", "promote", "--cluster"])
            .arg(&self.cluster)
            .args(["--id", "a"])
            .output()
            .unwrap()
    }

    /// `a` again, on the promoted replica at the standby's address.
    fn promoted_a(&self, envs: &[(&str, &str)]) -> Process {
        let store = self.path("a.standby.ken");
        let listen = self.a2.to_string();
        self.named_player(
            "a-promoted",
            "a",
            &[
                "--store",
                store.to_str().unwrap(),
                "--listen",
                &listen,
                "--no-standby",
            ],
            envs,
        )
    }
}

/// Waits for `p` to end; its report (the last stdout line) if it exited 0.
fn finished(p: &mut Process, within: Duration) -> Option<Report> {
    let deadline = Instant::now() + within;
    let end =
        harness::wait_until(deadline, Duration::from_millis(20), || p.poll().unwrap()).ok()?;
    if !end.is_success() {
        return None;
    }
    let lines = p.current_life()?.stdout_lines();
    serde_json::from_str(lines.last()?).ok()
}

fn wait_turns(s: &Setup, turns: u64) {
    harness::wait_until(
        Instant::now() + Duration::from_secs(60),
        Duration::from_millis(10),
        || (s.a_turns() >= turns).then_some(()),
    )
    .unwrap_or_else(|_| panic!("a never reached {turns} turns"));
}

#[test]
fn a_destroyed_primary_is_promoted_from_its_standby_and_the_volley_completes_exactly_once() {
    let s = Setup::new();
    let mut standby = s.standby();
    let mut b = s.player("b", &[], &[]);
    let mut a = s.player("a", &[], &[]);
    wait_turns(&s, COUNT / 4);
    s.destroy_a(&mut a);
    standby.kill().unwrap();
    let out = s.promote();
    assert!(out.status.success(), "promote: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("epoch 1"),
        "{out:?}"
    );
    let promoted = Instant::now();
    let turns_of = |name: &str| {
        ken::store::Reader::open(&s.path(name))
            .ok()
            .and_then(|r| r.meta().ok())
            .map_or(0, |m| m.turns_committed)
    };
    let replica_turns = turns_of("a.standby.ken");
    let mut a = s.promoted_a(&[]);
    // The promoted process's first turn past the replica (a ball from b: b found it).
    harness::wait_until(
        Instant::now() + Duration::from_secs(60),
        Duration::from_millis(2),
        || (turns_of("a.standby.ken") > replica_turns + 1).then_some(()),
    )
    .unwrap_or_else(|_| panic!("the promoted a never ran a turn: {}", a.report(1, 40)));
    println!(
        "promotion to the promoted process's first turns: {} ms",
        promoted.elapsed().as_millis()
    );
    let ra = finished(&mut a, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("promoted a did not finish: {}", a.report(1, 40)));
    let rb = finished(&mut b, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("b did not finish: {}", b.report(1, 40)));
    println!(
        "promotion to the end of the volley: {} ms",
        promoted.elapsed().as_millis()
    );
    for (r, serve) in [(&ra, false), (&rb, true)] {
        assert_eq!((r.gaps, r.repeats), (0, 0), "{r:?}");
        assert_eq!(r.received, expected_received(COUNT, serve), "{r:?}");
    }
    assert_eq!(b.lives().len(), 1, "b was never restarted");
}

#[test]
fn with_the_standby_down_the_primary_releases_nothing_and_releasing_early_loses_the_pair() {
    // Protection on: the standby stops, the primary stalls (nothing more released, so b's
    // store stops growing) instead of running ahead of its replica.
    let s = Setup::new();
    let mut standby = s.standby();
    let mut b = s.player("b", &[], &[]);
    let mut a = s.player("a", &[], &[]);
    wait_turns(&s, COUNT / 8);
    standby.kill().unwrap();
    let b_turns = || {
        ken::store::Reader::open(&s.path("b.ken"))
            .ok()
            .and_then(|r| r.meta().ok())
            .map_or(0, |m| m.turns_committed)
    };
    std::thread::sleep(Duration::from_millis(300));
    let stalled = b_turns();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        b_turns() <= stalled + 2,
        "b kept playing ({stalled} -> {}) while a's standby was down",
        b_turns()
    );
    a.kill().unwrap();
    b.kill().unwrap();

    // Negative control: the primary releases before its standby holds the batch.
    let s = Setup::new();
    let unsafe_env = [("KEN_UNSAFE_RELEASE_BEFORE_STANDBY", "1")];
    let mut standby = s.standby();
    let mut b = s.player("b", &[], &[]);
    let mut a = s.player("a", &[], &unsafe_env);
    wait_turns(&s, COUNT / 8);
    standby.kill().unwrap();
    let behind = s.a_turns();
    wait_turns(&s, behind + 200);
    s.destroy_a(&mut a);
    let out = s.promote();
    assert!(out.status.success(), "promote: {out:?}");
    let mut a = s.promoted_a(&[]);
    let ra = finished(&mut a, Duration::from_secs(20));
    let stderr = a.current_life().unwrap().stderr_tail(40);
    assert!(
        ra.is_none(),
        "the volley completed although the promoted replica was {} turns behind",
        200
    );
    assert!(
        stderr.contains("rolled back"),
        "the promoted a should stop as rolled back: {stderr}"
    );
    for p in [&mut a, &mut b] {
        if p.is_running() {
            p.kill().unwrap();
        }
    }
}

/// The old primary is not dead, only cut off from its standby (the standby stopped): it
/// keeps running and releases nothing. The standby is promoted; a new standby at the old
/// one's address, started at the new epoch, refuses the old primary, which logs FENCED.
/// Then `a` starts on the promoted replica elsewhere and the volley completes through it,
/// every ball exactly once. The old primary never finishes: it runs on fenced, or stops as
/// rolled back when `b`, which has seen the promoted `a` acknowledge more, tells it so.
#[test]
fn a_fenced_old_primary_that_keeps_running_changes_nothing() {
    let s = Setup::new();
    let mut standby = s.standby();
    let mut b = s.player("b", &[], &[]);
    let mut old_a = s.player("a", &[], &[]);
    wait_turns(&s, COUNT / 4);
    standby.kill().unwrap();
    let out = s.promote();
    assert!(out.status.success(), "promote: {out:?}");
    // A new standby of `a` where the old one was, at the new epoch (empty: it would take a
    // snapshot from any primary at epoch 1 or later).
    let ship = s.ship.to_string();
    let key = s.path("cluster.key");
    let fresh = s.path("a.standby2.ken");
    let mut new_standby = s.spawn(
        "standby2",
        &[
            "standby",
            "serve",
            "--id",
            "a",
            "--store",
            fresh.to_str().unwrap(),
            "--listen",
            &ship,
            "--key-file",
            key.to_str().unwrap(),
            "--min-epoch",
            "1",
        ],
        &[],
    );
    harness::wait_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            old_a
                .current_life()
                .unwrap()
                .stderr_tail(400)
                .contains("FENCED")
                .then_some(())
        },
    )
    .unwrap_or_else(|_| {
        panic!(
            "the old primary never logged FENCED: {}\nnew standby: {}",
            old_a.report(1, 30),
            new_standby.report(1, 30)
        )
    });
    assert!(old_a.is_running(), "fenced, the old primary runs on");
    let mut a = s.promoted_a(&[]);
    let ra = finished(&mut a, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("promoted a did not finish: {}", a.report(1, 40)));
    let rb = finished(&mut b, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("b did not finish: {}", b.report(1, 40)));
    for (r, serve) in [(&ra, false), (&rb, true)] {
        assert_eq!((r.gaps, r.repeats), (0, 0), "{r:?}");
        assert_eq!(r.received, expected_received(COUNT, serve), "{r:?}");
    }
    let old_out = old_a.current_life().unwrap().stdout_lines();
    assert!(
        old_out.is_empty(),
        "the fenced primary finished: {old_out:?}"
    );
    if old_a.is_running() {
        old_a.kill().unwrap();
    } else {
        let err = old_a.current_life().unwrap().stderr_tail(40);
        assert!(
            err.contains("rolled back"),
            "the old primary ended otherwise: {err}"
        );
    }
    assert!(
        ken::store::Reader::open(&fresh).is_err(),
        "the new standby took nothing from the fenced primary"
    );
    new_standby.kill().unwrap();
}
