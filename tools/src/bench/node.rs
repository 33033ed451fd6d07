//! One process of a `ken bench` run: the bench handlers and the child-process entry point.
//!
//! `ken bench` starts every Ken process of a measurement as a child process (`ken bench-node
//! SPEC`), so that each has its own runtime, store file and UDP port as in production, and so
//! that what the runtime prints on its standard output (a finished handler's report) goes to
//! the child's output file, never into `ken bench --json`. Every Ken process runs the real
//! driver, [`ken::run`]; the latency probe and the pingpong hitter also set its observation
//! hook ([`Config::observe`]), which reports each message's send turn, first transmission
//! and acknowledgement. The throughput phase's load generator ([`Role::Load`], module
//! `load`) is a child process too, but not a Ken process: it speaks the frame protocol
//! itself for many simulated senders.
//!
//! The receiver and the probe finish on their own (see their `finished`); the pingpong
//! players are the example app ([`ken_apps::pingpong`]) volleying towards a count they never
//! reach: the hitter exits once every ball it sent in the window came back, and `ken bench`
//! then SIGKILLs the echo. As a backstop, every child also exits with [`EXIT_DEADLINE`] at
//! the wall-clock deadline in its spec, whatever it is doing, so that no bench process
//! outlives the run even if `ken bench` itself is killed.
//!
//! Handlers follow the turn rules: they read the time only through `Turn::now`, keep their
//! durable state in the root state and tables, and do no I/O of their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ken::observe::{MessageTimes, Observer};
use ken::{Config, Exit, Handler, Input, ProcessId, RunError, Time, Turn};
use ken_apps::pingpong::PingPong;
use serde::{Deserialize, Serialize};

use super::load::{self, Msg};
use super::percentile;

/// Exit code of a child that could not bind its UDP port (the parent retries with new ports).
pub const EXIT_BIND: u8 = 75;

/// Exit code of a child stopped by its deadline.
pub const EXIT_DEADLINE: u8 = 124;

/// How long a finished bench process keeps re-acknowledging before it exits.
const FINISH_LINGER: Duration = Duration::from_millis(300);

/// How often the probe sends one message (one timer turn each time).
pub const PROBE_POLL: Duration = Duration::from_millis(1);

/// Messages the probe keeps unacknowledged at most: it measures latency, not throughput, so
/// its messages do not queue behind each other.
pub const PROBE_OUTSTANDING: usize = 4;

/// Distinct table keys the receiver writes per sender (older keys are overwritten).
const RECEIVER_KEYSPACE: u64 = 1024;

/// Hard bound on volleys in one pingpong run, whatever the time: the players volley to
/// twice this (a volley is two balls) and then finish.
pub const VOLLEYS_MAX: u64 = 100_000;

/// How often the hitter's main thread looks whether the window's last ball came back.
const HITTER_POLL: Duration = Duration::from_millis(5);

/// The hidden `bench-node` subcommand.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's [`NodeSpec`] as JSON.
    pub spec: String,
}

/// What one bench process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Consumes `Data` with one table write each; finishes after `Done` from every sender.
    Receiver,
    /// The raw-frames load generator ([`load`]): no store, no engine; speaks the frame
    /// protocol for every simulated sender in `simulated`, each keeping `outstanding`
    /// messages unacknowledged to the receiver until `stop_at`.
    Load,
    /// A light sender ([`Sender`]) whose driver's observation hook timestamps sends,
    /// transmissions and acknowledgements ([`ProbeReport`]).
    Probe,
    /// Pingpong's hitter ([`ken_apps::pingpong`], not serving), each ball timed from its
    /// send turn to the turn that receives the answer ([`PingpongReport`]).
    Hitter,
    /// Pingpong's server: returns every ball.
    Echo,
}

