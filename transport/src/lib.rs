//! Ken's datagram transport.
//!
//! - [`frame`]: the wire frame (byte layout in `transport/FRAME.md`), its tag and optional
//!   encryption ([`Frame::seal`]) and its total decoder ([`Frame::open`]).
//! - [`auth`]: the cluster key (key files), the keys derived from it, client credentials,
//!   and the [`Keyring`] a process seals and opens frames with (threat model in SECURITY.md).
//! - [`endpoint`]: an async UDP endpoint on tokio that sends and receives frames; junk
//!   datagrams, and with a keyring unauthenticated ones, are dropped and counted by reason,
//!   never surfaced.
//! - [`faults`]: a seeded fault layer under the endpoint (drop, duplicate, reorder, delay,
//!   corrupt, truncate, partition), configured at run time or from `KEN_FAULTS` and
//!   `KEN_FAULTS_FILE` (syntax in `transport/FAULTS.md`).
//!
//! This crate knows nothing of turns, stores or sequence-number semantics: it moves frames.
//! Delivery is UDP's: frames may be lost, duplicated or reordered (more so with faults on),
//! never corrupted (a frame that does not pass its CRC is dropped) and, with a keyring, never
//! forged (a frame whose tag does not check out is dropped).
//!
//! # Example
//!
//! ```
//! use ken_transport::{Auth, Endpoint, FaultConfig, Frame, FrameKind, Incarnation, ProcessId, Seq};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let alice = Endpoint::bind("127.0.0.1:0".parse()?)?;
//! let bob = Endpoint::bind("127.0.0.1:0".parse()?)?;
//! let frame = Frame {
//!     kind: FrameKind::Data,
//!     auth: Auth::None,
//!     from: ProcessId::new("alice")?,
//!     from_incarnation: Incarnation(1),
//!     to: ProcessId::new("bob")?,
//!     to_incarnation: Incarnation(0), // not known yet
//!     seq: Seq(1),
//!     ack: Seq(0),
//!     acked: Seq(0),
//!     payload: b"hello".to_vec(),
//! };
//! alice.send(bob.local_addr(), &frame).await?;
//! let (received, from) = bob.recv().await?;
//! assert_eq!((received, from), (frame.clone(), alice.local_addr()));
//!
//! // Faults: with `drop=1` nothing leaves, and the endpoint counts it.
//! alice.set_faults("seed=1,drop=1".parse::<FaultConfig>()?);
//! alice.send(bob.local_addr(), &frame).await?;
//! assert_eq!(alice.stats().faults_dropped, 1);
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod endpoint;
pub mod faults;
pub mod frame;
pub mod mmsg;

pub use auth::{
    ClientCredential, ClusterKey, FrameKey, FrameKeys, KeyFileError, KeyId, Keyring, KeyringError,
    NoKeys, StandbyKey, StreamKey,
};
pub use endpoint::{Endpoint, EndpointOptions, EndpointStats, FaultsFile, SendError};
pub use faults::{FaultConfig, FaultInjector, FaultParseError};
pub use frame::{
    Auth, DecodeError, EncodeError, Frame, FrameKind, IdError, Incarnation, ProcessId, Seq,
};
pub use mmsg::{RecvBuffers, RECV_BATCH_MAX};
