//! Tuning knobs of a process, with defaults from [`crate::limits`].

use std::time::Duration;

use crate::limits;

/// Tuning knobs. `Tuning::default()` is what production uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Turns per commit batch (default [`limits::BATCH_TURNS_MAX`]).
    pub batch_turns_max: u32,
    /// Bytes per commit batch (default [`limits::BATCH_BYTES_MAX`]).
    pub batch_bytes_max: usize,
    /// Messages in flight per peer (default [`limits::WINDOW_MESSAGES_MAX`]).
    pub window_messages_max: usize,
    /// Out-of-order arrivals held per peer (default [`limits::REORDER_BUFFER_MAX`]).
    pub reorder_buffer_max: u64,
    /// Retransmission timeout before the first round-trip sample (default
    /// [`limits::RTO_INITIAL`]).
    pub rto_initial: Duration,
    /// Smallest retransmission timeout (default [`limits::RTO_MIN`]).
    pub rto_min: Duration,
    /// The retransmission ceiling: backoff stops growing here, and unacknowledged messages
    /// are retransmitted at this interval forever (default [`limits::RTO_MAX`]).
    pub rto_max: Duration,
    /// FUSE heartbeat interval per peer sharing groups (default [`limits::FUSE_HEARTBEAT`]).
    pub fuse_heartbeat: Duration,
    /// FUSE silence bound `T_fail`: a peer silent this long (plus two heartbeats) fails
    /// every group shared with it (default [`limits::FUSE_T_FAIL`]).
    pub fuse_t_fail: Duration,
    /// FUSE creation timeout: a group not confirmed by every member within this fails
    /// (default [`limits::FUSE_CREATE_TIMEOUT`]).
    pub fuse_create_timeout: Duration,
    /// Admit a peer that comes back as a new incarnation (its store was replaced) at once,
    /// without an operator's `ken admit` (default false). Either way the FUSE groups shared
    /// with the old incarnation fail when the new one is first heard. See
    /// the [`crate::engine`] module docs, "Replaced peers".
    pub admit_replaced_peers: bool,
    /// Tasks ([`crate::Turn::start_task`]) running at once; the rest wait (default
    /// [`limits::TASKS_RUNNING_MAX`]).
    pub task_running_max: usize,
    /// Backoff before a failed task's second attempt, doubled per failure up to
    /// `task_backoff_max` (default [`limits::TASK_BACKOFF_INITIAL`]).
    pub task_backoff_initial: Duration,
    /// Ceiling of a failed task's backoff (default [`limits::TASK_BACKOFF_MAX`]).
    pub task_backoff_max: Duration,
    /// TEST ONLY, and only in builds with the cargo feature `unsafe-release-before-commit`
    /// (off by default; only the negative controls turn it on): releases each turn's outputs
    /// before its batch commits, breaking output validity on purpose, so that negative
    /// controls can prove the checkers catch it. In such builds the environment variable
    /// `KEN_UNSAFE_RELEASE_BEFORE_COMMIT=1` sets it in real processes. A build without the
    /// feature has neither the field nor the variable: nothing can switch it into this mode.
    #[cfg(feature = "unsafe-release-before-commit")]
    pub release_before_commit: bool,
    /// TEST ONLY, same feature: a process with a standby releases each batch's outputs once
    /// its local commit is done, without waiting for the standby's acknowledgement, so that
    /// negative controls can show what a promoted standby then lacks. In such builds
    /// `KEN_UNSAFE_RELEASE_BEFORE_STANDBY=1` sets it in real processes.
    #[cfg(feature = "unsafe-release-before-commit")]
    pub release_before_standby: bool,
    /// TEST ONLY, and only in builds with the cargo feature `unsafe-drop-held` (off by
    /// default): a message of a newer schema version is consumed, acknowledged and dropped
    /// instead of held, as before issue 14, so that negative controls can show the loss. In
    /// such builds `KEN_UNSAFE_DROP_HELD=1` sets it in real processes.
    #[cfg(feature = "unsafe-drop-held")]
    pub drop_held_messages: bool,
}

/// Why a [`Tuning`] was refused. Nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TuningError {
    /// An environment variable that overrides a knob is not a positive whole number of
    /// milliseconds.
    #[error("{name}={value:?}: expected a positive number of milliseconds")]
    BadEnv { name: &'static str, value: String },
    /// A knob is zero, or two knobs do not relate as they must; the text says which.
    #[error("{0}")]
    Relation(&'static str),
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
            admit_replaced_peers: false,
            task_running_max: limits::TASKS_RUNNING_MAX,
            task_backoff_initial: limits::TASK_BACKOFF_INITIAL,
            task_backoff_max: limits::TASK_BACKOFF_MAX,
            #[cfg(feature = "unsafe-release-before-commit")]
            release_before_commit: false,
            #[cfg(feature = "unsafe-release-before-commit")]
            release_before_standby: false,
            #[cfg(feature = "unsafe-drop-held")]
            drop_held_messages: false,
        }
    }
}

