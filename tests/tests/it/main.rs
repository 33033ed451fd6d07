//! Integration tests of ken-tests: simulation and real-process runs (one test binary, per
//! matklad's advice).

mod pingpong_kill;
mod procs;
mod sim;
