//! The attacks of issue 12, each at engine level with real wire bytes: every frame an engine
//! sends is sealed (or encoded) exactly as the endpoint does ([`Keyring::seal`]) and every
//! datagram is opened exactly as the endpoint opens it ([`Frame::open`]) before the engine
//! sees it. The attacker writes bytes; it holds no key.
//!
//! Each attack runs twice: with a cluster key, where it must fail, and without one (the
//! negative control), where the same attack must succeed, so the test can see it. Attacks
//! that the fix defeats with or without a key (the reply cache, amplification, the 2^63
//! request number) have a control that shows the condition the test detects.

use std::collections::BTreeMap;

use ken::client::{ReplyBody, RequestEnvelope};
use ken::engine::tables::MemoryTables;
use ken::engine::{Command, Engine, EngineConfig, Security};
use ken::store::Recovered;
use ken::transport::{
    Auth, ClientCredential, ClusterKey, DecodeError, Frame, FrameKeys, FrameKind, Keyring, NoKeys,
};
use ken::{ClientId, GroupState, Handler, Incarnation, Input, ProcessId, Seq, Time, Tuning, Turn};
use serde::{Deserialize, Serialize};

const INC_A: u64 = 0xAAAA;
const INC_B: u64 = 0xBBBB;

fn pid(s: &str) -> ProcessId {
    ProcessId::new(s).unwrap()
}

fn t(ms: u64) -> Time {
    Time::from_millis(1_000_000 + ms)
}

/// `a` sends `to_b` to `b` at start (and creates a FUSE group with `b` if `group`); every
/// message and request is recorded; a request `Big(n)` is answered with `n` bytes.
struct Node {
    to_b: Vec<u64>,
    group: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    got: Vec<(String, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Put(u64),
    Big(usize),
    /// Applied, answered, not recorded (keeps the root state small under 10,000 clients).
    Touch,
}

impl Handler for Node {
    const APP: &'static str = "node";
    type State = Seen;
    type Message = u64;
    type Request = Req;
    type Reply = Vec<u8>;
    fn on_turn(&self, seen: &mut Seen, turn: &mut Turn<'_, u64, Vec<u8>>, input: Input<u64, Req>) {
        match input {
            Input::Start => {
                for v in &self.to_b {
                    turn.send(&pid("b"), v).unwrap();
                }
                if self.group {
                    turn.fuse_create(&[pid("b")]).unwrap();
                }
            }
            Input::Message { from, message, .. } => seen.got.push((from.to_string(), message)),
            Input::Request { request, .. } => match request {
                Req::Put(v) => {
                    seen.got.push(("client".into(), v));
                    turn.reply(&format!("put {v}").into_bytes()).unwrap();
                }
                Req::Big(n) => turn.reply(&vec![0x42; n]).unwrap(),
                Req::Touch => turn.reply(&Vec::new()).unwrap(),
            },
            _ => {}
        }
    }
}

fn recovered(id: &str, inc: u64) -> Recovered {
    Recovered {
        process_id: id.to_string(),
        incarnation: inc,
        created: true,
        turns_committed: 0,
        commits: 0,
        root: None,
        peers: vec![],
        outbox: vec![],
        timers: vec![],
        clients: vec![],
        groups: vec![],
    }
}

/// An engine and its keys: the host half of a process, without sockets or a store (a batch
/// is durable as soon as it is handed out, its rows applied to in-memory tables).
struct Host {
    engine: Engine<Node>,
    tables: MemoryTables,
    keys: Option<Keyring>,
    /// Datagrams dropped when opened, by reason.
    dropped: BTreeMap<String, u64>,
}

impl Host {
    fn new(id: &str, inc: u64, node: Node, keys: Option<Keyring>) -> Host {
        let config = EngineConfig {
            id: pid(id),
            peers: ["a", "b"]
                .iter()
                .filter(|p| **p != id)
                .map(|p| pid(p))
                .collect(),
            tuning: Tuning::default(),
            seed: 1,
        };
        let tables = MemoryTables::default();
        let engine = Engine::recover(config, node, recovered(id, inc), Box::new(tables.clone()))
            .unwrap()
            .with_security(Security {
                authenticated: keys.is_some(),
            });
        Host {
            engine,
            tables,
            keys,
            dropped: BTreeMap::new(),
        }
    }

