//! Bank schema version 2 on real processes: a downgrade (the version-1 binary on a version-2
//! store) is refused with one line naming both versions and nothing written; the dry run
//! of the version-2 migration on a version-1 store says what moves.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts `ken app bank ARGS` on `store` (member `m0`, no peers), waits (deadline 20 s) for
/// its `listening` event, then SIGKILLs it: the store exists, at the version that ran.
fn run_until_listening(store: &Path, args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args([
            "app",
            "bank",
            "--id",
            "m0",
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(store)
        .args(args)
        .env("KEN_ANNOUNCE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ken app bank");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"event\":\"listening\"") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(20));
    // And its start turn committed (listening comes first).
    let deadline = Instant::now() + Duration::from_secs(20);
    while listening.is_ok() && committed_turns(store) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    listening.expect("the bank member did not listen within 20 s");
    assert!(committed_turns(store) > 0, "no turn committed within 20 s");
}

fn committed_turns(store: &Path) -> u64 {
    ken_store::Reader::open(store)
        .ok()
        .and_then(|r| r.meta().ok())
        .map_or(0, |m| m.turns_committed)
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[test]
fn a_version_1_bank_refuses_a_version_2_store_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("m0.ken");
    run_until_listening(&store, &["--schema", "2"]);
    let wal = dir.path().join("m0.ken-wal");
    let before = (bytes(&store), bytes(&wal));
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args([
            "app",
            "bank",
            "--id",
            "m0",
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(&store)
        .output()
        .expect("run ken app bank");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the downgrade ran: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("schema version"))
        .unwrap_or_else(|| panic!("no line names the versions: {stderr}"));
    assert!(
        line.contains("schema version 2") && line.contains("version 1"),
        "{line}"
    );
    assert_eq!(
        (bytes(&store), bytes(&wal)),
        before,
        "the refused downgrade changed the store"
    );
    // The version-2 binary still runs on it.
    run_until_listening(&store, &["--schema", "2"]);
}

#[test]
fn the_dry_run_of_the_version_2_migration_moves_balances() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("m0.ken");
    run_until_listening(&store, &["--accounts", "3"]);
    let before = bytes(&store);
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["app", "bank", "migrate"])
        .arg(&store)
        .args(["--dry-run", "--schema", "2"])
        .output()
        .expect("run ken app bank migrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("schema version 1 -> 2"), "{stdout}");
    assert!(
        stdout.contains("table accounts: 0 added, 0 changed, 3 deleted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("table balances: 3 added, 0 changed, 0 deleted"),
        "{stdout}"
    );
    assert_eq!(bytes(&store), before, "the dry run wrote");
    // Run as version 2: migrated at start; the dry run then has nothing to do.
    run_until_listening(&store, &["--schema", "2", "--accounts", "3"]);
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["app", "bank", "migrate"])
        .arg(&store)
        .args(["--dry-run", "--schema", "2"])
        .output()
        .expect("run ken app bank migrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nothing to migrate"), "{stdout}");
}

/// `ken dead-letters` is refused on a live store (its owner lock is held) with one line
/// saying so, and on a stopped store names a dead letter that does not exist.
#[test]
fn dead_letters_is_refused_on_a_live_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("m0.ken");
    run_until_listening(&store, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args([
            "app",
            "bank",
            "--id",
            "m0",
            "--listen",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(&store)
        .env("KEN_ANNOUNCE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ken app bank");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"event\":\"listening\"") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(20));
    let live = Command::new(env!("CARGO_BIN_EXE_ken"))
        .arg("dead-letters")
        .arg(&store)
        .args(["replay", "m1", "1"])
        .output()
        .expect("run ken dead-letters");
    child.kill().expect("kill");
    child.wait().expect("wait");
    listening.expect("the bank member did not listen within 20 s");
    let text = String::from_utf8_lossy(&live.stderr);
    assert!(!live.status.success(), "accepted on a live store: {text}");
    assert!(
        text.contains("in use") && text.lines().count() == 1,
        "{text}"
    );
    let stopped = Command::new(env!("CARGO_BIN_EXE_ken"))
        .arg("dead-letters")
        .arg(&store)
        .args(["discard", "m1", "1"])
        .output()
        .expect("run ken dead-letters");
    let text = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success(), "{text}");
    assert!(
        text.contains("no dead letter from `m1` with sequence number 1"),
        "{text}"
    );
}

