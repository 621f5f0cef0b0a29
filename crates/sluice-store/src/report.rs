//! The capacity report (`sluice report capacity`): per model class, the traffic the upstream
//! saw minute by minute, what was refused and why, how well the prompt cache worked and what it
//! saved, and which published tier the measured traffic needs.
//!
//! The store knows rows, not policy: the caller supplies a [`CapacityPolicy`] (the limiter's
//! model classes, the price table, the tier presets) and this module does the arithmetic, the
//! same on either ledger backend.
//!
//! Definitions (also in docs/operations.md):
//! - *Rates* count Messages calls that reached an Anthropic member (refused calls and calls
//!   served by Bedrock or Vertex, which have quotas of their own, are left out), bucketed by UTC
//!   minute of arrival. Input tokens are those the upstream's input limit counts: uncached
//!   input plus cache writes, plus cache reads for the classes whose limits count them.
//!   p50/p95 are nearest-rank percentiles over the minutes with traffic of that class; `peak`
//!   is the busiest minute.
//! - *429s*: ledger outcomes `limited_tenant`, `limited_org`, `limited_budget` (Sluice's own
//!   refusals) and status 429 otherwise (the upstream's, passed through after retries).
//!   Calls answered from Sluice's response cache (outcome `cache_hit`) never reached an
//!   upstream and are left out of the rates.
//! - *Cache hit rate*: cache reads / (cache reads + cache writes + uncached input), in tokens,
//!   of the calls that reached an upstream (every provider; `cache_hit` rows left out).
//! - *Read discount* (`cache_savings_micros`): cache-read tokens × (input price − cache-read
//!   price) of their model, base (short-context) prices, in micro-dollars: the gross figure.
//! - *Savings* (`prompt_cache_saved_micros`, `response_cache_saved_micros`): sums of the
//!   ledger's `saved_micros`, the net figures the data plane recorded per call: for the prompt
//!   cache the read discount minus the write premium (at the prices, tiers and batch discount
//!   each call was billed at), for the response cache the cost each stored reply had.

use crate::StoreError;
use crate::usage::{Arg, LedgerDb, Val, utc_date};
use std::collections::BTreeMap;

/// The time range.
#[derive(Debug, Clone, Copy)]
pub struct CapacityQuery {
    /// Inclusive start (Unix ms).
    pub since_ms: i64,
    /// Exclusive end (Unix ms).
    pub until_ms: i64,
}

/// Published per-minute limits of one class in one tier (`None`: not limited / not published).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassLimits {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute.
    pub input_tokens_per_minute: Option<u64>,
    /// Output tokens per minute.
    pub output_tokens_per_minute: Option<u64>,
}

/// One tier of the ladder.
#[derive(Debug, Clone, Default)]
pub struct TierLimits {
    /// Its name (`start`, `build`, `scale`).
    pub name: String,
    /// Limits by class; a class left out has no published limits in this tier.
    pub classes: BTreeMap<String, ClassLimits>,
}

/// What the report needs to know beyond the rows.
pub trait CapacityPolicy {
    /// The model class of `model` (the limiter's first-match rule).
    fn class_of(&self, model: &str) -> String;
    /// Whether the upstream counts cache reads toward `class`'s input limit.
    fn cache_reads_count(&self, class: &str) -> bool;
    /// Micro-dollars per million tokens a cache read of `model` saves over uncached input
    /// (input price − cache-read price); `None` when the model has no price.
    fn cache_saving_per_mtok(&self, model: &str) -> Option<u64>;
    /// The tiers to compare against, smallest first.
    fn tiers(&self) -> Vec<TierLimits>;
}

/// p50, p95 and the peak of a per-minute series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RateStats {
    /// Median minute.
    pub p50: u64,
    /// 95th percentile minute (nearest rank).
    pub p95: u64,
    /// Busiest minute.
    pub peak: u64,
}

