//! Peers that went quiet, seen from the driver: a warning, and host names resolved again.
//!
//! The engine retransmits forever and never gives up on a peer; that is right for the
//! protocol but silent for an operator: a wrong address, a peer that is down or one with
//! another cluster key all look the same from inside. [`PeerWatch`] watches each peer's
//! counters (outbox depth and cumulative acknowledgement, [`crate::engine::PeerStatus`]) and
//! calls a peer *quiet* when messages wait for it and it has acknowledged none of them for
//! [`crate::limits::PEER_QUIET_CEILINGS`] retransmission ceilings (`Tuning::rto_max`). For
//! a quiet peer it asks the driver to:
//! - warn, naming the peer, its address and how long, at most once per
//!   [`crate::limits::PEER_QUIET_WARN_INTERVAL`] while it lasts (and say once when it
//!   answers again);
//! - resolve its host name again (if it was given as a name), at most once per quiet period
//!   length, so a peer that came back on a new IP under the same name (a Kubernetes pod) is
//!   reached without restarting anyone. A peer whose name never resolved is retried at the
//!   same pace whether or not messages wait.
//!
//! It is a small state machine of its own: time is handed in, it performs nothing, and the
//! driver does the resolving (off the loop thread) and the logging. It knows nothing of the
//! protocol: acknowledged is acknowledged.

use std::collections::BTreeMap;
use std::time::Duration;

use ken_transport::ProcessId;

use crate::cluster::PeerAddress;
use crate::Time;

/// What the driver should do about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Warn: the peer has acknowledged nothing for `quiet_for` while `waiting` messages wait.
    Warn {
        peer: ProcessId,
        quiet_for: Duration,
        waiting: usize,
    },
    /// The peer acknowledged again after a warning.
    Answers {
        peer: ProcessId,
        quiet_for: Duration,
    },
    /// Resolve the peer's host name again.
    Resolve {
        peer: ProcessId,
        address: PeerAddress,
    },
}

#[derive(Debug)]
struct Watched {
    /// The name to resolve again, if the peer was given by name.
    host: Option<PeerAddress>,
    /// Whether the driver has an address for it.
    resolved: bool,
    acked: u64,
    /// Since when messages have waited with no acknowledgement.
    quiet_since: Option<Time>,
    last_warn: Option<Time>,
    last_resolve: Option<Time>,
}

/// The quiet-peer watch (module docs).
#[derive(Debug)]
pub(crate) struct PeerWatch {
    quiet_after: Duration,
    warn_every: Duration,
    peers: BTreeMap<ProcessId, Watched>,
}

impl PeerWatch {
    /// Watches `peers` (with the name each was given by, if any, and whether it has an
    /// address now). A peer is quiet after `quiet_after`; warnings repeat every `warn_every`.
    pub(crate) fn new(
        quiet_after: Duration,
        warn_every: Duration,
        peers: impl IntoIterator<Item = (ProcessId, Option<PeerAddress>, bool)>,
    ) -> PeerWatch {
        let peers = peers
            .into_iter()
            .map(|(id, host, resolved)| {
                (
                    id,
                    Watched {
                        host,
                        resolved,
                        acked: 0,
                        quiet_since: None,
                        last_warn: None,
                        last_resolve: None,
                    },
                )
            })
            .collect();
        PeerWatch {
            quiet_after,
            warn_every,
            peers,
        }
    }

    /// The peer's name resolved (`Some`) or failed to (`None`) at `now`.
    pub(crate) fn resolved(&mut self, peer: &ProcessId, ok: bool) {
        if let Some(w) = self.peers.get_mut(peer) {
            w.resolved |= ok;
        }
    }

