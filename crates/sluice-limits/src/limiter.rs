//! The limiter as the data plane sees it: given a call (tenant, model, body), work out what it
//! is charged (estimates, cost), ask the backend for every bucket and budget at once, wait in
//! the class's fair queue when the pool is short and the tenant allows waiting, and hand back
//! a [`Permit`] that settles to the truth when the call ends, or a [`Refused`] that says why
//! in words an application team can act on.
//!
//! The policy (classes, the org pool, each tenant's scopes and budgets, prices) is derived
//! from a config snapshot once and cached against that snapshot's address, so a reload is
//! picked up by the next call and costs nothing per call otherwise.

use crate::backend::{
    AdmitRequest, BackendError, BucketView, BudgetCheck, Denial, Outcome, Period, Rates, Scope,
    ScopeKind, ScopeView, Settlement,
};
use crate::estimate::{Correction, CorrectionSlot, OutputEstimator, OutputSlot, estimate_input};
use crate::local::LocalBackend;
use crate::presets::Presets;
use crate::queue::{FairQueue, Place, Seat};
use crate::redis::{RedisBackend, Via};
use crate::{Bucket, Demand, Dimension, Rate};
use arc_swap::ArcSwap;
use foldhash::{HashMap, HashMapExt as _};
use sluice_billing::PriceTable;
use sluice_config::{Config, ModelClass, Priority, usd_to_micros};
use sluice_core::Usage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
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

/// One tenant's derived policy.
#[derive(Debug, Clone)]
struct TenantPolicy {
    wide: Option<Scope>,
    by_class: HashMap<Arc<str>, Scope>,
    priority: Priority,
    weight: u32,
    max_wait: Duration,
    daily_micros: Option<u64>,
    monthly_micros: Option<u64>,
    /// The scopes of a call, per model class (indexed as [`Policy::class_index`]), built
    /// once per snapshot: a call shares its list instead of assembling one.
    plans: Vec<Arc<[Scope]>>,
}

/// Everything derived from one config snapshot.
pub struct Policy {
    classes: Vec<ModelClass>,
    class_names: Vec<Arc<str>>,
    other: Arc<str>,
    org: HashMap<Arc<str>, Scope>,
    tenants: HashMap<String, TenantPolicy>,
    /// The scopes of a tenant the config does not name, per model class (the org pool).
    default_plans: Vec<Arc<[Scope]>>,
    prices: Arc<PriceTable>,
    cache_ttl_us: u64,
    /// Classes whose upstream limits count cache reads as input (older models).
    cache_reads_count: Vec<Arc<str>>,
    /// When each class's org pool last took the upstream's word (µs on the limiter's
    /// clock), indexed as [`Policy::class_index`].
    observed: Vec<AtomicU64>,
    /// The fair queue of each entry of `class_names`, then of `other`: the limiter's queues
    /// (which outlive any one policy), looked up once per snapshot instead of once per call.
    queues: Vec<Arc<FairQueue>>,
    /// Models seen under this policy: their class index and their name as a shared string
    /// (see [`Policy::model_info`]). Keyed by the client's string, so bounded with a
    /// scan-resistant eviction: junk names seen once do not push out the models in use.
    models: quick_cache::sync::Cache<Box<str>, ModelInfo>,
}

/// A model's class index and its name as a shared string.
type ModelInfo = (usize, Arc<str>);

/// Most models [`Policy::model_info`] remembers (past it, one is forgotten to make room).
const MODELS_REMEMBERED: usize = 1024;

