//! What authentication costs: two real processes (`ken::run` on threads, stores on tmpfs
//! when `/dev/shm` exists, UDP on 127.0.0.1), measured without a key, with a key (every
//! frame tagged) and with a key and encryption, alternately, in one sitting.
//!
//! - turns/s: `a` streams `MESSAGES` messages to `b`; `b`'s turns per second from its first
//!   message to its last (one turn per message, group commit).
//! - round trip: `a` and `b` ping-pong `ROUND_TRIPS` times; the mean time per round trip
//!   (each leg a committed turn).
//! - the raw cost of sealing and opening one frame, per size.
//!
//! `cargo bench -p ken --bench auth` (`-- --quick` for a short run). Prints one JSON line
//! per measurement and a summary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ken::transport::{Auth, Frame, FrameKeys, FrameKind, Keyring, NoKeys};
use ken::{ClusterKey, Config, Handler, Incarnation, Input, ProcessId, Seq, Turn};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Plain,
    Tagged,
    Encrypted,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "no key",
            Mode::Tagged => "key",
            Mode::Encrypted => "key+encrypt",
        }
    }
}

/// Stream: `a` sends `n` messages at start; `b` notes when the first and the last arrive.
/// Pingpong: `a` pings, `b` pongs, `n` times; `a` notes the start and the end.
struct Bench {
    stream: bool,
    /// Messages to count before finishing.
    n: u64,
    /// Messages `a` streams at start.
    send: u64,
    marks: Arc<Mutex<Vec<Instant>>>,
}

#[derive(Default, Serialize, Deserialize)]
struct Count(u64);

impl Handler for Bench {
    const APP: &'static str = "bench";
    type State = Count;
    type Message = u64;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, count: &mut Count, turn: &mut Turn<'_, u64, ()>, input: Input<u64>) {
        let b = ProcessId::new("b").unwrap();
        match input {
            Input::Start if turn.id().as_str() == "a" => {
                if self.stream {
                    for i in 0..self.send {
                        turn.send(&b, &i).unwrap();
                    }
                } else {
                    self.marks.lock().unwrap().push(Instant::now());
                    turn.send(&b, &0).unwrap();
                }
            }
            Input::Message { from, message, .. } => {
                count.0 += 1;
                if self.stream {
                    if count.0 == 1 || count.0 == self.n {
                        self.marks.lock().unwrap().push(Instant::now());
                    }
                } else if turn.id().as_str() == "b" {
                    turn.send(&from, &message).unwrap();
                } else if count.0 < self.n {
                    turn.send(&from, &(message + 1)).unwrap();
                } else {
                    self.marks.lock().unwrap().push(Instant::now());
                }
            }
            _ => {}
        }
    }

    fn finished(&self, count: &Count) -> Option<String> {
        (count.0 >= self.n).then(|| "done".into())
    }
}

/// Runs `a` and `b` under `mode`; returns the two marks.
fn run_pair(mode: Mode, stream: bool, n: u64) -> (Instant, Instant) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let key = ClusterKey::generate();
    let socket = |_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Reserve two ports (bind, read, release): the processes bind them right after.
    let (sa, sb) = (socket(0), socket(1));
    let (addr_a, addr_b) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
    drop((sa, sb));
    let marks = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    // `b` first, and `a` only once `b` listens: a first message lost to an unbound port
    // would cost a retransmission timeout and say nothing about authentication.
    for (id, listen) in [("b", addr_b), ("a", addr_a)] {
        let mut config = Config::new(ProcessId::new(id).unwrap(), listen, base.path().join(id));
        config.peers.insert(ProcessId::new("a").unwrap(), addr_a);
        config.peers.insert(ProcessId::new("b").unwrap(), addr_b);
        config.finish_linger = Duration::from_millis(300);
        if mode != Mode::Plain {
            config.key = Some(key.clone());
            config.encrypt = mode == Mode::Encrypted;
        }
        // In a stream only `b` counts to n; in a pingpong both do.
        let n_total = n;
        let n = if stream && id == "a" { 0 } else { n };
        let handler = Bench {
            stream,
            n,
            send: n_total,
            marks: Arc::clone(&marks),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        config.bound = Some(tx);
        threads.push(std::thread::spawn(move || ken::run(config, handler)));
        rx.recv_timeout(Duration::from_secs(10)).expect("bound");
    }
    for (t, id) in threads.into_iter().zip(["b", "a"]) {
        t.join().unwrap().expect("the process finishes");
        if std::env::var("KEN_BENCH_DEBUG").is_ok() {
            eprintln!("{id} finished ({mode:?}, stream {stream})");
        }
    }
    let marks = marks.lock().unwrap();
    assert_eq!(marks.len(), 2, "two marks");
    (marks[0], marks[1])
}

