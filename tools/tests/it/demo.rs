//! `ken demo` end to end: a short seeded demo exits 0 with a report whose checks all held,
//! and a working directory it cannot use is one clear line and a non-zero exit. The demo's
//! processes are `ken app ..` children of the `ken` binary under test: nothing else to build.

use std::process::Command;

#[test]
fn a_short_demo_kills_restarts_and_verifies_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stores = std::fs::canonicalize(dir.path())
        .expect("resolve the temp dir")
        .join("demo");
    // A relative --dir: every path the demo prints must still be absolute.
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["demo", "--seconds", "6", "--dir", "demo"])
        .current_dir(dir.path())
        .output()
        .expect("run ken demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "check money conserved, every transfer applied exactly once",
        "check every message consumed exactly once, in order, outboxes empty: ok",
        "check every acknowledged request applied exactly once",
        "look inside a store: ",
        "all checks held in ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    // Keyed by default: the key is in the directory, every process was given it.
    assert!(
        stdout.contains("ken demo: cluster key ") && !stdout.contains("WARNING"),
        "{stdout}"
    );
    assert!(stores.join("keys/key-0.key").is_file());
    let stderr_logs: String = std::fs::read_dir(&stores)
        .expect("the demo's directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        stderr_logs.contains("frames authenticated")
            && !stderr_logs.to_lowercase().contains("no cluster key"),
        "every life runs keyed"
    );
    // Not a terminal: plain progress lines, and the kills really happened.
    assert!(stdout.contains("turns/s"), "{stdout}");
    let killed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("what was killed: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .expect("a `what was killed: N SIGKILLs` line");
    assert!(killed >= 3, "only {killed} kills in 6 s:\n{stdout}");
    assert!(stores.join("kv1.db").is_file());
    // The printed command works as printed, from anywhere: an absolute executable and store.
    let inspect = stdout
        .lines()
        .find_map(|l| l.strip_prefix("look inside a store: "))
        .expect("a `look inside a store` line");
    let words: Vec<&str> = inspect.split(' ').collect();
    assert_eq!(words.len(), 3, "{inspect}");
    assert_eq!(words[1], "inspect", "{inspect}");
    assert_eq!(
        std::path::Path::new(words[2]),
        stores.join("kv1.db"),
        "{inspect}"
    );
    let shown = Command::new(words[0])
        .args(&words[1..])
        .current_dir("/")
        .output()
        .expect("run the printed command");
    assert!(shown.status.success(), "{inspect}: {shown:?}");
    assert!(
        stdout.contains(&format!("stores kept in {}", stores.display())),
        "a --dir is kept and said so: {stdout}"
    );
}

/// Without --dir the stores are in a temporary directory that is gone when the demo ends;
/// with --keep it stays and the report says where.
#[test]
fn temporary_stores_are_removed_unless_kept() {
    for keep in [false, true] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut args = vec!["demo", "--seconds", "2"];
        if keep {
            args.push("--keep");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ken"))
            .args(&args)
            .env("TMPDIR", tmp.path())
            .output()
            .expect("run ken demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let dir = stdout
            .lines()
            .find_map(|l| l.split_once(", stores in ").map(|(_, d)| d))
            .map(std::path::PathBuf::from)
            .expect("a `stores in DIR` line");
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(
            dir.starts_with(std::fs::canonicalize(tmp.path()).unwrap()),
            "{}",
            dir.display()
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        if keep {
            assert!(dir.join("kv1.db").is_file(), "kept: {}", dir.display());
            assert!(
                stdout.contains(&format!("stores kept in {}", dir.display())),
                "{stdout}"
            );
        } else {
            assert!(!dir.exists(), "{} still there", dir.display());
            assert!(left.is_empty(), "left behind: {left:?}");
            assert!(
                stdout.contains("removed at exit (--keep keeps them"),
                "{stdout}"
            );
            assert!(!stdout.contains("look inside a store"), "{stdout}");
        }
    }
}

#[test]
fn a_directory_that_is_not_empty_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("old.db"), b"a store of another run").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["demo", "--seconds", "1", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run ken demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        std::fs::read(dir.path().join("old.db")).expect("read"),
        b"a store of another run",
        "the demo touched nothing"
    );
}
