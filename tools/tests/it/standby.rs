//! A destroyed disk loses nothing (issue 18): pingpong `a` runs with a standby replica
//! (`ken standby serve`), `b` without. Mid-volley `a` is SIGKILLed and its store destroyed
//! (every file of it deleted), the standby is stopped and promoted (`ken standby promote`),
//! and `a` starts again on the replica at the standby's address (no flag: the promotion
//! recorded the replica detached, so it runs without the standby its cluster file
//! declares). `b` is never restarted: it finds `a` at its standby address once `a` stays
//! quiet (the cluster file's `standby.address`). Both finish with every ball received exactly once
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
        self.counted_player(name, id, COUNT, extra, envs)
    }

    /// A player volleying to `count` (a count no test reaches: it runs until killed).
    fn counted_player(
        &self,
        name: &str,
        id: &str,
        count: u64,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Process {
        let count = count.to_string();
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

    /// `ken ARGS..` run to its end (`{cluster}` and `{a}`, a's store, replaced).
    fn ken(&self, args: &[&str]) -> std::process::Output {
        let a = self.path("a.ken");
        std::process::Command::new(KEN)
            .args(args.iter().map(|x| {
                x.replace("{cluster}", self.cluster.to_str().unwrap())
                    .replace("{a}", a.to_str().unwrap())
            }))
            .output()
            .unwrap()
    }

    fn promote(&self) -> std::process::Output {
        std::process::Command::new(KEN)
            .args(["standby", "promote", "--cluster"])
            .arg(&self.cluster)
            .args(["--id", "a"])
            .output()
            .unwrap()
    }

    /// `a` again, on the promoted replica at the standby's address (detached by the
    /// promotion: it runs alone with no flag).
    fn promoted_a(&self, envs: &[(&str, &str)]) -> Process {
        let store = self.path("a.standby.ken");
        let listen = self.a2.to_string();
        self.named_player(
            "a-promoted",
            "a",
            &["--store", store.to_str().unwrap(), "--listen", &listen],
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

// ---------------------------------------------------------------------------------------
// Detach and attach: a primary alone, on the record (issue 18).

/// How long a stalled primary is watched for a turn: far longer than the few milliseconds
/// a running volley takes per turn.
const STALL: Duration = Duration::from_secs(3);

/// `a`'s store gains no more than 2 turns within [`STALL`] (the wait ends, and the assertion
/// fails, the moment it does), and `a` is still running: it waits for its standby.
fn assert_stalls(s: &Setup, a: &mut Process, what: &str) {
    let from = s.a_turns();
    let moved = harness::wait_until(Instant::now() + STALL, Duration::from_millis(20), || {
        (s.a_turns() > from + 2).then_some(())
    });
    assert!(
        moved.is_err(),
        "{what}: a ran on without its standby ({from} -> {} turns): {}",
        s.a_turns(),
        a.report(1, 20)
    );
    assert!(
        a.poll().unwrap().is_none(),
        "{what}: a stopped: {}",
        a.report(1, 20)
    );
}

/// The command succeeded; its stdout.
fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed with exit 1 and one line on stderr containing every one of `words`.
fn one_line_error(out: &std::process::Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for w in words {
        assert!(err.contains(w), "no `{w}` in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// `a` declares a standby that never runs (unreachable). Not detached, `a` waits for it
/// and runs no turn (the negative control); `ken standby detach` is refused while `a` runs
/// (one line, nothing written); SIGKILLed, detached and started again, `a` runs alone and
/// says DETACHED; attached (`ken standby attach`), it waits for its standby again; detached
/// once more, it finishes the volley with `b` (never restarted), every ball exactly once.
#[test]
fn a_primary_runs_without_its_declared_standby_only_while_detached_on_the_record() {
    let s = Setup::new();
    let detach = [
        "standby",
        "detach",
        "--store",
        "{a}",
        "--reason",
        "standby host down",
    ];
    let mut b = s.player("b", &[], &[]);
    let mut a = s.player("a", &[], &[]);
    assert_stalls(&s, &mut a, "not detached");

    one_line_error(&s.ken(&detach), &["a.ken", "in use"]);
    assert_eq!(
        ken::standby::read_role(&s.path("a.ken")).unwrap().detached,
        None,
        "a refused detach writes nothing"
    );
    a.kill().unwrap();

    let said = ok(&s.ken(&detach));
    assert!(
        said.contains("detached") && said.contains("standby host down"),
        "{said}"
    );
    let mut a = s.named_player("a-detached", "a", &[], &[]);
    wait_turns(&s, 200);
    let err = a.current_life().unwrap().stderr_tail(400);
    assert!(
        err.contains("DETACHED") && err.contains("standby host down"),
        "a detached primary says so at start: {err}"
    );
    a.kill().unwrap();

    let said = ok(&s.ken(&["standby", "attach", "--store", "{a}"]));
    assert!(said.contains("attached"), "{said}");
    let mut a = s.named_player("a-attached", "a", &[], &[]);
    assert_stalls(&s, &mut a, "attached again");
    a.kill().unwrap();

    ok(&s.ken(&detach));
    let mut a = s.named_player("a-final", "a", &[], &[]);
    let ra = finished(&mut a, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("detached a did not finish: {}", a.report(1, 40)));
    let rb = finished(&mut b, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("b did not finish: {}", b.report(1, 40)));
    for (r, serve) in [(&ra, false), (&rb, true)] {
        assert_eq!((r.gaps, r.repeats), (0, 0), "{r:?}");
        assert_eq!(r.received, expected_received(COUNT, serve), "{r:?}");
    }
    assert_eq!(b.lives().len(), 1, "b was never restarted");
}

/// A detach of a primary whose standby was promoted would make two live copies with nothing
/// to fence them. Given the cluster file, `ken standby detach` first asks the addresses it
/// declares for the process: while the promoted copy answers at its promoted address, the
/// detach is refused, naming it, and nothing is written. Negative control: the same detach
/// without `--cluster` is written while the copy runs (unchecked, and it says so).
#[test]
fn detach_is_refused_while_a_promoted_copy_of_the_process_answers() {
    let s = Setup::new();
    let mut standby = s.standby();
    let mut b = s.player("b", &[], &[]);
    let mut a = s.player("a", &[], &[]);
    wait_turns(&s, 100);
    // The old primary's host is cut off (its disk intact); the operator promotes the standby.
    a.kill().unwrap();
    standby.kill().unwrap();
    let out = s.promote();
    assert!(out.status.success(), "promote: {out:?}");
    let replica = s.path("a.standby.ken");
    let promoted_turns = || {
        ken::store::Reader::open(&replica)
            .ok()
            .and_then(|r| r.meta().ok())
            .map_or(0, |m| m.turns_committed)
    };
    let from = promoted_turns();
    let mut promoted = s.promoted_a(&[]);
    harness::wait_until(
        Instant::now() + Duration::from_secs(60),
        Duration::from_millis(20),
        || (promoted_turns() > from).then_some(()),
    )
    .unwrap_or_else(|_| panic!("the promoted a ran no turn: {}", promoted.report(1, 30)));

    let checked = [
        "standby",
        "detach",
        "--store",
        "{a}",
        "--reason",
        "old host is back",
        "--cluster",
        "{cluster}",
        "--id",
        "a",
    ];
    let a2 = s.a2.to_string();
    one_line_error(
        &s.ken(&checked),
        &[
            "`a` runs at",
            &a2,
            "epoch 1",
            "second live copy",
            "Nothing written",
        ],
    );
    assert_eq!(
        ken::standby::read_role(&s.path("a.ken")).unwrap().detached,
        None,
        "a refused detach writes nothing"
    );

    // Negative control: unchecked, the same detach is written while the copy runs.
    let said = ok(&s.ken(&checked[..6]));
    assert!(
        said.contains("not checked") && said.contains("detached"),
        "{said}"
    );
    assert!(ken::standby::read_role(&s.path("a.ken"))
        .unwrap()
        .detached
        .is_some());
    promoted.kill().unwrap();
    b.kill().unwrap();
}

/// `ken status` text and JSON.
fn status(s: &Setup) -> (i32, String, serde_json::Value) {
    let args = ["status", "--cluster", "{cluster}", "--timeout-ms", "1000"];
    let text = s.ken(&args);
    let json = s.ken(&[&args[..], &["--json"]].concat());
    assert_eq!(text.status.code(), json.status.code(), "{text:?} {json:?}");
    let doc = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("ken status --json ({e}): {json:?}"));
    (
        text.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&text.stdout).into_owned(),
        doc,
    )
}

/// A volley count no test reaches: the players run until killed.
const FOREVER: u64 = 1 << 40;

/// `ken status` shows a primary's role and epoch and a standby's own status (asked at its
/// ship port: role standby, its epoch, the commit it holds, the primary it follows,
/// connected); once a's store is detached, DETACHED with the reason and the standby it runs
/// without, the standby not connected; attached again, no DETACHED, and the standby is
/// reseeded: it holds every commit a's store had at the attach. Negative control: the
/// standby stopped, its row says no answer and `ken status` exits 2.
#[test]
fn ken_status_shows_the_role_epoch_detached_and_the_standbys_own_status() {
    let s = Setup::new();
    let ship = s.ship.to_string();
    let mut standby = s.standby();
    let mut b = s.counted_player("b", "b", FOREVER, &[], &[]);
    let mut a = s.counted_player("a", "a", FOREVER, &[], &[]);
    wait_turns(&s, 100);
    let a_of = |doc: &serde_json::Value| doc["processes"][0]["status"]["role"].clone();
    let standby_of = |doc: &serde_json::Value| doc["standbys"][0].clone();

    let (code, text, doc) = status(&s);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("a: role primary, epoch 0"), "{text}");
    assert!(!text.contains("b: role"), "b has nothing to say: {text}");
    assert!(!text.contains("DETACHED"), "{text}");
    assert!(
        text.contains(&format!(
            "a (standby at {ship}): role standby, epoch 0, holds commit "
        )) && text.contains("follows the primary at")
            && text.contains(", connected"),
        "{text}"
    );
    let (role, sb) = (a_of(&doc), standby_of(&doc));
    assert_eq!(
        (&role["role"], &role["epoch"], &role["detached"]),
        (&"primary".into(), &0.into(), &serde_json::Value::Null),
        "{doc:#}"
    );
    assert_eq!(
        (&sb["id"], &sb["status"]["role"], &sb["status"]["connected"]),
        (&"a".into(), &"standby".into(), &true.into()),
        "{doc:#}"
    );
    assert!(sb["status"]["commits"].as_u64().unwrap() > 0, "{doc:#}");

    a.kill().unwrap();
    ok(&s.ken(&[
        "standby",
        "detach",
        "--store",
        "{a}",
        "--reason",
        "standby disk swap",
    ]));
    let mut a = s.counted_player("a-detached", "a", FOREVER, &[], &[]);
    let turns = s.a_turns();
    wait_turns(&s, turns + 100);
    // The killed primary's connection ends at the standby shortly after the kill.
    let (code, text, doc) = harness::wait_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (code, text, doc) = status(&s);
            (standby_of(&doc)["status"]["connected"] == false).then_some((code, text, doc))
        },
    )
    .unwrap_or_else(|_| panic!("the standby still says connected: {}", status(&s).1));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("a: DETACHED (detached ")
            && text.contains("standby disk swap")
            && text.contains(&format!("runs WITHOUT the standby at {ship}")),
        "{text}"
    );
    assert!(
        text.contains("NOT CONNECTED to a primary (last: "),
        "{text}"
    );
    let role = a_of(&doc);
    assert_eq!(
        (&role["detached"]["reason"], &role["alone"]),
        (&"standby disk swap".into(), &"detached".into()),
        "{doc:#}"
    );

    a.kill().unwrap();
    ok(&s.ken(&["standby", "attach", "--store", "{a}"]));
    let at_attach = ken::store::Reader::open(&s.path("a.ken"))
        .unwrap()
        .meta()
        .unwrap()
        .commits;
    let mut a = s.counted_player("a-attached", "a", FOREVER, &[], &[]);
    let (code, text, _) = harness::wait_until(
        Instant::now() + Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let (code, text, doc) = status(&s);
            let sb = &standby_of(&doc)["status"];
            (sb["connected"] == true && sb["commits"].as_u64()? >= at_attach)
                .then_some((code, text, doc))
        },
    )
    .unwrap_or_else(|_| {
        panic!(
            "the standby never caught up with a's {at_attach} commits: {}\n{}",
            status(&s).1,
            standby.report(1, 20)
        )
    });
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("DETACHED") && text.contains("a: role primary, epoch 0"),
        "{text}"
    );

    standby.kill().unwrap();
    let (code, text, doc) = status(&s);
    assert_eq!(code, 2, "a standby down is a row down: {text}");
    assert!(
        text.contains(&format!("a (standby at {ship}): no answer")),
        "{text}"
    );
    assert_eq!(standby_of(&doc)["up"], false, "{doc:#}");
    a.kill().unwrap();
    b.kill().unwrap();
}

