//! A hostile network against real processes (`ken::run` on a thread, real UDP on
//! 127.0.0.1): a raw socket is the attacker. Also the [`ken::Client`] with and without a
//! credential, and a property test of whole datagrams into a live engine.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ken::client::{ClientError, ClientOptions, ReplyBody, RequestEnvelope};
use ken::engine::tables::EmptyTables;
use ken::engine::{Command, Engine, EngineConfig, EngineError, Security};
use ken::transport::{Auth, Frame, FrameKeys, FrameKind, Keyring, NoKeys};
use ken::{
    BlockingClient, ClientCredential, ClientId, ClusterKey, Config, Handler, Incarnation, Input,
    ProcessId, Seq, Time, Tuning, Turn,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Keeps a secret note per request and answers with it; `Big(n)` answers `n` bytes.
struct Notes;

#[derive(Default, Serialize, Deserialize)]
struct Book(Vec<String>);

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Note(String),
    Big(usize),
}

impl Handler for Notes {
    const APP: &'static str = "notes";
    type State = Book;
    type Message = ();
    type Request = Req;
    type Reply = String;
    fn on_turn(&self, book: &mut Book, turn: &mut Turn<'_, (), String>, input: Input<(), Req>) {
        if let Input::Request { request, .. } = input {
            match request {
                Req::Note(text) => {
                    book.0.push(text.clone());
                    turn.reply(&format!("noted #{}: {text}", book.0.len()))
                        .unwrap();
                }
                Req::Big(n) => turn.reply(&"x".repeat(n)).unwrap(),
            }
        }
    }
}

fn start(dir: &std::path::Path, key: Option<ClusterKey>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut config = Config::new(
        ProcessId::new("notes").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.join("notes.db"),
    );
    config.bound = Some(tx);
    config.key = key;
    std::thread::spawn(move || ken::run(config, Notes));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the server binds")
}

fn quick() -> ClientOptions {
    ClientOptions {
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        deadline: Duration::from_millis(2000),
        ..ClientOptions::default()
    }
}

/// One request datagram of `client` numbered `n`, sealed with `credential` if given.
fn request_bytes(
    client: ClientId,
    n: u64,
    req: &Req,
    credential: Option<&ClientCredential>,
) -> Vec<u8> {
    let frame = Frame {
        kind: FrameKind::ClientRequest,
        auth: Auth::None,
        from: client.to_process_id(),
        from_incarnation: Incarnation(0),
        to: ProcessId::new("notes").unwrap(),
        to_incarnation: Incarnation(0),
        seq: Seq(n),
        ack: Seq(0),
        acked: Seq(0),
        payload: ken::store::codec::encode(&RequestEnvelope {
            sent_ms: Time::now_wall().as_millis(),
            request: ken::store::codec::encode(req),
            padding: Vec::new(),
        }),
    };
    match credential {
        Some(c) => frame.seal(&c.frame_key(), true).unwrap(),
        None => frame.encode().unwrap(),
    }
}

/// Sends `bytes` from `socket` until a datagram comes back, within 10 s.
fn ask(socket: &UdpSocket, server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < deadline {
        socket.send_to(bytes, server).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return buf[..n].to_vec();
        }
    }
    panic!("no answer within 10 s");
}

fn localhost() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// The victim sends a note; the attacker replays the victim's datagram from its own socket
/// and gets the cached reply. Returns what the attacker can read of it.
fn replayed_request(keyed: bool) -> (Result<ReplyBody, String>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let server = start(dir.path(), keyed.then(|| key.clone()));
    let credential = keyed.then(|| key.new_credential());
    let victim_id = credential
        .as_ref()
        .map_or_else(ClientId::random, |c| ClientId(c.id));
    let secret = "the victim's secret";
    let bytes = request_bytes(victim_id, 1, &Req::Note(secret.into()), credential.as_ref());
    let victim_reply = ask(&localhost(), server, &bytes);
    let victim_frame = match &credential {
        Some(c) => Frame::open(&victim_reply, c).unwrap(),
        None => Frame::decode(&victim_reply).unwrap(),
    };
    assert!(matches!(
        ken::store::codec::decode::<ReplyBody>(&victim_frame.payload).unwrap(),
        ReplyBody::Ok(_)
    ));
    // The attacker captured `bytes` and sends them again.
    let stolen = ask(&localhost(), server, &bytes);
    let in_clear = stolen.windows(secret.len()).any(|w| w == secret.as_bytes());
    let read = Frame::decode(&stolen)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            ken::store::codec::decode::<ReplyBody>(&f.payload).map_err(|e| e.to_string())
        });
    (read, in_clear)
}

