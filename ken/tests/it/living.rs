//! Living code (issue 14): application identity and schema versions in the store,
//! migrations (one transaction, crash points inside), messages across versions (held,
//! upgraded, dead-lettered), and panics contained (turn discarded, input recorded and held,
//! run once by a fixed handler after a restart).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ken::client::ReplyBody;
use ken::engine::EngineConfig;
use ken::living::{self, DeadLetter, HeldPair, HeldReason, HeldSource, Poison};
use ken::store::{codec, AppIdentity, OpenError, Reader, Store, StoreOptions};
use ken::testing::{Cluster, Fate};
use ken::transport::{Frame, FrameKind};
use ken::{ClientId, Config, Handler, Input, Migration, ProcessId, Seq, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;
/// The value whose turn panics while the handler is buggy.
const POISON: u64 = 13;

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

fn seen_key(from: &ProcessId, seq: Seq) -> Vec<u8> {
    let mut k = from.as_str().as_bytes().to_vec();
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Version 1 of the `ledger` application: sums numbers (messages and requests) into its
/// root and records each message in table `seen`. `a` and `c` send `send` to `b` at their
/// start; `b` sets timer `t` if `timer`; `solo` writes five rows at its start. While `buggy`
/// is set, the value [`POISON`] and the timer panic.
#[derive(Clone, Default)]
struct V1 {
    buggy: Arc<AtomicBool>,
    send: Vec<u64>,
    timer: bool,
    finish: bool,
}

impl Handler for V1 {
    const APP: &'static str = "ledger";
    type State = u64;
    type Message = u64;
    type Request = u64;
    type Reply = u64;
    fn on_turn(&self, total: &mut u64, turn: &mut Turn<'_, u64, u64>, input: Input<u64, u64>) {
        let buggy = self.buggy.load(Ordering::SeqCst);
        match input {
            Input::Start => match turn.id().as_str() {
                "a" | "c" => {
                    for n in &self.send {
                        turn.send(&pid("b"), n).unwrap();
                    }
                }
                "b" if self.timer => turn.set_timer("t", Duration::from_secs(1)),
                "solo" => {
                    for i in 1..=5u64 {
                        turn.table("seen").put(i.to_be_bytes(), &i);
                        *total += i;
                    }
                }
                _ => {}
            },
            Input::Message { from, seq, message } => {
                // The state changes before the panic: the rollback must undo it.
                *total += message;
                if message == POISON && buggy {
                    panic!("poison message {message}");
                }
                turn.table("seen").put(seen_key(&from, seq), &message);
            }
            Input::Request { request, .. } => {
                *total += request;
                if request == POISON && buggy {
                    panic!("poison request {request}");
                }
                turn.reply(total).unwrap();
            }
            Input::Timer { .. } => {
                *total += 1000;
                if buggy {
                    panic!("timer bug");
                }
            }
            _ => {}
        }
    }
    fn finished(&self, total: &u64) -> Option<String> {
        self.finish.then(|| format!("total {total}"))
    }
}

/// Version 2 of `ledger`: messages carry a memo, the root counts entries, and `seen` rows
/// are (value, memo).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct V2State {
    total: u64,
    entries: u64,
}

#[derive(Clone, Default)]
struct V2 {
    send: Vec<u64>,
    finish: bool,
    /// Makes the migration step fail (nothing written).
    failing_migration: bool,
    /// The fixed upgrade hook: a "version 1" message that is really (value, memo) (a
    /// sender's bug) is read as such instead of failing (dead-lettered).
    lenient_upgrade: Arc<AtomicBool>,
}

impl Handler for V2 {
    const APP: &'static str = "ledger";
    const SCHEMA_VERSION: u32 = 2;
    type State = V2State;
    type Message = (u64, String);
    type Request = u64;
    type Reply = u64;
    fn on_turn(
        &self,
        s: &mut V2State,
        turn: &mut Turn<'_, (u64, String), u64>,
        input: Input<(u64, String), u64>,
    ) {
        match input {
            Input::Start if turn.id().as_str() == "a" => {
                for n in &self.send {
                    turn.send(&pid("b"), &(*n, "v2".to_string())).unwrap();
                }
            }
            Input::Message {
                from,
                seq,
                message: (v, memo),
            } => {
                s.total += v;
                s.entries += 1;
                turn.table("seen").put(seen_key(&from, seq), &(v, memo));
            }
            _ => {}
        }
    }
    fn migrate(&self, from_version: u32, m: &mut Migration<'_>) -> Result<(), String> {
        assert_eq!(from_version, 1);
        let total: u64 = m.root()?;
        let rows: Vec<(Vec<u8>, u64)> = m.rows("seen")?;
        for (k, v) in &rows {
            m.put("seen", k, &(*v, "migrated".to_string()));
        }
        if self.failing_migration {
            return Err("the step failed on purpose".into());
        }
        m.set_root(&V2State {
            total,
            entries: rows.len() as u64,
        });
        Ok(())
    }
    fn upgrade_message(&self, from_version: u32, bytes: &[u8]) -> Result<(u64, String), String> {
        assert_eq!(from_version, 1);
        if self.lenient_upgrade.load(Ordering::SeqCst) {
            if let Ok(m) = codec::decode::<(u64, String)>(bytes) {
                return Ok(m);
            }
        }
        let v: u64 = codec::decode(bytes).map_err(|e| e.to_string())?;
        Ok((v, "v1".to_string()))
    }
    fn finished(&self, s: &V2State) -> Option<String> {
        self.finish
            .then(|| format!("total {} entries {}", s.total, s.entries))
    }
}

/// A cluster of `ids` over the stores in `dir` (which outlives it).
fn cluster<H: Handler>(
    dir: &Path,
    ids: &[&str],
    handler: impl Fn() -> H + Clone + 'static,
) -> Cluster<H> {
    let mut c = Cluster::new(PathBuf::from(dir), Time::from_millis(T0), 1);
    let all: Vec<ProcessId> = ids.iter().map(|s| pid(s)).collect();
    for id in &all {
        let config = EngineConfig {
            id: id.clone(),
            peers: all.iter().filter(|p| *p != id).cloned().collect(),
            tuning: Tuning::default(),
            seed: 1,
        };
        c.add(config, handler.clone());
    }
    c
}

fn app(name: &str, version: u32) -> AppIdentity {
    AppIdentity {
        name: name.into(),
        schema_version: version,
    }
}

fn meta_app(path: &Path) -> Option<AppIdentity> {
    Reader::open(path).unwrap().meta().unwrap().app
}

fn rows<V: serde::de::DeserializeOwned>(path: &Path, table: &str) -> Vec<(Vec<u8>, V)> {
    Reader::open(path)
        .unwrap()
        .table_scan(table, b"", None, 1000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, codec::decode(&v).unwrap()))
        .collect()
}

