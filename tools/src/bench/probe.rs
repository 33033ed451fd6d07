//! The acknowledgement-latency probe: a sender whose engine is driven by an instrumented
//! copy of the driver loop, so that it can see what a handler cannot: when each message was
//! transmitted and when its acknowledgement arrived.
//!
//! The loop is [`ken::driver`]'s, reduced to what a sender needs: the store commits on its own
//! thread (pipelined group commit, the same one-batch-at-a-time protocol), frames arrive
//! through a bounded channel from a receive task, timers and retransmissions run off
//! [`Engine::next_deadline`]. Output commit is asserted here too: a frame leaves only after
//! the batch it depends on is durable. Nothing in `ken` is changed or bypassed: the engine,
//! the store and the endpoint are the production ones.
//!
//! For each message to the target the probe records three instants, all read from the wall
//! clock by this loop:
//! - *sent*: the `now` handed to the engine event whose turn called `Turn::send` (exactly the
//!   turn's `Turn::now`), found by watching the peer's `next_seq` grow across the event;
//! - *transmitted*: just after its first data frame was handed to the socket (after the
//!   probe's own commit of that turn);
//! - *acknowledged*: when the frame whose cumulative acknowledgement covers it was taken from
//!   the receive channel, just before the engine handles it.
//!
//! `ack_latency` = acknowledged − sent: the probe's commit of the sending turn, transmission,
//! the receiver's queueing, turn and group commit, and the acknowledgement's way back.
//! `ack_after_transmit` = acknowledged − transmitted: the same without the probe's commit
//! (the interval the engine's round-trip estimator samples). Only messages *sent* in
//! `[measure_from, measure_until)` are measured.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ken::engine::BatchId;
use ken::engine::{Command, Engine, EngineConfig};
use ken::store::{Batch, CommitError, Reader, Store};
use ken::transport::{Endpoint, FrameKind};
use ken::{Config, Handler, ProcessId, Time};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::percentile;

/// Frames buffered between the receive task and the loop (as in the driver).
const FRAME_QUEUE_MAX: usize = 4096;

/// Frames the loop handles before it looks at other events again (as in the driver).
const FRAMES_PER_WAKEUP_MAX: usize = 256;

/// The probe or the load generator could not bind a UDP port (the parent retries with
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

/// What the probe measured, printed as one JSON line on its standard output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeReport {
    /// `Data` messages sent over the whole run (the receiver counts them too).
    pub sent: u64,
    /// Messages measured (sent inside the window).
    pub samples: u64,
    pub ack_latency_us_p50: u64,
    pub ack_latency_us_p99: u64,
    pub ack_after_transmit_us_p50: u64,
    pub ack_after_transmit_us_p99: u64,
    /// Retransmissions by the probe's engine over the run.
    pub retransmits: u64,
}

/// Per-message instants of the messages to the target not yet acknowledged.
struct Tracker {
    target: ProcessId,
    measure_from: Time,
    measure_until: Time,
    next_seq: u64,
    acked: u64,
    /// seq -> (sent, first transmission).
    open: HashMap<u64, (Time, Option<Time>)>,
    ack_us: Vec<u64>,
    ack_after_transmit_us: Vec<u64>,
}

impl Tracker {
    /// Called after every engine event handed time `now`: new messages were sent at `now`,
    /// newly acknowledged ones were acknowledged at `now`.
    fn after_event<H: Handler>(&mut self, engine: &Engine<H>, now: Time) {
        let status = engine
            .peer_status()
            .into_iter()
            .find(|p| p.id == self.target)
            .expect("the target is a peer");
        for seq in self.next_seq.max(1)..status.next_seq {
            self.open.insert(seq, (now, None));
        }
        self.next_seq = status.next_seq;
        for seq in self.acked + 1..=status.acked {
            let Some((sent, transmitted)) = self.open.remove(&seq) else {
                continue;
            };
            if sent >= self.measure_from && sent < self.measure_until {
                self.ack_us.push(now.since(sent).as_micros() as u64);
                if let Some(t) = transmitted {
                    self.ack_after_transmit_us
                        .push(now.since(t).as_micros() as u64);
                }
            }
        }
        self.acked = self.acked.max(status.acked);
    }

    fn transmitted(&mut self, seq: u64, at: Time) {
        if let Some((_, t)) = self.open.get_mut(&seq) {
            t.get_or_insert(at);
        }
    }
}

/// Runs `handler` (a sender to its target) until it finishes, measuring as described in the
/// module docs. `config.peers` must hold the target.
pub fn run(
    config: Config,
    handler: super::node::Sender,
    measure_from: Time,
    measure_until: Time,
) -> anyhow::Result<ProbeReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run_async(config, handler, measure_from, measure_until))
}

struct StoreThread {
    commits: std::sync::mpsc::SyncSender<(BatchId, Batch)>,
    done: mpsc::Receiver<(BatchId, Result<(), CommitError>)>,
}

fn spawn_store_thread(mut store: Store) -> StoreThread {
    let (commit_tx, commit_rx) = std::sync::mpsc::sync_channel::<(BatchId, Batch)>(1);
    let (done_tx, done_rx) = mpsc::channel(2);
    std::thread::Builder::new()
        .name("probe-store".into())
        .spawn(move || {
            while let Ok((id, batch)) = commit_rx.recv() {
                let result = store.commit(&batch).map(|_| ());
                let failed = result.is_err();
                if done_tx.blocking_send((id, result)).is_err() || failed {
                    break;
                }
            }
        })
        .expect("spawn the store thread");
    StoreThread {
        commits: commit_tx,
        done: done_rx,
    }
}

