//! The limiter as the data plane sees it: given a call (tenant, model, body), work out what it
//! is charged (estimates, cost), ask the backend for every bucket and budget at once, wait in
//! the class's fair queue when the pool is short and the tenant allows waiting, and hand back
//! a [`Permit`] that settles to the truth when the call ends, or a [`Refused`] that says why
//! in words an application team can act on.
//!
//! The policy (classes, the org pool, each tenant's scopes and budgets, prices) is derived
//! from a config snapshot once and cached against that snapshot's address, so a reload is
//! picked up by the next call and costs nothing per call otherwise.
//!
//! This module holds the [`Limiter`] itself and what it owns; the rest is split by concern:
//! `policy` (what a snapshot derives), `admit` (acquire, precheck and the wait for room),
//! `permit` (settlement of an admitted call), `refusal` (the views and words a client sees)
//! and `period` (the UTC days and months budgets count in).

mod admit;
mod period;
mod permit;
mod policy;
mod refusal;

pub use period::{day_and_month, period_starts};
pub use permit::Permit;
pub use policy::Policy;
pub use refusal::{RefusalReason, Refused, TenantView, dollars};

use crate::backend::{BucketView, Period, Scope, ScopeKind};
use crate::estimate::{Correction, OutputEstimator};
use crate::local::LocalBackend;
use crate::queue::FairQueue;
use crate::redis::RedisBackend;
use crate::{Bucket, Dimension, Rate};
use arc_swap::ArcSwap;
use foldhash::{HashMap, HashMapExt as _};
use sluice_config::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// The policy could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// A name that refers to nothing.
    #[error("{0}")]
    Invalid(String),
}

/// Where bucket state lives.
pub enum Backend {
    /// In this process.
    Local(LocalBackend),
    /// In Redis (with its own local fallback).
    Redis(RedisBackend),
}

struct PolicyCache {
    /// The config snapshot the policy was built from. A `Weak` keeps its allocation (not its
    /// value) alive, so a later snapshot can never reuse the address and be mistaken for it.
    config: std::sync::Weak<Config>,
    policy: Arc<Policy>,
}

/// One bucket's state, as [`Limiter::headroom`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headroom {
    /// Tenant, tenant-and-class, or org pool.
    pub kind: ScopeKind,
    /// The tenant (tenant scopes).
    pub tenant: Option<Arc<str>>,
    /// The model class (class scopes and org pools).
    pub class: Option<Arc<str>>,
    /// Which dimension.
    pub dimension: Dimension,
    /// Its per-minute limit.
    pub limit: u64,
    /// Whole units left now (0 while in debt).
    pub remaining: u64,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct LimiterStats {
    /// Calls admitted.
    pub admitted: AtomicU64,
    /// Calls admitted after waiting.
    pub admitted_after_wait: AtomicU64,
    /// Refusals by a tenant's own buckets.
    pub refused_tenant: AtomicU64,
    /// Refusals by the organisation pool.
    pub refused_org: AtomicU64,
    /// Refusals by a spend budget.
    pub refused_budget: AtomicU64,
    /// Refusals because the shared limiter was unreachable (`fail_mode = "closed"`).
    pub refused_unavailable: AtomicU64,
    /// Total microseconds admitted calls waited.
    pub wait_us_total: AtomicU64,
}

struct Inner {
    backend: Backend,
    origin: Instant,
    policy: ArcSwap<PolicyCache>,
    queues: Mutex<HashMap<Arc<str>, Arc<FairQueue>>>,
    correction: Correction,
    outputs: OutputEstimator,
    /// Cacheable prefixes seen recently: hash → last use (µs on `origin`). Bounded with a
    /// scan-resistant eviction, so a burst of one-off prefixes does not forget the ones
    /// conversations keep reading (a forgotten one only makes an estimate conservative).
    prefixes: quick_cache::sync::Cache<u64, u64>,
    /// `count_tokens_per_minute` buckets, per tenant (configured names only, so bounded).
    free_calls: Mutex<HashMap<Arc<str>, Bucket>>,
    stats: LimiterStats,
}

/// Most prefixes remembered.
const PREFIX_CAP: usize = 100_000;

/// How often an org pool takes the upstream's `*-remaining` headers into account.
pub const OBSERVE_EVERY_US: u64 = 100_000;

