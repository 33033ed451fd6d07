//! Cross-crate tests for Ken. The tests themselves are in two test binaries: `tests/it/`
//! (in-process: the simulation) and `tests/real/` (real processes, SIGKILLed; kept apart
//! because spawning children disturbs in-process store reopening, see `tests/real/main.rs`).
//! This library holds what they share and what a torture harness reuses:
//!
//! - [`sim`]: the deterministic simulation (seeded; crashes, lossy network, invariant checks
//!   after every step), with the example apps wired in by [`sim_apps`];
//! - [`procs`]: real app processes: find the binary, start, SIGKILL, restart, read stdout,
//!   free loopback ports, deadline waits;
//! - [`seed`]: printed, replayable seeds (`KEN_SEED`);
//! - [`stores`]: invariants across the stores of communicating processes;
//! - [`pingpong`]: the pingpong kill-and-restart harness over real processes;
//! - [`kv`]: the kv kill-and-restart harness: client threads with exactly-once retries
//!   against a real `ken-kv` process.

pub mod kv;
pub mod pingpong;
pub mod procs;
pub mod seed;
pub mod sim;
pub mod sim_apps;
pub mod stores;
