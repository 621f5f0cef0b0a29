//! Time as a dependency. Nothing below the binary reads the wall clock directly; it is handed a
//! [`Clock`], so tests can control time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (wall clock, for ledger timestamps).
    fn unix_ms(&self) -> i64;
    /// A monotonic instant (for latencies and refill maths).
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}
