//! Tuning knobs of a process, with defaults from [`crate::limits`].

use std::time::Duration;

use crate::limits;

/// Tuning knobs. `Tuning::default()` is what production uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    pub batch_turns_max: u32,
    pub batch_bytes_max: usize,
    pub window_messages_max: usize,
    pub reorder_buffer_max: u64,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// FUSE heartbeat interval per peer sharing groups.
    pub fuse_heartbeat: Duration,
    /// FUSE silence bound: a peer silent this long fails every group shared with it.
    pub fuse_t_fail: Duration,
    /// FUSE creation timeout: a group not confirmed by every member within this fails.
    pub fuse_create_timeout: Duration,
    /// TEST ONLY. Releases each turn's outputs before its batch commits, breaking output
    /// validity on purpose, so that negative controls can prove the checkers catch it. Set
    /// by the environment variable `KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1` in real processes.
    pub release_before_commit: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            batch_turns_max: limits::BATCH_TURNS_MAX,
            batch_bytes_max: limits::BATCH_BYTES_MAX,
            window_messages_max: limits::WINDOW_MESSAGES_MAX,
            reorder_buffer_max: limits::REORDER_BUFFER_MAX,
            rto_initial: limits::RTO_INITIAL,
            rto_min: limits::RTO_MIN,
            rto_max: limits::RTO_MAX,
            fuse_heartbeat: limits::FUSE_HEARTBEAT,
            fuse_t_fail: limits::FUSE_T_FAIL,
            fuse_create_timeout: limits::FUSE_CREATE_TIMEOUT,
            release_before_commit: false,
        }
    }
}

impl Tuning {
    /// Asserts the relations between the knobs.
    ///
    /// # Panics
    /// If a knob is zero or the relations do not hold (a configuration bug).
    pub fn validate(&self) {
        assert!(self.batch_turns_max > 0, "batch_turns_max must be positive");
        assert!(
            self.batch_bytes_max >= limits::MESSAGE_BYTES_MAX,
            "a batch must fit a message"
        );
        assert!(
            self.window_messages_max > 0,
            "window_messages_max must be positive"
        );
        assert!(
            self.window_messages_max as u64 <= self.reorder_buffer_max,
            "the receiver must be able to buffer a whole window"
        );
        assert!(self.rto_min <= self.rto_initial && self.rto_initial <= self.rto_max);
        assert!(self.rto_min > Duration::ZERO);
        assert!(
            self.fuse_heartbeat > Duration::ZERO && 2 * self.fuse_heartbeat < self.fuse_t_fail,
            "FUSE needs at least two heartbeats per T_fail (ten to mask restarts of 0.9 T_fail)"
        );
    }
}
