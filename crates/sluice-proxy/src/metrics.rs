//! Prometheus metrics of the data plane (issue #5): rendered in the text exposition format
//! (0.0.4) for `GET /metrics` on the admin listener.
//!
//! Two kinds of numbers:
//!
//! - **Per call**, recorded by [`Metrics::record`] when a [`crate::call::CallRecorder`]
//!   finishes: requests, outcomes, latency and time to first byte, tokens, cost, 429s by
//!   reason, limiter wait, upstream attempts and retries, upstream errors, fallbacks.
//! - **At scrape**, read by [`render`] from the parts that already count them: member health
//!   (breakers, load, cooldowns), the ledger writer, the limiter and its Redis backend, spend
//!   against budgets, and the alert evaluator's state.
//!
//! Label values come from the configuration, never from request data, so cardinality is
//! bounded by the config: a tenant not in the current config is `other`; a model is its price
//! table name (dated ids and aliases fold into it), or a model the config names (fallback
//! chains, member model maps), else `other` (`none` for calls that name no model); a status is
//! the HTTP status code; an outcome, reason, provider or endpoint comes from a fixed set in the
//! code; a member is a configured member name.
//!
//! The request path is hot, so recording a call does not hash label strings into the metric
//! vectors: the label handles of each (tenant, model) pair are resolved once into a table built
//! per config snapshot (two short `HashMap` lookups find the pair), and the call costs a handful
//! of relaxed atomic increments and two histogram observations. No lock is taken apart from an
//! uncontended read lock over the pair's few (endpoint, status) counters.

use crate::state::AppState;
use arc_swap::ArcSwap;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};
use prometheus::{Opts, Registry, TextEncoder};
use sluice_billing::PriceTable;
use sluice_config::{Config, SharedConfig};
use sluice_limits::limiter::{Backend, Limiter, day_and_month};
use sluice_store::LedgerRow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

/// Seconds: call latency and time to first byte (streams run for minutes).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Seconds a call waited in the limiter's fair queue.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Ledger outcomes (see [`LedgerRow::outcome`]); anything else is counted as `other`.
const OUTCOMES: &[&str] = &[
    "ok",
    "upstream_error",
    "client_closed",
    "stream_error",
    "upstream_disconnected",
    "upstream_truncated",
    "upstream_stalled",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_unavailable",
    "gateway_error",
    "limited_tenant",
    "limited_org",
    "limited_budget",
    "limiter_unavailable",
    "rejected",
    "other",
];

/// Reasons of a 429: the tenant's buckets, the org pool, a budget (the limiter's), or the
/// upstream's own 429 passed through.
const LIMITED: &[&str] = &[
    "limited_tenant",
    "limited_org",
    "limited_budget",
    "upstream_429",
];

/// Providers as the ledger names them.
const PROVIDERS: &[&str] = &["anthropic", "bedrock", "vertex", "other"];

/// Token kinds, in the order of [`TokenTotals`].
const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_write", "cache_read"];

/// Outcomes that say the upstream (or the way to it) failed the call.
const UPSTREAM_FAILURES: &[&str] = &[
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_unavailable",
    "upstream_disconnected",
    "upstream_truncated",
    "upstream_stalled",
    "stream_error",
];

/// Label value of anything outside the configured set.
const OTHER: &str = "other";
/// Model label of calls that name no model (models list, batches).
const NONE: &str = "none";

/// Cumulative tokens of one tenant: input, output, cache writes, cache reads.
pub(crate) type TokenTotals = [u64; 4];

/// The metrics registry of one data plane (cheap to clone).
#[derive(Clone)]
pub struct Metrics(Option<Arc<Inner>>);

struct Inner {
    registry: Registry,
    config: SharedConfig,
    limiter: Limiter,
    /// Configured member names (fixed for the process: members change only with a restart).
    members: Vec<Arc<str>>,
    requests: IntCounterVec,
    outcomes: IntCounterVec,
    latency: HistogramVec,
    ttfb: HistogramVec,
    tokens: IntCounterVec,
    cost: IntCounterVec,
    limited: IntCounterVec,
    wait: HistogramVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    upstream_calls: IntCounterVec,
    upstream_errors: IntCounterVec,
    fallbacks: IntCounterVec,
    alerts_firing: IntGaugeVec,
    alert_notifications: IntCounterVec,
    /// Fallbacks per provider, resolved once.
    fallback_handles: Vec<OnceLock<Option<IntCounter>>>,
    /// Per-member handles (index: `members`, then `none` for calls no member took).
    member_handles: Vec<OnceLock<Option<MemberSeries>>>,
    /// Label handles of the current config snapshot.
    table: ArcSwap<Table>,
    /// Scrapes are rare; one at a time keeps their output whole.
    scrape: Mutex<()>,
}

