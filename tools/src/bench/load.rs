//! The throughput phase's load generator: one light process that speaks the Ken frame
//! protocol directly for N simulated senders, so that the receiver's turn rate is not
//! limited by N full Ken processes (each with its own store, commits and runtime) competing
//! with it for this machine's CPUs and disk.
//!
//! Each simulated sender is what the receiver sees of a Ken process: its own [`ProcessId`]
//! (`load-0`, `load-1`, ...), its own UDP socket (the receiver's address book names it), a
//! random non-zero incarnation (from the seed in the spec, so a run is reproducible), and the
//! sender half of the protocol of `ken::engine`:
//! - `Data` frames with sequence numbers 1, 2, 3, ... whose payloads are the receiver's
//!   message type ([`Msg::Data`] with the sequence number, then one [`Msg::Done`] at
//!   `stop_at`) encoded with [`ken::store::codec::encode`] in the version envelope of the
//!   receiver's schema version ([`ken::store::wrap_payload`]), at most `outstanding`
//!   unacknowledged at any time;
//! - cumulative acknowledgements, from `Ack` frames and piggybacked on `Data` frames (the
//!   receiver sends none, but they would count), free window space;
//! - the receiver's incarnation is learned from its first frame and put in
//!   `to_incarnation` from then on (0 before, as the engine does);
//! - unacknowledged frames are retransmitted (all of them, go-back-N: the receiver buffers
//!   out-of-order arrivals and drops duplicates) after [`RTO_INITIAL`] without progress,
//!   doubling up to [`RTO_MAX`] while none comes (but not after `Done`: the receiver lingers
//!   only briefly once finished), so that a datagram lost in the kernel does not stall a
//!   sender and a slow commit is not flooded with copies.
//!
//! It keeps nothing durable: it is a load, not a Ken process, and it never restarts. What it
//! reports per simulated sender (messages sent, highest sequence acknowledged) is checked by
//! `ken bench` against the receiver's store.
//!
//! With a cluster key (`ken bench`'s keyed variants) every frame is sealed with it as a Ken
//! process seals it (tagged; encrypted too if asked), and frames received are opened with it.
//!
//! One current-thread tokio runtime runs one task per simulated sender.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ken::transport::frame::MAX_FRAME_BYTES;
use ken::transport::{Frame, FrameKind, Incarnation, Keyring, ProcessId, Seq};
use ken::Time;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Retransmission timeout without progress (acknowledgement of anything new).
pub const RTO_INITIAL: Duration = Duration::from_millis(200);

/// Ceiling of the doubled retransmission timeout.
pub const RTO_MAX: Duration = Duration::from_secs(1);

/// How long a sender keeps asking for the acknowledgement of its `Done` before it gives up
/// with an error (the receiver finished and exited while every copy of that acknowledgement
/// was lost): a bound, so that the load can never hang.
pub const DONE_ACK_WAIT: Duration = Duration::from_secs(10);

/// Frames handled per wakeup of a simulated sender before it tops up its window again.
const FRAMES_PER_WAKEUP_MAX: usize = 64;

/// The receiver's message type ([`super::node::Receiver`]): what the load sends, encoded
/// with [`ken::store::codec::encode`], and what the latency probe sends too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// One unit of load: the sender's message number (1, 2, ...).
    Data(u64),
    /// The sender's last message.
    Done,
}

