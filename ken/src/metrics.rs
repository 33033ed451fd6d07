//! The Prometheus endpoint ([`crate::Config::metrics`], the app binaries' `--metrics ADDR`):
//! the status view's counters (`crate::admin`) as metrics, plus commit-time and batch-size
//! histograms, built on the Prometheus project's `prometheus-client` crate. Every metric is
//! documented in `ken/METRICS.md`.
//!
//! How: the metrics are atomics shared with a small HTTP task (any `GET /metrics` or `GET /`
//! gets the OpenMetrics text; anything else a 404). The engine loop refreshes the gauges and
//! counters from its status report once a second (so a scrape sees values at most about a
//! second old) and observes each commit's time and each batch's turns as they happen.
//! Counters are per life of the process: a restart starts them again from 0, which
//! Prometheus's `rate()` treats as a counter reset.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin::StatusReport;
use crate::engine::EngineStats;

/// Labels of a metric family: (name, value) pairs.
type Labels = Vec<(String, String)>;

/// The longest HTTP request head read from a scraper.
const REQUEST_HEAD_MAX_BYTES: usize = 8192;

/// A scraper that sends nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes served at once; more connections wait in the listen queue.
const CONNECTIONS_MAX: usize = 16;

/// The metrics of one process (cheap clones of shared atomics).
pub(crate) struct Metrics {
    turns: Counter,
    commits: Counter,
    messages_sent: Counter,
    retransmits: Counter,
    peer_retransmits: Family<Labels, Counter>,
    peer_outbox: Family<Labels, Gauge>,
    peer_oldest_unacked: Family<Labels, Gauge<f64, AtomicU64>>,
    frames_dropped: Family<Labels, Counter>,
    client_requests: Family<Labels, Counter>,
    clients_evicted: Counter,
    reply_cache_clients: Gauge,
    fuse_groups: Family<Labels, Gauge>,
    fuse_notifications: Counter,
    held_inputs: Family<Labels, Gauge>,
    dead_letters: Gauge,
    uptime: Gauge<f64, AtomicU64>,
    recovery: Gauge<f64, AtomicU64>,
    commit_seconds: Histogram,
    batch_turns: Histogram,
}

