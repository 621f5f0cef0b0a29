//! `[limits]`, `[org]` and the per-tenant limit keys: the schema of rate limits, the
//! organisation pool, priorities and spend budgets. The semantics live in `sluice-limits`;
//! this module only says what can be written and rejects what makes no sense.

use crate::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Limits of one scope: any dimension left out is not limited. A `*_burst` is the bucket's
/// capacity when it should differ from the per-minute rate (default: the rate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSet {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute (uncached input plus cache writes; cache reads are free).
    pub input_tokens_per_minute: Option<u64>,
    /// Output tokens per minute.
    pub output_tokens_per_minute: Option<u64>,
    /// Capacity of the requests bucket.
    pub requests_burst: Option<u64>,
    /// Capacity of the input-tokens bucket.
    pub input_tokens_burst: Option<u64>,
    /// Capacity of the output-tokens bucket.
    pub output_tokens_burst: Option<u64>,
}

impl LimitSet {
    /// True when nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.requests_per_minute.is_none()
            && self.input_tokens_per_minute.is_none()
            && self.output_tokens_per_minute.is_none()
    }

    /// Each set dimension of `other` replaces this one's.
    pub fn overlay(&self, other: &LimitSet) -> LimitSet {
        LimitSet {
            requests_per_minute: other.requests_per_minute.or(self.requests_per_minute),
            input_tokens_per_minute: other
                .input_tokens_per_minute
                .or(self.input_tokens_per_minute),
            output_tokens_per_minute: other
                .output_tokens_per_minute
                .or(self.output_tokens_per_minute),
            requests_burst: other.requests_burst.or(self.requests_burst),
            input_tokens_burst: other.input_tokens_burst.or(self.input_tokens_burst),
            output_tokens_burst: other.output_tokens_burst.or(self.output_tokens_burst),
        }
    }

    pub(crate) fn validate(&self, at: &str) -> Result<(), String> {
        let pairs = [
            ("requests", self.requests_per_minute, self.requests_burst),
            (
                "input_tokens",
                self.input_tokens_per_minute,
                self.input_tokens_burst,
            ),
            (
                "output_tokens",
                self.output_tokens_per_minute,
                self.output_tokens_burst,
            ),
        ];
        for (name, rate, burst) in pairs {
            if rate == Some(0) {
                return Err(format!(
                    "{at}: {name}_per_minute = 0 would refuse every call; disable the tenant instead"
                ));
            }
            if burst.is_some() && rate.is_none() {
                return Err(format!(
                    "{at}: {name}_burst needs {name}_per_minute (a bucket that never refills)"
                ));
            }
            if burst == Some(0) {
                return Err(format!("{at}: {name}_burst must be > 0"));
            }
        }
        Ok(())
    }
}

/// A tenant's priority class. Higher classes are served first when the organisation pool is
/// short; within a class, tenants share by weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work: served last, and kept off the pool's reserved share.
    Batch,
    /// The default.
    #[default]
    Standard,
    /// User-facing paths that must not wait behind anything.
    Critical,
}

impl Priority {
    /// The name used in config, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Standard => "standard",
            Self::Critical => "critical",
        }
    }
}

/// What a replica does when the shared limiter (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Enforce locally, at `fallback_share` of every limit.
    #[default]
    Local,
    /// Refuse calls that need the limiter (503) until it is back.
    Closed,
    /// Admit without limits until it is back.
    Open,
}

/// Which limiter holds bucket state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    /// In this process (one replica).
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis,
}

/// A model class: calls to models matching any pattern share the class's buckets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelClass {
    /// Class name (used in `[org.classes.NAME]` and `[tenants.class_limits.NAME]`).
    pub name: String,
    /// Model ids; a pattern ending in `*` matches by prefix.
    pub models: Vec<String>,
}

impl ModelClass {
    /// Whether `model` belongs to this class.
    pub fn matches(&self, model: &str) -> bool {
        self.models.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => model == p,
        })
    }
}