    fn keys(&self) -> &dyn FrameKeys {
        match &self.keys {
            Some(keys) => keys,
            None => &NoKeys,
        }
    }

    /// One datagram from the network, opened as the endpoint opens it.
    fn deliver(&mut self, now: Time, bytes: &[u8]) -> Result<(), DecodeError> {
        match Frame::open(bytes, self.keys()) {
            Ok(frame) => {
                self.engine.handle_frame(now, frame);
                Ok(())
            }
            Err(e) => {
                let reason = format!("{e:?}");
                let reason = reason.split(['(', ' ']).next().unwrap_or("").to_string();
                *self.dropped.entry(reason).or_default() += 1;
                Err(e)
            }
        }
    }

    /// Runs the engine's commands: commits at once, returns what it sends as wire bytes
    /// (with the frame, for the test to look at).
    fn step(&mut self, now: Time) -> Vec<(ProcessId, Frame, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let cmds = self.engine.take_commands();
            if cmds.is_empty() {
                return out;
            }
            for cmd in cmds {
                match cmd {
                    Command::Commit { id, batch } => {
                        self.tables.apply(&batch);
                        self.engine.commit_done(now, id);
                    }
                    Command::Send { to, frame, .. } => {
                        let bytes = match &self.keys {
                            Some(keys) => keys.seal(&frame).expect("seal"),
                            None => frame.encode().expect("encode"),
                        };
                        out.push((to, frame, bytes));
                    }
                    Command::Fatal { error } => panic!("engine failed: {error}"),
                    _ => {}
                }
            }
        }
    }

    fn got(&self) -> Vec<(String, u64)> {
        self.engine.state().got.clone()
    }

    fn outbox_to(&self, peer: &str) -> usize {
        self.engine
            .peer_status()
            .into_iter()
            .find(|p| p.id.as_str() == peer)
            .map_or(0, |p| p.outbox)
    }
}

/// Runs `a` and `b` against each other from `from_ms` for `rounds` rounds of 10 ms, every
/// datagram delivered (unless `drop_b` drops everything `b` sends). Returns the time reached.
fn exchange(a: &mut Host, b: &mut Host, from_ms: u64, rounds: u64, drop_b: bool) -> u64 {
    let mut ms = from_ms;
    for _ in 0..rounds {
        let now = t(ms);
        a.engine.tick(now);
        b.engine.tick(now);
        for (to, _, bytes) in a.step(now) {
            if to.as_str() == "b" {
                let _ = b.deliver(now, &bytes);
            }
        }
        for (to, _, bytes) in b.step(now) {
            if to.as_str() == "a" && !drop_b {
                let _ = a.deliver(now, &bytes);
            }
        }
        ms += 10;
    }
    ms
}

fn key(byte: u8) -> ClusterKey {
    ClusterKey::from_bytes([byte; 32])
}

fn ring(current: &ClusterKey, old: &[ClusterKey]) -> Keyring {
    Keyring::new(current, old, false).unwrap()
}

/// `a` (sending `to_b`) and `b`, both with the cluster key or both without.
fn pair(keyed: bool, to_b: Vec<u64>) -> (Host, Host) {
    let keys = || keyed.then(|| ring(&key(1), &[]));
    let a = Host::new("a", INC_A, Node { to_b, group: false }, keys());
    let b = Host::new(
        "b",
        INC_B,
        Node {
            to_b: vec![],
            group: false,
        },
        keys(),
    );
    (a, b)
}

/// What an attacker without the key can make of a captured datagram: the same frame with
/// fields changed, untagged (it cannot tag), or the captured bytes altered in place with the
/// CRC fixed. Without a key on the receiver, the untagged forgery is a valid frame.
fn forgeries(captured: &Frame, change: impl Fn(&mut Frame)) -> Vec<Vec<u8>> {
    let mut forged = Frame {
        auth: Auth::None,
        ..captured.clone()
    };
    change(&mut forged);
    vec![forged.encode().unwrap()]
}

fn altered(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] ^= 0x01;
    let n = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

