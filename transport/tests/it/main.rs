//! The transport's integration tests, one binary (`cargo test -p ken-transport --test it`).
//!
//! - `fuzz`: the decoder against a million random and mutated datagrams, and proptest
//!   round trips.
//! - `auth`: keyed endpoints: tagged frames cross, other clusters', untagged and altered
//!   frames are dropped and counted, rotation.
//! - `endpoint`: real UDP on 127.0.0.1 (port 0): round trips, junk, concurrency.
//! - `faults`: every fault through real endpoints, determinism, `KEN_FAULTS` and
//!   `KEN_FAULTS_FILE`.
//!
//! Randomized tests print their seed; `KEN_SEED=N` replays one. Nothing sleeps to "wait long
//! enough": conditions are awaited with a deadline ([`support::DEADLINE`]).

mod auth;
mod endpoint;
mod faults;
mod fuzz;
mod support;
