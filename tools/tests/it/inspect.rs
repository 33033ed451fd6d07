//! `ken inspect` and the apps' `inspect` subcommands against stores written by real app
//! processes (pingpong, bank, kv and its command-line clients, all `ken app ..`): every
//! view's JSON is checked against what the run did (counts, sequence numbers, counters,
//! decoded state), live while a bank runs and after it is SIGKILLed; corrupt records are
//! named by `verify` and spoil only what needs them; broken inputs get a one-line message
//! and a non-zero exit, never a panic.
//!
//! The apps and their `inspect` subcommands run from the `ken` binary under test (`ken app
//! bank inspect STORE` is the code of `ken-bank inspect STORE`), copied into each test's
//! directory so a concurrent rebuild cannot swap it mid-test; the app processes run through
//! the process harness (`ken_tools::harness`). Ports are picked by binding port 0; a run
//! whose app could not bind is retried with new ports. Every wait has a deadline;
//! randomness is seeded and the seed printed (`KEN_TEST_SEED=N` replays it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ken_tools::harness::{self, End, Process, Spec};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Exit statuses of `ken inspect` (see `ken_inspect`).
const EXIT_DAMAGED: i32 = 1;
const EXIT_ERROR: i32 = 2;

/// How long an app run may take before the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// Attempts at a run whose app could not bind its port.
const BIND_ATTEMPTS_MAX: u32 = 5;

// ---------------------------------------------------------------------------------------
// Binaries and processes

/// What takes `inspect STORE ..`: the `ken` binary (`ken inspect`), or an app's command
/// line run by it (`ken app bank inspect`).
trait Inspector {
    fn command(&self) -> Command;
}

impl Inspector for Path {
    fn command(&self) -> Command {
        Command::new(self)
    }
}

impl Inspector for PathBuf {
    fn command(&self) -> Command {
        Command::new(self)
    }
}

/// An app's command line: `ken app NAME ..`.
struct App {
    ken: PathBuf,
    name: &'static str,
}

impl Inspector for App {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.ken);
        c.args(["app", self.name]);
        c
    }
}

impl App {
    /// `ken app NAME ARGS..` as a harness process named `id`, its files in `dir`.
    fn start(&self, id: &str, args: &[String], dir: &Path) -> Process {
        let mut all = vec!["app".to_string(), self.name.to_string()];
        all.extend_from_slice(args);
        Process::start(Spec::new(id, &self.ken, all, dir)).expect("start an app process")
    }
}

/// The binaries of one test: a private copy of `ken` in its directory, and the apps it runs.
struct Bins {
    ken: PathBuf,
    pingpong: App,
    bank: App,
    kv: App,
}

impl Bins {
    fn copy_into(dir: &Path) -> Bins {
        let ken = dir.join("ken");
        std::fs::copy(env!("CARGO_BIN_EXE_ken"), &ken)
            .unwrap_or_else(|e| panic!("copy ken to {}: {e}", ken.display()));
        let app = |name| App {
            ken: ken.clone(),
            name,
        };
        Bins {
            pingpong: app("pingpong"),
            bank: app("bank"),
            kv: app("kv"),
            ken,
        }
    }
}

/// Spawns `cmd`, retrying "text file busy": the binary was copied a moment ago and a child
/// forked meanwhile by another test thread holds the copy's write descriptor until its exec.
fn spawn(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("spawn {cmd:?}: {e}"),
            Ok(child) => return child,
        }
    }
}

/// The last lines of the stderr of `p`'s current life.
fn stderr(p: &Process) -> String {
    p.current_life()
        .map(|l| l.stderr_tail(20))
        .unwrap_or_default()
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` at `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The seed of this test's randomness: `KEN_TEST_SEED`, or from the clock. Printed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("KEN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (replay with KEN_TEST_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------------------
// Running `inspect`

/// One run of an `inspect` command.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `<bin> inspect STORE <args>`.
fn inspect(bin: &(impl Inspector + ?Sized), store: &Path, args: &[&str]) -> Run {
    let child = spawn(
        bin.command()
            .arg("inspect")
            .arg(store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for inspect");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "inspect {} {args:?} panicked: {}",
        store.display(),
        run.describe()
    );
    run
}

/// `<bin> inspect STORE <args> --json`, which must exit 0.
fn view(bin: &(impl Inspector + ?Sized), store: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let run = inspect(bin, store, &all);
    assert_eq!(
        run.code,
        0,
        "inspect {} {all:?}: {}",
        store.display(),
        run.describe()
    );
    run.json()
}

/// A clean `verify` view: no problem, and the files below the records reported (the WAL's
/// state, the store's commit count).
fn assert_verify_clean(v: &Value, what: &str) {
    assert_eq!(v["clean"], true, "{what}: {v:#}");
    assert_eq!(v["problems"], json!([]), "{what}: {v:#}");
    assert!(v["wal"]["exists"].is_boolean(), "{what}: {v:#}");
    assert_eq!(v["wal"]["damage"], Value::Null, "{what}: {v:#}");
    assert!(u(&v["commits"]) > 0, "{what}: {v:#}");
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

fn peer<'a>(summary: &'a Value, id: &str) -> &'a Value {
    arr(&summary["peers"])
        .iter()
        .find(|p| p["peer"] == id)
        .unwrap_or_else(|| panic!("no peer {id} in {summary}"))
}

// ---------------------------------------------------------------------------------------
// Runs

/// Volleys pingpong to `count` (a hits, b serves) and waits for both to finish. Returns
/// the stores of a and b.
fn run_pingpong(dir: &Path, bins: &Bins, count: u64) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("a.ken"), dir.join("b.ken"));
    for attempt in 1..=BIND_ATTEMPTS_MAX {
        let ports = harness::free_ports(2).expect("bind 127.0.0.1:0");
        let args = |id: &str, port: u16, store: &Path, other: &str, other_port: u16| {
            vec![
                "--id".to_string(),
                id.to_string(),
                "--listen".to_string(),
                addr(port),
                "--store".to_string(),
                store.display().to_string(),
                "--peer".to_string(),
                format!("{other}={}", addr(other_port)),
                "--count".to_string(),
                count.to_string(),
            ]
        };
        let mut b_args = args("b", ports[1], &b, "a", ports[0]);
        b_args.push("--serve".to_string());
        let mut kids = [
            bins.pingpong
                .start("a", &args("a", ports[0], &a, "b", ports[1]), dir),
            bins.pingpong.start("b", &b_args, dir),
        ];
        let ends = wait_for(RUN_DEADLINE, "the pingpong volley to finish", || {
            for k in &mut kids {
                k.poll().expect("poll");
            }
            let done: Vec<Option<End>> = kids
                .iter()
                .map(|k| k.current_life().and_then(|l| l.end.clone()))
                .collect();
            // A process that could not bind stops the attempt at once.
            if done.iter().flatten().any(|e| !e.is_success()) || done.iter().all(Option::is_some) {
                Some(done)
            } else {
                None
            }
        });
        if ends.contains(&Some(End::BindError)) && attempt < BIND_ATTEMPTS_MAX {
            eprintln!("pingpong attempt {attempt}: a port was taken; retrying with new ports");
            continue;
        }
        for (kid, end) in kids.iter().zip(&ends) {
            let end = end.as_ref().expect("both ended");
            let out = kid
                .current_life()
                .expect("started")
                .stdout_lines()
                .join("\n");
            assert!(
                end.is_success(),
                "{} ended {end:?}: {}",
                kid.name(),
                stderr(kid)
            );
            let report: Value = serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("{} report `{out}`: {e}", kid.name()));
            assert_eq!(report["gaps"], 0, "{report}");
            assert_eq!(report["repeats"], 0, "{report}");
        }
        return (a, b);
    }
    unreachable!("the last attempt returns or panics")
}

/// What one pingpong player did in a volley to `count`.
struct Player {
    id: &'static str,
    other: &'static str,
    /// Balls received (= turns after the start turn).
    received: u64,
    sent: u64,
    /// The values received, ascending.
    values: Vec<u64>,
}