/// The label handles of one config snapshot.
struct Table {
    /// Kept alive so its address identifies the snapshot.
    config: Option<Arc<Config>>,
    prices: Arc<PriceTable>,
    tenants: HashMap<Box<str>, usize>,
    /// Tenant label values; the last is `other`.
    tenant_names: Vec<Arc<str>>,
    models: HashMap<Box<str>, usize>,
    /// Model label values; the last two are `none` and `other`.
    model_names: Vec<Arc<str>>,
    /// `tenant × model`, created on first use.
    pairs: Vec<OnceLock<Option<Series>>>,
    per_tenant: Vec<OnceLock<Option<TenantSeries>>>,
}

/// Handles of one (tenant, model).
struct Series {
    latency: Histogram,
    ttfb: Histogram,
    tokens: [IntCounter; 4],
    cost: IntCounter,
    tenant: Arc<str>,
    model: Arc<str>,
    /// (endpoint, status) → requests: a handful per pair, scanned.
    requests: RwLock<Vec<(&'static str, u16, IntCounter)>>,
}

/// Handles of one tenant.
struct TenantSeries {
    outcomes: Vec<IntCounter>,
    limited: Vec<IntCounter>,
    wait: Histogram,
}

/// Handles of one upstream member.
struct MemberSeries {
    attempts: IntCounter,
    retries: IntCounter,
    calls: IntCounter,
    errors: IntCounter,
}

fn child<B: MetricVecBuilder>(v: &MetricVec<B>, labels: &[&str]) -> Option<B::M> {
    v.get_metric_with_label_values(labels).ok()
}

fn counter(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    reg.register(Box::new(v.clone()))?;
    Ok(v)
}

impl Metrics {
    /// A registry for the data plane over `config` (label sets follow its snapshots) and
    /// `limiter` (its price table names the models); `members` are the upstream members.
    pub fn new(config: SharedConfig, limiter: Limiter, members: Vec<Arc<str>>) -> Self {
        match Self::build(config, limiter, members) {
            Ok(inner) => Self(Some(Arc::new(inner))),
            Err(e) => {
                // Only a programming error (a bad metric name) gets here: serve without
                // metrics rather than refuse to serve.
                tracing::error!(error = %e, "cannot build the metrics registry; metrics are off");
                Self(None)
            }
        }
    }

