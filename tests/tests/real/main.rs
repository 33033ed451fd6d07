//! Real-process tests of ken-tests: app binaries started, SIGKILLed and restarted as child
//! processes.
//!
//! A test binary of its own, not modules of `tests/it` (the crate's other test binary, the
//! in-process simulation), because the two cannot share a process: while this binary spawns
//! children, a child briefly holds copies of every descriptor of the test process (from
//! its fork until its exec closes them), including the owner lock of any store the
//! simulation has open in another thread. A simulated crash that drops a store and reopens
//! it at that moment gets a spurious `OpenError::InUse` naming its own pid. Measured: with
//! both in one binary, `cargo test --release -p ken-tests` failed a simulation test in 11
//! runs of 12; a loop spawning `/bin/true` next to the simulation does the same. Cargo runs
//! test binaries one after the other, so two binaries never overlap.

mod kv_kill;
mod lock;
mod pingpong_kill;
mod procs;
