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
        i64::try_from(self.level.div_euclid(MICRO)).unwrap_or(i64::MIN)
    }

    /// Add what `now_us - last` earned, up to capacity. Time never runs backwards here: an
    /// older `now_us` (another replica's clock, a reordered call) refills nothing.
    pub fn refill(&mut self, now_us: u64) {
        if now_us <= self.last_us {
            return;
        }
        let elapsed = i128::from(now_us - self.last_us);
        let cap = i128::from(self.rate.burst) * MICRO;
        // per_minute tokens per minute = per_minute * MICRO micro-tokens per MINUTE_US µs.
        let earned = elapsed * i128::from(self.rate.per_minute) * MICRO / MINUTE_US;
        if self.level < cap {
            self.level = (self.level + earned).min(cap);
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
        let per_us_num = i128::from(self.rate.per_minute) * MICRO; // micro-tokens per MINUTE_US
        // ceil(need * MINUTE_US / per_us_num)
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
