//! Runs the deterministic simulation over many seeds.
//!
//! `KEN_SIM_SEEDS=N` runs N seeds (default 200), `KEN_SIM_SEED=S` replays one seed,
//! `KEN_SIM_STEPS=K` changes the number of faulty steps per run.

use ken::Tuning;
use ken_tests::sim::{Sim, SimConfig, SimFaults, SimReport, StandbyPlan};
use ken_tests::sim_apps::{BankSim, PingPongSim};
use ken_tests::sim_mixed::{MixedReport, MixedSim};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn seeds(default_count: u64, base: u64) -> Vec<u64> {
    if let Some(s) = env_u64("KEN_SIM_SEED") {
        return vec![s];
    }
    let n = env_u64("KEN_SIM_SEEDS").unwrap_or(default_count);
    (0..n).map(|i| base + i).collect()
}

fn config(seed: u64, steps: u64, tuning: Tuning) -> SimConfig {
    SimConfig {
        seed,
        steps: env_u64("KEN_SIM_STEPS").unwrap_or(steps),
        faults: SimFaults::default(),
        tuning,
        quiesce_ms: 120_000,
        check_sends: true,
    }
}

fn bank() -> BankSim {
    BankSim {
        members: 3,
        accounts: 4,
        initial_balance: 100,
        transfers: 25,
        transfer_interval_ms: 3,
    }
}

fn run_bank(seed: u64, tuning: Tuning) -> SimReport {
    Sim::new(bank(), config(seed, 3000, tuning)).run()
}

fn summarize(name: &str, reports: &[SimReport]) {
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "{name}: {} seeds, {} steps, {} crashes, {} commits, {} turns, {} frames sent, {} dropped, {} junk",
        reports.len(),
        sum(|r| r.steps),
        sum(|r| r.crashes),
        sum(|r| r.commits),
        sum(|r| r.turns),
        sum(|r| r.frames_sent),
        sum(|r| r.frames_dropped),
        sum(|r| r.frames_junk),
    );
}

fn fail_on_violations(name: &str, reports: &[SimReport]) {
    let bad: Vec<&SimReport> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    if let Some(r) = bad.first() {
        panic!(
            "{name}: {} of {} seeds violated invariants; first: seed {}:\n  {}\nreplay: KEN_SIM_SEED={} cargo test --release -p ken-tests {name}",
            bad.len(),
            reports.len(),
            r.seed,
            r.violations.join("\n  "),
            r.seed
        );
    }
}

#[test]
fn sim_bank_exactly_once_and_conservation_under_crashes_and_faults() {
    let seeds = seeds(200, 1);
    println!("sim_bank: seeds {:?}..", seeds.first());
    let reports: Vec<SimReport> = seeds
        .iter()
        .map(|&s| run_bank(s, Tuning::default()))
        .collect();
    summarize("sim_bank", &reports);
    fail_on_violations("sim_bank", &reports);
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    assert!(
        crashes > 0 || reports.len() == 1,
        "the simulation crashed nothing"
    );
}

#[test]
fn sim_pingpong_no_gaps_no_repeats_under_crashes_and_faults() {
    let seeds = seeds(50, 10_000);
    let reports: Vec<SimReport> = seeds
        .iter()
        .map(|&s| {
            Sim::new(
                PingPongSim { count: 200 },
                config(s, 3000, Tuning::default()),
            )
            .run()
        })
        .collect();
    summarize("sim_pingpong", &reports);
    fail_on_violations("sim_pingpong", &reports);
}

/// The negative control: with outputs released before commit, the checkers must object.
#[test]
fn sim_detects_release_before_commit() {
    let tuning = Tuning {
        release_before_commit: true,
        ..Tuning::default()
    };
    let reports: Vec<SimReport> = (1..=10).map(|s| run_bank(s, tuning.clone())).collect();
    let caught = reports.iter().filter(|r| !r.violations.is_empty()).count();
    println!(
        "sim_detects_release_before_commit: {caught}/10 seeds caught; e.g. {:?}",
        reports.iter().find_map(|r| r.violations.first())
    );
    assert_eq!(caught, 10, "every seed must catch the broken build");
}

/// The negative control again, with the per-frame check off: the end-to-end checks
/// (exactly-once consumption of committed messages, conservation) catch it on their own.
#[test]
fn sim_end_to_end_checks_detect_release_before_commit() {
    let tuning = Tuning {
        release_before_commit: true,
        ..Tuning::default()
    };
    let reports: Vec<SimReport> = (1..=20)
        .map(|s| {
            let mut c = config(s, 3000, tuning.clone());
            c.check_sends = false;
            Sim::new(bank(), c).run()
        })
        .collect();
    let caught = reports.iter().filter(|r| !r.violations.is_empty()).count();
    let mut kinds: Vec<&String> = reports.iter().flat_map(|r| r.violations.first()).collect();
    kinds.truncate(3);
    println!(
        "sim_end_to_end_checks_detect_release_before_commit: {caught}/20 caught; e.g. {kinds:?}"
    );
    assert!(
        caught >= 10,
        "only {caught} of 20 seeds caught the broken build"
    );
}