/// The bytes of a store's files (main and -wal), to prove a refusal changed nothing.
fn files(path: &Path) -> Vec<Option<Vec<u8>>> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.to_path_buf(), PathBuf::from(wal)]
        .iter()
        .map(|p| std::fs::read(p).ok())
        .collect()
}

/// A one-node `solo` store written by V1 (root 15, five `seen` rows).
fn solo_v1(dir: &Path) -> PathBuf {
    let mut c = cluster(dir, &["solo"], V1::default);
    c.start_all();
    c.run_for(Duration::from_millis(100));
    assert_eq!(*c.state(0), 15);
    c.node(0).path().to_path_buf()
}

// ---- identity ----

#[test]
fn a_store_records_its_app_and_another_app_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = solo_v1(dir.path());
    assert_eq!(meta_app(&path), Some(app("ledger", 1)));
    let before = files(&path);
    let err = Store::open_for_app(&path, "solo", &StoreOptions::default(), &app("kv", 1))
        .expect_err("another application's store must be refused");
    assert!(matches!(err, OpenError::WrongApp { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("`ledger`") && text.contains("`kv`") && !text.contains('\n'),
        "{text}"
    );
    assert!(files(&path) == before, "a refusal changed the store");
    // Control: the right application opens it.
    Store::open_for_app(&path, "solo", &StoreOptions::default(), &app("ledger", 1)).unwrap();
}

#[test]
fn a_newer_schema_is_refused_naming_both_versions_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = solo_v1(dir.path());
    {
        let (mut store, mut rec) =
            Store::open_for_app(&path, "solo", &StoreOptions::default(), &app("ledger", 2))
                .unwrap();
        assert_eq!(store.app(), Some(&app("ledger", 1)), "older: opened as is");
        ken::upgrade::apply(&mut store, &mut rec, &V2::default(), &Default::default())
            .unwrap()
            .expect("migrated");
        assert_eq!(store.app(), Some(&app("ledger", 2)));
    }
    let before = files(&path);
    let err = Store::open_for_app(&path, "solo", &StoreOptions::default(), &app("ledger", 1))
        .expect_err("a downgrade must be refused");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            OpenError::NewerSchema {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.contains("version 2") && text.contains("version 1"),
        "{text}"
    );
    assert!(files(&path) == before, "a refusal changed the store");
    assert_eq!(meta_app(&path), Some(app("ledger", 2)));
}

