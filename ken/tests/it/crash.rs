//! Crash points kill the process with SIGKILL at the named instant, and a restart recovers.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use ken::{Config, Handler, Input, ProcessId, Turn};
use serde::{Deserialize, Serialize};

/// Counts its turns; finishes after the start turn is committed.
struct Once;

#[derive(Default, Serialize, Deserialize)]
struct Started(bool);

impl Handler for Once {
    const APP: &'static str = "once";
    type State = Started;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut Started, _turn: &mut Turn<'_, ()>, input: Input<()>) {
        if let Input::Start = input {
            s.0 = true;
        }
    }
    fn finished(&self, s: &Started) -> Option<String> {
        s.0.then(|| "started".to_string())
    }
}

/// Child mode: run `Once` on the store named by the environment.
#[test]
fn crash_child() {
    let Ok(store) = std::env::var("KEN_TEST_CRASH_STORE") else {
        return;
    };
    let mut config = Config::new(
        ProcessId::new("solo").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        store,
    );
    config.finish_linger = std::time::Duration::ZERO;
    match ken::run(config, Once) {
        Ok(_) => {}
        Err(e) => panic!("run failed: {e}"),
    }
}

fn run_child(store: &std::path::Path, crash_at: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEN_TEST_CRASH_STORE", store)
        .env("KEN_CRASH_AT", crash_at)
        .output()
        .expect("run the child")
}

#[test]
fn each_crash_point_sigkills_and_a_restart_recovers() {
    for point in ["recovery", "before_commit", "after_commit", "after_release"] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("solo.db");
        let out = run_child(&store, point);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: {:?} {stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!(
                "{{\"event\":\"crash_point\",\"point\":\"{point}\"}}"
            )),
            "{point}: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("\nstarted"));
        // Restart without crash points: the start turn is committed (again, or for the first
        // time) and the process finishes.
        let out = run_child(&store, "");
        assert!(out.status.success(), "{point}: restart failed: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("started"),
            "{point}"
        );
    }
}

#[test]
fn a_bad_crash_spec_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(&dir.path().join("solo.db"), "nowhere:1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown crash point"));
}