/// Everything a bench process needs, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    pub role: Role,
    pub id: String,
    /// The UDP address to bind (load generator: unused, each simulated sender binds its own
    /// address from `simulated`).
    pub listen: SocketAddr,
    /// The store file (load generator: unused, it keeps no store).
    pub store: PathBuf,
    /// Address book: (id, address) of every peer.
    pub peers: Vec<(String, SocketAddr)>,
    /// The peer this node sends to (load generator, probe, hitter, echo).
    pub target: Option<String>,
    /// Load generator, probe, hitter: stop producing at this wall time (microseconds since the
    /// epoch).
    pub stop_at_us: u64,
    /// Probe, hitter: only messages sent in `[measure_from_us, measure_until_us)` are
    /// measured.
    pub measure_from_us: u64,
    pub measure_until_us: u64,
    /// The child exits with [`EXIT_DEADLINE`] at this wall time, whatever it is doing.
    pub deadline_us: u64,
    /// Load generator: unacknowledged messages each simulated sender keeps.
    pub outstanding: usize,
    /// Receiver: `Done` messages to receive before finishing.
    pub expect_done: u64,
    /// Load generator: (id, address) of each simulated sender.
    #[serde(default)]
    pub simulated: Vec<(String, SocketAddr)>,
    /// Load generator: seed of the simulated senders' incarnations.
    #[serde(default)]
    pub seed: u64,
    /// The cluster key file (`None`: unauthenticated): every process of a measurement holds
    /// the same key, the load generator too.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// With a key: encrypt every peer frame's payload too.
    #[serde(default)]
    pub encrypt: bool,
    /// Ship every batch to a standby replica (`<store>.standby`) served by a thread of this
    /// process on loopback ([`serve_standby`]).
    #[serde(default)]
    pub standby: bool,
}

/// The probe's handler's final report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderReport {
    pub id: String,
    /// `Data` messages sent (all acknowledged by the receiver when this is printed).
    pub sent: u64,
}

/// The receiver's final report (its standard output).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiverReport {
    pub received: u64,
    pub done: u64,
}

/// The latency probe's handler (its driver observed, see [`ProbeReport`]): sends `Data` to
/// `target`, keeping at most `outstanding` unacknowledged, topping up in a
/// timer turn every `poll` (acknowledgements do not start turns, so a timer is how a handler
/// learns that its outbox drained). At the first turn at or after `stop_at` it sends `Done`
/// and stops; it is finished once everything it sent is acknowledged.
#[derive(Debug, Clone)]
pub struct Sender {
    pub id: ProcessId,
    pub target: ProcessId,
    pub outstanding: usize,
    pub sends_per_turn_max: usize,
    pub poll: Duration,
    pub stop_at: Time,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SenderState {
    pub sent: u64,
    pub stopped: bool,
}

impl Handler for Sender {
    const APP: &'static str = "bench-sender";
    type State = SenderState;
    type Message = Msg;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut SenderState, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        if state.stopped || !matches!(input, Input::Start | Input::Timer { .. }) {
            return;
        }
        if turn.now() >= self.stop_at {
            turn.send(&self.target, &Msg::Done)
                .expect("the receiver is in the address book");
            state.stopped = true;
            return;
        }
        let mut queued = 0;
        while queued < self.sends_per_turn_max && turn.outbox_depth(&self.target) < self.outstanding
        {
            state.sent += 1;
            turn.send(&self.target, &Msg::Data(state.sent))
                .expect("the receiver is in the address book");
            queued += 1;
        }
        turn.set_timer("pump", self.poll);
    }

    fn finished(&self, state: &SenderState) -> Option<String> {
        state.stopped.then(|| {
            serde_json::to_string(&SenderReport {
                id: self.id.to_string(),
                sent: state.sent,
            })
            .expect("report serializes")
        })
    }
}

/// Consumes `Data` with one small table write per message (the load whose durable turns are
/// counted); finishes once `expect_done` senders said `Done`. It sends nothing, so every
/// commit in the measured window is a commit of consumed messages.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub expect_done: u64,
}