// ---- forged data frame ----

/// The attacker sees `a`'s first data frame to `b` and sends its own payload under the same
/// peer id, incarnations and sequence number, ahead of the genuine one.
fn forged_data_frame(keyed: bool) -> Vec<(String, u64)> {
    let (mut a, mut b) = pair(keyed, vec![1]);
    a.engine.start(t(0));
    b.engine.start(t(0));
    let sent = a.step(t(0));
    b.step(t(0));
    let (_, genuine, genuine_bytes) = sent
        .into_iter()
        .find(|(_, f, _)| f.kind == FrameKind::Data)
        .unwrap();
    let mut attempts = forgeries(&genuine, |f| {
        f.payload = ken::store::wrap_payload(1, &ken::store::codec::encode(&666u64))
    });
    attempts.push(altered(&genuine_bytes, genuine_bytes.len() - 4 - 1));
    for bytes in &attempts {
        let _ = b.deliver(t(1), bytes);
    }
    if keyed {
        assert_eq!(
            b.dropped.values().sum::<u64>(),
            attempts.len() as u64,
            "{:?}",
            b.dropped
        );
    }
    let _ = b.deliver(t(2), &genuine_bytes);
    exchange(&mut a, &mut b, 3, 20, false);
    b.got()
}

#[test]
fn forged_data_frame_is_refused_with_a_key() {
    assert_eq!(forged_data_frame(true), vec![("a".to_string(), 1)]);
}

#[test]
fn control_forged_data_frame_is_delivered_without_a_key() {
    // The forged message is delivered and the genuine one dropped as a duplicate.
    assert_eq!(forged_data_frame(false), vec![("a".to_string(), 666)]);
}

// ---- forged ack ----

/// `a` sends message 1, which never reaches `b`; the attacker acknowledges it in `b`'s name.
/// Returns `a`'s outbox to `b` after the forgery.
fn forged_ack(keyed: bool) -> (usize, Vec<(String, u64)>) {
    let (mut a, mut b) = pair(keyed, vec![1]);
    a.engine.start(t(0));
    b.engine.start(t(0));
    let (_, genuine, _) = a
        .step(t(0))
        .into_iter()
        .find(|(_, f, _)| f.kind == FrameKind::Data)
        .unwrap();
    b.step(t(0));
    let ack = Frame {
        kind: FrameKind::Ack,
        auth: Auth::None,
        from: genuine.to.clone(),
        from_incarnation: Incarnation(INC_B),
        to: genuine.from.clone(),
        to_incarnation: genuine.from_incarnation,
        seq: Seq(0),
        ack: Seq(1),
        acked: Seq(0),
        payload: vec![],
    };
    let _ = a.deliver(t(1), &ack.encode().unwrap());
    a.step(t(1));
    let outbox = a.outbox_to("b");
    exchange(&mut a, &mut b, 2, 200, false);
    (outbox, b.got())
}

#[test]
fn forged_ack_is_refused_with_a_key() {
    let (outbox, got) = forged_ack(true);
    assert_eq!(outbox, 1, "the message stays in the outbox");
    assert_eq!(
        got,
        vec![("a".to_string(), 1)],
        "and is delivered by retransmission"
    );
}

#[test]
fn control_forged_ack_loses_the_message_without_a_key() {
    let (outbox, got) = forged_ack(false);
    assert_eq!(outbox, 0, "the forged ack deleted the outbox row");
    assert_eq!(got, vec![], "the message is lost");
}

// ---- forged first contact ----

/// Before the real `a` ever speaks, the attacker sends `b` a frame from `a` with a made-up
/// incarnation. Returns what `b` received from the real `a` afterwards.
fn forged_first_contact(keyed: bool) -> (Vec<(String, u64)>, u64) {
    let (mut a, mut b) = pair(keyed, vec![1]);
    b.engine.start(t(0));
    b.step(t(0));
    let forged = Frame {
        kind: FrameKind::Ack,
        auth: Auth::None,
        from: pid("a"),
        from_incarnation: Incarnation(0x0BAD),
        to: pid("b"),
        to_incarnation: Incarnation(0),
        seq: Seq(0),
        ack: Seq(0),
        acked: Seq(0),
        payload: vec![],
    };
    let _ = b.deliver(t(1), &forged.encode().unwrap());
    b.step(t(1));
    a.engine.start(t(2));
    exchange(&mut a, &mut b, 2, 50, false);
    (b.got(), b.engine.stats().foreign_incarnation_frames)
}

