//! The keys and numbers sent to the scripts: where a scope's buckets and a tenant's spend
//! live (one hash slot per tenant), and values clamped to what Lua's doubles hold exactly.

use super::{MAX_MICROS, MAX_TOKENS, RedisBackend, RedisOptions};
use crate::backend::{Period, Scope, ScopeKind};
use crate::{Dimension, Rate};

/// A day counter lives long enough to cover its whole day from any first write.
pub(super) const DAY_TTL_MS: u64 = 2 * 86_400_000;

/// A month counter likewise.
pub(super) const MONTH_TTL_MS: u64 = 32 * 86_400_000;

impl RedisBackend {
    /// The Redis key of a scope's buckets.
    pub fn scope_key(&self, tenant: &str, scope: &Scope) -> String {
        scope_key(&self.shared.opts.prefix, tenant, scope)
    }

    /// The Redis key of a tenant's spend counter.
    pub fn spend_key(&self, tenant: &str, period: Period, at: u32) -> String {
        spend_key(&self.shared.opts.prefix, tenant, period, at)
    }

    pub(super) fn now_arg(&self, local_now_us: u64) -> String {
        now_arg(&self.shared.opts, Some(local_now_us))
    }
}

pub(super) fn now_arg(opts: &RedisOptions, local_now_us: Option<u64>) -> String {
    match local_now_us {
        Some(t) if opts.caller_clock => t.to_string(),
        _ => String::new(),
    }
}

/// `{<prefix>:t:<tenant>}` for a tenant's own scope, `{<prefix>:t:<tenant>}:c:<class>` for
/// its scope of a class (every key of a tenant in one hash slot), `{<prefix>:o:<class>}` for
/// an org pool.
pub(super) fn scope_key(prefix: &str, tenant: &str, scope: &Scope) -> String {
    match scope.kind {
        ScopeKind::Org => format!("{{{prefix}:{}}}", scope.key),
        ScopeKind::Tenant | ScopeKind::TenantClass => {
            let tag = Scope::tenant_key(tenant);
            match scope.key.strip_prefix(tag.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                    format!("{{{prefix}:{tag}}}{rest}")
                }
                // A scope key not under the tenant's (not made by Scope::*_key): still in the
                // tenant's slot.
                _ => format!("{{{prefix}:{tag}}}:{}", scope.key),
            }
        }
    }
}

pub(super) fn spend_key(prefix: &str, tenant: &str, period: Period, at: u32) -> String {
    let p = match period {
        Period::Day => 'd',
        Period::Month => 'm',
    };
    format!("{{{prefix}:t:{tenant}}}:spend:{p}:{at}")
}

pub(super) fn tokens(n: u64) -> u64 {
    n.min(MAX_TOKENS + 1)
}

pub(super) fn micros(n: u64) -> u64 {
    n.min(MAX_MICROS)
}

pub(super) fn micros_i64(n: u64) -> i64 {
    i64::try_from(micros(n)).unwrap_or(i64::MAX)
}

pub(super) fn rate_args(r: Option<Rate>) -> (i64, i64) {
    match r {
        Some(r) => {
            let c = |n: u64| i64::try_from(n.min(MAX_TOKENS)).unwrap_or(0);
            (c(r.per_minute), c(r.burst))
        }
        None => (-1, -1),
    }
}

pub(super) fn push_rate(pipe: &mut ::redis::Pipeline, r: Option<Rate>) {
    let (pm, burst) = rate_args(r);
    pipe.arg(pm).arg(burst);
}

pub(super) fn dim_index(d: Dimension) -> usize {
    match d {
        Dimension::Requests => 0,
        Dimension::InputTokens => 1,
        Dimension::OutputTokens => 2,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::backend::Rates;

    fn scope(kind: ScopeKind, key: &str) -> Scope {
        Scope::new(kind, key, "x", Rates::default(), 0)
    }

    #[test]
    fn keys_share_the_tenant_hash_tag() {
        let t = scope(ScopeKind::Tenant, &Scope::tenant_key("web"));
        let c = scope(
            ScopeKind::TenantClass,
            &Scope::tenant_class_key("web", "opus"),
        );
        let o = scope(ScopeKind::Org, &Scope::org_key("opus"));
        assert_eq!(scope_key("p", "web", &t), "{p:t:web}");
        assert_eq!(scope_key("p", "web", &c), "{p:t:web}:c:opus");
        assert_eq!(scope_key("p", "web", &o), "{p:o:opus}");
        // Another tenant's key whose name starts with this one's stays distinct.
        let other = scope(
            ScopeKind::TenantClass,
            &Scope::tenant_class_key("webby", "x"),
        );
        assert_eq!(scope_key("p", "web", &other), "{p:t:web}:t:webby:c:x");
        assert_eq!(spend_key("p", "web", Period::Day, 7), "{p:t:web}:spend:d:7");
        assert_eq!(
            spend_key("p", "web", Period::Month, 9),
            "{p:t:web}:spend:m:9"
        );
    }
}
