//! One process of a `ken bench` run: the bench handlers and the child-process entry point.
//!
//! `ken bench` starts every Ken process of a measurement as a child process (`ken bench-node
//! SPEC`), so that each has its own runtime, store file and UDP port as in production, and so
//! that what the runtime prints on its standard output (a finished handler's report) goes to
//! the child's output file, never into `ken bench --json`. The throughput phase's load
//! generator ([`Role::Load`], module `load`) is a child process too, but not a Ken process:
//! it speaks the frame protocol itself for many simulated senders.
//!
//! Every handler here finishes on its own (see each one's `finished`), so a child exits by
//! itself once the measurement is over. As a backstop, every child also exits with
//! [`EXIT_DEADLINE`] at the wall-clock deadline in its spec, whatever it is doing, so that no
//! bench process outlives the run even if `ken bench` itself is killed.
//!
//! Handlers follow the turn rules: they read the time only through `Turn::now`, keep their
//! durable state in the root state and tables, and do no I/O of their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ken::{Config, Handler, Input, ProcessId, RunError, Time, Turn};
use serde::{Deserialize, Serialize};

use super::{load, probe};

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

/// Table where the hitter records each measured round trip: key = volley (u64 big-endian),
/// value = round trip in microseconds (u64).
pub const RTT_TABLE: &str = "rtt";

/// Hard bound on volleys in one pingpong run, whatever the time.
pub const VOLLEYS_MAX: u64 = 100_000;

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
    /// A light sender run by the instrumented loop of [`probe`], which timestamps sends and
    /// acknowledgements.
    Probe,
    /// Pingpong: sends a ball, times its return, sends the next.
    Hitter,
    /// Pingpong: returns every ball.
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
}

/// The messages of every bench handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// One unit of load: the sender's message number (1, 2, ...).
    Data(u64),
    /// The sender's last message.
    Done,
    /// Pingpong ball number `n`.
    Ball(u64),
    /// The hitter is done.
    Stop,
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

/// The latency probe's handler (run by [`probe`]'s instrumented loop): sends `Data` to
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
            Msg::Ball(_) | Msg::Stop => {}
        }
    }

    fn finished(&self, state: &ReceiverReport) -> Option<String> {
        (state.done >= self.expect_done)
            .then(|| serde_json::to_string(state).expect("report serializes"))
    }
}

/// Pingpong hitter: one ball in play at a time. Each turn that receives ball `n` back records
/// `now - (time of the turn that sent ball n)` in [`RTT_TABLE`] (if that send was in the
/// measured window), then sends ball `n + 1`, until `stop_at` or [`VOLLEYS_MAX`].
///
/// The recorded interval starts when the hitter's turn sends the ball and ends when the
/// hitter's turn that receives it back starts: the hitter's commit of the sending turn, the
/// datagram to the echo, the echo's turn and commit, the datagram back. In steady state it
/// is the period of the volley, so it holds exactly two commits, one per side.
#[derive(Debug, Clone)]
pub struct Hitter {
    pub target: ProcessId,
    pub stop_at: Time,
    pub measure_from: Time,
    pub measure_until: Time,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HitterState {
    pub volley: u64,
    pub sent_at_us: u64,
    pub measured: u64,
    pub stopped: bool,
}

impl Hitter {
    fn serve(&self, state: &mut HitterState, turn: &mut Turn<'_, Msg>) {
        state.volley += 1;
        state.sent_at_us = turn.now().as_micros();
        turn.send(&self.target, &Msg::Ball(state.volley))
            .expect("the echo is in the address book");
    }
}

impl Handler for Hitter {
    type State = HitterState;
    type Message = Msg;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut HitterState, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        if state.stopped {
            return;
        }
        match input {
            Input::Start => self.serve(state, turn),
            Input::Message {
                message: Msg::Ball(n),
                ..
            } if n == state.volley => {
                let sent_at = Time(state.sent_at_us);
                if sent_at >= self.measure_from && sent_at < self.measure_until {
                    let rtt_us = turn.now().since(sent_at).as_micros() as u64;
                    turn.table(RTT_TABLE).put(n.to_be_bytes(), &rtt_us);
                    state.measured += 1;
                }
                if turn.now() >= self.stop_at || state.volley >= VOLLEYS_MAX {
                    turn.send(&self.target, &Msg::Stop)
                        .expect("the echo is in the address book");
                    state.stopped = true;
                } else {
                    self.serve(state, turn);
                }
            }
            _ => {}
        }
    }

    fn finished(&self, state: &HitterState) -> Option<String> {
        state.stopped.then(|| {
            format!(
                "{{\"volleys\":{},\"measured\":{}}}",
                state.volley, state.measured
            )
        })
    }
}

/// Pingpong echo: returns every ball (one table write per ball, as the pingpong app does);
/// finishes at `Stop`.
#[derive(Debug, Clone)]
pub struct Echo {
    pub target: ProcessId,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EchoState {
    pub returned: u64,
    pub stopped: bool,
}

impl Handler for Echo {
    type State = EchoState;
    type Message = Msg;
    type Request = ();
    type Reply = ();

    fn on_turn(&self, state: &mut EchoState, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        let Input::Message { message, .. } = input else {
            return;
        };
        match message {
            Msg::Ball(n) => {
                let turn_no = turn.turn_number();
                turn.table("received").put(n.to_be_bytes(), &turn_no);
                turn.send(&self.target, &Msg::Ball(n))
                    .expect("the hitter is in the address book");
                state.returned += 1;
            }
            Msg::Stop => state.stopped = true,
            Msg::Data(_) | Msg::Done => {}
        }
    }

    fn finished(&self, state: &EchoState) -> Option<String> {
        state
            .stopped
            .then(|| format!("{{\"returned\":{}}}", state.returned))
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
        config.finish_linger = FINISH_LINGER;
        // `ken bench` waits for this line on standard error before starting the peers.
        config.announce = true;
        Ok(config)
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
                || e.downcast_ref::<probe::BindError>().is_some();
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
        })?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let config = spec.config()?;
    match spec.role {
        Role::Load => unreachable!("handled above"),
        Role::Receiver => {
            ken::run(
                config,
                Receiver {
                    expect_done: spec.expect_done,
                },
            )?;
        }
        Role::Probe => {
            let report = probe::run(
                config,
                spec.probe_sender()?,
                Time(spec.measure_from_us),
                Time(spec.measure_until_us),
            )?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Role::Hitter => {
            let hitter = Hitter {
                target: spec.target()?,
                stop_at: Time(spec.stop_at_us),
                measure_from: Time(spec.measure_from_us),
                measure_until: Time(spec.measure_until_us),
            };
            ken::run(config, hitter)?;
        }
        Role::Echo => {
            ken::run(
                config,
                Echo {
                    target: spec.target()?,
                },
            )?;
        }
    }
    Ok(())
}