impl Handler for Receiver {
    const APP: &'static str = "bench-receiver";
    type State = ReceiverReport;
    type Message = Msg;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut ReceiverReport, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        let Input::Message { from, message, .. } = input else {
            return;
        };
        match message {
            Msg::Data(n) => {
                state.received += 1;
                let mut key = from.as_str().as_bytes().to_vec();
                key.push(b'/');
                key.extend_from_slice(&(n % RECEIVER_KEYSPACE).to_be_bytes());
                turn.table("bench").put(key, &n);
            }
            Msg::Done => state.done += 1,
        }
    }

    fn finished(&self, state: &ReceiverReport) -> Option<String> {
        (state.done >= self.expect_done)
            .then(|| serde_json::to_string(state).expect("report serializes"))
    }
}

/// What the probe measured, printed as one JSON line on its standard output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeReport {
    /// `Data` messages sent over the whole run (the receiver counts them too).
    pub sent: u64,
    /// Messages measured (sent inside the window).
    pub samples: u64,
    /// Send turn to acknowledgement received: the probe's commit of the sending turn,
    /// transmission, the receiver's queueing, turn and group commit, and the
    /// acknowledgement's way back.
    pub ack_latency_us_p50: u64,
    pub ack_latency_us_p99: u64,
    /// First transmission to acknowledgement received: the same without the probe's own
    /// commit (the interval the engine's round-trip estimator samples).
    pub ack_after_transmit_us_p50: u64,
    pub ack_after_transmit_us_p99: u64,
}

/// What the pingpong hitter measured, printed as one JSON line on its standard output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PingpongReport {
    /// Balls measured (sent inside the window).
    pub volleys: u64,
    pub rtt_us_p50: u64,
    pub rtt_us_p99: u64,
    /// What the hitter's store wrote over its whole run (about one turn per commit).
    pub writes: Option<NodeWrites>,
}

/// What a process's store wrote over its life (the store's own counters,
/// [`ken::store::vfs::write_counters`]: syscall bytes), and the turns and commits it made
/// durable (its store's `meta`), printed by the receiver as a JSON line after its report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeWrites {
    /// Bytes written to the WAL and the database file (frame headers, pages, checkpoints),
    /// without the WAL's one-time preallocation.
    pub bytes: u64,
    pub syncs: u64,
    pub turns: u64,
    pub commits: u64,
}

impl NodeWrites {
    /// This process's counters now, with the turns and commits its store at `store` holds.
    pub fn now(store: &std::path::Path) -> anyhow::Result<NodeWrites> {
        let w = ken::store::vfs::write_counters();
        let meta = ken::store::Reader::open(store)?.meta()?;
        Ok(NodeWrites {
            bytes: w.wal_bytes + w.db_bytes,
            syncs: w.syncs,
            turns: meta.turns_committed,
            commits: meta.commits,
        })
    }

    /// Bytes per durable turn, and turns per commit.
    pub fn per_turn(&self) -> (f64, f64) {
        let turns = self.turns.max(1) as f64;
        (
            self.bytes as f64 / turns,
            turns / self.commits.max(1) as f64,
        )
    }
}

/// The times of the messages to one peer sent in `[from, until)`, as the driver's
/// observation hook reports them ([`Config::observe`]).
#[derive(Debug, Clone)]
struct Window {
    to: ProcessId,
    from: Time,
    until: Time,
    times: Arc<Mutex<Vec<MessageTimes>>>,
}

impl Window {
    fn new(to: ProcessId, from: Time, until: Time) -> Window {
        Window {
            to,
            from,
            until,
            times: Arc::default(),
        }
    }

    /// The hook: keeps the messages of the window; with `after`, says (once, without
    /// blocking) when a message sent after the window was acknowledged.
    fn observer(&self, after: Option<mpsc::SyncSender<()>>) -> Observer {
        let w = self.clone();
        Observer(Arc::new(move |m: &MessageTimes| {
            if m.to != w.to {
                return;
            }
            if m.sent >= w.from && m.sent < w.until {
                w.times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(m.clone());
            } else if m.sent >= w.until {
                if let Some(tx) = &after {
                    let _ = tx.try_send(());
                }
            }
        }))
    }