    fn build(
        config: SharedConfig,
        limiter: Limiter,
        members: Vec<Arc<str>>,
    ) -> prometheus::Result<Inner> {
        let r = Registry::new();
        let tm = &["tenant", "model"];
        let alerts_firing = IntGaugeVec::new(
            Opts::new(
                "sluice_alerts_firing",
                "Alert episodes firing now, by rule.",
            ),
            &["alert"],
        )?;
        r.register(Box::new(alerts_firing.clone()))?;
        for a in crate::alerts::RULES {
            alerts_firing.with_label_values(&[*a]).set(0);
        }
        let alert_notifications = counter(
            &r,
            "sluice_alert_notifications_total",
            "Alert webhook notifications by state (firing, resolved) and result (delivered, failed, dropped).",
            &["state", "result"],
        )?;
        let inner = Inner {
            requests: counter(
                &r,
                "sluice_requests_total",
                "Authenticated calls by tenant, model, endpoint and HTTP status sent to the client.",
                &["tenant", "model", "endpoint", "status"],
            )?,
            outcomes: counter(
                &r,
                "sluice_request_outcomes_total",
                "Authenticated calls by tenant and ledger outcome.",
                &["tenant", "outcome"],
            )?,
            latency: histogram(
                &r,
                "sluice_request_duration_seconds",
                "Time from the call's arrival to its last byte.",
                tm,
                LATENCY_BUCKETS,
            )?,
            ttfb: histogram(
                &r,
                "sluice_time_to_first_byte_seconds",
                "Time from the call's arrival to the upstream's response headers.",
                tm,
                LATENCY_BUCKETS,
            )?,
            tokens: counter(
                &r,
                "sluice_tokens_total",
                "Tokens by tenant, model and kind (input: uncached input; cache_write; cache_read; output).",
                &["tenant", "model", "kind"],
            )?,
            cost: counter(
                &r,
                "sluice_cost_microdollars_total",
                "Cost from the price table, in micro-dollars (1e-6 USD).",
                tm,
            )?,
            limited: counter(
                &r,
                "sluice_rate_limited_total",
                "429s by tenant and reason (limited_tenant, limited_org, limited_budget, upstream_429).",
                &["tenant", "reason"],
            )?,
            wait: histogram(
                &r,
                "sluice_limiter_wait_seconds",
                "Time admitted Messages calls waited in the limiter's fair queue.",
                &["tenant"],
                WAIT_BUCKETS,
            )?,
            attempts: counter(
                &r,
                "sluice_upstream_attempts_total",
                "Upstream attempts (retries + 1 per call that reached a member), by member and provider.",
                &["member", "provider"],
            )?,
            retries: counter(
                &r,
                "sluice_upstream_retries_total",
                "Upstream retries by member and provider.",
                &["member", "provider"],
            )?,
            upstream_calls: counter(
                &r,
                "sluice_upstream_calls_total",
                "Calls that went to the upstream (or found no member available: member=\"none\").",
                &["member"],
            )?,
            upstream_errors: counter(
                &r,
                "sluice_upstream_errors_total",
                "Upstream calls that failed: 5xx/529, unreachable, timeout, no member available, broken stream.",
                &["member"],
            )?,
            fallbacks: counter(
                &r,
                "sluice_fallbacks_total",
                "Calls served by a fallback step, by the provider that served them.",
                &["provider"],
            )?,
            alerts_firing,
            alert_notifications,
            fallback_handles: PROVIDERS.iter().map(|_| OnceLock::new()).collect(),
            member_handles: (0..=members.len()).map(|_| OnceLock::new()).collect(),
            table: ArcSwap::from_pointee(Table::empty()),
            scrape: Mutex::new(()),
            registry: r,
            config,
            limiter,
            members,
        };
        // Fallbacks are rare: their series exist from the start, so a rate is 0, not absent.
        for (p, h) in PROVIDERS.iter().zip(&inner.fallback_handles).take(3) {
            let _ = h.set(child(&inner.fallbacks, &[p]));
        }
        // Alert notification counters exist from the start, so rates are defined.
        for s in ["firing", "resolved"] {
            for res in ["delivered", "failed", "dropped"] {
                let _ = child(&inner.alert_notifications, &[s, res]);
            }
        }
        Ok(inner)
    }

    /// Count one finished call. Called once per call by [`crate::call::CallRecorder`].
    pub fn record(&self, row: &LedgerRow) {
        let Some(m) = &self.0 else { return };
        let table = m.table();
        let t = table.tenant_index(&row.tenant);
        let md = table.model_index(row.model.as_deref());
        if let Some(s) = table.pair(m, t, md) {
            s.count_request(m, row.endpoint, row.status);
            s.latency.observe(ms_to_secs(row.latency_ms));
            if let Some(ttfb) = row.ttfb_ms {
                s.ttfb.observe(ms_to_secs(ttfb));
            }
            let u = &row.usage;
            let counts = [
                u.input_tokens,
                u.output_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens,
            ];
            for (c, n) in s.tokens.iter().zip(counts) {
                if n > 0 {
                    c.inc_by(n);
                }
            }
            if let Some(c) = row.cost_micros.and_then(|c| u64::try_from(c).ok())
                && c > 0
            {
                s.cost.inc_by(c);
            }
        }
        if let Some(ts) = table.tenant(m, t) {
            let o = OUTCOMES
                .iter()
                .position(|o| *o == row.outcome)
                .unwrap_or(OUTCOMES.len() - 1);
            if let Some(c) = ts.outcomes.get(o) {
                c.inc();
            }
            let reason = match LIMITED.iter().position(|r| *r == row.outcome) {
                Some(i) => Some(i),
                None if row.status == 429 => Some(LIMITED.len() - 1),
                None => None,
            };
            if let Some(c) = reason.and_then(|i| ts.limited.get(i)) {
                c.inc();
            }
            if row.endpoint == "messages" && admitted(row.outcome) {
                ts.wait.observe(ms_to_secs(row.waited_ms));
            }
        }
        let reached = row.provider.is_some();
        if reached || row.outcome == "upstream_unavailable" {
            let idx = match (reached, row.upstream.as_deref()) {
                (true, Some(name)) => m
                    .members
                    .iter()
                    .position(|n| &**n == name)
                    .unwrap_or(m.members.len()),
                _ => m.members.len(),
            };
            if let Some(ms) = m.member(idx, row.provider) {
                ms.calls.inc();
                if reached {
                    ms.attempts.inc_by(u64::from(row.retries) + 1);
                    if row.retries > 0 {
                        ms.retries.inc_by(u64::from(row.retries));
                    }
                }
                if upstream_failed(row) {
                    ms.errors.inc();
                }
            }
        }
        if row.fallback > 0 {
            let p = row
                .provider
                .and_then(|p| PROVIDERS.iter().position(|x| *x == p))
                .unwrap_or(PROVIDERS.len() - 1);
            if let Some(Some(c)) = m.fallback_handles.get(p).map(|h| {
                h.get_or_init(|| child(&m.fallbacks, &[PROVIDERS.get(p).copied().unwrap_or(OTHER)]))
            }) {
                c.inc();
            }
        }
    }

