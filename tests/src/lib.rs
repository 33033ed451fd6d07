//! Cross-crate tests for Ken.
//!
//! - [`sim`]: the deterministic simulation (seeded; crashes, lossy network, invariant checks
//!   after every step), with the example apps wired in by [`sim_apps`].
//!
//! The tests themselves are in `tests/it/` (one integration-test binary).

pub mod sim;
pub mod sim_apps;