/// Seal + open of one frame with `payload` bytes, in ns.
fn frame_cost_ns(mode: Mode, payload: usize) -> f64 {
    let key = ClusterKey::generate();
    let ring = Keyring::new(&key, &[], mode == Mode::Encrypted).unwrap();
    let frame = Frame {
        kind: FrameKind::Data,
        auth: if mode == Mode::Plain {
            Auth::None
        } else {
            Auth::Cluster
        },
        from: ProcessId::new("node-1").unwrap(),
        from_incarnation: Incarnation(1),
        to: ProcessId::new("node-2").unwrap(),
        to_incarnation: Incarnation(2),
        seq: Seq(1),
        ack: Seq(0),
        acked: Seq(0),
        payload: vec![7; payload],
    };
    let keys: &dyn FrameKeys = if mode == Mode::Plain { &NoKeys } else { &ring };
    let iterations = (20_000_000 / (payload + 200)).max(200);
    let started = Instant::now();
    for _ in 0..iterations {
        let bytes = ring.seal(&frame).unwrap();
        let opened = Frame::open(&bytes, keys).unwrap();
        std::hint::black_box(opened);
    }
    started.elapsed().as_nanos() as f64 / iterations as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (messages, round_trips, sittings) = if quick {
        (5_000, 300, 1)
    } else {
        (50_000, 3_000, 5)
    };
    let modes = [Mode::Plain, Mode::Tagged, Mode::Encrypted];
    for mode in modes {
        for payload in [16, 1024, 60_000] {
            let ns = frame_cost_ns(mode, payload);
            println!(
                "{{\"bench\":\"seal_open\",\"mode\":\"{}\",\"payload_bytes\":{payload},\"ns\":{ns:.0}}}",
                mode.name()
            );
        }
    }
    let mut turns: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut rtts: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    // Warm up (the first processes of a run pay for loading and page faults).
    run_pair(Mode::Plain, true, 1_000);
    run_pair(Mode::Plain, false, 100);
    for sitting in 0..sittings {
        // Rotate the order of the modes from sitting to sitting, so drift in the machine's
        // load does not favour one.
        for k in 0..modes.len() {
            let i = (k + sitting) % modes.len();
            let mode = &modes[i];
            let (first, last) = run_pair(*mode, true, messages);
            let rate = (messages - 1) as f64 / last.duration_since(first).as_secs_f64();
            let (start, end) = run_pair(*mode, false, round_trips);
            let rtt_us = end.duration_since(start).as_secs_f64() * 1e6 / round_trips as f64;
            println!(
                "{{\"bench\":\"pair\",\"sitting\":{sitting},\"mode\":\"{}\",\"turns_per_s\":{rate:.0},\"round_trip_us\":{rtt_us:.1}}}",
                mode.name()
            );
            turns[i].push(rate);
            rtts[i].push(rtt_us);
        }
    }
    let base_turns = median(turns[0].clone());
    let base_rtt = median(rtts[0].clone());
    for (i, mode) in modes.iter().enumerate() {
        let t = median(turns[i].clone());
        let r = median(rtts[i].clone());
        println!(
            "{:12} turns/s {t:>8.0} ({:+.1}%)   round trip {r:>7.1} us ({:+.1}%)",
            mode.name(),
            100.0 * (t / base_turns - 1.0),
            100.0 * (r / base_rtt - 1.0)
        );
    }
}