    /// Cumulative tokens per tenant label (for the cache hit rate alert).
    pub(crate) fn tokens_by_tenant(&self) -> HashMap<String, TokenTotals> {
        let mut out: HashMap<String, TokenTotals> = HashMap::new();
        let Some(m) = &self.0 else { return out };
        for fam in m.tokens.collect() {
            for metric in fam.get_metric() {
                let (mut tenant, mut kind) = (None, None);
                for l in metric.get_label() {
                    match l.name() {
                        "tenant" => tenant = Some(l.value()),
                        "kind" => kind = TOKEN_KINDS.iter().position(|k| *k == l.value()),
                        _ => {}
                    }
                }
                if let (Some(t), Some(k)) = (tenant, kind)
                    && let Some(slot) = out.entry(t.to_owned()).or_default().get_mut(k)
                {
                    *slot += metric.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// Cumulative upstream calls and failed ones, over every member.
    pub(crate) fn upstream_totals(&self) -> (u64, u64) {
        let Some(m) = &self.0 else { return (0, 0) };
        let sum = |v: &IntCounterVec| -> u64 {
            v.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|x| x.get_counter().get_value() as u64)
                .sum()
        };
        (sum(&m.upstream_calls), sum(&m.upstream_errors))
    }

    /// Set how many episodes of `rule` are firing.
    pub(crate) fn set_alerts_firing(&self, rule: &str, n: usize) {
        if let Some(m) = &self.0
            && let Some(g) = child(&m.alerts_firing, &[rule])
        {
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Count an alert notification's fate.
    pub(crate) fn alert_notification(&self, state: &str, result: &str) {
        if let Some(m) = &self.0
            && let Some(c) = child(&m.alert_notifications, &[state, result])
        {
            c.inc();
        }
    }
}

impl Inner {
    /// The label table of the current config snapshot, rebuilt when the snapshot changed.
    fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        let cfg = self.config.load();
        let t = self.table.load();
        if t.config
            .as_ref()
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), Arc::as_ptr(&cfg)))
        {
            return t;
        }
        let cfg = arc_swap::Guard::into_inner(cfg);
        let prices = self.limiter.policy(&cfg).prices().clone();
        // Two calls may both rebuild after a reload; either table is right, and the label
        // handles they resolve are the same series in the registry.
        self.table.store(Arc::new(Table::build(cfg, prices)));
        self.table.load()
    }

    fn member(&self, idx: usize, provider: Option<&'static str>) -> Option<&MemberSeries> {
        self.member_handles
            .get(idx)?
            .get_or_init(|| {
                let name = self.members.get(idx).map_or("none", |n| &**n);
                let p = provider.unwrap_or(NONE);
                Some(MemberSeries {
                    attempts: child(&self.attempts, &[name, p])?,
                    retries: child(&self.retries, &[name, p])?,
                    calls: child(&self.upstream_calls, &[name])?,
                    errors: child(&self.upstream_errors, &[name])?,
                })
            })
            .as_ref()
    }
}

impl Table {
    fn empty() -> Self {
        Self {
            config: None,
            prices: Arc::default(),
            tenants: HashMap::new(),
            tenant_names: vec![Arc::from(OTHER)],
            models: HashMap::new(),
            model_names: vec![Arc::from(NONE), Arc::from(OTHER)],
            pairs: Vec::new(),
            per_tenant: Vec::new(),
        }
    }