/// The limiter (cheap to clone).
#[derive(Clone)]
pub struct Limiter(Arc<Inner>);

/// A call as the limiter needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// The tenant.
    pub tenant: &'a Arc<str>,
    /// The model requested.
    pub model: &'a str,
    /// `max_tokens` of the request.
    pub max_tokens: u64,
    /// The raw request body (for the input estimate).
    pub body: &'a [u8],
    /// Wall clock now (Unix ms), for the budget's day and month.
    pub unix_ms: i64,
    /// The gateway will add prompt-cache breakpoints to this body (automatic prompt caching):
    /// predict cache reads at the points they will be, not only at the client's own.
    pub auto_prompt_cache: bool,
}

impl Limiter {
    /// A limiter over `backend`; `cfg` is checked now so a bad policy fails at startup.
    pub fn new(cfg: &Arc<Config>, backend: Backend) -> Result<Limiter, LimitsError> {
        let mut policy = Policy::build(cfg)?;
        let queues = Mutex::new(HashMap::new());
        policy.attach_queues(&queues);
        let l = &cfg.limits;
        Ok(Limiter(Arc::new(Inner {
            backend,
            origin: Instant::now(),
            policy: ArcSwap::from_pointee(PolicyCache {
                config: Arc::downgrade(cfg),
                policy: Arc::new(policy),
            }),
            queues,
            correction: Correction::new(),
            outputs: OutputEstimator::new(
                l.output_percentile,
                l.output_window,
                l.output_cold_default,
            ),
            prefixes: quick_cache::sync::Cache::new(PREFIX_CAP),
            free_calls: Mutex::new(HashMap::new()),
            stats: LimiterStats::default(),
        })))
    }

