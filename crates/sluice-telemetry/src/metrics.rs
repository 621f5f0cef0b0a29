//! Prometheus metrics of the data plane (issue #5): the registry, its metric families and the
//! [`Metrics`] handle the data plane records into; [`crate::render()`] turns them into the text
//! exposition format (0.0.4) for `GET /metrics` on the admin listener.
//!
//! Two kinds of numbers:
//!
//! - **Per call**, recorded by [`Metrics::record`] (module `record`) when the data plane's
//!   `CallRecorder` finishes: requests, outcomes, latency and time to first byte, tokens, cost,
//!   429s by reason, limiter wait, upstream attempts and retries, upstream errors, fallbacks.
//! - **At scrape**, read by [`crate::render()`] from the parts that already count them (module
//!   `gauges`): member health (breakers, load, cooldowns), the ledger writer, the
//!   limiter and its Redis backend, spend against budgets, and the alert evaluator's state.
//!
//! Label values come from the configuration, never from request data, so cardinality is
//! bounded by the config: a tenant not in the current config is `other`; a model is its price
//! table name (dated ids and aliases fold into it), or a model the config names (fallback
//! chains, member model maps), else `other` (`none` for calls that name no model); a status is
//! the HTTP status code; an outcome, reason, provider or endpoint comes from a fixed set in the
//! code; a member is a configured member name.

use arc_swap::ArcSwap;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};
use prometheus::{Opts, Registry};
use sluice_config::SharedConfig;
use sluice_limits::limiter::Limiter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod record;

use record::{MemberSeries, Table};

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
    "cache_hit",
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

/// Kinds of cache saving: prompt caching upstream, the gateway's response cache.
const SAVING_KINDS: [&str; 2] = ["prompt", "response"];

/// Response-cache results, in the order of [`CacheResult`].
const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "bypass"];

/// How the response cache answered a call (`sluice_response_cache_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from the cache (coalesced followers included), after admission: a would-be
    /// hit refused with 429 is not counted.
    Hit = 0,
    /// Went upstream, the reply to be stored if it can be (`refresh` included).
    Miss = 1,
    /// Not cached: the client turned the cache off, or the body has no canonical form (a
    /// duplicate key, too deep).
    Bypass = 2,
}

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
pub struct Metrics(pub(crate) Option<Arc<Inner>>);

pub(crate) struct Inner {
    pub(crate) registry: Registry,
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
    cache_saved: IntCounterVec,
    response_cache: IntCounterVec,
    alerts_firing: IntGaugeVec,
    alert_notifications: IntCounterVec,
    /// Fallbacks per provider, resolved once.
    fallback_handles: Vec<OnceLock<Option<IntCounter>>>,
    /// Per-member handles (index: `members`, then `none` for calls no member took).
    member_handles: Vec<OnceLock<Option<MemberSeries>>>,
    /// Label handles of the current config snapshot.
    table: ArcSwap<Table>,
    /// Scrapes are rare; one at a time keeps their output whole.
    pub(crate) scrape: Mutex<()>,
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
            cache_saved: counter(
                &r,
                "sluice_cache_saved_microdollars_total",
                "Micro-dollars the caches saved, by tenant and kind (prompt: cache-read discount of calls whose reads outweighed their write premium; response: the cost of replies answered from the response cache).",
                &["tenant", "kind"],
            )?,
            response_cache: counter(
                &r,
                "sluice_response_cache_requests_total",
                "Messages calls of tenants with a response cache, by result: hit (answered by the gateway, once admitted), miss (went upstream), bypass (the client turned the cache off, or the body is not cacheable).",
                &["tenant", "result"],
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

/// Milliseconds as the seconds Prometheus histograms and gauges use.
pub(crate) fn ms_to_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