/// The load generator could not bind a simulated sender's UDP port (the parent retries with
/// another).
#[derive(Debug)]
pub struct BindError {
    pub(super) addr: SocketAddr,
    pub(super) source: std::io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot bind UDP {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What one simulated sender did, part of [`LoadReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimulatedReport {
    pub id: String,
    pub incarnation: u64,
    /// `Data` messages sent (sequence numbers 1 to `data`; `Done` is `data + 1`).
    pub data: u64,
    /// Highest sequence number the receiver acknowledged (`data + 1` once finished).
    pub acked: u64,
    /// Frames sent again after a timeout.
    pub retransmits: u64,
    /// Frames received from the receiver.
    pub frames_in: u64,
    /// Of those, frames tagged with the cluster key (all of them when keyed, none when not).
    #[serde(default)]
    pub tagged_in: u64,
}

/// The load generator's final report (its standard output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub senders: Vec<SimulatedReport>,
}

impl LoadReport {
    /// `Data` messages sent by all simulated senders.
    pub fn data(&self) -> u64 {
        self.senders.iter().map(|s| s.data).sum()
    }

    /// Frames received from the receiver by all simulated senders, and how many were tagged.
    pub fn frames_in(&self) -> (u64, u64) {
        self.senders
            .iter()
            .fold((0, 0), |(a, t), s| (a + s.frames_in, t + s.tagged_in))
    }

    pub fn retransmits(&self) -> u64 {
        self.senders.iter().map(|s| s.retransmits).sum()
    }
}

/// What the load generator is given.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// (id, address to bind) of each simulated sender.
    pub senders: Vec<(String, SocketAddr)>,
    pub receiver: (String, SocketAddr),
    /// Unacknowledged messages each simulated sender keeps.
    pub outstanding: usize,
    /// Each simulated sender sends `Done` at its first opportunity at or after this wall
    /// time, and finishes once everything it sent is acknowledged.
    pub stop_at: Time,
    /// Seed of the incarnations.
    pub seed: u64,
    /// The cluster's keys (`None`: unauthenticated): every frame is sealed with them (tagged,
    /// and encrypted if they say so) and every frame received must check out.
    pub keys: Option<Arc<Keyring>>,
}

/// SplitMix64: the `i`-th value of the stream seeded with `seed`.
fn splitmix64(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The incarnation of simulated sender `i`: random-looking, never 0, fixed by the seed.
pub fn incarnation(seed: u64, i: u64) -> u64 {
    splitmix64(seed, i).max(1)
}

/// Runs the load until every simulated sender finished (its `Done` acknowledged).
pub fn run(plan: &LoadPlan) -> anyhow::Result<LoadReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run_async(plan))
}

async fn run_async(plan: &LoadPlan) -> anyhow::Result<LoadReport> {
    let receiver_id = ProcessId::new(plan.receiver.0.clone())?;
    let stop_at = Instant::now() + plan.stop_at.since(Time::now_wall());
    let keys = plan.keys.clone();
    let mut sims = Vec::with_capacity(plan.senders.len());
    // Bind every socket before sending anything, so that a port taken by another program
    // fails the phase (to be retried) before the receiver heard of any sender.
    for (i, (id, addr)) in plan.senders.iter().enumerate() {
        let socket = UdpSocket::bind(addr).await.map_err(|source| BindError {
            addr: *addr,
            source,
        })?;
        let id = ProcessId::new(id.clone())?;
        sims.push(
            Simulated::new(
                id,
                Incarnation(incarnation(plan.seed, i as u64)),
                socket,
                receiver_id.clone(),
                plan.receiver.1,
                plan.outstanding,
                stop_at,
            )
            .with_keys(keys.clone()),
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, sim) in sims.into_iter().enumerate() {
        tasks.spawn(async move { (i, sim.run().await) });
    }
    let mut reports: Vec<Option<SimulatedReport>> = vec![None; plan.senders.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.context("a simulated sender panicked")?;
        reports[i] = Some(result?);
    }
    Ok(LoadReport {
        senders: reports.into_iter().map(|r| r.expect("joined")).collect(),
    })
}

/// A frame sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    payload: Vec<u8>,
}

/// One simulated sender.
#[derive(Debug)]
struct Simulated {
    socket: UdpSocket,
    to: SocketAddr,
    /// Every frame this sender sends, with `seq`, `ack`, `to_incarnation` and `payload` set
    /// before each transmission.
    frame: Frame,
    outstanding: usize,
    stop_at: Instant,
    /// Next sequence number to assign (the first is 1).
    next_seq: u64,
    /// Highest sequence number acknowledged.
    acked: u64,
    /// Sequence number of `Done`, once sent.
    done_seq: Option<u64>,
    /// Unacknowledged frames, in sequence order: `acked + 1 .. next_seq`.
    in_flight: VecDeque<InFlight>,
    /// When unacknowledged frames are sent again, unless acknowledgements progress first.
    retransmit_at: Option<Instant>,
    rto: Duration,
    retransmits: u64,
    frames_in: u64,
    tagged_in: u64,
    /// The cluster's keys, if keyed.
    keys: Option<Arc<Keyring>>,
}

impl Simulated {
    fn new(
        id: ProcessId,
        incarnation: Incarnation,
        socket: UdpSocket,
        receiver: ProcessId,
        to: SocketAddr,
        outstanding: usize,
        stop_at: Instant,
    ) -> Simulated {
        Simulated {
            socket,
            to,
            frame: Frame {
                kind: FrameKind::Data,
                auth: ken::transport::Auth::None,
                from: id,
                from_incarnation: incarnation,
                to: receiver,
                to_incarnation: Incarnation(0),
                seq: Seq(0),
                ack: Seq(0),
                acked: Seq(0),
                payload: Vec::new(),
            },
            outstanding: outstanding.max(1),
            stop_at,
            next_seq: 1,
            acked: 0,
            done_seq: None,
            in_flight: VecDeque::with_capacity(outstanding.max(1)),
            retransmit_at: None,
            rto: RTO_INITIAL,
            retransmits: 0,
            frames_in: 0,
            tagged_in: 0,
            keys: None,
        }
    }

    /// Seals every frame with `keys` (and opens every frame received with them), if given.
    fn with_keys(mut self, keys: Option<Arc<Keyring>>) -> Simulated {
        self.frame.auth = if keys.is_some() {
            ken::transport::Auth::Cluster
        } else {
            ken::transport::Auth::None
        };
        self.keys = keys;
        self
    }

    async fn run(mut self) -> anyhow::Result<SimulatedReport> {
        let mut buf = vec![0u8; MAX_FRAME_BYTES];
        let mut done_sent_at: Option<Instant> = None;
        loop {
            self.fill_window().await;
            if self.done_seq.is_some_and(|done| self.acked >= done) {
                break;
            }
            if self.done_seq.is_some() {
                let since = *done_sent_at.get_or_insert_with(Instant::now);
                if since.elapsed() > DONE_ACK_WAIT {
                    anyhow::bail!(
                        "{}: no acknowledgement of Done within {DONE_ACK_WAIT:?} (acknowledged \
                         up to {}): the receiver finished and exited before one arrived",
                        self.frame.from,
                        self.acked
                    );
                }
            }
            let retransmit_at = self.retransmit_at.unwrap_or_else(far_future);
            // Only a sender with window space left waits for `stop_at`: it has `Done` to
            // send then; a full window waits for acknowledgements anyway.
            let stop_wait = if self.done_seq.is_none() && self.in_flight.len() < self.outstanding {
                self.stop_at
            } else {
                far_future()
            };
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    // A receive error (such as an ICMP port unreachable reported on the
                    // socket) is a lost datagram: retransmission covers it.
                    if let Ok((len, _)) = received {
                        self.on_datagram(&buf[..len])?;
                    }
                    for _ in 1..FRAMES_PER_WAKEUP_MAX {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((len, _)) => self.on_datagram(&buf[..len])?,
                            Err(_) => break,
                        }
                    }
                }
                () = tokio::time::sleep_until(retransmit_at) => self.retransmit().await,
                () = tokio::time::sleep_until(stop_wait) => {}
            }
        }
        let done = self.done_seq.expect("finished after Done");
        Ok(SimulatedReport {
            id: self.frame.from.to_string(),
            incarnation: self.frame.from_incarnation.0,
            data: done - 1,
            acked: self.acked,
            retransmits: self.retransmits,
            frames_in: self.frames_in,
            tagged_in: self.tagged_in,
        })
    }

    /// Sends new messages while the window has room: `Data` until `stop_at`, then `Done`.
    async fn fill_window(&mut self) {
        while self.done_seq.is_none() && self.in_flight.len() < self.outstanding {
            let seq = self.next_seq;
            self.next_seq += 1;
            let message = if Instant::now() >= self.stop_at {
                self.done_seq = Some(seq);
                Msg::Done
            } else {
                Msg::Data(seq)
            };
            let payload = ken::store::wrap_payload(
                <super::node::Receiver as ken::Handler>::SCHEMA_VERSION,
                &ken::store::codec::encode(&message),
            );
            self.transmit(seq, &payload).await;
            self.in_flight.push_back(InFlight { seq, payload });
            if self.retransmit_at.is_none() {
                self.retransmit_at = Some(Instant::now() + self.rto);
            }
        }
    }

    /// Sends one data frame. A failed send is a lost datagram: retransmission covers it.
    async fn transmit(&mut self, seq: u64, payload: &[u8]) {
        self.frame.seq = Seq(seq);
        self.frame.payload.clear();
        self.frame.payload.extend_from_slice(payload);
        let bytes = match &self.keys {
            Some(keys) => keys.seal(&self.frame),
            None => self.frame.encode(),
        }
        .expect("a bench message fits in a datagram");
        let _ = self.socket.send_to(&bytes, self.to).await;
    }

    /// Sends every unacknowledged frame again and backs off.
    async fn retransmit(&mut self) {
        let in_flight = std::mem::take(&mut self.in_flight);
        for f in &in_flight {
            self.transmit(f.seq, &f.payload).await;
            self.retransmits += 1;
        }
        self.in_flight = in_flight;
        // Once `Done` is out, no backoff: the receiver lingers only briefly after it
        // finished, and a lost final acknowledgement must be asked for again before it exits.
        if self.done_seq.is_none() {
            self.rto = (self.rto * 2).min(RTO_MAX);
        }
        self.retransmit_at = (!self.in_flight.is_empty()).then(|| Instant::now() + self.rto);
    }

    /// Handles one datagram from the network.
    fn on_datagram(&mut self, datagram: &[u8]) -> anyhow::Result<()> {
        // Junk (and, keyed, anything that does not check out) is dropped, as the endpoint
        // does; nothing else sends to these sockets.
        let opened = match &self.keys {
            Some(keys) => Frame::open(datagram, keys.as_ref()),
            None => Frame::decode(datagram),
        };
        let Ok(frame) = opened else {
            return Ok(());
        };
        self.frames_in += 1;
        if frame.auth != ken::transport::Auth::None {
            self.tagged_in += 1;
        }
        if frame.to != self.frame.from || frame.from != self.frame.to {
            return Ok(());
        }
        match frame.kind {
            FrameKind::Data | FrameKind::Ack => {}
            FrameKind::Reject => bail!(
                "{}: the receiver rejects our frames: {}",
                self.frame.from,
                String::from_utf8_lossy(&frame.payload)
            ),
            _ => return Ok(()),
        }
        if frame.to_incarnation.0 != 0 && frame.to_incarnation != self.frame.from_incarnation {
            bail!(
                "{}: the receiver addresses incarnation {}, ours is {}",
                self.frame.from,
                frame.to_incarnation,
                self.frame.from_incarnation
            );
        }
        if self.frame.to_incarnation.0 == 0 {
            self.frame.to_incarnation = frame.from_incarnation;
        } else if frame.from_incarnation != self.frame.to_incarnation {
            bail!(
                "{}: the receiver's incarnation changed from {} to {}",
                self.frame.from,
                self.frame.to_incarnation,
                frame.from_incarnation
            );
        }
        let ack = frame.ack.0;
        if ack >= self.next_seq {
            bail!(
                "{}: the receiver acknowledges {ack}, but only 1..{} were sent",
                self.frame.from,
                self.next_seq - 1
            );
        }
        if ack > self.acked {
            self.acked = ack;
            while self.in_flight.front().is_some_and(|f| f.seq <= ack) {
                self.in_flight.pop_front();
            }
            self.rto = RTO_INITIAL;
            self.retransmit_at = (!self.in_flight.is_empty()).then(|| Instant::now() + self.rto);
        }
        Ok(())
    }
}

/// A wake-up time that never comes (within a bench's life).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_are_distinct_nonzero_and_seeded() {
        let a: Vec<u64> = (0..64).map(|i| incarnation(7, i)).collect();
        let b: Vec<u64> = (0..64).map(|i| incarnation(7, i)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x != 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len());
        assert_ne!(incarnation(8, 0), a[0]);
    }
}