#[test]
fn a_store_written_before_identities_is_adopted_with_its_outbox_enveloped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.ken");
    {
        // What an older runtime wrote: no `app` row, a bare message in the outbox.
        let (mut store, _) = Store::open(&path, "old").unwrap();
        store
            .commit(&ken::store::Batch {
                turns: 1,
                root: Some(codec::encode(&7u64)),
                outbox_appends: vec![ken::store::OutboxRow {
                    peer: "b".into(),
                    seq: 1,
                    payload: codec::encode(&5u64),
                    created_ms: 1,
                }],
                peers: vec![ken::store::PeerRow {
                    peer: "b".into(),
                    incarnation: 0,
                    next_seq: 2,
                    acked: 0,
                    delivered: 0,
                    forgotten: 0,
                }],
                ..Default::default()
            })
            .unwrap();
    }
    assert_eq!(meta_app(&path), None);
    let (store, rec) =
        Store::open_for_app(&path, "old", &StoreOptions::default(), &app("ledger", 1)).unwrap();
    assert_eq!(store.app(), Some(&app("ledger", 1)));
    let expected = ken::store::wrap_payload(1, &codec::encode(&5u64));
    assert_eq!(rec.outbox[0].payload, expected);
    drop(store);
    assert_eq!(meta_app(&path), Some(app("ledger", 1)));
    let stored = Reader::open(&path).unwrap().outbox(None, 10).unwrap();
    assert_eq!(stored[0].payload, expected, "the envelope is durable");
    assert!(Reader::open(&path).unwrap().verify().unwrap().is_empty());
}

// ---- migrations ----

#[test]
fn a_dry_run_reports_and_writes_nothing_then_the_migration_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = solo_v1(dir.path());
    let commits = Reader::open(&path).unwrap().meta().unwrap().commits;
    let report = ken::upgrade::dry_run(&path, &V2::default()).unwrap();
    assert_eq!((report.from, report.to), (1, 2));
    assert_eq!(report.tables.len(), 1);
    assert_eq!(
        (report.tables[0].table.as_str(), report.tables[0].changed),
        ("seen", 5)
    );
    assert!(report.root_bytes_after.is_some(), "{report}");
    assert_eq!(report.sample.len(), 5);
    assert!(report.to_string().contains("1 -> 2"), "{report}");
    assert_eq!(meta_app(&path), Some(app("ledger", 1)), "the dry run wrote");
    assert_eq!(
        Reader::open(&path).unwrap().meta().unwrap().commits,
        commits
    );

    // A failing step writes nothing either.
    let mut c = cluster(dir.path(), &["solo"], || V2 {
        failing_migration: true,
        ..V2::default()
    });
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.start(0)));
    assert!(failed.is_err(), "a failing migration must refuse to start");
    drop(c);
    assert_eq!(meta_app(&path), Some(app("ledger", 1)));

    let mut c = cluster(dir.path(), &["solo"], V2::default);
    c.start_all();
    assert_eq!(
        *c.state(0),
        V2State {
            total: 15,
            entries: 5
        }
    );
    drop(c);
    assert_eq!(meta_app(&path), Some(app("ledger", 2)));
    let seen: Vec<(Vec<u8>, (u64, String))> = rows(&path, "seen");
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|(_, (_, memo))| memo == "migrated"));
    let after = Reader::open(&path).unwrap().meta().unwrap().commits;
    assert_eq!(after, commits + 1, "one commit for the whole migration");
    // Applied once: a restart finds nothing to migrate.
    let report = ken::upgrade::dry_run(&path, &V2::default()).unwrap();
    assert_eq!((report.from, report.to), (2, 2));
    let mut c = cluster(dir.path(), &["solo"], V2::default);
    c.start_all();
    drop(c);
    assert_eq!(Reader::open(&path).unwrap().meta().unwrap().commits, after);
}

/// Child mode: run V2 (finishing at once) on the store named by the environment.
#[test]
fn migrate_child() {
    let Ok(store) = std::env::var("KEN_TEST_MIGRATE_STORE") else {
        return;
    };
    let mut config = Config::new(pid("solo"), "127.0.0.1:0".parse().unwrap(), store);
    config.finish_linger = Duration::ZERO;
    let handler = V2 {
        finish: true,
        ..V2::default()
    };
    if let Err(e) = ken::run(config, handler) {
        panic!("run failed: {e}");
    }
}

fn run_migrate_child(store: &Path, crash_at: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "living::migrate_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEN_TEST_MIGRATE_STORE", store)
        .env("KEN_CRASH_AT", crash_at)
        .output()
        .expect("run the child")
}

#[test]
fn a_crash_inside_the_migration_leaves_the_old_version_and_a_restart_migrates_once() {
    for point in ["migrate_step", "migrate_commit"] {
        let dir = tempfile::tempdir().unwrap();
        let path = solo_v1(dir.path());
        let root_before = Reader::open(&path).unwrap().root().unwrap();
        let out = run_migrate_child(&path, point);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(9), "{point}: {stderr}");
        assert!(
            stderr.contains(&format!("\"point\":\"{point}\"")),
            "{point}: {stderr}"
        );
        assert_eq!(meta_app(&path), Some(app("ledger", 1)), "{point}");
        assert_eq!(Reader::open(&path).unwrap().root().unwrap(), root_before);
        let seen: Vec<(Vec<u8>, u64)> = rows(&path, "seen");
        assert_eq!(seen.len(), 5, "{point}: the old rows are intact");
        let out = run_migrate_child(&path, "");
        assert!(out.status.success(), "{point}: restart failed: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("total 15 entries 5"),
            "{point}: {out:?}"
        );
        assert_eq!(meta_app(&path), Some(app("ledger", 2)));
    }
}

