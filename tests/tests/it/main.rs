//! Integration tests of ken-tests: simulation and real-process runs.

mod sim;
