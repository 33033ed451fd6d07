//! The `ken-tools` library: what the `ken` command shares with its tests.
//!
//! - [`harness`]: the one process harness. `ken torture`, `ken demo`, `ken bench` (and
//!   `ken bench fuse`) and every real-process test (`tests/it`, `tests/real`) start, watch,
//!   pause, SIGKILL and restart their child processes through it, and pick their loopback
//!   ports with its [`harness::free_ports`].
//! - [`keys`]: the cluster key files of a run (`ken demo` and `ken torture` run keyed by
//!   default) and the steps of a key rotation (`ken torture --rotate-key`).
//!
//! Where ken-tools sits: at the top of the workspace's one-way dependency graph, `ken-store`
//! and `ken-transport` <- `ken` <- `ken-inspect` <- `ken-apps` <- `ken-tools` (`ken-tests` may
//! depend on anything). So the tools use the apps' own types and audits, never copies
//! (`ken_apps::bank::audit_run`, `ken_apps::lock::audit_server`, `ken_apps::kv::Request`,
//! ...), and run app processes from their own executable: the `ken` binary's hidden
//! `ken app NAME ARGS..` runs the app's command line (`ken_apps::cli`), the same code as the
//! app's own binary. The inspection views (`ken inspect`) are the `ken-inspect` crate,
//! shared with the app binaries' `inspect` subcommands.

pub mod harness;
pub mod keys;
