//! Crash points: places in the driver where a process can be told to SIGKILL itself, so that
//! torture tests hit the exact instants that matter instead of hoping a random kill lands
//! there.
//!
//! Configured by the environment variable `KEN_CRASH_AT`: a comma-separated list of
//! `POINT[:PROBABILITY]` (probability per pass, default 1), e.g.
//! `KEN_CRASH_AT=before_commit:0.01,mid_release:0.05`. `KEN_CRASH_SEED` seeds the draws
//! (default: random). Points:
//!
//! | point | where |
//! | --- | --- |
//! | `before_commit` | a batch in hand (store thread or, for a small batch, the engine loop), before the transaction |
//! | `after_commit` | the batch durable, before the engine hears of it (outputs not released) |
//! | `mid_release` | between two outputs of a released batch |
//! | `after_release` | a batch's outputs all released, before the next commit (which deletes acknowledged outbox rows) |
//! | `recovery` | after the store is opened and recovered, before the engine starts |
//! | `migrate_step` | after each step of a schema migration, before its one commit |
//! | `migrate_commit` | every step of a schema migration done, just before its one commit |
//!
//! Before dying the process prints `{"event":"crash_point","point":"NAME"}` to stderr so a
//! harness can count the points hit. The kill is `SIGKILL` to itself: no destructor, no
//! flush, no graceful anything.

use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every crash point, by name.
pub const POINTS: [&str; 7] = [
    "before_commit",
    "after_commit",
    "mid_release",
    "after_release",
    "recovery",
    "migrate_step",
    "migrate_commit",
];

/// Why `KEN_CRASH_AT` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad KEN_CRASH_AT entry `{entry}`: {why} (points: before_commit, after_commit, mid_release, after_release, recovery, migrate_step, migrate_commit; syntax POINT[:PROBABILITY],...)")]
pub struct CrashParseError {
    pub entry: String,
    pub why: String,
}

/// The configured crash points of this process.
#[derive(Debug, Default)]
pub struct CrashPoints {
    armed: Vec<(&'static str, f64)>,
    rng: Option<Mutex<ChaCha8Rng>>,
}

impl CrashPoints {
    /// Parses a `KEN_CRASH_AT` value.
    pub fn parse(spec: &str, seed: u64) -> Result<CrashPoints, CrashParseError> {
        let mut armed = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| CrashParseError {
                entry: entry.to_string(),
                why: why.to_string(),
            };
            let (name, p) = match entry.split_once(':') {
                Some((n, p)) => (
                    n,
                    p.parse::<f64>()
                        .map_err(|_| bad("probability is not a number"))?,
                ),
                None => (entry, 1.0),
            };
            if !(0.0..=1.0).contains(&p) {
                return Err(bad("probability must be within 0..=1"));
            }
            let point = POINTS
                .iter()
                .find(|q| **q == name)
                .ok_or_else(|| bad("unknown crash point"))?;
            armed.push((*point, p));
        }
        Ok(CrashPoints {
            rng: (!armed.is_empty()).then(|| Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            armed,
        })
    }

    /// Reads `KEN_CRASH_AT` and `KEN_CRASH_SEED`; none set = no crash points.
    pub fn from_env() -> Result<CrashPoints, CrashParseError> {
        let spec = std::env::var("KEN_CRASH_AT").unwrap_or_default();
        let seed = std::env::var("KEN_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        CrashPoints::parse(&spec, seed)
    }

    /// True if `point` is armed and the draw says die (used by tests; [`CrashPoints::pass`]
    /// acts on it).
    pub fn should_crash(&self, point: &str) -> bool {
        let Some(rng) = &self.rng else {
            return false;
        };
        let Some((_, p)) = self.armed.iter().find(|(n, _)| *n == point) else {
            return false;
        };
        let draw: f64 = rng.lock().unwrap_or_else(|e| e.into_inner()).gen();
        draw < *p
    }

    /// Passes crash point `point`: SIGKILLs this process if it is armed and the draw says so.
    pub fn pass(&self, point: &'static str) {
        if self.should_crash(point) {
            eprintln!("{{\"event\":\"crash_point\",\"point\":\"{point}\"}}");
            kill_self();
        }
    }
}

#[allow(unsafe_code)]
fn kill_self() -> ! {
    // SAFETY: getpid and kill are async-signal-safe libc calls with no memory arguments;
    // sending SIGKILL to ourselves ends the process before kill returns.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; if it was somehow not delivered yet, do not go on.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_probabilities() {
        let c = CrashPoints::parse("before_commit:0.5, mid_release", 1).unwrap();
        assert_eq!(c.armed, vec![("before_commit", 0.5), ("mid_release", 1.0)]);
        assert!(c.should_crash("mid_release"));
        assert!(!c.should_crash("after_commit"));
        let hits = (0..1000)
            .filter(|_| c.should_crash("before_commit"))
            .count();
        assert!((400..600).contains(&hits), "{hits} of 1000 at p=0.5");
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "nowhere",
            "before_commit:2",
            "before_commit:x",
            "after_commit:-0.1",
        ] {
            assert!(CrashPoints::parse(bad, 1).is_err(), "{bad}");
        }
        assert!(CrashPoints::parse("", 1).unwrap().armed.is_empty());
        assert!(!CrashPoints::parse("", 1)
            .unwrap()
            .should_crash("before_commit"));
    }
}
