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
//! The crate has three layers:
//! - [`Handler`] and [`Turn`]: what an application implements and what a turn may do.
//! - [`engine`]: the protocol as a state machine with no I/O (events in, commands out).
//! - [`driver`]: the tokio runtime wiring an engine to a store and a UDP endpoint:
//!   [`run`].
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
//!     type State = State;
//!     type Message = Msg;
//!     fn on_turn(&self, state: &mut State, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
//!         if let Input::Message { from, message: Msg::Ping, .. } = input {
//!             state.pings += 1;
//!             turn.send(&from, &Msg::Pong).expect("peer is in the address book");
//!         }
//!     }
//! }
//! ```

pub mod client;
pub mod crash;
pub mod driver;
pub mod engine;
pub mod handler;
pub mod limits;
pub mod testing;
mod time;
mod tuning;

pub use client::{BlockingClient, Client, ClientError, ClientId, ClientOptions};
pub use driver::{run, Config, Exit, RunError};
pub use engine::fuse::{FuseError, GroupId, GroupState};
pub use engine::{BatchId, Command, Engine, EngineConfig, EngineError, EngineStats};
pub use handler::{Handler, Input, SendError, Table, Turn};
pub use ken_store as store;
pub use ken_transport as transport;
pub use ken_transport::{Incarnation, ProcessId, Seq};
pub use time::Time;
pub use tuning::Tuning;