impl Policy {
    /// Derive the policy of `cfg`.
    pub fn build(cfg: &Config) -> Result<Policy, LimitsError> {
        let presets = Presets::builtin();
        let classes: Vec<ModelClass> = if cfg.limits.classes.is_empty() {
            presets.classes().to_vec()
        } else {
            cfg.limits.classes.clone()
        };
        let class_names: Vec<Arc<str>> = classes.iter().map(|c| Arc::from(&*c.name)).collect();
        let cache_reads_count = if cfg.limits.classes.is_empty() {
            class_names
                .iter()
                .filter(|c| presets.cache_reads_count(c))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let other: Arc<str> = Arc::from(crate::presets::OTHER_CLASS);
        let known = |name: &str| -> Result<Arc<str>, LimitsError> {
            if name == crate::presets::OTHER_CLASS {
                return Ok(other.clone());
            }
            class_names
                .iter()
                .find(|c| &***c == name)
                .cloned()
                .ok_or_else(|| {
                    LimitsError::Invalid(format!(
                        "model class {name:?} is not declared (classes: {}, other)",
                        class_names
                            .iter()
                            .map(|c| &**c)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        };

        let mut org_sets: HashMap<Arc<str>, sluice_config::LimitSet> = HashMap::new();
        if let Some(tier) = &cfg.org.tier {
            let Some(t) = presets.tier(tier) else {
                return Err(LimitsError::Invalid(format!(
                    "org.tier {tier:?} is not a known preset (known: {})",
                    presets.tier_names().collect::<Vec<_>>().join(", ")
                )));
            };
            for (class, set) in t {
                // A preset may name classes the config replaced; those simply do not apply.
                if let Ok(c) = known(class) {
                    org_sets.insert(c, *set);
                }
            }
        }
        for (class, set) in &cfg.org.classes {
            let c = known(class)?;
            let merged = org_sets.get(&c).copied().unwrap_or_default().overlay(set);
            org_sets.insert(c, merged);
        }
        let org: HashMap<Arc<str>, Scope> = org_sets
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(c, s)| {
                let scope = Scope::new(
                    ScopeKind::Org,
                    Scope::org_key(&c),
                    c.clone(),
                    Rates::from_set(&s),
                    0,
                );
                (c, scope)
            })
            .collect();

        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let name: Arc<str> = Arc::from(&*t.name);
            let wide = (!t.limits.is_empty()).then(|| {
                Scope::new(
                    ScopeKind::Tenant,
                    Scope::tenant_key(&t.name),
                    name.clone(),
                    Rates::from_set(&t.limits),
                    0,
                )
            });
            let mut by_class = HashMap::new();
            for (class, set) in &t.class_limits {
                let c = known(class)?;
                if set.is_empty() {
                    continue;
                }
                by_class.insert(
                    c.clone(),
                    Scope::new(
                        ScopeKind::TenantClass,
                        Scope::tenant_class_key(&t.name, &c),
                        name.clone(),
                        Rates::from_set(set),
                        0,
                    ),
                );
            }
            let mut tp = TenantPolicy {
                wide,
                by_class,
                priority: t.priority,
                weight: t.weight.max(1),
                max_wait: Duration::from_millis(t.max_wait_ms),
                daily_micros: t.budget_daily_usd.map(usd_to_micros),
                monthly_micros: t.budget_monthly_usd.map(usd_to_micros),
                plans: Vec::new(),
            };
            tp.plans = plans(&class_names, &other, &org, &cfg.org.keep_free, Some(&tp));
            tenants.insert(t.name.clone(), tp);
        }
        let default_plans = plans(&class_names, &other, &org, &cfg.org.keep_free, None);
        let prices = PriceTable::builtin()
            .with_overrides(&cfg.prices)
            .map_err(|e| LimitsError::Invalid(e.to_string()))?;
        let observed = (0..=class_names.len()).map(|_| AtomicU64::new(0)).collect();
        Ok(Policy {
            observed,
            classes,
            class_names,
            other,
            org,
            tenants,
            default_plans,
            prices: Arc::new(prices),
            cache_ttl_us: cfg.limits.cache_ttl_secs.saturating_mul(1_000_000),
            cache_reads_count,
            queues: Vec::new(),
            models: quick_cache::sync::Cache::new(MODELS_REMEMBERED),
        })
    }

    /// Give the policy its classes' queues from the limiter's `queues`.
    fn attach_queues(&mut self, queues: &Mutex<HashMap<Arc<str>, Arc<FairQueue>>>) {
        let mut q = queues.lock().unwrap_or_else(PoisonError::into_inner);
        self.queues = self
            .class_names
            .iter()
            .chain(std::iter::once(&self.other))
            .map(|c| q.entry(c.clone()).or_default().clone())
            .collect();
    }

    /// The index of the class of `model`: its position among the configured classes (first
    /// match), or their count for `other`.
    fn class_index(&self, model: &str) -> usize {
        self.classes
            .iter()
            .position(|c| c.matches(model))
            .unwrap_or(self.class_names.len())
    }

    /// The class index of `model` and its name as a shared string, remembered: matching a
    /// model against every class's patterns (strings scattered over the heap) and copying its
    /// name showed in the profile of every limited call, and a service uses a handful of
    /// models.
    fn model_info(&self, model: &str) -> (usize, Arc<str>) {
        if let Some(info) = self.models.get(model) {
            return info;
        }
        let i = self.class_index(model);
        let name: Arc<str> = Arc::from(model);
        self.models.insert(Box::from(model), (i, name.clone()));
        (i, name)
    }

    /// The name of the class at `i` (see [`Policy::class_index`]).
    fn class_name(&self, i: usize) -> &Arc<str> {
        self.class_names.get(i).unwrap_or(&self.other)
    }

    /// The model class of `model` (first match; `other` when none matches).
    pub fn class_of(&self, model: &str) -> &Arc<str> {
        self.class_name(self.class_index(model))
    }

    /// The price table in force.
    pub fn prices(&self) -> &Arc<PriceTable> {
        &self.prices
    }
}

/// The scopes of a call of each class (configured classes, then `other`): the tenant's own
/// (when `tp` is a configured tenant), then the class's org pool with the share the tenant's
/// priority must leave free.
fn plans(
    class_names: &[Arc<str>],
    other: &Arc<str>,
    org: &HashMap<Arc<str>, Scope>,
    keep_free: &sluice_config::KeepFree,
    tp: Option<&TenantPolicy>,
) -> Vec<Arc<[Scope]>> {
    let priority = tp.map_or(Priority::Standard, |t| t.priority);
    class_names
        .iter()
        .chain(std::iter::once(other))
        .map(|class| {
            let mut scopes = Vec::with_capacity(3);
            if let Some(tp) = tp {
                scopes.extend(tp.wide.iter().cloned());
                scopes.extend(tp.by_class.get(class).cloned());
            }
            if let Some(o) = org.get(class) {
                let mut o = o.clone();
                o.keep_free_ppm = ppm(keep_free.for_priority(priority));
                scopes.push(o);
            }
            Arc::from(scopes)
        })
        .collect()
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

/// Prefixes shorter than this are never cached upstream (the smallest published minimum is
/// 1024 tokens; some models need more, where a prediction errs towards reserving).
const MIN_CACHEABLE: u64 = 1024;

/// A call on its way through admission: what [`Limiter::acquire`] prepared once and every
/// attempt reuses.
struct Waiting {
    /// The permit it will get (its request, view and wait filled in at admission).
    permit: Permit,
    req: AdmitRequest,
    priority: Priority,
    weight: u32,
    max_wait: Duration,
    can_wait: bool,
    /// When it was first found short of room (the wait is measured from there).
    started: Option<Instant>,
    queue: Arc<FairQueue>,
    /// Its size in the fair queue.
    cost_tokens: u64,
    unix_ms: i64,
    /// The limiter's clock when it was prepared.
    prepared_at_us: u64,
}

impl Waiting {
    fn admitted(self, view: TenantView, via: Via, waited: Duration) -> Permit {
        let mut permit = self.permit;
        permit.request = Some(self.req);
        permit.via = via;
        permit.view = view;
        permit.waited = waited;
        permit.queue = Some(self.queue);
        permit
    }
}

/// What [`Limiter::prepare`] found. The variants are both about a permit's size: neither
/// is boxed, so an unlimited call allocates nothing here.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Unlimited(Permit),
    Limited(Waiting),
}

/// See [`Limiter::decide`].
enum Decided {
    Admitted(TenantView, Via, Duration),
    Refused(Box<Refused>),
    Wait(usize, u64),
}

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
}

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
    fn from_outcome(req: &AdmitRequest, views: &[ScopeView]) -> Self {
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

/// An admitted call. Settle it when the call ends; dropping it unsettled keeps the whole
/// reservation (the honest answer when nothing is known of what the upstream did).
pub struct Permit {
    limiter: Option<Limiter>,
    request: Option<AdmitRequest>,
    via: Via,
    view: TenantView,
    model: Arc<str>,
    class: Arc<str>,
    /// `class`'s index in the policy.
    class_index: usize,
    /// Where settlement learns (a limited call's).
    learn: Option<Learn>,
    raw_input_estimate: u64,
    /// The call's cache breakpoints (hashes of cacheable prefixes of at least the minimum size).
    breakpoints: Vec<u64>,
    policy: Arc<Policy>,
    waited: Duration,
    /// The class's upstream limit counts cache reads as input.
    cache_reads_count: bool,
    /// The class's fair queue, woken at settlement (kept from admission: one map lookup and
    /// lock fewer per call).
    queue: Option<Arc<FairQueue>>,
}

/// The estimators' slots a call reserved with, so that its settlement learns without finding
/// them again.
struct Learn {
    correction: Option<Arc<CorrectionSlot>>,
    outputs: Arc<OutputSlot>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("request", &self.request)
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The tenant's buckets after the admission (for the response headers).
    pub fn view(&self) -> &TenantView {
        &self.view
    }

    /// What was reserved.
    pub fn reserved(&self) -> Demand {
        self.request.as_ref().map(|r| r.demand).unwrap_or_default()
    }

    /// How long the call waited for room.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The model class.
    pub fn class(&self) -> &Arc<str> {
        &self.class
    }

    /// The upstream's reply reported what remains of the organisation's limits (`remaining`
    /// reads it, only when wanted): never believe the org pool of this call's class has more
    /// room than that. Sampled: at most one observation per class per [`OBSERVE_EVERY_US`],
    /// because every reply carries these headers and the pool only needs correcting when it
    /// drifts, not a write to the backend per call. The permit knows its pool, so this costs
    /// a call no lookup.
    pub fn observe_upstream<I: IntoIterator<Item = (Dimension, u64)>>(
        &self,
        remaining: impl FnOnce() -> I,
    ) {
        let (Some(limiter), Some(req)) = (&self.limiter, &self.request) else {
            return;
        };
        let Some(scope) = req.scopes.last().filter(|s| s.kind == ScopeKind::Org) else {
            return;
        };
        if let Some(last) = self.policy.observed.get(self.class_index) {
            limiter.observe_upstream(scope, last, remaining);
        }
    }

    /// Settle to what the upstream reported, learn from it, and return the call's cost in
    /// micro-dollars (`None` when the model has no price).
    pub fn settle(mut self, usage: &Usage, model_served: Option<&str>) -> Option<u64> {
        let model = model_served.unwrap_or(&self.model);
        let cost = self.policy.prices.cost_micros(model, usage, false);
        let Some(limiter) = self.limiter.take() else {
            return cost;
        };
        let inner = &limiter.0;
        let now = limiter.now_us();
        if let Some(l) = &self.learn {
            if let Some(c) = &l.correction {
                inner
                    .correction
                    .learn(c, self.raw_input_estimate, usage.total_input());
            }
            if usage.output_tokens > 0 {
                inner.outputs.learn(&l.outputs, usage.output_tokens);
            }
        }
        if usage.cache_creation_input_tokens + usage.cache_read_input_tokens > 0 {
            for h in &self.breakpoints {
                limiter.remember_prefix(*h, now);
            }
        }
        if let Some(request) = self.request.take() {
            let actual = Demand {
                requests: request.demand.requests,
                input_tokens: if self.cache_reads_count {
                    usage.total_input()
                } else {
                    usage.rate_limited_input()
                },
                output_tokens: usage.output_tokens,
            };
            let s = Settlement {
                request,
                actual,
                actual_cost_micros: cost.unwrap_or(0),
            };
            match &inner.backend {
                Backend::Local(b) => b.settle(&s, now),
                Backend::Redis(b) => b.settle(s, self.via),
            }
            match &self.queue {
                Some(q) => q.poke(),
                None => limiter.queue(&self.class).poke(),
            }
        }
        cost
    }
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

    async fn admit_once(&self, req: &AdmitRequest) -> Result<(Outcome, Via), BackendError> {
        match &self.0.backend {
            Backend::Local(b) => Ok((b.admit(req, self.now_us()), Via::Local)),
            Backend::Redis(b) => b
                .admit(req, self.now_us())
                .await
                .map(|a| (a.outcome, a.via)),
        }
    }

    /// Admit a call, waiting for room up to the tenant's `max_wait_ms`.
    ///
    /// Most calls are admitted (or refused) by the in-process backend at once: that path runs
    /// synchronously and never builds the waiting machinery, so the future the request
    /// handler awaits stays small. Only a call that must wait, or one that asks Redis, goes on
    /// to [`Limiter::wait_for_room`], boxed.
    pub async fn acquire(
        &self,
        cfg: &Arc<Config>,
        call: CallInfo<'_>,
    ) -> Result<Permit, Box<Refused>> {
        let mut w = match self.prepare(cfg, call) {
            Prepared::Limited(w) => w,
            Prepared::Unlimited(permit) => return Ok(permit),
        };
        let mut first = None;
        if let Backend::Local(b) = &self.0.backend
            && !(w.can_wait && w.queue.busy_at_or_above(w.priority))
        {
            // The clock read while preparing is microseconds old: close enough to admit at.
            let outcome = b.admit(&w.req, w.prepared_at_us);
            match self.decide(&mut w, &mut None, outcome, Via::Local) {
                Decided::Admitted(view, via, waited) => return Ok(w.admitted(view, via, waited)),
                Decided::Refused(r) => return Err(r),
                Decided::Wait(scope, retry_after_us) => first = Some((scope, retry_after_us)),
            }
        }
        Box::pin(self.wait_for_room(w, first)).await
    }

    /// Whether a Messages call of `tenant` is certain to be refused, judged from what is known
    /// before its body is read (so a refused client is not buffered first): its daily or
    /// monthly budget is already spent, or its own tenant-wide request bucket is empty for
    /// longer than it may wait (`max_wait_ms`). The refusal is the one [`Limiter::acquire`]
    /// would give. Nothing is taken: a call that passes still goes through `acquire`, which
    /// alone admits. Model-class buckets and the org pool need the model, so they are not
    /// looked at.
    ///
    /// Only the in-process backend is looked at: with Redis the look would be a round trip
    /// per call on top of the admission's, so there every call's body is read first.
    pub fn precheck(
        &self,
        cfg: &Arc<Config>,
        tenant: &Arc<str>,
        unix_ms: i64,
    ) -> Result<(), Box<Refused>> {
        let Backend::Local(b) = &self.0.backend else {
            return Ok(());
        };
        let policy = self.policy(cfg);
        let Some(tp) = policy.tenants.get(&**tenant) else {
            return Ok(());
        };
        let refuse = |d: Denial, now_us: u64| {
            // Built only to word a refusal: the tenant's own scope, as an admission lists it.
            let req = AdmitRequest {
                tenant: tenant.clone(),
                scopes: tp.wide.iter().cloned().collect(),
                demand: Demand {
                    requests: 1,
                    ..Demand::default()
                },
                budget: None,
            };
            let views: Vec<ScopeView> = req.scopes.iter().map(|s| b.view(s, now_us)).collect();
            let view = TenantView::from_outcome(&req, &views);
            Err(self.refuse(describe(&req, d, view, unix_ms), None))
        };
        if tp.daily_micros.is_some() || tp.monthly_micros.is_some() {
            let (day, month) = day_and_month(unix_ms);
            let sp = b.spend(tenant);
            let checks = [
                (Period::Day, tp.daily_micros, sp.day == day, sp.day_micros),
                (
                    Period::Month,
                    tp.monthly_micros,
                    sp.month == month,
                    sp.month_micros,
                ),
            ];
            for (period, limit, current, spent) in checks {
                if let Some(limit) = limit
                    && current
                    && spent >= limit
                {
                    let d = Denial::Budget {
                        period,
                        limit_micros: limit,
                        spent_micros: spent,
                    };
                    return refuse(d, self.now_us());
                }
            }
        }
        if let Some(wide) = &tp.wide {
            let now = self.now_us();
            if let Some(wait) = b.request_wait_us(wide, now)
                && wait > 0
                && Duration::from_micros(wait) > tp.max_wait
            {
                let d = Denial::Wait {
                    scope: 0,
                    dimension: Dimension::Requests,
                    retry_after_us: wait,
                };
                return refuse(d, now);
            }
        }
        Ok(())
    }

    /// Everything about a call that admission needs, or the permit of a call that nothing
    /// limits.
    fn prepare(&self, cfg: &Arc<Config>, call: CallInfo<'_>) -> Prepared {
        let policy = self.policy(cfg);
        let (ci, model) = policy.model_info(call.model);
        let class = policy.class_name(ci).clone();
        let queue = policy.queues.get(ci).cloned();
        let now = self.now_us();

        let tp = policy.tenants.get(&**call.tenant);
        let scopes = tp
            .map_or(&policy.default_plans, |t| &t.plans)
            .get(ci)
            .cloned()
            .unwrap_or_default();
        let priority = tp.map_or(Priority::Standard, |t| t.priority);
        let has_budget = tp.is_some_and(|t| t.daily_micros.is_some() || t.monthly_micros.is_some());
        if scopes.is_empty() && !has_budget {
            // Nothing limits this call: no estimate is needed (an unlimited tenant's calls cost
            // the request path nothing here), and there is nothing to settle.
            self.0.stats.admitted.fetch_add(1, Ordering::Relaxed);
            return Prepared::Unlimited(Permit {
                limiter: None,
                request: None,
                via: Via::Local,
                view: TenantView::default(),
                model,
                class,
                class_index: ci,
                learn: None,
                raw_input_estimate: 0,
                breakpoints: Vec::new(),
                policy,
                waited: Duration::ZERO,
                cache_reads_count: false,
                queue: None,
            });
        }
        let est = estimate_input(call.body);
        let correction = Some(self.0.correction.slot(&model));
        let corrected = correction
            .as_ref()
            .map_or(est.total, |c| c.apply(est.total));
        let cache_reads_count = policy.cache_reads_count.contains(&class);
        // Cache reads are free: predict them. The longest prefix (a breakpoint of this call,
        // or a block boundary just before its last one, where the upstream looks for earlier
        // turns' entries) that a recent call wrote or read is assumed to be read again.
        let cached_raw = if cache_reads_count {
            0
        } else {
            est.breakpoints()
                .iter()
                .chain(est.lookback())
                .filter(|p| p.tokens >= MIN_CACHEABLE)
                .filter(|p| self.prefix_is_cached(p.hash, now, policy.cache_ttl_us))
                .map(|p| p.tokens)
                .max()
                .unwrap_or(0)
        };
        // Scaled by the same correction as the whole.
        let cached = u64::try_from(
            u128::from(cached_raw) * u128::from(corrected.max(1)) / u128::from(est.total.max(1)),
        )
        .unwrap_or(u64::MAX);
        let input = corrected.saturating_sub(cached).max(1);
        let outputs = self.0.outputs.slot(call.tenant, &model);
        let output = outputs.reserve(call.max_tokens);

        let budget = tp.and_then(|t| {
            (t.daily_micros.is_some() || t.monthly_micros.is_some()).then(|| {
                let (day, month) = day_and_month(call.unix_ms);
                BudgetCheck {
                    cost_micros: policy
                        .prices
                        .estimate_micros(call.model, input, output, false)
                        .unwrap_or(0),
                    day,
                    month,
                    daily_micros: t.daily_micros,
                    monthly_micros: t.monthly_micros,
                }
            })
        });
        let queue = queue.unwrap_or_else(|| self.queue(&class));
        let max_wait = tp.map_or(Duration::ZERO, |t| t.max_wait);
        let weight = tp.map_or(1, |t| t.weight);
        let permit = Permit {
            limiter: Some(self.clone()),
            request: None,
            via: Via::Local,
            view: TenantView::default(),
            model,
            class,
            class_index: ci,
            learn: Some(Learn {
                correction,
                outputs,
            }),
            raw_input_estimate: est.total,
            breakpoints: est
                .breakpoints()
                .iter()
                .filter(|p| p.tokens >= MIN_CACHEABLE)
                .map(|p| p.hash)
                .collect(),
            policy,
            waited: Duration::ZERO,
            cache_reads_count,
            // Given at admission (a refused call never needs it).
            queue: None,
        };
        Prepared::Limited(Waiting {
            permit,
            req: AdmitRequest {
                tenant: call.tenant.clone(),
                scopes,
                demand: Demand {
                    requests: 1,
                    input_tokens: input,
                    output_tokens: output,
                },
                budget,
            },
            priority,
            weight,
            max_wait,
            can_wait: !max_wait.is_zero(),
            started: None,
            queue,
            cost_tokens: input.saturating_add(output),
            unix_ms: call.unix_ms,
            prepared_at_us: now,
        })
    }

    /// What one admission attempt means for the call: admitted, refused for good, or short
    /// of room in the scope at that index for `retry_after_us` and allowed to wait that long.
    /// An admission or a refusal gives up `seat`; a wait keeps it.
    fn decide(
        &self,
        w: &mut Waiting,
        seat: &mut Option<Seat>,
        outcome: Outcome,
        via: Via,
    ) -> Decided {
        let view = TenantView::from_outcome(&w.req, &outcome.views);
        match outcome.result {
            Ok(()) => {
                let queued = seat.is_some();
                if let Some(s) = seat.take() {
                    s.leave(true);
                }
                let waited = w.started.map_or(Duration::ZERO, |t| t.elapsed());
                let st = &self.0.stats;
                st.admitted.fetch_add(1, Ordering::Relaxed);
                if !waited.is_zero() {
                    if queued {
                        st.admitted_after_wait.fetch_add(1, Ordering::Relaxed);
                    }
                    st.wait_us_total.fetch_add(
                        u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                }
                Decided::Admitted(view, via, waited)
            }
            Err(d @ (Denial::Budget { .. } | Denial::NeverFits { .. })) => {
                let r = describe(&w.req, d, view, w.unix_ms);
                Decided::Refused(self.refuse(r, seat.take()))
            }
            Err(
                d @ Denial::Wait {
                    scope,
                    retry_after_us,
                    ..
                },
            ) => {
                let now = Instant::now();
                let deadline = *w.started.get_or_insert(now) + w.max_wait;
                if !w.can_wait || now + Duration::from_micros(retry_after_us) > deadline {
                    let r = describe(&w.req, d, view, w.unix_ms);
                    return Decided::Refused(self.refuse(r, seat.take()));
                }
                Decided::Wait(scope, retry_after_us)
            }
        }
    }

    /// Wait in the class's fair queue (or aside, when only the tenant's own bucket is short)
    /// until the call is admitted, refused, or out of `max_wait_ms`. `first` is the wait the
    /// synchronous attempt already found, if it made one.
    async fn wait_for_room(
        &self,
        mut w: Waiting,
        mut first: Option<(usize, u64)>,
    ) -> Result<Permit, Box<Refused>> {
        let started = *w.started.get_or_insert_with(Instant::now);
        let deadline = started + w.max_wait;
        let mut seat: Option<Seat> = None;
        let queue = w.queue.clone();
        let join = |w: &Waiting, rejoin: Option<Place>| {
            Seat::take(
                &queue,
                &w.req.tenant,
                w.priority,
                w.cost_tokens,
                w.weight,
                rejoin,
            )
        };

        loop {
            let (scope, retry_after_us) = match first.take() {
                Some(wait) => wait,
                None => {
                    if let Some(s) = &seat {
                        if !s.is_head() {
                            if tokio::time::timeout_at(deadline, s.notified())
                                .await
                                .is_err()
                            {
                                let r = Refused {
                                    reason: RefusalReason::OrgPool,
                                    message: format!(
                                        "the shared {} capacity stayed busy for the {} ms tenant '{}' may wait (max_wait_ms); retry shortly",
                                        w.permit.class,
                                        w.max_wait.as_millis(),
                                        w.req.tenant
                                    ),
                                    retry_after_secs: 1,
                                    should_retry: true,
                                    view: self.current_view(&w.req),
                                };
                                return Err(self.refuse(r, seat));
                            }
                            continue;
                        }
                    } else if w.can_wait && w.queue.busy_at_or_above(w.priority) {
                        seat = Some(join(&w, None));
                        continue;
                    }

                    let (outcome, via) = match self.admit_once(&w.req).await {
                        Ok(o) => o,
                        Err(e) => {
                            let r = Refused {
                                reason: RefusalReason::Unavailable,
                                message: format!(
                                    "the rate limiter is unavailable ({e}) and this gateway is configured to refuse calls until it is back; retry shortly"
                                ),
                                retry_after_secs: 1,
                                should_retry: true,
                                view: TenantView::default(),
                            };
                            return Err(self.refuse(r, seat));
                        }
                    };
                    match self.decide(&mut w, &mut seat, outcome, via) {
                        Decided::Admitted(view, via, waited) => {
                            return Ok(w.admitted(view, via, waited));
                        }
                        Decided::Refused(r) => return Err(r),
                        Decided::Wait(scope, retry_after_us) => (scope, retry_after_us),
                    }
                }
            };
            let wait = Duration::from_micros(retry_after_us);
            let is_org = w
                .req
                .scopes
                .get(scope)
                .is_some_and(|s| s.kind == ScopeKind::Org);
            if is_org {
                let s = seat.get_or_insert_with(|| join(&w, None));
                if s.is_head() {
                    // Sleep until the pool has room for us, or until a refund pokes us.
                    let _ = tokio::time::timeout(wait, s.notified()).await;
                }
            } else {
                // Our own tenant's bucket is short: step aside so the rest of the class is not
                // held up, and come back to the same place.
                let old = seat.take().map(|s| s.leave(false));
                tokio::time::sleep(wait).await;
                if let Some(p) = old {
                    seat = Some(join(&w, Some(p)));
                }
            }
        }
    }

    fn refuse(&self, r: Refused, seat: Option<Seat>) -> Box<Refused> {
        if let Some(s) = seat {
            s.leave(false);
        }
        let c = match r.reason {
            RefusalReason::TenantRate => &self.0.stats.refused_tenant,
            RefusalReason::OrgPool => &self.0.stats.refused_org,
            RefusalReason::Budget => &self.0.stats.refused_budget,
            RefusalReason::Unavailable => &self.0.stats.refused_unavailable,
        };
        c.fetch_add(1, Ordering::Relaxed);
        Box::new(r)
    }
    /// The tenant's buckets now, without admitting anything.
    fn current_view(&self, req: &AdmitRequest) -> TenantView {
        match &self.0.backend {
            Backend::Local(b) => {
                let now = self.now_us();
                let views: Vec<ScopeView> = req.scopes.iter().map(|s| b.view(s, now)).collect();
                TenantView::from_outcome(req, &views)
            }
            Backend::Redis(_) => TenantView::default(),
        }
    }
}

fn ppm(share: f64) -> u32 {
    (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
}

/// Seconds, rounded up, and at least 1 (a `retry-after: 0` makes SDKs retry at once).
fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000).max(1)
}

/// The words of a refusal.
fn describe(req: &AdmitRequest, d: Denial, view: TenantView, unix_ms: i64) -> Refused {
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

/// The UTC day (days since the epoch) and month (`year * 12 + month - 1`) of `unix_ms`.
pub fn day_and_month(unix_ms: i64) -> (u32, u32) {
    let days = unix_ms.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    (
        u32::try_from(days).unwrap_or(0),
        u32::try_from(y * 12 + i64::from(m) - 1).unwrap_or(0),
    )
}

/// The first Unix ms of the UTC day and of the UTC month containing `unix_ms` (to seed
/// budgets from the ledger).
pub fn period_starts(unix_ms: i64) -> (i64, i64) {
    let days = unix_ms.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    (days * 86_400_000, days_from_civil(y, m, 1) * 86_400_000)
}

fn until_period_end(period: Period, unix_ms: i64) -> u64 {
    let days = unix_ms.div_euclid(86_400_000);
    let end_ms = match period {
        Period::Day => (days + 1) * 86_400_000,
        Period::Month => {
            let (y, m, _) = civil_from_days(days);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(ny, nm, 1) * 86_400_000
        }
    };
    u64::try_from((end_ms - unix_ms).max(0) / 1000).unwrap_or(0)
}

/// Howard Hinnant's civil-from-days: (year, month 1-12, day 1-31) of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn remembered_models_keep_their_class_and_the_memo_stays_bounded() {
        let cfg = Config::from_toml("").unwrap();
        let p = Policy::build(&cfg).unwrap();
        let (i, a) = p.model_info("claude-sonnet-4-5");
        let (j, b) = p.model_info("claude-sonnet-4-5");
        assert_eq!((i, &*a), (j, "claude-sonnet-4-5"));
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second call shares the first's name"
        );
        assert_eq!(p.class_names.get(i), Some(p.class_of("claude-sonnet-4-5")));
        for n in 0..MODELS_REMEMBERED + 50 {
            for model in [format!("claude-opus-4-{n}"), format!("x-{n}")] {
                let (k, name) = p.model_info(&model);
                assert_eq!(k, p.class_index(&model), "{model}");
                assert_eq!(&*name, model);
            }
        }
        assert!(p.models.len() <= MODELS_REMEMBERED, "{}", p.models.len());
        assert_eq!(p.model_info("claude-sonnet-4-5").0, i);
    }
}