// ---- messages across versions ----

/// Runs the cluster for `by` in small steps, passing every datagram from `from` to `to`
/// through `rewrite` (the frames the filter held).
fn run_rewriting<H: Handler>(
    c: &mut Cluster<H>,
    from: usize,
    to: usize,
    by: Duration,
    rewrite: &dyn Fn(&mut Frame),
) {
    let step = Duration::from_millis(10);
    let mut left = by;
    while !left.is_zero() {
        c.run_for(step);
        left = left.saturating_sub(step);
        for mut d in c.take_held(from, to) {
            let mut frame = Frame::decode(&d.bytes).unwrap();
            rewrite(&mut frame);
            d.bytes = frame.encode().unwrap();
            c.in_flight_mut().push_back(d);
        }
    }
}

fn hold_data_from(c: &mut Cluster<impl Handler>, from: usize) {
    c.set_filter(move |d| {
        if d.from == from && d.kind == FrameKind::Data {
            Fate::Hold
        } else {
            Fate::Pass
        }
    });
}

fn set_version(frame: &mut Frame, version: u32) {
    frame.payload[..4].copy_from_slice(&version.to_le_bytes());
}

#[test]
fn a_newer_version_message_is_held_unacknowledged_and_retransmitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), &["a", "b"], || V2 {
        send: vec![1, 2],
        ..V2::default()
    });
    hold_data_from(&mut c, 0);
    c.start_all();
    // The frames of `a` claim version 3: `b` (version 2) must hold them.
    run_rewriting(&mut c, 0, 1, Duration::from_secs(5), &|f| set_version(f, 3));
    let b = c.engine(1);
    assert_eq!(*c.state(1), V2State::default(), "nothing consumed");
    assert!(b.stats().messages_held >= 2, "{:?}", b.stats());
    assert_eq!(b.peer_status()[0].delivered_committed, 0);
    let held = b.held();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].reason, HeldReason::NewerVersion { version: 3 });
    assert_eq!(
        held[0].source,
        HeldSource::Peer {
            peer: pid("a"),
            seq: 1
        }
    );
    let a = c.engine(0);
    assert_eq!(a.peer_status()[0].outbox, 2, "the sender keeps them");
    assert!(a.stats().retransmits >= 2, "{:?}", a.stats());
    // The hold is on the record (`ken.held`), for `ken inspect` on a live or dead store.
    let b_path = c.node(1).path().to_path_buf();
    let held_rows = || rows::<HeldPair>(&b_path, living::HELD_TABLE);
    let first = held_rows();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, b"a".to_vec());
    assert_eq!(
        (first[0].1.seq, first[0].1.version, first[0].1.known),
        (1, 3, 2)
    );
    // The same binary restarted holds the same message again: the record and its start
    // time are kept.
    c.restart(1);
    run_rewriting(&mut c, 0, 1, Duration::from_secs(2), &|f| set_version(f, 3));
    assert_eq!(c.engine(1).held().len(), 1);
    assert_eq!(
        held_rows(),
        first,
        "one record per held message, its first start kept"
    );
    // The receiver "upgraded" (here: the frames stop claiming a version it cannot read)
    // and restarted: both are delivered, once, in order.
    c.clear_filter();
    c.restart(1);
    c.run_until(Duration::from_secs(30), |c| c.state(1).entries == 2);
    assert_eq!(c.state(1).total, 3);
    c.run_for(Duration::from_secs(2));
    assert_eq!(c.engine(0).peer_status()[0].outbox, 0);
    assert_eq!(c.state(1).entries, 2, "exactly once");
    assert!(
        held_rows().is_empty(),
        "the record goes with the batch that consumes the message"
    );
}

#[test]
fn an_older_version_message_is_decoded_through_the_upgrade_hook() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), &["a", "b"], || V2 {
        send: vec![4, 5],
        ..V2::default()
    });
    hold_data_from(&mut c, 0);
    c.start_all();
    // Rewrite `a`'s messages as a version-1 sender would have encoded them.
    run_rewriting(&mut c, 0, 1, Duration::from_secs(2), &|f| {
        let (_, bytes) = ken::store::unwrap_payload(&f.payload).unwrap();
        let (v, _memo): (u64, String) = codec::decode(bytes).unwrap();
        f.payload = ken::store::wrap_payload(1, &codec::encode(&v));
    });
    c.run_until(Duration::from_secs(10), |c| c.state(1).entries == 2);
    assert_eq!(c.state(1).total, 9);
    let path = c.node(1).path().to_path_buf();
    drop(c);
    let seen: Vec<(Vec<u8>, (u64, String))> = rows(&path, "seen");
    assert!(seen.iter().all(|(_, (_, memo))| memo == "v1"), "{seen:?}");
}