/// Same seed, same run: the simulation is deterministic.
#[test]
fn sim_replays_from_its_seed() {
    let a = run_bank(42, Tuning::default());
    let b = run_bank(42, Tuning::default());
    assert_eq!(
        (
            a.steps,
            a.crashes,
            a.commits,
            a.turns,
            a.frames_sent,
            a.frames_junk,
            a.virtual_ms
        ),
        (
            b.steps,
            b.crashes,
            b.commits,
            b.turns,
            b.frames_sent,
            b.frames_junk,
            b.virtual_ms
        )
    );
}

/// A rolling upgrade (bank schema 1 to 2, member by member) inside the faulty phase, with
/// transfers spread over the whole phase (about 5 s of virtual time), so that every member
/// still sends while the versions are mixed. Balances large enough that no account runs dry
/// (at most 60 transfers of at most 100 from 10,000): otherwise a member whose accounts all
/// emptied after the others finished would wait for ever for a credit (the workload's
/// end, not Ken's).
fn run_mixed(config: SimConfig) -> MixedReport {
    let app = BankSim {
        transfers: 60,
        transfer_interval_ms: 60,
        initial_balance: 10_000,
        ..bank()
    };
    MixedSim::new(app, config).run()
}

#[test]
fn sim_rolling_upgrade_keeps_exactly_once_fifo_and_conservation() {
    let seeds = seeds(20, 50_000);
    let reports: Vec<MixedReport> = seeds
        .iter()
        .map(|&s| run_mixed(config(s, 3000, Tuning::default())))
        .collect();
    let held: u64 = reports.iter().map(|r| r.messages_held).sum();
    let mixed: u64 = reports.iter().map(|r| r.mixed_steps).sum();
    println!(
        "sim_rolling_upgrade: {held} held deliveries, {mixed} steps with both versions running"
    );
    let plain: Vec<SimReport> = reports.iter().map(|r| r.report.clone()).collect();
    summarize("sim_rolling_upgrade", &plain);
    fail_on_violations("sim_rolling_upgrade", &plain);
    for r in &reports {
        assert_eq!(
            r.upgrades, 3,
            "seed {}: every member upgraded once",
            r.report.seed
        );
    }
    assert!(mixed > 0, "the versions never ran side by side");
    // A run replays from its seed, mixed versions and all.
    let again = run_mixed(config(seeds[0], 3000, Tuning::default()));
    let key = |r: &MixedReport| {
        let p = &r.report;
        (
            p.commits,
            p.turns,
            p.crashes,
            p.frames_sent,
            p.virtual_ms,
            r.messages_held,
        )
    };
    assert_eq!(
        key(&again),
        key(&reports[0]),
        "seed {} did not replay",
        seeds[0]
    );
    assert!(
        held > 0 || reports.len() == 1,
        "no message of schema 2 ever reached a schema-1 member: the mix was not exercised"
    );
}

/// The negative control: with held messages consumed and dropped instead (the behaviour
/// before issue 14), the same runs lose transfers and the checks say so.
#[test]
fn sim_rolling_upgrade_detects_dropped_newer_messages() {
    let tuning = Tuning {
        drop_held_messages: true,
        ..Tuning::default()
    };
    // The per-frame check off: the end-to-end checks (exactly-once consumption, every
    // transfer sent applied, conservation) must see the loss on their own.
    let reports: Vec<MixedReport> = (50_000..50_005)
        .map(|s| {
            run_mixed(SimConfig {
                check_sends: false,
                ..config(s, 3000, tuning.clone())
            })
        })
        .collect();
    let caught = reports
        .iter()
        .filter(|r| !r.report.violations.is_empty())
        .count();
    println!(
        "sim_rolling_upgrade_detects_dropped_newer_messages: {caught}/5 seeds caught; e.g. {:?}",
        reports.iter().find_map(|r| r.report.violations.first())
    );
    assert_eq!(caught, 5, "every seed must catch the lost messages");
}

/// The standby seeds: `KEN_SIM_STANDBY_SEEDS=N` (default 20), or `KEN_SIM_SEED=S` to replay.
fn standby_seeds() -> Vec<u64> {
    if let Some(s) = env_u64("KEN_SIM_SEED") {
        return vec![s];
    }
    let n = env_u64("KEN_SIM_STANDBY_SEEDS").unwrap_or(20);
    (0..n).map(|i| 70_000 + i).collect()
}

/// The bank under simulation where bank-0 and bank-1 have a standby each, and each is
/// promoted (its store deleted for good) at a random step of the faulty phase, amid loss,
/// duplication, corruption, reordering and crashes of every member. Transfers spread over
/// the whole faulty phase (as in the rolling upgrade, balances large enough that no account
/// runs dry), so that a promotion comes while transfers are under way.
fn run_bank_standby(seed: u64, release_early: f64, check_sends: bool) -> SimReport {
    run_bank_standby_with(seed, release_early, false, check_sends)
}

