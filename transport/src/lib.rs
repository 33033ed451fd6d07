//! Ken's datagram transport.
//!
//! - [`frame`]: the wire frame (byte layout in `transport/FRAME.md`) and its total decoder.
//! - [`endpoint`]: an async UDP endpoint on tokio that sends and receives frames; junk
//!   datagrams are dropped and counted, never surfaced.
//! - [`faults`]: a seeded fault layer under the endpoint (drop, duplicate, reorder, delay,
//!   corrupt, truncate, partition), configured at run time or from `KEN_FAULTS`.
//!
//! This crate knows nothing of turns, stores or sequence-number semantics: it moves frames.

pub mod endpoint;
pub mod faults;
pub mod frame;

pub use endpoint::{Endpoint, EndpointOptions, EndpointStats, FaultsFile, SendError};
pub use faults::{FaultConfig, FaultInjector, FaultParseError};
pub use frame::{DecodeError, EncodeError, Frame, FrameKind, IdError, Incarnation, ProcessId, Seq};