#[test]
fn an_undecodable_message_of_a_known_version_is_dead_lettered_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path(), &["a", "b"], || V1 {
        send: vec![1, 2, 3],
        ..V1::default()
    });
    hold_data_from(&mut c, 0);
    c.start_all();
    run_rewriting(&mut c, 0, 1, Duration::from_secs(2), &|f| {
        if f.seq.0 == 2 {
            f.payload = ken::store::wrap_payload(1, &[0xff; 3]);
        }
    });
    c.run_until(Duration::from_secs(10), |c| {
        c.engine(0).peer_status()[0].outbox == 0
    });
    assert_eq!(*c.state(1), 4, "1 and 3 delivered: the pair did not stall");
    assert_eq!(c.engine(1).stats().dead_letters, 1);
    let path = c.node(1).path().to_path_buf();
    drop(c);
    let letters: Vec<(Vec<u8>, DeadLetter)> = rows(&path, ken::living::DEAD_LETTERS_TABLE);
    assert_eq!(letters.len(), 1);
    let l = &letters[0].1;
    assert_eq!((l.peer.as_str(), l.seq, l.version), ("a", 2, 1));
    assert_eq!(l.bytes, vec![0xff; 3]);
    assert!(!l.error.is_empty());
}

/// The negative control of holding: with the test-only switch, a newer-version message is
/// consumed and dropped, and the sum misses it.
#[cfg(feature = "unsafe-drop-held")]
#[test]
fn control_dropping_held_messages_loses_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(PathBuf::from(dir.path()), Time::from_millis(T0), 1);
    let ids = [pid("a"), pid("b")];
    for id in &ids {
        let tuning = Tuning {
            drop_held_messages: true,
            ..Tuning::default()
        };
        let config = EngineConfig {
            id: id.clone(),
            peers: ids.iter().filter(|p| *p != id).cloned().collect(),
            tuning,
            seed: 1,
        };
        c.add(config, || V2 {
            send: vec![1, 2],
            ..V2::default()
        });
    }
    hold_data_from(&mut c, 0);
    c.start_all();
    run_rewriting(&mut c, 0, 1, Duration::from_secs(2), &|f| set_version(f, 3));
    c.clear_filter();
    c.run_for(Duration::from_secs(5));
    assert_eq!(c.engine(0).peer_status()[0].outbox, 0, "acknowledged");
    assert_eq!(c.state(1).entries, 0, "lost: consumed and dropped");
}

// ---- dead letters: replay and discard (operator, offline, on the record) ----

/// `a` sends 1, 2, 3 to `b` (both version 2); message 2 claims version 1 while holding
/// version-2 bytes, so `b`'s upgrade hook fails on it: dead-lettered. Returns the cluster
/// (running) and the fix switch.
fn dead_letter_2(dir: &Path) -> (Cluster<V2>, Arc<AtomicBool>) {
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&fixed);
    let mut c = cluster(dir, &["a", "b"], move || V2 {
        send: vec![1, 2, 3],
        lenient_upgrade: Arc::clone(&flag),
        ..V2::default()
    });
    hold_data_from(&mut c, 0);
    c.start_all();
    run_rewriting(&mut c, 0, 1, Duration::from_secs(2), &|f| {
        if f.seq.0 == 2 {
            set_version(f, 1);
        }
    });
    c.clear_filter();
    c.run_until(Duration::from_secs(10), |c| {
        c.engine(0).peer_status()[0].outbox == 0
    });
    assert_eq!(c.state(1).total, 4, "1 and 3 applied, 2 dead-lettered");
    assert_eq!(c.engine(1).stats().dead_letters, 1);
    (c, fixed)
}

fn turn_log_kinds(path: &Path) -> Vec<(String, String, u64)> {
    Reader::open(path)
        .unwrap()
        .turn_log(1000)
        .unwrap()
        .into_iter()
        .map(|e| (e.input_kind, e.input_source, e.input_seq))
        .collect()
}

