//! Cross-crate tests for Ken: the deterministic simulation. The tests themselves are in the
//! test binary `tests/it/`; this library holds what they share:
//!
//! - [`sim`]: the deterministic simulation (seeded; crashes, lossy network, invariant checks
//!   after every step), with the example apps wired in by [`sim_apps`];
//! - [`sim_mixed`]: the same for a rolling upgrade, bank schema 1 to 2 one member at a time
//!   mid-run, old and new versions side by side.
//!
//! The real-process kill-and-restart tests live with the `ken` binary they run, in ken-tools
//! (`tools/tests/real/`: they start `ken app ..` children through `ken_tools::harness`).

pub mod sim;
pub mod sim_apps;
pub mod sim_mixed;