#[test]
fn forged_first_contact_is_refused_with_a_key() {
    let (got, foreign) = forged_first_contact(true);
    assert_eq!(got, vec![("a".to_string(), 1)]);
    assert_eq!(foreign, 0);
}

#[test]
fn control_forged_first_contact_locks_out_the_real_peer_without_a_key() {
    let (got, foreign) = forged_first_contact(false);
    assert_eq!(got, vec![], "the real a is rejected as a stranger");
    assert!(foreign > 0);
}

// ---- forged client request ----

/// A request of `client` numbered `n`, sealed with `credential` if given.
fn request(
    client: ClientId,
    n: u64,
    req: &Req,
    sent: Time,
    credential: Option<&ClientCredential>,
    padding: usize,
) -> Vec<u8> {
    let frame = Frame {
        kind: FrameKind::ClientRequest,
        auth: Auth::None,
        from: client.to_process_id(),
        from_incarnation: Incarnation(0),
        to: pid("b"),
        to_incarnation: Incarnation(0),
        seq: Seq(n),
        ack: Seq(0),
        acked: Seq(0),
        payload: ken::store::codec::encode(&RequestEnvelope {
            sent_ms: sent.as_millis(),
            request: ken::store::codec::encode(req),
            padding: vec![0; padding],
        }),
    };
    match credential {
        Some(c) => frame.seal(&c.frame_key(), true).unwrap(),
        None => frame.encode().unwrap(),
    }
}

/// The replies `b` sends, decoded with the credential (or without keys).
fn replies(
    sent: &[(ProcessId, Frame, Vec<u8>)],
    credential: Option<&ClientCredential>,
) -> Vec<(u64, ReplyBody, usize)> {
    sent.iter()
        .filter(|(_, f, _)| f.kind == FrameKind::ClientReply)
        .map(|(_, _, bytes)| {
            let frame = match credential {
                Some(c) => Frame::open(bytes, c).unwrap(),
                None => Frame::decode(bytes).unwrap(),
            };
            (
                frame.seq.0,
                ken::store::codec::decode(&frame.payload).unwrap(),
                bytes.len(),
            )
        })
        .collect()
}

