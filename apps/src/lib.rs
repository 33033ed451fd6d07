//! Example Ken services. Each app is a pure handler library (this crate), its command line
//! ([`cli`]: parse, then [`ken::run`]) and a thin binary (`src/bin/`) that only calls it. The
//! handler is what the simulation drives; the command line is what `ken torture`, `ken demo`
//! and the real-process tests run, as `ken app NAME ..` (the same code as `ken-NAME ..`).
//!
//! - [`pingpong`]: two processes volley a counter up to N; each checks there is no gap and
//!   no repeat in what it receives.
//! - [`bank`]: accounts spread over processes; timers drive random transfers; money is
//!   conserved and no transfer is applied twice.
//! - [`kv`]: a key-value store served to clients outside Ken (`ken::Client`), each request
//!   applied exactly once; `incr` makes a double application visible.
//! - [`lock`]: a lock service whose locks are freed when the holder's FUSE group fails (no
//!   leases, no timeouts): fencing tokens, FIFO waiters.
//!
//! Each binary also has an `inspect STORE [VIEW]` subcommand (the views of `ken inspect`, from
//! the `ken-inspect` crate) that decodes the app's own types ([`inspect`]). What the tools
//! check about an app (its stores, its output) is here too, next to the types it reads:
//! [`bank::audit`], [`lock::audit_server`], [`pingpong::Report`].

pub mod bank;
pub mod cli;
pub mod inspect;
pub mod kv;
pub mod lock;
pub mod pingpong;