/// `ken standby detach` and `attach` given a missing path or a file that is not a Ken
/// store: one line naming the path and what is wrong, exit 1, nothing created or changed.
#[test]
fn standby_detach_and_attach_of_a_bad_store_say_so_in_one_line() {
    let s = Setup::new();
    let missing = s.path("nothing-here.ken");
    let foreign = s.path("notes.txt");
    std::fs::write(&foreign, "not a store").unwrap();
    for verb in ["detach", "attach"] {
        let out = s.ken(&["standby", verb, "--store", missing.to_str().unwrap()]);
        one_line_error(&out, &["nothing-here.ken", "no store"]);
        let out = s.ken(&["standby", verb, "--store", foreign.to_str().unwrap()]);
        one_line_error(&out, &["notes.txt", "not a Ken store"]);
    }
    assert!(!missing.exists(), "nothing created");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "not a store");
}

/// `ken inspect` shows the store's role, epoch and detach record, in text and JSON: a
/// primary's store (role primary, epoch 0, no DETACHED), detached (the DETACHED line with
/// the operator and the reason), attached (gone again), promoted (role promoted, epoch 1,
/// detached by the promotion).
#[test]
fn ken_inspect_shows_the_standby_role_epoch_and_detached_lines() {
    let s = Setup::new();
    let store = s.path("a.ken");
    drop(ken::store::Store::open(&store, "a").unwrap());
    let inspect = || {
        let text = ok(&s.ken(&["inspect", "{a}"]));
        let json: serde_json::Value =
            serde_json::from_str(&ok(&s.ken(&["inspect", "{a}", "--json"]))).unwrap();
        (text, json)
    };
    let (text, json) = inspect();
    assert!(text.contains("role          primary (epoch 0"), "{text}");
    assert!(!text.contains("DETACHED"), "{text}");
    assert_eq!(
        (&json["role"], &json["epoch"], &json["detached"]),
        (&"primary".into(), &0.into(), &serde_json::Value::Null),
        "{json:#}"
    );

    ok(&s.ken(&[
        "standby",
        "detach",
        "--store",
        "{a}",
        "--reason",
        "disk swap",
    ]));
    let (text, json) = inspect();
    let line = text
        .lines()
        .find(|l| l.starts_with("DETACHED"))
        .unwrap_or_else(|| panic!("no DETACHED line: {text}"));
    assert!(
        line.contains("by ken standby detach by ") && line.contains("(disk swap)"),
        "{line}"
    );
    assert_eq!(json["detached"]["reason"], "disk swap", "{json:#}");
    assert!(
        json["detached"]["by"]
            .as_str()
            .unwrap()
            .starts_with("ken standby detach by "),
        "{json:#}"
    );

    ok(&s.ken(&["standby", "attach", "--store", "{a}"]));
    let (text, json) = inspect();
    assert!(!text.contains("DETACHED"), "{text}");
    assert_eq!(json["detached"], serde_json::Value::Null, "{json:#}");

    ok(&s.ken(&["standby", "promote", "--store", "{a}"]));
    let (text, json) = inspect();
    assert!(
        text.contains("role          promoted") && text.contains("epoch         1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("DETACHED") && l.contains("promote")),
        "{text}"
    );
    assert_eq!(
        (&json["role"], &json["epoch"]),
        (&"promoted".into(), &1.into()),
        "{json:#}"
    );
}
