//! When and how long to wait before trying the upstream again: exponential backoff with full
//! jitter, the upstream's own `retry-after-ms` / `retry-after` taking precedence, bounded by an
//! attempt count and a total deadline. Pure decisions; the data plane runs the loop (it alone
//! knows whether a byte has reached the client yet).

use http::{HeaderMap, StatusCode};
use std::time::Duration;

/// The retry knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1: never retry).
    pub max_attempts: u32,
    /// Statuses worth another attempt.
    pub statuses: Vec<u16>,
    /// First backoff ceiling; doubles per attempt.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// No attempt starts later than this after the first one did.
    pub deadline: Duration,
    /// Retry `POST /v1/messages` after a first-byte timeout. Off by default: the request
    /// reached the upstream, which may still complete (and bill) it, so a retry can pay twice.
    pub retry_messages_on_first_byte_timeout: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            statuses: vec![408, 429, 500, 502, 503, 504, 529],
            base: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            deadline: Duration::from_secs(30),
            retry_messages_on_first_byte_timeout: false,
        }
    }
}

impl RetryPolicy {
    /// Whether `status` is worth another attempt.
    pub fn retryable(&self, status: StatusCode) -> bool {
        self.statuses.contains(&status.as_u16())
    }

    /// How long to wait before attempt `next` (2 for the first retry), given the upstream's
    /// reply headers, or `None` when no further attempt should be made: attempts exhausted, or
    /// the wait would end past the deadline (`elapsed` since the first attempt started).
    pub fn wait_before(
        &self,
        next: u32,
        upstream: Option<&HeaderMap>,
        elapsed: Duration,
        random: u64,
    ) -> Option<Duration> {
        if next > self.max_attempts {
            return None;
        }
        let wait = match upstream.and_then(retry_after) {
            // The upstream knows when it will have room; waiting less only earns another 429.
            Some(d) => d,
            None => {
                let exp = next.saturating_sub(2).min(20);
                let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max_backoff);
                // Full jitter: uniform in [0, ceiling], so a crowd of retries spreads out.
                let us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
                Duration::from_micros(if us == 0 { 0 } else { random % (us + 1) })
            }
        };
        (elapsed + wait <= self.deadline).then_some(wait)
    }
}

/// The upstream's `retry-after-ms` (milliseconds, may be fractional) or `retry-after`
/// (seconds; an HTTP date is not honoured and falls back to backoff).
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| -> Option<f64> {
        let v: f64 = h.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    if let Some(ms) = num("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    num("retry-after").map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let p = RetryPolicy::default();
        for (next, ceiling_ms) in [(2, 250), (3, 500), (4, 1000), (9, 8000)] {
            let p = RetryPolicy {
                max_attempts: 20,
                deadline: Duration::from_secs(3600),
                ..p.clone()
            };
            let top = p
                .wait_before(next, None, Duration::ZERO, u64::MAX - 1)
                .unwrap();
            assert!(top <= Duration::from_millis(ceiling_ms), "{next}: {top:?}");
            let zero = p.wait_before(next, None, Duration::ZERO, 0).unwrap();
            assert_eq!(zero, Duration::ZERO);
        }
    }

    #[test]
    fn the_upstreams_retry_after_wins_and_the_deadline_and_attempts_bound_it() {
        let p = RetryPolicy::default();
        let ms = headers(&[("retry-after-ms", "1500.5"), ("retry-after", "9")]);
        assert_eq!(
            p.wait_before(2, Some(&ms), Duration::ZERO, 0),
            Some(Duration::from_micros(1_500_500))
        );
        let secs = headers(&[("retry-after", "2")]);
        assert_eq!(
            p.wait_before(2, Some(&secs), Duration::ZERO, 0),
            Some(Duration::from_secs(2))
        );
        // Past the deadline: no attempt.
        assert_eq!(
            p.wait_before(2, Some(&secs), Duration::from_secs(29), 0),
            None
        );
        // Past the attempts: no attempt.
        assert_eq!(p.wait_before(4, None, Duration::ZERO, 0), None);
        let date = headers(&[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")]);
        assert!(retry_after(&date).is_none());
    }
}