fn run_bank_standby_with(
    seed: u64,
    release_early: f64,
    skip_take_back: bool,
    check_sends: bool,
) -> SimReport {
    let app = BankSim {
        transfers: 60,
        transfer_interval_ms: 60,
        initial_balance: 10_000,
        ..bank()
    };
    let mut sim = Sim::new(
        app,
        SimConfig {
            check_sends,
            ..config(seed, 3000, Tuning::default())
        },
    );
    sim.set_standby(&StandbyPlan {
        nodes: vec![0, 1],
        release_early,
        skip_take_back,
    });
    sim.run()
}

/// Issue 18: exactly-once, FIFO, output validity and conservation hold across the
/// promotion of a standby whose primary's store was destroyed.
#[test]
fn sim_standby_promotion_keeps_exactly_once_fifo_and_conservation() {
    let seeds = standby_seeds();
    println!(
        "sim_standby: seeds {:?}..={:?} (more: KEN_SIM_STANDBY_SEEDS=N)",
        seeds.first(),
        seeds.last()
    );
    let reports: Vec<SimReport> = seeds
        .iter()
        .map(|&s| run_bank_standby(s, 0.0, true))
        .collect();
    summarize("sim_standby", &reports);
    let promotions: u64 = reports.iter().map(|r| r.promotions).sum();
    let reseeds: u64 = reports.iter().map(|r| r.reseeds).sum();
    let mid_work: u64 = reports.iter().map(|r| r.promotions_mid_work).sum();
    let lost: u64 = reports.iter().map(|r| r.unreplicated_lost).sum();
    let shipped_only: u64 = reports.iter().map(|r| r.shipped_only).sum();
    println!(
        "sim_standby: {promotions} promotions ({mid_work} with transfers under way, {lost} of a down process whose replica lacked its last, unreleased batch), {reseeds} replica seedings, {shipped_only} batches in a replica and not in the store at a crash (taken back at the restart, or kept by the promotion)"
    );
    fail_on_violations("sim_standby", &reports);
    for r in &reports {
        assert_eq!(r.promotions, 2, "seed {}: both standbys promoted", r.seed);
        assert!(
            r.crashes > 0 || reports.len() == 1,
            "seed {}: no crash",
            r.seed
        );
    }
    assert!(
        mid_work > 0,
        "every promotion came after the work was done: nothing crossed it"
    );
    // Set-up seeds each replica once; crashes that left a replica behind reseed it again.
    assert!(
        reseeds > 2 * reports.len() as u64 || reports.len() == 1,
        "no replica was ever reseeded after a crash: that path was not exercised"
    );
    assert!(
        shipped_only > 0 || reports.len() == 1,
        "no crash left a batch in a replica only: the take-back was not exercised"
    );
}

/// The negative control: a cluster that releases a batch's outputs before its replica holds
/// it (and the replica then lacks it when promoted) must be caught by the checks.
#[test]
fn sim_standby_detects_release_before_the_replica_holds_it() {
    let seeds: Vec<u64> = (70_000..70_008).collect();
    let reports: Vec<SimReport> = seeds
        .iter()
        .map(|&s| run_bank_standby(s, 0.5, true))
        .collect();
    let caught = reports.iter().filter(|r| !r.violations.is_empty()).count();
    println!(
        "sim_standby_detects_release_before_the_replica_holds_it: {caught}/{} seeds caught; e.g. {:?}",
        reports.len(),
        reports.iter().find_map(|r| r.violations.first())
    );
    assert!(caught >= 1, "no seed caught the broken release gate");
}

/// The control of the take-back in the model: a process restarted after a crash that left
/// its last batch in its replica only, which drops that batch (its replica is then reseeded
/// from its store) instead of taking it back, runs those inputs again as if the batch never
/// was. The model counts the batch committed from the moment the replica holds it (the
/// take-back and a promotion both keep it), so the checks must catch the divergence.
/// Dropping it is what the shipper's reseed did before the take-back existed, and was
/// harmless then (nothing of the batch had been released; the model did not count it): what
/// this shows is that the simulation sees whether the take-back happened, not a loss.
#[test]
fn sim_standby_detects_a_restart_that_drops_what_its_replica_holds() {
    let seeds: Vec<u64> = (70_000..70_020).collect();
    let reports: Vec<SimReport> = seeds
        .iter()
        .map(|&s| run_bank_standby_with(s, 0.0, true, true))
        .collect();
    let exercised: u64 = reports.iter().map(|r| r.shipped_only).sum();
    let caught = reports.iter().filter(|r| !r.violations.is_empty()).count();
    println!(
        "sim_standby_detects_a_restart_that_drops_what_its_replica_holds: {caught}/{} seeds caught ({exercised} batches in a replica only); e.g. {:?}",
        reports.len(),
        reports.iter().find_map(|r| r.violations.first())
    );
    assert!(exercised > 0, "no crash left a batch in a replica only");
    assert!(caught >= 1, "no seed caught the dropped batches");
}
