//! `ken demo` end to end: a short seeded demo exits 0 with a report whose checks all held,
//! and missing app binaries are one clear line and a non-zero exit.
//!
//! The app binaries are built beside `ken` first (`cargo build -p ken-apps --bins`, a no-op
//! when fresh): `cargo test -p ken-tools` alone does not build another package's binaries,
//! and the demo would otherwise build them itself, or run stale ones.

use std::path::{Path, PathBuf};
use std::process::Command;

fn build_apps() -> PathBuf {
    let ken = PathBuf::from(env!("CARGO_BIN_EXE_ken"));
    let dir = ken.parent().expect("<target>/<profile>").to_path_buf();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("no profile directory in {}", dir.display()),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools is inside the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "ken-apps", "--bins"])
        // The same features as every other test build of the apps (the torture's negative
        // controls need the test-only switch): the binaries are shared.
        .args(["--features", "ken/unsafe-release-before-commit"])
        .args(["--profile", &profile])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.parent().expect("<target>"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p ken-apps failed: {status}");
    dir
}

#[test]
fn a_short_demo_kills_restarts_and_verifies_everything() {
    build_apps();
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
fn missing_app_binaries_are_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["demo", "--seconds", "1", "--bin-dir"])
        .arg(dir.path())
        .output()
        .expect("run ken demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ken-bank or ken-kv not found"), "{stderr}");
    assert!(stderr.contains("cargo build --release"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