#[test]
fn a_replayed_request_draws_a_reply_only_its_client_can_read() {
    let (read, in_clear) = replayed_request(true);
    assert!(read.is_err(), "the attacker reads nothing: {read:?}");
    assert!(!in_clear, "the secret does not travel in clear");
}

#[test]
fn control_a_replayed_request_draws_a_readable_reply_without_a_key() {
    let (read, in_clear) = replayed_request(false);
    assert!(matches!(read, Ok(ReplyBody::Ok(_))), "{read:?}");
    assert!(in_clear);
}

#[test]
fn a_request_number_beyond_i64_does_not_stop_a_process() {
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let key = ClusterKey::generate();
        let server = start(dir.path(), keyed.then(|| key.clone()));
        let credential = keyed.then(|| key.new_credential());
        let id = credential
            .as_ref()
            .map_or_else(ClientId::random, |c| ClientId(c.id));
        let attacker = localhost();
        for n in [1u64 << 63, u64::MAX] {
            attacker
                .send_to(
                    &request_bytes(id, n, &Req::Note("boom".into()), credential.as_ref()),
                    server,
                )
                .unwrap();
        }
        // Still serving (the requests were dropped, the process did not exit).
        let mut client: BlockingClient<Req, String> = match credential {
            Some(c) => BlockingClient::with_credential(c, 1, quick()).unwrap(),
            None => BlockingClient::with_id(ClientId::random(), 1, quick()).unwrap(),
        };
        let reply = client.call(server, &Req::Note("after".into())).unwrap();
        assert_eq!(reply, "noted #1: after", "keyed {keyed}");
    }
}

#[test]
fn clients_with_and_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let server = start(dir.path(), Some(key.clone()));
    // With a credential: served; large replies come directly.
    let mut client: BlockingClient<Req, String> =
        BlockingClient::with_credential(key.new_credential(), 1, quick()).unwrap();
    assert_eq!(
        client.call(server, &Req::Note("hi".into())).unwrap(),
        "noted #1: hi"
    );
    assert_eq!(
        client.call(server, &Req::Big(50_000)).unwrap().len(),
        50_000
    );
    // Without one: refused at once, with the reason.
    let mut anonymous: BlockingClient<Req, String> =
        BlockingClient::with_id(ClientId::random(), 1, quick()).unwrap();
    match anonymous.call(server, &Req::Note("let me in".into())) {
        Err(ClientError::Unauthorized(why)) => assert!(why.contains("credential"), "{why}"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // A credential of another cluster: its requests are dropped (no answer at all).
    let mut stranger: BlockingClient<Req, String> = BlockingClient::with_credential(
        ClusterKey::generate().new_credential(),
        1,
        ClientOptions {
            deadline: Duration::from_millis(300),
            ..quick()
        },
    )
    .unwrap();
    assert!(matches!(
        stranger.call(server, &Req::Note("x".into())),
        Err(ClientError::Timeout { .. })
    ));
    // The credential file round trip, as `ken client-credential` writes it.
    let path = dir.path().join("client.cred");
    let credential = key.new_credential();
    credential.write_new(&path).unwrap();
    let loaded = ClientCredential::load(&path).unwrap();
    let mut from_file: BlockingClient<Req, String> =
        BlockingClient::with_credential(loaded, 1, quick()).unwrap();
    assert_eq!(
        from_file.call(server, &Req::Note("file".into())).unwrap(),
        "noted #2: file"
    );
}

#[test]
fn an_anonymous_client_pads_itself_for_a_large_reply() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None);
    let mut client: BlockingClient<Req, String> =
        BlockingClient::with_id(ClientId::random(), 1, quick()).unwrap();
    assert_eq!(
        client.call(server, &Req::Big(40_000)).unwrap().len(),
        40_000
    );
    assert_eq!(
        client.call(server, &Req::Note("small".into())).unwrap(),
        "noted #1: small"
    );
}