/// Raises a per-life counter to `value` (counters only grow; a lower value is ignored).
fn set_counter(counter: &Counter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

impl Metrics {
    /// Registers every metric; the registry goes to the HTTP task.
    fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            turns: Counter::default(),
            commits: Counter::default(),
            messages_sent: Counter::default(),
            retransmits: Counter::default(),
            peer_retransmits: Family::default(),
            peer_outbox: Family::default(),
            peer_oldest_unacked: Family::default(),
            frames_dropped: Family::default(),
            client_requests: Family::default(),
            clients_evicted: Counter::default(),
            reply_cache_clients: Gauge::default(),
            fuse_groups: Family::default(),
            fuse_notifications: Counter::default(),
            held_inputs: Family::default(),
            dead_letters: Gauge::default(),
            uptime: Gauge::default(),
            recovery: Gauge::default(),
            // 20 us .. about 0.67 s.
            commit_seconds: Histogram::new(exponential_buckets(20e-6, 2.0, 16)),
            // 1 .. 4096 turns.
            batch_turns: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        };
        let r = registry;
        r.register("ken_turns", "Turns run (per life)", m.turns.clone());
        r.register(
            "ken_commits",
            "Batches committed (per life)",
            m.commits.clone(),
        );
        r.register(
            "ken_messages_sent",
            "Messages to peers sent by turns (per life)",
            m.messages_sent.clone(),
        );
        r.register(
            "ken_retransmits",
            "Data frames retransmitted (per life)",
            m.retransmits.clone(),
        );
        r.register(
            "ken_peer_retransmits",
            "Data frames retransmitted to each peer (per life)",
            m.peer_retransmits.clone(),
        );
        r.register(
            "ken_peer_outbox_messages",
            "Messages to each peer not yet acknowledged",
            m.peer_outbox.clone(),
        );
        r.register(
            "ken_peer_oldest_unacked_seconds",
            "Age of the oldest unacknowledged message to each peer since its first transmission in this life (0: none)",
            m.peer_oldest_unacked.clone(),
        );
        r.register(
            "ken_frames_dropped",
            "Frames dropped, by reason (per life)",
            m.frames_dropped.clone(),
        );
        r.register(
            "ken_client_requests",
            "Client requests, by outcome (per life)",
            m.client_requests.clone(),
        );
        r.register(
            "ken_clients_evicted",
            "Clients evicted from the reply cache (per life)",
            m.clients_evicted.clone(),
        );
        r.register(
            "ken_reply_cache_clients",
            "Clients in the reply cache",
            m.reply_cache_clients.clone(),
        );
        r.register(
            "ken_fuse_groups",
            "FUSE groups by state",
            m.fuse_groups.clone(),
        );
        r.register(
            "ken_fuse_notifications",
            "FUSE failure notifications run (per life)",
            m.fuse_notifications.clone(),
        );
        r.register(
            "ken_held_inputs",
            "Input sources held, by reason (newer_version, poison)",
            m.held_inputs.clone(),
        );
        r.register(
            "ken_dead_letters",
            "Dead letters kept in the store (counted up to 1000)",
            m.dead_letters.clone(),
        );
        r.register(
            "ken_uptime_seconds",
            "Seconds since the process started",
            m.uptime.clone(),
        );
        r.register(
            "ken_recovery_seconds",
            "Time from start to ready: store opened, recovered and migrated",
            m.recovery.clone(),
        );
        r.register(
            "ken_commit_seconds",
            "Time of each commit: the SQLite transaction with its fsync",
            m.commit_seconds.clone(),
        );
        r.register(
            "ken_batch_turns",
            "Turns per committed batch (group commit)",
            m.batch_turns.clone(),
        );
        m
    }

    /// A commit took `took`.
    pub(crate) fn commit_took(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// A batch of `turns` turns was handed to the store.
    pub(crate) fn batch(&self, turns: u64) {
        self.batch_turns.observe(turns as f64);
    }

    /// The process became ready after `took`.
    pub(crate) fn recovered(&self, took: Duration) {
        self.recovery.set(took.as_secs_f64());
    }

    /// Refreshes the gauges and counters from a status report and the engine's counters.
    pub(crate) fn refresh(&self, report: &StatusReport, stats: &EngineStats) {
        set_counter(&self.turns, report.turns);
        set_counter(&self.commits, report.commits);
        set_counter(&self.messages_sent, stats.messages_sent);
        set_counter(&self.retransmits, report.retransmits);
        for p in &report.peers {
            let l = label("peer", &p.id);
            set_counter(&self.peer_retransmits.get_or_create(&l), p.retransmits);
            self.peer_outbox.get_or_create(&l).set(p.outbox as i64);
            self.peer_oldest_unacked
                .get_or_create(&l)
                .set(p.oldest_unacked_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        for (reason, n) in &report.frames_dropped {
            set_counter(
                &self.frames_dropped.get_or_create(&label("reason", reason)),
                *n,
            );
        }
        for (outcome, n) in [
            ("applied", stats.requests_applied),
            ("replayed", stats.requests_replayed),
            ("too_old", stats.requests_too_old),
            ("refused", stats.requests_refused),
            ("undecodable", stats.requests_undecodable),
            ("unauthorized", stats.requests_unauthorized),
            ("expired", stats.requests_expired),
        ] {
            set_counter(
                &self
                    .client_requests
                    .get_or_create(&label("outcome", outcome)),
                n,
            );
        }
        set_counter(&self.clients_evicted, stats.clients_evicted);
        self.reply_cache_clients.set(report.clients_cached as i64);
        for state in ["creating", "joined", "live", "failed"] {
            let n = report.fuse_groups.get(state).copied().unwrap_or(0);
            self.fuse_groups
                .get_or_create(&label("state", state))
                .set(n as i64);
        }
        set_counter(&self.fuse_notifications, stats.fuse_notifications);
        self.held_inputs
            .get_or_create(&label("reason", "newer_version"))
            .set(report.held as i64);
        self.held_inputs
            .get_or_create(&label("reason", "poison"))
            .set(report.poisoned as i64);
        self.dead_letters.set(report.dead_letters as i64);
        self.uptime.set(report.uptime_ms as f64 / 1000.0);
    }
}

/// Binds `addr` and serves the metrics there from a task of the current tokio runtime.
pub(crate) async fn serve(addr: SocketAddr) -> std::io::Result<(Metrics, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let registry = Arc::new(registry);
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    continue;
                }
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
                drop(permit);
            });
        }
    });
    Ok((metrics, bound))
}

/// Reads one request head and answers it.
async fn answer(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > REQUEST_HEAD_MAX_BYTES {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let response = match (method, path) {
        (Some(b"GET"), Some(b"/metrics" | b"/")) => {
            let mut body = String::new();
            if encode(&mut body, registry).is_err() {
                return Ok(());
            }
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        _ => {
            let body = "the metrics are at GET /metrics\n";
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
