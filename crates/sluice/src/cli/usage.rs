//! `sluice usage` and `sluice report …`: totals and capacity reports over the ledger (SQLite
//! or Postgres), as a table, CSV or JSON.

use super::{Cli, fmt_ms, load_config, now_ms, parse_when};
use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_config::Config;
use sluice_store::{GroupBy, Store, UsageQuery};

/// `sluice usage`.
#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// Start: a duration ago (`24h`, `7d`) or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End: a duration ago or an RFC 3339 time (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by any of tenant, feature, model, key, day, hour (comma-separated; days and hours
    /// are UTC).
    #[arg(long, default_value = "tenant,feature,model", value_delimiter = ',')]
    pub by: Vec<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Output: `table`, `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Same as `--format json`.
    #[arg(long)]
    pub json: bool,
}

/// `sluice report …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// Per model class: sustained and peak per-minute traffic, 429s by reason, prompt-cache hit
    /// rate, what the prompt and response caches saved, and the upstream tier the measured p95
    /// traffic needs.
    Capacity(CapacityArgs),
}

/// `sluice report capacity`.
#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// Start: a duration ago (`7d`) or an RFC 3339 time.
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// End: a duration ago or an RFC 3339 time (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Output: `table`, `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// `sluice usage`.
pub fn usage(cli: &Cli, args: &UsageArgs) -> anyhow::Result<()> {
    let cfg = load_config(cli)?;
    print!("{}", usage_report(&cfg, args, now_ms())?);
    Ok(())
}

/// The ledger of `cfg`: Postgres when `store.database_url` is set, else the state database.
fn open_ledger(cfg: &Config) -> anyhow::Result<sluice_store::LedgerDb> {
    if let Some(url) = cfg.store.database_url() {
        // No SQLite file is needed (nor created) when everything is in Postgres.
        return sluice_store::LedgerDb::postgres(url)
            .context("cannot open the Postgres ledger (store.database_url)");
    }
    let store = Store::open(&cfg.store.path)
        .with_context(|| format!("cannot open the state database {}", cfg.store.path))?;
    Ok(sluice_store::LedgerDb::open(&store, None)?)
}

fn time_range(since: &str, until: Option<&str>, now: i64) -> anyhow::Result<(i64, i64)> {
    let since = parse_when(since, now)?;
    let until = match until {
        Some(u) => parse_when(u, now)?,
        None => now.saturating_add(1),
    };
    Ok((since, until))
}

/// Output of `sluice usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Csv,
    Json,
}

