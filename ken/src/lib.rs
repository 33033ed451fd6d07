//! # Ken: crash-restart is invisible
//!
//! Ken runs a process as a sequence of **atomic handler turns**. Each turn consumes one input
//! (a peer's message, a timer, the start of a fresh process) and may change durable state,
//! send messages, set timers and emit output. A turn's effects are committed to the local
//! checkpoint store (SQLite) before anything leaves the process; senders retransmit until the
//! receiver acknowledges; receivers drop duplicates. So `kill -9` of a process at any
//! instant, followed by a restart, is invisible to its peers: no message lost, none
//! processed twice, no output from a turn that was rolled back.
//!
//! What an application uses, all at the top level of this crate:
//! - [`Handler`], [`Input`], [`Turn`] (and [`Table`]): what an application implements, what
//!   a turn receives, and everything a turn may do.
//! - [`run`] with a [`Config`] (and [`Tuning`]): runs a process until it finishes or fails
//!   ([`RunError`]).
//! - [`Client`] / [`BlockingClient`]: exactly-once requests from programs outside Ken,
//!   typed by the handler's [`Handler::Request`] and [`Handler::Reply`].
//! - [`ClusterKey`] and [`ClientCredential`]: the cluster's shared secret (set in
//!   [`Config::key`]; every peer frame is then authenticated) and what a [`Client`] shows to
//!   prove which client it is. SECURITY.md has the threat model.
//! - [`ClusterFile`]: a cluster described once in TOML (processes with host names or IP
//!   addresses, shared settings, store paths); [`Config::from_cluster_file`] makes a
//!   process's config from it. The [`cluster`] module documents the format.
//! - [`Turn::start_task`] and [`Config::task`]: outside work (any I/O) as tasks that run
//!   at least once, with a stable idempotency key, and whose result comes back exactly once
//!   as [`Input::TaskDone`]; the [`task`] module explains the guarantee.
//! - [`compose`]: several independently written components (each its own state, tables,
//!   timers and message types) hosted by one process, one store and one turn loop, as one
//!   [`Handler`]; they address each other and remote components by name.
//! - [`limits`]: every limit and default, with its value.
//!
//! Below that, for hosts, simulations and tools rather than applications: [`engine`], the
//! protocol as a state machine with no I/O (events in, commands out), which [`run`] drives
//! with tokio, a SQLite store and a UDP socket; [`crash`], the crash points torture
//! harnesses arm (`KEN_CRASH_AT`); and [`admin`], the operator's requests to a running
//! process (`ken status`, `ken admit --cluster`), answered by the runtime, never the
//! application.
//!
//! ```
//! use ken::{Handler, Input, Turn};
//! use serde::{Deserialize, Serialize};
//!
//! /// Counts the pings it receives and answers each with a pong.
//! struct Counter;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct State { pings: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Msg { Ping, Pong }
//!
//! impl Handler for Counter {
//!     const APP: &'static str = "counter";
//!     type State = State;
//!     type Message = Msg;
//!     type Request = (); // no clients
//!     type Reply = ();
//!     fn on_turn(&self, state: &mut State, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
//!         if let Input::Message { from, message: Msg::Ping, .. } = input {
//!             state.pings += 1;
//!             turn.send(&from, &Msg::Pong).expect("peer is in the address book");
//!         }
//!     }
//! }
//! ```

pub mod admin;
pub mod app;
pub mod client;
pub mod cluster;
pub mod compose;
pub mod crash;
mod driver;
pub mod engine;
mod fuse_types;
mod handler;
pub mod limits;
pub mod living;
mod metrics;
/// The driver's per-message timing hook ([`Config::observe`]), for benchmarks: when each
/// message was sent by its turn, first transmitted, and acknowledged.
pub mod observe {
    pub use crate::driver::{MessageTimes, Observer};
}
pub mod standby;
pub mod task;
pub mod testing;
mod time;
mod tuning;
pub mod upgrade;
mod watch;

pub use client::{BlockingClient, Client, ClientError, ClientId, ClientOptions, PendingRequest};
pub use cluster::{ClusterError, ClusterFile, PeerAddress};
pub use driver::{run, Config, Exit, Resolver, RunError};
pub use engine::fuse::{FuseError, GroupId, GroupState};
pub use handler::{Handler, Input, SendError, Table, Turn};
pub use ken_store as store;
pub use ken_transport as transport;
pub use ken_transport::{ClientCredential, ClusterKey, Incarnation, KeyFileError, ProcessId, Seq};
pub use task::{TaskContext, TaskId, TaskResult};
pub use time::Time;
pub use tuning::{Tuning, TuningError};
pub use upgrade::Migration;