    /// Looks at each peer's `(id, acked, outbox)` at `now`; returns what to do.
    pub(crate) fn check(
        &mut self,
        now: Time,
        status: impl IntoIterator<Item = (ProcessId, u64, usize)>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for (id, acked, outbox) in status {
            let Some(w) = self.peers.get_mut(&id) else {
                continue;
            };
            let progressed = acked > w.acked;
            w.acked = w.acked.max(acked);
            if outbox == 0 || progressed {
                if let (Some(since), Some(_)) = (w.quiet_since, w.last_warn) {
                    actions.push(Action::Answers {
                        peer: id.clone(),
                        quiet_for: now.since(since),
                    });
                }
                w.last_warn = None;
                w.quiet_since = (outbox > 0).then_some(now);
            } else if w.quiet_since.is_none() {
                w.quiet_since = Some(now);
            }
            let quiet_for = w.quiet_since.map_or(Duration::ZERO, |s| now.since(s));
            let quiet = quiet_for >= self.quiet_after;
            if quiet && w.last_warn.is_none_or(|t| now.since(t) >= self.warn_every) {
                w.last_warn = Some(now);
                actions.push(Action::Warn {
                    peer: id.clone(),
                    quiet_for,
                    waiting: outbox,
                });
            }
            if let Some(host) = &w.host {
                let due = w
                    .last_resolve
                    .is_none_or(|t| now.since(t) >= self.quiet_after);
                if (quiet || !w.resolved) && due {
                    w.last_resolve = Some(now);
                    actions.push(Action::Resolve {
                        peer: id.clone(),
                        address: host.clone(),
                    });
                }
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ProcessId {
        ProcessId::new(s).unwrap()
    }

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    fn watch() -> PeerWatch {
        PeerWatch::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            [
                (id("named"), Some("b.example:7002".parse().unwrap()), true),
                (id("ip"), None, true),
            ],
        )
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Warn { peer, .. } => format!("warn {peer}"),
                Action::Answers { peer, .. } => format!("answers {peer}"),
                Action::Resolve { peer, .. } => format!("resolve {peer}"),
            })
            .collect()
    }

    #[test]
    fn a_peer_with_nothing_waiting_is_never_quiet() {
        let mut w = watch();
        for s in 0..100 {
            let a = w.check(at(s * 1000), [(id("named"), 0, 0), (id("ip"), 0, 0)]);
            assert!(a.is_empty(), "{a:?}");
        }
    }

    #[test]
    fn a_quiet_peer_is_warned_once_per_interval_and_resolved_again() {
        let mut w = watch();
        let status = |acked| [(id("named"), acked, 3usize), (id("ip"), acked, 3usize)];
        assert!(w.check(at(0), status(0)).is_empty());
        assert!(w.check(at(4_999), status(0)).is_empty());
        let a = w.check(at(5_000), status(0));
        assert_eq!(kinds(&a), ["warn named", "resolve named", "warn ip"]);
        assert!(
            matches!(&a[0], Action::Warn { quiet_for, waiting: 3, .. } if *quiet_for == Duration::from_secs(5))
        );
        // Re-resolved every quiet period, warned again only after the warning interval.
        assert!(w.check(at(9_999), status(0)).is_empty());
        assert_eq!(kinds(&w.check(at(10_000), status(0))), ["resolve named"]);
        let mut warns = 0;
        for s in 11..=65 {
            warns += kinds(&w.check(at(s * 1000), status(0)))
                .iter()
                .filter(|k| k.starts_with("warn"))
                .count();
        }
        assert_eq!(warns, 2, "one more warning per peer at 65 s");
        // An acknowledgement ends it, said once; then it is quiet again only after 5 s.
        let a = w.check(at(66_000), status(1));
        assert_eq!(kinds(&a), ["answers named", "answers ip"]);
        assert!(
            matches!(&a[0], Action::Answers { quiet_for, .. } if *quiet_for == Duration::from_secs(66))
        );
        assert!(w.check(at(70_999), status(1)).is_empty());
        assert_eq!(
            kinds(&w.check(at(71_000), status(1))),
            ["warn named", "resolve named", "warn ip"]
        );
    }

    #[test]
    fn progress_restarts_the_clock() {
        let mut w = watch();
        for s in 0..20u64 {
            // One acknowledgement every 4 s: never quiet for 5.
            let acked = s / 4;
            let a = w.check(at(s * 1000), [(id("named"), acked, 10)]);
            assert!(a.is_empty(), "at {s}s: {a:?}");
        }
    }

    #[test]
    fn an_unresolved_name_is_retried_even_with_nothing_waiting() {
        let mut w = PeerWatch::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
            [(id("later"), Some("later.example:1".parse().unwrap()), false)],
        );
        assert_eq!(
            kinds(&w.check(at(0), [(id("later"), 0, 0)])),
            ["resolve later"]
        );
        assert!(w.check(at(4_000), [(id("later"), 0, 0)]).is_empty());
        assert_eq!(
            kinds(&w.check(at(5_000), [(id("later"), 0, 0)])),
            ["resolve later"]
        );
        w.resolved(&id("later"), true);
        assert!(w.check(at(10_000), [(id("later"), 0, 0)]).is_empty());
    }
}
