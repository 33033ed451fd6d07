//! Integration tests of `ken-inspect` (one test binary).

mod tasks;
