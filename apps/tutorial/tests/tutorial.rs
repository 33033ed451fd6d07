//! The tutorial (ken/TUTORIAL.md) runs in CI: its text shows exactly this crate's code, and
//! its service survives `ken torture --cluster` with its own check.

use std::path::{Path, PathBuf};
use std::process::Command;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// The `ken` binary of this build (built if this test runs alone).
fn ken() -> PathBuf {
    let path = Path::new(TALLY).with_file_name("ken");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = Path::new(TALLY).parent().unwrap().ends_with("release");
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "ken-tools", "--bin", "ken"]);
        if release {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "build ken");
    }
    path
}

fn cluster_file(dir: &Path) -> PathBuf {
    let mut t = String::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        t.push_str(&format!(
            "[[process]]\nid = \"{id}\"\naddress = \"127.0.0.1:{}\"\ncommand = [{TALLY:?}, \"run\", \
             \"--cluster\", \"{{cluster}}\", \"--id\", \"{{id}}\", \"--rounds\", \"300\", \
             \"--every-ms\", \"10\"]\n\n",
            7101 + i
        ));
    }
    t.push_str(&format!(
        "[torture]\ncheck = \"{TALLY} check $KEN_TORTURE_STORES\"\n"
    ));
    let path = dir.join("tally.toml");
    std::fs::write(&path, t).unwrap();
    path
}

#[test]
fn the_tutorial_service_survives_ken_torture_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let file = cluster_file(dir.path());
    let run = dir.path().join("run");
    let out = Command::new(ken())
        .args(["torture", "--cluster"])
        .arg(&file)
        .args(["--seconds", "12", "--seed", "11", "--dir"])
        .arg(&run)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let s: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}\n{stderr}"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(s["violations"], 0, "{s}");
    assert!(s["kills"].as_u64().unwrap() > 0, "{s}");
    assert!(s["messages"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["check"]["passed"], true, "{s}");

    // The check can fail: without c's store, what a and b sent c was received by no one.
    let stores: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|id| run.join("stores").join(format!("{id}.ken")))
        .collect();
    let all = Command::new(TALLY)
        .arg("check")
        .args(&stores)
        .output()
        .unwrap();
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stdout)
    );
    let without_c = &stores[..2];
    let partial = Command::new(TALLY)
        .arg("check")
        .args(without_c)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&partial.stdout);
    assert!(
        !partial.status.success() && text.contains("received 0"),
        "{text}"
    );
}

/// Every file of this crate appears whole in the tutorial, so the text cannot drift from
/// the code CI builds and runs.
#[test]
fn the_tutorial_shows_the_code_ci_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tutorial = std::fs::read_to_string(root.join("../../ken/TUTORIAL.md")).unwrap();
    for file in ["Cargo.toml", "src/lib.rs", "src/main.rs"] {
        let code = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            tutorial.contains(&code),
            "ken/TUTORIAL.md does not show apps/tutorial/{file} as it is: copy it in again"
        );
    }
}
