//! `ken demo` end to end: a short seeded demo exits 0 with a report whose checks all held,
//! and a working directory it cannot use is one clear line and a non-zero exit. The demo's
//! processes are `ken app ..` children of the `ken` binary under test: nothing else to build.

use std::process::Command;

#[test]
fn a_short_demo_kills_restarts_and_verifies_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stores = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["demo", "--seconds", "6", "--dir"])
        .arg(&stores)
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
        "look inside a store: ken inspect ",
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