    /// Sorted microseconds of `sent -> acknowledged`, and of `transmitted -> acknowledged`.
    fn latencies_us(&self) -> (Vec<u64>, Vec<u64>) {
        let times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let us = |from: Time, to: Time| to.since(from).as_micros() as u64;
        let mut ack: Vec<u64> = times.iter().map(|m| us(m.sent, m.acknowledged)).collect();
        let mut after_transmit: Vec<u64> = times
            .iter()
            .filter_map(|m| Some(us(m.transmitted?, m.acknowledged)))
            .collect();
        ack.sort_unstable();
        after_transmit.sort_unstable();
        (ack, after_transmit)
    }
}

fn pid(s: &str) -> anyhow::Result<ProcessId> {
    ProcessId::new(s).map_err(|e| anyhow::anyhow!("bad process id `{s}`: {e}"))
}

impl NodeSpec {
    fn target(&self) -> anyhow::Result<ProcessId> {
        pid(self
            .target
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{:?} needs a target", self.role))?)
    }

    /// The runtime configuration of this node (no network faults, short finish linger).
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::new(pid(&self.id)?, self.listen, &self.store);
        for (id, addr) in &self.peers {
            config.peers.insert(pid(id)?, *addr);
        }
        config.faults = Some(ken::transport::FaultConfig::default());
        config.key = self.key()?;
        config.encrypt = self.encrypt;
        config.finish_linger = FINISH_LINGER;
        if self.standby {
            config.standby = Some(serve_standby(self)?.to_string());
        }
        // `ken bench` waits for this line on standard error before starting the peers.
        config.announce = true;
        Ok(config)
    }

    /// The cluster key, if the spec names one.
    pub fn key(&self) -> anyhow::Result<Option<ken::ClusterKey>> {
        Ok(self
            .key_file
            .as_deref()
            .map(ken::ClusterKey::load)
            .transpose()?)
    }

    /// The probe's sender handler: one message per [`PROBE_POLL`], at most
    /// [`PROBE_OUTSTANDING`] unacknowledged.
    pub fn probe_sender(&self) -> anyhow::Result<Sender> {
        Ok(Sender {
            id: pid(&self.id)?,
            target: self.target()?,
            outstanding: PROBE_OUTSTANDING,
            sends_per_turn_max: 1,
            poll: PROBE_POLL,
            stop_at: Time(self.stop_at_us),
        })
    }

    /// A pingpong player volleying with its target towards [`VOLLEYS_MAX`] volleys.
    fn pingpong(&self, serve: bool) -> anyhow::Result<PingPong> {
        Ok(PingPong {
            id: pid(&self.id)?,
            peer: self.target()?,
            count: 2 * VOLLEYS_MAX,
            serve,
        })
    }

    /// The measurement window of the probe and the hitter, for messages to the target.
    fn window(&self) -> anyhow::Result<Window> {
        Ok(Window::new(
            self.target()?,
            Time(self.measure_from_us),
            Time(self.measure_until_us),
        ))
    }
}

/// Starts this node's standby on a thread of its own (its own runtime and store,
/// `<store>.standby`), listening on loopback; returns its address.
fn serve_standby(spec: &NodeSpec) -> anyhow::Result<SocketAddr> {
    let process = pid(&spec.id)?;
    let key = spec.key()?;
    let mut store = spec.store.clone().into_os_string();
    store.push(".standby");
    let store = PathBuf::from(store);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("standby".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the standby");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("a tokio listener for the standby");
                if let Err(e) = ken::standby::serve(ken::standby::StandbyConfig {
                    process,
                    store,
                    listener,
                    key,
                    accepted_keys: Vec::new(),
                    min_epoch: 0,
                    encrypt: false,
                    admin: None,
                })
                .await
                {
                    eprintln!("ken bench-node: the standby stopped: {e}");
                    std::process::exit(1);
                }
            });
        })?;
    Ok(addr)
}

