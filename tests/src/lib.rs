//! Cross-crate tests for Ken: the deterministic simulation. The tests themselves are in the
//! test binary `tests/it/`; this library holds what they share:
//!
//! - [`sim`]: the deterministic simulation (seeded; crashes, lossy network, invariant checks
//!   after every step), with the example apps wired in by [`sim_apps`].
//!
//! The real-process kill-and-restart tests live with the `ken` binary they run, in ken-tools
//! (`tools/tests/real/`: they start `ken app ..` children through `ken_tools::harness`).

pub mod sim;
pub mod sim_apps;
