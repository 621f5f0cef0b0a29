//! Recording one call: the data plane's only telemetry work on the request path.
//!
//! The request path is hot, so recording a call does not hash label strings into the metric
//! vectors: the label handles of each (tenant, model) pair are resolved once into a table built
//! per config snapshot (two short `HashMap` lookups find the pair), and the call costs a handful
//! of relaxed atomic increments and two histogram observations. No lock is taken apart from an
//! uncontended read lock over the pair's few (endpoint, status) counters.

use super::{
    CACHE_RESULTS, CacheResult, Inner, LIMITED, Metrics, NONE, OTHER, OUTCOMES, PROVIDERS,
    SAVING_KINDS, TOKEN_KINDS, UPSTREAM_FAILURES, child, ms_to_secs,
};
use prometheus::{Histogram, IntCounter};
use sluice_billing::PriceTable;
use sluice_config::Config;
use sluice_store::LedgerRow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

impl Metrics {
    /// Count one response-cache decision of a tenant's Messages call.
    pub fn record_response_cache(&self, tenant: &str, result: CacheResult) {
        let Some(m) = &self.0 else { return };
        let table = m.table();
        let t = table.tenant_index(tenant);
        if let Some(c) = table
            .tenant(m, t)
            .and_then(|ts| ts.response_cache.get(result as usize))
        {
            c.inc();
        }
    }

    /// Count one finished call. Called once per call by the data plane's `CallRecorder`.
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
            if let Ok(saved) = u64::try_from(row.saved_micros)
                && saved > 0
            {
                // A counter cannot fall: a call whose write premium outweighed its reads adds
                // nothing here (the ledger keeps the negative figure).
                let kind = usize::from(row.outcome == "cache_hit");
                if let Some(c) = ts.saved.get(kind) {
                    c.inc_by(saved);
                }
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
}

/// The label handles of one config snapshot.
pub(super) struct Table {
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
    /// Micro-dollars saved, by [`SAVING_KINDS`].
    saved: Vec<IntCounter>,
    /// Response-cache decisions, by [`CACHE_RESULTS`].
    response_cache: Vec<IntCounter>,
}

/// Handles of one upstream member.
pub(super) struct MemberSeries {
    attempts: IntCounter,
    retries: IntCounter,
    calls: IntCounter,
    errors: IntCounter,
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
    pub(super) fn empty() -> Self {
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
                    saved: SAVING_KINDS
                        .iter()
                        .map(|k| child(&m.cache_saved, &[&**name, k]))
                        .collect::<Option<_>>()?,
                    response_cache: CACHE_RESULTS
                        .iter()
                        .map(|r| child(&m.response_cache, &[&**name, r]))
                        .collect::<Option<_>>()?,
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