/// The attacker sends a request in the victim's name with the victim's next number, ahead
/// of the victim. Returns what `b` applied and the reply the victim got.
fn forged_client_request(keyed: bool) -> (Vec<(String, u64)>, Vec<u8>) {
    let cluster = key(1);
    let (_, mut b) = pair(keyed, vec![]);
    b.engine.start(t(0));
    b.step(t(0));
    let credential = keyed.then(|| cluster.credential([7; 16]));
    let victim = ClientId([7; 16]);
    // Untagged: all an attacker without the token can send...
    let _ = b.deliver(t(1), &request(victim, 1, &Req::Put(666), t(1), None, 0));
    // ...or tagged with a token of its own (another client's credential).
    if keyed {
        let other = cluster.credential([8; 16]);
        let forged = {
            let mut bytes = request(ClientId([8; 16]), 1, &Req::Put(667), t(1), Some(&other), 0);
            // The same bytes cannot be renamed: the id is under the tag.
            let name = ClientId([8; 16]).to_string();
            let at = bytes
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap();
            bytes[at..at + name.len()].copy_from_slice(victim.to_string().as_bytes());
            let n = bytes.len() - 4;
            let crc = crc32fast::hash(&bytes[..n]);
            bytes[n..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        assert_eq!(b.deliver(t(1), &forged), Err(DecodeError::BadTag));
    }
    b.step(t(1));
    let _ = b.deliver(
        t(2),
        &request(victim, 1, &Req::Put(1), t(2), credential.as_ref(), 0),
    );
    let sent = b.step(t(2));
    let got = replies(&sent, credential.as_ref());
    let reply = match got.as_slice() {
        [(1, ReplyBody::Ok(bytes), _)] => ken::store::codec::decode(bytes).unwrap(),
        other => panic!("one Ok reply expected: {other:?}"),
    };
    (b.got(), reply)
}

#[test]
fn forged_client_request_is_refused_with_a_key() {
    let (applied, reply) = forged_client_request(true);
    assert_eq!(applied, vec![("client".to_string(), 1)]);
    assert_eq!(reply, b"put 1");
}

#[test]
fn control_forged_client_request_is_applied_without_a_key() {
    let (applied, reply) = forged_client_request(false);
    assert_eq!(
        applied,
        vec![("client".to_string(), 666)],
        "the attacker's request"
    );
    assert_eq!(reply, b"put 666", "the victim got the attacker's reply");
}

// ---- amplification ----

#[test]
fn a_small_anonymous_request_never_draws_a_large_reply() {
    let (_, mut b) = pair(false, vec![]);
    b.engine.start(t(0));
    b.step(t(0));
    let client = ClientId([9; 16]);
    let small = request(client, 1, &Req::Big(60_000), t(1), None, 0);
    b.deliver(t(1), &small).unwrap();
    let sent = b.step(t(1));
    let got = replies(&sent, None);
    let [(1, ReplyBody::Pad { datagram_bytes }, reply_len)] = got.as_slice() else {
        panic!("one Pad reply expected: {got:?}");
    };
    assert!(
        *reply_len <= ken::limits::AMPLIFICATION_MAX * small.len(),
        "{reply_len} > 4 x {}",
        small.len()
    );
    assert_eq!(b.engine.stats().replies_padded, 1);
    // Control: padded as asked, the same request gets its (cached) 60 KB reply: the test
    // sees large replies when they are allowed.
    let padded = request(
        client,
        1,
        &Req::Big(60_000),
        t(1),
        None,
        *datagram_bytes as usize,
    );
    assert!(padded.len() >= *datagram_bytes as usize);
    b.deliver(t(2), &padded).unwrap();
    let got = replies(&b.step(t(2)), None);
    let [(1, ReplyBody::Ok(bytes), reply_len)] = got.as_slice() else {
        panic!("the cached reply expected: {got:?}");
    };
    assert!(*reply_len > 60_000 && *reply_len <= 4 * padded.len());
    assert_eq!(
        ken::store::codec::decode::<Vec<u8>>(bytes).unwrap().len(),
        60_000
    );
    assert_eq!(b.engine.stats().requests_applied, 1, "applied once");
}

#[test]
fn a_credentialed_client_gets_large_replies_directly() {
    let cluster = key(1);
    let (_, mut b) = pair(true, vec![]);
    b.engine.start(t(0));
    b.step(t(0));
    let credential = cluster.credential([5; 16]);
    let small = request(
        ClientId([5; 16]),
        1,
        &Req::Big(60_000),
        t(1),
        Some(&credential),
        0,
    );
    b.deliver(t(1), &small).unwrap();
    let got = replies(&b.step(t(1)), Some(&credential));
    assert!(
        matches!(got.as_slice(), [(1, ReplyBody::Ok(_), len)] if *len > 60_000),
        "{:?}",
        got.iter().map(|g| g.2).collect::<Vec<_>>()
    );
}

// ---- the reply cache: filling from random ids, and eviction ----

/// Fills `b`'s reply cache with `CLIENTS_MAX` clients at `t(1)`.
fn fill_cache(b: &mut Host) {
    for i in 0..ken::limits::CLIENTS_MAX as u64 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_le_bytes());
        id[15] = 0xee;
        let _ = b.deliver(t(1), &request(ClientId(id), 1, &Req::Touch, t(1), None, 0));
        b.step(t(1));
    }
}