#[test]
fn random_and_mutated_datagrams_from_many_addresses_do_not_stop_a_process() {
    let seed: u64 = std::env::var("KEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed = {seed} (replay with KEN_SEED={seed})");
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let key = ClusterKey::generate();
        let server = start(dir.path(), keyed.then(|| key.clone()));
        let credential = key.new_credential();
        let valid = request_bytes(
            ClientId(credential.id),
            1,
            &Req::Note("seed".into()),
            keyed.then_some(&credential),
        );
        let sockets: Vec<UdpSocket> = (0..8).map(|_| localhost()).collect();
        for i in 0..3000 {
            let bytes = datagram(&mut rng, &valid);
            let _ = sockets[i % sockets.len()].send_to(&bytes, server);
        }
        let mut client: BlockingClient<Req, String> = if keyed {
            BlockingClient::with_credential(key.new_credential(), 1, quick()).unwrap()
        } else {
            BlockingClient::with_id(ClientId::random(), 1, quick()).unwrap()
        };
        let reply = client.call(server, &Req::Note("alive".into())).unwrap();
        assert!(reply.ends_with(": alive"), "keyed {keyed}: {reply}");
    }
}

/// A random datagram: noise, or `valid` with a few bytes changed (the CRC fixed half the
/// time), truncated or extended.
fn datagram(rng: &mut impl rand::Rng, valid: &[u8]) -> Vec<u8> {
    match rng.gen_range(0..4) {
        0 => (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
        1 => {
            let mut bytes = valid.to_vec();
            let n = rng.gen_range(0..bytes.len());
            bytes.truncate(n);
            bytes
        }
        _ => {
            let mut bytes = valid.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            if rng.gen_bool(0.5) && bytes.len() > 4 {
                let n = bytes.len() - 4;
                let crc = crc32fast::hash(&bytes[..n]);
                bytes[n..].copy_from_slice(&crc.to_le_bytes());
            }
            bytes
        }
    }
}

// ---- whole datagrams into a live engine ----

/// A live engine with a peer `a` and some history, and genuine datagrams to mutate.
struct Live {
    engine: Engine<Notes>,
    keys: Option<Keyring>,
    genuine: Vec<Vec<u8>>,
}

fn live(keyed: bool) -> Live {
    let cluster = ClusterKey::from_bytes([9; 32]);
    let keys = keyed.then(|| Keyring::new(&cluster, &[], false).unwrap());
    let config = EngineConfig {
        id: ProcessId::new("notes").unwrap(),
        peers: vec![ProcessId::new("a").unwrap()],
        tuning: Tuning::default(),
        seed: 3,
    };
    let recovered = ken::store::Recovered {
        process_id: "notes".into(),
        incarnation: 0x5,
        created: true,
        turns_committed: 0,
        commits: 0,
        root: None,
        peers: vec![],
        outbox: vec![],
        timers: vec![],
        clients: vec![],
        groups: vec![],
    };
    let mut engine = Engine::recover(config, Notes, recovered, Box::new(EmptyTables))
        .unwrap()
        .with_security(Security {
            authenticated: keyed,
        });
    engine.start(Time::from_millis(1_000));
    assert!(!drain(&mut engine, true));
    let credential = cluster.credential([1; 16]);
    let mut genuine = vec![request_bytes(
        ClientId([1; 16]),
        1,
        &Req::Note("n".into()),
        keyed.then_some(&credential),
    )];
    for kind in [
        FrameKind::Data,
        FrameKind::Ack,
        FrameKind::Heartbeat,
        FrameKind::Fuse,
    ] {
        let frame = Frame {
            kind,
            auth: if keyed { Auth::Cluster } else { Auth::None },
            from: ProcessId::new("a").unwrap(),
            from_incarnation: Incarnation(0xa),
            to: ProcessId::new("notes").unwrap(),
            to_incarnation: Incarnation(0),
            seq: Seq(1),
            ack: Seq(0),
            acked: Seq(0),
            payload: ken::store::codec::encode(&()),
        };
        genuine.push(match &keys {
            Some(k) => k.seal(&frame).unwrap(),
            None => frame.encode().unwrap(),
        });
    }
    Live {
        engine,
        keys,
        genuine,
    }
}

/// Runs the engine's commands (commits at once). With a key nothing may be fatal; without
/// one, a forged ack or acked field is indistinguishable from a peer's proof that this
/// store lost history, and the engine stops on it (SECURITY.md: without a cluster key a
/// forged frame can stop a process). Returns whether the engine stopped.
fn drain(engine: &mut Engine<Notes>, keyed: bool) -> bool {
    loop {
        let cmds = engine.take_commands();
        if cmds.is_empty() {
            return false;
        }
        for cmd in cmds {
            match cmd {
                Command::Commit { id, .. } => engine.commit_done(Time::from_millis(1_000), id),
                Command::Fatal { error } => {
                    assert!(
                        !keyed && matches!(error, EngineError::RolledBack { .. }),
                        "engine failed: {error}"
                    );
                    return true;
                }
                _ => {}
            }
        }
    }
}

fn arbitrary_datagram() -> impl Strategy<Value = (u8, Vec<u8>, usize, Vec<(usize, u8)>, bool)> {
    (
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..300),
        0usize..5,
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random byte strings and mutated genuine datagrams, opened as the endpoint opens them
    /// and handed to a live engine: no panic, the engine's invariants hold, every datagram
    /// is accounted for (dropped with a reason when opened, or counted in by the engine),
    /// and with a key a mutated datagram never opens unless it is unchanged.
    #[test]
    fn whole_datagrams_into_a_live_engine(
        keyed in any::<bool>(),
        inputs in prop::collection::vec(arbitrary_datagram(), 1..40),
    ) {
        let mut live = live(keyed);
        let keys: &dyn FrameKeys = match &live.keys {
            Some(k) => k,
            None => &NoKeys,
        };
        let mut dropped = 0u64;
        let mut opened = 0u64;
        for (i, (how, noise, which, edits, fix)) in inputs.iter().enumerate() {
            let bytes = match how {
                0 => noise.clone(),
                _ => {
                    let mut b = live.genuine[*which % live.genuine.len()].clone();
                    for (at, v) in edits {
                        let at = at % b.len();
                        b[at] = *v;
                    }
                    if *fix && b.len() > 4 {
                        let n = b.len() - 4;
                        let crc = crc32fast::hash(&b[..n]);
                        b[n..].copy_from_slice(&crc.to_le_bytes());
                    }
                    b
                }
            };
            let now = Time::from_millis(2_000 + i as u64);
            match Frame::open(&bytes, keys) {
                Ok(frame) => {
                    if keyed && frame.auth != Auth::None {
                        prop_assert!(
                            live.genuine.contains(&bytes),
                            "a changed tagged datagram opened"
                        );
                    }
                    opened += 1;
                    live.engine.handle_frame(now, frame);
                }
                Err(_) => dropped += 1,
            }
            if drain(&mut live.engine, keyed) {
                return Ok(());
            }
            live.engine.tick(now);
            if drain(&mut live.engine, keyed) {
                return Ok(());
            }
            live.engine.check_invariants();
        }
        prop_assert_eq!(dropped + opened, inputs.len() as u64);
        prop_assert_eq!(live.engine.stats().frames_in, opened);
    }
}
