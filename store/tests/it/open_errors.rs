//! Every way `Store::open` and `Reader::open` refuse a file, and that refusing changes
//! nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use ken_store::{codec, Batch, OpenError, Reader, Store, FORMAT_VERSION};

use crate::common::{child_command, line_reader, raw, temp_store, try_open};

#[test]
fn wrong_process_id_is_refused() {
    let t = temp_store();
    drop(try_open(&t.path, "a").unwrap());
    match try_open(&t.path, "b") {
        Err(OpenError::WrongProcess { expected, found }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("b", "a"));
        }
        other => panic!("expected WrongProcess, got {other:?}"),
    }
    // The refusal released the lock and changed nothing.
    let (_s, rec) = try_open(&t.path, "a").unwrap();
    assert!(!rec.created);
}

#[test]
fn newer_format_is_refused_without_touching_the_file() {
    let t = temp_store();
    drop(try_open(&t.path, "a").unwrap());
    {
        let conn = raw(&t.path);
        let newer = codec::seal(&(FORMAT_VERSION + 1).to_le_bytes());
        let n = conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
                [newer],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let before = std::fs::read(&t.path).unwrap();
    match try_open(&t.path, "a") {
        Err(OpenError::NewerFormat { found, supported }) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    assert!(matches!(
        Reader::open(&t.path),
        Err(OpenError::NewerFormat { .. })
    ));
    assert_eq!(std::fs::read(&t.path).unwrap(), before);
    let msg = try_open(&t.path, "a").unwrap_err().to_string();
    assert!(msg.contains("newer build"), "{msg}");
}

#[test]
fn an_older_format_is_refused_without_touching_the_file() {
    let t = temp_store();
    drop(try_open(&t.path, "a").unwrap());
    {
        let conn = raw(&t.path);
        let older = codec::seal(&1u32.to_le_bytes());
        let n = conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
                [older],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let before = std::fs::read(&t.path).unwrap();
    match try_open(&t.path, "a") {
        Err(OpenError::OlderFormat { found, supported }) => {
            assert_eq!((found, supported), (1, FORMAT_VERSION));
        }
        other => panic!("expected OlderFormat, got {other:?}"),
    }
    assert!(matches!(
        Reader::open(&t.path),
        Err(OpenError::OlderFormat { .. })
    ));
    assert_eq!(std::fs::read(&t.path).unwrap(), before);
    let msg = try_open(&t.path, "a").unwrap_err().to_string();
    assert!(
        msg.contains("older build") && msg.contains("no migration"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_not_a_ken_store() {
    let t = temp_store();
    let junk = b"this is a text file, not a database\n".repeat(200);
    std::fs::write(&t.path, &junk).unwrap();
    let err = try_open(&t.path, "a").unwrap_err();
    assert!(matches!(err, OpenError::NotAKenStore { .. }), "{err:?}");
    assert!(err.to_string().contains("not a Ken store"), "{err}");
    assert!(matches!(
        Reader::open(&t.path),
        Err(OpenError::NotAKenStore { .. })
    ));
    assert_eq!(std::fs::read(&t.path).unwrap(), junk);
    assert!(
        !ken_store::lock_path(&t.path).exists(),
        "a refused open leaves no lock file it created"
    );
}

#[test]
fn a_foreign_sqlite_file_is_not_a_ken_store_and_stays_untouched() {
    let t = temp_store();
    {
        let conn = raw(&t.path);
        conn.execute_batch("CREATE TABLE foo (x INTEGER); INSERT INTO foo VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&t.path).unwrap();
    let err = try_open(&t.path, "a").unwrap_err();
    match &err {
        OpenError::NotAKenStore { detail, .. } => assert!(detail.contains("meta"), "{detail}"),
        other => panic!("expected NotAKenStore, got {other:?}"),
    }
    assert!(matches!(
        Reader::open(&t.path),
        Err(OpenError::NotAKenStore { .. })
    ));
    // Still a rollback-journal database: the owner never switched it to WAL.
    let after = std::fs::read(&t.path).unwrap();
    assert_eq!(after, before);
    assert!(
        !ken_store::lock_path(&t.path).exists(),
        "no stray lock file"
    );
    assert_eq!((after[18], after[19]), (1, 1), "file format bytes: not WAL");

    // A `meta` table that is not ours is refused too.
    let t2 = temp_store();
    raw(&t2.path)
        .execute_batch(
            "CREATE TABLE meta (key TEXT, value BLOB); INSERT INTO meta VALUES ('magic', x'00');",
        )
        .unwrap();
    assert!(matches!(
        try_open(&t2.path, "a"),
        Err(OpenError::NotAKenStore { .. })
    ));
}

#[test]
fn an_empty_file_left_by_an_interrupted_creation_is_created() {
    let t = temp_store();
    std::fs::write(&t.path, b"").unwrap();
    let (_s, rec) = try_open(&t.path, "a").unwrap();
    assert!(rec.created);
}

#[test]
fn a_second_owner_in_the_same_process_gets_in_use_at_once() {
    let t = temp_store();
    let (mut store, _) = try_open(&t.path, "a").unwrap();
    let start = Instant::now();
    let err = Store::open(&t.path, "a").unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "InUse must not wait"
    );
    match &err {
        OpenError::InUse {
            path,
            lock_path,
            holder_pid,
        } => {
            assert_eq!(path, &t.path);
            assert_eq!(lock_path, &ken_store::lock_path(&t.path));
            assert_eq!(*holder_pid, Some(std::process::id()));
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("p.ken.lock")
            && msg.contains("stop that process")
            && msg.contains(&format!("process {}", std::process::id())),
        "{msg}"
    );
    // The first owner is unaffected; after it closes, the store opens again.
    store.commit(&Batch::default()).unwrap();
    drop(store);
    assert_eq!(try_open(&t.path, "a").unwrap().1.commits, 1);
}

const LOCK_CHILD_ENV: &str = "KEN_STORE_TEST_LOCK_CHILD";

/// Child: owns the store until its stdin closes. Parent: gets InUse while the child lives,
/// can read meanwhile, and owns the store once the child is gone.
#[test]
fn a_second_owner_in_another_process_gets_in_use_at_once() {
    if let Some(path) = std::env::var_os(LOCK_CHILD_ENV) {
        let (_store, _) = try_open(std::path::Path::new(&path), "a").unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "locked").unwrap();
        out.flush().unwrap();
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink).unwrap();
        return;
    }
    let t = temp_store();
    let mut child = child_command(
        "open_errors::a_second_owner_in_another_process_gets_in_use_at_once",
        (LOCK_CHILD_ENV, &t.path),
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let (lines, reader_thread) = line_reader(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("child reports it holds the store");
        if line == "locked" {
            break;
        }
    }
    let start = Instant::now();
    match Store::open(&t.path, "a") {
        Err(OpenError::InUse { holder_pid, .. }) => assert_eq!(holder_pid, Some(child.id())),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        Reader::open(&t.path).unwrap().meta().unwrap().process_id,
        "a"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    reader_thread.join().unwrap();
    assert!(!try_open(&t.path, "a").unwrap().1.created);
}

#[test]
fn reader_on_a_missing_file_is_not_found_and_creates_nothing() {
    let t = temp_store();
    match Reader::open(&t.path) {
        Err(OpenError::NotFound { path }) => assert_eq!(path, t.path),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!t.path.exists());
    assert!(!ken_store::lock_path(&t.path).exists());
}
