//! The demo's kv clients: threads that send `incr`s and `put`s to the kv service through
//! [`ken::BlockingClient`] (the blocking face of [`ken::Client`]) typed with the app's own
//! request and reply ([`ken_apps::kv::KvClient`]), retrying a timed-out request with the same
//! number until it is answered, and recording what was acknowledged. With a cluster key each
//! client holds a credential issued from it ([`ClusterKey::new_credential`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ken::{ClientError, ClientId, ClientOptions, ClusterKey};
use ken_apps::kv::{self, KvClient, Reply, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The counter keys the demo increments.
pub const COUNTERS: usize = 3;

pub fn counter_key(i: usize) -> String {
    format!("demo-counter-{i}")
}

/// Counters shared by the client threads and the progress display.
#[derive(Debug, Default)]
pub struct Live {
    pub answered: AtomicU64,
    pub retried: AtomicU64,
    /// Stop sending new requests.
    pub stop: AtomicBool,
}

/// What one client thread saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub requests: u64,
    pub answered: u64,
    /// Requests answered only after a timeout and a retry with the same number.
    pub answered_after_retry: u64,
    /// Requests never answered (given up): may or may not have been applied.
    pub unanswered: u64,
    pub acked_puts: Vec<(String, String)>,
    /// counter -> sum of acknowledged increments.
    pub acked_incr: BTreeMap<String, i64>,
    /// Acknowledged increments.
    pub incrs_acked: u64,
    /// Requests answered with something else than expected, and typed errors.
    pub problems: Vec<String>,
}

/// One call, retried with the same number after each timeout, for at most `give_up`.
pub fn call(
    client: &mut KvClient,
    server: SocketAddr,
    request: &Request,
    give_up: Duration,
) -> (Result<Reply, ClientError>, bool) {
    let started = Instant::now();
    let mut result = client.call(server, request);
    let mut retried = false;
    while matches!(result, Err(ClientError::Timeout { .. })) && started.elapsed() < give_up {
        retried = true;
        result = client.retry_last(server);
    }
    (result, retried)
}

/// Options of the demo's clients: a call gives up (and is retried with the same number)
/// after 300 ms, shorter than a kill and restart.
pub fn options() -> ClientOptions {
    ClientOptions {
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        deadline: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// Sends requests until `live.stop`, one at a time, then returns what it saw.
pub fn client_thread(
    index: usize,
    seed: u64,
    server: SocketAddr,
    key: Option<&ClusterKey>,
    live: &Live,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = match new_client(key) {
        Ok(c) => c,
        Err(e) => {
            log.problems.push(format!("client {index}: {e}"));
            return log;
        }
    };
    let mut n = 0u64;
    while !live.stop.load(Ordering::Relaxed) {
        n += 1;
        let request = if rng.gen_bool(0.5) {
            Request::Incr {
                key: counter_key(rng.gen_range(0..COUNTERS)),
                by: rng.gen_range(1..=5),
            }
        } else {
            Request::Put {
                key: format!("demo-c{index}-{n:06}"),
                value: rng.gen::<u32>().to_string(),
            }
        };
        log.requests += 1;
        let (reply, retried) = call(&mut client, server, &request, Duration::from_secs(20));
        let reply = match reply {
            Ok(r) => r,
            Err(ClientError::Timeout { .. }) => {
                log.unanswered += 1;
                log.problems
                    .push(format!("client {index}: {request:?} never answered"));
                continue;
            }
            Err(e) => {
                log.problems
                    .push(format!("client {index}: {request:?}: {e}"));
                continue;
            }
        };
        log.answered += 1;
        live.answered.fetch_add(1, Ordering::Relaxed);
        if retried {
            log.answered_after_retry += 1;
            live.retried.fetch_add(1, Ordering::Relaxed);
        }
        match (request, reply) {
            (Request::Incr { key, by }, Reply::Incr(_)) => {
                *log.acked_incr.entry(key).or_default() += by;
                log.incrs_acked += 1;
            }
            (Request::Put { key, value }, Reply::Put { previous: None }) => {
                log.acked_puts.push((key, value));
            }
            (request, reply) => log
                .problems
                .push(format!("client {index}: {request:?} answered {reply:?}")),
        }
    }
    log
}

/// Checks every acknowledged put in the kv store's committed table `kv` (read-only, while
/// the process runs). One line per problem.
pub fn check_puts(store: &std::path::Path, puts: &[(String, String)]) -> Vec<String> {
    let reader = match ken_store::Reader::open(store) {
        Ok(r) => r,
        Err(e) => return vec![format!("open {}: {e}", store.display())],
    };
    let mut problems = Vec::new();
    for (key, value) in puts {
        let found = reader
            .table_get(kv::KV_TABLE, key.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|v| {
                v.map(|b| ken_store::codec::decode::<String>(&b).map_err(|e| e.to_string()))
                    .transpose()
            });
        match found {
            Ok(Some(v)) if v == *value => {}
            other => problems.push(format!(
                "acknowledged put {key}={value} is not in the store: {other:?}"
            )),
        }
    }
    problems
}

/// A fresh client: with a credential issued from the cluster key if there is one (a keyed
/// server answers nothing else), anonymous otherwise.
fn new_client(key: Option<&ClusterKey>) -> Result<KvClient, ClientError> {
    match key {
        Some(k) => KvClient::with_credential(k.new_credential(), 1, options()),
        None => KvClient::with_id(ClientId::random(), 1, options()),
    }
}

/// Reads counter `key` (absent = 0), as a fresh client of the cluster keyed `cluster_key`.
pub fn read_counter(
    server: SocketAddr,
    key: &str,
    cluster_key: Option<&ClusterKey>,
) -> Result<i64, String> {
    let mut client = new_client(cluster_key).map_err(|e| e.to_string())?;
    let request = Request::Get { key: key.into() };
    match call(&mut client, server, &request, Duration::from_secs(10)).0 {
        Ok(Reply::Value(None)) => Ok(0),
        Ok(Reply::Value(Some(v))) => v.parse().map_err(|_| format!("{key} holds {v:?}")),
        other => Err(format!("get {key}: {other:?}")),
    }
}