fn format_of(format: &str, json: bool) -> anyhow::Result<Format> {
    if json {
        return Ok(Format::Json);
    }
    match format {
        "table" => Ok(Format::Table),
        "csv" => Ok(Format::Csv),
        "json" => Ok(Format::Json),
        other => anyhow::bail!("unknown format {other:?}: use table, csv or json"),
    }
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// What `sluice usage` prints for `args` against `cfg`'s ledger (either backend), with `now`
/// as the reference for relative times. Totals are integer sums of ledger rows.
pub fn usage_report(cfg: &Config, args: &UsageArgs, now: i64) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let format = format_of(&args.format, args.json)?;
    let (since, until) = time_range(&args.since, args.until.as_deref(), now)?;
    let names: Vec<&str> = args
        .by
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let group_by = names
        .iter()
        .map(|s| {
            GroupBy::parse(s).with_context(|| {
                format!("cannot group by {s:?}: use tenant, feature, model, key, day, hour")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rows = open_ledger(cfg)?.usage(&UsageQuery {
        since_ms: since,
        until_ms: until,
        group_by,
        tenant: args.tenant.clone(),
    })?;
    let mut total = sluice_store::UsageRow::default();
    for r in &rows {
        total.add(r);
    }
    let mut out = String::new();
    match format {
        Format::Json => {
            let v = serde_json::json!({
                "since": fmt_ms(since),
                "until": fmt_ms(until),
                "group_by": names,
                "rows": rows,
                "total": total,
            });
            out = serde_json::to_string_pretty(&v)?;
            out.push('\n');
        }
        Format::Csv => {
            let mut head: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            if head.is_empty() {
                head.push("all".into());
            }
            head.extend(
                [
                    "requests",
                    "errors",
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                    "cost_micros",
                    "cost_usd",
                    "prompt_cache_saved_micros",
                    "response_cache_saved_micros",
                    "response_cache_hits",
                    "prompt_cache_hit_rate",
                ]
                .map(String::from),
            );
            let _ = writeln!(out, "{}", head.join(","));
            for r in &rows {
                let mut f: Vec<String> = r.group.iter().map(|g| csv_field(g)).collect();
                f.extend([
                    r.requests.to_string(),
                    r.errors.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    r.cache_creation_input_tokens.to_string(),
                    r.cache_read_input_tokens.to_string(),
                    r.cost_micros.to_string(),
                    fmt_usd(r.cost_micros).trim_start_matches('$').to_owned(),
                    r.prompt_cache_saved_micros.to_string(),
                    r.response_cache_saved_micros.to_string(),
                    r.response_cache_hits.to_string(),
                    format!("{:.6}", r.prompt_cache_hit_rate),
                ]);
                let _ = writeln!(out, "{}", f.join(","));
            }
        }
        Format::Table => {
            let _ = writeln!(out, "Usage from {} to {}", fmt_ms(since), fmt_ms(until));
            let head: Vec<String> = if names.is_empty() {
                vec!["ALL".into()]
            } else {
                names.iter().map(|n| n.to_uppercase()).collect()
            };
            let nums = |r: &sluice_store::UsageRow| {
                format!(
                    "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15} {:>8.1}% {:>15} {:>9} {:>15}",
                    r.requests,
                    r.errors,
                    r.input_tokens,
                    r.output_tokens,
                    r.cache_creation_input_tokens,
                    r.cache_read_input_tokens,
                    fmt_usd(r.cost_micros),
                    r.prompt_cache_hit_rate * 100.0,
                    fmt_usd(r.prompt_cache_saved_micros),
                    r.response_cache_hits,
                    fmt_usd(r.response_cache_saved_micros),
                )
            };
            let mut line = head.iter().map(|h| format!("{h:<24}")).collect::<String>();
            line.push_str(&format!(
                "{:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>15} {:>9} {:>15} {:>9} {:>15}",
                "REQUESTS",
                "ERRORS",
                "INPUT",
                "OUTPUT",
                "CACHE_WRITE",
                "CACHE_READ",
                "COST",
                "CACHE_HIT",
                "PROMPT_SAVED",
                "RESP_HITS",
                "RESP_SAVED"
            ));
            let _ = writeln!(out, "{line}");
            for r in &rows {
                let mut l = r
                    .group
                    .iter()
                    .map(|g| format!("{g:<24}"))
                    .collect::<String>();
                l.push_str(&nums(r));
                let _ = writeln!(out, "{l}");
            }
            let mut l = format!("{:<w$}", "TOTAL", w = 24 * head.len());
            l.push_str(&nums(&total));
            let _ = writeln!(out, "{l}");
        }
    }
    Ok(out)
}

/// `sluice report …`.
pub fn report(cli: &Cli, cmd: &ReportCommand) -> anyhow::Result<()> {
    let cfg = load_config(cli)?;
    match cmd {
        ReportCommand::Capacity(a) => print!("{}", capacity_report(&cfg, a, now_ms())?),
    }
    Ok(())
}

/// The limiter's view of models (classes, prices) and the shipped tier presets, for the
/// capacity report.
struct LimitsPolicy {
    policy: sluice_limits::limiter::Policy,
    /// The classes are the presets' (so are the presets' cache-read rules).
    builtin_classes: bool,
}

/// The current tier ladder of `presets.toml`, smallest first.
const TIER_LADDER: [&str; 3] = ["start", "build", "scale"];

impl sluice_store::report::CapacityPolicy for LimitsPolicy {
    fn class_of(&self, model: &str) -> String {
        self.policy.class_of(model).to_string()
    }

    fn cache_reads_count(&self, class: &str) -> bool {
        self.builtin_classes && sluice_limits::presets::Presets::builtin().cache_reads_count(class)
    }

    fn cache_saving_per_mtok(&self, model: &str) -> Option<u64> {
        let p = self.policy.prices().lookup(model)?;
        Some(p.base.input.saturating_sub(p.base.cache_read))
    }

    fn tiers(&self) -> Vec<sluice_store::report::TierLimits> {
        let presets = sluice_limits::presets::Presets::builtin();
        TIER_LADDER
            .iter()
            .filter_map(|name| {
                let t = presets.tier(name)?;
                Some(sluice_store::report::TierLimits {
                    name: (*name).to_owned(),
                    classes: t
                        .iter()
                        .map(|(class, l)| {
                            let limits = sluice_store::report::ClassLimits {
                                requests_per_minute: l.requests_per_minute,
                                input_tokens_per_minute: l.input_tokens_per_minute,
                                output_tokens_per_minute: l.output_tokens_per_minute,
                            };
                            (class.clone(), limits)
                        })
                        .collect(),
                })
            })
            .collect()
    }
}

/// What `sluice report capacity` prints for `args` against `cfg`'s ledger (either backend).
pub fn capacity_report(cfg: &Config, args: &CapacityArgs, now: i64) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let format = format_of(&args.format, false)?;
    let (since, until) = time_range(&args.since, args.until.as_deref(), now)?;
    let policy = LimitsPolicy {
        policy: sluice_limits::limiter::Policy::build(cfg)
            .context("invalid limits in the config")?,
        builtin_classes: cfg.limits.classes.is_empty(),
    };
    let rep = open_ledger(cfg)?.capacity(
        &sluice_store::report::CapacityQuery {
            since_ms: since,
            until_ms: until,
        },
        &policy,
    )?;
    let mut out = String::new();
    let rates = |s: &sluice_store::report::RateStats| format!("{}/{}/{}", s.p50, s.p95, s.peak);
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(&rep)?;
            v["since"] = fmt_ms(since).into();
            v["until"] = fmt_ms(until).into();
            out = serde_json::to_string_pretty(&v)?;
            out.push('\n');
        }
        Format::Csv => {
            let _ = writeln!(
                out,
                "class,active_minutes,rpm_p50,rpm_p95,rpm_peak,itpm_p50,itpm_p95,itpm_peak,\
                 otpm_p50,otpm_p95,otpm_peak,peak_minute,limited_tenant,limited_org,\
                 limited_budget,upstream_429,uncached_input_tokens,cache_write_tokens,\
                 cache_read_tokens,cache_hit_rate,cache_savings_micros,tier_for_p95,tier_for_peak,\
                 prompt_cache_saved_micros,response_cache_saved_micros,response_cache_hits"
            );
            for c in &rep.classes {
                let (r, i, o) = (
                    &c.requests_per_minute,
                    &c.input_tokens_per_minute,
                    &c.output_tokens_per_minute,
                );
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{},{},{},{},{},{}",
                    csv_field(&c.class),
                    c.active_minutes,
                    r.p50,
                    r.p95,
                    r.peak,
                    i.p50,
                    i.p95,
                    i.peak,
                    o.p50,
                    o.p95,
                    o.peak,
                    c.peak_minute.as_deref().unwrap_or(""),
                    c.limited_tenant,
                    c.limited_org,
                    c.limited_budget,
                    c.upstream_429,
                    c.uncached_input_tokens,
                    c.cache_write_tokens,
                    c.cache_read_tokens,
                    c.cache_hit_rate,
                    c.cache_savings_micros,
                    csv_field(&c.tier_for_p95),
                    csv_field(&c.tier_for_peak),
                    c.prompt_cache_saved_micros,
                    c.response_cache_saved_micros,
                    c.response_cache_hits,
                );
            }
        }
        Format::Table => {
            let _ = writeln!(
                out,
                "Capacity from {} to {} (per UTC minute with traffic: p50/p95/peak; tiers: {})",
                fmt_ms(since),
                fmt_ms(until),
                rep.tiers.join(" < ")
            );
            let _ = writeln!(
                out,
                "{:<12} {:>7} {:>16} {:>26} {:>22} {:>19} {:>6} {:>14} {:>14} {:>13} {:>13}",
                "CLASS",
                "MINUTES",
                "REQ/MIN",
                "INPUT TOK/MIN",
                "OUTPUT TOK/MIN",
                "429 TEN/ORG/BUD/UP",
                "CACHE",
                "PROMPT SAVED",
                "RESP SAVED",
                "TIER (P95)",
                "TIER (PEAK)"
            );
            for c in &rep.classes {
                let _ = writeln!(
                    out,
                    "{:<12} {:>7} {:>16} {:>26} {:>22} {:>19} {:>5.1}% {:>14} {:>14} {:>13} {:>13}",
                    c.class,
                    c.active_minutes,
                    rates(&c.requests_per_minute),
                    rates(&c.input_tokens_per_minute),
                    rates(&c.output_tokens_per_minute),
                    format!(
                        "{}/{}/{}/{}",
                        c.limited_tenant, c.limited_org, c.limited_budget, c.upstream_429
                    ),
                    c.cache_hit_rate * 100.0,
                    fmt_usd(c.prompt_cache_saved_micros),
                    fmt_usd(c.response_cache_saved_micros),
                    c.tier_for_p95,
                    c.tier_for_peak
                );
            }
            let k = &rep.cache;
            let _ = writeln!(
                out,
                "Caches: prompt-cache hit rate {:.1}% ({} of {} prompt tokens read from cache); \
                 prompt cache saved {}, response cache saved {} ({} {}); {} in all",
                k.cache_hit_rate * 100.0,
                k.cache_read_tokens,
                k.cache_read_tokens + k.cache_write_tokens + k.uncached_input_tokens,
                fmt_usd(k.prompt_cache_saved_micros),
                fmt_usd(k.response_cache_saved_micros),
                k.response_cache_hits,
                if k.response_cache_hits == 1 {
                    "hit"
                } else {
                    "hits"
                },
                fmt_usd(k.saved_micros)
            );
            if let Some(t) = &cfg.org.tier {
                let _ = writeln!(out, "Configured org.tier: {t}");
            }
        }
    }
    Ok(out)
}

/// Micro-dollars as dollars with all six decimals (`$12.345678`), from the integer so no float
/// rounding can make a total disagree with the ledger.
fn fmt_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}${}.{:06}", m / 1_000_000, m % 1_000_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn costs_print_as_exact_dollars() {
        assert_eq!(fmt_usd(0), "$0.000000");
        assert_eq!(fmt_usd(5943), "$0.005943");
        assert_eq!(fmt_usd(12_345_678), "$12.345678");
        assert_eq!(fmt_usd(-1), "-$0.000001");
        assert_eq!(fmt_usd(i64::MIN), "-$9223372036854.775808");
    }
}