async fn run_async(
    config: Config,
    handler: super::node::Sender,
    measure_from: Time,
    measure_until: Time,
) -> anyhow::Result<ProbeReport> {
    let target = handler.target.clone();
    anyhow::ensure!(
        config.peers.contains_key(&target),
        "the probe's target is not in its address book"
    );
    let (store, recovered) =
        Store::open_with(&config.store, config.id.as_str(), &config.store_options)?;
    let reader = Reader::open(&config.store)?;
    let endpoint = Endpoint::bind(config.listen).map_err(|source| BindError {
        addr: config.listen,
        source,
    })?;
    let endpoint = Arc::new(endpoint);
    let engine_config = EngineConfig {
        id: config.id.clone(),
        peers: config.peers.keys().cloned().collect(),
        tuning: config.tuning.clone(),
        seed: Time::now_wall().as_micros(),
    };
    let mut engine = Engine::recover(engine_config, handler, recovered, Box::new(reader))?;
    let mut store = spawn_store_thread(store);

    let (frame_tx, mut frame_rx) = mpsc::channel(FRAME_QUEUE_MAX);
    let recv_endpoint = Arc::clone(&endpoint);
    let receiver = tokio::spawn(async move {
        while let Ok((frame, _from)) = recv_endpoint.recv().await {
            if frame_tx.send(frame).await.is_err() {
                break;
            }
        }
    });

    let mut tracker = Tracker {
        target,
        measure_from,
        measure_until,
        next_seq: 0,
        acked: 0,
        open: HashMap::new(),
        ack_us: Vec::new(),
        ack_after_transmit_us: Vec::new(),
    };
    let mut durable: BatchId = 0;
    let now = Time::now_wall();
    engine.start(now);
    tracker.after_event(&engine, now);
    let result = loop {
        match execute(
            &mut engine,
            &store,
            &endpoint,
            &config.peers,
            durable,
            &mut tracker,
        )
        .await
        {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        let now = Time::now_wall();
        let sleep_for = engine.next_deadline().map(|w| w.since(now));
        if sleep_for == Some(Duration::ZERO) {
            engine.tick(now);
            tracker.after_event(&engine, now);
            continue;
        }
        let accepting = engine.accepting_input();
        tokio::select! {
            biased;
            done = store.done.recv() => {
                let Some((id, result)) = done else {
                    break Err(anyhow::anyhow!("the store thread died unexpectedly"));
                };
                if let Err(e) = result {
                    break Err(anyhow::anyhow!("commit failed: {e}"));
                }
                durable = id;
                let now = Time::now_wall();
                engine.commit_done(now, id);
                tracker.after_event(&engine, now);
            }
            frame = frame_rx.recv(), if accepting => {
                let Some(frame) = frame else {
                    break Err(anyhow::anyhow!("the receive task stopped"));
                };
                let now = Time::now_wall();
                engine.handle_frame(now, frame);
                tracker.after_event(&engine, now);
                let mut n = 1;
                while n < FRAMES_PER_WAKEUP_MAX && engine.accepting_input() {
                    n += 1;
                    let Ok(frame) = frame_rx.try_recv() else { break };
                    let now = Time::now_wall();
                    engine.handle_frame(now, frame);
                    tracker.after_event(&engine, now);
                }
            }
            _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::from_secs(3600))) => {
                let now = Time::now_wall();
                engine.tick(now);
                tracker.after_event(&engine, now);
            }
        }
    };
    receiver.abort();
    drop(store.commits);
    result?;
    tracker.ack_us.sort_unstable();
    tracker.ack_after_transmit_us.sort_unstable();
    Ok(ProbeReport {
        sent: engine.state().sent,
        samples: tracker.ack_us.len() as u64,
        ack_latency_us_p50: percentile(&tracker.ack_us, 50),
        ack_latency_us_p99: percentile(&tracker.ack_us, 99),
        ack_after_transmit_us_p50: percentile(&tracker.ack_after_transmit_us, 50),
        ack_after_transmit_us_p99: percentile(&tracker.ack_after_transmit_us, 99),
        retransmits: engine.stats().retransmits,
    })
}

/// Executes the engine's commands. Returns true once the handler reported finished.
async fn execute<H: Handler>(
    engine: &mut Engine<H>,
    store: &StoreThread,
    endpoint: &Endpoint,
    peers: &BTreeMap<ProcessId, SocketAddr>,
    durable: BatchId,
    tracker: &mut Tracker,
) -> anyhow::Result<bool> {
    let mut finished = false;
    for cmd in engine.take_commands() {
        match cmd {
            Command::Commit { id, batch } => {
                assert_eq!(id, durable + 1, "batches commit in order");
                store
                    .commits
                    .try_send((id, batch))
                    .map_err(|_| anyhow::anyhow!("a second batch while one commits"))?;
            }
            Command::Send { to, frame, after } => {
                assert!(
                    after <= durable,
                    "output commit violated: frame depends on batch {after}, durable is {durable}"
                );
                let Some(addr) = peers.get(&to) else { continue };
                let data_seq =
                    (frame.kind == FrameKind::Data && to == tracker.target).then_some(frame.seq.0);
                // A failed send is a lost datagram; the engine retransmits.
                let _ = endpoint.send(*addr, &frame).await;
                if let Some(seq) = data_seq {
                    tracker.transmitted(seq, Time::now_wall());
                }
            }
            Command::Emit { after, .. } => {
                assert!(after <= durable, "output commit violated by an emit");
            }
            Command::Finished { .. } => finished = true,
            Command::Fatal { error } => return Err(error.into()),
        }
    }
    Ok(finished)
}