#[test]
fn a_dead_letter_replayed_by_the_operator_runs_once_with_the_fixed_binary() {
    use ken::living::{dead_letter_action, DeadLetterAction, REPLAY_TABLE};
    let dir = tempfile::tempdir().unwrap();
    let (mut c, fixed) = dead_letter_2(dir.path());
    let path = c.node(1).path().to_path_buf();
    // Refused while the process runs (its owner lock is held): nothing written.
    let before = files(&path);
    let err = dead_letter_action(&path, "a", 2, DeadLetterAction::Replay)
        .expect_err("a live store must be refused");
    assert!(err.contains("in use") && !err.contains('\n'), "{err}");
    assert!(files(&path) == before, "the refusal wrote");
    // Stopped: queued, on the record.
    c.crash(1);
    let err = dead_letter_action(&path, "a", 9, DeadLetterAction::Replay).unwrap_err();
    assert!(
        err.contains("no dead letter from `a` with sequence number 9"),
        "{err}"
    );
    let done = dead_letter_action(&path, "a", 2, DeadLetterAction::Replay).unwrap();
    assert!(done.contains("queued for replay"), "{done}");
    assert!(rows::<DeadLetter>(&path, ken::living::DEAD_LETTERS_TABLE).is_empty());
    assert_eq!(rows::<DeadLetter>(&path, REPLAY_TABLE).len(), 1);
    assert!(
        turn_log_kinds(&path).contains(&("dead_letter_replay".into(), "a".into(), 2)),
        "{:?}",
        turn_log_kinds(&path)
    );
    // The fixed binary starts: the letter runs once, its row deleted with the turn.
    fixed.store(true, Ordering::SeqCst);
    c.start(1);
    c.run_until(Duration::from_secs(5), |c| c.state(1).total == 6);
    assert_eq!(c.state(1).entries, 3);
    c.restart(1);
    c.run_for(Duration::from_secs(2));
    assert_eq!(c.state(1).total, 6, "exactly once across a restart");
    drop(c);
    assert!(rows::<DeadLetter>(&path, REPLAY_TABLE).is_empty());
    assert!(rows::<DeadLetter>(&path, ken::living::DEAD_LETTERS_TABLE).is_empty());
    assert!(turn_log_kinds(&path).contains(&("replay".into(), "a".into(), 2)));
    let seen: Vec<(Vec<u8>, (u64, String))> = rows(&path, "seen");
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn a_replay_that_still_fails_is_dead_lettered_again_and_a_discard_removes_it() {
    use ken::living::{dead_letter_action, DeadLetterAction, REPLAY_TABLE};
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _fixed) = dead_letter_2(dir.path());
    let path = c.node(1).path().to_path_buf();
    c.crash(1);
    dead_letter_action(&path, "a", 2, DeadLetterAction::Replay).unwrap();
    // The same (unfixed) binary: the replay fails again, back in the dead letters.
    c.start(1);
    c.run_for(Duration::from_secs(1));
    assert_eq!(c.state(1).total, 4);
    c.crash(1);
    assert!(rows::<DeadLetter>(&path, REPLAY_TABLE).is_empty());
    let letters: Vec<(Vec<u8>, DeadLetter)> = rows(&path, ken::living::DEAD_LETTERS_TABLE);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].1.peer.as_str(), letters[0].1.seq), ("a", 2));
    // Discarded: gone for good, on the record; a restart applies nothing.
    let done = dead_letter_action(&path, "a", 2, DeadLetterAction::Discard).unwrap();
    assert!(done.contains("discarded"), "{done}");
    assert!(rows::<DeadLetter>(&path, ken::living::DEAD_LETTERS_TABLE).is_empty());
    assert!(turn_log_kinds(&path).contains(&("dead_letter_discard".into(), "a".into(), 2)));
    c.start(1);
    c.run_for(Duration::from_secs(1));
    assert_eq!(c.state(1).total, 4);
    assert_eq!(c.state(1).entries, 2);
}

// ---- panics ----

#[test]
fn a_panicking_message_is_rolled_back_and_held_while_other_peers_flow_then_run_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let buggy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&buggy);
    let mut c = cluster(dir.path(), &["a", "b", "c"], move || V1 {
        buggy: Arc::clone(&flag),
        send: vec![1, 2, POISON, 100],
        ..V1::default()
    });
    c.start_all();
    c.run_for(Duration::from_secs(10));
    // `a` and `c` send the same list: both pairs hold at seq 3 (the poison 13), everything
    // before it is consumed exactly once, and neither pair blocks the other.
    assert_eq!(
        *c.state(1),
        2 * (1 + 2),
        "the panicking turns left no trace"
    );
    let b = c.engine(1);
    assert_eq!(
        b.stats().turns_panicked,
        2,
        "once per held pair in this life"
    );
    assert!(b.stats().messages_held > 0);
    assert_eq!(b.held().len(), 2);
    for p in b.peer_status() {
        assert_eq!(p.delivered_committed, 2, "{p:?}");
    }
    assert_eq!(c.engine(0).peer_status()[0].outbox, 2, "13 and 100 kept");
    let path = c.node(1).path().to_path_buf();
    let poison: Vec<(Vec<u8>, Poison)> = rows(&path, ken::living::POISON_TABLE);
    assert_eq!(poison.len(), 2);
    assert!(poison
        .iter()
        .all(|(_, p)| p.kind == "message" && p.seq == 3 && p.message == "poison message 13"));
    // A restart of the same (buggy) binary tries again, and holds again: no crash loop.
    c.restart(1);
    c.run_for(Duration::from_secs(5));
    assert_eq!(*c.state(1), 6);
    assert_eq!(c.engine(1).stats().turns_panicked, 2);
    // The fixed binary runs the held inputs exactly once each, and what followed them.
    buggy.store(false, Ordering::SeqCst);
    c.restart(1);
    c.run_until(Duration::from_secs(30), |c| {
        *c.state(1) == 2 * (1 + 2 + 13 + 100)
    });
    c.run_for(Duration::from_secs(5));
    assert_eq!(*c.state(1), 2 * 116, "exactly once");
    assert_eq!(c.engine(0).peer_status()[0].outbox, 0);
    assert_eq!(c.engine(2).peer_status()[0].outbox, 0);
    assert!(c.engine(1).held().is_empty());
}

