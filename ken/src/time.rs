//! Time as the engine sees it: handed in, never read.
//!
//! [`Time`] is microseconds since the Unix epoch (wall clock, so durable timers survive a
//! restart). The driver reads the clock; the simulation makes it up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    /// The wall clock now. Only the driver and tools call this, never the engine.
    pub fn now_wall() -> Time {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Time(since.as_micros() as u64)
    }

    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }

    pub fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.as_micros() as u64))
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}