    /// Admit one call of the kind free upstream (token counting, model listing) against the
    /// tenant's `count_tokens_per_minute`, if it has one. Per replica, in process, whatever the
    /// backend: these calls cost nothing upstream, so the limit only has to stop one tenant
    /// flooding the organisation's key, and a replica-local bucket does that without a Redis
    /// round trip on calls that are otherwise never limited.
    pub fn admit_free_call(&self, cfg: &Config, tenant: &Arc<str>) -> Result<(), Box<Refused>> {
        let Some(per_minute) = cfg.tenant(tenant).and_then(|t| t.count_tokens_per_minute) else {
            return Ok(());
        };
        let rate = Rate::per_minute(per_minute);
        let now_us = u64::try_from(self.0.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut map = self
            .0
            .free_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let b = map
            .entry(tenant.clone())
            .or_insert_with(|| Bucket::full(rate, now_us));
        if b.rate() != rate {
            b.set_rate(rate);
        }
        b.refill(now_us);
        let wait = b.wait_us(1);
        if wait == 0 {
            b.take(1);
            return Ok(());
        }
        let view = BucketView::of(b);
        drop(map);
        self.0.stats.refused_tenant.fetch_add(1, Ordering::Relaxed);
        Err(Box::new(Refused {
            reason: RefusalReason::TenantRate,
            message: format!(
                "tenant '{tenant}' is over its count_tokens_per_minute limit of {per_minute} (token counting and model listing)"
            ),
            retry_after_secs: wait.div_ceil(1_000_000).max(1),
            should_retry: true,
            view: TenantView {
                requests: Some(view),
                ..TenantView::default()
            },
        }))
    }

    /// Every configured bucket's state now, for metrics: one entry per scope (the tenant, the
    /// tenant in a model class, the org pool of a class) and dimension it limits. Only the
    /// in-process backend answers (a Redis read per scrape and replica would be a round trip
    /// per bucket; the shared state is Redis's own to export); with Redis this is empty.
    pub fn headroom(&self, cfg: &Arc<Config>) -> Vec<Headroom> {
        let Backend::Local(b) = &self.0.backend else {
            return Vec::new();
        };
        let policy = self.policy(cfg);
        let now = self.now_us();
        let mut out = Vec::new();
        let mut push = |scope: &Scope, tenant: Option<&str>, class: Option<&Arc<str>>| {
            let view = b.view(scope, now);
            for d in Dimension::ALL {
                if let Some(v) = view.get(d) {
                    out.push(Headroom {
                        kind: scope.kind,
                        tenant: tenant.map(Arc::from),
                        class: class.cloned(),
                        dimension: d,
                        limit: v.limit,
                        remaining: v.remaining,
                    });
                }
            }
        };
        for (name, t) in &policy.tenants {
            if let Some(w) = &t.wide {
                push(w, Some(name), None);
            }
            for (class, scope) in &t.by_class {
                push(scope, Some(name), Some(class));
            }
        }
        for (class, scope) in &policy.org {
            push(scope, None, Some(class));
        }
        out
    }

    /// Calls waiting in each model class's fair queue now.
    pub fn queue_depths(&self) -> Vec<(Arc<str>, usize)> {
        let q = self.0.queues.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().map(|(c, f)| (c.clone(), f.len())).collect()
    }

    /// Counters.
    pub fn stats(&self) -> &LimiterStats {
        &self.0.stats
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.0.backend
    }

    /// The policy of `cfg`, built once per snapshot. A snapshot whose policy does not build
    /// (a reload that slipped past validation) keeps the previous policy, and says so.
    pub fn policy(&self, cfg: &Arc<Config>) -> Arc<Policy> {
        let cur = self.0.policy.load();
        if std::ptr::eq(cur.config.as_ptr(), Arc::as_ptr(cfg)) {
            return cur.policy.clone();
        }
        let policy = match Policy::build(cfg) {
            Ok(mut p) => {
                p.attach_queues(&self.0.queues);
                Arc::new(p)
            }
            Err(e) => {
                // Remembered against this snapshot too, so it is said once, not per call.
                tracing::error!(error = %e, "new config's limits are invalid; keeping the previous ones");
                cur.policy.clone()
            }
        };
        self.0.policy.store(Arc::new(PolicyCache {
            config: Arc::downgrade(cfg),
            policy: policy.clone(),
        }));
        policy
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.0.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn queue(&self, class: &Arc<str>) -> Arc<FairQueue> {
        let mut q = self.0.queues.lock().unwrap_or_else(PoisonError::into_inner);
        q.entry(class.clone()).or_default().clone()
    }

    fn remember_prefix(&self, hash: u64, now_us: u64) {
        self.0.prefixes.insert(hash, now_us);
    }

    fn prefix_is_cached(&self, hash: u64, now_us: u64, ttl_us: u64) -> bool {
        self.0
            .prefixes
            .get(&hash)
            .is_some_and(|seen| now_us.saturating_sub(seen) < ttl_us)
    }

    /// Seed a tenant's spend (from the ledger at startup).
    pub async fn add_spend(&self, tenant: &str, period: Period, at: u32, micros: u64) {
        match &self.0.backend {
            Backend::Local(b) => b.add_spend(tenant, period, at, micros),
            Backend::Redis(b) => b.add_spend(tenant, period, at, micros).await,
        }
    }

    /// Drop a deleted tenant's spend this day and month (`unix_ms` says which), so a tenant
    /// created later under its name starts its budgets from zero. The ledger keeps the rows;
    /// at startup they are read back only from the deletion on.
    pub fn forget_spend(&self, tenant: &str, unix_ms: i64) {
        match &self.0.backend {
            Backend::Local(b) => b.forget_spend(tenant),
            Backend::Redis(b) => {
                let (day, month) = day_and_month(unix_ms);
                b.forget_spend(tenant, day, month);
            }
        }
    }

    /// The upstream reported what remains of the org pool `scope` (last corrected at `last`),
    /// per dimension: lower the pool to it, at most once per [`OBSERVE_EVERY_US`] (see
    /// [`Permit::observe_upstream`]).
    fn observe_upstream<I: IntoIterator<Item = (Dimension, u64)>>(
        &self,
        scope: &Scope,
        last: &AtomicU64,
        remaining: impl FnOnce() -> I,
    ) {
        let now = self.now_us();
        let prev = last.load(Ordering::Relaxed);
        if prev != 0 && now.saturating_sub(prev) < OBSERVE_EVERY_US {
            return;
        }
        if last
            .compare_exchange(prev, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another call is observing this class right now
        }
        for (d, r) in remaining() {
            match &self.0.backend {
                Backend::Local(b) => b.observe(scope, d, r, now),
                Backend::Redis(b) => b.observe(scope, d, r),
            }
        }
    }
}
