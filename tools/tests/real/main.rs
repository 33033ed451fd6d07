//! Real-process kill-and-restart tests: app processes (`ken app ..`, run from the `ken`
//! binary cargo built for these tests, `CARGO_BIN_EXE_ken`) started, SIGKILLed and restarted
//! through the process harness (`ken_tools::harness`).
//!
//! - [`pingpong_kill`]: two pingpong players SIGKILLed at random, every ball exactly once
//!   (harness: [`pingpong_harness`], cross-store checks: [`stores`]);
//! - [`kv_kill`]: the kv service SIGKILLed under client load, every request exactly once
//!   (harness: [`kv_harness`]);
//! - [`lock`]: the FUSE lock service's server and holders SIGKILLed, restarted or not;
//! - [`status`]: `ken status` and `ken admit --cluster` on a keyed bank cluster;
//! - [`bind`]: a life that cannot bind its port is recognised (the harnesses move to fresh
//!   ports then).
//!
//! A test binary of its own, not modules of `tests/it` (the crate's other test binary),
//! because the two cannot share a process: while this binary spawns children, a child
//! briefly holds copies of every descriptor of the test process (from its fork until its
//! exec closes them), including the owner lock of any store a test in another thread has
//! open. A store dropped and reopened in-process at that moment (as the inspect tests and
//! the simulation do) gets a spurious `OpenError::InUse` naming its own pid. Measured (when
//! these tests lived beside the simulation in ken-tests): with both in one binary,
//! `cargo test --release -p ken-tests` failed a simulation test in 11 runs of 12; a loop
//! spawning `/bin/true` next to the simulation does the same. Cargo runs test binaries one
//! after the other, so two binaries never overlap.
//!
//! Replay a randomized test with the seed it printed: `KEN_SEED=<seed> cargo test --release
//! -p ken-tools --test real <test name>` ([`seed`]).

mod bind;
mod keys;
mod kv_harness;
mod kv_kill;
mod lock;
mod pingpong_harness;
mod pingpong_kill;
mod seed;
mod status;
mod stores;

/// The `ken` binary under test, whose hidden `ken app NAME ..` runs the example apps.
pub fn ken() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_ken"))
}
