//! The numbers read at scrape rather than recorded per call: member health (breakers, load,
//! cooldowns), the ledger writer, the limiter and its Redis backend, spend against budgets.
//! They already live in the parts that count them; the scrape reads them through [`Sources`].

use crate::Sources;
use crate::metrics::ms_to_secs;
use crate::render::Text;
use sluice_limits::limiter::{Backend, Limiter, day_and_month};
use std::sync::atomic::Ordering;

pub(crate) fn scrape_upstream(t: &mut Text, state: &dyn Sources) {
    let health = state.upstream_health();
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

pub(crate) fn scrape_ledger(t: &mut Text, state: &dyn Sources) {
    let s = state.ledger_stats();
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

/// The in-process response cache's size (nothing with the Redis backend, whose size is
/// Redis's own).
pub(crate) fn scrape_response_cache(t: &mut Text, state: &dyn Sources) {
    let Some(s) = state.response_cache_size() else {
        return;
    };
    let rows: [(&str, &str, u64); 3] = [
        (
            "sluice_response_cache_entries",
            "Response-cache entries held in this process.",
            s.entries,
        ),
        (
            "sluice_response_cache_bytes",
            "Bytes the response cache holds in this process (weighted: bodies plus a fixed overhead per entry).",
            s.bytes,
        ),
        (
            "sluice_response_cache_max_bytes",
            "The response cache's bound in bytes (caching.response_cache_max_bytes).",
            s.max_bytes,
        ),
    ];
    for (name, help, v) in rows {
        t.family(name, "gauge", help);
        t.sample(name, &[], v);
    }
}

pub(crate) fn scrape_limiter(t: &mut Text, state: &dyn Sources) {
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

pub(crate) fn scrape_budgets(t: &mut Text, state: &dyn Sources) {
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
