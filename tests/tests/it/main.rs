//! In-process integration tests of ken-tests: the deterministic simulation (one test
//! binary, per matklad's advice). Real-process tests are in `tests/real`, a binary of their
//! own: see there why they cannot share this process.

mod sim;
