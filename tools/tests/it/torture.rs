//! `ken torture` end to end: a short seeded torture of each app (bank, pingpong, lock)
//! passes with no violation, and the negative controls (the runtime's test-only
//! release-before-commit switch; for lock also children whose FUSE timing is not what the
//! checks assume) make it report violations and exit non-zero.
//!
//! The apps run as `ken app ..` children of the `ken` binary under test: nothing else to
//! build.

use std::path::Path;
use std::process::Command;

/// Runs `ken torture ARGS` in a fresh directory; returns (success, stdout, summary).
fn torture(args: &[&str]) -> (bool, String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    torture_in(dir.path(), args)
}

/// Runs `ken torture ARGS` in `dir`/run; returns (success, stdout, summary).
pub(crate) fn torture_in(dir: &Path, args: &[&str]) -> (bool, String, serde_json::Value) {
    let (ok, stdout, _, summary) = torture_env(dir, args, &[]);
    (ok, stdout, summary)
}

/// Runs `ken torture ARGS` in `dir`/run with extra environment `envs`; returns (success,
/// stdout, stderr, summary). The one way every `ken torture` test runs it.
pub(crate) fn torture_env(
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (bool, String, String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .arg("torture")
        .args(args)
        .arg("--dir")
        .arg(dir.join("run"))
        .envs(envs.iter().copied())
        .output()
        .expect("run ken torture");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("last line is not the JSON summary ({e}): {stdout}\nstderr: {stderr}")
    });
    (out.status.success(), stdout, stderr, summary)
}

/// The faults of the release-before-commit negative controls (the app's run and the
/// `--cluster` run): crash points between release and commit (before_commit, mid_release)
/// make the broken build's violation near certain rather than a matter of kill timing.
pub(crate) const RELEASE_BEFORE_COMMIT_RUN: [&str; 13] = [
    "--seconds",
    "15",
    "--quiesce-seconds",
    "15",
    "--seed",
    "2",
    "--kill-rate",
    "3",
    "--restart-delay-ms",
    "300",
    "--crash-point-restarts",
    "1",
    "--unsafe-release-before-commit",
];

pub(crate) fn n(summary: &serde_json::Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary has no {key}: {summary}"))
}