/// Environment variables that override the FUSE knobs of a real process (milliseconds), read
/// by [`crate::run`]: `KEN_FUSE_HEARTBEAT_MS`, `KEN_FUSE_T_FAIL_MS`,
/// `KEN_FUSE_CREATE_TIMEOUT_MS`. Every member of a group must use the same values.
pub const FUSE_ENV: [&str; 3] = [
    "KEN_FUSE_HEARTBEAT_MS",
    "KEN_FUSE_T_FAIL_MS",
    "KEN_FUSE_CREATE_TIMEOUT_MS",
];

impl Tuning {
    /// Applies the `KEN_FUSE_*` overrides (`FUSE_ENV`) that are set.
    ///
    /// # Errors
    /// A variable that is not a positive whole number of milliseconds (named in the message).
    pub fn apply_env(&mut self) -> Result<(), TuningError> {
        for (i, name) in FUSE_ENV.iter().enumerate() {
            let Ok(v) = std::env::var(name) else {
                continue;
            };
            let ms: u64 =
                v.trim()
                    .parse()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| TuningError::BadEnv {
                        name,
                        value: v.clone(),
                    })?;
            let d = Duration::from_millis(ms);
            match i {
                0 => self.fuse_heartbeat = d,
                1 => self.fuse_t_fail = d,
                _ => self.fuse_create_timeout = d,
            }
        }
        Ok(())
    }

    /// Asserts the relations between the knobs.
    ///
    /// # Panics
    /// If a knob is zero or the relations do not hold (a configuration bug).
    pub fn validate(&self) {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
    }

    /// Checks the relations between the knobs.
    ///
    /// # Errors
    /// The first relation that does not hold, in words.
    pub fn check(&self) -> Result<(), TuningError> {
        let rules = [
            (self.batch_turns_max > 0, "batch_turns_max must be positive"),
            (
                self.batch_bytes_max >= limits::MESSAGE_BYTES_MAX,
                "a batch must fit a message",
            ),
            (
                self.window_messages_max > 0,
                "window_messages_max must be positive",
            ),
            (
                self.window_messages_max as u64 <= self.reorder_buffer_max,
                "the receiver must be able to buffer a whole window",
            ),
            (
                self.rto_min <= self.rto_initial && self.rto_initial <= self.rto_max,
                "rto_min <= rto_initial <= rto_max",
            ),
            (self.rto_min > Duration::ZERO, "rto_min must be positive"),
            (
                self.task_running_max > 0,
                "task_running_max must be positive",
            ),
            (
                self.task_backoff_initial > Duration::ZERO
                    && self.task_backoff_initial <= self.task_backoff_max,
                "0 < task_backoff_initial <= task_backoff_max",
            ),
            (
                self.fuse_heartbeat > Duration::ZERO && 2 * self.fuse_heartbeat < self.fuse_t_fail,
                "FUSE needs at least two heartbeats per T_fail (ten to mask restarts of 0.9 T_fail): \
                 lower the heartbeat interval or raise T_fail",
            ),
            (
                self.fuse_create_timeout > Duration::ZERO,
                "the FUSE creation timeout must be positive",
            ),
        ];
        match rules.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(TuningError::Relation(why)),
            None => Ok(()),
        }
    }

    /// True if this build has the test-only release-before-commit switch (the cargo feature
    /// `unsafe-release-before-commit`). False in every build a user deploys.
    pub const RELEASE_BEFORE_COMMIT_COMPILED: bool = cfg!(feature = "unsafe-release-before-commit");

    /// True if this build has the test-only drop-held switch (the cargo feature
    /// `unsafe-drop-held`). False in every build a user deploys.
    pub const DROP_HELD_COMPILED: bool = cfg!(feature = "unsafe-drop-held");

    /// True if messages of a newer schema version are dropped instead of held (the test-only
    /// switch is compiled in and on). Always false without the feature.
    pub fn drops_held_messages(&self) -> bool {
        #[cfg(feature = "unsafe-drop-held")]
        {
            self.drop_held_messages
        }
        #[cfg(not(feature = "unsafe-drop-held"))]
        {
            false
        }
    }

    /// True if a batch's outputs leave before its standby acknowledged it (the test-only
    /// switch is compiled in and on). Always false without the feature.
    pub fn releases_before_standby(&self) -> bool {
        #[cfg(feature = "unsafe-release-before-commit")]
        {
            self.release_before_standby
        }
        #[cfg(not(feature = "unsafe-release-before-commit"))]
        {
            false
        }
    }

    /// True if turns' outputs leave before their commit (the test-only switch is compiled in
    /// and on). Always false without the feature.
    pub fn releases_before_commit(&self) -> bool {
        #[cfg(feature = "unsafe-release-before-commit")]
        {
            self.release_before_commit
        }
        #[cfg(not(feature = "unsafe-release-before-commit"))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_and_a_bad_fuse_pair_is_named() {
        assert_eq!(Tuning::default().check(), Ok(()));
        let bad = Tuning {
            fuse_heartbeat: Duration::from_millis(600),
            fuse_t_fail: Duration::from_millis(1000),
            ..Tuning::default()
        };
        let e = bad.check().unwrap_err().to_string();
        assert!(e.contains("two heartbeats per T_fail"), "{e}");
    }
}
