//! Sluice's limiter semantics, independent of any backend or of HTTP.
//!
//! A [`Bucket`] is a token bucket refilled continuously (per-minute limits refill at
//! limit/60 per second, as the upstream's do: no window ever resets). Amounts are kept in
//! micro-tokens as integers, so refill is exact and no float drift accumulates over a long
//! run. A bucket may go below zero when a settlement charges more than was reserved: that debt
//! delays later admissions, which is how a low estimate is paid back honestly.
//!
//! [`admit`] checks every bucket a request involves (a tenant's requests, input and output
//! tokens; later, the organisation pool's too) and either debits all of them or none. Time is
//! passed in as microseconds from any fixed origin; nothing here reads a clock.

pub mod backend;
mod bucket;
pub mod estimate;
pub mod limiter;
pub mod local;
pub mod presets;
pub mod queue;
pub mod redis;

pub use bucket::{Bucket, Rate};

/// A request's cost in each dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Requests (1 per call).
    pub requests: u64,
    /// Input tokens that count toward input-token limits (uncached input plus cache writes).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// The limited dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Input tokens per minute.
    InputTokens,
    /// Output tokens per minute.
    OutputTokens,
}

impl Dimension {
    /// All dimensions, in the order of [`Buckets`]' fields.
    pub const ALL: [Dimension; 3] = [Self::Requests, Self::InputTokens, Self::OutputTokens];

    /// Words for messages (`"input tokens per minute"`).
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Requests => "requests per minute",
            Self::InputTokens => "input tokens per minute",
            Self::OutputTokens => "output tokens per minute",
        }
    }

    fn of(self, d: &Demand) -> u64 {
        match self {
            Self::Requests => d.requests,
            Self::InputTokens => d.input_tokens,
            Self::OutputTokens => d.output_tokens,
        }
    }
}

/// The buckets of one scope (a tenant, or one model class of the organisation pool). A
/// dimension without a limit is `None` and never refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Requests per minute.
    pub requests: Option<Bucket>,
    /// Input tokens per minute.
    pub input_tokens: Option<Bucket>,
    /// Output tokens per minute.
    pub output_tokens: Option<Bucket>,
}

impl Buckets {
    /// The bucket of dimension `d`, if limited, for changing.
    pub fn get_mut(&mut self, d: Dimension) -> Option<&mut Bucket> {
        match d {
            Dimension::Requests => self.requests.as_mut(),
            Dimension::InputTokens => self.input_tokens.as_mut(),
            Dimension::OutputTokens => self.output_tokens.as_mut(),
        }
    }

    /// The bucket of dimension `d`, if limited.
    pub fn get(&self, d: Dimension) -> Option<&Bucket> {
        match d {
            Dimension::Requests => self.requests.as_ref(),
            Dimension::InputTokens => self.input_tokens.as_ref(),
            Dimension::OutputTokens => self.output_tokens.as_ref(),
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not enough room now; there will be in `retry_after_us` (the longest wait over every
    /// bucket that is short).
    #[error("scope {scope} is short of {}; room in {retry_after_us} µs", dimension.describe())]
    Wait {
        /// Index (into the slice given to [`admit`]) of the scope that is shortest.
        scope: usize,
        /// Its dimension that needs the longest wait.
        dimension: Dimension,
        /// Microseconds until every bucket has room.
        retry_after_us: u64,
    },
    /// The demand is larger than a bucket's capacity: waiting can never admit it.
    #[error("scope {scope}: demand exceeds the capacity of its {} bucket", dimension.describe())]
    NeverFits {
        /// Index of the scope.
        scope: usize,
        /// The dimension.
        dimension: Dimension,
    },
}

/// Admit `demand` against every scope at time `now_us`: all buckets are debited, or none is
/// touched. Refills happen either way (they only reflect elapsed time).
pub fn admit(scopes: &mut [&mut Buckets], demand: &Demand, now_us: u64) -> Result<(), Refusal> {
    admit_keeping(scopes, &[], demand, now_us)
}

/// [`admit`], where scope `i` must keep `keep_ppm[i]` millionths of each bucket's capacity
/// free after the debit (room held back for higher priority classes). Missing entries are 0.
pub fn admit_keeping(
    scopes: &mut [&mut Buckets],
    keep_ppm: &[u32],
    demand: &Demand,
    now_us: u64,
) -> Result<(), Refusal> {
    let mut worst: Option<(usize, Dimension, u64)> = None;
    for (i, scope) in scopes.iter_mut().enumerate() {
        let keep = u64::from(keep_ppm.get(i).copied().unwrap_or(0).min(1_000_000));
        for d in Dimension::ALL {
            let Some(b) = scope.get_mut(d) else { continue };
            let floor = b.capacity().saturating_mul(keep) / 1_000_000;
            let amount = d.of(demand).saturating_add(floor);
            b.refill(now_us);
            if amount > b.capacity() {
                return Err(Refusal::NeverFits {
                    scope: i,
                    dimension: d,
                });
            }
            let wait = b.wait_us(amount);
            // A request that takes nothing in this dimension is never held up by its debt.
            let wait = if d.of(demand) == 0 { 0 } else { wait };
            if wait > 0 && worst.is_none_or(|(_, _, w)| wait > w) {
                worst = Some((i, d, wait));
            }
        }
    }
    if let Some((scope, dimension, retry_after_us)) = worst {
        return Err(Refusal::Wait {
            scope,
            dimension,
            retry_after_us,
        });
    }
    for scope in scopes.iter_mut() {
        for d in Dimension::ALL {
            if let Some(b) = scope.get_mut(d) {
                b.take(d.of(demand));
            }
        }
    }
    Ok(())
}

/// Correct a reservation to the truth once usage is known: refund what was reserved and not
/// used, charge what was used and not reserved (the bucket may go into debt).
pub fn settle(scopes: &mut [&mut Buckets], reserved: &Demand, actual: &Demand, now_us: u64) {
    for scope in scopes.iter_mut() {
        for d in Dimension::ALL {
            if let Some(b) = scope.get_mut(d) {
                b.refill(now_us);
                let (r, a) = (d.of(reserved), d.of(actual));
                if a > r {
                    b.take(a - r);
                } else {
                    b.give(r - a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