/// One class's section of the report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ClassCapacity {
    /// The model class.
    pub class: String,
    /// Minutes with at least one call of this class that reached the upstream.
    pub active_minutes: u64,
    /// Requests per minute.
    pub requests_per_minute: RateStats,
    /// Input tokens per minute (as the upstream's input limit counts them).
    pub input_tokens_per_minute: RateStats,
    /// Output tokens per minute.
    pub output_tokens_per_minute: RateStats,
    /// Start of the busiest minute by input tokens (`2026-01-31T13:05Z`).
    pub peak_minute: Option<String>,
    /// Refused by a tenant's bucket.
    pub limited_tenant: u64,
    /// Refused by the organisation pool.
    pub limited_org: u64,
    /// Refused by a spend budget.
    pub limited_budget: u64,
    /// 429s from the upstream.
    pub upstream_429: u64,
    /// Uncached input tokens (every call of the class, any provider).
    pub uncached_input_tokens: u64,
    /// Cache-write tokens.
    pub cache_write_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// cache reads / (cache reads + writes + uncached input); 0 without input.
    pub cache_hit_rate: f64,
    /// What cache reads saved against uncached input prices (micro-dollars).
    pub cache_savings_micros: u64,
    /// Cache-read tokens of models without a price (not in the savings).
    pub unpriced_cache_read_tokens: u64,
    /// What the prompt cache saved net of the write premium (micro-dollars, from the ledger's
    /// `saved_micros`; negative while writes outweigh reads).
    pub prompt_cache_saved_micros: i64,
    /// What the response cache saved (micro-dollars, from the ledger's `saved_micros`).
    pub response_cache_saved_micros: i64,
    /// Calls answered from the response cache.
    pub response_cache_hits: u64,
    /// Smallest tier whose limits hold the p95 minute on every dimension.
    pub tier_for_p95: String,
    /// Smallest tier whose limits hold the peak minute.
    pub tier_for_peak: String,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CapacityReport {
    /// Inclusive start (Unix ms).
    pub since_ms: i64,
    /// Exclusive end (Unix ms).
    pub until_ms: i64,
    /// The tiers compared against, smallest first.
    pub tiers: Vec<String>,
    /// By class name.
    pub classes: Vec<ClassCapacity>,
    /// Both caches over the whole window, every class.
    pub cache: CacheSummary,
}

/// What the caches did over the report's window, every class together.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CacheSummary {
    /// Token-weighted prompt-cache hit rate: cache reads / (uncached input + cache writes +
    /// cache reads) of the calls that reached an upstream; 0 without input.
    pub cache_hit_rate: f64,
    /// Uncached input tokens.
    pub uncached_input_tokens: u64,
    /// Cache-write tokens.
    pub cache_write_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// What the prompt cache saved, net of the write premium (micro-dollars).
    pub prompt_cache_saved_micros: i64,
    /// What the response cache saved (micro-dollars).
    pub response_cache_saved_micros: i64,
    /// Calls answered from the response cache.
    pub response_cache_hits: u64,
    /// Both caches' savings together (micro-dollars).
    pub saved_micros: i64,
}

const MINUTE_MS: i64 = 60_000;

/// Nearest-rank percentile of `sorted` (ascending).
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank - 1).copied().unwrap_or(0)
}

fn stats(mut v: Vec<u64>) -> RateStats {
    v.sort_unstable();
    RateStats {
        p50: percentile(&v, 50),
        p95: percentile(&v, 95),
        peak: v.last().copied().unwrap_or(0),
    }
}

/// `reads / prompt_tokens` as a rate, 0 without prompt tokens.
fn rate(reads: u64, prompt_tokens: u64) -> f64 {
    crate::usage::hit_rate(
        i64::try_from(reads).unwrap_or(i64::MAX),
        i64::try_from(prompt_tokens).unwrap_or(i64::MAX),
    )
}

fn u(v: &Val) -> u64 {
    u64::try_from(v.int()).unwrap_or(0)
}

/// The smallest tier of `tiers` holding `(requests, input, output)` per minute for `class`.
fn tier_needed(tiers: &[TierLimits], class: &str, need: (u64, u64, u64)) -> String {
    let fits = |lim: Option<u64>, v: u64| lim.is_none_or(|l| v <= l);
    let mut published = false;
    for t in tiers {
        let Some(l) = t.classes.get(class) else {
            continue;
        };
        published = true;
        if fits(l.requests_per_minute, need.0)
            && fits(l.input_tokens_per_minute, need.1)
            && fits(l.output_tokens_per_minute, need.2)
        {
            return t.name.clone();
        }
    }
    match (published, tiers.last()) {
        (true, Some(last)) => format!("above {}", last.name),
        _ => "no published limits".into(),
    }
}

#[derive(Default)]
struct Minute {
    requests: u64,
    input: u64,
    output: u64,
}

