//! The `ken-tools` library: what the `ken` command shares with its tests.

pub mod harness;
