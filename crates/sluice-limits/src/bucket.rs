//! One token bucket with continuous refill, in integer micro-tokens.

/// Micro-tokens per token: the unit of a bucket's level, fine enough that refill over one
/// microsecond is exact for every realistic rate.
const MICRO: i128 = 1_000_000;
/// Microseconds per minute.
const MINUTE_US: i128 = 60_000_000;

/// A limit: `per_minute` refilled continuously, holding at most `burst` (defaults to
/// `per_minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per minute.
    pub per_minute: u64,
    /// Most tokens the bucket holds.
    pub burst: u64,
}

impl Rate {
    /// `n` per minute, with a burst of `n`.
    pub const fn per_minute(n: u64) -> Self {
        Self {
            per_minute: n,
            burst: n,
        }
    }
}

/// `floor(a * b / c)` for `c > 0`: in 64 bits when the product fits (a 128-bit division is a
/// library call several times slower), exactly the same value either way.
fn mul_div_floor(a: u64, b: u64, c: u64) -> i128 {
    match a.checked_mul(b) {
        Some(p) => i128::from(p / c),
        // Past 128 bits (only absurd rates and idle times) the answer is "more than any
        // bucket holds", which the caller caps.
        None => i128::from(a)
            .checked_mul(i128::from(b))
            .map_or(i128::MAX, |p| p / i128::from(c)),
    }
}

/// A token bucket. Level is in micro-tokens and may be negative (debt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    rate: Rate,
    level: i128,
    /// Time of the last refill (µs from the caller's origin).
    last_us: u64,
}

impl Bucket {
    /// A full bucket at time `now_us`.
    pub fn full(rate: Rate, now_us: u64) -> Self {
        Self {
            rate,
            level: i128::from(rate.burst) * MICRO,
            last_us: now_us,
        }
    }

    /// The limit.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Capacity in tokens.
    pub fn capacity(&self) -> u64 {
        self.rate.burst
    }

    /// Whole tokens available now (negative while in debt).
    pub fn level(&self) -> i64 {
        // Every admission reads this for each bucket's view; a 128-bit division is a library
        // call several times slower than a 64-bit one, and the level nearly always fits.
        match i64::try_from(self.level) {
            Ok(l) => l.div_euclid(1_000_000),
            Err(_) => i64::try_from(self.level.div_euclid(MICRO)).unwrap_or(i64::MIN),
        }
    }

    /// Add what `now_us - last` earned, up to capacity. Time never runs backwards here: an
    /// older `now_us` (another replica's clock, a reordered call) refills nothing.
    pub fn refill(&mut self, now_us: u64) {
        if now_us <= self.last_us {
            return;
        }
        let cap = i128::from(self.rate.burst) * MICRO;
        if self.level < cap {
            // per_minute tokens per minute = per_minute * MICRO micro-tokens per MINUTE_US µs,
            // so `elapsed` µs earn elapsed * per_minute / 60 micro-tokens.
            let earned = mul_div_floor(now_us - self.last_us, self.rate.per_minute, 60);
            self.level = self.level.saturating_add(earned).min(cap);
        }
        self.last_us = now_us;
    }

    /// Microseconds until `amount` tokens are available (0 if they are now). Call after
    /// [`Bucket::refill`]. `u64::MAX` if the bucket never refills.
    pub fn wait_us(&self, amount: u64) -> u64 {
        let need = i128::from(amount) * MICRO - self.level;
        if need <= 0 {
            return 0;
        }
        if self.rate.per_minute == 0 {
            return u64::MAX;
        }
        // ceil(need * MINUTE_US / (per_minute * MICRO)) = ceil(need * 60 / per_minute), in
        // 64 bits whenever it fits (every realistic bucket), else in 128.
        let pm = self.rate.per_minute;
        if let Some(n60) = u64::try_from(need).ok().and_then(|n| n.checked_mul(60)) {
            return n60.div_ceil(pm);
        }
        let per_us_num = i128::from(pm) * MICRO; // micro-tokens per MINUTE_US
        let us = (need * MINUTE_US + per_us_num - 1) / per_us_num;
        u64::try_from(us).unwrap_or(u64::MAX)
    }