impl LedgerDb {
    /// The capacity report for `q` under `policy`. See the module docs for the definitions.
    pub fn capacity(
        &self,
        q: &CapacityQuery,
        policy: &dyn CapacityPolicy,
    ) -> Result<CapacityReport, StoreError> {
        let range = [Arg::Int(q.since_ms), Arg::Int(q.until_ms)];
        let mut classes: BTreeMap<String, ClassCapacity> = BTreeMap::new();
        let mut class_cache: BTreeMap<String, String> = BTreeMap::new();
        let mut class_of = |model: &str| -> String {
            class_cache
                .entry(model.to_owned())
                .or_insert_with(|| policy.class_of(model))
                .clone()
        };

        // Per model and minute, what reached an Anthropic member.
        let rows = self.query(
            "SELECT COALESCE(model, ''), ts_ms / 60000, count(*),
                CAST(sum(input_tokens) AS BIGINT), CAST(sum(output_tokens) AS BIGINT),
                CAST(sum(cache_creation_input_tokens) AS BIGINT),
                CAST(sum(cache_read_input_tokens) AS BIGINT)
             FROM ledger
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND endpoint = 'messages'
               AND outcome NOT IN ('rejected', 'limited_tenant', 'limited_org', 'limited_budget',
                   'limiter_unavailable', 'upstream_unavailable', 'cache_hit')
               AND (provider IS NULL OR provider = 'anthropic')
             GROUP BY COALESCE(model, ''), ts_ms / 60000",
            &range,
            7,
        )?;
        let mut minutes: BTreeMap<String, BTreeMap<i64, Minute>> = BTreeMap::new();
        for r in rows {
            let [model, minute, n, input, output, cw, cr] = <[Val; 7]>::try_from(r)
                .map_err(|_| StoreError::Invalid("capacity query: wrong column count".into()))?;
            let class = class_of(&model.text());
            let mut tokens_in = u(&input) + u(&cw);
            if policy.cache_reads_count(&class) {
                tokens_in += u(&cr);
            }
            let m = minutes
                .entry(class)
                .or_default()
                .entry(minute.int())
                .or_default();
            m.requests += u(&n);
            m.input += tokens_in;
            m.output += u(&output);
        }
        let tiers = policy.tiers();
        for (class, by_minute) in &minutes {
            let c = classes.entry(class.clone()).or_default();
            c.active_minutes = by_minute.len() as u64;
            c.requests_per_minute = stats(by_minute.values().map(|m| m.requests).collect());
            c.input_tokens_per_minute = stats(by_minute.values().map(|m| m.input).collect());
            c.output_tokens_per_minute = stats(by_minute.values().map(|m| m.output).collect());
            c.peak_minute = by_minute
                .iter()
                .max_by_key(|(minute, m)| (m.input, std::cmp::Reverse(**minute)))
                .map(|(minute, _)| {
                    let ms = minute * MINUTE_MS;
                    let in_day = ms.rem_euclid(86_400_000);
                    format!(
                        "{}T{:02}:{:02}Z",
                        utc_date(ms),
                        in_day / 3_600_000,
                        (in_day % 3_600_000) / MINUTE_MS
                    )
                });
        }

        // Refusals by reason.
        let rows = self.query(
            "SELECT COALESCE(model, ''), outcome, count(*) FROM ledger
             WHERE ts_ms >= ?1 AND ts_ms < ?2
               AND (outcome IN ('limited_tenant', 'limited_org', 'limited_budget') OR status = 429)
             GROUP BY COALESCE(model, ''), outcome",
            &range,
            3,
        )?;
        for r in rows {
            let [model, outcome, n] = <[Val; 3]>::try_from(r)
                .map_err(|_| StoreError::Invalid("capacity query: wrong column count".into()))?;
            let c = classes.entry(class_of(&model.text())).or_default();
            let n = u(&n);
            match outcome.text().as_str() {
                "limited_tenant" => c.limited_tenant += n,
                "limited_org" => c.limited_org += n,
                "limited_budget" => c.limited_budget += n,
                _ => c.upstream_429 += n,
            }
        }

        // Both caches, every provider. The prompt cache's tokens are those of calls that
        // reached an upstream; a response-cache hit's row only says what it saved.
        let rows = self.query(
            "SELECT COALESCE(model, ''),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0 ELSE input_tokens END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0 ELSE cache_creation_input_tokens END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0 ELSE cache_read_input_tokens END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 0 ELSE saved_micros END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN saved_micros ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(sum(CASE WHEN outcome = 'cache_hit' THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2
             GROUP BY COALESCE(model, '')",
            &range,
            7,
        )?;
        let mut saved_pico: BTreeMap<String, u128> = BTreeMap::new();
        for r in rows {
            let [model, input, cw, cr, prompt_saved, response_saved, hits] =
                <[Val; 7]>::try_from(r).map_err(|_| {
                    StoreError::Invalid("capacity query: wrong column count".into())
                })?;
            let model = model.text();
            let class = class_of(&model);
            let (input, cw, cr) = (u(&input), u(&cw), u(&cr));
            let (prompt_saved, response_saved, hits) =
                (prompt_saved.int(), response_saved.int(), u(&hits));
            if input + cw + cr == 0
                && prompt_saved == 0
                && hits == 0
                && !classes.contains_key(&class)
            {
                continue;
            }
            let c = classes.entry(class.clone()).or_default();
            c.uncached_input_tokens += input;
            c.cache_write_tokens += cw;
            c.cache_read_tokens += cr;
            c.prompt_cache_saved_micros = c.prompt_cache_saved_micros.saturating_add(prompt_saved);
            c.response_cache_saved_micros =
                c.response_cache_saved_micros.saturating_add(response_saved);
            c.response_cache_hits += hits;
            match policy.cache_saving_per_mtok(&model) {
                // Tokens × µ$/MTok is pico-dollars; summed exactly, rounded once per class.
                Some(rate) => {
                    *saved_pico.entry(class).or_default() += u128::from(cr) * u128::from(rate);
                }
                None => c.unpriced_cache_read_tokens += cr,
            }
        }

        let tier_names = tiers.iter().map(|t| t.name.clone()).collect();
        let mut cache = CacheSummary::default();
        for c in classes.values() {
            cache.uncached_input_tokens += c.uncached_input_tokens;
            cache.cache_write_tokens += c.cache_write_tokens;
            cache.cache_read_tokens += c.cache_read_tokens;
            cache.prompt_cache_saved_micros = cache
                .prompt_cache_saved_micros
                .saturating_add(c.prompt_cache_saved_micros);
            cache.response_cache_saved_micros = cache
                .response_cache_saved_micros
                .saturating_add(c.response_cache_saved_micros);
            cache.response_cache_hits += c.response_cache_hits;
        }
        cache.cache_hit_rate = rate(
            cache.cache_read_tokens,
            cache.cache_read_tokens + cache.cache_write_tokens + cache.uncached_input_tokens,
        );
        cache.saved_micros = cache
            .prompt_cache_saved_micros
            .saturating_add(cache.response_cache_saved_micros);
        let out = classes
            .into_iter()
            .map(|(name, mut c)| {
                c.class.clone_from(&name);
                let denom = c.cache_read_tokens + c.cache_write_tokens + c.uncached_input_tokens;
                c.cache_hit_rate = rate(c.cache_read_tokens, denom);
                let pico = saved_pico.get(&name).copied().unwrap_or(0);
                c.cache_savings_micros =
                    u64::try_from((pico + 500_000) / 1_000_000).unwrap_or(u64::MAX);
                let p95 = (
                    c.requests_per_minute.p95,
                    c.input_tokens_per_minute.p95,
                    c.output_tokens_per_minute.p95,
                );
                let peak = (
                    c.requests_per_minute.peak,
                    c.input_tokens_per_minute.peak,
                    c.output_tokens_per_minute.peak,
                );
                if c.active_minutes == 0 {
                    // Only refusals (or other providers): nothing measured to size a tier by.
                    c.tier_for_p95 = "no traffic".into();
                    c.tier_for_peak = "no traffic".into();
                } else {
                    c.tier_for_p95 = tier_needed(&tiers, &name, p95);
                    c.tier_for_peak = tier_needed(&tiers, &name, peak);
                }
                c
            })
            .collect();
        Ok(CapacityReport {
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            tiers: tier_names,
            classes: out,
            cache,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 95), 95);
        assert_eq!(percentile(&[7], 95), 7);
        assert_eq!(percentile(&[], 95), 0);
        let s = stats(vec![5, 1, 3, 2, 4]);
        assert_eq!((s.p50, s.p95, s.peak), (3, 5, 5));
    }

    #[test]
    fn tier_is_the_smallest_that_holds_every_dimension() {
        let lim = |r, i, o| ClassLimits {
            requests_per_minute: Some(r),
            input_tokens_per_minute: Some(i),
            output_tokens_per_minute: Some(o),
        };
        let tiers = vec![
            TierLimits {
                name: "start".into(),
                classes: [("a".to_string(), lim(10, 100, 10))].into(),
            },
            TierLimits {
                name: "build".into(),
                classes: [("a".to_string(), lim(20, 1000, 100))].into(),
            },
        ];
        assert_eq!(tier_needed(&tiers, "a", (10, 100, 10)), "start");
        assert_eq!(tier_needed(&tiers, "a", (5, 101, 1)), "build");
        assert_eq!(tier_needed(&tiers, "a", (5, 1, 101)), "above build");
        assert_eq!(tier_needed(&tiers, "b", (1, 1, 1)), "no published limits");
    }
}