#[test]
fn a_full_reply_cache_evicts_idle_clients_instead_of_locking_everyone_out() {
    let (_, mut b) = pair(false, vec![]);
    b.engine.start(t(0));
    b.step(t(0));
    fill_cache(&mut b);
    assert_eq!(
        b.engine.stats().requests_applied,
        ken::limits::CLIENTS_MAX as u64
    );
    // Control: within the idle bound, a newcomer is refused (the cache is full of clients
    // that may still retry).
    let newcomer = ClientId([1; 16]);
    let soon = t(1000);
    b.deliver(soon, &request(newcomer, 1, &Req::Put(1), soon, None, 0))
        .unwrap();
    assert!(matches!(
        replies(&b.step(soon), None).as_slice(),
        [(1, ReplyBody::Refused(_), _)]
    ));
    // Once they have been idle for CLIENT_IDLE_EVICT, the least recently used goes.
    let later = t(1).plus(ken::limits::CLIENT_IDLE_EVICT);
    b.deliver(later, &request(newcomer, 1, &Req::Put(1), later, None, 0))
        .unwrap();
    assert!(matches!(
        replies(&b.step(later), None).as_slice(),
        [(1, ReplyBody::Ok(_), _)]
    ));
    assert_eq!(b.engine.stats().clients_evicted, 1);
    // The evicted client's late retry is Expired, never applied a second time.
    let mut first = [0u8; 16];
    first[15] = 0xee;
    let evicted = ClientId(first);
    let applied = b.engine.stats().requests_applied;
    b.deliver(later, &request(evicted, 1, &Req::Touch, t(1), None, 0))
        .unwrap();
    assert!(matches!(
        replies(&b.step(later), None).as_slice(),
        [(1, ReplyBody::Expired { .. }, _)]
    ));
    assert_eq!(
        b.engine.stats().requests_applied,
        applied,
        "not applied again"
    );
    // A forgotten client's next fresh request is new, whatever its number.
    b.deliver(
        later,
        &request(evicted, 2, &Req::Put(10_001), later, None, 0),
    )
    .unwrap();
    assert!(matches!(
        replies(&b.step(later), None).as_slice(),
        [(2, ReplyBody::Ok(_), _)]
    ));
}

#[test]
fn random_ids_without_credentials_never_enter_a_keyed_cache() {
    let cluster = key(1);
    let (_, mut b) = pair(true, vec![]);
    b.engine.start(t(0));
    b.step(t(0));
    fill_cache(&mut b);
    assert_eq!(b.engine.stats().requests_applied, 0);
    assert_eq!(
        b.engine.stats().requests_unauthorized,
        ken::limits::CLIENTS_MAX as u64
    );
    let credential = cluster.credential([3; 16]);
    b.deliver(
        t(2),
        &request(
            ClientId([3; 16]),
            1,
            &Req::Put(1),
            t(2),
            Some(&credential),
            0,
        ),
    )
    .unwrap();
    assert!(matches!(
        replies(&b.step(t(2)), Some(&credential)).as_slice(),
        [(1, ReplyBody::Ok(_), _)]
    ));
}

// ---- numbers the store cannot hold ----

#[test]
fn a_request_number_beyond_i64_is_dropped_and_counted() {
    for keyed in [false, true] {
        let cluster = key(1);
        let (_, mut b) = pair(keyed, vec![]);
        b.engine.start(t(0));
        b.step(t(0));
        let credential = keyed.then(|| cluster.credential([4; 16]));
        let client = ClientId([4; 16]);
        for n in [1u64 << 63, u64::MAX] {
            b.deliver(
                t(1),
                &request(client, n, &Req::Put(1), t(1), credential.as_ref(), 0),
            )
            .unwrap();
            assert!(b.step(t(1)).is_empty(), "nothing committed, nothing sent");
        }
        assert_eq!(b.engine.stats().out_of_range_frames, 2);
        // Peer frames too: a sequence number or an acknowledgement beyond i64.
        for (seq, ack) in [(1u64 << 63, 0), (1, u64::MAX)] {
            let frame = Frame {
                kind: FrameKind::Data,
                auth: if keyed { Auth::Cluster } else { Auth::None },
                from: pid("a"),
                from_incarnation: Incarnation(INC_A),
                to: pid("b"),
                to_incarnation: Incarnation(0),
                seq: Seq(seq),
                ack: Seq(ack),
                acked: Seq(0),
                payload: ken::store::wrap_payload(1, &ken::store::codec::encode(&5u64)),
            };
            let bytes = match &b.keys {
                Some(k) => k.seal(&frame).unwrap(),
                None => frame.encode().unwrap(),
            };
            b.deliver(t(1), &bytes).unwrap();
            assert!(b.step(t(1)).is_empty());
        }
        assert_eq!(b.engine.stats().out_of_range_frames, 4);
        assert!(b.got().is_empty());
        // The largest number the store holds is applied.
        let max = ken::limits::WIRE_NUMBER_MAX;
        b.deliver(
            t(2),
            &request(client, max, &Req::Put(2), t(2), credential.as_ref(), 0),
        )
        .unwrap();
        assert!(matches!(
            replies(&b.step(t(2)), credential.as_ref()).as_slice(),
            [(n, ReplyBody::Ok(_), _)] if *n == max
        ));
    }
}

