//! What every limiter backend (in-process or Redis) is asked and answers: one admission covers
//! every bucket a call involves (its tenant's, its tenant's for the model class, the
//! organisation pool's for the class) plus the tenant's spend budgets, all or nothing. The
//! backends differ only in where the state lives; the conformance suite holds them to the
//! same answers.

use crate::local::LocalSlot;
use crate::{Bucket, Buckets, Demand, Dimension, Rate};
use smallvec::SmallVec;
use std::sync::Arc;

/// What a scope is, for messages, headers and the org-pool feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    /// All of one tenant's calls.
    Tenant,
    /// One tenant's calls to one model class.
    TenantClass,
    /// The organisation pool of one model class.
    Org,
}

/// The limits of one scope, per dimension (`None`: not limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Requests.
    pub requests: Option<Rate>,
    /// Input tokens.
    pub input_tokens: Option<Rate>,
    /// Output tokens.
    pub output_tokens: Option<Rate>,
}

impl Rates {
    /// From a config limit set.
    pub fn from_set(s: &sluice_config::LimitSet) -> Self {
        let r = |pm: Option<u64>, burst: Option<u64>| {
            pm.map(|n| Rate {
                per_minute: n,
                burst: burst.unwrap_or(n),
            })
        };
        Self {
            requests: r(s.requests_per_minute, s.requests_burst),
            input_tokens: r(s.input_tokens_per_minute, s.input_tokens_burst),
            output_tokens: r(s.output_tokens_per_minute, s.output_tokens_burst),
        }
    }

    /// The rate of dimension `d`.
    pub fn get(&self, d: Dimension) -> Option<Rate> {
        match d {
            Dimension::Requests => self.requests,
            Dimension::InputTokens => self.input_tokens,
            Dimension::OutputTokens => self.output_tokens,
        }
    }

    /// True when no dimension is limited.
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.input_tokens.is_none() && self.output_tokens.is_none()
    }

    /// Full buckets for these rates.
    pub fn full_buckets(&self, now_us: u64) -> Buckets {
        Buckets {
            requests: self.requests.map(|r| Bucket::full(r, now_us)),
            input_tokens: self.input_tokens.map(|r| Bucket::full(r, now_us)),
            output_tokens: self.output_tokens.map(|r| Bucket::full(r, now_us)),
        }
    }

    /// Bring existing buckets to these rates (a reload), keeping their levels.
    pub fn apply_to(&self, b: &mut Buckets, now_us: u64) {
        fn one(slot: &mut Option<Bucket>, rate: Option<Rate>, now_us: u64) {
            match (slot.as_mut(), rate) {
                (Some(b), Some(r)) if b.rate() != r => b.set_rate(r),
                (Some(_), Some(_)) => {}
                (None, Some(r)) => *slot = Some(Bucket::full(r, now_us)),
                (_, None) => *slot = None,
            }
        }
        one(&mut b.requests, self.requests, now_us);
        one(&mut b.input_tokens, self.input_tokens, now_us);
        one(&mut b.output_tokens, self.output_tokens, now_us);
    }
}

/// One scope of an admission.
///
/// The limiter builds its scopes once per config snapshot and shares them between calls, so a
/// scope also remembers where the in-process backend keeps its buckets: found once, not
/// looked up by key on every admission and settlement.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// What it is.
    pub kind: ScopeKind,
    /// Its state key, unique across kinds (`t:web`, `t:web:c:opus`, `o:opus`).
    pub key: Arc<str>,
    /// The tenant (for tenant scopes) or the class (for the org pool): names for messages.
    pub name: Arc<str>,
    /// Its limits.
    pub rates: Rates,
    /// Millionths of each bucket this call must leave free (org pool, lower priority classes).
    pub keep_free_ppm: u32,
    /// The in-process backend's buckets of this scope, once it has looked them up.
    pub(crate) local: LocalSlot,
}

impl Scope {
    /// A scope (with no buckets found yet).
    pub fn new(
        kind: ScopeKind,
        key: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        rates: Rates,
        keep_free_ppm: u32,
    ) -> Scope {
        Scope {
            kind,
            key: key.into(),
            name: name.into(),
            rates,
            keep_free_ppm,
            local: LocalSlot::default(),
        }
    }

    /// The key of a tenant's scope.
    pub fn tenant_key(tenant: &str) -> String {
        format!("t:{tenant}")
    }

    /// The key of a tenant's scope for one model class.
    pub fn tenant_class_key(tenant: &str, class: &str) -> String {
        format!("t:{tenant}:c:{class}")
    }

    /// The key of the org pool of one model class.
    pub fn org_key(class: &str) -> String {
        format!("o:{class}")
    }
}

/// Which spend budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// The UTC day.
    Day,
    /// The UTC calendar month.
    Month,
}

impl Period {
    /// `"daily"` / `"monthly"`.
    pub const fn adjective(self) -> &'static str {
        match self {
            Self::Day => "daily",
            Self::Month => "monthly",
        }
    }
}