/// `ken inspect STORE peers --json` on a live store, parsed.
fn peers_view(store: &Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .arg("inspect")
        .arg(store)
        .args(["peers", "--json"])
        .output()
        .expect("run ken inspect");
    if !out.status.success() {
        return None; // not created yet
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The `held` entry of peer `peer` in a peers view (`null` when not held).
fn held_of(view: &serde_json::Value, peer: &str) -> serde_json::Value {
    view["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["peer"] == peer))
        .map_or(serde_json::Value::Null, |p| p["held"].clone())
}

/// A rolling upgrade half done: member m1 runs schema 2, m0 still 1. m0 holds m1's credits
/// (a newer version) and `ken inspect` shows it on m0's live store (held since, versions);
/// SIGKILLed and restarted as schema 2, m0 delivers them and the hold is gone from the
/// record.
#[test]
fn inspect_shows_a_pair_held_for_a_newer_version_until_the_receiver_upgrades() {
    use ken_tools::harness::{self, Process, Spec};
    let dir = tempfile::tempdir().expect("temp dir");
    let addrs = harness::free_addrs(2).expect("bind UDP ports on 127.0.0.1");
    let store = |i: usize| dir.path().join(format!("m{i}.ken"));
    let args = |i: usize, schema: &str| -> Vec<String> {
        let other = 1 - i;
        vec![
            "app".into(),
            "bank".into(),
            "--id".into(),
            format!("m{i}"),
            "--listen".into(),
            addrs[i].to_string(),
            "--store".into(),
            store(i).display().to_string(),
            "--peer".into(),
            format!("m{other}={}", addrs[other]),
            "--interval-ms".into(),
            "20".into(),
            "--schema".into(),
            schema.into(),
        ]
    };
    let ken = env!("CARGO_BIN_EXE_ken");
    let mut m0 = Process::start(Spec::new("m0", ken, args(0, "1"), dir.path())).expect("m0");
    let mut m1 = Process::start(Spec::new("m1", ken, args(1, "2"), dir.path())).expect("m1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = harness::wait_until(deadline, Duration::from_millis(100), || {
        let h = held_of(&peers_view(&store(0))?, "m1");
        (!h.is_null()).then_some(h)
    });
    let held = held.unwrap_or_else(|_| {
        panic!(
            "m0 (schema 1) never showed a held pair from m1 (schema 2) within 60 s\n{}\n{}",
            m0.report(2, 20),
            m1.report(2, 20)
        )
    });
    assert_eq!(held["reason"], "newer_version", "{held}");
    assert_eq!(held["version"], 2, "{held}");
    assert_eq!(held["known"], 1, "{held}");
    assert_eq!(
        held["seq"], 1,
        "m1's first credit waits, and all after it: {held}"
    );
    assert!(held["since_ms"].as_u64().is_some_and(|t| t > 0), "{held}");
    // The text view names it too.
    let text = Command::new(ken)
        .arg("inspect")
        .arg(store(0))
        .arg("peers")
        .output()
        .expect("run ken inspect");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("seq 1: v2 > v1"), "{text}");
    // Upgrade m0: SIGKILL, then the schema-2 binary on the same store.
    m0.kill().expect("SIGKILL m0");
    m0.set_args(args(0, "2").into_iter().map(Into::into).collect());
    m0.restart().expect("restart m0 as schema 2");
    let done = harness::wait_until(
        deadline + Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let v = peers_view(&store(0))?;
            let m1_row = v["peers"]
                .as_array()?
                .iter()
                .find(|p| p["peer"] == "m1")?
                .clone();
            (held_of(&v, "m1").is_null() && m1_row["delivered"].as_u64()? > 1).then_some(())
        },
    );
    let report = format!("{}\n{}", m0.report(2, 20), m1.report(2, 20));
    m0.kill().expect("SIGKILL m0");
    m1.kill().expect("SIGKILL m1");
    done.unwrap_or_else(|_| panic!("m0 upgraded never delivered m1's credits:\n{report}"));
}