#[test]
fn control_the_store_cannot_hold_a_number_beyond_i64() {
    // What the engine's check prevents: committing such a number panics the store.
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = ken::store::Store::open(&dir.path().join("s.db"), "b").unwrap();
    let batch = ken::store::Batch {
        now_ms: 1,
        clients: vec![ken::store::ClientChange::Put(ken::store::ClientRow {
            client: [4; 16],
            request_no: 1 << 63,
            reply: vec![],
            updated_ms: 1,
        })],
        ..Default::default()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.commit(&batch)));
    assert!(result.is_err(), "the store panics on 2^63");
}

// ---- two keys, rotation ----

#[test]
fn processes_with_different_keys_never_exchange_a_message() {
    let mut a = Host::new(
        "a",
        INC_A,
        Node {
            to_b: vec![1, 2, 3],
            group: false,
        },
        Some(ring(&key(1), &[])),
    );
    let mut b = Host::new(
        "b",
        INC_B,
        Node {
            to_b: vec![],
            group: false,
        },
        Some(ring(&key(2), &[])),
    );
    a.engine.start(t(0));
    b.engine.start(t(0));
    exchange(&mut a, &mut b, 0, 300, false);
    assert_eq!(b.got(), vec![]);
    assert_eq!(a.outbox_to("b"), 3);
    assert!(
        b.dropped.get("UnknownKey").copied().unwrap_or(0) >= 3,
        "{:?}",
        b.dropped
    );
    assert_eq!(b.engine.stats().frames_in, 0);
    // Control: the same key, and everything is delivered.
    let (mut a, mut b) = pair(true, vec![1, 2, 3]);
    a.engine.start(t(0));
    b.engine.start(t(0));
    exchange(&mut a, &mut b, 0, 50, false);
    assert_eq!(b.got().len(), 3);
}

#[test]
fn key_rotation_without_downtime() {
    let (old, new) = (key(1), key(2));
    // A FUSE group keeps heartbeats flowing both ways through every step.
    let node = |to_b: Vec<u64>, group| Node { to_b, group };
    let mut a = Host::new(
        "a",
        INC_A,
        node((1..=100).collect(), true),
        Some(ring(&old, &[])),
    );
    let mut b = Host::new("b", INC_B, node(vec![], false), Some(ring(&old, &[])));
    a.engine.start(t(0));
    b.engine.start(t(0));
    let mut ms = exchange(&mut a, &mut b, 0, 50, false);
    // The procedure of SECURITY.md, one process at a time: 1. accept the new key...
    a.keys = Some(ring(&old, std::slice::from_ref(&new)));
    ms = exchange(&mut a, &mut b, ms, 50, false);
    b.keys = Some(ring(&old, std::slice::from_ref(&new)));
    ms = exchange(&mut a, &mut b, ms, 50, false);
    // 2. ...send with it, still accepting the old one...
    a.keys = Some(ring(&new, std::slice::from_ref(&old)));
    ms = exchange(&mut a, &mut b, ms, 50, false);
    b.keys = Some(ring(&new, std::slice::from_ref(&old)));
    ms = exchange(&mut a, &mut b, ms, 50, false);
    // 3. ...and drop the old one.
    a.keys = Some(ring(&new, &[]));
    b.keys = Some(ring(&new, &[]));
    exchange(&mut a, &mut b, ms, 300, false);
    assert!(
        a.dropped.is_empty() && b.dropped.is_empty(),
        "no frame was ever refused"
    );
    assert_eq!(
        a.engine.groups()[0].state,
        GroupState::Live,
        "FUSE noticed nothing"
    );
    assert!(b.engine.stats().frames_in > 40, "frames flowed throughout");
    let expected: Vec<(String, u64)> = (1..=100).map(|v| ("a".to_string(), v)).collect();
    assert_eq!(b.got(), expected, "every message once, in order");
    assert_eq!(a.outbox_to("b"), 0);
    // A frame under the old key is refused once it is retired.
    let stale = Frame {
        kind: FrameKind::Ack,
        auth: Auth::Cluster,
        from: pid("a"),
        from_incarnation: Incarnation(INC_A),
        to: pid("b"),
        to_incarnation: Incarnation(INC_B),
        seq: Seq(0),
        ack: Seq(0),
        acked: Seq(0),
        payload: vec![],
    };
    let bytes = ring(&old, &[]).seal(&stale).unwrap();
    assert_eq!(
        b.deliver(t(10_000), &bytes),
        Err(DecodeError::UnknownKey(old.id()))
    );
}