/// The budget part of an admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetCheck {
    /// Estimated cost of the call (micro-dollars), reserved now and settled later.
    pub cost_micros: u64,
    /// The UTC day (days since the Unix epoch).
    pub day: u32,
    /// The UTC month (`year * 12 + month - 1`).
    pub month: u32,
    /// Daily budget (micro-dollars).
    pub daily_micros: Option<u64>,
    /// Monthly budget (micro-dollars).
    pub monthly_micros: Option<u64>,
}

/// One admission: every scope, the demand, the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmitRequest {
    /// The tenant (budgets are per tenant).
    pub tenant: Arc<str>,
    /// Scopes, tenant ones first, then the org pool (shared: the limiter builds each tenant's
    /// list per model class once per config snapshot).
    pub scopes: Arc<[Scope]>,
    /// What the call is charged now.
    pub demand: Demand,
    /// Spend budget check, if the tenant has one.
    pub budget: Option<BudgetCheck>,
}

/// Why an admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Short of room; there will be room in `retry_after_us`.
    Wait {
        /// Index into [`AdmitRequest::scopes`].
        scope: usize,
        /// The dimension that needs the longest wait.
        dimension: Dimension,
        /// Microseconds until every bucket has room.
        retry_after_us: u64,
    },
    /// Larger than a bucket can ever hold.
    NeverFits {
        /// Index into [`AdmitRequest::scopes`].
        scope: usize,
        /// The dimension.
        dimension: Dimension,
    },
    /// A spend budget would be exceeded.
    Budget {
        /// Which one.
        period: Period,
        /// The budget (micro-dollars).
        limit_micros: u64,
        /// Already spent or reserved (micro-dollars).
        spent_micros: u64,
    },
}

impl Denial {
    /// The same denial, naming scope `f(i)` where it named scope `i`.
    pub(crate) fn for_scope(self, f: impl Fn(usize) -> usize) -> Denial {
        match self {
            Denial::Wait {
                scope,
                dimension,
                retry_after_us,
            } => Denial::Wait {
                scope: f(scope),
                dimension,
                retry_after_us,
            },
            Denial::NeverFits { scope, dimension } => Denial::NeverFits {
                scope: f(scope),
                dimension,
            },
            d @ Denial::Budget { .. } => d,
        }
    }
}

impl From<crate::Refusal> for Denial {
    fn from(r: crate::Refusal) -> Self {
        match r {
            crate::Refusal::Wait {
                scope,
                dimension,
                retry_after_us,
            } => Self::Wait {
                scope,
                dimension,
                retry_after_us,
            },
            crate::Refusal::NeverFits { scope, dimension } => Self::NeverFits { scope, dimension },
        }
    }
}

/// One bucket as a tenant may see it (the `anthropic-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketView {
    /// The per-minute limit.
    pub limit: u64,
    /// Whole tokens left (0 while in debt).
    pub remaining: u64,
    /// Microseconds until the bucket is full.
    pub full_in_us: u64,
}

impl BucketView {
    /// The view of a bucket.
    pub fn of(b: &Bucket) -> Self {
        Self {
            limit: b.rate().per_minute,
            remaining: u64::try_from(b.level().max(0)).unwrap_or(0),
            full_in_us: b.full_in_us(),
        }
    }
}

/// The buckets of a scope as seen at the admission (after the debit when admitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeView {
    /// Requests.
    pub requests: Option<BucketView>,
    /// Input tokens.
    pub input_tokens: Option<BucketView>,
    /// Output tokens.
    pub output_tokens: Option<BucketView>,
}

impl ScopeView {
    /// The view of a scope's buckets.
    pub fn of(b: &Buckets) -> Self {
        Self {
            requests: b.requests.as_ref().map(BucketView::of),
            input_tokens: b.input_tokens.as_ref().map(BucketView::of),
            output_tokens: b.output_tokens.as_ref().map(BucketView::of),
        }
    }

    /// The view of dimension `d`.
    pub fn get(&self, d: Dimension) -> Option<BucketView> {
        match d {
            Dimension::Requests => self.requests,
            Dimension::InputTokens => self.input_tokens,
            Dimension::OutputTokens => self.output_tokens,
        }
    }
}

/// Each scope's view, in request order (at most three scopes in any admission the limiter
/// makes, so no allocation).
pub type Views = SmallVec<[ScopeView; 3]>;

/// A backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Admitted, or why not.
    pub result: Result<(), Denial>,
    /// Each scope's buckets, in request order (only tenant scopes are ever shown to clients).
    pub views: Views,
}

/// What a backend needs to settle an admitted call.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// The admission as made.
    pub request: AdmitRequest,
    /// The truth in each dimension.
    pub actual: Demand,
    /// The actual cost (micro-dollars).
    pub actual_cost_micros: u64,
}

/// A limiter backend failed (only the shared one can).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The shared store did not answer in time or at all.
    #[error("limiter backend unavailable: {0}")]
    Unavailable(String),
}