    /// Change the limit (a config reload), keeping the level but never above the new capacity.
    pub fn set_rate(&mut self, rate: Rate) {
        self.rate = rate;
        self.level = self.level.min(i128::from(rate.burst) * MICRO);
    }

    /// Lower the level to `tokens` if it is above it (the upstream reported less room than we
    /// thought). Never raises it.
    pub fn lower_to(&mut self, tokens: i64) {
        self.level = self.level.min(i128::from(tokens) * MICRO);
    }

    /// Microseconds until the bucket is full again (the `*-reset` header).
    pub fn full_in_us(&self) -> u64 {
        self.wait_us(self.rate.burst)
    }

    /// The level in micro-tokens and the time of the last refill: the state a shared backend
    /// stores.
    pub fn raw(&self) -> (i128, u64) {
        (self.level, self.last_us)
    }

    /// Debit `amount` tokens (the level may go negative).
    pub fn take(&mut self, amount: u64) {
        self.level -= i128::from(amount) * MICRO;
    }

    /// Credit `amount` tokens back, never above capacity.
    pub fn give(&mut self, amount: u64) {
        let cap = i128::from(self.rate.burst) * MICRO;
        self.level = (self.level + i128::from(amount) * MICRO).min(cap);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    /// The formulas as first written, all in 128 bits: the fast paths must agree exactly.
    fn refill_wide(level: i128, last: u64, now: u64, r: Rate) -> i128 {
        let cap = i128::from(r.burst) * MICRO;
        let earned = i128::from(now - last) * i128::from(r.per_minute) * MICRO / MINUTE_US;
        if level < cap {
            (level + earned).min(cap)
        } else {
            level
        }
    }

    fn wait_wide(level: i128, amount: u64, r: Rate) -> u64 {
        let need = i128::from(amount) * MICRO - level;
        if need <= 0 {
            return 0;
        }
        let per = i128::from(r.per_minute) * MICRO;
        u64::try_from((need * MINUTE_US + per - 1) / per).unwrap_or(u64::MAX)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn fast_paths_equal_the_wide_formulas(
            // Up to 10^12 per minute and 10^13 µs (four months) idle: where the 128-bit
            // formula itself cannot overflow.
            per_minute in prop_oneof![1u64..1_000, 1u64..1_000_000_000_000],
            extra_burst in 0u64..1_000_000,
            level_tokens in -1_000_000_000i64..1_000_000_000,
            level_frac in 0i128..1_000_000,
            elapsed in prop_oneof![0u64..1_000_000, 0u64..10_000_000_000_000],
            amount in 0u64..2_000_000_000,
        ) {
            let r = Rate { per_minute, burst: per_minute.saturating_add(extra_burst) };
            let level = (i128::from(level_tokens) * MICRO + level_frac)
                .min(i128::from(r.burst) * MICRO);
            let mut b = Bucket { rate: r, level, last_us: 5 };
            let now = 5 + elapsed;
            b.refill(now);
            prop_assert_eq!(b.level, refill_wide(level, 5, now, r));
            prop_assert_eq!(b.level(), i64::try_from(b.level.div_euclid(MICRO)).unwrap_or(i64::MIN));
            prop_assert_eq!(b.wait_us(amount), wait_wide(b.level, amount, r));
        }
    }

    #[test]
    fn an_absurd_idle_time_fills_the_bucket_without_overflow() {
        let r = Rate::per_minute(u64::MAX);
        let mut b = Bucket::full(r, 0);
        b.take(u64::MAX);
        b.take(u64::MAX);
        b.refill(u64::MAX);
        assert_eq!(b.level, i128::from(u64::MAX) * MICRO);
    }
}