/// Entry point of `ken bench-node SPEC`. Prints the node's report on standard output (the
/// runtime prints a finished handler's report itself) and errors on standard error.
pub fn main(args: &NodeArgs) -> ExitCode {
    let spec: NodeSpec = match serde_json::from_str(&args.spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ken bench-node: bad spec: {e}");
            return ExitCode::from(2);
        }
    };
    let deadline = Time(spec.deadline_us);
    let id = spec.id.clone();
    std::thread::spawn(move || {
        std::thread::sleep(deadline.since(Time::now_wall()));
        eprintln!("ken bench-node {id}: deadline passed, exiting");
        std::process::exit(i32::from(EXIT_DEADLINE));
    });
    match run_node(&spec) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ken bench-node {}: {e:#}", spec.id);
            let bind = e
                .downcast_ref::<RunError>()
                .is_some_and(|e| matches!(e, RunError::Bind { .. }))
                || e.downcast_ref::<load::BindError>().is_some();
            ExitCode::from(if bind { EXIT_BIND } else { 1 })
        }
    }
}

fn run_node(spec: &NodeSpec) -> anyhow::Result<()> {
    if spec.role == Role::Load {
        let target = spec.target()?;
        let receiver = spec
            .peers
            .iter()
            .find(|(id, _)| *id == target.as_str())
            .ok_or_else(|| anyhow::anyhow!("the load's target is not in its address book"))?;
        let report = load::run(&load::LoadPlan {
            senders: spec.simulated.clone(),
            receiver: receiver.clone(),
            outstanding: spec.outstanding,
            stop_at: Time(spec.stop_at_us),
            seed: spec.seed,
            keys: match spec.key()? {
                Some(key) => Some(Arc::new(ken::transport::Keyring::new(
                    &key,
                    &[],
                    spec.encrypt,
                )?)),
                None => None,
            },
        })?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let mut config = spec.config()?;
    match spec.role {
        Role::Load => unreachable!("handled above"),
        Role::Receiver => {
            ken::run(
                config,
                Receiver {
                    expect_done: spec.expect_done,
                },
            )?;
            println!("{}", serde_json::to_string(&NodeWrites::now(&spec.store)?)?);
        }
        Role::Probe => {
            let window = spec.window()?;
            config.observe = Some(window.observer(None));
            let Exit::Finished { report } = ken::run(config, spec.probe_sender()?)?;
            let sender: SenderReport = serde_json::from_str(&report)?;
            let (ack, after_transmit) = window.latencies_us();
            let report = ProbeReport {
                sent: sender.sent,
                samples: ack.len() as u64,
                ack_latency_us_p50: percentile(&ack, 50),
                ack_latency_us_p99: percentile(&ack, 99),
                ack_after_transmit_us_p50: percentile(&after_transmit, 50),
                ack_after_transmit_us_p99: percentile(&after_transmit, 99),
            };
            println!("{}", serde_json::to_string(&report)?);
        }
        Role::Hitter => {
            let window = spec.window()?;
            let (after_window, done) = mpsc::sync_channel(1);
            config.observe = Some(window.observer(Some(after_window)));
            let hitter = spec.pingpong(false)?;
            let player = std::thread::spawn(move || ken::run(config, hitter));
            // One ball is in play at a time and delivery is FIFO: once a ball sent after the
            // window came back, every ball of the window has.
            while done.recv_timeout(HITTER_POLL).is_err() {
                if player.is_finished() {
                    // The volley ended (or the run failed) before the window did.
                    player.join().expect("the hitter's driver thread")?;
                    break;
                }
            }
            let (rtt, _) = window.latencies_us();
            let report = PingpongReport {
                volleys: rtt.len() as u64,
                rtt_us_p50: percentile(&rtt, 50),
                rtt_us_p99: percentile(&rtt, 99),
                writes: NodeWrites::now(&spec.store).ok(),
            };
            println!("{}", serde_json::to_string(&report)?);
            // Returning ends the process, and the driver thread with it.
        }
        Role::Echo => {
            ken::run(config, spec.pingpong(true)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::load::{incarnation, run, LoadPlan};
    use super::*;
    use ken::transport::{Endpoint, FaultConfig};

    fn free_addr() -> SocketAddr {
        ken_tools::harness::free_addrs(1).unwrap()[0]
    }

    fn faults(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            drop: 0.1,
            duplicate: 0.1,
            reorder: 0.1,
            reorder_max_ms: 20,
            corrupt: 0.02,
            ..FaultConfig::default()
        }
    }

    /// The load against a real receiver, with seeded loss, duplication, reordering and
    /// corruption in both directions (data through a faulty forwarder, acknowledgements from
    /// the receiver's own faulty endpoint): every simulated sender finishes, retransmission
    /// repairs the losses, and the receiver consumed exactly what was acknowledged.
    #[test]
    fn load_survives_a_lossy_network_and_matches_the_receivers_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("receiver.ken");
        let receiver_addr = free_addr();
        let senders: Vec<(String, SocketAddr)> =
            (0..3).map(|i| (format!("load-{i}"), free_addr())).collect();

        let mut config = Config::new(ProcessId::new("receiver").unwrap(), receiver_addr, &store);
        for (id, addr) in &senders {
            config
                .peers
                .insert(ProcessId::new(id.clone()).unwrap(), *addr);
        }
        config.faults = Some(faults(1));
        // Long enough that a sender whose last acknowledgement was lost (10% loss each way)
        // asks again and hears one before the receiver exits (200 ms apart after `Done`).
        config.finish_linger = Duration::from_secs(2);
        let receiver = std::thread::spawn(move || ken::run(config, Receiver { expect_done: 3 }));

        // The data direction goes through a forwarder whose endpoint applies the faults.
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let forwarder = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let endpoint =
                    Endpoint::bind_with_faults("127.0.0.1:0".parse().unwrap(), faults(2)).unwrap();
                addr_tx.send(endpoint.local_addr()).unwrap();
                loop {
                    tokio::select! {
                        received = endpoint.recv() => {
                            let (frame, _) = received.unwrap();
                            let _ = endpoint.send(receiver_addr, &frame).await;
                        }
                        _ = &mut stop_rx => break,
                    }
                }
            });
        });
        let forwarder_addr = addr_rx.recv().unwrap();

        let plan = LoadPlan {
            senders: senders.clone(),
            receiver: ("receiver".to_string(), forwarder_addr),
            outstanding: 16,
            stop_at: Time::now_wall().plus(Duration::from_millis(600)),
            seed: 3,
            keys: None,
        };
        let report = run(&plan).expect("the load finishes");
        let _ = stop_tx.send(());
        forwarder.join().unwrap();
        let exit = receiver.join().unwrap().expect("the receiver finishes");
        let Exit::Finished { report: received } = exit;
        let received: ReceiverReport = serde_json::from_str(&received).unwrap();

        assert_eq!(report.senders.len(), 3);
        for (i, s) in report.senders.iter().enumerate() {
            assert_eq!(s.id, senders[i].0);
            assert_eq!(s.incarnation, incarnation(3, i as u64));
            assert!(s.data > 0, "{s:?}");
            assert_eq!(s.acked, s.data + 1, "{s:?}");
        }
        assert!(
            report.retransmits() > 0,
            "10% loss and no retransmission: {report:?}"
        );
        assert_eq!(received.received, report.data(), "{report:?}");
        let peers = ken::store::Reader::open(&store).unwrap().peers().unwrap();
        for s in &report.senders {
            let row = peers.iter().find(|p| p.peer == s.id).expect("a peer row");
            assert_eq!((row.delivered, row.incarnation), (s.acked, s.incarnation));
        }
    }
}
