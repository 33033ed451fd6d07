//! Example Ken services. Each app is a pure handler library (this crate) plus a thin binary
//! (`src/bin/`): the handler is what the simulation and the torture harness drive, the
//! binary only parses a command line and calls [`ken::run`].
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
//! Each binary also has an `inspect STORE [VIEW]` subcommand (the views of `ken inspect`)
//! that decodes the app's own types ([`inspect`]).

pub mod bank;
pub mod cli;
pub mod inspect;
pub mod kv;
pub mod lock;
pub mod pingpong;
