//! Real-process kill-and-restart of pingpong: two pingpong processes (`ken app pingpong`) on
//! loopback, SIGKILLed at seeded random moments and restarted with the same command, must
//! still deliver every ball exactly once (harness and checks: [`crate::pingpong_harness`]).
//!
//! Replay a failing run with the seed it printed: `KEN_SEED=<seed> cargo test --release -p
//! ken-tools --test real <test name>`. The kill schedule replays exactly; the interleaving
//! with the processes' own progress depends on the scheduler, so a replay is likely, not
//! certain, to hit the same bug. Each failure message lists every life of both processes,
//! their stderr tails and the harness's timeline of kills and restarts.

use std::time::Duration;

use crate::pingpong_harness::{self as pingpong, Scenario};
use crate::seed;

fn binary() -> std::path::PathBuf {
    crate::ken()
}

/// N = 2000, at least 20 SIGKILLs spread over both sides while the volley runs, each
/// followed by a restart after 0..100 ms. Both must end with exit 0 and a clean report
/// (`received` 1000, no gap, no repeat), the stores must never hold an acknowledgement
/// beyond delivery, and all within 120 s. A process that finished while its peer still
/// waits is restarted, as an operator would (see `crate::pingpong_harness`).
#[test]
fn pingpong_survives_random_sigkills_of_both_sides() {
    let seed = seed::seed("pingpong_survives_random_sigkills_of_both_sides");
    let scenario = Scenario::default();
    let outcome = pingpong::run(&binary(), &scenario, seed).expect("the harness's own I/O");
    println!("{}", outcome.summary());
    println!(
        "kills per side: {:?}, total {}, total time {:.2} s",
        outcome.kills,
        outcome.total_kills(),
        outcome.elapsed.as_secs_f64()
    );
    let listed: Vec<String> = outcome.violations.iter().map(|v| v.to_string()).collect();
    assert!(
        outcome.violations.is_empty(),
        "seed {seed}: {} violations:\n{}\n{}",
        listed.len(),
        listed.join("\n"),
        outcome.diagnostics
    );
    assert!(
        outcome.finished,
        "seed {seed}: not finished\n{}",
        outcome.diagnostics
    );
    assert!(
        outcome.total_kills() >= scenario.kills_target,
        "seed {seed}: the volley ended after only {} kills (want {}): kill faster or raise the count\n{}",
        outcome.total_kills(),
        scenario.kills_target,
        outcome.diagnostics
    );
    // The harness never lets one side get 3 kills ahead, so 20 kills are at least 9 each.
    for (id, kills) in &outcome.kills {
        assert!(
            *kills >= scenario.kills_target / 2 - 1,
            "seed {seed}: {id} was killed only {kills} times"
        );
    }
}

/// Negative control: the same harness against a runtime that releases outputs before
/// commit (`KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1`) must report a specific violation (a gap,
/// a repeat, a wrong received count, or a message acknowledged but never consumed) in at
/// least one of a few attempts. Proves the checks above can fail.
///
/// What it finds in practice, at the first or second kill: a lost message (the peer holds
/// an acknowledgement beyond what the killed process's store consumed). Never a gap or a
/// repeat: pingpong's handler is deterministic, so re-running rolled-back turns re-sends
/// the same balls under the same sequence numbers (see `crate::pingpong_harness`); without the
/// store check the broken runtime only stalls until the deadline.
#[test]
fn negative_control_release_before_commit_is_caught() {
    let base = seed::seed("negative_control_release_before_commit_is_caught");
    let scenario = Scenario {
        unsafe_release_before_commit: true,
        kills_target: 40,
        deadline: Duration::from_secs(15),
        ..Scenario::default()
    };
    const ATTEMPTS: u64 = 3;
    let mut seen = Vec::new();
    for attempt in 0..ATTEMPTS {
        let seed = base.wrapping_add(attempt);
        let outcome = pingpong::run(&binary(), &scenario, seed).expect("the harness's own I/O");
        println!("attempt {attempt}: {}", outcome.summary());
        for v in &outcome.violations {
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
        "the harness found no specific violation in {ATTEMPTS} attempts with outputs released \
         before commit:\n{}",
        seen.join("\n")
    );
}
