//! The app binaries' command lines: bad flags and unusable stores are one clear line and a
//! non-zero exit, never a panic.
//!
//! (This integration test also makes `cargo test --workspace` build the app binaries, which
//! the real-process tests of other crates run.)

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_peer_is_explained() {
    let (code, err) = run(
        env!("CARGO_BIN_EXE_ken-pingpong"),
        &[
            "--id",
            "a",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "x.db",
            "--peer",
            "b",
            "--count",
            "3",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("expected ID=ADDR"), "{err}");
}

#[test]
fn a_bad_process_id_is_explained() {
    let (code, err) = run(
        env!("CARGO_BIN_EXE_ken-bank"),
        &[
            "--id",
            "no spaces",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "x.db",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad process id"), "{err}");
}

#[test]
fn a_store_that_is_not_a_ken_store_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("notes.db");
    std::fs::write(&store, b"these are my notes, not a database").expect("write");
    let (code, err) = run(
        env!("CARGO_BIN_EXE_ken-pingpong"),
        &[
            "--id",
            "a",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store.to_str().expect("utf-8 path"),
            "--peer",
            "b=127.0.0.1:9",
            "--count",
            "3",
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("error: cannot open store"), "{err}");
    assert!(err.to_lowercase().contains("not a ken store"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert_eq!(
        std::fs::read(&store).expect("read"),
        b"these are my notes, not a database",
        "the foreign file is untouched"
    );
}

/// `ken-lock hold`'s own checks: one line each, exit 2.
#[test]
fn ken_lock_usage_errors_are_one_line() {
    let hold = |extra: &[&str]| {
        let mut args = vec![
            "hold",
            "--id",
            "h1",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "x.db",
            "--lock",
            "L",
        ];
        args.extend_from_slice(extra);
        run(env!("CARGO_BIN_EXE_ken-lock"), &args)
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["--peer", "s=127.0.0.1:9", "--server", "t"],
            "--server t is not among the --peer entries",
        ),
        (
            &["--peer", "h1=127.0.0.1:9", "--server", "h1"],
            "names this process itself",
        ),
        (
            &[
                "--peer",
                "s=127.0.0.1:9",
                "--peer",
                "s=127.0.0.1:10",
                "--server",
                "s",
            ],
            "is given twice",
        ),
        (
            &[
                "--peer",
                "s=127.0.0.1:9",
                "--server",
                "s",
                "--retry-ms",
                "0",
            ],
            "--retry-ms",
        ),
    ];
    for (extra, expected) in cases {
        let (code, err) = hold(extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(expected), "{extra:?}: {err}");
        if !expected.starts_with("--retry") {
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        }
    }
}

#[test]
fn ken_lock_bad_lock_names_and_peers_are_explained() {
    let bin = env!("CARGO_BIN_EXE_ken-lock");
    let common = [
        "--id",
        "h1",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "x.db",
        "--server",
        "s",
    ];
    let long = "x".repeat(200);
    for (lock, peer, expected) in [
        ("", "s=127.0.0.1:9", "a lock name must be 1 to 128 bytes"),
        (long.as_str(), "s=127.0.0.1:9", "got 200 bytes"),
        ("L", "s", "expected ID=ADDR"),
    ] {
        let mut args = vec!["hold"];
        args.extend_from_slice(&common);
        args.extend_from_slice(&["--lock", lock, "--peer", peer]);
        let (code, err) = run(bin, &args);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    let (code, err) = run(
        bin,
        &[
            "serve",
            "--id",
            "s",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "x.db",
            "--queue-max",
            "0",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim_end(), "ken-lock: --queue-max must be at least 1");
}