#[test]
fn bank_torture_passes() {
    let (ok, stdout, s) = torture(&[
        "--app",
        "bank",
        "--procs",
        "3",
        "--seconds",
        "20",
        "--seed",
        "11",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert_eq!(s["app"], "bank");
    assert_eq!(n(&s, "seed"), 11);
    assert_eq!(n(&s, "processes"), 3);
    assert!(n(&s, "kills") > 0, "{s}");
    assert!(n(&s, "restarts") >= n(&s, "kills"), "{s}");
    assert!(n(&s, "turns") > 0 && n(&s, "messages") > 0, "{s}");
    assert!(stdout.starts_with("ken torture: seed 11"), "{stdout}");
    // Keyed by default: every frame authenticated, none refused.
    assert_eq!(s["keyed"], true, "{s}");
    assert_eq!(n(&s, "frames_unknown_key_dropped"), 0, "{s}");
    assert_eq!(n(&s, "frames_bad_tag_dropped"), 0, "{s}");
}

/// `--rotate-key 2`: two rotations of the cluster key (SECURITY.md's three passes of one
/// SIGKILL and restart at a time each) while the kills, pauses and network faults go on.
/// Nothing lost or done twice, and no frame refused for its key at any moment: the accept
/// window carries every frame across (its negative control, a restart with the new key
/// alone, is `tests/real/keys.rs`).
#[test]
fn bank_torture_rotating_the_key_passes_and_refuses_no_frame() {
    let (ok, stdout, s) = torture(&[
        "--app",
        "bank",
        "--procs",
        "3",
        "--seconds",
        "10",
        "--seed",
        "13",
        "--rotate-key",
        "2",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert_eq!(n(&s, "key_rotations"), 2, "{s}");
    // Three passes over 3 processes per rotation; one that is down at its turn only gets
    // its keys for its next start.
    let restarts = n(&s, "key_rotation_restarts");
    assert!((4..=18).contains(&restarts), "{s}");
    assert!(n(&s, "restarts") >= n(&s, "kills") + restarts, "{s}");
    // Frames under the old key were accepted (the window was used), none was refused.
    assert!(n(&s, "frames_old_key") > 0, "{s}");
    assert_eq!(n(&s, "frames_unknown_key_dropped"), 0, "{s}");
}

#[test]
fn a_rotation_needs_a_key_and_a_supported_app() {
    for (args, says) in [
        (
            &["--no-key", "--rotate-key"][..],
            "--rotate-key needs a cluster key",
        ),
        (
            &["--app", "lock", "--rotate-key"][..],
            "--rotate-key works with --app bank and --app pingpong",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ken"))
            .arg("torture")
            .args(args)
            .output()
            .expect("run ken torture");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn pingpong_torture_passes() {
    // A release build volleys about a thousand balls a second: enough balls and kills that
    // the volley is still going when the kills land.
    let (ok, stdout, s) = torture(&[
        "--app",
        "pingpong",
        "--seconds",
        "15",
        "--count",
        "8000",
        "--kill-rate",
        "3",
        "--restart-delay-ms",
        "300",
        "--seed",
        "12",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert_eq!(s["app"], "pingpong");
    assert_eq!(n(&s, "processes"), 2);
    assert!(n(&s, "kills") > 0, "{s}");
    // Every ball was sent once: `messages` counts committed sends over both directions.
    assert_eq!(n(&s, "messages"), 8000, "{s}");
}

/// Negative control: with outputs released before commit, a kill between release and
/// commit makes a peer consume (and acknowledge) a message of a turn that is then rolled
/// back. `ken torture` must say so, name it, and exit non-zero.
#[test]
fn release_before_commit_is_caught() {
    let mut args = vec!["--app", "bank", "--procs", "3", "--crash-point-p", "0.05"];
    args.extend(RELEASE_BEFORE_COMMIT_RUN);
    let (ok, stdout, s) = torture(&args);
    assert!(
        !ok,
        "ken torture exited 0 with outputs released before commit: {stdout}"
    );
    assert!(n(&s, "violations") > 0, "{s}");
    // A safety violation, not only a liveness one.
    assert!(
        stdout.contains("output validity violated")
            || stdout.contains("acknowledged and lost")
            || stdout.contains("money not conserved"),
        "{stdout}"
    );
    assert!(stdout.contains("replay: ken torture"), "{stdout}");
}

fn lock_torture(args: &[&str]) -> (bool, String, serde_json::Value) {
    let mut all = vec!["--app", "lock"];
    all.extend(args);
    torture(&all)
}

/// A short lock torture (one server, a sticky holder, four contending holders on two
/// locks, T_fail 1 s, heartbeat 100 ms): SIGKILLs with restarts, crash points, pauses and
/// short cuts that FUSE must mask, a holder killed for good and a long partition that must
/// fire, all within FUSE's bound; no false positive, every notification exactly once,
/// tokens and grants sound, every holder done.
#[test]
fn lock_torture_passes_with_permanent_kills_and_long_partitions() {
    let (ok, stdout, s) = lock_torture(&["--seconds", "12", "--seed", "21"]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert_eq!(s["app"], "lock");
    assert_eq!(n(&s, "t_fail_ms"), 1000);
    assert_eq!(n(&s, "heartbeat_ms"), 100);
    assert_eq!(n(&s, "permanent_kills"), 1, "{s}");
    assert_eq!(n(&s, "long_partitions"), 1, "{s}");
    assert_eq!(n(&s, "false_positives"), 0, "{s}");
    assert!(n(&s, "kills") > 0, "{s}");
    assert!(n(&s, "outages_masked") > 0, "FUSE had outages to mask: {s}");
    assert!(n(&s, "groups_failed") > 10 && n(&s, "grants") > 10, "{s}");
    // Both sides of the long partition at least; measured, and within the bound.
    assert!(n(&s, "notify_samples") >= 2, "{s}");
    let max = n(&s, "notify_ms_max");
    assert!(
        max >= n(&s, "t_fail_ms") / 2 && max <= n(&s, "fuse_bound_ms") + n(&s, "fuse_slack_ms"),
        "{s}"
    );
    eprintln!(
        "lock torture: notify_ms_max {max} (bound {} + slack {}), {} notifications measured, {} outages masked (longest {} ms)",
        n(&s, "fuse_bound_ms"),
        n(&s, "fuse_slack_ms"),
        n(&s, "notify_samples"),
        n(&s, "outages_masked"),
        n(&s, "outage_masked_ms_max")
    );
}

/// Negative control of the FUSE checks: the children run with T_fail 150 ms and a 30 ms
/// heartbeat while the checks assume 1000 ms and 100 ms, so restarts and pauses of a few
/// hundred milliseconds fail groups (false positives to the checks), and the checks are
/// given a 50 ms bound with no slack, which no silence detection meets.
#[test]
fn lock_fuse_checks_fail_when_fuse_is_not_what_they_assume() {
    let (ok, stdout, s) = lock_torture(&[
        "--seconds",
        "10",
        "--seed",
        "22",
        "--quiesce-seconds",
        "20",
        "--unsafe-child-fuse",
        "150:30",
        "--unsafe-fuse-bound-ms",
        "50",
        "--fuse-slack-ms",
        "0",
    ]);
    assert!(!ok, "ken torture exited 0: {stdout}");
    assert!(n(&s, "false_positives") > 0, "{s}");
    assert!(
        stdout.contains("violation: lock: false positive: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("above the bound 50 ms + slack 0 ms"),
        "{stdout}"
    );
    assert_eq!(n(&s, "children_t_fail_ms"), 150, "{s}");
}

/// Negative control: outputs released before commit break the lock service's own
/// invariants too (a grant line or message of a rolled-back turn, a token granted again, a
/// notification line printed twice), and the generic pair checks; the run must fail on a
/// safety violation, not only on liveness.
#[test]
fn lock_release_before_commit_is_caught() {
    let (ok, stdout, s) = lock_torture(&[
        "--seconds",
        "10",
        "--seed",
        "3",
        "--quiesce-seconds",
        "3",
        "--kill-rate",
        "4",
        "--crash-point-restarts",
        "1",
        "--crash-point-p",
        "0.1",
        "--unsafe-release-before-commit",
    ]);
    assert!(!ok && n(&s, "violations") > 0, "{stdout}");
    assert!(
        [
            "output validity violated",
            "acknowledged and lost",
            "at most once per group",
            "fencing tokens must strictly increase",
            "two live grants",
        ]
        .iter()
        .any(|w| stdout.contains(w)),
        "{stdout}"
    );
}

/// Disk full, briefly: the stores on a small tmpfs that the harness fills now and then.
/// Processes that hit the full disk stop with the store's clear error (counted, expected) and
/// recover once it has room; no violation. Skipped, saying so, where a tmpfs cannot be
/// mounted (not root, or no mount permission).
#[test]
fn bank_torture_with_disk_full_episodes_passes() {
    let probe = tempfile::tempdir().expect("temp dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "ken-probe"])
        .arg(probe.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root and mount permission)");
        return;
    }
    let _ = Command::new("umount").arg(probe.path()).status();
    let (ok, stdout, s) = torture(&[
        "--app",
        "bank",
        "--procs",
        "3",
        "--seconds",
        "15",
        "--seed",
        "13",
        "--tmpfs-mb",
        "32",
        "--disk-full",
        "0.6",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert!(n(&s, "disk_full_episodes") > 0, "{s}");
    assert!(n(&s, "turns") > 0, "{s}");
}

/// A tmpfs too small for the stores to exist is refused up front (nothing mounted, nothing
/// started), naming the minimum, instead
/// of a run that reports every failed open as a violation.
#[test]
fn a_tmpfs_too_small_for_the_stores_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["torture", "--app", "bank", "--procs", "5", "--seconds", "5"])
        .args(["--tmpfs-mb", "8", "--dir"])
        .arg(dir.path().join("run"))
        .output()
        .expect("run ken torture");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("--tmpfs-mb 8 is too small for 5 processes"),
        "{all}"
    );
    let min: u64 = all
        .split("use --tmpfs-mb ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no minimum named: {all}"));
    assert!(min > 8, "{all}");
    assert!(!dir.path().join("run").join("stores").join("a.ken").exists());
}

/// `--no-key`: the cluster runs unauthenticated, and says so loudly first.
#[test]
fn no_key_runs_unauthenticated_and_says_so() {
    let (ok, stdout, s) = torture(&[
        "--app",
        "pingpong",
        "--seconds",
        "2",
        "--count",
        "200",
        "--seed",
        "14",
        "--no-key",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert_eq!(s["keyed"], false, "{s}");
    let second = stdout.lines().nth(1).unwrap_or_default();
    assert!(
        second.contains("WARNING: --no-key") && second.contains("WITHOUT a cluster key"),
        "{stdout}"
    );
}
/// The rolling upgrade (issue 14): the bank's members are replaced by schema version 2 one
/// at a time under kills, pauses and network faults; mixed versions run side by side (the
/// version-1 members hold version-2 messages), and at the end every check holds, every store
/// is at version 2 and nothing was dead-lettered.
#[test]
fn bank_rolling_upgrade_passes() {
    let (ok, stdout, s) = torture(&[
        "--app",
        "bank",
        "--procs",
        "3",
        "--seconds",
        "15",
        "--upgrade",
        "--seed",
        "14",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert_eq!(n(&s, "upgrades"), 3, "{s}");
    assert!(n(&s, "kills") > 0, "{s}");
    assert!(
        n(&s, "messages_held") > 0,
        "no version-2 message was ever held by a version-1 member: the versions did not mix: {s}"
    );
    assert_eq!(n(&s, "dead_letters"), 0, "{s}");
}

/// Negative control of the rolling upgrade: with the test-only switch that consumes and
/// drops a newer version's message instead of holding it (the behaviour before issue 14:
/// acknowledged, not even dead-lettered), the same torture reports lost transfers and exits
/// non-zero.
#[test]
fn rolling_upgrade_dropping_held_messages_loses_transfers() {
    let (ok, stdout, s) = torture(&[
        "--app",
        "bank",
        "--procs",
        "3",
        "--seconds",
        "15",
        "--upgrade",
        "--seed",
        "14",
        "--unsafe-drop-held",
    ]);
    assert!(
        !ok,
        "ken torture exited 0 with held messages dropped: {stdout}"
    );
    assert!(n(&s, "violations") > 0, "{s}");
    assert!(
        stdout.contains("never applied after quiescence (lost)"),
        "no lost transfer reported: {stdout}"
    );
}

#[test]
fn upgrade_flags_that_make_no_sense_are_refused() {
    for (args, says) in [
        (
            &["--app", "pingpong", "--upgrade"][..],
            "use it with --app bank",
        ),
        (
            &["--app", "bank", "--unsafe-drop-held"][..],
            "only matters with --upgrade",
        ),
        (&["--app", "bank", "--poison", "3"][..], "needs --upgrade"),
        (
            &["--app", "bank", "--upgrade", "--poison", "0"][..],
            "would poison nothing",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ken"))
            .arg("torture")
            .args(args)
            .output()
            .expect("run ken torture");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The poison torture: version 1 panics on every credit of a transfer id that is a multiple
/// of 7; the panics are contained (turn rolled back, input recorded and its pair held), and
/// once the rolling upgrade deploys version 2 (the fix) every poisoned credit is applied
/// exactly once: 0 violations with poison inputs recorded.
#[test]
fn bank_poison_torture_passes_once_the_fix_is_deployed() {
    let (ok, stdout, s) = torture(&[
        "--app",
        "bank",
        "--procs",
        "3",
        "--seconds",
        "15",
        "--upgrade",
        "--poison",
        "7",
        "--seed",
        "5",
    ]);
    assert!(ok && n(&s, "violations") == 0, "{stdout}");
    assert!(n(&s, "poison_inputs") > 0, "no input was poisoned: {s}");
    assert_eq!(n(&s, "upgrades"), 3, "{s}");
    assert_eq!(n(&s, "dead_letters"), 0, "{s}");
}