fn players(count: u64) -> [Player; 2] {
    // a hits the odd values and receives the even ones; b the other way round.
    let evens: Vec<u64> = (1..=count).filter(|v| v % 2 == 0).collect();
    let odds: Vec<u64> = (1..=count).filter(|v| v % 2 == 1).collect();
    [
        Player {
            id: "a",
            other: "b",
            received: evens.len() as u64,
            sent: odds.len() as u64,
            values: evens,
        },
        Player {
            id: "b",
            other: "a",
            received: odds.len() as u64,
            sent: count / 2,
            values: odds,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn every_view_of_finished_pingpong_stores_matches_the_volley() {
    let dir = tempfile::tempdir().unwrap();
    let bins = Bins::copy_into(dir.path());
    let count = 31;
    let (a, b) = run_pingpong(dir.path(), &bins, count);
    let summaries: BTreeMap<&str, Value> = [
        ("a", view(&bins.ken, &a, &[])),
        ("b", view(&bins.ken, &b, &[])),
    ]
    .into_iter()
    .collect();

    for (p, store) in players(count).iter().zip([&a, &b]) {
        let s = &summaries[p.id];
        let ctx = format!("{}: {s:#}", p.id);
        // Summary: identity, counters, tables, peers, nothing pending.
        assert_eq!(s["process_id"], p.id, "{ctx}");
        assert_eq!(s["format_version"], ken_store::FORMAT_VERSION, "{ctx}");
        assert_eq!(s["store"], store.display().to_string(), "{ctx}");
        assert_eq!(u(&s["turns_committed"]), 1 + p.received, "{ctx}");
        assert!(u(&s["commits"]) >= 1, "{ctx}");
        assert!(u(&s["last_commit_ms"]) >= u(&s["created_ms"]), "{ctx}");
        assert!(u(&s["last_commit_age_ms"]) <= u(&s["now_ms"]), "{ctx}");
        assert!(u(&s["root_bytes"]) > 0, "{ctx}");
        assert_eq!(
            s["tables"],
            json!([{"name": "received", "rows": p.received, "bytes": s["tables"][0]["bytes"]}]),
            "{ctx}"
        );
        assert!(u(&s["tables"][0]["bytes"]) >= p.received * (8 + 5), "{ctx}");
        assert_eq!(u(&s["outbox_depth"]), 0, "{ctx}");
        assert_eq!(u(&s["timers"]), 0, "{ctx}");
        assert_eq!(s["next_timer_due_ms"], Value::Null, "{ctx}");
        assert_eq!(s["groups"], 0, "{ctx}");
        assert_eq!(s["clients"], 0, "{ctx}");
        assert!(u(&s["file"]["db_bytes"]) > 0, "{ctx}");
        assert_eq!(s["errors"], json!([]), "{ctx}");
        let pr = peer(s, p.other);
        assert_eq!(arr(&s["peers"]).len(), 1, "{ctx}");
        assert_eq!(u(&pr["next_seq"]), p.sent + 1, "{ctx}");
        assert_eq!(u(&pr["acked"]), p.sent, "{ctx}");
        assert_eq!(u(&pr["delivered"]), p.received, "{ctx}");
        assert_eq!(u(&pr["outbox_depth"]), 0, "{ctx}");
        assert_eq!(pr["oldest_unacked_age_ms"], Value::Null, "{ctx}");
        // The peer's incarnation as this store saw it is the peer store's own.
        assert_eq!(
            pr["incarnation"], summaries[p.other]["incarnation"],
            "{ctx}"
        );

        // peers, tables, outbox, timers, groups, clients, verify.
        let peers = view(&bins.ken, store, &["peers"]);
        assert_eq!(peers["peers"], s["peers"].clone(), "{peers}");
        assert_eq!(view(&bins.ken, store, &["tables"])["tables"], s["tables"]);
        let outbox = view(&bins.ken, store, &["outbox"]);
        assert_eq!(outbox["messages"], json!([]), "{outbox}");
        assert_eq!(outbox["truncated"], false, "{outbox}");
        assert_eq!(view(&bins.ken, store, &["timers"])["timers"], json!([]));
        assert_eq!(view(&bins.ken, store, &["groups"])["groups"], json!([]));
        assert_eq!(view(&bins.ken, store, &["clients"])["clients"], json!([]));
        assert_verify_clean(&view(&bins.ken, store, &["verify"]), "");

        // The turn log: the start, then one turn per ball in order.
        let turns = view(&bins.ken, store, &["turns", "--last", "1000"]);
        let turns = arr(&turns["turns"]);
        assert_eq!(turns.len() as u64, 1 + p.received, "{turns:#?}");
        assert_eq!(turns[0]["input_kind"], "start");
        assert_eq!(turns[0]["turn"], 1);
        for (i, t) in turns.iter().enumerate().skip(1) {
            assert_eq!(u(&t["turn"]), i as u64 + 1, "{t}");
            assert_eq!(t["input_kind"], "message", "{t}");
            assert_eq!(t["input_source"], p.other, "{t}");
            assert_eq!(u(&t["input_seq"]), i as u64, "{t}");
        }
        let sent: u64 = turns.iter().map(|t| u(&t["messages_out"])).sum();
        assert_eq!(sent, p.sent, "{turns:#?}");
        let last2 = view(&bins.ken, store, &["turns", "--last", "2"]);
        assert_eq!(arr(&last2["turns"])[..], turns[turns.len() - 2..]);

        // One table, generic: keys are the values received, previews only.
        let table = view(&bins.ken, store, &["table", "received", "--limit", "1000"]);
        assert_eq!(table["truncated"], false);
        let keys: Vec<String> = arr(&table["entries"])
            .iter()
            .map(|e| e["key_hex"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = p.values.iter().map(|v| format!("{v:016x}")).collect();
        assert_eq!(keys, want);
        for e in arr(&table["entries"]) {
            assert_eq!(e["key_decoded"], Value::Null, "{e}");
            assert_eq!(e["value"]["decoded"], Value::Null, "{e}");
            assert!(!e["value"]["hex"].as_str().unwrap().is_empty(), "{e}");
        }
        let limited = view(&bins.ken, store, &["table", "received", "--limit", "5"]);
        assert_eq!(arr(&limited["entries"])[..], arr(&table["entries"])[..5]);
        assert_eq!(limited["truncated"], true);
        let one = format!("0x{:016x}", p.values[3]);
        let prefixed = view(&bins.ken, store, &["table", "received", "--prefix", &one]);
        assert_eq!(arr(&prefixed["entries"])[..], arr(&table["entries"])[3..4]);
        assert_eq!(prefixed["prefix_hex"], one[2..]);
        let nothing = view(&bins.ken, store, &["table", "nosuch"]);
        assert_eq!(nothing["entries"], json!([]));

        // The app's own inspect decodes: root state, keys, values (the receiving turn).
        let state = view(&bins.pingpong, store, &["state", "--limit", "1000"]);
        assert_eq!(
            state["root"]["decoded"],
            json!({
                "received": p.received,
                "last_received": p.values.last().unwrap(),
                "gaps": 0,
                "repeats": 0,
                "last_sent": if p.id == "a" { count } else { count - 1 },
            }),
            "{state:#}"
        );
        assert_eq!(u(&state["root"]["bytes"]), u(&s["root_bytes"]));
        let t = &arr(&state["tables"])[0];
        assert_eq!(t["name"], "received");
        assert_eq!(u(&t["rows"]), p.received);
        assert_eq!(t["truncated"], false);
        for (k, e) in arr(&t["entries"]).iter().enumerate() {
            assert_eq!(u(&e["key_decoded"]), p.values[k], "{e}");
            // The k-th ball received is consumed by turn k + 2 (turn 1 is the start).
            assert_eq!(u(&e["value"]["decoded"]), k as u64 + 2, "{e}");
        }
        let generic = view(&bins.ken, store, &["state", "--limit", "10"]);
        assert_eq!(generic["root"]["decoded"], Value::Null);
        assert_eq!(generic["root"]["hex"], state["root"]["hex"]);
        assert_eq!(
            generic["tables"][0]["entries"][0]["key_decoded"],
            Value::Null
        );
        assert_eq!(arr(&generic["tables"][0]["entries"]).len(), 10);
        assert_eq!(generic["tables"][0]["truncated"], true);

        // The readable form says the same.
        let text = inspect(&bins.ken, store, &[]);
        assert_eq!(text.code, 0, "{}", text.describe());
        assert!(
            text.stdout.contains(&format!("process       {}", p.id)),
            "{}",
            text.stdout
        );
        assert!(
            text.stdout
                .contains(&format!("turns         {} in", 1 + p.received)),
            "{}",
            text.stdout
        );
    }
}

/// A bank of three members, inspected while it runs, then SIGKILLed and checked exactly:
/// every counter in `peers` against the decoded `sent` and `applied` tables of both ends,
/// every outbox against its counters, and money conservation over all stores.
/// Starts a bank of `ids` (one store each in `stores`) and waits until every store is past
/// its start turn. A run whose app could not bind is retried with new ports.
fn start_bank(
    bins: &Bins,
    dir: &Path,
    ids: &[&str],
    stores: &[PathBuf],
    accounts: u64,
    initial: i64,
) -> Vec<Process> {
    'attempts: for attempt in 1..=BIND_ATTEMPTS_MAX {
        let ports = harness::free_ports(ids.len()).expect("bind 127.0.0.1:0");
        let mut kids: Vec<Process> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut args: Vec<String> = [
                    "--id",
                    id,
                    "--listen",
                    &addr(ports[i]),
                    "--store",
                    &stores[i].display().to_string(),
                    "--accounts",
                    &accounts.to_string(),
                    "--initial-balance",
                    &initial.to_string(),
                    "--interval-ms",
                    "1",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                for (j, other) in ids.iter().enumerate().filter(|(j, _)| *j != i) {
                    args.push("--peer".to_string());
                    args.push(format!("{other}={}", addr(ports[j])));
                }
                bins.bank.start(id, &args, dir)
            })
            .collect();
        // Live: every store readable and past its start turn (a fresh store is briefly an
        // empty file, which inspect reports as not a Ken store).
        for (i, store) in stores.iter().enumerate() {
            let ok = wait_for(RUN_DEADLINE, "the bank stores to be created", || {
                if let Some(end) = kids[i].poll().expect("poll") {
                    return Some(Err(end));
                }
                let run = inspect(&bins.ken, store, &["--json"]);
                (run.code == 0 && u(&run.json()["turns_committed"]) > 0).then_some(Ok(()))
            });
            if let Err(end) = ok {
                if end == End::BindError && attempt < BIND_ATTEMPTS_MAX {
                    eprintln!("bank attempt {attempt}: a port was taken; retrying");
                    continue 'attempts;
                }
                panic!("{} ended {end:?}: {}", ids[i], stderr(&kids[i]));
            }
        }
        return kids;
    }
    unreachable!("the last attempt returns or panics")
}

#[test]
fn bank_stores_inspected_live_and_after_sigkill_agree_with_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let bins = Bins::copy_into(dir.path());
    let ids = ["a", "b", "c"];
    let accounts = 8u64;
    let initial = 1000i64;
    let stores: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join(format!("{id}.ken")))
        .collect();
    let mut kids = start_bank(&bins, dir.path(), &ids, &stores, accounts, initial);

    // While it runs.
    let a = &stores[0];
    let s1 = view(&bins.ken, a, &[]);
    assert_eq!(
        s1["tables"][0],
        json!({"name": "accounts", "rows": accounts, "bytes": s1["tables"][0]["bytes"]}),
        "{s1:#}"
    );
    assert_eq!(u(&s1["timers"]), 1, "{s1:#}");
    let timers = view(&bins.ken, a, &["timers"]);
    assert_eq!(arr(&timers["timers"]).len(), 1, "{timers}");
    assert_eq!(timers["timers"][0]["name"], "transfer", "{timers}");
    for store in &stores {
        assert_verify_clean(&view(&bins.ken, store, &["verify"]), "");
    }
    let watch = inspect(
        &bins.ken,
        a,
        &["watch", "--count", "3", "--interval-ms", "200", "--json"],
    );
    assert_eq!(watch.code, 0, "{}", watch.describe());
    let ticks: Vec<Value> = watch
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line `{l}`: {e}")))
        .collect();
    assert_eq!(ticks.len(), 3, "{}", watch.stdout);
    assert_eq!(ticks[0]["refresh"], 1);
    assert_eq!(ticks[0]["turns_per_sec"], Value::Null);
    for w in ticks.windows(2) {
        assert_eq!(u(&w[1]["refresh"]), u(&w[0]["refresh"]) + 1);
        assert!(u(&w[1]["elapsed_ms"]) >= 150, "{}", w[1]);
        assert!(
            u(&w[1]["summary"]["turns_committed"]) > u(&w[0]["summary"]["turns_committed"]),
            "a running bank commits turns: {}",
            watch.stdout
        );
        assert!(w[1]["turns_per_sec"].as_f64().unwrap() > 0.0, "{}", w[1]);
        assert!(w[1]["commits_per_sec"].as_f64().unwrap() > 0.0, "{}", w[1]);
        assert!(w[1]["outbox_growth_per_sec"].is_f64(), "{}", w[1]);
    }
    let s2 = view(&bins.ken, a, &[]);
    assert!(u(&s2["turns_committed"]) > u(&s1["turns_committed"]));
    assert!(u(&s2["commits"]) > u(&s1["commits"]));
    // The outbox, decoded by the bank's own inspect: contiguous seqs per peer, credits.
    let outbox = view(&bins.bank, a, &["outbox"]);
    let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
    for m in arr(&outbox["messages"]) {
        let seq = u(&m["seq"]);
        if let Some(prev) = last_seq.insert(m["peer"].as_str().unwrap().to_string(), seq) {
            assert_eq!(seq, prev + 1, "{outbox:#}");
        }
        assert!(
            m["payload"]["decoded"]["Credit"]["amount"]
                .as_i64()
                .unwrap()
                > 0,
            "{m}"
        );
    }

    // SIGKILL everyone: the stores hold the last commits and change no more.
    for kid in &mut kids {
        assert!(
            kid.poll().expect("poll").is_none(),
            "{} stopped by itself: {}",
            kid.name(),
            stderr(kid)
        );
        kid.kill().expect("SIGKILL");
    }

    let mut summaries = BTreeMap::new();
    let mut sent = BTreeMap::new(); // (from, transfer) -> (to, amount)
    let mut applied = BTreeMap::new(); // (at, from, transfer) -> amount
    let mut balances = 0i64;
    for (id, store) in ids.iter().zip(&stores) {
        let s = view(&bins.ken, store, &[]);
        assert_eq!(s["errors"], json!([]), "{s:#}");
        assert_eq!(view(&bins.ken, store, &["verify"])["clean"], true);
        let state = view(&bins.bank, store, &["state", "--limit", "9999"]);
        let root = &state["root"]["decoded"];
        assert_eq!(root["duplicate_credits"], 0, "{root}");
        let table = |name: &str| -> Vec<Value> {
            let t = arr(&state["tables"])
                .iter()
                .find(|t| t["name"] == name)
                .unwrap_or_else(|| panic!("no table {name} in {id}"));
            assert_eq!(
                t["truncated"], false,
                "{id}: {name} has more than 9999 rows"
            );
            assert_eq!(u(&t["rows"]), arr(&t["entries"]).len() as u64);
            arr(&t["entries"]).clone()
        };
        let acc = table("accounts");
        assert_eq!(acc.len() as u64, accounts);
        balances += acc
            .iter()
            .map(|e| e["value"]["decoded"].as_i64().unwrap())
            .sum::<i64>();
        let my_sent = table("sent");
        assert_eq!(
            my_sent.len() as u64,
            u(&root["transfers_started"]),
            "{root}"
        );
        assert_eq!(
            u(&root["next_transfer"]),
            u(&root["transfers_started"]),
            "{root}"
        );
        for e in &my_sent {
            let v = &e["value"]["decoded"];
            sent.insert(
                (id.to_string(), u(&e["key_decoded"])),
                (
                    v["to"].as_str().unwrap().to_string(),
                    v["amount"].as_i64().unwrap(),
                ),
            );
        }
        let my_applied = table("applied");
        assert_eq!(
            my_applied.len() as u64,
            u(&root["credits_applied"]),
            "{root}"
        );
        for e in &my_applied {
            let k = &e["key_decoded"];
            applied.insert(
                (
                    id.to_string(),
                    k["from"].as_str().unwrap().to_string(),
                    u(&k["transfer"]),
                ),
                e["value"]["decoded"].as_i64().unwrap(),
            );
        }
        // Each peer's counters against this store's own tables and outbox.
        assert_eq!(arr(&s["peers"]).len(), ids.len() - 1, "{s:#}");
        let outbox = view(&bins.bank, store, &["outbox", "--limit", "9999"]);
        assert_eq!(outbox["truncated"], false);
        for other in ids.iter().filter(|o| *o != id) {
            let p = peer(&s, other);
            let sent_to = my_sent
                .iter()
                .filter(|e| e["value"]["decoded"]["to"] == *other)
                .count() as u64;
            assert_eq!(u(&p["next_seq"]) - 1, sent_to, "{id} -> {other}: {p}");
            let from = my_applied
                .iter()
                .filter(|e| e["key_decoded"]["from"] == *other)
                .count() as u64;
            assert_eq!(u(&p["delivered"]), from, "{id} <- {other}: {p}");
            let depth = u(&p["next_seq"]) - 1 - u(&p["acked"]);
            assert_eq!(u(&p["outbox_depth"]), depth, "{id} -> {other}: {p}");
            let seqs: Vec<u64> = arr(&outbox["messages"])
                .iter()
                .filter(|m| m["peer"] == *other)
                .map(|m| u(&m["seq"]))
                .collect();
            let want: Vec<u64> = (u(&p["acked"]) + 1..u(&p["next_seq"])).collect();
            assert_eq!(seqs, want, "{id} -> {other}");
        }
        assert_eq!(u(&s["outbox_depth"]), arr(&outbox["messages"]).len() as u64);
        summaries.insert(id.to_string(), s);
    }
    // Across stores: acknowledged <= consumed <= sent, and each side knows the other's
    // incarnation.
    for (id, s) in &summaries {
        for (other, o) in summaries.iter().filter(|(o, _)| *o != id) {
            let out = peer(s, other);
            let back = peer(o, id);
            assert!(
                u(&out["acked"]) <= u(&back["delivered"]),
                "{id} -> {other}: {out} vs {back}"
            );
            assert!(
                u(&back["delivered"]) < u(&out["next_seq"]),
                "{id} -> {other}: {out} vs {back}"
            );
            assert_eq!(back["incarnation"], s["incarnation"], "{other} knows {id}");
        }
    }
    // Exactly once and conservation, from the decoded tables.
    let mut in_flight = 0i64;
    for ((from, t), (to, amount)) in &sent {
        match applied.get(&(to.clone(), from.clone(), *t)) {
            Some(a) => assert_eq!(a, amount, "transfer {from}/{t}"),
            None => in_flight += amount,
        }
    }
    for (at, from, t) in applied.keys() {
        assert_eq!(
            sent.get(&(from.clone(), *t)).map(|(to, _)| to.as_str()),
            Some(at.as_str()),
            "{at} applied {from}/{t}"
        );
    }
    assert!(!applied.is_empty(), "the bank moved no money");
    assert_eq!(
        balances + in_flight,
        ids.len() as i64 * accounts as i64 * initial
    );
}

/// A kv service answers five command-line clients; its store, inspected while it runs,
/// holds exactly those requests: one turn each, one cached reply per client (decoded by
/// `ken-kv inspect`), the rows they wrote.
#[test]
fn kv_requests_show_as_turns_clients_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let bins = Bins::copy_into(dir.path());
    let store = dir.path().join("kv.ken");
    let mut server = None;
    for attempt in 1..=BIND_ATTEMPTS_MAX {
        let port = harness::free_ports(1).expect("bind 127.0.0.1:0")[0];
        let args: Vec<String> = ["serve", "--id", "kv", "--listen", &addr(port), "--store"]
            .iter()
            .map(|s| s.to_string())
            .chain([store.display().to_string()])
            .collect();
        let mut kid = bins.kv.start("kv", &args, dir.path());
        let started = wait_for(RUN_DEADLINE, "the kv store to be created", || {
            if let Some(end) = kid.poll().expect("poll") {
                return Some(Err(end));
            }
            let run = inspect(&bins.ken, &store, &["--json"]);
            (run.code == 0 && u(&run.json()["turns_committed"]) >= 1).then_some(Ok(()))
        });
        match started {
            Ok(()) => {
                server = Some((kid, port));
                break;
            }
            Err(End::BindError) if attempt < BIND_ATTEMPTS_MAX => {
                eprintln!("kv attempt {attempt}: the port was taken; retrying");
            }
            Err(end) => panic!("ken app kv serve ended {end:?}: {}", stderr(&kid)),
        }
    }
    let (mut kid, port) = server.expect("the last attempt starts or panics");
    let calls: [&[&str]; 5] = [
        &["put", "k1", "v1"],
        &["put", "k2", "v2"],
        &["incr", "n", "5"],
        &["incr", "n", "2"],
        &["get", "k1"],
    ];
    for call in calls {
        let out = bins
            .kv
            .command()
            .args(call)
            .args(["--server", &addr(port), "--json"])
            .output()
            .expect("run ken-kv");
        assert!(out.status.success(), "ken-kv {call:?}: {out:?}");
    }

    // Live: one turn per request after the start, each from a fresh client, request 1.
    let s = view(&bins.ken, &store, &[]);
    assert_eq!(u(&s["turns_committed"]), 1 + calls.len() as u64, "{s:#}");
    assert_eq!(u(&s["clients"]), calls.len() as u64, "{s:#}");
    assert_eq!(s["peers"], json!([]), "{s:#}");
    let turns = view(&bins.ken, &store, &["turns"]);
    let turns = arr(&turns["turns"]);
    assert_eq!(turns.len(), 1 + calls.len(), "{turns:#?}");
    let mut sources = BTreeSet::new();
    for t in &turns[1..] {
        assert_eq!(t["input_kind"], "request", "{t}");
        assert_eq!(t["input_seq"], 1, "{t}");
        sources.insert(t["input_source"].as_str().unwrap().replace("c-", "0x"));
    }
    let clients = view(&bins.kv, &store, &["clients"]);
    let clients = arr(&clients["clients"]);
    let ids: BTreeSet<String> = clients
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, sources, "the clients are the turns' sources");
    let mut replies: Vec<String> = clients
        .iter()
        .map(|c| {
            assert_eq!(c["request_no"], 1, "{c}");
            c["reply"]["decoded"].to_string()
        })
        .collect();
    replies.sort();
    let mut want: Vec<String> = [
        json!({"Ok": {"Put": {"previous": null}}}),
        json!({"Ok": {"Put": {"previous": null}}}),
        json!({"Ok": {"Incr": 5}}),
        json!({"Ok": {"Incr": 7}}),
        json!({"Ok": {"Value": "v1"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    want.sort();
    assert_eq!(replies, want);
    let generic = view(&bins.ken, &store, &["clients"]);
    assert_eq!(generic["clients"][0]["reply"]["decoded"], Value::Null);
    let state = view(&bins.kv, &store, &["state"]);
    assert_eq!(
        u(&state["root"]["decoded"]["requests_applied"]),
        calls.len() as u64
    );
    let rows: Vec<(Value, Value)> = arr(&state["tables"][0]["entries"])
        .iter()
        .map(|e| (e["key_decoded"].clone(), e["value"]["decoded"].clone()))
        .collect();
    assert_eq!(state["tables"][0]["name"], "kv");
    assert_eq!(
        rows,
        vec![
            (json!("k1"), json!("v1")),
            (json!("k2"), json!("v2")),
            (json!("n"), json!("7")),
        ]
    );
    assert!(
        kid.poll().expect("poll").is_none(),
        "ken app kv stopped: {}",
        stderr(&kid)
    );
}

/// Flips a random bit of a `received` row and of a turn-log entry of one store and of the
/// root of the other: `verify` names each record and exits 1; views that need a damaged
/// record say which and exit 1; the rest of the store reads as before.
#[test]
fn corrupt_records_are_named_and_the_healthy_parts_still_read() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed("corrupt_records"));
    let dir = tempfile::tempdir().unwrap();
    let bins = Bins::copy_into(dir.path());
    let count = 21;
    let (a, b) = run_pingpong(dir.path(), &bins, count);
    let [pa, _] = players(count);
    let before = view(&bins.ken, &a, &[]);
    let turns_before = view(&bins.ken, &a, &["turns", "--last", "1000"]);
    let peers_before = view(&bins.ken, &a, &["peers"]);

    let victim = pa.values[rng.gen_range(0..pa.values.len())];
    let victim_key = victim.to_be_bytes().to_vec();
    // A turn-log row (one per batch of up to 64 turns), named by its first turn.
    let log_rows: Vec<(i64, i64)> = raw_sqlite(&a)
        .unwrap()
        .prepare("SELECT turn, turns FROM turn_log ORDER BY turn")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (victim_turn, victim_turns) = log_rows[rng.gen_range(0..log_rows.len())];
    let victim_turn = victim_turn as u64;
    let victim_last = victim_turn + victim_turns as u64 - 1;
    assert!(u(&before["turns_committed"]) >= victim_last);
    let mut flip = |store: &Path, select: &str, update: &str, key: &dyn rusqlite::ToSql| {
        let conn = raw_sqlite(store).unwrap();
        let mut blob: Vec<u8> = conn.query_row(select, [key], |r| r.get(0)).unwrap();
        let bit = rng.gen_range(0..blob.len() * 8);
        blob[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            conn.execute(update, rusqlite::params![blob, key]).unwrap(),
            1
        );
    };
    flip(
        &a,
        "SELECT value FROM kv WHERE tbl = 'received' AND key = ?1",
        "UPDATE kv SET value = ?1 WHERE tbl = 'received' AND key = ?2",
        &victim_key,
    );
    flip(
        &a,
        "SELECT entries FROM turn_log WHERE turn = ?1",
        "UPDATE turn_log SET entries = ?1 WHERE turn = ?2",
        &(victim_turn as i64),
    );
    flip(
        &b,
        "SELECT value FROM root WHERE id = ?1",
        "UPDATE root SET value = ?1 WHERE id = ?2",
        &0i64,
    );
    let victim_name = format!("0x{victim:016x}");

    // verify names both records of a, exits 1, in JSON and as text.
    let v = inspect(&bins.ken, &a, &["verify", "--json"]);
    assert_eq!(v.code, EXIT_DAMAGED, "{}", v.describe());
    let v = v.json();
    assert_eq!(v["clean"], false);
    let named: BTreeSet<(String, String)> = arr(&v["problems"])
        .iter()
        .map(|p| {
            (
                p["table"].as_str().unwrap().to_string(),
                p["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("kv:received".to_string(), victim_name.clone()),
        ("turn_log".to_string(), victim_turn.to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(named, want, "{v:#}");
    let text = inspect(&bins.ken, &a, &["verify"]);
    assert_eq!(text.code, EXIT_DAMAGED);
    assert!(
        text.stdout
            .contains(&format!("PROBLEM kv:received {victim_name}: ")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("PROBLEM turn_log {victim_turn}: ")),
        "{}",
        text.stdout
    );

    // The summary, peers, tables and outbox do not need those records.
    let after = view(&bins.ken, &a, &[]);
    for field in [
        "turns_committed",
        "commits",
        "tables",
        "peers",
        "root_bytes",
        "errors",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(
        view(&bins.ken, &a, &["peers"])["peers"],
        peers_before["peers"]
    );
    assert_eq!(view(&bins.ken, &a, &["tables"])["tables"], before["tables"]);
    assert_eq!(view(&bins.ken, &a, &["outbox"])["messages"], json!([]));

    // The table scan goes around the bad row: listed with its error, the others intact.
    let t = inspect(
        &bins.ken,
        &a,
        &["table", "received", "--json", "--limit", "1000"],
    );
    assert_eq!(t.code, EXIT_DAMAGED, "{}", t.describe());
    let stderr: Vec<&str> = t.stderr.lines().collect();
    assert_eq!(stderr.len(), 1, "{}", t.stderr);
    assert!(
        stderr[0].contains("kv:received") && stderr[0].contains(&victim_name),
        "{}",
        t.stderr
    );
    let entries = t.json()["entries"].clone();
    let keys: Vec<u64> = arr(&entries)
        .iter()
        .map(|e| u64::from_str_radix(e["key_hex"].as_str().unwrap(), 16).unwrap())
        .collect();
    assert_eq!(keys, pa.values, "every row is listed");
    for e in arr(&entries) {
        let bad = e["key"] == victim_name.as_str();
        assert_eq!(e["value"].is_null(), bad, "{e}");
        assert_eq!(e["error"].is_string(), bad, "{e}");
    }
    // The app's state view: the root decodes, the table shows the damage in place.
    // With --limit 3 it meets the bad row only if it is among the first three.
    let shown = pa.values.iter().position(|v| *v == victim).unwrap() < 3;
    let st = inspect(&bins.pingpong, &a, &["state", "--json", "--limit", "3"]);
    let code = if shown { EXIT_DAMAGED } else { 0 };
    assert_eq!(st.code, code, "{}", st.describe());
    let st = st.json();
    assert_eq!(u(&st["root"]["decoded"]["received"]), pa.received);
    assert_eq!(arr(&st["tables"][0]["entries"]).len(), 3);
    assert_eq!(st["tables"][0]["truncated"], true);
    assert_eq!(arr(&st["errors"]).len(), usize::from(shown), "{st:#}");

    // The turn log is needed as a whole: one line naming the record, exit 1.
    let tl = inspect(&bins.ken, &a, &["turns", "--last", "1000"]);
    assert_eq!(tl.code, EXIT_DAMAGED, "{}", tl.describe());
    assert_eq!(tl.stdout, "");
    assert_eq!(tl.stderr.lines().count(), 1, "{}", tl.stderr);
    assert!(
        tl.stderr
            .contains(&format!("`turn_log` at key {victim_turn}")),
        "{}",
        tl.stderr
    );
    // Turns after the bad row still read.
    let newest = arr(&turns_before["turns"]).len() as u64 - victim_last;
    if newest > 0 {
        let tail = view(&bins.ken, &a, &["turns", "--last", &newest.to_string()]);
        assert_eq!(
            arr(&tail["turns"])[..],
            arr(&turns_before["turns"])[victim_last as usize..]
        );
    }

    // b: a corrupt root. The summary shows everything else and says what it could not read.
    let s = inspect(&bins.ken, &b, &["--json"]);
    assert_eq!(s.code, EXIT_DAMAGED, "{}", s.describe());
    let sj = s.json();
    assert_eq!(sj["root_bytes"], Value::Null);
    assert_eq!(arr(&sj["errors"]).len(), 1, "{sj:#}");
    assert_eq!(sj["errors"][0]["section"], "root");
    assert!(
        sj["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("`root`"),
        "{sj:#}"
    );
    assert_eq!(u(&sj["tables"][0]["rows"]), players(count)[1].received);
    assert_eq!(s.stderr.lines().count(), 1, "{}", s.stderr);
    let vb = view_code(&bins.ken, &b, &["verify", "--json"], EXIT_DAMAGED);
    assert_eq!(
        vb["problems"],
        json!([{"table": "root", "key": "root", "what": vb["problems"][0]["what"]}])
    );
    let stb = inspect(&bins.pingpong, &b, &["state", "--json"]);
    assert_eq!(stb.code, EXIT_DAMAGED, "{}", stb.describe());
    let stb = stb.json();
    assert_eq!(stb["root"], Value::Null);
    assert_eq!(
        u(&stb["tables"][0]["rows"]),
        players(count)[1].received,
        "{stb:#}"
    );
}

/// `<bin> inspect STORE <args>` that must exit `code`, its JSON.
fn view_code(bin: &Path, store: &Path, args: &[&str], code: i32) -> Value {
    let run = inspect(bin, store, args);
    assert_eq!(run.code, code, "{args:?}: {}", run.describe());
    run.json()
}

/// What cannot be inspected gets one line saying why, exit 2 (1 for a corrupt `meta`), and
/// nothing on stdout, from every view and from the apps' `inspect` too.
#[test]
fn broken_inputs_get_one_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let bins = Bins::copy_into(dir.path());
    let d = dir.path();

    let text = d.join("notes.txt");
    std::fs::write(&text, "not a database\n".repeat(100)).unwrap();
    let foreign = d.join("foreign.db");
    raw_sqlite(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let newer = d.join("newer.ken");
    let bad_meta = d.join("bad-meta.ken");
    for path in [&newer, &bad_meta] {
        let (mut store, _) = ken_store::Store::open(path, "x").unwrap();
        store
            .commit(&ken_store::Batch {
                now_ms: 1,
                turns: 1,
                root: Some(b"r".to_vec()),
                ..ken_store::Batch::default()
            })
            .unwrap();
    }
    let conn = raw_sqlite(&newer).unwrap();
    let next = ken_store::codec::seal(&(ken_store::FORMAT_VERSION + 1).to_le_bytes());
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
        [next],
    )
    .unwrap();
    drop(conn);
    let conn = raw_sqlite(&bad_meta).unwrap();
    conn.execute("UPDATE meta SET value = x'0102' WHERE key = 'counters'", [])
        .unwrap();
    drop(conn);

    let cases: [(PathBuf, i32, &str); 6] = [
        (d.join("missing.ken"), EXIT_ERROR, "no store at"),
        (
            text,
            EXIT_ERROR,
            "is not a Ken store (not an SQLite database)",
        ),
        (
            d.to_path_buf(),
            EXIT_ERROR,
            "is not a Ken store (not a regular file)",
        ),
        (
            foreign,
            EXIT_ERROR,
            "is not a Ken store (an SQLite database without Ken's `meta` table)",
        ),
        (
            newer,
            EXIT_ERROR,
            &format!(
                "store format version {} is newer than this build supports ({})",
                ken_store::FORMAT_VERSION + 1,
                ken_store::FORMAT_VERSION
            ),
        ),
        (
            bad_meta,
            EXIT_DAMAGED,
            "corrupted record in table `meta` at key counters",
        ),
    ];
    for (path, code, says) in &cases {
        let ken: &dyn Inspector = &bins.ken;
        let bank: &dyn Inspector = &bins.bank;
        for (bin, name, args) in [
            (ken, "ken", vec![]),
            (ken, "ken", vec!["--json"]),
            (ken, "ken", vec!["verify"]),
            (ken, "ken", vec!["table", "t", "--json"]),
            (
                ken,
                "ken",
                vec!["watch", "--count", "2", "--interval-ms", "10"],
            ),
            (bank, "ken-bank", vec!["state", "--json"]),
        ] {
            let run = inspect(bin, path, &args);
            let what = format!("{name} {args:?} on {}: {}", path.display(), run.describe());
            assert_eq!(run.code, *code, "{what}");
            assert_eq!(run.stdout, "", "{what}");
            assert_eq!(run.stderr.lines().count(), 1, "{what}");
            assert!(run.stderr.contains(says), "{what}");
            assert!(
                run.stderr.starts_with(&format!("{name} inspect: ")),
                "{what}"
            );
        }
    }
    // Bad arguments are usage errors (exit 2), not panics.
    let store = d.join("ok.ken");
    drop(ken_store::Store::open(&store, "ok").unwrap());
    for args in [
        vec!["table", "t", "--limit", "10000"],
        vec!["turns", "--last", "0"],
        vec!["watch", "--interval-ms", "1"],
        vec!["nosuchview"],
    ] {
        let run = inspect(&bins.ken, &store, &args);
        assert_eq!(run.code, EXIT_ERROR, "{args:?}: {}", run.describe());
    }
    // An empty store (no commit yet) is a store: every view works.
    let s = view(&bins.ken, &store, &[]);
    assert_eq!(s["turns_committed"], 0);
    assert_eq!(s["last_commit_age_ms"], Value::Null);
    assert_eq!(s["root_bytes"], Value::Null);
    assert_eq!(view(&bins.bank, &store, &["state"])["root"], Value::Null);
}

// ---------------------------------------------------------------------------------------
// FUSE groups: stores written by engines driven in-process (virtual time, real stores, a
// network the test controls), so every group's state can be produced on purpose.

mod groups {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use ken::engine::EngineConfig;
    use ken::store::codec;
    use ken::testing;
    use ken::{GroupId, GroupState, Handler, Input, ProcessId, Time, Tuning, Turn};
    use rand::{Rng, SeedableRng};
    use serde::{Deserialize, Serialize};
    use serde_json::{json, Value};

    use super::{arr, assert_verify_clean, inspect, seed, u, view, view_code, EXIT_DAMAGED};

    /// `a` creates group `i` of `PLAN` (itself and the listed members) `PLAN[i].0` ms after
    /// its start; every member records the failures it hears.
    const PLAN: [(u64, &[&str]); 4] =
        [(0, &["b", "c"]), (0, &["b"]), (300, &["c"]), (2500, &["b"])];

    struct Grouper;

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct GrouperState {
        /// (plan index, group, the creating turn's time in ms)
        created: Vec<(usize, GroupId, u64)>,
        heard: Vec<GroupId>,
    }

    impl Handler for Grouper {
        const APP: &'static str = "grouper";
        type State = GrouperState;
        type Message = ();
        type Request = ();
        type Reply = ();
        fn on_turn(&self, s: &mut GrouperState, turn: &mut Turn<'_, ()>, input: Input<()>) {
            match input {
                Input::Start if turn.id().as_str() == "a" => {
                    for (i, (after_ms, _)) in PLAN.iter().enumerate() {
                        turn.set_timer(&format!("create-{i}"), Duration::from_millis(*after_ms));
                    }
                }
                Input::Timer { name, .. } => {
                    let i: usize = name["create-".len()..].parse().unwrap();
                    let members: Vec<ProcessId> = PLAN[i]
                        .1
                        .iter()
                        .map(|m| ProcessId::new(*m).unwrap())
                        .collect();
                    let g = turn.fuse_create(&members).unwrap();
                    s.created.push((i, g, turn.now().as_millis()));
                }
                Input::FuseFailure { group } => s.heard.push(group),
                _ => {}
            }
        }
    }

    /// Three nodes a, b, c on the engines' test host; commits complete at once.
    type Cluster = testing::Cluster<Grouper>;

    const STEP_MS: u64 = 5;

    fn tuning() -> Tuning {
        Tuning {
            fuse_heartbeat: Duration::from_millis(100),
            fuse_t_fail: Duration::from_millis(1000),
            fuse_create_timeout: Duration::from_millis(1000),
            ..Tuning::default()
        }
    }

    fn boot(dir: &Path, start_ms: u64) -> Cluster {
        let ids: Vec<ProcessId> = ["a", "b", "c"].map(|s| ProcessId::new(s).unwrap()).to_vec();
        let mut c = Cluster::new(PathBuf::from(dir), Time::from_millis(start_ms), 0);
        c.set_step(Duration::from_millis(STEP_MS));
        for (i, id) in ids.iter().enumerate() {
            let config = EngineConfig {
                id: id.clone(),
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
                tuning: tuning(),
                seed: i as u64,
            };
            c.add(config, || Grouper);
        }
        c.start_all();
        c
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn key(g: GroupId) -> String {
        format!("0x{}", ken_inspect::decode::hex(&g.0))
    }

    /// Rewrites the sealed record of group `g` in `store` with `f(record)`.
    fn rewrite(store: &Path, g: GroupId, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
        let conn = super::raw_sqlite(store).unwrap();
        let old: Vec<u8> = conn
            .query_row(
                "SELECT record FROM fuse_groups WHERE group_id = ?1",
                [&g.0[..]],
                |r| r.get(0),
            )
            .unwrap();
        let n = conn
            .execute(
                "UPDATE fuse_groups SET record = ?1 WHERE group_id = ?2",
                rusqlite::params![f(old), &g.0[..]],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    /// Three stores whose groups are in every state, each on purpose: `a` creates
    /// G0 = {a,b,c} and G1 = {a,b}; c is killed for good, so G0 fails by silence at a and b
    /// and G2 = {a,c}, created afterwards, fails by creation timeout at a; G3 = {a,b} is
    /// created while b's frames are lost, so it is `creating` at a and `joined` at b. Every
    /// field of `ken inspect groups` and the summary's counts are checked against the
    /// engines' own view and the creating turns' clocks; then `verify` must name a record
    /// that does not decode, a record that breaks an invariant and a record with a bad CRC.
    #[test]
    fn fuse_groups_are_decoded_counted_and_verified() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed("fuse_groups"));
        let dir = tempfile::tempdir().unwrap();
        let ken_bin = dir.path().join("ken");
        std::fs::copy(env!("CARGO_BIN_EXE_ken"), &ken_bin).unwrap();
        // A minute in the past, so that ages are positive after 2.6 s of virtual time.
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let start_ms = wall_ms - 60_000;
        let mut c = boot(dir.path(), start_ms);
        c.run_for(ms(100));
        assert!(
            (0..3).all(|i| c
                .engine(i)
                .groups()
                .iter()
                .all(|g| g.durable == Some(GroupState::Live))),
            "G0 and G1 are established everywhere"
        );
        c.crash(2);
        c.run_for(ms(2_400));
        c.mute(1);
        c.run_for(ms(150));

        let created = c.engine(0).state().created.clone();
        assert_eq!(created.len(), PLAN.len(), "{created:?}");
        let find = |i: usize| *created.iter().find(|e| e.0 == i).expect("created");
        let g: Vec<GroupId> = (0..PLAN.len()).map(|i| find(i).1).collect();
        let created_ms: Vec<u64> = (0..PLAN.len()).map(|i| find(i).2).collect();
        // (node, group, state, notified, members), as the scenario makes them.
        let expect: Vec<(usize, usize, GroupState, bool, Vec<&str>)> = vec![
            (0, 0, GroupState::Failed, true, vec!["a", "b", "c"]),
            (0, 1, GroupState::Live, false, vec!["a", "b"]),
            (0, 2, GroupState::Failed, true, vec!["a", "c"]),
            (0, 3, GroupState::Creating, false, vec!["a", "b"]),
            (1, 0, GroupState::Failed, true, vec!["a", "b", "c"]),
            (1, 1, GroupState::Live, false, vec!["a", "b"]),
            (1, 3, GroupState::Joined, false, vec!["a", "b"]),
            // c's store as it was when c was killed.
            (2, 0, GroupState::Live, false, vec!["a", "b", "c"]),
        ];
        // The engines agree with the scenario (durably), and each handler heard exactly
        // its failed groups, once.
        for i in 0..2 {
            let mut mine: Vec<_> = c
                .engine(i)
                .groups()
                .into_iter()
                .map(|s| {
                    assert_eq!(s.durable, Some(s.state), "{i}: {s:?} is durable");
                    assert_eq!(s.creator.as_str(), "a");
                    let members: Vec<String> = s.members.iter().map(|m| m.to_string()).collect();
                    (s.id, s.state, s.notified, members)
                })
                .collect();
            mine.sort_by_key(|m| m.0);
            let mut want: Vec<_> = expect
                .iter()
                .filter(|e| e.0 == i)
                .map(|e| {
                    (
                        g[e.1],
                        e.2,
                        e.3,
                        e.4.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                    )
                })
                .collect();
            want.sort_by_key(|w| w.0);
            assert_eq!(mine, want, "node {i}");
            let mut heard = c.engine(i).state().heard.clone();
            heard.sort();
            let mut failed: Vec<GroupId> = want.iter().filter(|w| w.2).map(|w| w.0).collect();
            failed.sort();
            assert_eq!(heard, failed, "node {i} heard each failure once");
        }
        let stores: Vec<PathBuf> = (0..3).map(|i| c.node(i).path().to_path_buf()).collect();
        c.crash(0);
        c.crash(1);

        // `groups --json`: every field of every group.
        for (i, store) in stores.iter().enumerate() {
            let v = view(&ken_bin, store, &["groups"]);
            let now_ms = u(&v["now_ms"]);
            let want: Vec<_> = expect.iter().filter(|e| e.0 == i).collect();
            assert_eq!(arr(&v["groups"]).len(), want.len(), "{i}: {v:#}");
            for e in want {
                let id = g[e.1];
                let got = arr(&v["groups"])
                    .iter()
                    .find(|x| x["group"] == key(id))
                    .unwrap_or_else(|| panic!("{i}: no {} in {v:#}", key(id)));
                let ctx = format!("node {i}, G{}: {got:#}", e.1);
                assert_eq!(got["display"], id.to_string(), "{ctx}");
                let state = ken_inspect::fuse::state_name(e.2);
                assert_eq!(got["state"], state, "{ctx}");
                assert_eq!(got["creator"], "a", "{ctx}");
                assert_eq!(got["members"], json!(e.4), "{ctx}");
                assert_eq!(got["notified"], e.3, "{ctx}");
                let at = u(&got["created_ms"]);
                if i == 0 {
                    assert_eq!(at, created_ms[e.1], "{ctx}");
                } else {
                    // A member records the group when the creator's Create arrives.
                    assert!(
                        (created_ms[e.1]..=created_ms[e.1] + STEP_MS).contains(&at),
                        "{ctx}: created at {}",
                        created_ms[e.1]
                    );
                }
                assert_eq!(u(&got["created_age_ms"]), now_ms - at, "{ctx}");
                assert!(u(&got["record"]["bytes"]) > 0, "{ctx}");
                assert_eq!(got["record"]["decoded"], Value::Null, "{ctx}");
                assert_eq!(got["error"], Value::Null, "{ctx}");
            }
            // The summary counts them by state.
            let s = view(&ken_bin, store, &[]);
            let count = |st: GroupState| expect.iter().filter(|e| e.0 == i && e.2 == st).count();
            assert_eq!(
                u(&s["groups"]),
                expect.iter().filter(|e| e.0 == i).count() as u64
            );
            assert_eq!(
                s["groups_by_state"],
                json!({
                    "creating": count(GroupState::Creating),
                    "joined": count(GroupState::Joined),
                    "live": count(GroupState::Live),
                    "failed": count(GroupState::Failed),
                    "failed_unnotified": 0,
                    "undecodable": 0,
                }),
                "{i}: {s:#}"
            );
            assert_eq!(s["errors"], json!([]), "{i}: {s:#}");
            let v = view(&ken_bin, store, &["verify"]);
            assert_verify_clean(&v, &i.to_string());
        }
        // The text forms.
        let text = inspect(&ken_bin, &stores[0], &[]);
        assert_eq!(text.code, 0, "{}", text.describe());
        assert!(
            text.stdout
                .contains("fuse groups   4 (1 creating, 0 joined, 1 live, 2 failed)\n"),
            "{}",
            text.stdout
        );
        let text = inspect(&ken_bin, &stores[1], &["groups"]);
        assert_eq!(text.code, 0, "{}", text.describe());
        let line = text
            .stdout
            .lines()
            .find(|l| l.starts_with(&key(g[3])))
            .unwrap_or_else(|| panic!("no G3 line: {}", text.stdout));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[1..4], ["joined", "no", "a"], "{line}");
        assert_eq!(words.last(), Some(&"a,b"), "{line}");
        assert!(text.stdout.starts_with("GROUP "), "{}", text.stdout);

        // The audit: the stores agree on every group they share. Then G1 (live at a and b)
        // deleted from a copy of b's store, which b's own verify cannot see (no record is
        // damaged): the audit names b as the store that lost history.
        let (code, r) = super::audit(&ken_bin, &stores);
        assert_eq!(code, 0, "{r:#}");
        assert!(u(&r["groups_checked"]) >= 2, "{r:#}");
        let gone = dir.path().join("b-gone.ken");
        super::copy_store(&stores[1], &gone);
        let conn = super::raw_sqlite(&gone).unwrap();
        let n = conn
            .execute("DELETE FROM fuse_groups WHERE group_id = ?1", [&g[1].0[..]])
            .unwrap();
        assert_eq!(n, 1);
        drop(conn);
        let (code, r) = super::audit(&ken_bin, &[stores[0].clone(), gone, stores[2].clone()]);
        assert_eq!(code, EXIT_DAMAGED, "{r:#}");
        let found = arr(&r["groups"]);
        assert_eq!(found.len(), 1, "{r:#}");
        assert_eq!(found[0]["group"], key(g[1]), "{r:#}");
        assert_eq!(found[0]["suspect"], "b", "{r:#}");

        // Damage. b: G1 re-sealed as live but notified (an impossible record), G3's body
        // replaced by bytes that are no group record (both with a valid envelope).
        let impossible = ken::engine::fuse::GroupRecord {
            creator: "a".to_string(),
            members: vec!["a".to_string(), "b".to_string()],
            state: GroupState::Live,
            notified: true,
            created_ms: created_ms[1],
        };
        // (The envelope's CRC covers the group id too: format 3.)
        rewrite(&stores[1], g[1], |_| {
            codec::seal_record(&codec::Record::group(&g[1].0), &codec::encode(&impossible))
        });
        rewrite(&stores[1], g[3], |_| {
            codec::seal_record(&codec::Record::group(&g[3].0), &[0xff, 0xff, 0xff])
        });
        // a: one random bit of G2's stored record flipped (the envelope's CRC catches it).
        rewrite(&stores[0], g[2], |mut r| {
            let bit = rng.gen_range(0..r.len() * 8);
            r[bit / 8] ^= 1 << (bit % 8);
            r
        });

        let vb = view_code(&ken_bin, &stores[1], &["verify", "--json"], EXIT_DAMAGED);
        let problems = arr(&vb["problems"]);
        assert_eq!(problems.len(), 2, "{vb:#}");
        for (id, says) in [
            (g[1], "notified, but the state is live, not failed"),
            (g[3], "does not decode as a FUSE group record"),
        ] {
            assert!(
                problems.iter().any(|p| p["table"] == "fuse_groups"
                    && p["key"] == key(id)
                    && p["what"].as_str().unwrap().contains(says)),
                "{}: {says}: {vb:#}",
                key(id)
            );
        }
        let tb = inspect(&ken_bin, &stores[1], &["verify"]);
        assert_eq!(tb.code, EXIT_DAMAGED);
        assert!(
            tb.stdout
                .contains(&format!("PROBLEM fuse_groups {}: ", key(g[3]))),
            "{}",
            tb.stdout
        );
        // The groups view lists the undecodable record in place, exits 1, says it once.
        let gb = inspect(&ken_bin, &stores[1], &["groups", "--json"]);
        assert_eq!(gb.code, EXIT_DAMAGED, "{}", gb.describe());
        assert_eq!(gb.stderr.lines().count(), 1, "{}", gb.stderr);
        assert!(gb.stderr.contains(&key(g[3])), "{}", gb.stderr);
        let gj = gb.json();
        let bad = arr(&gj["groups"])
            .iter()
            .find(|x| x["group"] == key(g[3]))
            .unwrap();
        for field in ["state", "creator", "members", "notified", "created_ms"] {
            assert_eq!(bad[field], Value::Null, "{field}: {bad:#}");
        }
        assert_eq!(u(&bad["record"]["bytes"]), 3);
        assert!(
            bad["error"].as_str().unwrap().contains("fuse_groups"),
            "{bad:#}"
        );
        let odd = arr(&gj["groups"])
            .iter()
            .find(|x| x["group"] == key(g[1]))
            .unwrap();
        assert_eq!(
            (&odd["state"], &odd["notified"]),
            (&json!("live"), &json!(true))
        );
        let sb = view_code(&ken_bin, &stores[1], &["--json"], EXIT_DAMAGED);
        assert_eq!(
            sb["groups_by_state"],
            json!({"creating": 0, "joined": 0, "live": 1, "failed": 1,
                   "failed_unnotified": 0, "undecodable": 1}),
            "{sb:#}"
        );
        assert_eq!(arr(&sb["errors"]).len(), 1, "{sb:#}");
        assert_eq!(sb["errors"][0]["section"], "groups");
        assert!(sb["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains(&key(g[3])));

        // a: the reader names the bad envelope; the groups view needs every record.
        let va = view_code(&ken_bin, &stores[0], &["verify", "--json"], EXIT_DAMAGED);
        assert_eq!(arr(&va["problems"]).len(), 1, "{va:#}");
        assert_eq!(va["problems"][0]["table"], "fuse_groups");
        assert_eq!(va["problems"][0]["key"], key(g[2]));
        let ga = inspect(&ken_bin, &stores[0], &["groups"]);
        assert_eq!(ga.code, EXIT_DAMAGED, "{}", ga.describe());
        assert_eq!(ga.stdout, "");
        assert_eq!(ga.stderr.lines().count(), 1, "{}", ga.stderr);
        assert!(
            ga.stderr
                .contains(&format!("`fuse_groups` at key {}", key(g[2]))),
            "{}",
            ga.stderr
        );
        let sa = view_code(&ken_bin, &stores[0], &["--json"], EXIT_DAMAGED);
        assert_eq!(sa["groups"], Value::Null);
        assert_eq!(sa["groups_by_state"], Value::Null);
        // c: untouched.
        assert_eq!(view(&ken_bin, &stores[2], &["verify"])["clean"], true);
    }
}

/// `ken audit STORE..` with `--json`: the run and its parsed report.
fn audit(ken: &Path, stores: &[PathBuf]) -> (i32, Value) {
    let child = spawn(
        Command::new(ken)
            .arg("audit")
            .args(stores)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = child.wait_with_output().expect("wait for audit");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    (run.code, run.json())
}

/// Copies a store's three files (database, `-wal`, owner lock file).
fn copy_store(from: &Path, to: &Path) {
    for (f, t) in [
        (from.to_path_buf(), to.to_path_buf()),
        (ken_store::wal_path(from), ken_store::wal_path(to)),
        (ken_store::lock_path(from), ken_store::lock_path(to)),
    ] {
        let _ = std::fs::remove_file(&t);
        if f.exists() {
            std::fs::copy(&f, &t).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
        }
    }
}

/// `ken audit` over a real bank: clean while it runs (every store read twice, bounds taken
/// from the right pass) and after SIGKILL; then one store put back to an older copy of
/// itself, lock file and all, which its own `verify` cannot tell (it is a consistent store,
/// just an old one): the audit names it as the store behind its peers, exit 1.
#[test]
fn audit_names_a_store_put_back_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let bins = Bins::copy_into(dir.path());
    let ids = ["a", "b", "c"];
    let stores: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join(format!("{id}.ken")))
        .collect();
    let mut kids = start_bank(&bins, dir.path(), &ids, &stores, 8, 1000);
    let turns = |store: &Path| u(&view(&bins.ken, store, &[])["turns_committed"]);
    wait_for(RUN_DEADLINE, "every bank store past 50 turns", || {
        stores.iter().all(|s| turns(s) > 50).then_some(())
    });
    for round in 0..3 {
        let (code, r) = audit(&bins.ken, &stores);
        assert_eq!(code, 0, "live audit {round}: {r:#}");
        assert_eq!(r["clean"], true, "{r:#}");
        assert_eq!(u(&r["pairs_checked"]), 6, "{r:#}");
    }
    for kid in &mut kids {
        kid.kill().expect("SIGKILL");
    }
    let old = dir.path().join("b-old.ken");
    copy_store(&stores[1], &old);
    let old_turns = turns(&old);
    for kid in &mut kids {
        kid.restart().expect("restart");
    }
    wait_for(RUN_DEADLINE, "b 100 turns past the copy", || {
        (turns(&stores[1]) > old_turns + 100).then_some(())
    });
    for kid in &mut kids {
        kid.kill().expect("SIGKILL");
    }
    let (code, r) = audit(&bins.ken, &stores);
    assert_eq!((code, &r["clean"]), (0, &json!(true)), "{r:#}");

    // b put back in time, lock file included: consistent on its own.
    copy_store(&old, &stores[1]);
    assert_verify_clean(&view(&bins.ken, &stores[1], &["verify"]), "the old copy");
    let (code, r) = audit(&bins.ken, &stores);
    assert_eq!(code, EXIT_DAMAGED, "{r:#}");
    assert_eq!(r["clean"], false, "{r:#}");
    let pairs = arr(&r["pairs"]);
    assert!(!pairs.is_empty(), "{r:#}");
    for p in pairs {
        assert_eq!(p["suspect"], "b", "{r:#}");
    }
    // The readable form names it too; the same stores twice are refused.
    let text = Command::new(&bins.ken)
        .arg("audit")
        .args(&stores)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("stores behind their peers: b;"), "{text}");
    let twice = Command::new(&bins.ken)
        .args(["audit"])
        .arg(&stores[0])
        .arg(&stores[0])
        .output()
        .unwrap();
    assert_eq!(twice.status.code(), Some(EXIT_ERROR));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("both belong to process `a`"),
        "{twice:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Living code (issue 14): the application identity, dead letters and poison inputs in the
// views, and the apps' `migrate STORE --dry-run`. Stores written in-process on the engines'
// test host, with a network the test controls.

mod living {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use ken::engine::EngineConfig;
    use ken::store::{codec, AppIdentity, Store, StoreOptions};
    use ken::testing::{Cluster, Fate};
    use ken::transport::{Frame, FrameKind};
    use ken::{Handler, Input, ProcessId, Time, Tuning, Turn};

    use super::{arr, u, view};

    /// `a` sends 1, 2, 13 to `b`; `b` panics on 13.
    struct Fragile;

    impl Handler for Fragile {
        const APP: &'static str = "fragile";
        type State = u64;
        type Message = u64;
        type Request = ();
        type Reply = ();
        fn on_turn(&self, total: &mut u64, turn: &mut Turn<'_, u64>, input: Input<u64>) {
            match input {
                Input::Start if turn.id().as_str() == "a" => {
                    for n in [1u64, 2, 13] {
                        turn.send(&ProcessId::new("b").unwrap(), &n).unwrap();
                    }
                }
                Input::Message { message, .. } => {
                    assert_ne!(message, 13, "thirteen");
                    *total += message;
                }
                _ => {}
            }
        }
    }

    /// Runs the pair; `a`'s message 2 reaches `b` as junk of a known version. Returns `b`'s
    /// store.
    fn fragile_stores(dir: &Path) -> PathBuf {
        let ids = ["a", "b"].map(|s| ProcessId::new(s).unwrap());
        let mut c = Cluster::new(PathBuf::from(dir), Time::from_millis(1_700_000_000_000), 0);
        for id in &ids {
            let config = EngineConfig {
                id: id.clone(),
                peers: ids.iter().filter(|p| *p != id).cloned().collect(),
                tuning: Tuning::default(),
                seed: 1,
            };
            c.add(config, || Fragile);
        }
        c.set_filter(|d| {
            if d.from == 0 && d.kind == FrameKind::Data {
                Fate::Hold
            } else {
                Fate::Pass
            }
        });
        c.start_all();
        for _ in 0..200 {
            c.run_for(Duration::from_millis(10));
            for mut d in c.take_held(0, 1) {
                let mut f = Frame::decode(&d.bytes).unwrap();
                if f.seq.0 == 2 {
                    f.payload = ken::store::wrap_payload(1, b"\xff\xff\xff");
                }
                d.bytes = f.encode().unwrap();
                c.in_flight_mut().push_back(d);
            }
        }
        assert_eq!(*c.state(1), 1);
        assert_eq!(c.engine(1).stats().turns_panicked, 1);
        c.node(1).path().to_path_buf()
    }

    #[test]
    fn the_views_show_the_app_its_dead_letters_and_its_poison_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let ken = PathBuf::from(env!("CARGO_BIN_EXE_ken"));
        let store = fragile_stores(dir.path());
        let s = view(&ken, &store, &[]);
        assert_eq!(s["app"], "fragile");
        assert_eq!(u(&s["schema_version"]), 1);
        assert_eq!(u(&s["dead_letters"]), 1);
        assert_eq!(u(&s["poison_inputs"]), 1);
        let letters = view(&ken, &store, &["dead-letters"]);
        let letters = arr(&letters["dead_letters"]);
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (
                letters[0]["peer"].as_str(),
                u(&letters[0]["seq"]),
                u(&letters[0]["version"])
            ),
            (Some("a"), 2, 1)
        );
        assert_eq!(u(&letters[0]["message"]["bytes"]), 3);
        let poison = view(&ken, &store, &["poison"]);
        let poison = arr(&poison["poison"]);
        assert_eq!(poison.len(), 1);
        assert_eq!(
            (
                poison[0]["kind"].as_str(),
                poison[0]["source"].as_str(),
                u(&poison[0]["seq"])
            ),
            (Some("message"), Some("a"), 3)
        );
        assert!(
            poison[0]["message"].as_str().unwrap().contains("thirteen"),
            "{poison:?}"
        );
        let text = super::inspect(&ken, &store, &[]).stdout;
        assert!(
            text.contains("app           fragile (schema version 1)"),
            "{text}"
        );
        assert!(text.contains("1 dead letters, 1 poison inputs"), "{text}");
    }

    fn ken_cmd(args: &[&str], store: &Path, rest: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ken"))
            .args(args)
            .arg(store)
            .args(rest)
            .output()
            .expect("run ken")
    }

    #[test]
    fn the_replay_view_lists_the_queue_and_the_summary_counts_the_operators_orders() {
        let dir = tempfile::tempdir().unwrap();
        let ken = PathBuf::from(env!("CARGO_BIN_EXE_ken"));
        let store = fragile_stores(dir.path());
        // Nothing queued yet.
        let s = view(&ken, &store, &[]);
        assert_eq!(u(&s["replays_queued"]), 0);
        assert_eq!(u(&s["poison_to_dead_letter"]), 0);
        assert!(arr(&view(&ken, &store, &["replay"])["replay"]).is_empty());
        let text = super::inspect(&ken, &store, &["replay"]).stdout;
        assert_eq!(text, "no replays queued\n");
        assert!(!super::inspect(&ken, &store, &[])
            .stdout
            .contains("next start"));
        // The operator queues the dead letter and moves the poison message.
        let out = ken_cmd(&["dead-letters"], &store, &["replay", "a", "2"]);
        assert!(out.status.success(), "{out:?}");
        let out = ken_cmd(&["poison"], &store, &["dead-letter", "a", "2"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("ken poison: ")
                && stderr.contains("no poison message from `a` with sequence number 2")
                && stderr.trim_end().lines().count() == 1,
            "{stderr}"
        );
        let out = ken_cmd(&["poison"], &store, &["dead-letter", "a", "3"]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("will be dead-lettered"),
            "{out:?}"
        );
        let s = view(&ken, &store, &[]);
        assert_eq!(u(&s["dead_letters"]), 0);
        assert_eq!(u(&s["replays_queued"]), 1);
        assert_eq!(u(&s["poison_to_dead_letter"]), 1);
        let queued = view(&ken, &store, &["replay"]);
        let queued = arr(&queued["replay"]);
        assert_eq!(queued.len(), 1);
        assert_eq!(
            (
                queued[0]["peer"].as_str(),
                u(&queued[0]["seq"]),
                u(&queued[0]["version"])
            ),
            (Some("a"), 2, 1)
        );
        assert_eq!(u(&queued[0]["message"]["bytes"]), 3);
        let text = super::inspect(&ken, &store, &["replay"]).stdout;
        assert!(text.contains("PEER") && text.contains("ERROR"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        let text = super::inspect(&ken, &store, &[]).stdout;
        assert!(
            text.contains("next start    1 replays queued (see the replay view), 1 poison messages to dead-letter"),
            "{text}"
        );
    }

    fn migrate(store: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ken"))
            .args(["app", "bank", "migrate"])
            .arg(store)
            .args(args)
            .output()
            .expect("run ken app bank migrate")
    }

    #[test]
    fn migrate_dry_run_reports_refuses_other_apps_and_requires_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let bank = dir.path().join("bank.ken");
        let app = AppIdentity {
            name: "bank".into(),
            schema_version: 1,
        };
        let (mut s, _) = Store::open_for_app(&bank, "m1", &StoreOptions::default(), &app).unwrap();
        s.commit(&ken::store::Batch {
            turns: 1,
            table_writes: vec![ken::store::TableWrite {
                table: "t".into(),
                key: b"k".to_vec(),
                value: Some(codec::encode(&1u64)),
            }],
            ..Default::default()
        })
        .unwrap();
        drop(s);
        let out = migrate(&bank, &["--dry-run"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.contains("`bank` store at schema version 1: nothing to migrate"),
            "{stdout}"
        );

        let out = migrate(&bank, &[]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run"));

        let fragile = fragile_stores(dir.path());
        let out = migrate(&fragile, &["--dry-run"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("`fragile`")
                && stderr.contains("`bank`")
                && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
}

/// A read-write SQLite connection that writes through the `ken-wal` shim, as the owner does,
/// so pages it writes keep their checksums: the damage these tests make is to records.
fn raw_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    ken_store::vfs::register().expect("the ken-wal VFS registers");
    rusqlite::Connection::open_with_flags_and_vfs(
        path,
        rusqlite::OpenFlags::default(),
        ken_store::vfs::VFS_NAME,
    )
}

/// `ken admit STORE PEER`: refuses a store in use and an unknown peer with one clear line
/// and writes nothing; on a stopped store it records the admission (a `ken.admit` row the
/// engine consumes; the engine's side is tested in ken/tests/it/replace.rs).
#[test]
fn ken_admit_records_an_admission_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ken");
    let (mut store, _) = ken_store::Store::open(&path, "a").unwrap();
    store
        .commit(&ken_store::Batch {
            now_ms: 1,
            turns: 1,
            peers: vec![ken_store::PeerRow {
                peer: "b".into(),
                incarnation: 0xABCD,
                next_seq: 3,
                acked: 1,
                delivered: 4,
                forgotten: 0,
            }],
            ..ken_store::Batch::default()
        })
        .unwrap();
    let admit = |peer: &str| {
        Command::new(env!("CARGO_BIN_EXE_ken"))
            .args(["admit"])
            .arg(&path)
            .arg(peer)
            .output()
            .unwrap()
    };
    let out = admit("b");
    assert!(!out.status.success(), "the owner runs: refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    drop(store);

    let out = admit("zz");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no peer `zz`") && err.contains("b"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = admit("b");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("000000000000abcd"), "{said}");
    let reader = ken_store::Reader::open(&path).unwrap();
    assert!(reader
        .table_get(ken::living::ADMIT_TABLE, b"b")
        .unwrap()
        .is_some());
}