    fn build(cfg: Arc<Config>, prices: Arc<PriceTable>) -> Self {
        let mut tenant_names: Vec<Arc<str>> =
            cfg.tenants.iter().map(|t| Arc::from(&*t.name)).collect();
        let tenants = tenant_names
            .iter()
            .enumerate()
            .map(|(i, n)| (Box::from(&**n), i))
            .collect();
        tenant_names.push(Arc::from(OTHER));
        let mut model_names: Vec<Arc<str>> = Vec::new();
        let mut models: HashMap<Box<str>, usize> = HashMap::new();
        let configured = cfg
            .upstream
            .fallbacks
            .iter()
            .flat_map(|f| {
                std::iter::once(f.model.as_str())
                    .chain(f.then.iter().filter_map(|s| s.model.as_deref()))
            })
            .chain(
                cfg.upstream
                    .members
                    .iter()
                    .flat_map(|m| m.models.keys().map(String::as_str)),
            )
            .filter(|m| *m != "*");
        for name in prices.models().map(|p| p.model.as_str()).chain(configured) {
            if !models.contains_key(name) {
                models.insert(Box::from(name), model_names.len());
                model_names.push(Arc::from(name));
            }
        }
        model_names.push(Arc::from(NONE));
        model_names.push(Arc::from(OTHER));
        let pairs = (0..tenant_names.len() * model_names.len())
            .map(|_| OnceLock::new())
            .collect();
        let per_tenant = tenant_names.iter().map(|_| OnceLock::new()).collect();
        Self {
            config: Some(cfg),
            prices,
            tenants,
            tenant_names,
            models,
            model_names,
            pairs,
            per_tenant,
        }
    }

    fn tenant_index(&self, tenant: &str) -> usize {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.tenant_names.len() - 1)
    }

    fn model_index(&self, model: Option<&str>) -> usize {
        let other = self.model_names.len() - 1;
        let Some(model) = model else {
            return other - 1;
        };
        if let Some(&i) = self.models.get(model) {
            return i;
        }
        // A dated snapshot id or alias: its price table entry names it.
        self.prices
            .lookup(model)
            .and_then(|p| self.models.get(p.model.as_str()).copied())
            .unwrap_or(other)
    }

    fn pair(&self, m: &Inner, t: usize, md: usize) -> Option<&Series> {
        let name_t = self.tenant_names.get(t)?;
        let name_m = self.model_names.get(md)?;
        self.pairs
            .get(t * self.model_names.len() + md)?
            .get_or_init(|| {
                let l = &[&**name_t, &**name_m];
                let k = |kind: &str| child(&m.tokens, &[&**name_t, &**name_m, kind]);
                Some(Series {
                    latency: child(&m.latency, l)?,
                    ttfb: child(&m.ttfb, l)?,
                    tokens: [
                        k(TOKEN_KINDS[0])?,
                        k(TOKEN_KINDS[1])?,
                        k(TOKEN_KINDS[2])?,
                        k(TOKEN_KINDS[3])?,
                    ],
                    cost: child(&m.cost, l)?,
                    tenant: name_t.clone(),
                    model: name_m.clone(),
                    requests: RwLock::new(Vec::new()),
                })
            })
            .as_ref()
    }

