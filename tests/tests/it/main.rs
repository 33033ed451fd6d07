//! In-process integration tests of ken-tests: the deterministic simulation and the
//! corruption campaign (`campaign.rs`, issue 13) (one test
//! binary, per matklad's advice). Real-process tests are in `tests/real`, a binary of their
//! own: see there why they cannot share this process.

mod campaign;
mod sim;