/// `a` sends 1, 2, [`POISON`], 100 to `b`, both running the buggy V1 until the returned
/// flag is cleared (a fixed binary).
fn poison_pair(dir: &Path) -> (Cluster<V1>, Arc<AtomicBool>) {
    let buggy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&buggy);
    let c = cluster(dir, &["a", "b"], move || V1 {
        buggy: Arc::clone(&flag),
        send: vec![1, 2, POISON, 100],
        ..V1::default()
    });
    (c, buggy)
}

#[test]
fn a_poison_message_moved_to_the_dead_letters_by_the_operator_frees_its_pair_on_the_same_binary() {
    use ken::living::{
        dead_letter_action, poison_dead_letter, DeadLetterAction, PoisonSkip, DEAD_LETTERS_TABLE,
        SKIP_POISON_TABLE,
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut c, buggy) = poison_pair(dir.path());
    c.start_all();
    c.run_until(Duration::from_secs(10), |c| {
        c.engine(1).stats().turns_panicked == 1
    });
    c.run_for(Duration::from_secs(2));
    assert_eq!(*c.state(1), 3, "held at the poison 13; 100 waits behind it");
    assert_eq!(c.engine(0).peer_status()[0].outbox, 2);
    let path = c.node(1).path().to_path_buf();
    // Refused while the process runs: one line, nothing written.
    let before = files(&path);
    let err = poison_dead_letter(&path, "a", 3).expect_err("a live store must be refused");
    assert!(err.contains("in use") && !err.contains('\n'), "{err}");
    assert!(files(&path) == before, "the refusal wrote");
    // Stopped: a message that is not poison is refused; the poison one is moved, on the
    // record.
    c.crash(1);
    let err = poison_dead_letter(&path, "a", 2).unwrap_err();
    assert!(
        err.contains("no poison message from `a` with sequence number 2") && !err.contains('\n'),
        "{err}"
    );
    let done = poison_dead_letter(&path, "a", 3).unwrap();
    assert!(done.contains("will be dead-lettered"), "{done}");
    let skips: Vec<(Vec<u8>, PoisonSkip)> = rows(&path, SKIP_POISON_TABLE);
    assert_eq!(skips.len(), 1);
    assert_eq!(skips[0].1.error, "poison message 13");
    assert!(
        turn_log_kinds(&path).contains(&("poison_dead_letter".into(), "a".into(), 3)),
        "{:?}",
        turn_log_kinds(&path)
    );
    let err = poison_dead_letter(&path, "a", 3).unwrap_err();
    assert!(err.contains("already"), "{err}");
    // The SAME (buggy) binary starts: 13 is consumed as a dead letter without running, and
    // the pair flows again.
    c.start(1);
    c.run_until(Duration::from_secs(30), |c| *c.state(1) == 103);
    c.run_until(Duration::from_secs(10), |c| {
        c.engine(0).peer_status()[0].outbox == 0
    });
    assert_eq!(c.engine(1).stats().turns_panicked, 0, "not run again");
    assert!(c.engine(1).held().is_empty());
    c.restart(1);
    c.run_for(Duration::from_secs(3));
    assert_eq!(*c.state(1), 103, "exactly once across a restart");
    c.crash(1);
    assert!(rows::<PoisonSkip>(&path, SKIP_POISON_TABLE).is_empty());
    let letters: Vec<(Vec<u8>, DeadLetter)> = rows(&path, DEAD_LETTERS_TABLE);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0].1;
    assert_eq!((l.peer.as_str(), l.seq, l.version), ("a", 3, 1));
    assert_eq!(l.error, "poison message 13");
    assert_eq!(codec::decode::<u64>(&l.bytes).unwrap(), POISON);
    assert!(turn_log_kinds(&path).contains(&("dead_letter".into(), "a".into(), 3)));
    let seen: Vec<(Vec<u8>, u64)> = rows(&path, "seen");
    let values: Vec<u64> = seen.iter().map(|(_, v)| *v).collect();
    assert_eq!(
        values,
        vec![1, 2, 100],
        "delivered exactly once, 13 not run"
    );
    let err = poison_dead_letter(&path, "a", 3).unwrap_err();
    assert!(err.contains("consumed already"), "{err}");
    // The letter is an ordinary dead letter: replayed once the fix is deployed.
    dead_letter_action(&path, "a", 3, DeadLetterAction::Replay).unwrap();
    buggy.store(false, Ordering::SeqCst);
    c.start(1);
    c.run_until(Duration::from_secs(5), |c| *c.state(1) == 116);
    c.restart(1);
    c.run_for(Duration::from_secs(2));
    assert_eq!(*c.state(1), 116);
}