/// `[limits]`: the limiter's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Where bucket state lives.
    pub backend: LimiterBackend,
    /// Redis URL (for `backend = "redis"`).
    pub redis_url: SecretString,
    /// Prefix of every Redis key (so several gateways or tests can share one Redis).
    pub redis_prefix: String,
    /// Longest wait for one Redis call before the replica treats Redis as unreachable.
    pub redis_timeout_ms: u64,
    /// What to do while Redis is unreachable.
    pub fail_mode: FailMode,
    /// Share of every limit a replica enforces locally while Redis is unreachable (with N
    /// replicas, 1/N keeps the total near the real limit).
    pub fallback_share: f64,
    /// Model classes, first match wins. Empty: the built-in classes (the upstream's own
    /// rate-limit groups). Models matching none share the class `other`.
    pub classes: Vec<ModelClass>,
    /// The output reservation is `min(max_tokens, this percentile of the tenant and model's
    /// recent outputs)`.
    pub output_percentile: u8,
    /// How many recent outputs the percentile is taken over.
    pub output_window: usize,
    /// Output reservation before anything has been learned (capped by `max_tokens`).
    pub output_cold_default: u64,
    /// Prompt-cache lifetime assumed when predicting cache reads (the upstream's default TTL).
    pub cache_ttl_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            backend: LimiterBackend::Local,
            redis_url: SecretString::from("redis://127.0.0.1:6379"),
            redis_prefix: "sluice".into(),
            redis_timeout_ms: 100,
            fail_mode: FailMode::Local,
            fallback_share: 0.5,
            classes: Vec::new(),
            output_percentile: 95,
            output_window: 256,
            output_cold_default: 1024,
            cache_ttl_secs: 300,
        }
    }
}

/// `[org]`: the upstream organisation's own limits, which every admission must also fit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrgConfig {
    /// A preset of the upstream's published tiers (see `sluice tiers`); `[org.classes]`
    /// overrides it dimension by dimension. Unset: only the classes given are limited.
    pub tier: Option<String>,
    /// Per model class limits.
    pub classes: BTreeMap<String, LimitSet>,
    /// Share of each pool bucket kept free for higher classes: e.g. `batch = 0.2` admits a
    /// batch-class call only if 20% of the pool remains after it.
    pub keep_free: KeepFree,
}

/// Shares of the organisation pool that a class may not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepFree {
    /// Kept free by standard-class calls (for critical ones).
    pub standard: f64,
    /// Kept free by batch-class calls (for standard and critical ones).
    pub batch: f64,
}

impl KeepFree {
    /// The share a call of class `p` must leave in the pool.
    pub fn for_priority(&self, p: Priority) -> f64 {
        match p {
            Priority::Critical => 0.0,
            Priority::Standard => self.standard,
            Priority::Batch => self.batch,
        }
    }
}

/// A USD amount as integer micro-dollars.
pub fn usd_to_micros(usd: f64) -> u64 {
    (usd * 1_000_000.0).round().max(0.0) as u64
}

pub(crate) fn validate(
    limits: &LimitsConfig,
    org: &OrgConfig,
    tenants: &[crate::TenantConfig],
) -> Result<(), String> {
    if !(limits.fallback_share > 0.0 && limits.fallback_share <= 1.0) {
        return Err("limits.fallback_share must be in (0, 1]".into());
    }
    if !(50..=100).contains(&limits.output_percentile) {
        return Err("limits.output_percentile must be between 50 and 100".into());
    }
    if limits.output_window == 0 || limits.redis_timeout_ms == 0 {
        return Err("limits.output_window and limits.redis_timeout_ms must be > 0".into());
    }
    if limits.backend == LimiterBackend::Redis
        && !(limits.redis_url.expose().starts_with("redis://")
            || limits.redis_url.expose().starts_with("rediss://"))
    {
        // The URL may carry a password: it is not quoted.
        return Err("limits.redis_url must start with redis:// or rediss://".into());
    }
    let mut names = std::collections::HashSet::new();
    for c in &limits.classes {
        if !crate::valid_name(&c.name) {
            return Err(format!(
                "model class name {:?}: use a-z, 0-9, '-', '_'",
                c.name
            ));
        }
        if !names.insert(c.name.as_str()) || c.name == "other" {
            return Err(format!(
                "model class {:?} is declared twice (or uses the reserved name \"other\")",
                c.name
            ));
        }
        if c.models.is_empty() {
            return Err(format!("model class {:?} lists no models", c.name));
        }
    }
    for (class, set) in &org.classes {
        set.validate(&format!("org.classes.{class}"))?;
    }
    for share in [org.keep_free.standard, org.keep_free.batch] {
        if !(0.0..1.0).contains(&share) {
            return Err("org.keep_free shares must be in [0, 1)".into());
        }
    }
    for t in tenants {
        let name = &t.name;
        t.limits.validate(&format!("tenant {name:?} limits"))?;
        for (class, set) in &t.class_limits {
            set.validate(&format!("tenant {name:?} class_limits.{class}"))?;
        }
        if t.weight == 0 {
            return Err(format!("tenant {name:?}: weight must be > 0"));
        }
        if t.count_tokens_per_minute == Some(0) {
            return Err(format!(
                "tenant {name:?}: count_tokens_per_minute = 0 would refuse every call; leave it out for no limit"
            ));
        }
        for b in [t.budget_daily_usd, t.budget_monthly_usd]
            .into_iter()
            .flatten()
        {
            if !(b >= 0.0 && b.is_finite()) {
                return Err(format!("tenant {name:?}: budgets must be >= 0 USD"));
            }
        }
    }
    Ok(())
}
