//! Integration tests of the `ken` command line (one test binary for the crate).

mod bench;
mod cluster;
mod demo;
mod fuse;
mod help;
mod inspect;
mod netns;
mod standby;
mod torture;
mod torture_standby;
mod upgrade;