/// An operator's order to dead-letter poison message (a, 3) names a message of `a`'s
/// incarnation: when `a` is replaced (its disk destroyed, a new incarnation admitted), the
/// order is dropped with the old incarnation's messages and never consumes the new
/// incarnation's message 3. Here the new `a` sends the same poison value again: it panics
/// (held), as any poison does, instead of being dead-lettered by the stale order.
#[test]
fn a_poison_order_is_dropped_when_its_peer_is_replaced() {
    use ken::living::{poison_dead_letter, PoisonSkip, DEAD_LETTERS_TABLE, SKIP_POISON_TABLE};
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _buggy) = poison_pair(dir.path());
    c.config_mut(1).tuning.admit_replaced_peers = true;
    c.start_all();
    c.run_until(Duration::from_secs(10), |c| {
        c.engine(1).stats().turns_panicked == 1
    });
    let b_path = c.node(1).path().to_path_buf();
    c.crash(1);
    poison_dead_letter(&b_path, "a", 3).unwrap();
    assert_eq!(rows::<PoisonSkip>(&b_path, SKIP_POISON_TABLE).len(), 1);
    // a's disk is destroyed: it comes back as a new incarnation and sends 1, 2, 13, 100
    // again; b (admitting replaced peers) starts after it.
    c.crash(0);
    let a_path = c.node(0).path().to_path_buf();
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut p = a_path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    c.start(0);
    c.start(1);
    c.run_until(Duration::from_secs(30), |c| {
        c.engine(1).stats().peers_admitted == 1 && c.engine(1).stats().turns_panicked == 1
    });
    c.run_for(Duration::from_secs(2));
    assert!(
        rows::<PoisonSkip>(&b_path, SKIP_POISON_TABLE).is_empty(),
        "the order went with the old incarnation"
    );
    let letters: Vec<(Vec<u8>, DeadLetter)> = rows(&b_path, DEAD_LETTERS_TABLE);
    assert!(
        letters.is_empty(),
        "the new a's message 3 was dead-lettered: {letters:?}"
    );
    assert_eq!(
        c.engine(1).held().len(),
        1,
        "the new poison is held, as any poison"
    );
}

#[test]
fn a_panicking_request_gets_a_typed_error_and_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let buggy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&buggy);
    let mut c = cluster(dir.path(), &["b"], move || V1 {
        buggy: Arc::clone(&flag),
        ..V1::default()
    });
    c.start_all();
    let client = ClientId([3; 16]);
    let reply = |c: &Cluster<V1>, n: usize| -> ReplyBody {
        codec::decode(&c.node(0).replies()[n].payload).unwrap()
    };
    c.request(0, client, 1, &5);
    c.run_for(Duration::from_millis(100));
    assert_eq!(reply(&c, 0), ReplyBody::Ok(codec::encode(&5u64)));
    c.request(0, client, 2, &POISON);
    c.run_for(Duration::from_millis(100));
    assert_eq!(
        reply(&c, 1),
        ReplyBody::Panicked("poison request 13".into())
    );
    assert_eq!(*c.state(0), 5, "not applied");
    // A retry gets the same answer without running again.
    c.request(0, client, 2, &POISON);
    c.run_for(Duration::from_millis(100));
    assert_eq!(
        reply(&c, 2),
        ReplyBody::Panicked("poison request 13".into())
    );
    assert_eq!(c.engine(0).stats().turns_panicked, 1);
    // The process keeps serving: the next request is applied.
    c.request(0, client, 3, &7);
    c.run_for(Duration::from_millis(100));
    assert_eq!(reply(&c, 3), ReplyBody::Ok(codec::encode(&12u64)));
    let path = c.node(0).path().to_path_buf();
    let poison: Vec<(Vec<u8>, Poison)> = rows(&path, ken::living::POISON_TABLE);
    assert_eq!(poison.len(), 1);
    assert_eq!((poison[0].1.kind.as_str(), poison[0].1.seq), ("request", 2));
}

#[test]
fn a_panicking_timer_is_held_and_fires_once_after_a_fixed_restart() {
    let dir = tempfile::tempdir().unwrap();
    let buggy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&buggy);
    let mut c = cluster(dir.path(), &["b"], move || V1 {
        buggy: Arc::clone(&flag),
        timer: true,
        ..V1::default()
    });
    c.start_all();
    c.run_for(Duration::from_secs(5));
    assert_eq!(*c.state(0), 0);
    assert_eq!(
        c.engine(0).stats().turns_panicked,
        1,
        "held: not fired again"
    );
    let path = c.node(0).path().to_path_buf();
    assert_eq!(
        Reader::open(&path).unwrap().timers().unwrap().len(),
        1,
        "still set durably"
    );
    buggy.store(false, Ordering::SeqCst);
    c.restart(0);
    c.run_for(Duration::from_secs(5));
    assert_eq!(*c.state(0), 1000, "fired exactly once");
    c.restart(0);
    c.run_for(Duration::from_secs(5));
    assert_eq!(*c.state(0), 1000);
}