// ---- replayed heartbeats ----

/// `a` and `b` share a FUSE group; then `b` dies, and the attacker replays `b`'s last
/// heartbeat to `a` every 100 ms. Returns the group's state at `a` after 3 x T_fail.
fn replayed_heartbeats(keyed: bool) -> GroupState {
    let keys = || keyed.then(|| ring(&key(1), &[]));
    let mut a = Host::new(
        "a",
        INC_A,
        Node {
            to_b: vec![],
            group: true,
        },
        keys(),
    );
    let mut b = Host::new(
        "b",
        INC_B,
        Node {
            to_b: vec![],
            group: false,
        },
        keys(),
    );
    a.engine.start(t(0));
    b.engine.start(t(0));
    let mut ms = 0;
    let mut last_heartbeat = None;
    for _ in 0..100 {
        let now = t(ms);
        a.engine.tick(now);
        b.engine.tick(now);
        for (_, _, bytes) in a.step(now) {
            let _ = b.deliver(now, &bytes);
        }
        for (_, f, bytes) in b.step(now) {
            if f.kind == FrameKind::Heartbeat {
                last_heartbeat = Some(bytes.clone());
            }
            let _ = a.deliver(now, &bytes);
        }
        ms += 10;
    }
    assert_eq!(a.engine.groups()[0].state, GroupState::Live, "established");
    let replay = last_heartbeat.expect("b heartbeats");
    // b is dead from here on; only the replays reach a.
    let until = ms + 3 * ken::limits::FUSE_T_FAIL.as_millis() as u64;
    while ms < until {
        let now = t(ms);
        a.engine.tick(now);
        a.step(now);
        if ms % 100 == 0 {
            let _ = a.deliver(now, &replay);
            a.step(now);
        }
        ms += 10;
    }
    a.engine.groups()[0].state
}

#[test]
fn replayed_heartbeats_cannot_keep_a_dead_peer_alive_with_a_key() {
    assert_eq!(replayed_heartbeats(true), GroupState::Failed);
}

#[test]
fn control_replayed_heartbeats_keep_a_dead_peer_alive_without_a_key() {
    assert_eq!(replayed_heartbeats(false), GroupState::Live);
}

#[test]
fn with_a_key_live_peers_stay_live_on_fresh_stamps() {
    // The stamp rule must not cost a live pair its group: 3 x T_fail of normal traffic.
    let keys = || Some(ring(&key(1), &[]));
    let mut a = Host::new(
        "a",
        INC_A,
        Node {
            to_b: vec![],
            group: true,
        },
        keys(),
    );
    let mut b = Host::new(
        "b",
        INC_B,
        Node {
            to_b: vec![],
            group: false,
        },
        keys(),
    );
    a.engine.start(t(0));
    b.engine.start(t(0));
    let rounds = 3 * ken::limits::FUSE_T_FAIL.as_millis() as u64 / 10;
    exchange(&mut a, &mut b, 0, rounds, false);
    assert_eq!(a.engine.groups()[0].state, GroupState::Live);
    assert_eq!(b.engine.groups()[0].state, GroupState::Live);
    assert_eq!(a.engine.stats().stale_stamps, 0);
}
