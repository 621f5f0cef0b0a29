//! What a client is told: the tenant's own buckets as the `anthropic-ratelimit-*` headers show
//! them, and a refusal's reason, `retry-after` and words.

use super::period::until_period_end;
use crate::Dimension;
use crate::backend::{AdmitRequest, BucketView, Denial, Period, Scope, ScopeKind, ScopeView};

/// The tenant's own buckets as shown in `anthropic-ratelimit-*` headers: per dimension, the
/// tightest of the tenant's scopes that apply to the call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantView {
    /// Requests.
    pub requests: Option<BucketView>,
    /// Input tokens.
    pub input_tokens: Option<BucketView>,
    /// Output tokens.
    pub output_tokens: Option<BucketView>,
}

impl TenantView {
    pub(super) fn from_outcome(req: &AdmitRequest, views: &[ScopeView]) -> Self {
        let mut v = TenantView::default();
        for (scope, view) in req.scopes.iter().zip(views) {
            if scope.kind == ScopeKind::Org {
                continue;
            }
            for d in Dimension::ALL {
                let Some(b) = view.get(d) else { continue };
                let slot = match d {
                    Dimension::Requests => &mut v.requests,
                    Dimension::InputTokens => &mut v.input_tokens,
                    Dimension::OutputTokens => &mut v.output_tokens,
                };
                if slot.is_none_or(|cur| b.remaining < cur.remaining) {
                    *slot = Some(b);
                }
            }
        }
        v
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

/// Why a call was refused, in the terms the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The tenant's own buckets.
    TenantRate,
    /// The organisation pool.
    OrgPool,
    /// A spend budget.
    Budget,
    /// The shared limiter is unreachable and `fail_mode = "closed"`.
    Unavailable,
}

impl RefusalReason {
    /// Label for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TenantRate => "tenant_rate",
            Self::OrgPool => "org_pool",
            Self::Budget => "budget",
            Self::Unavailable => "limiter_unavailable",
        }
    }
}

/// A refusal, ready to be put on the wire.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Why.
    pub reason: RefusalReason,
    /// The message (names the tenant, the dimension and the limit; never another tenant or
    /// the organisation's numbers).
    pub message: String,
    /// Seconds until a retry can succeed (`retry-after`).
    pub retry_after_secs: u64,
    /// False when retrying soon cannot help (budget spent, a call larger than a bucket).
    pub should_retry: bool,
    /// The tenant's buckets, for the headers.
    pub view: TenantView,
}

/// Seconds, rounded up, and at least 1 (a `retry-after: 0` makes SDKs retry at once).
fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000).max(1)
}

/// The words of a refusal.
pub(super) fn describe(req: &AdmitRequest, d: Denial, view: TenantView, unix_ms: i64) -> Refused {
    match d {
        Denial::Wait {
            scope,
            dimension,
            retry_after_us,
        } => {
            let secs = secs_ceil(retry_after_us);
            let s = req.scopes.get(scope);
            let (reason, message) = match s {
                Some(s) if s.kind == ScopeKind::Org => (
                    RefusalReason::OrgPool,
                    format!(
                        "the organisation's shared {} capacity is exhausted for {}; retry in {secs}s",
                        s.name,
                        dimension.describe()
                    ),
                ),
                Some(s) => (
                    RefusalReason::TenantRate,
                    format!(
                        "tenant '{}' exhausted its {}{} ({}/min); retry in {secs}s",
                        req.tenant,
                        dimension.describe(),
                        class_words(s),
                        s.rates.get(dimension).map_or(0, |r| r.per_minute)
                    ),
                ),
                None => (
                    RefusalReason::TenantRate,
                    format!("rate limited; retry in {secs}s"),
                ),
            };
            Refused {
                reason,
                message,
                retry_after_secs: secs,
                should_retry: true,
                view,
            }
        }
        Denial::NeverFits { scope, dimension } => {
            let s = req.scopes.get(scope);
            let need = match dimension {
                Dimension::Requests => req.demand.requests,
                Dimension::InputTokens => req.demand.input_tokens,
                Dimension::OutputTokens => req.demand.output_tokens,
            };
            let what = match dimension {
                Dimension::Requests => "requests",
                Dimension::InputTokens => "input tokens",
                Dimension::OutputTokens => {
                    "output tokens (reserved: min(max_tokens, recent outputs))"
                }
            };
            let message = match s {
                Some(s) if s.kind == ScopeKind::Org => format!(
                    "this call needs about {need} {what}, more than the organisation's shared {} capacity can ever hold for its priority class; it cannot be admitted (lower max_tokens or split the input)",
                    s.name
                ),
                Some(s) => format!(
                    "this call needs about {need} {what}, more than tenant '{}' may use per minute{} ({}); it cannot be admitted (lower max_tokens or split the input)",
                    req.tenant,
                    class_words(s),
                    s.rates.get(dimension).map_or(0, |r| r.burst)
                ),
                None => "this call can never be admitted".to_owned(),
            };
            Refused {
                reason: if s.is_some_and(|s| s.kind == ScopeKind::Org) {
                    RefusalReason::OrgPool
                } else {
                    RefusalReason::TenantRate
                },
                message,
                retry_after_secs: 60,
                should_retry: false,
                view,
            }
        }
        Denial::Budget {
            period,
            limit_micros,
            spent_micros,
        } => {
            let until = until_period_end(period, unix_ms);
            Refused {
                reason: RefusalReason::Budget,
                message: format!(
                    "tenant '{}' reached its {} spend budget (${} of ${}); it resets at the start of the next UTC {}",
                    req.tenant,
                    period.adjective(),
                    dollars(spent_micros),
                    dollars(limit_micros),
                    match period {
                        Period::Day => "day",
                        Period::Month => "month",
                    }
                ),
                retry_after_secs: until.max(1),
                should_retry: false,
                view,
            }
        }
    }
}

fn class_words(s: &Scope) -> String {
    match s.kind {
        ScopeKind::TenantClass => {
            // The key is `t:<tenant>:c:<class>`.
            let class = s.key.rsplit(":c:").next().unwrap_or("");
            format!(" for {class} models")
        }
        _ => String::new(),
    }
}

/// `12.345678` from micro-dollars, without floating point.
pub fn dollars(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}