    fn tenant(&self, m: &Inner, t: usize) -> Option<&TenantSeries> {
        let name = self.tenant_names.get(t)?;
        self.per_tenant
            .get(t)?
            .get_or_init(|| {
                Some(TenantSeries {
                    outcomes: OUTCOMES
                        .iter()
                        .map(|o| child(&m.outcomes, &[&**name, o]))
                        .collect::<Option<_>>()?,
                    limited: LIMITED
                        .iter()
                        .map(|r| child(&m.limited, &[&**name, r]))
                        .collect::<Option<_>>()?,
                    wait: child(&m.wait, &[&**name])?,
                })
            })
            .as_ref()
    }
}

impl Series {
    /// Count a request of (endpoint, status): its counter is found under a read lock among the
    /// few this pair has seen, and created once otherwise.
    fn count_request(&self, m: &Inner, endpoint: &'static str, status: u16) {
        let hit = |v: &[(&'static str, u16, IntCounter)]| {
            v.iter()
                .find(|(e, s, _)| *s == status && *e == endpoint)
                .map(|(_, _, c)| c.inc())
                .is_some()
        };
        if hit(&self.requests.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        let mut w = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if hit(&w) {
            return;
        }
        let code = status.to_string();
        if let Some(c) = child(
            &m.requests,
            &[&*self.tenant, &*self.model, endpoint, code.as_str()],
        ) {
            c.inc();
            w.push((endpoint, status, c));
        }
    }
}

fn ms_to_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The call went through admission (so its wait means something).
fn admitted(outcome: &str) -> bool {
    !matches!(
        outcome,
        "rejected" | "limited_tenant" | "limited_org" | "limited_budget" | "limiter_unavailable"
    )
}

/// The upstream, or the way to it, failed the call: a 5xx (529 included) reply, or one of the
/// failure outcomes. Client errors (4xx) and 429s are the caller's or the quota's, not the
/// upstream's health.
pub(crate) fn upstream_failed(row: &LedgerRow) -> bool {
    UPSTREAM_FAILURES.contains(&row.outcome)
        || (row.outcome == "upstream_error" && row.status >= 500)
}

/// A tenant's spend so far this UTC day and month (micro-dollars), as the limiter holds it.
/// `None` with the Redis backend, whose spend lives in Redis and has no synchronous read.
pub(crate) fn spend_now(limiter: &Limiter, tenant: &str, unix_ms: i64) -> Option<(u64, u64)> {
    match limiter.backend() {
        Backend::Local(b) => {
            let (day, month) = day_and_month(unix_ms);
            let s = b.spend(tenant);
            Some((
                if s.day == day { s.day_micros } else { 0 },
                if s.month == month { s.month_micros } else { 0 },
            ))
        }
        Backend::Redis(_) => None,
    }
}

/// The metrics in the Prometheus text format (0.0.4).
pub fn render(state: &AppState) -> String {
    let Some(m) = &state.metrics().0 else {
        return String::new();
    };
    let _one = m.scrape.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::with_capacity(64 * 1024);
    if let Err(e) = TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    let mut t = Text(out);
    scrape_upstream(&mut t, state);
    scrape_ledger(&mut t, state);
    scrape_limiter(&mut t, state);
    scrape_budgets(&mut t, state);
    t.0
}

/// Text exposition of the numbers read at scrape.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                for ch in v.chars() {
                    match ch {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// One family with a sample per item.
    fn each<I, F, V>(&mut self, name: &str, kind: &str, help: &str, items: I, f: F)
    where
        I: IntoIterator,
        F: Fn(&I::Item) -> (Vec<(&'static str, String)>, V),
        V: std::fmt::Display,
    {
        self.family(name, kind, help);
        for item in items {
            let (labels, v) = f(&item);
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &l, v);
        }
    }
}

fn scrape_upstream(t: &mut Text, state: &AppState) {
    let health = state.upstream().health();
    let member = |h: &sluice_upstream::pool::MemberHealth| vec![("member", h.name.clone())];
    t.each(
        "sluice_upstream_breaker_state",
        "gauge",
        "Circuit breaker of each member: 0 closed, 1 half open, 2 open.",
        &health,
        |h| {
            let v = match h.state {
                "closed" => 0,
                "half_open" => 1,
                _ => 2,
            };
            (member(h), v)
        },
    );
    t.each(
        "sluice_upstream_in_flight",
        "gauge",
        "Calls on each member now.",
        &health,
        |h| (member(h), h.in_flight),
    );
    t.each(
        "sluice_upstream_cooling_down",
        "gauge",
        "1 while a member cools down after a 429.",
        &health,
        |h| (member(h), u8::from(h.cooling_down_ms > 0)),
    );
    t.each(
        "sluice_upstream_cooldown_seconds",
        "gauge",
        "Seconds of 429 cooldown a member has left.",
        &health,
        |h| (member(h), ms_to_secs(h.cooling_down_ms)),
    );
    t.each(
        "sluice_upstream_consecutive_failures",
        "gauge",
        "Failures of each member since its last success.",
        &health,
        |h| (member(h), h.consecutive_failures),
    );
    t.each(
        "sluice_upstream_member_requests_total",
        "counter",
        "Attempts sent to each member since start.",
        &health,
        |h| (member(h), h.requests),
    );
    t.each(
        "sluice_upstream_member_failures_total",
        "counter",
        "Attempts to each member that failed (connect error, timeout, 5xx) since start.",
        &health,
        |h| (member(h), h.failures),
    );
}

fn scrape_ledger(t: &mut Text, state: &AppState) {
    let s = state.ledger().stats();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (queued, written, dropped, errors) = (
        get(&s.queued),
        get(&s.written),
        get(&s.dropped),
        get(&s.write_errors),
    );
    // `dropped` mixes rows refused at a full queue (never queued) with rows lost by a failed
    // write (queued): without write errors every drop is of the first kind and the depth is
    // exact; with them it is a lower bound.
    let depth = if errors == 0 {
        queued.saturating_sub(written)
    } else {
        queued.saturating_sub(written.saturating_add(dropped))
    };
    let rows: [(&str, &str, &str, u64); 6] = [
        (
            "sluice_ledger_queue_depth",
            "gauge",
            "Ledger rows waiting for the writer thread.",
            depth,
        ),
        (
            "sluice_ledger_rows_queued_total",
            "counter",
            "Ledger rows handed to the queue.",
            queued,
        ),
        (
            "sluice_ledger_rows_written_total",
            "counter",
            "Ledger rows committed.",
            written,
        ),
        (
            "sluice_ledger_rows_dropped_total",
            "counter",
            "Ledger rows refused at a full queue or lost by a failed write.",
            dropped,
        ),
        (
            "sluice_ledger_write_errors_total",
            "counter",
            "Ledger batch writes that failed.",
            errors,
        ),
        (
            "sluice_ledger_writer_up",
            "gauge",
            "1 while the ledger writer thread runs.",
            u64::from(s.alive.load(Ordering::Relaxed)),
        ),
    ];
    for (name, kind, help, v) in rows {
        t.family(name, kind, help);
        t.sample(name, &[], v);
    }
}

fn scrape_limiter(t: &mut Text, state: &AppState) {
    let l = state.limiter();
    let s = l.stats();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    t.family(
        "sluice_limiter_admitted_total",
        "counter",
        "Calls the limiter admitted.",
    );
    t.sample("sluice_limiter_admitted_total", &[], get(&s.admitted));
    t.family(
        "sluice_limiter_admitted_after_wait_total",
        "counter",
        "Calls the limiter admitted after they waited in the queue.",
    );
    t.sample(
        "sluice_limiter_admitted_after_wait_total",
        &[],
        get(&s.admitted_after_wait),
    );
    t.family(
        "sluice_limiter_refused_total",
        "counter",
        "Calls the limiter refused, by reason.",
    );
    for (reason, v) in [
        ("tenant_rate", &s.refused_tenant),
        ("org_pool", &s.refused_org),
        ("budget", &s.refused_budget),
        ("limiter_unavailable", &s.refused_unavailable),
    ] {
        t.sample(
            "sluice_limiter_refused_total",
            &[("reason", reason)],
            get(v),
        );
    }
    t.family(
        "sluice_limiter_wait_seconds_total",
        "counter",
        "Seconds admitted calls waited in the queue, in all.",
    );
    t.sample(
        "sluice_limiter_wait_seconds_total",
        &[],
        get(&s.wait_us_total) as f64 / 1e6,
    );
    t.family(
        "sluice_limiter_queue_depth",
        "gauge",
        "Calls waiting for room in each model class's fair queue.",
    );
    for (class, depth) in l.queue_depths() {
        t.sample("sluice_limiter_queue_depth", &[("class", &class)], depth);
    }
    // Bucket headroom (in-process limiter; Redis holds the shared state and exports it).
    let cfg = state.config();
    let buckets = l.headroom(&cfg);
    for (name, help, pick) in [
        (
            "sluice_bucket_limit",
            "Per-minute limit of each configured bucket: scope tenant | tenant_class | org, by tenant, class and dimension.",
            true,
        ),
        (
            "sluice_bucket_remaining",
            "What is left in each configured bucket now (0 while in debt).",
            false,
        ),
    ] {
        t.family(name, "gauge", help);
        for h in &buckets {
            let scope = match h.kind {
                sluice_limits::backend::ScopeKind::Tenant => "tenant",
                sluice_limits::backend::ScopeKind::TenantClass => "tenant_class",
                sluice_limits::backend::ScopeKind::Org => "org",
            };
            let tenant = h.tenant.as_deref().unwrap_or("");
            let class = h.class.as_deref().unwrap_or("");
            let dim = crate::alerts::dimension_name(h.dimension);
            t.sample(
                name,
                &[
                    ("class", class),
                    ("dimension", dim),
                    ("scope", scope),
                    ("tenant", tenant),
                ],
                if pick { h.limit } else { h.remaining },
            );
        }
    }
    let (backend, status) = match l.backend() {
        Backend::Local(_) => ("local", None),
        Backend::Redis(r) => ("redis", Some(r.status())),
    };
    t.family(
        "sluice_limiter_backend",
        "gauge",
        "The limiter's backend (the sample with value 1).",
    );
    t.sample("sluice_limiter_backend", &[("backend", backend)], 1);
    let st = status.unwrap_or_default();
    let redis: [(&str, &str, &str, u64); 7] = [
        (
            "sluice_limiter_redis_up",
            "gauge",
            "1 while Redis is reachable and in use (0 with the local backend).",
            u64::from(st.up),
        ),
        (
            "sluice_limiter_redis_fallback_active",
            "gauge",
            "1 while Redis is down and fail_mode applies (local fallback, closed or open).",
            u64::from(status.is_some_and(|s| !s.up)),
        ),
        (
            "sluice_limiter_redis_fallbacks_total",
            "counter",
            "Admissions answered without Redis.",
            st.fallbacks_total,
        ),
        (
            "sluice_limiter_redis_errors_total",
            "counter",
            "Redis calls that failed or timed out.",
            st.errors_total,
        ),
        (
            "sluice_limiter_redis_outages_total",
            "counter",
            "Times Redis went from up to down.",
            st.outages_total,
        ),
        (
            "sluice_limiter_redis_settle_dropped_total",
            "counter",
            "Settlements dropped (queue or outage buffer full).",
            st.settle_dropped,
        ),
        (
            "sluice_limiter_redis_settle_pending",
            "gauge",
            "Settlements queued and not yet applied to Redis.",
            st.settle_pending,
        ),
    ];
    for (name, kind, help, v) in redis {
        t.family(name, kind, help);
        t.sample(name, &[], v);
    }
}

fn scrape_budgets(t: &mut Text, state: &AppState) {
    let cfg = state.config();
    let now = state.clock().unix_ms();
    let limiter = state.limiter();
    let budgets: Vec<(&str, &str, Option<f64>)> = cfg
        .tenants
        .iter()
        .flat_map(|x| {
            [
                ("day", x.name.as_str(), x.budget_daily_usd),
                ("month", x.name.as_str(), x.budget_monthly_usd),
            ]
        })
        .collect();
    t.family(
        "sluice_tenant_budget_microdollars",
        "gauge",
        "Each tenant's spend budget per period (day, month), in micro-dollars.",
    );
    for (period, tenant, b) in &budgets {
        if let Some(b) = b {
            t.sample(
                "sluice_tenant_budget_microdollars",
                &[("tenant", tenant), ("period", period)],
                sluice_config::usd_to_micros(*b),
            );
        }
    }
    t.family(
        "sluice_tenant_spend_microdollars",
        "gauge",
        "Each tenant's spend this UTC day and month as the limiter holds it (reserved and settled), in micro-dollars (local backend only).",
    );
    for x in &cfg.tenants {
        if let Some((day, month)) = spend_now(limiter, &x.name, now) {
            t.sample(
                "sluice_tenant_spend_microdollars",
                &[("tenant", &x.name), ("period", "day")],
                day,
            );
            t.sample(
                "sluice_tenant_spend_microdollars",
                &[("tenant", &x.name), ("period", "month")],
                month,
            );
        }
    }
}
