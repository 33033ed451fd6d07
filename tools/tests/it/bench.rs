//! `ken bench --quick --json --plot F`: one JSON object whose every number was measured, and
//! the SVG of the curve.

use std::process::Command;
use std::time::{Duration, Instant};

/// The fields every run must report, each a positive finite number.
const POSITIVE_FIELDS: [&str; 16] = [
    "fsync_per_sec",
    "fsync_us_p50",
    "turns_per_sec",
    "turns_per_commit",
    "ack_latency_us_p50",
    "ack_latency_us_p99",
    "ack_after_transmit_us_p50",
    "ack_after_transmit_us_p99",
    "pingpong_rtt_us_p50",
    "pingpong_rtt_us_p99",
    "turns_per_fsync_ratio",
    "rtt_budget_us",
    "bytes_per_turn_alone",
    "alone_turns_per_commit",
    "bytes_per_turn_busy",
    "busy_turns_per_commit",
];

fn number(v: &serde_json::Value, field: &str) -> f64 {
    v.get(field)
        .unwrap_or_else(|| panic!("field `{field}` missing from {v}"))
        .as_f64()
        .unwrap_or_else(|| panic!("field `{field}` is not a number in {v}"))
}

#[test]
fn quick_json_reports_every_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let plot_dir = tempfile::tempdir().unwrap();
    let plot = plot_dir.path().join("curve.svg");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["bench", "--quick", "--json", "--dir"])
        .arg(dir.path())
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run ken bench");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0 when every target was met, 2 when one was missed (checked against the verdicts
    // below); anything else is a failure to measure.
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "ken bench failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    // A bound, not a speed target: --quick must not run the full phases (tens of seconds
    // each). Generous, because the other tests of this binary share the 2 cores meanwhile
    // (30 s seen under load; about 10 s alone).
    assert!(
        elapsed < Duration::from_secs(60),
        "--quick took {elapsed:?}"
    );

    // Exactly one JSON object on standard output, nothing else.
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    assert!(v.is_object(), "{v}");
    for field in POSITIVE_FIELDS {
        let x = number(&v, field);
        assert!(x.is_finite() && x > 0.0, "`{field}` = {x} in {v}");
    }
    assert!(number(&v, "turns_per_commit") >= 1.0, "{v}");
    // What a commit writes: a page and its WAL frame header at least, shared by the turns
    // of a batch; a busy receiver shares each commit among more turns than pingpong does.
    assert!(number(&v, "alone_turns_per_commit") >= 1.0, "{v}");
    assert!(
        number(&v, "busy_turns_per_commit") > number(&v, "alone_turns_per_commit"),
        "{v}"
    );
    assert!(
        number(&v, "bytes_per_turn_alone") * number(&v, "alone_turns_per_commit") >= 512.0,
        "{v}"
    );
    assert!(
        number(&v, "bytes_per_turn_busy") < number(&v, "bytes_per_turn_alone"),
        "{v}"
    );
    assert!(
        number(&v, "fsync_us_p50") <= number(&v, "fsync_us_p99"),
        "{v}"
    );
    for prefix in ["ack_latency_us", "ack_after_transmit_us", "pingpong_rtt_us"] {
        let p50 = number(&v, &format!("{prefix}_p50"));
        let p99 = number(&v, &format!("{prefix}_p99"));
        assert!(p50 <= p99, "{prefix}: p50 {p50} > p99 {p99} in {v}");
    }
    // The derived numbers are what they claim to be.
    let ratio = number(&v, "turns_per_sec") / number(&v, "fsync_per_sec");
    assert!(
        (number(&v, "turns_per_fsync_ratio") - ratio).abs() <= 1e-9 * ratio,
        "{v}"
    );
    assert_eq!(
        number(&v, "rtt_budget_us"),
        3.0 * number(&v, "fsync_us_p50") + 200.0,
        "{v}"
    );
    assert_eq!(v["turns_per_fsync_pass"], ratio >= 20.0, "{v}");
    assert_eq!(
        v["rtt_pass"],
        number(&v, "pingpong_rtt_us_p50") <= number(&v, "rtt_budget_us"),
        "{v}"
    );
    assert_eq!(v["senders"], 8, "{v}");
    assert_eq!(v["load"], "raw-frames", "{v}");
    assert!(v["load_retransmits"].as_u64().is_some(), "{v}");
    // CPU numbers: measured on Linux (null elsewhere), never negative.
    for field in [
        "receiver_cpu_cores",
        "receiver_cpu_wait_cores",
        "load_cpu_cores",
    ] {
        let x = &v[field];
        if cfg!(target_os = "linux") {
            let x = number(&v, field);
            assert!(x.is_finite() && x >= 0.0, "`{field}` = {x} in {v}");
        } else {
            assert!(x.is_null() || x.as_f64().is_some(), "`{field}` in {v}");
        }
    }
    assert!(
        number(&v, "messages_delivered") >= number(&v, "window_turns"),
        "{v}"
    );

    // The same phases with a key and with a key and encryption, in the same run.
    let auth = v["auth"].as_array().expect("`auth` rows");
    let modes: Vec<&str> = auth.iter().map(|a| a["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["none", "key", "key-encrypt", "key-standby"], "{v}");
    assert_eq!(v["rounds"], 1, "{v}");
    for (i, a) in auth.iter().enumerate() {
        for field in [
            "turns_per_sec",
            "turns_ratio",
            "pingpong_rtt_us_p50",
            "rtt_ratio",
        ] {
            let x = number(a, field);
            assert!(x.is_finite() && x > 0.0, "`{field}` = {x} in {a}");
        }
        let ratio = number(a, "turns_per_sec") / number(&v, "turns_per_sec");
        assert!(
            (number(a, "turns_ratio") - ratio).abs() <= 1e-9 * ratio,
            "{a}"
        );
        // What the load generator heard from the receiver was tagged exactly when keyed.
        let (frames, tagged) = (number(a, "load_frames_in"), number(a, "load_frames_tagged"));
        assert!(frames > 0.0, "{a}");
        assert_eq!(tagged, if i == 0 { 0.0 } else { frames }, "{a}");
        assert_eq!(a["turns_per_sec_rounds"][0], a["turns_per_sec"], "{a}");
        assert_eq!(
            a["pingpong_rtt_us_p50_rounds"][0], a["pingpong_rtt_us_p50"],
            "{a}"
        );
    }
    assert_eq!(
        number(&auth[0], "turns_per_sec"),
        number(&v, "turns_per_sec")
    );
    assert_eq!(
        number(&v, "keyed_turns_ratio"),
        number(&auth[1], "turns_ratio"),
        "{v}"
    );
    assert_eq!(
        v["keyed_turns_pass"],
        number(&v, "keyed_turns_ratio") >= 0.9,
        "{v}"
    );

    // The standby's cost against the keyed run without one (reported, not in the exit code).
    let standby = number(&auth[3], "turns_per_sec") / number(&auth[1], "turns_per_sec");
    assert!(
        (number(&v, "standby_turns_ratio") - standby).abs() <= 1e-9 * standby,
        "{v}"
    );
    assert_eq!(
        v["standby_turns_pass"],
        number(&v, "standby_turns_ratio") >= 0.8,
        "{v}"
    );
    assert!(number(&v, "standby_rtt_ratio") > 0.0, "{v}");

    // The exit code follows the verdicts.
    let all_pass = [
        &v["turns_per_fsync_pass"],
        &v["rtt_pass"],
        &v["keyed_turns_pass"],
    ]
    .iter()
    .all(|p| **p == true);
    assert_eq!(
        out.status.code(),
        Some(if all_pass { 0 } else { 2 }),
        "exit code against the verdicts in {v}"
    );

    check_curve(&v, &plot);

    // Every store and child output went into the run's own directory, removed at the end.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "ken bench left files behind: {left:?}");
}

/// The curve of `--plot`: its points in the JSON, sane, and the SVG drawn from them.
fn check_curve(v: &serde_json::Value, plot: &std::path::Path) {
    let curve = v["curve"].as_array().expect("`curve` points");
    assert_eq!(curve.len(), 5, "{v}");
    assert_eq!(v["plot"], plot.display().to_string(), "{v}");
    for p in curve {
        for field in [
            "turns_per_sec",
            "commits_per_sec",
            "bytes_per_turn",
            "window_secs",
        ] {
            let x = number(p, field);
            assert!(x.is_finite() && x > 0.0, "`{field}` = {x} in {p}");
        }
        for field in ["turns_per_commit", "run_turns_per_commit"] {
            let x = number(p, field);
            assert!(x.is_finite() && x >= 1.0, "`{field}` = {x} in {p}");
        }
        // turns/s = turns/commit x commits/s, over the same window.
        let product = number(p, "turns_per_commit") * number(p, "commits_per_sec");
        let turns = number(p, "turns_per_sec");
        assert!((product - turns).abs() <= 1e-6 * turns, "{p}");
    }
    let (first, last) = (&curve[0], &curve[curve.len() - 1]);
    assert!(
        number(first, "senders") * number(first, "outstanding_per_sender")
            < number(last, "senders") * number(last, "outstanding_per_sender"),
        "lightest load first: {v}"
    );
    // More in flight, more turns per commit, and each commit's pages shared by more turns.
    assert!(
        number(last, "turns_per_commit") > number(first, "turns_per_commit"),
        "{v}"
    );
    assert!(
        number(last, "bytes_per_turn") < number(first, "bytes_per_turn"),
        "{v}"
    );

    let svg = std::fs::read_to_string(plot).expect("the SVG was written");
    assert!(svg.starts_with("<svg"), "{svg}");
    for label in [
        "turns per commit",
        "durable turns per second",
        "store bytes written per turn",
        "raw fsync",
    ] {
        assert!(svg.contains(label), "`{label}` missing from the SVG: {svg}");
    }
    // One marker per point in each of the two panels.
    assert_eq!(svg.matches("<circle").count(), 2 * curve.len(), "{svg}");
}

/// `--plot` into a directory that is not there is refused before anything is measured:
/// one line, right away, and no file.
#[test]
fn plot_into_a_missing_directory_is_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("no-such-dir").join("curve.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["bench", "--quick", "--dir"])
        .arg(dir.path())
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run ken bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--plot") && stderr.contains("does not exist"),
        "{stderr}"
    );
    // Checked before anything ran: no progress line (the first, "stores in", comes before
    // the fsync loop), no run directory in --dir, no file.
    assert!(!stderr.contains("stores in"), "{stderr}");
    assert!(!plot.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing made in --dir: {left:?}");
}

#[test]
fn bench_rejects_quick_with_seconds() {
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["bench", "--quick", "--seconds", "5"])
        .output()
        .expect("run ken bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// A missed target is a non-zero exit (2), after the report with its MISS lines; the hidden
/// `--target-scale` makes every target impossible so the miss is certain on any machine.
#[test]
fn a_missed_target_exits_2_after_its_miss_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["bench", "--quick", "--target-scale", "1e9", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run ken bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with("PASS") || l.ends_with("MISS"))
        .collect();
    assert_eq!(
        verdicts.len(),
        3,
        "three target lines in:\n{stdout}\n{stderr}"
    );
    assert!(
        verdicts.iter().all(|l| l.ends_with("MISS")),
        "every impossible target missed:\n{stdout}"
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
}

#[test]
fn bench_help_states_the_exit_codes() {
    for args in [&["bench", "--help"][..], &["bench", "fuse", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ken"))
            .args(args)
            .output()
            .expect("run ken bench --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{help}");
        assert!(
            help.contains("Exit codes: 0 every target met")
                && help.contains("2 measured, but a target was missed"),
            "{args:?}: {help}"
        );
        assert!(
            !help.contains("target-scale"),
            "the test switch is hidden: {help}"
        );
    }
}
