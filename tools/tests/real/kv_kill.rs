//! Real-process kill-and-restart of the kv service: client threads send thousands of
//! requests (increments of a few counters, puts of fresh keys) with exactly-once retries
//! while the kv process (`ken app kv serve`) is SIGKILLed at seeded random moments and
//! restarted with the same command (harness and checks: [`crate::kv_harness`]).
//!
//! Replay a failing run with the seed it printed: `KEN_SEED=<seed> cargo test --release -p
//! ken-tools --test real <test name>`. The kill schedule and the requests replay exactly;
//! what each kill interrupts depends on the scheduler.

use std::time::Duration;

use crate::kv_harness::{self as kv, Scenario};
use crate::seed;

fn binary() -> std::path::PathBuf {
    crate::ken()
}

/// At least 20 SIGKILLs while 4 clients send at least 4000 requests with retries: every
/// request is answered (a timeout is retried with the same number until it is), every
/// acknowledged put reads back, every counter equals the sum of its acknowledged
/// increments (no request lost, none applied twice), no counter goes backwards.
#[test]
fn kv_requests_apply_exactly_once_across_random_sigkills() {
    let seed = seed::seed("kv_requests_apply_exactly_once_across_random_sigkills");
    let scenario = Scenario::default();
    let outcome = kv::run(&binary(), &scenario, seed).expect("the harness's own I/O");
    println!("{}", outcome.summary());
    let listed: Vec<String> = outcome.violations.iter().map(|v| v.to_string()).collect();
    assert!(
        outcome.violations.is_empty(),
        "seed {seed}: {} violations:\n{}\n{}",
        listed.len(),
        listed.join("\n"),
        outcome.diagnostics
    );
    assert!(
        outcome.kills >= 20,
        "seed {seed}: only {} kills\n{}",
        outcome.kills,
        outcome.diagnostics
    );
    assert!(
        outcome.requests >= scenario.requests_min,
        "seed {seed}: only {} requests",
        outcome.requests
    );
    assert_eq!(
        outcome.unanswered, 0,
        "seed {seed}: requests never answered despite retries\n{}",
        outcome.diagnostics
    );
    assert_eq!(outcome.answered, outcome.requests, "seed {seed}");
    // The kills must have hit traffic: some requests needed a retry after a timeout.
    assert!(
        outcome.answered_after_timeout > 0,
        "seed {seed}: no request was ever retried: the kills missed the traffic"
    );
}

/// Negative control: the same harness against a runtime that releases replies before the
/// commit (`KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1`) must find a request lost or applied twice
/// (a lost acknowledged put, a counter below its acknowledged increments, a counter going
/// backwards) in at least one of a few short attempts. Proves the checks above can fail.
#[test]
fn negative_control_release_before_commit_loses_acknowledged_requests() {
    let base = seed::seed("negative_control_release_before_commit_loses_acknowledged_requests");
    let scenario = Scenario {
        unsafe_release_before_commit: true,
        requests_min: 1000,
        kills_target: 20,
        deadline: Duration::from_secs(20),
        ..Scenario::default()
    };
    const ATTEMPTS: u64 = 3;
    let mut seen = Vec::new();
    for attempt in 0..ATTEMPTS {
        let seed = base.wrapping_add(attempt);
        let outcome = kv::run(&binary(), &scenario, seed).expect("the harness's own I/O");
        println!("attempt {attempt}: {}", outcome.summary());
        for v in outcome.violations.iter().take(10) {
            println!(
                "  {}violation: {v}",
                if v.is_specific() { "specific " } else { "" }
            );
        }
        if outcome.violations.iter().any(|v| v.is_specific()) {
            return;
        }
        seen.push(format!(
            "attempt {attempt} (seed {seed}): {}\n{}",
            outcome.summary(),
            outcome.diagnostics
        ));
    }
    panic!(
        "no request lost or applied twice in {ATTEMPTS} attempts with replies released \
         before commit:\n{}",
        seen.join("\n")
    );
}
